//! `etp recover flows|show|validate|diagnose|walk|run`: the recovery flows
//! as data (`flowcharts/`), listed, rendered, checked, walked with answers
//! probed from the live nodes ([`super::probes`]) or given by an operator
//! ([`super::recover_walk`]), and executed ([`super::recover_run`]).

use crate::cli::RecoverCommand;
use crate::output;
use crate::Outcome;
use anyhow::{bail, Context};
use flowcharts::{Registry, TreeSet};
use maintenance::recovery::{self as recovery, probes, Report};

fn trees(dir: Option<&std::path::Path>) -> anyhow::Result<TreeSet> {
    match dir {
        Some(d) => {
            TreeSet::load_dir(d).with_context(|| format!("cannot load trees from {}", d.display()))
        }
        None => TreeSet::builtin().context("the built-in trees"),
    }
}

pub fn run(c: RecoverCommand) -> anyhow::Result<Outcome> {
    match c {
        RecoverCommand::Flows { dir, json } => {
            let set = trees(dir.as_deref())?;
            for t in set.trees() {
                if json {
                    output::json(&serde_json::json!({
                        "id": t.id, "title": t.title, "origin": t.origin,
                        "nodes": t.nodes.len(),
                    }));
                } else {
                    println!("{:<18} {}", t.id, t.title);
                }
            }
            Ok(Outcome::Ok)
        }
        RecoverCommand::Show { case, format, dir } => {
            let set = trees(dir.as_deref())?;
            let Some(t) = set.get(&case) else {
                let known: Vec<&str> = set.trees().map(|t| t.id.as_str()).collect();
                bail!(
                    "no recovery flow {case:?}; the flows are: {}",
                    known.join(", ")
                );
            };
            match format.as_str() {
                "mermaid" => print!("{}", flowcharts::to_mermaid(t)),
                "dot" => print!("{}", flowcharts::to_dot(t)),
                other => bail!("--format {other:?}: use mermaid or dot"),
            }
            Ok(Outcome::Ok)
        }
        RecoverCommand::Walk {
            case,
            node,
            sources,
            save,
        } => super::recover_walk::walk(&case, node.node, &sources.into(), save.as_deref()),
        RecoverCommand::Run {
            case,
            node,
            sources,
            dry_run: _,
            execute,
            confirm,
            answers,
            state,
            wait_s,
            json,
        } => {
            let answers = match answers {
                Some(path) => {
                    let w = recovery::saved::SavedWalk::load(&path)?;
                    if let Some(c) = case.as_ref().filter(|c| **c != w.tree) {
                        anyhow::bail!(
                            "the saved walk {} is of {}, not of {c}",
                            path.display(),
                            w.tree
                        );
                    }
                    Some(w)
                }
                None => None,
            };
            recovery::run(
                recovery::RunOptions {
                    node: node.node,
                    case,
                    execute,
                    confirm,
                    sources: sources.into(),
                    state,
                    wait: std::time::Duration::from_secs(wait_s),
                    answers,
                },
                &mut Printer { json },
            )
        }
        RecoverCommand::Diagnose {
            node,
            sources,
            state,
            json,
        } => {
            // A plan interrupted half-way may have left a file mid-restore
            // that reads as intact: finishing it comes first.
            let unfinished = recovery::journal::unfinished(&state)?;
            if let Some(u) = &unfinished {
                eprintln!("etp: {u}");
            }
            let sources: probes::Sources = sources.into();
            // (Feeders reconnecting by themselves get a moment first: a
            // node restarted just before is not an isolation.)
            recovery::run::settle_links(node.node, std::time::Duration::from_secs(2));
            let mut probes = probes::LiveProbes::gather(node.node, &sources)?;
            let set = TreeSet::builtin().context("the built-in trees")?;
            let d = match flowcharts::diagnose(&set, &mut probes) {
                Ok(d) => d,
                Err(e) => bail!("diagnosis failed: {e}"),
            };
            let intact = d.triage.plan.leaf() == Some("all_intact") && unfinished.is_none();
            if json {
                let mut v = serde_json::to_value(&d)?;
                v["needs_recovery"] = serde_json::Value::Bool(!intact);
                v["warnings"] = serde_json::json!(probes.copy_alarms);
                if let Some(u) = unfinished {
                    v["unfinished_plan"] = serde_json::Value::String(u);
                }
                output::json(&v);
            } else {
                if intact {
                    println!("all intact: every database answers, no file is damaged, every replicate is current and consistent; nothing to recover");
                } else {
                    for w in std::iter::once(&d.triage).chain(d.case.as_ref()) {
                        print_walk(w);
                    }
                }
                for w in &probes.copy_alarms {
                    println!("warning: {w}");
                }
            }
            Ok(if intact {
                Outcome::Ok
            } else {
                Outcome::Problem
            })
        }
        RecoverCommand::Validate { dir, json } => {
            let set = trees(dir.as_deref())?;
            match set.validate(&Registry::standard()) {
                Ok(()) => {
                    if json {
                        output::json(&serde_json::json!({ "ok": true }));
                    } else {
                        println!("{} flows, all valid", set.trees().count());
                    }
                    Ok(Outcome::Ok)
                }
                Err(invalid) => {
                    for i in &invalid {
                        if json {
                            output::json(&serde_json::to_value(i)?);
                        } else {
                            println!("{i}");
                        }
                    }
                    Ok(Outcome::Problem)
                }
            }
        }
    }
}

/// Prints a recovery run's events: JSON lines with `--json`, else text.
struct Printer {
    json: bool,
}

impl Report for Printer {
    fn event(&mut self, json: serde_json::Value, human: String) {
        if self.json {
            output::json(&json);
        } else {
            println!("{human}");
        }
    }

    fn walk(&mut self, walk: &flowcharts::Walk) {
        if !self.json {
            print_walk(walk);
        }
    }
}

pub(crate) fn print_walk(w: &flowcharts::Walk) {
    println!("{}:", w.tree);
    for v in &w.path {
        println!(
            "  {} {}\n      {}: {}",
            v.step.as_deref().unwrap_or(&v.node),
            v.question,
            v.answer.word(),
            v.answer.text()
        );
    }
    match &w.plan {
        flowcharts::Plan::Actions {
            leaf,
            outcome,
            steps,
            ..
        } => {
            println!("  plan ({leaf}): {outcome}");
            for s in steps {
                let params: Vec<String> =
                    s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("    - {} {}", s.action, params.join(" "));
            }
        }
        flowcharts::Plan::Goto {
            leaf,
            outcome,
            case,
            ..
        } => println!("  → {case} ({leaf}): {outcome}"),
        flowcharts::Plan::Stopped { node, reason } => {
            println!("  stopped at {node}: {reason}")
        }
    }
}

impl From<crate::cli::SourceArgs> for probes::Sources {
    fn from(a: crate::cli::SourceArgs) -> Self {
        probes::Sources {
            area: a.area,
            journal: a.journal,
            export: a.export,
        }
    }
}
