//! The operator's daily actions from the console: each a form, confirmed
//! on a second page before anything changes, carried out through the same
//! requests as the CLI's, and logged with who asked.
//!
//! Safe by default: only POST changes anything (GET shows the forms),
//! every form carries the console's CSRF token (a random value made at
//! start and shown only in its own pages), a request whose `Origin` is not
//! the console's loopback name is refused, and a malformed form is a 400
//! naming what is wrong, with nothing done.

use super::Console;
use maud::{html, Markup};
use propagator::node::client::Client;
use propagator::node::control::Policy;
use propagator::wire::{OperationRequest, ReplicateAction, Request, Response, TaskAction};
use propagator::{DbId, Fnr};
use std::collections::BTreeMap;

/// An action an operator asked for, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    Shun {
        replicate: String,
        reason: String,
    },
    Unshun {
        replicate: String,
    },
    ResetError {
        replicate: String,
    },
    /// A master named by its database and file (names need not be unique
    /// across databases), with its name for people.
    Task {
        master: String,
        database: u32,
        file: u32,
        action: TaskAction,
    },
    Policy {
        mode: Policy,
    },
    /// Reload a replicate online from its master (`scoped`: only what
    /// differs moves); its progress shows on the cluster page.
    Reinit {
        replicate: String,
        scoped: bool,
    },
    /// Compare a replicate with its master as of its confirmed seq.
    Verify {
        replicate: String,
    },
    /// Run a copy job of a node now (it keeps its schedule).
    CopyJob {
        database: u32,
        job: String,
    },
}

impl Act {
    /// Reads a posted form; `Err` names what is wrong.
    pub fn parse(form: &BTreeMap<String, String>) -> Result<Act, String> {
        let get = |k: &str| -> Result<String, String> {
            match form.get(k).map(|v| v.trim()) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(format!("the form has no {k}")),
            }
        };
        let number = |k: &str| -> Result<u32, String> {
            get(k)?.parse().map_err(|_| format!("{k} must be a number"))
        };
        let action = get("action")?;
        Ok(match action.as_str() {
            "shun" => {
                let reason = get("reason")
                    .map_err(|_| "a shun needs a reason (it is kept in the replicate's error log)".to_string())?;
                if reason.len() > 500 {
                    return Err(format!(
                        "the reason is {} bytes; at most 500",
                        reason.len()
                    ));
                }
                Act::Shun {
                    replicate: get("replicate")?,
                    reason,
                }
            }
            "unshun" => Act::Unshun {
                replicate: get("replicate")?,
            },
            "reset_error" => Act::ResetError {
                replicate: get("replicate")?,
            },
            "task_start" | "task_stop" | "task_restart" => Act::Task {
                master: get("master")?,
                database: number("database")?,
                file: number("file")?,
                action: match action.as_str() {
                    "task_start" => TaskAction::Start,
                    "task_stop" => TaskAction::Stop,
                    _ => TaskAction::Restart,
                },
            },
            "policy" => Act::Policy {
                mode: get("mode")?
                    .parse()
                    .map_err(|e: String| format!("mode: {e}"))?,
            },
            "reinit" => Act::Reinit {
                replicate: get("replicate")?,
                scoped: match form.get("scoped").map(String::as_str) {
                    None | Some("no") => false,
                    Some("yes") => true,
                    Some(other) => return Err(format!("scoped must be yes or no, not {other:?}")),
                },
            },
            "verify" => Act::Verify {
                replicate: get("replicate")?,
            },
            "copy_job" => Act::CopyJob {
                database: number("database")?,
                job: get("job")?,
            },
            other => {
                return Err(format!(
                    "unknown action {other:?} (shun, unshun, reset_error, task_start, task_stop, task_restart, policy, reinit, verify, copy_job)"
                ))
            }
        })
    }

    /// What it does, for people (the confirmation page and the log).
    pub fn describe(&self) -> String {
        match self {
            Act::Shun { replicate, reason } => {
                format!("shun replicate {replicate} (stop feeding it; it refuses current reads): {reason}")
            }
            Act::Unshun { replicate } => format!("unshun replicate {replicate} (feed it again)"),
            Act::ResetError { replicate } => {
                format!("reset the error of replicate {replicate} (its feeder restarts)")
            }
            Act::Task {
                master,
                database,
                file,
                action,
            } => format!(
                "{} the replication task of master {master} (file {file} of database {database})",
                match action {
                    TaskAction::Start => "start",
                    TaskAction::Stop => "stop",
                    TaskAction::Restart => "restart",
                }
            ),
            Act::Policy { mode } => format!("set the policy of every node to {mode}"),
            Act::Reinit { replicate, scoped } => format!(
                "reinitialize replicate {replicate} online from its master ({}; the master keeps committing)",
                if *scoped {
                    "scoped: only the records that differ move"
                } else {
                    "every record written again"
                }
            ),
            Act::Verify { replicate } => {
                format!("verify replicate {replicate} against its master")
            }
            Act::CopyJob { database, job } => {
                format!("run copy job {job} of database {database} now")
            }
        }
    }

    /// The form fields that ask for it again (the confirmation's form).
    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Act::Shun { replicate, reason } => vec![
                ("action", "shun".into()),
                ("replicate", replicate.clone()),
                ("reason", reason.clone()),
            ],
            Act::Unshun { replicate } => {
                vec![
                    ("action", "unshun".into()),
                    ("replicate", replicate.clone()),
                ]
            }
            Act::ResetError { replicate } => vec![
                ("action", "reset_error".into()),
                ("replicate", replicate.clone()),
            ],
            Act::Task {
                master,
                database,
                file,
                action,
            } => vec![
                (
                    "action",
                    match action {
                        TaskAction::Start => "task_start",
                        TaskAction::Stop => "task_stop",
                        TaskAction::Restart => "task_restart",
                    }
                    .into(),
                ),
                ("master", master.clone()),
                ("database", database.to_string()),
                ("file", file.to_string()),
            ],
            Act::Policy { mode } => vec![("action", "policy".into()), ("mode", mode.to_string())],
            Act::Reinit { replicate, scoped } => vec![
                ("action", "reinit".into()),
                ("replicate", replicate.clone()),
                ("scoped", if *scoped { "yes" } else { "no" }.into()),
            ],
            Act::Verify { replicate } => vec![
                ("action", "verify".into()),
                ("replicate", replicate.clone()),
            ],
            Act::CopyJob { database, job } => vec![
                ("action", "copy_job".into()),
                ("database", database.to_string()),
                ("job", job.clone()),
            ],
        }
    }

    /// Carries it out through the node the topology says (blocking).
    pub fn run(&self, c: &Console) -> Result<String, String> {
        let v = super::view::topology(c.node).map_err(|e| format!("{e:#}"))?;
        let feeder_of = |name: &str| -> Result<std::net::SocketAddr, String> {
            let r = v
                .replicates
                .iter()
                .find(|r| r.def.name == name)
                .ok_or_else(|| format!("the topology names no replicate {name:?}"))?;
            v.addresses
                .get(&DbId(r.def.master_database))
                .copied()
                .ok_or_else(|| format!("no address for database {}", r.def.master_database))
        };
        let call = |addr: std::net::SocketAddr, req: Request| -> Result<(), String> {
            let mut client = Client::connect(addr).map_err(|e| e.to_string())?;
            match client.call(&req).map_err(|e| e.to_string())? {
                Response::Error { message, .. } => Err(message),
                _ => Ok(()),
            }
        };
        let replicate = |name: &str, action: ReplicateAction| {
            call(
                feeder_of(name)?,
                Request::Operation(OperationRequest::Replicate {
                    name: name.to_string(),
                    action,
                }),
            )
        };
        match self {
            Act::Shun {
                replicate: r,
                reason,
            } => replicate(
                r,
                ReplicateAction::Shun {
                    reason: reason.clone(),
                },
            )?,
            Act::Unshun { replicate: r } => replicate(r, ReplicateAction::Unshun)?,
            Act::ResetError { replicate: r } => replicate(r, ReplicateAction::ResetError)?,
            Act::Task {
                master,
                database,
                file,
                action,
            } => {
                let m = v
                    .topology
                    .masters
                    .iter()
                    .find(|m| m.database == *database && m.file == *file)
                    .ok_or_else(|| {
                        format!("the topology has no master {master:?} in file {file} of database {database}")
                    })?;
                let addr = v
                    .addresses
                    .get(&DbId(m.database))
                    .copied()
                    .ok_or_else(|| format!("no address for database {}", m.database))?;
                call(
                    addr,
                    Request::Operation(OperationRequest::TaskControl {
                        master: Some(Fnr(m.file)),
                        action: *action,
                    }),
                )?
            }
            Act::Reinit {
                replicate: r,
                scoped,
            } => {
                replicate(
                    r,
                    ReplicateAction::Init {
                        from: None,
                        reinit: true,
                        rewrite: !scoped,
                        chunk: None,
                    },
                )?;
                return Ok(format!(
                    "ordered: {}; its progress shows on the cluster page",
                    self.describe()
                ));
            }
            Act::Verify { replicate: r } => {
                let addr = feeder_of(r)?;
                let mut client = Client::connect(addr).map_err(|e| e.to_string())?;
                let said = client
                    .call(&Request::Operation(OperationRequest::Replicate {
                        name: r.clone(),
                        action: ReplicateAction::Verify { max_isns: 20 },
                    }))
                    .map_err(|e| e.to_string())?;
                return match said {
                    Response::Verify(v) if v.equal => Ok(format!(
                        "replicate {r} equals its master as of seq {} ({} records, digest {})",
                        v.seq, v.count, v.digest
                    )),
                    Response::Verify(v) => Ok(format!(
                        "replicate {r} DIFFERS from its master as of seq {}: it holds {} records (digest {}), the master's view {} (digest {}); {} of {} ranges differ; first differing isns: {}",
                        v.seq,
                        v.count,
                        v.digest,
                        v.expected_count,
                        v.expected_digest,
                        v.ranges_differing,
                        v.ranges_checked,
                        v.differences
                            .iter()
                            .map(|(i, k)| format!("{i} ({k})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Response::Error { message, .. } => Err(message),
                    other => Err(format!("the node answered {other:?}")),
                };
            }
            Act::CopyJob { database, job } => {
                let addr = v
                    .addresses
                    .get(&DbId(*database))
                    .copied()
                    .ok_or_else(|| format!("the topology has no database {database}"))?;
                return super::job::start_copy_job(c, addr, *database, job.clone());
            }
            Act::Policy { mode } => {
                // Every node is asked, and each one's result said: a
                // policy half set is reported as such.
                let results: Vec<(DbId, Result<(), String>)> = v
                    .addresses
                    .iter()
                    .map(|(db, addr)| {
                        (
                            *db,
                            call(
                                *addr,
                                Request::Operation(OperationRequest::Policy { set: Some(*mode) }),
                            ),
                        )
                    })
                    .collect();
                let failed: Vec<String> = results
                    .iter()
                    .filter_map(|(db, r)| r.as_ref().err().map(|e| format!("database {db}: {e}")))
                    .collect();
                if !failed.is_empty() {
                    let set: Vec<String> = results
                        .iter()
                        .filter(|(_, r)| r.is_ok())
                        .map(|(db, _)| db.to_string())
                        .collect();
                    return Err(format!(
                        "set on database(s) {} only; not on {}",
                        if set.is_empty() {
                            "none".into()
                        } else {
                            set.join(", ")
                        },
                        failed.join("; ")
                    ));
                }
            }
        }
        Ok(format!("done: {}", self.describe()))
    }
}

/// Per database of the topology `node` holds, the names of its copy jobs
/// (a node that cannot be asked, or defines none, has none here).
pub fn job_names(node: std::net::SocketAddr) -> Vec<(u32, Vec<String>)> {
    let Ok(v) = super::view::topology(node) else {
        return Vec::new();
    };
    v.addresses
        .iter()
        .map(|(db, addr)| {
            let names = backup::schedule::fetch_jobs(*addr)
                .ok()
                .and_then(|t| backup::schedule::parse_jobs(&t).ok())
                .map(|(def, _)| def.job.into_iter().map(|j| j.name).collect())
                .unwrap_or_default();
            (db.0, names)
        })
        .collect()
}

/// The confirmation page: what will be done, and a form that does it.
pub fn confirm(a: &Act, token: &str) -> Markup {
    super::view::page(
        "Confirm",
        None,
        html! {
            h1 { "Confirm" }
            p id="what" { (a.describe()) }
            form method="post" action="/act" {
                input type="hidden" name="token" value=(token);
                input type="hidden" name="confirm" value="yes";
                @for (k, v) in a.fields() { input type="hidden" name=(k) value=(v); }
                button type="submit" { "Yes, " (a.describe()) }
                " " a href="/actions" { "No, back" }
            }
        },
    )
}

/// The actions page: a form per replicate and master, the policy, and a
/// form per copy job (`jobs`: per database, its job names).
pub fn page(v: &super::view::ClusterView, token: &str, jobs: &[(u32, Vec<String>)]) -> Markup {
    let hidden = html! { input type="hidden" name="token" value=(token); };
    super::view::page(
        "Actions",
        None,
        html! {
            h1 { "Actions" }
            p.meta { "Each asks for a confirmation first, and is logged with who asked." }
            h2 { "Replicates" }
            table id="replicate-actions" {
                tr { th { "replicate" } th { "state" } th { "actions" } }
                @for t in v.masters.iter().filter_map(|m| m.task.as_ref()) {
                    @for r in &t.replicates {
                        tr id={ "act-" (r.name) } {
                            td { (r.name) }
                            td { (r.state.to_string()) }
                            td {
                                form.inline method="post" action="/act" {
                                    (hidden) input type="hidden" name="action" value="shun";
                                    input type="hidden" name="replicate" value=(r.name);
                                    input type="text" name="reason" placeholder="why" required;
                                    button type="submit" { "shun" }
                                }
                                @for (act, label) in [("unshun", "unshun"), ("reset_error", "reset error"), ("verify", "verify")] {
                                    form.inline method="post" action="/act" {
                                        (hidden) input type="hidden" name="action" value=(act);
                                        input type="hidden" name="replicate" value=(r.name);
                                        button type="submit" { (label) }
                                    }
                                }
                                form.inline method="post" action="/act" {
                                    (hidden) input type="hidden" name="action" value="reinit";
                                    input type="hidden" name="replicate" value=(r.name);
                                    label { input type="checkbox" name="scoped" value="yes"; " scoped" }
                                    button type="submit" { "reinit" }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Tasks" }
            table id="task-actions" {
                tr { th { "master" } th { "state" } th { "actions" } }
                @for m in &v.masters {
                    tr {
                        td { (m.name) }
                        td { (m.task.as_ref().map_or("–".to_string(), |t| t.state.to_string())) }
                        td {
                            @for (act, label) in [("task_stop", "stop"), ("task_start", "start"), ("task_restart", "restart")] {
                                form.inline method="post" action="/act" {
                                    (hidden) input type="hidden" name="action" value=(act);
                                    input type="hidden" name="master" value=(m.name);
                                    input type="hidden" name="database" value=(m.db.0);
                                    input type="hidden" name="file" value=(m.file);
                                    button type="submit" { (label) }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Policy" }
            form method="post" action="/act" {
                (hidden) input type="hidden" name="action" value="policy";
                select name="mode" {
                    @for m in ["automatic", "manual", "maintenance"] { option value=(m) { (m) } }
                }
                button type="submit" { "set on every node" }
            }
            h2 { "Copy jobs" }
            @if jobs.iter().all(|(_, j)| j.is_empty()) {
                p.meta { "No node defines a copy job (etp copy jobs set)." }
            } @else {
                table id="copy-job-actions" {
                    tr { th { "database" } th { "job" } th { "action" } }
                    @for (db, names) in jobs {
                        @for name in names {
                            tr id={ "job-" (db) "-" (name) } {
                                td { (db) }
                                td { (name) }
                                td {
                                    form method="post" action="/act" {
                                        (hidden) input type="hidden" name="action" value="copy_job";
                                        input type="hidden" name="database" value=(db);
                                        input type="hidden" name="job" value=(name);
                                        button type="submit" { "run now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_form_is_read_or_refused_naming_what_is_wrong() {
        assert_eq!(
            Act::parse(&form(&[
                ("action", "shun"),
                ("replicate", "r"),
                ("reason", " disk ")
            ])),
            Ok(Act::Shun {
                replicate: "r".into(),
                reason: "disk".into()
            })
        );
        assert_eq!(
            Act::parse(&form(&[("action", "policy"), ("mode", "manual")])),
            Ok(Act::Policy {
                mode: Policy::Manual
            })
        );
        for (f, words) in [
            (form(&[]), "no action"),
            (form(&[("action", "drop")]), "unknown action"),
            (
                form(&[("action", "shun"), ("replicate", "r")]),
                "needs a reason",
            ),
            (form(&[("action", "unshun")]), "no replicate"),
            (form(&[("action", "policy"), ("mode", "sometimes")]), "mode"),
            (form(&[("action", "task_stop")]), "no master"),
            (
                form(&[
                    ("action", "task_stop"),
                    ("master", "m"),
                    ("database", "1"),
                    ("file", "x"),
                ]),
                "file must be a number",
            ),
        ] {
            let e = Act::parse(&f).expect_err("refused");
            assert!(e.contains(words), "{f:?}: {e}");
        }
        // What the confirmation posts again reads back the same.
        let a = Act::Task {
            master: "m".into(),
            database: 2,
            file: 10,
            action: TaskAction::Restart,
        };
        let again: BTreeMap<String, String> = a
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Act::parse(&again), Ok(a));
    }
}
