//! `etp recover run [CASE] --dry-run | --execute`: a recovery plan bound to
//! the live topology and carried out step by step, with a durable journal so
//! an interrupted run resumes at the step it stopped at.
//!
//! A round diagnoses (triage and its case, or the case named), binds the
//! leaf's `$variables` to the files, replicates and nodes they stand for,
//! journals the bound plan, then performs each step through the nodes and
//! journals it done. Triage then runs again, as the seed says, until it ends
//! at `all_intact` (whose plan — tasks running, replicates verified — ends
//! the run). Two kinds of step wait for a person: `manual_intervention` and
//! `restart_databases` (this tool does not start node processes); the run
//! stops there with exit 1 and the instruction, and `--confirm` says it is
//! done. Nothing is executed while a probe is unanswerable: the run refuses
//! and names the question.

use super::actions::*;
use super::journal::*;
use super::plan::*;
use super::probes::LiveProbes;
use super::RunOptions;
use super::{ask as call, Report};
use crate::Outcome;
use anyhow::{bail, Context};
use flowcharts::{Plan, TreeSet};
use propagator::wire::{RecoveryOp, Request};
use std::time::Instant;

/// Diagnoses and binds the plan of one round.
fn make_plan(
    opts: &RunOptions,
    report: &mut dyn Report,
    set: &TreeSet,
    round: u32,
    case: Option<&str>,
    saved: Option<&super::saved::SavedWalk>,
) -> anyhow::Result<(LiveProbes, Result<BoundPlan, String>)> {
    let mut probes = LiveProbes::gather(opts.node, &opts.sources)?;
    let walk = match (case, saved) {
        (_, Some(saved)) => {
            let tree = set.get(&saved.tree).with_context(|| {
                format!(
                    "the saved walk is of {:?}, which is no recovery flow",
                    saved.tree
                )
            })?;
            let mut replayed = super::saved::Replayed {
                probes: &probes,
                saved,
            };
            match flowcharts::walk(tree, &mut replayed) {
                Ok(w) => w,
                Err(flowcharts::WalkError::Answers { source, .. }) => return Err(source),
                Err(e) => bail!("{e}"),
            }
        }
        (Some(c), None) => {
            let tree = set.get(c).with_context(|| {
                let known: Vec<&str> = set.trees().map(|t| t.id.as_str()).collect();
                format!(
                    "no recovery flow {c:?}; the flows are: {}",
                    known.join(", ")
                )
            })?;
            flowcharts::walk(tree, &mut probes).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        (None, None) => {
            let d = flowcharts::diagnose(set, &mut probes).map_err(|e| anyhow::anyhow!("{e}"))?;
            for w in std::iter::once(&d.triage).chain(d.case.as_ref()) {
                report.walk(w);
            }
            d.case.unwrap_or(d.triage)
        }
    };
    if case.is_some() || saved.is_some() {
        report.walk(&walk);
    }
    let plan = match &walk.plan {
        Plan::Actions {
            leaf,
            outcome,
            steps,
            ..
        } => Ok(BoundPlan {
            round,
            tree: walk.tree.clone(),
            leaf: leaf.clone(),
            outcome: outcome.clone(),
            steps: bind(steps, &probes)?,
            levels: probes
                .masters
                .iter()
                .map(|m| (m.db.0, m.fnr.0, m.level().unwrap_or(0)))
                .collect(),
        }),
        Plan::Goto { case, .. } => Err(format!("the walk ended handing over to {case}")),
        Plan::Stopped { node, reason } => {
            let probe = walk
                .path
                .iter()
                .find(|v| &v.node == node)
                .and_then(|v| v.probe.clone())
                .unwrap_or_default();
            Err(format!(
                "question `{node}` (probe `{probe}`) cannot be answered: {reason}"
            ))
        }
    };
    Ok((probes, plan))
}

/// Before a diagnosis: gives feeders that are reconnecting by themselves
/// (a node just restarted, a load or restore just ended) up to `limit` to
/// get there, so a link on its way back is not diagnosed as an isolation
/// (case 1). Returns at once when none is.
pub fn settle_links(node: std::net::SocketAddr, limit: std::time::Duration) {
    use propagator::wire::{OperationRequest, ReplicaState, Response};
    let Ok(v) = super::topology_of(node) else {
        return;
    };
    let masters: std::collections::BTreeSet<std::net::SocketAddr> = v
        .topology
        .masters
        .iter()
        .filter_map(|m| v.addresses.get(&propagator::DbId(m.database)).copied())
        .collect();
    let _ = wait_until("the replication links to settle", limit, || {
        for a in &masters {
            let Ok(Response::Tasks(ts)) =
                call(*a, &Request::Operation(OperationRequest::TaskStatus))
            else {
                continue;
            };
            if ts
                .iter()
                .flat_map(|t| &t.replicates)
                .any(|r| r.feeding && r.state == ReplicaState::Offline)
            {
                return Ok(None);
            }
        }
        Ok(Some(()))
    });
}

/// Test hook: stop the process after this many steps (an interruption).
fn stop_after() -> Option<usize> {
    std::env::var("ETP_RECOVER_STOP_AFTER_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// Runs the recovery: a dry run prints the bound plan; `execute` carries
/// it out, round after round, until triage finds everything intact.
/// Events and walks go to `report`.
pub fn run(opts: RunOptions, report: &mut dyn Report) -> anyhow::Result<Outcome> {
    let set = TreeSet::builtin().context("the built-in trees")?;
    if !opts.execute {
        let (_, plan) = make_plan(
            &opts,
            report,
            &set,
            1,
            opts.case.as_deref(),
            opts.answers.as_ref(),
        )?;
        return match plan {
            Err(why) => {
                report.event(
                    serde_json::json!({"event": "refused", "reason": why}),
                    format!("nothing can be executed: {why}"),
                );
                Ok(Outcome::Problem)
            }
            Ok(p) => {
                let intact = p.leaf == "all_intact";
                let mut human = format!("plan ({}, {}): {}", p.tree, p.leaf, p.outcome);
                for (i, s) in p.steps.iter().enumerate() {
                    human += &format!(
                        "\n  {}. {}{}",
                        i + 1,
                        s.describe(),
                        if s.operator() { "  [operator]" } else { "" }
                    );
                }
                human += "\n(dry run: nothing executed)";
                report.event(
                    serde_json::json!({"event": "plan", "plan": p, "dry_run": true}),
                    human,
                );
                Ok(if intact {
                    Outcome::Ok
                } else {
                    Outcome::Problem
                })
            }
        };
    }
    let mut journal = RunJournal::open(&opts.state)?;
    let mut steps_run = 0usize;
    let started = Instant::now();
    let mut case = opts.case.clone();
    let mut answers = opts.answers.as_ref();
    loop {
        let (probes, plan, mut done, waiting) = match journal.open_plan() {
            Some((plan, done, waiting)) => {
                report.event(
serde_json::json!({"event": "resume", "tree": plan.tree, "leaf": plan.leaf, "done": done.iter().filter(|d| **d).count()}),
                    format!(
                        "resuming plan {} / {} at step {}",
                        plan.tree,
                        plan.leaf,
                        done.iter().filter(|d| **d).count() + 1
                    ),
                );
                // A node restarted meanwhile has forgotten its quiesce:
                // assert it again while the plan still needs it.
                for (i, b) in plan.steps.iter().enumerate() {
                    let resumed = plan
                        .steps
                        .iter()
                        .enumerate()
                        .any(|(k, r)| k > i && r.action == "resume_master" && done[k]);
                    if b.is(Action::QuiesceMaster) && done[i] && !resumed {
                        for t in &b.targets {
                            if let Target::Master { addr, .. } = t {
                                call(*addr, &Request::Recovery(RecoveryOp::Quiesce { on: true }))?;
                            }
                        }
                    }
                }
                let probes = LiveProbes::gather(opts.node, &opts.sources)?;
                (probes, plan, done, waiting)
            }
            None => {
                // After a plan, links may take their time to come back;
                // before the first diagnosis, a node restarted just before
                // the run has its feeders connecting.
                settle_links(
                    opts.node,
                    std::time::Duration::from_secs(if steps_run > 0 { 5 } else { 2 }),
                );
                let round = journal.rounds() + 1;
                if round > 12 {
                    bail!(
                        "12 rounds of recovery have run without reaching all_intact; see {}",
                        journal.path.display()
                    );
                }
                // A saved walk answers the first plan this run makes.
                let (probes, plan) = make_plan(
                    &opts,
                    report,
                    &set,
                    round,
                    case.take().as_deref(),
                    answers.take(),
                )?;
                let plan = match plan {
                    Ok(p) => p,
                    Err(why) => {
                        report.event(
                            serde_json::json!({"event": "refused", "reason": why}),
                            format!("refusing to execute: {why}"),
                        );
                        return Ok(Outcome::Problem);
                    }
                };
                // The same plan again right after it ran: what it does did
                // not help, and doing it again may undo more. A person decides.
                if let Some(prev) = journal.last_plan() {
                    if plan.leaf != "all_intact"
                        && prev.leaf == plan.leaf
                        && prev.steps == plan.steps
                    {
                        let why = format!(
                            "the previous round ran plan {} / {} and the diagnosis asks for it again: stopping for an operator (see {})",
                            plan.tree,
                            plan.leaf,
                            journal.path.display()
                        );
                        report.event(
                            serde_json::json!({"event": "refused", "reason": why}),
                            format!("refusing to execute: {why}"),
                        );
                        return Ok(Outcome::Problem);
                    }
                }
                report.event(
                    serde_json::json!({"event": "plan", "plan": plan}),
                    format!(
                        "executing plan {} / {}: {}",
                        plan.tree, plan.leaf, plan.outcome
                    ),
                );
                journal.append(Line::Plan {
                    plan: plan.clone(),
                    at: now(),
                })?;
                let n = plan.steps.len();
                (probes, plan, vec![false; n], None)
            }
        };
        let exec = Exec {
            opts: &opts,
            probes: &probes,
            plan: &plan,
        };
        for (i, b) in plan.steps.iter().enumerate() {
            if done[i] {
                continue;
            }
            if b.operator() {
                // The databases the step names, still stopped now.
                let still_down: Vec<String> = probes
                    .down
                    .iter()
                    .filter(|d| d.kind == super::probes::DownKind::Stopped)
                    .filter(|d| {
                        b.targets
                            .iter()
                            .any(|t| matches!(t, Target::Database { db, .. } if *db == d.db.0))
                    })
                    .map(|d| d.describe())
                    .collect();
                let all_up = (b.is(Action::RestartDatabases) || b.is(Action::RecoverDatabase))
                    && still_down.is_empty();
                if all_up || (opts.confirm && waiting == Some(i)) {
                    journal.append(Line::Confirmed { step: i })?;
                    done[i] = true;
                    continue;
                }
                if waiting != Some(i) {
                    journal.append(Line::Waiting { step: i })?;
                }
                let (targets, down) = (
                    b.targets
                        .iter()
                        .map(Target::describe)
                        .collect::<Vec<_>>()
                        .join(", "),
                    still_down.join("; "),
                );
                let what = match Action::parse(&b.action) {
                    Some(Action::RestartDatabases) => format!(
                        "start the node of {targets} (stopped: {down}), then run again; a node that will not start because its database will not open is rebuilt first with `etp db recover --data DIR --area AREA` (in place, the damaged directory kept)"
                    ),
                    Some(Action::RecoverDatabase) => format!(
                        "rebuild {targets} (stopped: {down}) on its host: `etp db recover --data DIR --area AREA` (in place, the damaged directory kept; `--to-last-good --reapply` if its protection log is damaged too: the transactions read whole after the damage are re-applied where they still fit), start its node, then run again"
                    ),
                    _ => b.reason.clone().unwrap_or_default(),
                };
                report.event(serde_json::json!({"event": "operator", "step": i + 1, "action": b.action, "what": what}),
                    format!("  {}. OPERATOR: {what}\n     when done: etp recover run --execute --confirm (same --state)", i + 1));
                return Ok(Outcome::Problem);
            }
            // Said as it starts: a restore or a load may take long.
            report.event(
                serde_json::json!({"event": "start", "step": i + 1, "action": b.action}),
                format!("  {}. {} …", i + 1, b.describe()),
            );
            let t0 = Instant::now();
            match exec.step(i, b, &mut journal) {
                Ok(detail) => {
                    let seconds = t0.elapsed().as_secs_f64();
                    journal.append(Line::Done {
                        step: i,
                        detail: detail.clone(),
                        seconds,
                    })?;
                    done[i] = true;
                    report.event(
serde_json::json!({"event": "done", "step": i + 1, "action": b.action, "detail": detail, "seconds": seconds}),
                        format!(
                            "  {}. {} — done in {seconds:.1} s: {detail}",
                            i + 1,
                            b.describe()
                        ),
                    );
                }
                Err(e) => {
                    journal.append(Line::Failed {
                        step: i,
                        error: format!("{e:#}"),
                    })?;
                    report.event(serde_json::json!({"event": "failed", "step": i + 1, "action": b.action, "error": format!("{e:#}")}),
                        format!("  {}. {} — FAILED: {e:#}\n     fix the cause and run again: the plan resumes at this step", i + 1, b.describe()));
                    return Ok(Outcome::Problem);
                }
            }
            steps_run += 1;
            if stop_after() == Some(steps_run) {
                eprintln!("etp: stopping after {steps_run} step(s) (ETP_RECOVER_STOP_AFTER_STEPS)");
                std::process::exit(3);
            }
        }
        journal.append(Line::End {
            leaf: plan.leaf.clone(),
            at: now(),
        })?;
        if plan.leaf == "all_intact" {
            report.event(
serde_json::json!({"event": "recovered", "seconds": started.elapsed().as_secs_f64(), "rounds": plan.round}),
                format!(
                    "recovered: every replicate current and verified ({:.1} s)",
                    started.elapsed().as_secs_f64()
                ),
            );
            return Ok(Outcome::Ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every action the shipped trees name has an executor (an `Action`,
    /// matched exhaustively by `Exec::step`), every executor is named by a
    /// tree, and the standard vocabulary lists exactly these.
    #[test]
    fn every_tree_action_has_an_executor_and_every_executor_a_tree() {
        let set = flowcharts::TreeSet::builtin().expect("the shipped trees");
        let mut named = std::collections::BTreeSet::new();
        for tree in set.trees() {
            for node in tree.leaves() {
                if let Some(flowcharts::Leaf {
                    end: flowcharts::LeafEnd::Actions(steps),
                    ..
                }) = node.leaf()
                {
                    named.extend(steps.iter().map(|s| s.action.clone()));
                }
            }
        }
        let executors: std::collections::BTreeSet<String> =
            Action::ALL.iter().map(|(_, n)| n.to_string()).collect();
        let missing: Vec<_> = named.difference(&executors).collect();
        assert!(
            missing.is_empty(),
            "tree actions without an executor: {missing:?}"
        );
        let unused: Vec<_> = executors.difference(&named).collect();
        assert!(unused.is_empty(), "executors no tree names: {unused:?}");
        let vocabulary: std::collections::BTreeSet<String> = flowcharts::Registry::standard()
            .actions()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(vocabulary, executors);
        for (a, n) in Action::ALL {
            assert_eq!(Action::parse(n), Some(*a));
        }
        assert_eq!(Action::parse("no_such_action"), None);
    }

    fn plan(steps: usize) -> BoundPlan {
        BoundPlan {
            round: 1,
            tree: "case2_replicate".into(),
            leaf: "reload_unit_catch_up".into(),
            outcome: "o".into(),
            steps: (0..steps)
                .map(|i| Bound {
                    action: if i == 1 {
                        "manual_intervention".into()
                    } else {
                        "restart_tasks".into()
                    },
                    targets: Vec::new(),
                    sources: Vec::new(),
                    reason: None,
                })
                .collect(),
            levels: vec![(1, 10, 7)],
        }
    }

    #[test]
    fn the_journal_resumes_at_the_first_step_not_done_and_ends_a_plan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = RunJournal::open(dir.path()).expect("open");
        assert!(j.open_plan().is_none());
        j.append(Line::Plan {
            plan: plan(3),
            at: now(),
        })
        .expect("plan");
        j.append(Line::Started {
            step: 0,
            addr: "127.0.0.1:1".into(),
            lsn: 42,
        })
        .expect("started");
        j.append(Line::Done {
            step: 0,
            detail: "d".into(),
            seconds: 0.1,
        })
        .expect("done");
        j.append(Line::Level {
            db: 1,
            file: 10,
            seq: 9,
        })
        .expect("level");
        j.append(Line::Waiting { step: 1 }).expect("waiting");
        let j = RunJournal::open(dir.path()).expect("reopen");
        let (p, done, waiting) = j.open_plan().expect("open plan");
        assert_eq!(p.steps.len(), 3);
        assert_eq!(done, vec![true, false, false]);
        assert_eq!(waiting, Some(1));
        assert_eq!(j.lsn_before("127.0.0.1:1"), Some(42));
        assert_eq!(j.lsn_before("127.0.0.1:2"), None);
        assert_eq!(j.level_after(1, 10), Some(9));
        assert_eq!(j.level_after(1, 11), None);
        let mut j = j;
        j.append(Line::Confirmed { step: 1 }).expect("confirmed");
        let (_, done, waiting) = j.open_plan().expect("open plan");
        assert_eq!(done, vec![true, true, false]);
        assert_eq!(waiting, None);
        j.append(Line::End {
            leaf: "reload_unit_catch_up".into(),
            at: now(),
        })
        .expect("end");
        assert!(j.open_plan().is_none());
        assert_eq!(j.rounds(), 1);
    }

    #[test]
    fn a_torn_last_entry_is_dropped_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = RunJournal::open(dir.path()).expect("open");
        j.append(Line::Plan {
            plan: plan(2),
            at: now(),
        })
        .expect("plan");
        let path = dir.path().join(JOURNAL);
        let good = std::fs::read(&path).expect("read");
        // A crash while the next entry was written: part of its frame.
        let next = propagator::framed::encode_frame(b"{\"line\":\"done\",\"step\":0}");
        let mut b = good.clone();
        b.extend_from_slice(&next[..next.len() - 4]);
        std::fs::write(&path, &b).expect("write");
        let mut j = RunJournal::open(dir.path()).expect("a torn tail is dropped");
        let (_, done, _) = j.open_plan().expect("plan");
        assert_eq!(done, vec![false, false], "the torn step is not done");
        // The torn bytes are cut off: the next entry stands on its own.
        j.append(Line::Waiting { step: 1 }).expect("append");
        let j = RunJournal::open(dir.path()).expect("reopen");
        assert_eq!(j.open_plan().expect("plan").2, Some(1));
        // A flipped byte inside the plan's entry: damage, named.
        let mut b = std::fs::read(&path).expect("read");
        b[30] ^= 0x20;
        std::fs::write(&path, &b).expect("write");
        let err = RunJournal::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("offset 8"), "{err}");
    }

    #[test]
    fn a_journal_of_json_lines_is_carried_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = [
            serde_json::to_string(&Line::Plan {
                plan: plan(2),
                at: now(),
            })
            .expect("json"),
            serde_json::to_string(&Line::Done {
                step: 0,
                detail: "d".into(),
                seconds: 0.1,
            })
            .expect("json"),
        ];
        std::fs::write(
            dir.path().join("recovery.jsonl"),
            format!("{}\n{}\n", lines[0], lines[1]),
        )
        .expect("write");
        let j = RunJournal::open(dir.path()).expect("open");
        assert_eq!(j.open_plan().expect("plan").1, vec![true, false]);
        assert!(!dir.path().join("recovery.jsonl").exists());
        drop(j);
        let j = RunJournal::open(dir.path()).expect("reopen");
        assert_eq!(j.open_plan().expect("plan").1, vec![true, false]);
    }

    /// A crash between the carry-over's replacement and the old file's
    /// removal leaves both: the new journal is whole and wins.
    #[test]
    fn a_carry_over_cut_short_keeps_the_new_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = RunJournal::open(dir.path()).expect("open");
        j.append(Line::Plan {
            plan: plan(2),
            at: now(),
        })
        .expect("plan");
        j.append(Line::Done {
            step: 0,
            detail: "d".into(),
            seconds: 0.1,
        })
        .expect("done");
        drop(j);
        let stale = serde_json::to_string(&Line::Plan {
            plan: plan(3),
            at: now(),
        })
        .expect("json");
        std::fs::write(dir.path().join("recovery.jsonl"), format!("{stale}\n")).expect("write");
        // Read only: the unfinished plan is the new journal's, nothing changes.
        let u = unfinished(dir.path()).expect("read").expect("unfinished");
        assert!(u.contains("1 of 2 steps done"), "{u}");
        assert!(dir.path().join("recovery.jsonl").exists());
        let j = RunJournal::open(dir.path()).expect("open");
        assert_eq!(j.open_plan().expect("plan").1, vec![true, false]);
        assert!(!dir.path().join("recovery.jsonl").exists());
    }
}
