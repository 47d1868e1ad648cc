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
pub mod task;

use crate::catalog::Role;
use crate::database::{CommitInfo, Database};
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Seq};
use crate::record::{decode_record, Record, Value};
use crate::session::Session;
use crate::topology::{FileWant, Valid};
use crate::wire::{
    codec, Command, CommitReply, Confirmation, LinkState, NodeInfo, Request, Response, TaskAction,
};
use client::Conn;
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
    tasks: Mutex<BTreeMap<Fnr, task::Task>>,
    topology: Mutex<Option<Valid>>,
    /// Serialises topology changes on this node.
    admin: tokio::sync::Mutex<()>,
    /// Per replicate file: held while a link opens or applies a batch.
    owners: Mutex<BTreeMap<Fnr, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a blocking database call off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

impl Node {
    /// Loads the topology kept in the administration file, if any, and
    /// starts the tasks of this database's masters. Call inside a runtime.
    pub fn new(db: Database) -> Result<Arc<Node>, String> {
        let node = Arc::new(Node {
            db,
            lag: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(BTreeMap::new()),
            topology: Mutex::new(None),
            admin: tokio::sync::Mutex::new(()),
            owners: Mutex::new(BTreeMap::new()),
        });
        if let Some(v) = node.stored_topology()? {
            node.start_tasks(&v);
            *lock(&node.topology) = Some(v);
        }
        Ok(node)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn link_owner(&self, file: Fnr) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.owners).entry(file).or_default().clone()
    }

    fn stored_topology(&self) -> Result<Option<Valid>, String> {
        let admin = self
            .db
            .files()
            .into_iter()
            .find(|f| f.def.role == Role::Administration);
        let Some(admin) = admin else {
            return Ok(None);
        };
        let rec = self
            .db
            .read(admin.def.fnr, TOPOLOGY_ISN)
            .map_err(|e| format!("reading the administration file: {e}"))?;
        let Some(Value::Text(text)) = rec.as_ref().and_then(|r| r.get("topology")) else {
            return Ok(None);
        };
        Valid::parse(text)
            .map(Some)
            .map_err(|e| format!("the administration file holds a bad topology: {e}"))
    }

    fn start_tasks(self: &Arc<Self>, v: &Valid) {
        let mut tasks = lock(&self.tasks);
        for (_, t) in std::mem::take(&mut *tasks) {
            t.stop();
        }
        for (m, def, reps) in v.tasks_on(self.db.dbid()) {
            if reps.is_empty() {
                continue;
            }
            let t = task::Task::start(self.db.clone(), m.clone(), def, reps);
            tasks.insert(Fnr(m.file), t);
        }
    }

    /// Stops every task (shutdown).
    pub fn stop_tasks(&self) {
        for (_, t) in std::mem::take(&mut *lock(&self.tasks)) {
            t.stop();
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
            Request::FileStat { file } => match self.db.file_info(file) {
                Ok(i) => Response::Stat {
                    count: i.meta.count,
                    digest: i.meta.digest,
                    damaged: i.damaged,
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
            Request::TaskStatus => {
                Response::Tasks(lock(&self.tasks).values().map(|t| t.report()).collect())
            }
            Request::TaskControl { master, action } => self.task_control(master, action),
            Request::WaitConfirmed {
                replicate,
                seq,
                timeout_ms,
            } => {
                let rx = lock(&self.tasks)
                    .values()
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
            Err(e) => return Response::error(format!("internal error: {e}")),
        };
        conv.session = Some(s);
        r
    }

    fn task_control(&self, master: Option<Fnr>, action: TaskAction) -> Response {
        let tasks = lock(&self.tasks);
        if tasks.is_empty() {
            return Response::error("this node runs no replication task");
        }
        let mut found = false;
        for (m, t) in tasks.iter() {
            if master.is_some_and(|want| want != *m) {
                continue;
            }
            found = true;
            match action {
                TaskAction::Start => t.start_feeders(),
                TaskAction::Stop => t.stop_feeders("stopped by the operator"),
                TaskAction::Restart => {
                    t.stop_feeders("restarting");
                    t.start_feeders();
                }
            }
        }
        if !found {
            return Response::error(format!(
                "no replication task for master file {} on this node",
                master.map(|m| m.0).unwrap_or_default()
            ));
        }
        Response::Tasks(tasks.values().map(|t| t.report()).collect())
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
        self.start_tasks(&v);
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
                    Response::Error { message } => {
                        return Response::error(format!(
                            "topology installed on {done:?} but not on database {dbid}: {message}"
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
            let conf = match conf {
                None => None,
                Some(r) => Some(confirmation_from_record(&r).map_err(DbError::BadDefinition)?),
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
            return Response::error(format!("replicate file {} is damaged", link.file));
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

fn meta_of(info: &CommitInfo, fnr: Fnr) -> Option<crate::FileMeta> {
    info.metas.iter().find(|m| m.fnr == fnr).copied()
}

#[derive(Default)]
struct Conversation {
    session: Option<Session>,
    link: Option<Link>,
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

fn bad_record(e: impl std::fmt::Display) -> Response {
    Response::error(format!("bad record: {e}"))
}

fn run_command(s: &mut Session, cmd: Command) -> Response {
    let err = |e: DbError| Response::error(e.to_string());
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
    r
}

pub fn confirmation_from_record(r: &Record) -> Result<Confirmation, String> {
    let int = |k: &str| match r.get(k) {
        Some(Value::Int(i)) => Ok(*i),
        other => Err(format!(
            "confirmation field {k:?} is {other:?}, not an integer"
        )),
    };
    let text = |k: &str| match r.get(k) {
        Some(Value::Text(t)) => Ok(t.clone()),
        other => Err(format!("confirmation field {k:?} is {other:?}, not text")),
    };
    let digest = text("digest")?;
    Ok(Confirmation {
        replicate: text("replicate")?,
        master_db: DbId(int("master_db")? as u32),
        master: Fnr(int("master")? as u32),
        seq: Seq(int("seq")? as u64),
        incarnation: int("incarnation")? as u32,
        master_time_us: int("master_time_us")?,
        digest: digest
            .parse()
            .map_err(|_| format!("confirmation digest {digest:?} is not a digest"))?,
        count: int("count")? as u64,
        applied_us: int("applied_us")?,
    })
}
