//! Operator actions: task control, the policy mode, and a replicate's
//! lifecycle (shun, reset an error, reinit, confirmation edits, verify).

use super::*;
use crate::wire::OperationRequest;

impl Node {
    pub(super) async fn operation(&self, r: OperationRequest) -> Response {
        match r {
            OperationRequest::TaskStatus | OperationRequest::ReplicateStatus => {
                self.reports().await
            }
            OperationRequest::TaskControl { master, action } => {
                self.task_control(master, action).await
            }
            OperationRequest::Replicate { name, action } => {
                self.replicate_action(name, action).await
            }
            OperationRequest::Policy { set } => self.policy(set).await,
            OperationRequest::Xref { master, id, seq } => self.xref(master, id, seq).await,
            OperationRequest::LogCleanup {
                master,
                until,
                execute,
            } => self.log_cleanup(master, until, execute).await,
            OperationRequest::WaitConfirmed {
                replicate,
                seq,
                timeout_ms,
                applied,
            } => {
                self.wait_confirmed(replicate, seq, timeout_ms, applied)
                    .await
            }
        }
    }

    /// The tasks of this node for `master` (all of them without one).
    fn tasks_for(&self, master: Option<Fnr>) -> Vec<Arc<task::Task>> {
        self.all_tasks()
            .into_iter()
            .filter(|t| master.is_none_or(|m| m == t.master()))
            .collect()
    }

    /// The transaction with client id `id`, or the one holding `seq`, in
    /// the log of a master of this node.
    pub(super) async fn xref(
        &self,
        master: Option<Fnr>,
        id: Option<String>,
        seq: Option<Seq>,
    ) -> Response {
        let tasks = self.tasks_for(master);
        if tasks.is_empty() {
            return Response::error("no replication task on this node matches");
        }
        let r = errors::off_reactor(move || {
            let mut found = Vec::new();
            for t in tasks {
                found.extend(t.xref(id.as_deref(), seq)?);
            }
            Ok::<_, OpError>(found)
        })
        .await;
        match r {
            Ok(found) if found.is_empty() => Response::error(OpError::NotHere(
                "no such transaction in the log of any master on this node".into(),
            )),
            Ok(found) => Response::Xref(found),
            Err(e) => Response::error(e),
        }
    }

    /// The log cleanup plan of each master (carried out with `execute`).
    pub(super) async fn log_cleanup(
        &self,
        master: Option<Fnr>,
        until: Option<Seq>,
        execute: bool,
    ) -> Response {
        let tasks = self.tasks_for(master);
        if tasks.is_empty() {
            return Response::error("no replication task on this node matches");
        }
        // The horizon is read here, from the node's own copy area: a
        // request cannot widen what a cleanup deletes.
        let area = self.copies.area.clone();
        let dbid = self.db.dbid();
        let r = errors::off_reactor(move || {
            let horizons = match area {
                Some(root) => crate::copy::area::Area::open(&root)
                    .and_then(|a| a.horizons(dbid))
                    .map_err(|e| OpError::Refused(format!("the node's copy area: {e}")))?,
                None => BTreeMap::new(),
            };
            tasks
                .iter()
                .map(|t| t.cleanup_plan(until, horizons.get(&t.master()).copied(), execute))
                .collect::<Result<Vec<_>, OpError>>()
        })
        .await;
        match r {
            Ok(plans) => Response::Cleanup(plans),
            Err(e) => Response::error(e),
        }
    }

    /// Waits until `replicate` confirmed `seq`, at most `timeout_ms`.
    pub(super) async fn wait_confirmed(
        &self,
        replicate: String,
        seq: Seq,
        timeout_ms: u64,
        applied: bool,
    ) -> Response {
        // A wait holds its connection: bounded whatever the client asks.
        let timeout_ms = timeout_ms.min(MAX_WAIT_MS);
        let rx = self
            .all_tasks()
            .iter()
            .find_map(|t| t.watch_confirmed(&replicate, applied));
        let Some(mut rx) = rx else {
            return Response::error(format!(
                "no task on this node feeds replicate {replicate:?}"
            ));
        };
        let limit = std::time::Duration::from_millis(timeout_ms);
        let reached = tokio::time::timeout(limit, async {
            rx.wait_for(|s| *s >= seq).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Response::Ok,
            Ok(Err(_)) => Response::error("the task stopped"),
            Err(_) => Response::error(format!(
                "replicate {replicate:?} did not {} seq {seq} within {timeout_ms} ms",
                if applied { "apply" } else { "confirm" }
            )),
        }
    }

    pub(super) async fn task_control(&self, master: Option<Fnr>, action: TaskAction) -> Response {
        let tasks: Vec<_> = self
            .all_tasks()
            .into_iter()
            .filter(|t| master.is_none_or(|m| m == t.master()))
            .collect();
        if tasks.is_empty() {
            return Response::error(match master {
                Some(m) => format!("no replication task for master file {m} on this node"),
                None => "this node runs no replication task".into(),
            });
        }
        let policy = self.control.policy();
        if policy == Policy::Maintenance && action != TaskAction::Stop {
            return Response::error(
                "policy is maintenance: no task starts (etp policy set automatic|manual first)",
            );
        }
        for t in &tasks {
            match action {
                TaskAction::Start => t.start_feeders(),
                TaskAction::Stop => t.stop_feeders("stopped by the operator").await,
                TaskAction::Restart => {
                    t.stop_feeders("restarting").await;
                    t.start_feeders();
                }
            }
        }
        self.reports().await
    }

    pub(super) async fn policy(&self, set: Option<Policy>) -> Response {
        let Some(p) = set else {
            return Response::Policy(self.control.policy());
        };
        let c = self.control.clone();
        let r = errors::off_reactor(move || Ok::<_, OpError>(c.update(|s| s.policy = p)?));
        if let Err(e) = r.await {
            return Response::error(e);
        }
        for t in self.all_tasks() {
            if p == Policy::Maintenance {
                t.stop_feeders("policy maintenance").await;
            } else {
                t.start_feeders();
            }
        }
        Response::Policy(p)
    }

    pub(super) async fn replicate_action(&self, name: String, action: ReplicateAction) -> Response {
        let t = match self.task_of(&name) {
            Ok(t) => t,
            Err(e) => return Response::error(e),
        };
        let Some(f) = t.feeder(&name).cloned() else {
            return Response::error(format!("no task on this node feeds replicate {name:?}"));
        };
        let c = self.control.clone();
        let update = |g: Box<dyn FnOnce(&mut control::ReplicateControl) + Send>| {
            let (c, n) = (c.clone(), name.clone());
            async move {
                errors::off_reactor(move || Ok::<_, OpError>(c.update_replicate(&n, g)?)).await
            }
        };
        let policy = self.control.policy();
        match action {
            ReplicateAction::Errors => {
                return Response::Errors(self.control.replicate(&name).errors);
            }
            ReplicateAction::Init {
                from,
                reinit,
                rewrite,
                chunk,
            } => {
                let ctl = self.control.replicate(&name);
                if ctl.load.is_none() {
                    if ctl.shunned.is_some() {
                        return Response::error(format!(
                            "replicate {name} is shunned: unshun it first"
                        ));
                    }
                    let has = lock(&f.st).has_confirmation;
                    if has && !reinit {
                        return Response::error(format!(
                            "replicate {name} is already initialized (it confirms seq {}): use reinit",
                            lock(&f.st).confirmed
                        ));
                    }
                    if let Some(src) = &from {
                        if src == &name {
                            return Response::error("a replicate cannot be loaded from itself");
                        }
                    }
                    t.stop_feeder(&f, "a load was ordered").await;
                    let order = control::LoadOrder {
                        id: stream::new_load_id(),
                        from,
                        rewrite,
                        chunk,
                        requested_us: chrono::Utc::now().timestamp_micros(),
                        why: if reinit {
                            "reinit ordered by the operator"
                        } else {
                            "init ordered by the operator"
                        }
                        .into(),
                    };
                    if let Err(e) = update(Box::new(move |r| {
                        r.log("info", &format!("{} ({})", order.why, order.id));
                        r.error = None;
                        r.load = Some(order);
                    }))
                    .await
                    {
                        return Response::error(e);
                    }
                }
                if policy == Policy::Maintenance {
                    return Response::error(
                        "the load is ordered; it starts when the policy leaves maintenance",
                    );
                }
                t.start_one(&f);
            }
            ReplicateAction::Shun { reason } => {
                t.stop_feeder(&f, "shunned").await;
                let r2 = reason.clone();
                if let Err(e) = update(Box::new(move |r| {
                    r.log("shun", &r2);
                    r.shunned = Some((r2, chrono::Utc::now().timestamp_micros()));
                }))
                .await
                {
                    return Response::error(e);
                }
                // Feeds nothing: it tells the replicate's node that it is
                // shunned (so it refuses current reads), then ends.
                t.start_one(&f);
            }
            ReplicateAction::Restoring { why } => {
                if why.is_some() {
                    t.stop_feeder(&f, "being restored").await;
                }
                let set = why.is_some();
                if let Err(e) = update(Box::new(move |r| {
                    match &why {
                        Some(w) => r.log("info", &format!("restore begins: {w}")),
                        None => r.log(
                            "info",
                            "restore ended: feeding resumes from the restored confirmation",
                        ),
                    }
                    r.restoring = why;
                }))
                .await
                {
                    return Response::error(e);
                }
                if !set && policy != Policy::Maintenance {
                    t.start_one(&f);
                }
            }
            ReplicateAction::Unshun => {
                if let Err(e) = update(Box::new(|r| {
                    r.log("unshun", "unshunned by the operator");
                    r.shunned = None;
                }))
                .await
                {
                    return Response::error(e);
                }
                if policy != Policy::Maintenance {
                    t.start_one(&f);
                }
            }
            ReplicateAction::ResetError => {
                if let Err(e) = update(Box::new(|r| {
                    if let Some(why) = r.restoring.take() {
                        r.log(
                            "reset",
                            &format!("restore mark cleared by the operator: {why}"),
                        );
                    }
                    // Still diverged, the next link open finds it again.
                    r.diverged = None;
                    let what = r
                        .error
                        .take()
                        .map_or("no error was set".to_string(), |e| e.reason);
                    r.log("reset", &format!("error reset by the operator: {what}"));
                }))
                .await
                {
                    return Response::error(e);
                }
                // The operator retries: a load refused before gets its retry again.
                f.forget_refusal();
                if policy != Policy::Maintenance {
                    t.stop_feeder(&f, "error reset").await;
                    t.start_one(&f);
                }
            }
            ReplicateAction::ConfirmSet { seq, reason } => {
                t.stop_feeder(&f, "confirm set").await;
                let r = load::confirm_set(&t.ctx, &f, seq, &reason).await;
                if policy != Policy::Maintenance {
                    t.start_one(&f);
                }
                if let Err(e) = r {
                    return Response::error(e);
                }
            }
            ReplicateAction::Verify { max_isns } => {
                t.stop_feeder(&f, "paused for verify").await;
                let r = load::verify(&t.ctx, &f, max_isns.max(1) as usize).await;
                if policy != Policy::Maintenance {
                    t.start_one(&f);
                }
                return match r {
                    Ok(v) => Response::Verify(v),
                    Err(e) => Response::error(e),
                };
            }
        }
        self.reports().await
    }
}

/// The longest a `WaitConfirmed` waits, whatever its client asks (10 min).
pub const MAX_WAIT_MS: u64 = 600_000;
