//! A recovery tree drawn as SVG on the server, from its definition: layers
//! by distance from the start, the path a walk took coloured with its
//! answers, every node's full text on hover. No Graphviz, no script.

use flowcharts::{Answer, NodeKind, Tree, Walk};
use maud::{html, Markup};
use std::collections::{BTreeMap, VecDeque};

const BOX_W: f64 = 210.0;
const BOX_H: f64 = 46.0;
const GAP_X: f64 = 26.0;
const GAP_Y: f64 = 40.0;
const MARGIN: f64 = 12.0;

/// Where each node of `tree` is drawn: (layer, place in its layer). A
/// node's layer is its longest distance from the start (the trees have no
/// cycles: the validator refuses one), so every edge points down; within a
/// layer, nodes keep the order a breadth-first walk meets them. Nodes the
/// start does not reach go last.
pub fn layout(tree: &Tree) -> BTreeMap<String, (usize, usize)> {
    let next = |id: &str| -> Vec<String> {
        match tree.node(id).map(|n| &n.kind) {
            Some(NodeKind::Question(q)) => vec![q.yes.clone(), q.no.clone()],
            _ => Vec::new(),
        }
    };
    // Breadth-first order of the reachable nodes.
    let mut order: Vec<String> = Vec::new();
    let mut queue = VecDeque::from([tree.start.clone()]);
    while let Some(id) = queue.pop_front() {
        if order.contains(&id) || tree.node(&id).is_none() {
            continue;
        }
        queue.extend(next(&id));
        order.push(id);
    }
    // Longest distances: relaxed until nothing moves (at most one round
    // per node, as there is no cycle; bounded anyway).
    let mut depth: BTreeMap<String, usize> = BTreeMap::from([(tree.start.clone(), 0)]);
    for _ in 0..=tree.nodes.len() {
        let mut moved = false;
        for id in &order {
            let Some(&d) = depth.get(id) else { continue };
            for n in next(id) {
                if depth.get(&n).is_none_or(|&e| e < d + 1) {
                    depth.insert(n, d + 1);
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let last = depth.values().max().map_or(0, |d| d + 1);
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut at = BTreeMap::new();
    let unreached = tree
        .nodes
        .iter()
        .map(|n| &n.id)
        .filter(|id| !order.contains(id));
    for id in order.iter().chain(unreached) {
        let d = depth.get(id).copied().unwrap_or(last);
        let row = rows.entry(d).or_default();
        at.insert(id.clone(), (d, *row));
        *row += 1;
    }
    at
}

fn center(p: (usize, usize)) -> (f64, f64) {
    (
        MARGIN + p.1 as f64 * (BOX_W + GAP_X) + BOX_W / 2.0,
        MARGIN + p.0 as f64 * (BOX_H + GAP_Y) + BOX_H / 2.0,
    )
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

/// The tree as SVG; with `walk`, its path coloured: each question it asked
/// by its answer (yes green, no amber, unanswerable grey), the branch
/// taken drawn thick, the leaf it reached outlined.
pub fn svg(tree: &Tree, walk: Option<&Walk>) -> Markup {
    let at = layout(tree);
    let width =
        at.values().map(|p| p.1 + 1).max().unwrap_or(1) as f64 * (BOX_W + GAP_X) + 2.0 * MARGIN;
    let height =
        at.values().map(|p| p.0 + 1).max().unwrap_or(1) as f64 * (BOX_H + GAP_Y) + 2.0 * MARGIN;
    let answers: BTreeMap<&str, &Answer> = walk
        .map(|w| {
            w.path
                .iter()
                .map(|v| (v.node.as_str(), &v.answer))
                .collect()
        })
        .unwrap_or_default();
    let reached = walk.and_then(|w| w.plan.leaf());
    let taken = |from: &str, branch: &str| match answers.get(from) {
        Some(Answer::Yes { .. }) => branch == "yes",
        Some(Answer::No { .. }) => branch == "no",
        _ => false,
    };
    html! {
        svg class="tree" data-tree=(tree.id) width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) } xmlns="http://www.w3.org/2000/svg" role="img" {
            title { (tree.title) }
            defs {
                marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M0,0 L8,4 L0,8 z" fill="#8a93a3" {}
                }
            }
            // Edges first, under the boxes.
            @for n in &tree.nodes {
                @if let NodeKind::Question(q) = &n.kind {
                    @for (branch, next) in [("yes", &q.yes), ("no", &q.no)] {
                        @if let (Some(a), Some(b)) = (at.get(&n.id), at.get(next.as_str())) {
                            @let ((x1, y1), (x2, y2)) = (center(*a), center(*b));
                            @let (y1, y2) = (y1 + BOX_H / 2.0, y2 - BOX_H / 2.0);
                            @let on = taken(&n.id, branch);
                            line class={ "edge" @if on { " taken" } } x1=(x1) y1=(y1) x2=(x2) y2=(y2)
                                stroke=(if on { "#1d2433" } else { "#b7bfcc" })
                                stroke-width=(if on { "2.5" } else { "1" }) marker-end="url(#arrow)" {}
                            text x=((x1 + x2) / 2.0 + 4.0) y=((y1 + y2) / 2.0) font-size="10"
                                fill=(if on { "#1d2433" } else { "#8a93a3" }) { (branch) }
                        }
                    }
                }
            }
            @for n in &tree.nodes {
                @if let Some(p) = at.get(&n.id) {
                    @let (cx, cy) = center(*p);
                    @let (x, y) = (cx - BOX_W / 2.0, cy - BOX_H / 2.0);
                    @let (class, fill) = match (&n.kind, answers.get(n.id.as_str())) {
                        (NodeKind::Question(_), Some(Answer::Yes { .. })) => ("node asked yes", "#dff3e4"),
                        (NodeKind::Question(_), Some(Answer::No { .. })) => ("node asked no", "#fdf0d5"),
                        (NodeKind::Question(_), Some(Answer::Unanswerable { .. })) => ("node asked unanswerable", "#e4e7ec"),
                        (NodeKind::Leaf(_), _) if reached == Some(n.id.as_str()) => ("node leaf reached", "#dce8fd"),
                        (NodeKind::Leaf(_), _) => ("node leaf", "#ffffff"),
                        _ => ("node", "#ffffff"),
                    };
                    @let text = match &n.kind {
                        NodeKind::Question(q) => q.text.clone(),
                        NodeKind::Leaf(l) => l.outcome.clone(),
                    };
                    g class=(class) data-node=(n.id) {
                        title {
                            (n.step.as_deref().unwrap_or("")) " " (text)
                            @if let Some(a) = answers.get(n.id.as_str()) { " — " (a.word()) ": " (a.text()) }
                        }
                        rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="5"
                            fill=(fill)
                            stroke=(if class == "node leaf reached" { "#2f6fdf" } else { "#9aa4b5" })
                            stroke-width=(if class == "node leaf reached" { "2.5" } else { "1" }) {}
                        text x=(x + 6.0) y=(y + 15.0) font-size="11" font-weight="600" fill="#1d2433" {
                            (short(&format!("{} {}", n.step.as_deref().unwrap_or(""), n.id), 34))
                        }
                        text x=(x + 6.0) y=(y + 32.0) font-size="10" fill="#3b4456" { (short(&text, 38)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_of_every_built_in_tree_gets_its_own_place() {
        let set = flowcharts::TreeSet::builtin().expect("trees");
        for t in set.trees() {
            let at = layout(t);
            assert_eq!(at.len(), t.nodes.len(), "{}", t.id);
            let mut places: Vec<_> = at.values().collect();
            places.sort();
            places.dedup();
            assert_eq!(
                places.len(),
                t.nodes.len(),
                "{}: two nodes in one place",
                t.id
            );
            assert_eq!(at[&t.start], (0, 0), "{}", t.id);
            // Every edge points down a layer or more.
            for n in &t.nodes {
                if let NodeKind::Question(q) = &n.kind {
                    for next in [&q.yes, &q.no] {
                        assert!(
                            at[next.as_str()].0 > at[&n.id].0,
                            "{}: {} → {next}",
                            t.id,
                            n.id
                        );
                    }
                }
            }
            let svg = svg(t, None).into_string();
            assert_eq!(
                svg.matches("<g class=\"node").count(),
                t.nodes.len(),
                "{}",
                t.id
            );
        }
    }
}
