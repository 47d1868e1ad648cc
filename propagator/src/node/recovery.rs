//! Recovery operations: the steps of a recovery plan carried out on this
//! node (quiesce, restore a copy set, rewrite a range, refresh a log, raise
//! an incarnation), with its tasks stopped and rebuilt around them.

use super::*;

impl Node {
    /// A step of a recovery plan.
    pub(super) async fn recovery(
        self: &Arc<Self>,
        conv: &mut Conversation,
        op: RecoveryOp,
    ) -> Response {
        use std::sync::atomic::Ordering;
        let db = self.db.clone();
        // What rewrites a master or its log runs only while client updates
        // are refused, so no acknowledged commit can fall between a
        // restore and its roll-forward (a restarted node forgets a quiesce:
        // the plan asserts it again when it resumes).
        let touches_master = match &op {
            // (Raising an incarnation rewrites nothing: the commits
            // after it simply carry the new one.)
            RecoveryOp::RefreshLog { .. } => true,
            RecoveryOp::Restore { file, .. }
            | RecoveryOp::RestoreRange { file, .. }
            | RecoveryOp::Reapply { master: file, .. } => db.files().iter().any(|f| {
                f.def.fnr == *file && matches!(f.def.role, Role::Master { .. } | Role::Log { .. })
            }),
            _ => false,
        };
        if touches_master && !self.quiesced.load(Ordering::SeqCst) {
            return Response::error(
                "a master or its log is rewritten only while client updates are refused: quiesce this node first (RecoveryOp::Quiesce)",
            );
        }
        let json = |v: serde_json::Value| Response::Text(v.to_string());
        match op {
            RecoveryOp::Quiesce { on } => {
                let lsn = {
                    let _gate = self.update_gate.write().await;
                    // Durable first: a restarted node still refuses.
                    let c = self.control.clone();
                    let r = errors::off_reactor(move || {
                        Ok::<_, OpError>(c.update(|s| s.quiesced = on)?)
                    });
                    if let Err(e) = r.await {
                        return Response::error(e);
                    }
                    self.quiesced.store(on, Ordering::SeqCst);
                    self.db.last_lsn()
                };
                tracing::warn!(
                    quiesced = on,
                    %lsn,
                    "client updates {}",
                    if on { "refused" } else { "accepted again" }
                );
                json(serde_json::json!({ "quiesced": on, "lsn": lsn.0 }))
            }
            RecoveryOp::Exempt => {
                conv.exempt = true;
                json(serde_json::json!({ "exempt": true }))
            }
            RecoveryOp::RestoreRange {
                file,
                from,
                to,
                records,
                last,
            } => {
                let r = blocking(move || {
                    if from == Isn(1) {
                        db.begin_restore(file, "rebuilt by etp recover run")?;
                    }
                    let wanted = records
                        .into_iter()
                        .map(|(i, b)| (i, b.into_vec()))
                        .collect();
                    db.restore_range(file, from, to, wanted, last)
                })
                .await;
                match r {
                    Ok((info, stats)) => json(serde_json::json!({
                        "lsn": info.lsn, "written": stats.written, "removed": stats.removed,
                    })),
                    Err(e) => Response::error(e),
                }
            }
            RecoveryOp::RefreshLog { master, at } => {
                self.stop_feeders_of(Some(master)).await;
                match blocking(move || db.refresh_log(master, at)).await {
                    Ok(r) => match serde_json::to_value(&r) {
                        Ok(v) => {
                            self.rebuild_tasks_stopped().await;
                            json(v)
                        }
                        Err(e) => Response::error(e.to_string()),
                    },
                    Err(e) => Response::error(e),
                }
            }
            RecoveryOp::RaiseIncarnation { master } => {
                self.stop_feeders_of(Some(master)).await;
                match blocking(move || db.raise_incarnation(master)).await {
                    Ok((inc, lsn)) => {
                        self.rebuild_tasks_stopped().await;
                        json(
                            serde_json::json!({ "master": master, "incarnation": inc, "lsn": lsn }),
                        )
                    }
                    Err(e) => Response::error(e),
                }
            }
            RecoveryOp::Promote {
                file,
                confirmation,
                log,
                at,
                floor,
            } => match blocking(move || db.promote_replicate(file, confirmation, log, at, floor))
                .await
            {
                Ok(p) => match serde_json::to_value(&p) {
                    Ok(v) => json(v),
                    Err(e) => Response::error(e.to_string()),
                },
                Err(e) => Response::error(e),
            },
            RecoveryOp::Rebase { file } => match blocking(move || db.rebase_file(file)).await {
                Ok(m) => json(
                    serde_json::json!({ "file": file, "count": m.count, "digest": m.digest.to_string() }),
                ),
                Err(e) => Response::error(e),
            },
            RecoveryOp::Reapply {
                master,
                level,
                upto,
            } => {
                let r = errors::off_reactor(move || {
                    crate::reapply::from_log(&db, master, level, upto)
                        .map_err(|e| Failure::from(e.to_string()))
                })
                .await;
                match r.and_then(|r| {
                    serde_json::to_string(&r).map_err(|e| Failure::from(e.to_string()))
                }) {
                    Ok(t) => {
                        tracing::warn!(
                            %master,
                            %level,
                            %upto,
                            "re-applied the master's transactions its log holds after its restored level"
                        );
                        Response::Text(t)
                    }
                    Err(e) => Response::error(e),
                }
            }
            RecoveryOp::Restore {
                file,
                regenerate,
                upto,
            } => {
                let area = match self.copies.root() {
                    Ok(a) => a,
                    Err(e) => return Response::error(e),
                };
                self.stop_feeders_of(None).await;
                let r = errors::off_reactor(move || {
                    crate::copy::restore::restore_in_node(
                        &db,
                        &area,
                        file,
                        regenerate.then_some(upto),
                    )
                    .map_err(|e| Failure::from(e.to_string()))
                })
                .await;
                self.rebuild_tasks_stopped().await;
                match r {
                    Ok(v) => Response::Text(v.to_string()),
                    Err(e) => Response::error(e),
                }
            }
        }
    }

    pub(super) async fn stop_feeders_of(&self, master: Option<Fnr>) {
        for t in self.all_tasks() {
            if master.is_none_or(|m| m == t.master()) {
                t.stop_feeders("stopped for recovery").await;
            }
        }
    }

    /// Rebuilds this node's tasks from its topology (their state is read
    /// afresh from the restored files) and leaves their feeders stopped
    /// until the plan restarts them.
    pub(super) async fn rebuild_tasks_stopped(self: &Arc<Self>) {
        // A restored administration file may bring the topology back, and
        // its control record (policy, marks, gaps, load orders) with it.
        let db = self.db.clone();
        let control = self.control.clone();
        let restored = errors::off_reactor(move || {
            let v = stored_topology(&db)?;
            if let Some(v) = &v {
                control.reload(v.admin_file())?;
            }
            Ok::<_, NodeError>(v)
        })
        .await;
        match restored {
            Ok(Some(v)) => self.set_topology(v),
            Ok(None) => {}
            Err(e) => tracing::error!(reason = %e, "administration file still unusable"),
        }
        let v = lock(&self.topology).clone();
        if let Some(v) = v {
            self.start_tasks(&v, false, false);
        }
    }
}
