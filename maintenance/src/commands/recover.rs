//! `etp recover flows|show|validate`: the recovery flows as data
//! (`flowcharts/`), listed, rendered and checked. Diagnosing and executing
//! them against a live topology is the next step (issue 6).

use crate::cli::RecoverCommand;
use crate::output;
use crate::Outcome;
use anyhow::{bail, Context};
use flowcharts::{Registry, TreeSet};

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
