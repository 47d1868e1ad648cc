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

mod admin;
pub mod apply;
mod batch;
pub mod client;
pub mod control;
mod copies;
mod errors;
mod feeder;
mod holds;
mod link;
mod load;
pub mod metrics;
mod operations;
mod reads;
mod recovery;
mod report;
mod session;
mod stream;
mod tail;
pub mod task;
mod view;

pub use admin::{load_schemas, stored_topology, COPY_JOBS_ISN};
pub use errors::{Internal, OpError};

use crate::catalog::Role;
use crate::database::{CommitInfo, Database};
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Seq};
use crate::record::{decode_record, Record, Value};
use crate::session::Session;
use crate::topology::{FileWant, Valid};
use crate::wire::LinkRequest;
use crate::wire::{
    Command, CommitReply, Confirmation, ErrorCode, Failure, LinkState, LoadProgress, NodeInfo,
    RecoveryOp, ReplicateAction, Request, Response, TaskAction,
};

use control::{Control, Policy};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// The record of the administration file that holds the topology text.
const TOPOLOGY_ISN: Isn = Isn(1);

/// Answers one connection may owe before the node stops reading its
/// requests: the transactions a pipelining client has in flight.
const PIPELINE_DEPTH: usize = 16;

/// The most record bytes one dump page carries.
const MAX_DUMP_PAGE_BYTES: usize = 16 << 20;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    update_gate: Arc<tokio::sync::RwLock<()>>,
    /// Where [`Node::serve`] listens.
    listening: Mutex<Option<SocketAddr>>,
    /// Connections served and refused (metrics).
    pub(crate) conns: ConnStats,
    /// The metrics listener's own connections served and refused.
    pub(crate) metrics_http: Arc<crate::net::http::Counts>,
    /// What the node was configured with for copies.
    copies: Copies,
}

/// Checks copy-job definitions before a node stores them: their text, the
/// node's copy area, and the copy rules against the node's topology (the
/// binary lends the parser: the engine does not know the jobs' format).
pub type JobsCheck = Arc<
    dyn Fn(
            &str,
            Option<&std::path::Path>,
            Option<&crate::topology::Valid>,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

/// What a node trusts for copies: its own configuration, never a request.
#[derive(Clone, Default)]
pub struct Copies {
    /// The copy area: copy sets taken through this node are written into
    /// sets claimed there, restores through it read sets from there, and
    /// its log cleanup's horizon comes from that area's catalog. None:
    /// copies and restores through the node are refused, and log cleanup
    /// deletes nothing.
    pub area: Option<std::path::PathBuf>,
    /// Checks copy-job definitions before they are stored (None: they are
    /// refused).
    pub check_jobs: Option<JobsCheck>,
    /// A master, log or administration file whose newest copy set is older
    /// than this (or that has none) is an alarm.
    pub alarm_after: Option<std::time::Duration>,
}

impl Copies {
    /// Where the copy area is, or why there is none.
    pub(crate) fn root(&self) -> Result<std::path::PathBuf, Failure> {
        self.area.clone().ok_or_else(|| {
            Failure::new(
                ErrorCode::Refused,
                "this node has no copy area (start it with --copy-area DIR)",
            )
        })
    }

    /// The copy area, opened.
    pub(crate) fn area(&self) -> Result<crate::copy::area::Area, Failure> {
        crate::copy::area::Area::open(&self.root()?).map_err(Failure::from)
    }
}

/// What a node's listener bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed as they arrive
    /// (counted in `etp_connections_refused_total{reason="limit"}`).
    pub max_connections: usize,
    /// A connection with nothing in flight (no request being answered, no
    /// replication link open) for this long is closed; an open
    /// transaction on it is backed out.
    pub idle_timeout: std::time::Duration,
    /// The longest a client may take over its TLS handshake.
    pub handshake_timeout: std::time::Duration,
    /// Handshakes in progress from one address at once (None: a quarter
    /// of the handshake pool, at least 8; IPv6 counted per /64): one
    /// host's flood of sockets cannot keep every other host out for the
    /// handshake timeout.
    pub handshakes_per_ip: Option<usize>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            idle_timeout: std::time::Duration::from_secs(600),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            handshakes_per_ip: None,
        }
    }
}

/// Connection counters.
#[derive(Default)]
pub(crate) struct ConnStats {
    pub open: std::sync::atomic::AtomicU64,
    pub refused_limit: std::sync::atomic::AtomicU64,
    pub refused_handshake: std::sync::atomic::AtomicU64,
    pub refused_per_ip: std::sync::atomic::AtomicU64,
    pub idle_closed: std::sync::atomic::AtomicU64,
    pub not_allowed: std::sync::atomic::AtomicU64,
    /// The second (since the epoch) of the last refusal logged.
    logged_at: std::sync::atomic::AtomicU64,
}

impl ConnStats {
    /// Logs a refused connection with `log`, at most once a second:
    /// refusals are counted in the metrics, and a flood of them must not
    /// flood the log.
    fn log_refusal(&self, log: impl FnOnce()) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.logged_at.load(Relaxed);
        if now > last
            && self
                .logged_at
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            log();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a blocking database call off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, Failure> {
    errors::off_reactor(move || f().map_err(Failure::from)).await
}

/// Why a node could not start, or could not read what it keeps.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Internal(#[from] Internal),
    #[error("reading the administration file: {0}")]
    Administration(#[source] DbError),
    #[error("the administration file holds a bad topology: {0}")]
    StoredTopology(#[source] crate::topology::TopologyError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("--metrics {addr}: not a loopback address, and metrics off loopback are served only over TLS with client certificates: start the node with its certificates (--certs DIR), or serve them on loopback (for example 127.0.0.1:9400 or [::1]:9400)")]
    MetricsNotLoopback { addr: SocketAddr },
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Node {
    /// Loads the topology kept in the administration file, if any, and
    /// starts the tasks of this database's masters. Call inside a runtime.
    pub fn new(db: Database) -> Result<Arc<Node>, NodeError> {
        Node::with_copies(db, Copies::default())
    }

    /// [`Node::new`] with what the node trusts for copies.
    pub fn with_copies(db: Database, copies: Copies) -> Result<Arc<Node>, NodeError> {
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
            conns: ConnStats::default(),
            metrics_http: Arc::default(),
            quiesced: std::sync::atomic::AtomicBool::new(quiesced),
            update_gate: Arc::new(tokio::sync::RwLock::new(())),
            listening: Mutex::new(None),
            copies,
        });
        if let Some(v) = stored {
            node.start_tasks(&v, true, false);
            node.set_topology(v);
        }
        Ok(node)
    }

    /// The topology this node serves: its masters' declared fields become
    /// the database's schemas.
    fn set_topology(&self, v: Valid) {
        self.db.set_schemas(v.schemas_on(self.db.dbid()));
        *lock(&self.topology) = Some(v);
        self.warn_if_moved();
    }

    /// Warns when the topology names this database at an address the node
    /// does not listen on (started with another `--listen`).
    fn warn_if_moved(&self) {
        let info = match self.info() {
            Response::Info(i) => i,
            _ => return,
        };
        if let Some((listening, named)) = info.address_mismatch() {
            tracing::warn!(
                %listening, topology = %named, dbid = %info.dbid,
                "this node listens at {listening}, but the topology names database {} at {named}: its peers will not reach it. Restart it without --listen (it then listens at {named}), or apply a topology that names {listening}",
                info.dbid
            );
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn link_owner(&self, file: Fnr) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.owners).entry(file).or_default().clone()
    }

    /// (Re)creates this node's tasks from `v`; their feeders run only if
    /// `run` (a recovery rebuilds them stopped). `keep`: the log is the one
    /// the old tasks fed from (a new topology), so what each feeder knew of
    /// its replicate's expected state carries over to the replicate's new
    /// feeder, unless its definition changed; without it, a partial
    /// replicate's feeder would roll its expected state forward from its
    /// last anchor.
    fn start_tasks(self: &Arc<Self>, v: &Valid, run: bool, keep: bool) {
        let mut tasks = lock(&self.tasks);
        let mut known = BTreeMap::new();
        for (_, t) in std::mem::take(&mut *tasks) {
            t.abort();
            if keep {
                known.extend(t.expected_states());
            }
        }
        for (m, def, reps) in v.tasks_on(self.db.dbid()) {
            if reps.is_empty() {
                continue;
            }
            let env = task::Env {
                db: self.db.clone(),
                control: self.control.clone(),
                topology: Arc::from(v.text.as_str()),
            };
            let t = task::Task::start(env, m.clone(), def, reps, run, &known);
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
    fn task_of(&self, replicate: &str) -> Result<Arc<task::Task>, OpError> {
        self.all_tasks()
            .into_iter()
            .find(|t| t.feeds(replicate))
            .ok_or_else(|| {
                OpError::NotHere(format!(
                    "no task on this node feeds replicate {replicate:?}"
                ))
            })
    }

    /// Every task's report (reads log records: off the reactor).
    async fn reports(&self) -> Response {
        let tasks = self.all_tasks();
        match errors::off_reactor(move || {
            Ok::<_, Internal>(tasks.iter().map(|t| t.report()).collect::<Vec<_>>())
        })
        .await
        {
            Ok(r) => Response::Tasks(r),
            Err(e) => Response::error(e),
        }
    }

    /// Serves connections until `shutdown` resolves: each accepted socket
    /// is taken through `transport` (its TLS handshake within
    /// [`HANDSHAKE_TIMEOUT`]) on a task of its own.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        transport: crate::net::Transport,
        limits: Limits,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        *lock(&self.listening) = listener.local_addr().ok();
        self.warn_if_moved();
        tokio::pin!(shutdown);
        // Two pools: connections past their handshake (the limit), and
        // handshakes in progress (a quarter of it, at least 16): sockets
        // that never complete a handshake cannot take an authenticated
        // client's place, only another handshake's, for at most the
        // handshake timeout.
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        // Clients (read, write) may take all but an eighth (at least 4):
        // waits and sessions cannot keep replication links and
        // administrators out.
        let reserved = (limits.max_connections / 8).clamp(4, limits.max_connections);
        let clients = Arc::new(tokio::sync::Semaphore::new(
            limits.max_connections.saturating_sub(reserved).max(1),
        ));
        let pool = (limits.max_connections / 4).max(16);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(pool));
        let per_ip = Arc::new(crate::net::PerIp::new(
            limits.handshakes_per_ip.unwrap_or((pool / 4).max(8)),
        ));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                acc = listener.accept() => match acc {
                    Ok((tcp, peer)) => {
                        let Some(from_ip) = per_ip.take(peer.ip()) else {
                            self.conns.refused_per_ip.fetch_add(1, Relaxed);
                            self.conns.log_refusal(|| tracing::warn!(%peer, "connection refused: too many handshakes in progress from its address"));
                            drop(tcp);
                            continue;
                        };
                        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                            self.conns.refused_limit.fetch_add(1, Relaxed);
                            self.conns.log_refusal(|| tracing::warn!(%peer, "connection refused: too many handshakes in progress"));
                            drop(tcp);
                            continue;
                        };
                        let node = self.clone();
                        let transport = transport.clone();
                        let permits = permits.clone();
                        let clients = clients.clone();
                        tokio::spawn(async move {
                            let accepted = tokio::time::timeout(
                                limits.handshake_timeout,
                                transport.accept(tcp, peer),
                            )
                            .await;
                            drop(handshake);
                            drop(from_ip);
                            match accepted {
                                Ok(Ok((stream, who))) => {
                                    let client = who.as_ref().is_some_and(|w| {
                                        matches!(w.role, crate::net::Role::Read | crate::net::Role::Write)
                                    });
                                    let client_permit = match client {
                                        true => match clients.try_acquire_owned() {
                                            Ok(p) => Some(p),
                                            Err(_) => {
                                                node.conns.refused_limit.fetch_add(1, Relaxed);
                                                node.conns.log_refusal(|| tracing::warn!(%peer, "connection refused: the node serves its limit of client connections (the rest is kept for nodes and administrators)"));
                                                return;
                                            }
                                        },
                                        false => None,
                                    };
                                    let Ok(_permit) = permits.try_acquire_owned() else {
                                        node.conns.refused_limit.fetch_add(1, Relaxed);
                                        node.conns.log_refusal(|| tracing::warn!(%peer, limit = limits.max_connections, "connection refused: the node serves its limit of connections"));
                                        return;
                                    };
                                    let _client_permit = client_permit;
                                    node.conns.open.fetch_add(1, Relaxed);
                                    node.clone().connection(stream, peer, who, limits.idle_timeout).await;
                                    node.conns.open.fetch_sub(1, Relaxed);
                                }
                                Ok(Err(e)) => {
                                    node.conns.refused_handshake.fetch_add(1, Relaxed);
                                    node.conns.log_refusal(|| tracing::warn!(%peer, reason = %e, "connection refused"))
                                }
                                Err(_) => {
                                    node.conns.refused_handshake.fetch_add(1, Relaxed);
                                    node.conns.log_refusal(|| tracing::warn!(
                                        %peer,
                                        "connection refused: no TLS handshake within {} s",
                                        limits.handshake_timeout.as_secs()
                                    ))
                                }
                            }
                        });
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

    /// One client's connection. Answers go out in request order. Session
    /// requests and a replication link's batches are pipelined: while a
    /// transaction (or batch) waits for its sync, the next requests are read
    /// and run (up to [`PIPELINE_DEPTH`] answers owed), so those a peer
    /// keeps in flight share syncs. Any other request waits until the
    /// answers before it are sent.
    async fn connection(
        self: Arc<Self>,
        stream: crate::net::Stream,
        peer: SocketAddr,
        who: Option<crate::net::Identity>,
        idle_timeout: std::time::Duration,
    ) {
        // A client conversation's requests are small; links, admins and
        // plain loopback may send up to the protocol's limit.
        let max = match &who {
            Some(id) if matches!(id.role, crate::net::Role::Read | crate::net::Role::Write) => {
                crate::wire::CLIENT_MAX_FRAME
            }
            _ => crate::wire::MAX_FRAME,
        };
        let mut framed = Framed::new(stream, crate::wire::Frames::new(max));
        let mut conv = Conversation {
            who,
            ..Conversation::default()
        };
        let mut owed: FuturesOrdered<BoxFuture<'static, Response>> = FuturesOrdered::new();
        let mut idle_since = tokio::time::Instant::now();
        // A replication link's syncs, reported to its feeder as they happen.
        let mut reports: Option<tokio::sync::watch::Receiver<link::SyncState>> = None;
        loop {
            match (&conv.syncer, &reports) {
                (None, Some(_)) => reports = None,
                (Some(s), None) => reports = Some(s.reports()),
                _ => {}
            }
            tokio::select! {
                biased;
                Some(resp) = owed.next(), if !owed.is_empty() => {
                    idle_since = tokio::time::Instant::now();
                    if send(&mut framed, &resp).await.is_err() {
                        break;
                    }
                    continue;
                }
                // After the answers owed: a batch's Applied goes out before
                // the report of its sync.
                changed = async {
                    match reports.as_mut() {
                        Some(r) => r.changed().await,
                        None => std::future::pending().await,
                    }
                }, if reports.is_some() && owed.is_empty() => {
                    let state = match (changed, reports.as_mut()) {
                        (Ok(()), Some(r)) => r.borrow_and_update().clone(),
                        _ => {
                            // The sync thread is gone (it panicked): no more
                            // reports; the next batch starts another.
                            reports = None;
                            conv.syncer = None;
                            continue;
                        }
                    };
                    let resp = match state {
                        link::SyncState::Durable(d) => Response::Synced { durable_seq: d },
                        link::SyncState::Failed(e) => {
                            // Reported once: the database is poisoned, and
                            // every later batch fails when it is queued.
                            reports = None;
                            conv.syncer = None;
                            Response::error(e)
                        }
                    };
                    if send(&mut framed, &resp).await.is_err() {
                        break;
                    }
                    continue;
                }
                frame = framed.next(), if owed.len() < PIPELINE_DEPTH => {
                    let frame = match frame {
                        None => break,
                        Some(Ok(f)) => f,
                        Some(Err(e)) => {
                            tracing::warn!(%peer, reason = %e, "closing connection: bad frame");
                            break;
                        }
                    };
                    let req = match Request::decode(&frame) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(%peer, reason = %e, "closing connection: undecodable request");
                            while let Some(resp) = owed.next().await {
                                let _ = send(&mut framed, &resp).await;
                            }
                            let _ = send(&mut framed, &Response::error(e.to_string())).await;
                            break;
                        }
                    };
                    if let Some(refusal) = refusal(conv.who.as_ref(), &req, peer) {
                        self.conns.not_allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // In order: the answers owed go first.
                        let mut failed = false;
                        while let Some(resp) = owed.next().await {
                            failed |= send(&mut framed, &resp).await.is_err();
                        }
                        if failed || send(&mut framed, &refusal).await.is_err() {
                            break;
                        }
                        idle_since = tokio::time::Instant::now();
                        continue;
                    }
                    let step = match req {
                        Request::Session(r) => {
                            let step = self.session(&mut conv, r).await;
                            self.published_step(step)
                        }
                        Request::Link(LinkRequest::LinkApply {
                            follows,
                            changes,
                            confirmation,
                            txn_ends,
                        }) => {
                            self.link_apply(&mut conv, follows, changes, confirmation, txn_ends)
                                .await
                        }
                        Request::Link(LinkRequest::LinkSync { seq }) => self.link_sync(&mut conv, seq),
                        other => {
                            // In order: the answers owed go first.
                            let mut failed = false;
                            while let Some(resp) = owed.next().await {
                                failed |= send(&mut framed, &resp).await.is_err();
                            }
                            if failed {
                                break;
                            }
                            session::Step::Now(self.handle(&mut conv, other).await)
                        }
                    };
                    // A request answered inline may have run long: the
                    // idle time starts again once it is done.
                    idle_since = tokio::time::Instant::now();
                    match step {
                        session::Step::Now(resp) if owed.is_empty() => {
                            if send(&mut framed, &resp).await.is_err() {
                                break;
                            }
                        }
                        session::Step::Now(resp) => owed.push_back(Box::pin(std::future::ready(resp))),
                        session::Step::Later(f) => owed.push_back(f),
                    }
                }
                // Nothing in flight for the idle timeout: closed (last: a request
                // that arrives at the deadline is served).
                _ = tokio::time::sleep_until(idle_since + idle_timeout),
                    if owed.is_empty() && conv.link.is_none() && reports.is_none() => {
                    self.conns.idle_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%peer, idle_s = idle_timeout.as_secs(), "closing an idle connection");
                    break;
                }
            }
        }
        // Transactions queued before the connection ended still commit (or
        // fail) in order; nobody is left to tell.
        while owed.next().await.is_some() {}
        // Dropping the conversation backs out an open session transaction.
        if let Some(s) = conv.session.take() {
            if s.in_transaction() {
                tracing::info!(%peer, "connection lost mid-transaction: backed out");
            }
            let _ = tokio::task::spawn_blocking(move || drop(s)).await;
        }
    }

    /// One request, dispatched to the handler of its conversation, each in
    /// a file of its own: client sessions (`session`), reads (`reads`),
    /// copies and the protection log (`copies`), the topology (`admin`),
    /// operator actions (`operations`), recovery steps (`recovery`), and the
    /// replicate side of a link (`link`).
    async fn handle(self: &Arc<Self>, conv: &mut Conversation, req: Request) -> Response {
        // Whatever an answer could show (records, job texts, topologies,
        // task reports, recovery steps) may rest on a commit not yet
        // durable: it is held back by `published`. Not a session's (its
        // step says), a link's, or a wait for a replicate's confirmation
        // (of master commits shipped once durable).
        let resp = match req {
            Request::Session(r) => {
                let step = self.session(conv, r).await;
                return match self.published_step(step) {
                    session::Step::Now(resp) => resp,
                    session::Step::Later(f) => f.await,
                };
            }
            Request::Link(r) => return self.link(conv, r).await,
            Request::Operation(r @ crate::wire::OperationRequest::WaitConfirmed { .. }) => {
                return self.operation(r).await
            }
            Request::Read(r) => self.read(r).await,
            Request::Copy(r) => self.copy(r).await,
            Request::Admin(r) => self.admin(r, conv.who.as_ref()).await,
            Request::Operation(r) => self.operation(r).await,
            Request::Recovery(op) => self.recovery(conv, op).await,
        };
        self.published(resp).await
    }
}

impl Node {
    /// `resp`, once every commit it could carry is durable; if the
    /// database stops first (a failed write or sync), an `Unavailable`
    /// error instead: no reader is answered with a commit a failed sync
    /// takes back (see [`Database::durable_through`]). Errors too: "record
    /// exists" or `AlreadyCommitted` can rest on a commit not yet durable.
    /// The wait is the syncs of the groups queued when the answer was
    /// ready (one or two), and none when the log is idle.
    async fn published(&self, resp: Response) -> Response {
        let seen = self.db.last_lsn();
        match self.db.durable_through(seen).await {
            Ok(()) => resp,
            Err(e) => Response::error(Failure::new(
                ErrorCode::Unavailable,
                format!("not answered: a commit it could show is not durable ({e})"),
            )),
        }
    }
}

impl Node {
    /// A session's step, its answer held back by [`Node::published`] when
    /// it could show another transaction's commit: a record read (or its
    /// absence) and an error. A transaction's own commit (a later answer)
    /// is answered once durable already. A store's, update's or delete's
    /// `Ok` inside an open transaction may rest on a commit not yet durable;
    /// that transaction commits only after it, and fails with it.
    fn published_step(self: &Arc<Self>, step: session::Step) -> session::Step {
        match step {
            session::Step::Now(resp) if could_show_commits(&resp) => {
                let node = self.clone();
                session::Step::Later(Box::pin(async move { node.published(resp).await }))
            }
            session::Step::Now(resp) => session::Step::Now(resp),
            session::Step::Later(f) => {
                let node = self.clone();
                session::Step::Later(Box::pin(async move {
                    let resp = f.await;
                    if could_show_commits(&resp) {
                        node.published(resp).await
                    } else {
                        resp
                    }
                }))
            }
        }
    }
}

/// Whether a session's answer could show another transaction's commit (a
/// batch answers with its last command's answer): a record read, or an
/// error, but for a commit's own `OutcomeUnknown` (it says what it must).
fn could_show_commits(resp: &Response) -> bool {
    match resp {
        Response::Record(_) => true,
        Response::Error { code, .. } => *code != ErrorCode::OutcomeUnknown,
        _ => false,
    }
}

#[derive(Default)]
struct Conversation {
    /// Who is at the other end, by its certificate (None: plain TCP on
    /// loopback, where every request is allowed).
    who: Option<crate::net::Identity>,
    session: Option<Session>,
    link: Option<Link>,
    /// The thread waiting for this link's applied batches to be durable.
    syncer: Option<link::Syncer>,
    /// Updates pass a quiesce (a recovery's own connection).
    exempt: bool,
    /// A `Chain` transaction failed: the chained ones after it are refused
    /// until another session request.
    chain_failed: bool,
    /// When this link's load progress was last logged.
    load_said: Option<std::time::Instant>,
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

/// The refusal a request from `who` gets if its role may not ask it
/// (logged with the certificate's name), else None.
fn refusal(
    who: Option<&crate::net::Identity>,
    req: &Request,
    peer: SocketAddr,
) -> Option<Response> {
    let who = who?;
    let (need, kind) = crate::net::roles::needs(req);
    if need.allows(who.role) {
        return None;
    }
    tracing::warn!(%peer, certificate = %who.name, role = %who.role, request = kind, "request refused: not allowed to its role");
    Some(Response::error(Failure::new(
        ErrorCode::NotAllowed,
        format!(
            "{kind} refused: it needs {}; the peer is {who}",
            need.roles()
        ),
    )))
}

async fn send(
    framed: &mut Framed<crate::net::Stream, crate::wire::Frames>,
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
