//! Rendering a tree as Mermaid or Graphviz DOT.
//!
//! Output depends only on the tree (nodes in file order, branches yes before
//! no, fixed wrapping), so the files in `flowcharts/rendered/` can be
//! compared byte for byte against a fresh render.
//!
//! Questions show their step label, text and probe; leaves show their
//! outcome and numbered steps (or the tree they go to). Notes are left out
//! to keep the charts readable; they are in the TOML and in every walk.

use crate::model::{LeafEnd, Node, NodeKind, Tree};

/// Width at which question and outcome text is wrapped.
const WRAP: usize = 44;

/// The regeneration hint written at the top of every rendered file.
pub const BLESS_HINT: &str = "regenerate with FLOWCHARTS_BLESS=1 cargo test -p flowcharts";

/// Mermaid `flowchart TD` source for the tree.
pub fn to_mermaid(tree: &Tree) -> String {
    let mut out = String::new();
    out.push_str(&format!("%% {}: {}\n", tree.id, tree.title));
    out.push_str(&format!(
        "%% Generated from {}; do not edit, {}.\n",
        tree.origin, BLESS_HINT
    ));
    out.push_str("flowchart TD\n");
    for node in &tree.nodes {
        let lines: Vec<String> = label_lines(node)
            .iter()
            .map(|l| mermaid_escape(l))
            .collect();
        let label = lines.join("<br/>");
        let shape = match &node.kind {
            NodeKind::Question(_) => format!("{{\"{label}\"}}"),
            NodeKind::Leaf(leaf) => match leaf.end {
                LeafEnd::Actions(_) => format!("[\"{label}\"]"),
                LeafEnd::Goto(_) => format!("[[\"{label}\"]]"),
            },
        };
        out.push_str(&format!("    {}{}\n", node.id, shape));
    }
    for node in &tree.nodes {
        for (branch, target) in node.targets() {
            out.push_str(&format!("    {} -->|{}| {}\n", node.id, branch, target));
        }
    }
    out
}

/// Graphviz DOT source for the tree.
pub fn to_dot(tree: &Tree) -> String {
    let mut out = String::new();
    out.push_str(&format!("// {}: {}\n", tree.id, tree.title));
    out.push_str(&format!(
        "// Generated from {}; do not edit, {}.\n",
        tree.origin, BLESS_HINT
    ));
    out.push_str(&format!("digraph {} {{\n", dot_quote(&tree.id)));
    out.push_str(&format!(
        "    label={};\n    labelloc=t;\n    rankdir=TB;\n    node [fontname=\"Helvetica\", fontsize=10];\n    edge [fontname=\"Helvetica\", fontsize=10];\n",
        dot_quote(&tree.title)
    ));
    for node in &tree.nodes {
        let label = dot_quote(&label_lines(node).join("\n"));
        let attrs = match &node.kind {
            NodeKind::Question(_) => "shape=diamond".to_string(),
            NodeKind::Leaf(leaf) => match leaf.end {
                LeafEnd::Actions(_) => "shape=box, style=rounded".to_string(),
                LeafEnd::Goto(_) => "shape=box, style=\"rounded,dashed\"".to_string(),
            },
        };
        out.push_str(&format!(
            "    {} [{}, label={}];\n",
            dot_quote(&node.id),
            attrs,
            label
        ));
    }
    for node in &tree.nodes {
        for (branch, target) in node.targets() {
            out.push_str(&format!(
                "    {} -> {} [label={}];\n",
                dot_quote(&node.id),
                dot_quote(target),
                dot_quote(branch)
            ));
        }
    }
    out.push_str("}\n");
    out
}

/// The lines shown inside a node, before escaping.
fn label_lines(node: &Node) -> Vec<String> {
    let mut lines = Vec::new();
    match &node.kind {
        NodeKind::Question(q) => {
            let text = match &node.step {
                Some(step) => format!("{step}: {}", q.text),
                None => q.text.clone(),
            };
            lines.extend(wrap(&text, WRAP));
            if let Some(probe) = &q.probe {
                lines.push(format!("probe: {probe}"));
            }
        }
        NodeKind::Leaf(leaf) => {
            let head = match &node.step {
                Some(step) => format!("{} ({step})", node.id),
                None => node.id.clone(),
            };
            lines.push(head);
            lines.extend(wrap(&leaf.outcome, WRAP));
            match &leaf.end {
                LeafEnd::Actions(steps) => {
                    for (i, step) in steps.iter().enumerate() {
                        lines.push(format!("{}. {}", i + 1, step.display()));
                    }
                }
                LeafEnd::Goto(case) => lines.push(format!("goto {case}")),
            }
        }
    }
    lines
}

/// Greedy word wrap; a word longer than `width` gets its own line.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Mermaid labels are quoted; quotes and angle brackets become entities.
fn mermaid_escape(text: &str) -> String {
    text.replace('#', "#35;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

fn dot_quote(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_whole() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("averylongword x", 4), vec!["averylongword", "x"]);
        assert!(wrap("", 4).is_empty());
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            mermaid_escape("a \"b\" <c> #1"),
            "a #quot;b#quot; #lt;c#gt; #35;1"
        );
        assert_eq!(dot_quote("a \"b\"\nc\\"), "\"a \\\"b\\\"\\nc\\\\\"");
    }
}
