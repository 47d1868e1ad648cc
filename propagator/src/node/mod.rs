//! The node: one database served over TCP.
//!
//! A node accepts connections and answers the requests of [`crate::wire`]:
//! client sessions (a connection's session is backed out when it drops),
//! dumps, administration (topology apply/export), task control, and
//! replication links from masters' tasks. It runs the replication task of
//! every master the topology puts on its database ([`task`]).
//!
//! Database calls block (ET waits for the log sync), so each runs on tokio's
//! blocking pool; the reactor threads only move frames.

pub mod client;
pub mod control;
mod load;
pub mod metrics;
pub mod task;

use crate::catalog::Role;
use crate::database::{CommitInfo, Database};
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Seq};
use crate::record::{decode_record, Record, Value};
use crate::session::Session;
use crate::topology::{FileWant, Valid};
use crate::wire::{
    codec, Command, CommitReply, Confirmation, ErrorCode, Failure, LinkState, LoadProgress,
    NodeInfo, RecoveryOp, ReplicateAction, Request, Response, TaskAction,
};
use client::Conn;
use control::{Control, Policy};
use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// The record of the administration file that holds the topology text.
const TOPOLOGY_ISN: Isn = Isn(1);

/// The most record bytes one dump page carries.
const MAX_DUMP_PAGE_BYTES: usize = 16 << 20;

/// Commit-to-apply samples kept per node (oldest dropped first).
const LAG_SAMPLES: usize = 100_000;

/// Per master transaction: (its last seq, its master commit time, when it was
/// visible on the replicate, when it was durable there), µs.
type LagHistory = std::collections::VecDeque<(Seq, i64, i64, i64)>;

pub struct Node {
    db: Database,
    /// Per replicate: commit-to-apply samples.
    lag: Mutex<BTreeMap<String, LagHistory>>,
    tasks: Mutex<BTreeMap<Fnr, Arc<task::Task>>>,
    topology: Mutex<Option<Valid>>,
    control: Arc<Control>,
    /// Serialises topology changes on this node.
    admin: tokio::sync::Mutex<()>,
    /// Per replicate file: held while a link opens or applies a batch.
    owners: Mutex<BTreeMap<Fnr, Arc<tokio::sync::Mutex<()>>>>,
    /// Confirmed-seq samples behind `etp_replicate_apply_rate`.
    metrics: metrics::Rates,
    /// Client updates refused (recovery in progress) unless exempt.
    quiesced: std::sync::atomic::AtomicBool,
    /// Client command batches hold it shared; a quiesce takes it alone.
    update_gate: tokio::sync::RwLock<()>,
    /// Restores a copy set into this node's database (set by the binary,
    /// which knows the copy area's format).
    restore_hook: std::sync::OnceLock<RestoreHook>,
}

/// `(database, copy area, file, roll forward: None no, Some(None) to the
/// end of the protection log, Some(Some(lsn)) to that LSN)` → what was
/// restored (JSON).
pub type RestoreHook = Arc<
    dyn Fn(&Database, &str, Fnr, Option<Option<crate::Lsn>>) -> Result<serde_json::Value, String>
        + Send
        + Sync,
>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a blocking database call off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Failure::from),
        Err(e) => Err(Failure::new(
            ErrorCode::OutcomeUnknown,
            format!("internal error: {e}"),
        )),
    }
}

impl Node {
    /// Loads the topology kept in the administration file, if any, and
    /// starts the tasks of this database's masters. Call inside a runtime.
    pub fn new(db: Database) -> Result<Arc<Node>, String> {
        // A damaged administration file does not keep the node down: it
        // serves without a topology (no tasks), so the recovery flows can
        // diagnose it and restore it through this node (case 5).
        let stored = match stored_topology(&db) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(reason = %e, "administration file unusable: serving without a topology");
                None
            }
        };
        let control = match Control::open(db.clone(), stored.as_ref().map(|v| v.admin_file())) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(reason = %e, "control state unreadable: default policy");
                Control::open(db.clone(), None)?
            }
        };
        let quiesced = control.quiesced();
        if quiesced {
            tracing::warn!("client updates refused: a recovery plan quiesced this node (etp recover run resumes it)");
        }
        let node = Arc::new(Node {
            db,
            lag: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(BTreeMap::new()),
            topology: Mutex::new(None),
            control: Arc::new(control),
            admin: tokio::sync::Mutex::new(()),
            owners: Mutex::new(BTreeMap::new()),
            metrics: metrics::Rates::default(),
            quiesced: std::sync::atomic::AtomicBool::new(quiesced),
            update_gate: tokio::sync::RwLock::new(()),
            restore_hook: std::sync::OnceLock::new(),
        });
        if let Some(v) = stored {
            node.start_tasks(&v, true);
            *lock(&node.topology) = Some(v);
        }
        Ok(node)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Lets the node restore copy sets ([`RecoveryOp::Restore`]).
    pub fn set_restore_hook(&self, hook: RestoreHook) {
        let _ = self.restore_hook.set(hook);
    }

    fn link_owner(&self, file: Fnr) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.owners).entry(file).or_default().clone()
    }

    /// (Re)creates this node's tasks from `v`; their feeders run only if
    /// `run` (a recovery rebuilds them stopped).
    fn start_tasks(self: &Arc<Self>, v: &Valid, run: bool) {
        let mut tasks = lock(&self.tasks);
        for (_, t) in std::mem::take(&mut *tasks) {
            t.abort();
        }
        for (m, def, reps) in v.tasks_on(self.db.dbid()) {
            if reps.is_empty() {
                continue;
            }
            let t = task::Task::start(
                self.db.clone(),
                m.clone(),
                def,
                reps,
                self.control.clone(),
                run,
            );
            tasks.insert(Fnr(m.file), Arc::new(t));
        }
    }

    /// Stops every task (shutdown).
    pub fn stop_tasks(&self) {
        for (_, t) in std::mem::take(&mut *lock(&self.tasks)) {
            t.abort();
        }
    }

    fn all_tasks(&self) -> Vec<Arc<task::Task>> {
        lock(&self.tasks).values().cloned().collect()
    }

    /// The task that feeds a replicate.
    fn task_of(&self, replicate: &str) -> Result<Arc<task::Task>, String> {
        self.all_tasks()
            .into_iter()
            .find(|t| t.feeds(replicate))
            .ok_or_else(|| format!("no task on this node feeds replicate {replicate:?}"))
    }

    /// Every task's report (reads log records: off the reactor).
    async fn reports(&self) -> Response {
        let tasks = self.all_tasks();
        match tokio::task::spawn_blocking(move || {
            tasks.iter().map(|t| t.report()).collect::<Vec<_>>()
        })
        .await
        {
            Ok(r) => Response::Tasks(r),
            Err(e) => Response::error(internal(e)),
        }
    }

    /// Serves connections until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                acc = listener.accept() => match acc {
                    Ok((stream, peer)) => {
                        let node = self.clone();
                        tokio::spawn(async move { node.connection(stream, peer).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
        self.stop_tasks();
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, codec());
        let mut conv = Conversation::default();
        while let Some(frame) = framed.next().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%peer, reason = %e, "closing connection: bad frame");
                    break;
                }
            };
            let req = match Request::decode(&frame) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%peer, reason = %e, "closing connection: undecodable request");
                    let _ = send(&mut framed, &Response::error(e.to_string())).await;
                    break;
                }
            };
            let resp = self.handle(&mut conv, req).await;
            if send(&mut framed, &resp).await.is_err() {
                break;
            }
        }
        // Dropping the conversation backs out an open session transaction.
        if let Some(s) = conv.session.take() {
            if s.in_transaction() {
                tracing::info!(%peer, "connection lost mid-transaction: backed out");
            }
            let _ = tokio::task::spawn_blocking(move || drop(s)).await;
        }
    }

    async fn handle(self: &Arc<Self>, conv: &mut Conversation, req: Request) -> Response {
        match req {
            Request::Info => Response::Info(NodeInfo {
                dbid: self.db.dbid(),
                last_lsn: self.db.last_lsn(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            Request::Exec(cmd) => self.exec(conv, vec![cmd]).await,
            Request::Batch(cmds) if cmds.is_empty() => Response::Ok,
            Request::Batch(cmds) => self.exec(conv, cmds).await,
            Request::Recovery(op) => self.recovery(conv, op).await,
            Request::LagSamples { replicate, after } => Response::Lag(
                lock(&self.lag)
                    .get(&replicate)
                    .map(|q| q.iter().filter(|s| s.0 > after).copied().collect())
                    .unwrap_or_default(),
            ),
            Request::Dump { file, from, limit } => {
                let db = self.db.clone();
                let limit = limit.clamp(1, 100_000) as usize;
                let r = blocking(move || {
                    let is_log = matches!(db.file(file)?.role, Role::Log { .. });
                    let mut items = Vec::new();
                    let mut done = true;
                    let mut bytes = 0usize;
                    db.for_each_raw(file, from, |isn, b| {
                        // A page stays well inside one frame.
                        if items.len() == limit || bytes + b.len() > MAX_DUMP_PAGE_BYTES {
                            done = false;
                            return Ok(false);
                        }
                        bytes += b.len() + 16;
                        items.push((isn, ByteBuf::from(b.to_vec())));
                        Ok(true)
                    })?;
                    Ok((items, done, is_log))
                })
                .await;
                match r {
                    Ok((items, done, is_log)) => Response::Records {
                        items,
                        done,
                        is_log,
                    },
                    Err(e) => Response::error(e),
                }
            }
            Request::Files => Response::Files {
                files: self.db.files().into_iter().map(|f| f.def).collect(),
                topology: lock(&self.topology).as_ref().map(|v| v.text.clone()),
            },
            Request::CopyJobs { set } => {
                let db = self.db.clone();
                match blocking(move || copy_jobs(&db, set)).await {
                    Ok(text) => Response::Text(text),
                    Err(e) => Response::error(e),
                }
            }
            Request::PlogSegments => match self.db.plog_segments() {
                Ok(v) => Response::Segments(v),
                Err(e) => Response::error(e.to_string()),
            },
            Request::PlogRemove { through } => {
                let db = self.db.clone();
                match blocking(move || db.remove_segments(through)).await {
                    Ok(v) => Response::Segments(v),
                    Err(e) => Response::error(e),
                }
            }
            Request::CopyTake { files, dir, set } => {
                let db = self.db.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let area = crate::medium::FsDir::new(&dir);
                    crate::copy::take(&db, &files, &area, &set, &mut |_| {})
                })
                .await;
                match r {
                    Ok(Ok(c)) => Response::Copied(c),
                    Ok(Err(e)) => Response::error(e.to_string()),
                    Err(e) => Response::error(internal(e)),
                }
            }
            Request::FileStat { file } => match self.db.file_info(file) {
                Ok(i) => Response::Stat {
                    count: i.meta.count,
                    digest: i.meta.digest,
                    damaged: i.damaged,
                    next_isn: i.meta.next_isn,
                },
                Err(e) => Response::error(e.to_string()),
            },
            Request::AdminApply { topology } => self.admin_apply(topology).await,
            Request::AdminExport => match &*lock(&self.topology) {
                Some(v) => Response::Text(v.text.clone()),
                None => Response::error("no topology has been applied to this node"),
            },
            Request::AdminPrepare { topology } => match Valid::parse(&topology) {
                Err(e) => Response::error(e.to_string()),
                Ok(v) => match self.prepare(&v) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::error(e),
                },
            },
            Request::AdminInstall { topology } => match Valid::parse(&topology) {
                Err(e) => Response::error(e.to_string()),
                Ok(v) => {
                    let _guard = self.admin.lock().await;
                    self.install(v).await
                }
            },
            Request::TaskStatus | Request::ReplicateStatus => self.reports().await,
            Request::TaskControl { master, action } => self.task_control(master, action).await,
            Request::Replicate { name, action } => self.replicate_action(name, action).await,
            Request::Policy { set } => self.policy(set).await,
            Request::Xref { master, id, seq } => {
                let tasks: Vec<_> = self
                    .all_tasks()
                    .into_iter()
                    .filter(|t| master.is_none_or(|m| m == t.master()))
                    .collect();
                if tasks.is_empty() {
                    return Response::error("no replication task on this node matches");
                }
                let r = tokio::task::spawn_blocking(move || {
                    for t in tasks {
                        if let Some(x) = t.xref(id.as_deref(), seq)? {
                            return Ok(Some(x));
                        }
                    }
                    Ok::<_, String>(None)
                })
                .await;
                match r {
                    Ok(Ok(Some(x))) => Response::Xref(x),
                    Ok(Ok(None)) => {
                        Response::error("no such transaction in the log of any master on this node")
                    }
                    Ok(Err(e)) => Response::error(e),
                    Err(e) => Response::error(internal(e)),
                }
            }
            Request::LogCleanup {
                master,
                until,
                execute,
                horizons,
            } => {
                let tasks: Vec<_> = self
                    .all_tasks()
                    .into_iter()
                    .filter(|t| master.is_none_or(|m| m == t.master()))
                    .collect();
                if tasks.is_empty() {
                    return Response::error("no replication task on this node matches");
                }
                let r = tokio::task::spawn_blocking(move || {
                    tasks
                        .iter()
                        .map(|t| {
                            let h = horizons.iter().find(|(m, _)| *m == t.master()).map(|h| h.1);
                            t.cleanup_plan(until, h, execute)
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .await;
                match r {
                    Ok(Ok(plans)) => Response::Cleanup(plans),
                    Ok(Err(e)) => Response::error(e),
                    Err(e) => Response::error(internal(e)),
                }
            }
            Request::RangeDigest {
                file,
                from,
                to,
                records,
            } => {
                let db = self.db.clone();
                match blocking(move || db.range_digest(file, from, to, records)).await {
                    Ok((count, digest, recs)) => Response::Range {
                        count,
                        digest,
                        records: recs
                            .into_iter()
                            .map(|(i, b)| (i, ByteBuf::from(b)))
                            .collect(),
                    },
                    Err(e) => Response::error(e),
                }
            }
            Request::LoadBegin {
                id,
                snapshot,
                source,
                rewrite,
            } => self.load_begin(conv, id, snapshot, source, rewrite).await,
            Request::LoadChunk {
                id,
                from,
                to,
                records,
                count,
                digest,
                last,
            } => {
                self.load_chunk(conv, id, from, to, records, (count, digest), last)
                    .await
            }
            Request::WaitConfirmed {
                replicate,
                seq,
                timeout_ms,
            } => {
                let rx = self
                    .all_tasks()
                    .iter()
                    .find_map(|t| t.watch_confirmed(&replicate));
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
                        "replicate {replicate:?} did not confirm seq {seq} within {timeout_ms} ms"
                    )),
                }
            }
            Request::LinkOpen {
                replicate,
                file,
                confirmation,
                master_db,
                master,
            } => {
                self.link_open(conv, replicate, file, confirmation, master_db, master)
                    .await
            }
            Request::LinkApply {
                follows,
                changes,
                confirmation,
                txn_ends,
            } => {
                self.link_apply(conv, follows, changes, confirmation, txn_ends)
                    .await
            }
        }
    }

    async fn exec(&self, conv: &mut Conversation, cmds: Vec<Command>) -> Response {
        // Held while the commands run, so a quiesce waits for updates in
        // flight and the LSN it reports is the last one before it.
        let _gate = self.update_gate.read().await;
        if !conv.exempt
            && self.quiesced.load(std::sync::atomic::Ordering::SeqCst)
            && cmds.iter().any(|c| match c {
                Command::Store { .. } | Command::Update { .. } | Command::Delete { .. } => true,
                // An open transaction may back out (BT), not commit.
                Command::Et { .. } => conv.session.as_ref().is_some_and(|s| s.in_transaction()),
                Command::Read { .. } | Command::Bt => false,
            })
        {
            return Response::error(Failure::new(
                ErrorCode::Refused,
                "updates are refused while a recovery runs on this database (quiesced by etp recover run): retry later",
            ));
        }
        let mut s = conv.session.take().unwrap_or_else(|| self.db.session());
        let (s, r) = match tokio::task::spawn_blocking(move || {
            let mut r = Response::Ok;
            for cmd in cmds {
                r = run_command(&mut s, cmd);
                if matches!(r, Response::Error { .. }) {
                    // The session has aborted the transaction, as a local
                    // session does: a later ET reports it.
                    break;
                }
            }
            (s, r)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => return Response::error(internal(e)),
        };
        conv.session = Some(s);
        r
    }

    /// A step of a recovery plan.
    async fn recovery(self: &Arc<Self>, conv: &mut Conversation, op: RecoveryOp) -> Response {
        use std::sync::atomic::Ordering;
        let db = self.db.clone();
        // What rewrites a master or its log runs only while client updates
        // are refused, so no acknowledged commit can fall between a
        // restore and its roll-forward (a restarted node forgets a quiesce:
        // the plan asserts it again when it resumes).
        let touches_master = match &op {
            RecoveryOp::RefreshLog { .. } | RecoveryOp::RaiseIncarnation { .. } => true,
            RecoveryOp::Restore { file, .. } | RecoveryOp::RestoreRange { file, .. } => {
                db.files().iter().any(|f| {
                    f.def.fnr == *file
                        && matches!(f.def.role, Role::Master { .. } | Role::Log { .. })
                })
            }
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
                    match tokio::task::spawn_blocking(move || c.update(|s| s.quiesced = on)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Response::error(e),
                        Err(e) => return Response::error(internal(e)),
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
            RecoveryOp::Rebase { file } => match blocking(move || db.rebase_file(file)).await {
                Ok(m) => json(
                    serde_json::json!({ "file": file, "count": m.count, "digest": m.digest.to_string() }),
                ),
                Err(e) => Response::error(e),
            },
            RecoveryOp::Restore {
                area,
                file,
                regenerate,
                upto,
            } => {
                let Some(hook) = self.restore_hook.get().cloned() else {
                    return Response::error("this node cannot restore copy sets (no restore hook)");
                };
                self.stop_feeders_of(None).await;
                let r = tokio::task::spawn_blocking(move || {
                    hook(&db, &area, file, regenerate.then_some(upto))
                })
                .await;
                self.rebuild_tasks_stopped().await;
                match r {
                    Ok(Ok(v)) => Response::Text(v.to_string()),
                    Ok(Err(e)) => Response::error(e),
                    Err(e) => Response::error(internal(e)),
                }
            }
        }
    }

    async fn stop_feeders_of(&self, master: Option<Fnr>) {
        for t in self.all_tasks() {
            if master.is_none_or(|m| m == t.master()) {
                t.stop_feeders("stopped for recovery").await;
            }
        }
    }

    /// Rebuilds this node's tasks from its topology (their state is read
    /// afresh from the restored files) and leaves their feeders stopped
    /// until the plan restarts them.
    async fn rebuild_tasks_stopped(self: &Arc<Self>) {
        // A restored administration file may bring the topology back, and
        // its control record (policy, marks, gaps, load orders) with it.
        let db = self.db.clone();
        let control = self.control.clone();
        let restored = tokio::task::spawn_blocking(move || {
            let v = stored_topology(&db)?;
            if let Some(v) = &v {
                control.reload(v.admin_file())?;
            }
            Ok::<_, String>(v)
        })
        .await;
        match restored {
            Ok(Ok(Some(v))) => *lock(&self.topology) = Some(v),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(reason = %e, "administration file still unusable"),
            Err(e) => tracing::error!(reason = %e, "internal error"),
        }
        let v = lock(&self.topology).clone();
        if let Some(v) = v {
            self.start_tasks(&v, false);
        }
    }

    async fn task_control(&self, master: Option<Fnr>, action: TaskAction) -> Response {
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

    async fn policy(&self, set: Option<Policy>) -> Response {
        let Some(p) = set else {
            return Response::Policy(self.control.policy());
        };
        let c = self.control.clone();
        let r = tokio::task::spawn_blocking(move || c.update(|s| s.policy = p)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Response::error(e),
            Err(e) => return Response::error(internal(e)),
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

    async fn replicate_action(&self, name: String, action: ReplicateAction) -> Response {
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
                match tokio::task::spawn_blocking(move || c.update_replicate(&n, g)).await {
                    Ok(r) => r,
                    Err(e) => Err(format!("internal error: {e}")),
                }
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
                        id: task::new_load_id(),
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

    // ---------------------------------------------------------- administration

    /// Checks that this node can take its part of `v` without changing anything.
    fn prepare(&self, v: &Valid) -> Result<(), String> {
        let me = self.db.dbid();
        if !v.addresses.contains_key(&me) {
            return Err(format!(
                "this node holds database {me}, which the topology does not name"
            ));
        }
        let mut wants = v.files_on(me);
        wants.push(FileWant {
            fnr: v.admin_file(),
            name: "administration".into(),
            role: Role::Administration,
        });
        let files = self.db.files();
        let exists = |fnr: Fnr| files.iter().find(|f| f.def.fnr == fnr);
        for w in &wants {
            let Some(f) = exists(w.fnr) else {
                if let Role::Master { log, .. } = w.role {
                    if exists(log).is_some() {
                        return Err(format!(
                            "database {me}: log file {log} of master {} already exists",
                            w.name
                        ));
                    }
                }
                continue;
            };
            if let Some(reason) = &f.damaged {
                return Err(format!(
                    "database {me}: file {} is damaged: {reason}",
                    w.fnr
                ));
            }
            let compatible = match (&w.role, &f.def.role) {
                (Role::Master { log: want, .. }, Role::Master { log, .. }) => want == log,
                // A plain file becomes the master, if its log file is free.
                (Role::Master { log, .. }, Role::Plain) => exists(*log).is_none(),
                (a, b) => a == b,
            };
            if !compatible {
                return Err(format!(
                    "database {me}: file {} exists as a {} file, the topology wants a {} file",
                    w.fnr, f.def.role, w.role
                ));
            }
        }
        Ok(())
    }

    /// Takes this node's part of `v`: creates missing files, stores the
    /// topology, (re)starts the tasks of its masters.
    async fn install(self: &Arc<Self>, v: Valid) -> Response {
        if let Err(e) = self.prepare(&v) {
            return Response::error(e);
        }
        let db = self.db.clone();
        let me = db.dbid();
        let wants = v.files_on(me);
        let admin = v.admin_file();
        let text = v.text.clone();
        let r = blocking(move || {
            let exists = |fnr: Fnr| db.files().iter().any(|f| f.def.fnr == fnr);
            if !exists(admin) {
                db.create_file(admin, "administration", Role::Administration)?;
            }
            for w in wants {
                match w.role {
                    Role::Master { log, .. } => {
                        if !exists(w.fnr) {
                            db.create_file(w.fnr, &w.name, Role::Plain)?;
                        }
                        if !matches!(db.file(w.fnr)?.role, Role::Master { .. }) {
                            db.define_master(w.fnr, log)?;
                        }
                    }
                    role => {
                        if !exists(w.fnr) {
                            db.create_file(w.fnr, &w.name, role)?;
                        }
                    }
                }
            }
            let mut rec = Record::new();
            rec.insert("topology".into(), Value::Text(text));
            db.put_engine_record(admin, TOPOLOGY_ISN, rec)?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            return Response::error(format!("installing the topology on database {me}: {e}"));
        }
        self.control.set_admin(admin);
        self.start_tasks(&v, true);
        *lock(&self.topology) = Some(v);
        Response::Ok
    }

    /// Checks a topology, asks every node it names whether it can take its
    /// part, and only then installs it everywhere.
    async fn admin_apply(self: &Arc<Self>, text: String) -> Response {
        let _guard = self.admin.lock().await;
        let v = match Valid::parse(&text) {
            Ok(v) => v,
            Err(e) => return Response::error(e.to_string()),
        };
        let mut conns = Vec::new();
        for (dbid, addr) in &v.addresses {
            let r: Result<Conn, String> = async {
                let mut c = Conn::connect(*addr).await.map_err(|e| e.to_string())?;
                match c.call(&Request::Info).await.map_err(|e| e.to_string())? {
                    Response::Info(i) if i.dbid == *dbid => {}
                    Response::Info(i) => {
                        return Err(format!(
                            "the node at {addr} holds database {}, the topology says {dbid}",
                            i.dbid
                        ))
                    }
                    other => return Err(c.unexpected(&other, "Info").to_string()),
                }
                c.call(&Request::AdminPrepare {
                    topology: text.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
                Ok(c)
            }
            .await;
            match r {
                Ok(c) => conns.push((*dbid, c)),
                Err(e) => {
                    return Response::error(format!(
                        "topology not applied (nothing changed): database {dbid}: {e}"
                    ))
                }
            }
        }
        // Replicate nodes first, so a master's task finds its replicates' files.
        conns.sort_by_key(|(dbid, _)| v.tasks_on(*dbid).iter().any(|(_, _, r)| !r.is_empty()));
        let mut done = Vec::new();
        for (dbid, mut c) in conns {
            if dbid == self.db.dbid() {
                drop(c);
                match self.install(v.clone()).await {
                    Response::Ok => done.push(dbid),
                    Response::Error { code, message } => {
                        return Response::error(Failure::new(
                            code,
                            format!(
                            "topology installed on {done:?} but not on database {dbid}: {message}"
                        ),
                        ))
                    }
                    _ => {}
                }
                continue;
            }
            if let Err(e) = c
                .call(&Request::AdminInstall {
                    topology: text.clone(),
                })
                .await
            {
                return Response::error(format!(
                    "topology installed on {done:?} but not on database {dbid}: {e}"
                ));
            }
            done.push(dbid);
        }
        Response::Text(format!(
            "topology applied to databases {}",
            done.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    // ---------------------------------------------------------- replication links

    async fn link_open(
        &self,
        conv: &mut Conversation,
        replicate: String,
        file: Fnr,
        confirmation: Fnr,
        master_db: DbId,
        master: Fnr,
    ) -> Response {
        let owner = self.link_owner(file);
        let _owner = owner.lock().await;
        let db = self.db.clone();
        let r = blocking(move || {
            let conf_def = db.file(confirmation)?;
            if conf_def.role != Role::Confirmation {
                return Err(DbError::BadDefinition(format!(
                    "file {confirmation} is a {} file, not a confirmation file",
                    conf_def.role.name()
                )));
            }
            // The confirmation and the file's digest, read together.
            let (conf, info) = db.read_with_info(confirmation, Isn(u64::from(file.0)), file)?;
            if info.def.role != Role::Replicate {
                return Err(DbError::BadDefinition(format!(
                    "file {file} is a {} file, not a replicate",
                    info.def.role.name()
                )));
            }
            let (conf, load) = match conf {
                None => (None, None),
                Some(r) if r.contains_key("load_id") => (
                    None,
                    Some(load_progress_from_record(&r).map_err(DbError::BadDefinition)?),
                ),
                Some(r) => (
                    Some(confirmation_from_record(&r).map_err(DbError::BadDefinition)?),
                    None,
                ),
            };
            let (count, digest) = match &info.damaged {
                Some(_) => db.content_digest(file)?,
                None => (info.meta.count, info.meta.digest),
            };
            Ok(LinkState {
                confirmation: conf,
                digest,
                count,
                damaged: info.damaged,
                load,
            })
        })
        .await;
        match r {
            Ok(state) => {
                if let Some(c) = &state.confirmation {
                    if c.replicate != replicate || c.master_db != master_db || c.master != master {
                        return Response::error(format!(
                            "replicate file {file} confirms {:?} of master {} on database {}, not {replicate:?} of master {master} on database {master_db}",
                            c.replicate, c.master, c.master_db
                        ));
                    }
                }
                conv.link = Some(Link {
                    name: replicate,
                    master_db,
                    master,
                    file,
                    confirmation,
                    damaged: state.damaged.is_some(),
                });
                Response::Link(state)
            }
            Err(e) => Response::error(e),
        }
    }

    async fn load_begin(
        &self,
        conv: &mut Conversation,
        id: String,
        snapshot: Seq,
        source: String,
        rewrite: bool,
    ) -> Response {
        let Some(link) = conv.link.clone() else {
            return Response::error("LoadBegin before LinkOpen");
        };
        let owner = self.link_owner(link.file);
        let _owner = owner.lock().await;
        let p = LoadProgress {
            id,
            snapshot,
            source,
            rewrite,
            next: Isn(1),
            count: 0,
            digest: crate::Digest::default(),
            chunks: 0,
        };
        let rec = load_progress_to_record(&link, &p);
        let db = self.db.clone();
        let link2 = link.clone();
        let r = blocking(move || {
            let link = link2;
            // A damaged replicate is reloaded whole: what it holds now is
            // the baseline the chunks replace, and the last chunk proves the
            // result against the master's digest.
            db.settle()?;
            if db.file_info(link.file)?.damaged.is_some() {
                let m = db.rebase_replicate(link.file)?;
                tracing::warn!(replicate = %link.name, file = %link.file, count = m.count,
                    "damaged replicate rebased on what it holds; the load replaces it");
            }
            db.put_engine_record(link.confirmation, Isn(u64::from(link.file.0)), rec)
        })
        .await;
        match r {
            Ok(_) => {
                if let Some(l) = conv.link.as_mut() {
                    // Rebased if it was damaged: writable again.
                    l.damaged = false;
                }
                tracing::info!(replicate = %link.name, id = %p.id, snapshot = %p.snapshot, "load begins");
                Response::Loading(p)
            }
            Err(e) => Response::error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn load_chunk(
        &self,
        conv: &mut Conversation,
        id: String,
        from: Isn,
        to: Option<Isn>,
        records: Vec<(Isn, ByteBuf)>,
        sum: (u64, crate::Digest),
        last: Option<Confirmation>,
    ) -> Response {
        let Some(link) = conv.link.clone() else {
            return Response::error("LoadChunk before LinkOpen");
        };
        let records: Vec<(Isn, Vec<u8>)> = records
            .into_iter()
            .map(|(i, b)| (i, b.into_vec()))
            .collect();
        // The chunk is what its sender computed, or nothing is written.
        let mut m = crate::FileMeta::new(link.file);
        for (i, b) in &records {
            m.change(*i, None, Some(b));
        }
        if (m.count, m.digest) != sum {
            return Response::error(format!(
                "loaded chunk [{from}, …) arrived with {} records and digest {}, its sender computed {} and {}: refused",
                m.count, m.digest, sum.0, sum.1
            ));
        }
        if last.is_some() != to.is_none() {
            return Response::error(
                "only the last chunk of a load (open-ended) carries the confirmation",
            );
        }
        let owner = self.link_owner(link.file);
        let _owner = owner.lock().await;
        let db = self.db.clone();
        let cisn = Isn(u64::from(link.file.0));
        let r = blocking(move || {
            let (rec, _) = db.read_with_info(link.confirmation, cisn, link.file)?;
            let current = match rec.as_ref().map(load_progress_from_record) {
                Some(Ok(p)) if p.id == id => p,
                _ => {
                    return Err(DbError::LoadOutOfSequence {
                        fnr: link.confirmation,
                        id,
                        next: from.0,
                        found: "no load with that id in progress".into(),
                    })
                }
            };
            let mut total = crate::FileMeta::new(link.file);
            total.count = current.count;
            total.digest = current.digest;
            for (i, b) in &records {
                total.change(*i, None, Some(b));
            }
            let next = LoadProgress {
                next: to.unwrap_or(Isn(u64::MAX)),
                count: total.count,
                digest: total.digest,
                chunks: current.chunks + 1,
                ..current.clone()
            };
            let (progress, expect) = match &last {
                Some(c) => {
                    if (c.count, c.digest) != (total.count, total.digest) {
                        return Err(DbError::BadDefinition(format!(
                            "the load's confirmation says {} records with digest {}, the chunks add up to {} with digest {}",
                            c.count, c.digest, total.count, total.digest
                        )));
                    }
                    let mut c = c.clone();
                    c.replicate = link.name.clone();
                    c.master_db = link.master_db;
                    c.master = link.master;
                    c.applied_us = chrono::Utc::now().timestamp_micros();
                    c.loaded_by = Some(current.id.clone());
                    (confirmation_to_record(&c), Some((total.count, total.digest)))
                }
                None => (load_progress_to_record(&link, &next), None),
            };
            let guard = crate::database::PutGuard::Load {
                id: current.id.clone(),
                next: from.0,
            };
            let (info, stats) = db.load_range(
                link.file,
                from,
                to,
                records,
                current.rewrite,
                (link.confirmation, cisn, progress, guard),
                expect,
            )?;
            let meta = match meta_of(&info, link.file) {
                Some(m) => m,
                None => db.file_info(link.file)?.meta,
            };
            Ok((next, stats, meta))
        })
        .await;
        match r {
            Ok((progress, stats, meta)) => Response::LoadAck {
                progress,
                stats,
                count: meta.count,
                digest: meta.digest,
            },
            Err(e) => Response::error(e),
        }
    }

    async fn link_apply(
        &self,
        conv: &mut Conversation,
        follows: Seq,
        changes: Vec<crate::wire::ReplChange>,
        mut conf: Confirmation,
        txn_ends: Vec<(Seq, i64)>,
    ) -> Response {
        let Some(link) = conv.link.clone() else {
            return Response::error("LinkApply before LinkOpen");
        };
        if link.damaged {
            return Response::error(Failure::new(
                ErrorCode::Damaged,
                format!("replicate file {} is damaged", link.file),
            ));
        }
        // The confirmation names what the link was opened for, whatever the peer says.
        conf.replicate = link.name.clone();
        conf.master_db = link.master_db;
        conf.master = link.master;
        if conf.seq <= follows {
            return Response::error(format!(
                "batch ends at seq {} but follows seq {follows}",
                conf.seq
            ));
        }
        // One apply at a time per replicate: a link being replaced may still
        // be applying what it had buffered.
        let owner = self.link_owner(link.file);
        let _owner = owner.lock().await;
        let db = self.db.clone();
        conf.applied_us = chrono::Utc::now().timestamp_micros();
        let seq = conf.seq;
        let name = conf.replicate.clone();
        let r = blocking(move || {
            let changes = changes
                .into_iter()
                .map(|c| {
                    (
                        c.isn,
                        c.before.map(ByteBuf::into_vec),
                        c.after.map(ByteBuf::into_vec),
                    )
                })
                .collect();
            let rec = confirmation_to_record(&conf);
            let info = db.apply_replicated(
                link.file,
                follows,
                changes,
                (link.confirmation, Isn(u64::from(link.file.0)), rec),
            )?;
            // A batch that changed no replicate record leaves its meta as it
            // was; applies to this replicate are serialised (`link_owner`),
            // so it is still current.
            let meta = match meta_of(&info, link.file) {
                Some(m) => m,
                None => db.file_info(link.file)?.meta,
            };
            Ok((info, meta))
        })
        .await;
        match r {
            Ok((info, meta)) => {
                let now = chrono::Utc::now().timestamp_micros();
                let mut lag = lock(&self.lag);
                let q = lag.entry(name).or_default();
                for (s, t) in txn_ends {
                    if q.len() == LAG_SAMPLES {
                        q.pop_front();
                    }
                    q.push_back((s, t, info.visible_us, now));
                }
                Response::Applied {
                    applied_seq: seq,
                    durable_seq: seq,
                    digest: meta.digest,
                    count: meta.count,
                    lsn: info.lsn,
                }
            }
            Err(e) => Response::error(e),
        }
    }
}

/// Record of the administration file holding the copy-job definitions.
pub const COPY_JOBS_ISN: Isn = Isn(3);

/// The copy-job definitions (TOML text, empty if none), replaced first by
/// `set` if given.
fn copy_jobs(db: &Database, set: Option<String>) -> Result<String, DbError> {
    let admin = db
        .files()
        .into_iter()
        .find(|f| f.def.role == Role::Administration)
        .ok_or_else(|| {
            DbError::BadDefinition(
                "this database has no administration file (apply a topology first)".into(),
            )
        })?
        .def
        .fnr;
    if let Some(text) = set {
        let mut rec = Record::new();
        rec.insert("copy_jobs".into(), Value::Text(text));
        db.put_engine_record(admin, COPY_JOBS_ISN, rec)?;
    }
    Ok(match db.read(admin, COPY_JOBS_ISN)? {
        Some(r) => match r.get("copy_jobs") {
            Some(Value::Text(t)) => t.clone(),
            _ => String::new(),
        },
        None => String::new(),
    })
}

pub fn stored_topology(db: &Database) -> Result<Option<Valid>, String> {
    let admin = db
        .files()
        .into_iter()
        .find(|f| f.def.role == Role::Administration);
    let Some(admin) = admin else {
        return Ok(None);
    };
    let rec = db
        .read(admin.def.fnr, TOPOLOGY_ISN)
        .map_err(|e| format!("reading the administration file: {e}"))?;
    let Some(Value::Text(text)) = rec.as_ref().and_then(|r| r.get("topology")) else {
        return Ok(None);
    };
    Valid::parse(text)
        .map(Some)
        .map_err(|e| format!("the administration file holds a bad topology: {e}"))
}

fn meta_of(info: &CommitInfo, fnr: Fnr) -> Option<crate::FileMeta> {
    info.metas.iter().find(|m| m.fnr == fnr).copied()
}

#[derive(Default)]
struct Conversation {
    session: Option<Session>,
    link: Option<Link>,
    /// Updates pass a quiesce (a recovery's own connection).
    exempt: bool,
}

#[derive(Clone)]
struct Link {
    name: String,
    master_db: DbId,
    master: Fnr,
    file: Fnr,
    confirmation: Fnr,
    damaged: bool,
}

async fn send(
    framed: &mut Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    resp: &Response,
) -> Result<(), ()> {
    let b = match resp.encode() {
        Ok(b) => b,
        Err(e) => match Response::error(format!("cannot send the response: {e}")).encode() {
            Ok(b) => b,
            Err(_) => return Err(()),
        },
    };
    framed.send(b).await.map_err(|_| ())
}

/// A handler that failed inside (a panicked blocking task).
fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorCode::OutcomeUnknown, format!("internal error: {e}"))
}

fn bad_record(e: impl std::fmt::Display) -> Response {
    Response::error(Failure::new(
        ErrorCode::BadRequest,
        format!("bad record: {e}"),
    ))
}

fn run_command(s: &mut Session, cmd: Command) -> Response {
    let err = |e: DbError| Response::error(e);
    match cmd {
        Command::Store { file, isn, fields } => match decode_record(&fields) {
            Err(e) => {
                s.bt();
                bad_record(e)
            }
            Ok(r) => match s.store(file, isn, r) {
                Ok(isn) => Response::Stored { isn },
                Err(e) => err(e),
            },
        },
        Command::Update { file, isn, fields } => match decode_record(&fields) {
            Err(e) => {
                s.bt();
                bad_record(e)
            }
            Ok(p) => match s.update(file, isn, p) {
                Ok(()) => Response::Ok,
                Err(e) => err(e),
            },
        },
        Command::Delete { file, isn } => match s.delete(file, isn) {
            Ok(()) => Response::Ok,
            Err(e) => err(e),
        },
        Command::Read { file, isn } => match s.read(file, isn) {
            Ok(r) => match r.map(|r| crate::record::encode_record(&r)).transpose() {
                Ok(b) => Response::Record(b.map(ByteBuf::from)),
                Err(e) => bad_record(e),
            },
            Err(e) => err(e),
        },
        Command::Et { id } => match s.et(id) {
            Ok(info) => Response::Committed(CommitReply {
                lsn: info.lsn,
                time_us: info.time_us,
                client_id: info.client_id,
                seqs: info.seqs.into_iter().map(|(f, (a, b))| (f, a, b)).collect(),
            }),
            Err(e) => err(e),
        },
        Command::Bt => {
            s.bt();
            Response::Ok
        }
    }
}

// ---------------------------------------------------------- confirmation records

/// The record a confirmation file holds for one replicate (keyed by the
/// replicate's file number).
pub fn confirmation_to_record(c: &Confirmation) -> Record {
    let mut r = Record::new();
    r.insert("replicate".into(), Value::Text(c.replicate.clone()));
    r.insert("master_db".into(), Value::Int(i64::from(c.master_db.0)));
    r.insert("master".into(), Value::Int(i64::from(c.master.0)));
    r.insert("seq".into(), Value::Int(c.seq.0 as i64));
    r.insert("incarnation".into(), Value::Int(i64::from(c.incarnation)));
    r.insert("master_time_us".into(), Value::Int(c.master_time_us));
    r.insert("digest".into(), Value::Text(c.digest.to_string()));
    r.insert("count".into(), Value::Int(c.count as i64));
    r.insert("applied_us".into(), Value::Int(c.applied_us));
    if let Some(id) = &c.loaded_by {
        r.insert("loaded_by".into(), Value::Text(id.clone()));
    }
    r
}

/// The confirmation record of a replicate while a load is in progress.
fn load_progress_to_record(link: &Link, p: &LoadProgress) -> Record {
    let mut r = Record::new();
    r.insert("replicate".into(), Value::Text(link.name.clone()));
    r.insert("master_db".into(), Value::Int(i64::from(link.master_db.0)));
    r.insert("master".into(), Value::Int(i64::from(link.master.0)));
    r.insert("seq".into(), Value::Int(0));
    r.insert("load_id".into(), Value::Text(p.id.clone()));
    r.insert("load_snapshot".into(), Value::Int(p.snapshot.0 as i64));
    r.insert("load_source".into(), Value::Text(p.source.clone()));
    r.insert("load_rewrite".into(), Value::Bool(p.rewrite));
    r.insert("load_next".into(), Value::Int(p.next.0 as i64));
    r.insert("load_count".into(), Value::Int(p.count as i64));
    r.insert("load_digest".into(), Value::Text(p.digest.to_string()));
    r.insert("load_chunks".into(), Value::Int(p.chunks as i64));
    r
}

/// Typed reads of an engine-written record's fields, errors naming `what`.
struct Fields<'a> {
    rec: &'a Record,
    what: &'static str,
}

impl Fields<'_> {
    fn int(&self, k: &str) -> Result<i64, String> {
        match self.rec.get(k) {
            Some(Value::Int(i)) => Ok(*i),
            other => Err(format!(
                "{} field {k:?} is {other:?}, not an integer",
                self.what
            )),
        }
    }
    fn text(&self, k: &str) -> Result<String, String> {
        match self.rec.get(k) {
            Some(Value::Text(t)) => Ok(t.clone()),
            other => Err(format!("{} field {k:?} is {other:?}, not text", self.what)),
        }
    }
    fn digest(&self, k: &str) -> Result<crate::Digest, String> {
        let d = self.text(k)?;
        d.parse()
            .map_err(|_| format!("{} digest {d:?} is not a digest", self.what))
    }
}

fn load_progress_from_record(r: &Record) -> Result<LoadProgress, String> {
    let f = Fields {
        rec: r,
        what: "load progress",
    };
    Ok(LoadProgress {
        id: f.text("load_id")?,
        snapshot: Seq(f.int("load_snapshot")? as u64),
        source: f.text("load_source")?,
        rewrite: matches!(r.get("load_rewrite"), Some(Value::Bool(true))),
        next: Isn(f.int("load_next")? as u64),
        count: f.int("load_count")? as u64,
        digest: f.digest("load_digest")?,
        chunks: f.int("load_chunks")? as u64,
    })
}

pub fn confirmation_from_record(r: &Record) -> Result<Confirmation, String> {
    let f = Fields {
        rec: r,
        what: "confirmation",
    };
    Ok(Confirmation {
        replicate: f.text("replicate")?,
        master_db: DbId(f.int("master_db")? as u32),
        master: Fnr(f.int("master")? as u32),
        seq: Seq(f.int("seq")? as u64),
        incarnation: f.int("incarnation")? as u32,
        master_time_us: f.int("master_time_us")?,
        digest: f.digest("digest")?,
        count: f.int("count")? as u64,
        applied_us: f.int("applied_us")?,
        loaded_by: match r.get("loaded_by") {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        },
    })
}
