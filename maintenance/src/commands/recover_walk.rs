//! `etp recover walk CASE`: the flow's questions asked in the terminal, the
//! probe's answer and evidence offered as the default (Enter takes it).
//! Plain line prompts on standard input and output, so a walk can also be
//! scripted (one answer a line) and logged.

use crate::Outcome;
use anyhow::{bail, Context};
use flowcharts::{Answer, Answers, Node, NodeKind, TreeSet};
use maintenance::recovery::probes::{LiveProbes, Sources};
use maintenance::recovery::saved::{SavedAnswer, SavedWalk};
use std::io::{BufRead, Write};
use std::net::SocketAddr;

/// Answers from the operator, offered the probe's answer.
struct Operator<'a, R: BufRead, W: Write> {
    probes: &'a LiveProbes,
    input: R,
    out: W,
    decisions: u32,
    /// The question standard input ended at.
    ended: Option<String>,
    /// The answers given, for `--save`.
    saved: SavedWalk,
}

impl<R: BufRead, W: Write> Answers for Operator<'_, R, W> {
    type Error = anyhow::Error;
    fn answer(&mut self, node: &Node) -> anyhow::Result<Answer> {
        let NodeKind::Question(q) = &node.kind else {
            return Ok(Answer::unanswerable("not a question"));
        };
        let offered = match &q.probe {
            Some(p) => self.probes.probe(p),
            None => Answer::unanswerable("no probe: only an operator can answer it"),
        };
        writeln!(
            self.out,
            "\n{} {}",
            node.step.as_deref().unwrap_or(&node.id),
            q.text
        )?;
        if let Some(n) = &node.note {
            writeln!(self.out, "  note: {n}")?;
        }
        let default = match &offered {
            Answer::Yes { .. } => Some(true),
            Answer::No { .. } => Some(false),
            Answer::Unanswerable { .. } => None,
        };
        writeln!(
            self.out,
            "  probe {}: {} — {}",
            q.probe.as_deref().unwrap_or("(none)"),
            offered.word(),
            offered.text()
        )?;
        loop {
            write!(
                self.out,
                "  answer [{}]: ",
                match default {
                    Some(true) => "Y/n",
                    Some(false) => "y/N",
                    None => "y/n",
                }
            )?;
            self.out.flush()?;
            let mut line = String::new();
            if self.input.read_line(&mut line)? == 0 {
                writeln!(self.out)?;
                self.ended = Some(node.id.clone());
                bail!("input ended");
            }
            let given = match line.trim().to_ascii_lowercase().as_str() {
                "" => default,
                "y" | "yes" => Some(true),
                "n" | "no" => Some(false),
                other => {
                    writeln!(self.out, "  {other:?}: answer y or n")?;
                    continue;
                }
            };
            let Some(yes) = given else {
                writeln!(self.out, "  the probe cannot decide: answer y or n")?;
                continue;
            };
            if default != Some(yes) {
                self.decisions += 1;
            }
            let evidence = if default == Some(yes) {
                format!("operator took the probe's answer: {}", offered.text())
            } else {
                format!(
                    "operator answered {} (probe: {} — {})",
                    if yes { "yes" } else { "no" },
                    offered.word(),
                    offered.text()
                )
            };
            self.saved.answers.push(SavedAnswer {
                node: node.id.clone(),
                step: node.step.clone(),
                probe: q.probe.clone(),
                answer: if yes { "yes" } else { "no" }.into(),
                evidence: evidence.clone(),
                probe_answer: offered.word().into(),
                probe_evidence: offered.text().into(),
            });
            return Ok(if yes {
                Answer::yes(evidence)
            } else {
                Answer::no(evidence)
            });
        }
    }
}

pub fn walk(
    case: &str,
    node: SocketAddr,
    sources: &Sources,
    save: Option<&std::path::Path>,
) -> anyhow::Result<Outcome> {
    let set = TreeSet::builtin().context("the built-in trees")?;
    let Some(tree) = set.get(case) else {
        let known: Vec<&str> = set.trees().map(|t| t.id.as_str()).collect();
        bail!(
            "no recovery flow {case:?}; the flows are: {}",
            known.join(", ")
        );
    };
    let probes = LiveProbes::gather(node, sources)?;
    let stdin = std::io::stdin();
    let mut op = Operator {
        probes: &probes,
        input: stdin.lock(),
        out: std::io::stdout(),
        decisions: 0,
        ended: None,
        saved: SavedWalk::new(&tree.id, node),
    };
    println!("{}: {}", tree.id, tree.title);
    let w = match flowcharts::walk(tree, &mut op) {
        Ok(w) => w,
        Err(e) => match &op.ended {
            Some(q) => bail!(
                "input ended before question `{q}` was answered: the walk stopped there (nothing was changed)"
            ),
            None => match e {
                flowcharts::WalkError::Answers { source, .. } => {
                    return Err(source.context(format!("walking {}", tree.id)))
                }
                other => bail!("{other}"),
            },
        },
    };
    let overridden = op.decisions;
    println!();
    super::recover::print_walk(&w);
    println!("  ({overridden} answer(s) differ from the probes)");
    match save {
        Some(path) => {
            let mut saved = op.saved;
            saved.leaf = w.plan.leaf().map(str::to_string);
            saved.save(path)?;
            println!(
                "  answers saved in {}; to carry this plan out: etp recover run --answers {} --execute --node {node} (refused if a probe has changed its answer since)",
                path.display(),
                path.display()
            );
        }
        None => println!(
            "  to carry a plan out: etp recover run {case} --execute --node {node} (it walks the case again from the probes alone; walk with --save FILE and run with --answers FILE to reuse these answers)"
        ),
    }
    let intact = w.plan.leaf() == Some("all_intact");
    if !intact {
        println!(
            "  exit status 1: the walk ended at {}, which needs recovery (0 only when everything is intact)",
            w.plan.leaf().unwrap_or("an operator step")
        );
    }
    Ok(if intact {
        Outcome::Ok
    } else {
        Outcome::Problem
    })
}
