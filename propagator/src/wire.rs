//! The wire protocol between `etp` clients, nodes and replication links.
//!
//! Every message is one frame: a 4-byte big-endian length ([`Frames`], at
//! most [`MAX_FRAME`] bytes, [`CLIENT_MAX_FRAME`] from a client) followed by a
//! MessagePack [`Envelope`] holding the protocol version and the message.
//! A frame that is oversized, cut short or undecodable, or that carries
//! another protocol version, ends that connection with a logged reason; a
//! node applies nothing from it.
//!
//! One connection carries one conversation: a client session (exec and
//! reads; closing the connection backs out an open transaction), an
//! administration or task request, or a replication link from a master's
//! task to a replicate. Every request gets exactly one response, in order.
//!
//! Records travel as their canonical encoded bytes ([`crate::record`]), so
//! the receiver validates them with the same decoder the page store uses.

use crate::digest::Digest;
use crate::ids::{DbId, Fnr, Isn, Lsn, Seq};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol version this build speaks.
/// 2: error answers carry an [`ErrorCode`].
/// 5: over mutual TLS; `NotAllowed`; the apply runs from the client.
pub const PROTOCOL_VERSION: u16 = 9;

/// The largest frame accepted or sent.
/// Room for the largest transaction (64 MiB of records) with its before-
/// and after-images in one replication batch.
pub const MAX_FRAME: usize = 160 << 20;

/// The largest request frame a client conversation may send (role
/// `read` or `write`): room for one whole transaction (64 MiB of records)
/// and its commands. Replication links (whose batches carry before- and
/// after-images), administrators and plain loopback get [`MAX_FRAME`].
/// Either way a frame's buffer grows only as its bytes arrive.
pub const CLIENT_MAX_FRAME: usize = 72 << 20;

/// The codec with this protocol's frame limit for both directions.
pub fn codec() -> Frames {
    Frames::new(MAX_FRAME)
}

/// Length-delimited frames (a 4-byte big-endian length, then the bytes),
/// read into a buffer that grows only as the bytes arrive: a declared
/// length reserves nothing (tokio-util's `LengthDelimitedCodec` reserves it
/// at once, so header-only frames could claim gigabytes). A length over
/// the limit ends the connection.
#[derive(Clone, Copy, Debug)]
pub struct Frames {
    /// The largest frame read.
    max: usize,
    /// The largest frame written.
    max_out: usize,
}

impl Frames {
    /// Frames of up to `max` bytes read, up to [`MAX_FRAME`] written.
    pub fn new(max: usize) -> Frames {
        Frames {
            max,
            max_out: MAX_FRAME,
        }
    }

    /// The largest frame this codec reads.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl tokio_util::codec::Decoder for Frames {
    type Item = bytes::BytesMut;
    type Error = std::io::Error;

    fn decode(
        &mut self,
        src: &mut bytes::BytesMut,
    ) -> Result<Option<bytes::BytesMut>, std::io::Error> {
        use bytes::Buf;
        let Some(head) = src.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(head);
        let n = u32::from_be_bytes(len) as usize;
        if n > self.max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "frame of {n} bytes is over this connection's limit of {} bytes",
                    self.max
                ),
            ));
        }
        if src.len() < 4 + n {
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(n)))
    }
}

impl tokio_util::codec::Encoder<bytes::Bytes> for Frames {
    type Error = std::io::Error;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut bytes::BytesMut,
    ) -> Result<(), std::io::Error> {
        use bytes::BufMut;
        let n = u32::try_from(item.len())
            .ok()
            .filter(|n| *n as usize <= self.max_out)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "frame of {} bytes is over the limit of {} bytes",
                        item.len(),
                        self.max_out
                    ),
                )
            })?;
        dst.reserve(4 + item.len());
        dst.put_u32(n);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u16,
    msg: T,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("peer speaks protocol version {found}, this node speaks {PROTOCOL_VERSION}")]
    Version { found: u16 },
    #[error("message of {0} bytes exceeds the frame limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
}

fn encode<T: Serialize>(msg: &T) -> Result<bytes::Bytes, WireError> {
    let b = rmp_serde::to_vec_named(&Envelope {
        v: PROTOCOL_VERSION,
        msg,
    })
    .map_err(|e| WireError::Decode(e.to_string()))?;
    if b.len() > MAX_FRAME {
        return Err(WireError::TooLarge(b.len()));
    }
    Ok(b.into())
}

fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, WireError> {
    // Read the version first, so a newer peer gets a version error rather
    // than a confusing decode error about a message it shaped differently.
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u16,
    }
    let v: VersionOnly =
        rmp_serde::from_slice(frame).map_err(|e| WireError::Decode(e.to_string()))?;
    if v.v != PROTOCOL_VERSION {
        return Err(WireError::Version { found: v.v });
    }
    let env: Envelope<T> =
        rmp_serde::from_slice(frame).map_err(|e| WireError::Decode(e.to_string()))?;
    Ok(env.msg)
}

/// One command of a client transaction (the wire form of `exec`'s lines):
/// records travel as their canonical encoded bytes.
pub type Command = crate::exec::Command<ByteBuf>;

/// What a replication task asks of a task control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskAction {
    Start,
    Stop,
    Restart,
}

/// A change to one replicate record, already projected and selected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplChange {
    pub isn: Isn,
    /// The replicate's expected current bytes (None: absent).
    pub before: Option<ByteBuf>,
    /// The new bytes (None: delete).
    pub after: Option<ByteBuf>,
}

impl ReplChange {
    /// Bytes of its images (as [`crate::LogRecord::image_bytes`]).
    pub fn image_bytes(&self) -> usize {
        self.before.as_ref().map_or(0, |b| b.len()) + self.after.as_ref().map_or(0, |a| a.len())
    }
}

/// What a replicate records, in its confirmation file, with each batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    pub replicate: String,
    pub master_db: DbId,
    pub master: Fnr,
    /// The last master seq applied.
    pub seq: Seq,
    pub incarnation: u32,
    /// The master commit time of that seq (µs since the epoch).
    pub master_time_us: i64,
    /// The replicate file's digest after applying it.
    pub digest: Digest,
    pub count: u64,
    /// When the replicate applied it (µs since the epoch).
    pub applied_us: i64,
    /// The load this confirmation ended, if it did (set by a load's last chunk).
    #[serde(default)]
    pub loaded_by: Option<String>,
}

/// A request, by the conversation it belongs to; every request gets exactly
/// one response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// A client session's commands (the connection is the session: closing it
    /// backs out an open transaction).
    Session(SessionRequest),
    /// Reads: the node's identity, records, stats, range digests, lag samples.
    Read(ReadRequest),
    /// The topology: apply (two-phase, through every node it names), export.
    Admin(AdminRequest),
    /// Operator requests: task and replicate status and control, policy,
    /// cross-references, log cleanup.
    Operation(OperationRequest),
    /// Copies and the protection log: copy jobs, taking a copy set, segments.
    Copy(CopyRequest),
    /// A replication link from a master's task to a replicate on this node.
    Link(LinkRequest),
    /// A step of a recovery plan; answered with `Text` (JSON of what was done).
    Recovery(RecoveryOp),
}

/// A client session's commands (the connection is the session: closing it
/// backs out an open transaction).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SessionRequest {
    /// One command of this connection's session.
    Exec(Command),
    /// Several commands of this connection's session in one round trip
    /// (typically a whole transaction ending in ET); stops at the first
    /// error, which backs the transaction out. Answered like the last one.
    Batch(Vec<Command>),
    /// A whole transaction ending in ET, sent without waiting for the
    /// answers to the ones before it (a pipelining client, e.g. `etp exec
    /// --node`). It runs only if every `Chain` before it on this connection
    /// (since its last other session request) ran without error: a client
    /// that stops at the first failure commits nothing after it. Answered
    /// like `Batch`, except that a command that fails answers
    /// [`Response::ChainFailed`] with its index, and a transaction not run
    /// because an earlier one failed answers `Refused`.
    Chain(Vec<Command>),
}

/// Reads: the node's identity, records, stats, range digests, lag samples.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReadRequest {
    /// A node's identity and progress.
    Info,
    /// Commit-to-apply samples a replicate on this node recorded for the
    /// master transactions after `after` (bounded history).
    LagSamples { replicate: String, after: Seq },
    /// Up to `limit` records of a file from isn `from` on, ascending. A
    /// replicate that serves no current reads (held: restored and not yet
    /// caught up, shunned or in error at its master, or being loaded) is
    /// refused ([`ErrorCode::Held`]) unless `stale` asks for what it holds
    /// anyway.
    Dump {
        file: Fnr,
        from: Isn,
        limit: u32,
        #[serde(default)]
        stale: bool,
    },
    /// A file's record count and digest.
    FileStat { file: Fnr },
    /// A file's record count and digest over the isns in `[from, to)`,
    /// with the records themselves if asked (also for a damaged file: this
    /// is how verification looks at one).
    RangeDigest {
        file: Fnr,
        from: Isn,
        to: Option<Isn>,
        records: bool,
    },
    /// The node's file catalog and the topology it holds.
    Files,
    /// Whether this node reaches database `database` at the address its
    /// topology gives (a fresh connection, its certificate checked): how a
    /// tool that cannot reach a database tells a stopped node from a cut
    /// path.
    Reach { database: DbId },
    /// The age of the newest copy set, in this node's copy area, of every
    /// master, log and administration file of its topology, and which are
    /// alarms (none newer than the node's `--copy-alarm-hours`).
    CopyAges,
}

/// How old the newest copy of one file is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyAge {
    pub database: DbId,
    pub file: Fnr,
    /// "master", "log" or "administration".
    pub role: String,
    /// The master's name, for a master or its log.
    pub name: Option<String>,
    pub newest_set: Option<String>,
    /// Seconds since that set was taken.
    pub age_s: Option<f64>,
    /// No copy newer than the node's alarm age (or none at all).
    pub alarm: bool,
}

/// What a node found when it tried to reach another database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReachReport {
    pub database: DbId,
    pub address: String,
    /// It connected (and the peer proved to be that database's node).
    pub reached: bool,
    /// The address refused the connection: nothing listens there (the
    /// node is stopped, its host up).
    pub refused: bool,
    /// Why it did not connect.
    pub reason: Option<String>,
}

/// The digest that names a topology's text in an apply's compare
/// (`AdminInstall::expect`): blake3, 16 hex digits; `""` for no topology.
pub fn topology_digest(text: Option<&str>) -> String {
    match text {
        None => String::new(),
        Some(t) => blake3::hash(t.as_bytes()).to_hex()[..16].to_string(),
    }
}

/// The topology: prepare and install (an apply's two phases, which the
/// client runs through every node: `node::apply`), export.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The topology this node holds.
    AdminExport,
    /// Can this node take its part of the topology? (Phase one of an
    /// apply, which the client runs: `node::apply`.)
    AdminPrepare { topology: String },
    /// Take this node's part of the topology (phase two). With `expect`,
    /// only if the topology this node holds is still the one the apply
    /// saw at its prepare ([`topology_digest`] of its text; `""` for
    /// none): of two applies run at once, the one that installs second
    /// on a node is refused there.
    AdminInstall {
        topology: String,
        #[serde(default)]
        expect: Option<String>,
    },
    /// Seed 000's sync-down: a node that holds no topology (a wiped site,
    /// or a new empty database in place of the one the topology names)
    /// takes this one, which must name its database, as an install does:
    /// it creates its files and serves. Sent by the master's task of one
    /// of its replicates (automatic policy). Refused by a node that holds a
    /// topology: an apply (two-phase, through every node) changes that.
    AdminAdopt { topology: String },
}

/// Operator requests: task and replicate status and control, policy,
/// cross-references, log cleanup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OperationRequest {
    TaskStatus,
    /// Answers (Ok) once the named replicate has confirmed `seq` (durable
    /// there), or with an error after `timeout_ms`: waiting without polling.
    /// With `applied`, once it has applied `seq` (visible there, its sync
    /// to follow: what PostgreSQL's replication reports as caught up).
    WaitConfirmed {
        replicate: String,
        seq: Seq,
        timeout_ms: u64,
        #[serde(default)]
        applied: bool,
    },
    TaskControl {
        master: Option<Fnr>,
        action: TaskAction,
    },
    /// Operator requests about one replicate, on its master's node.
    Replicate {
        name: String,
        action: ReplicateAction,
    },
    /// Every replicate fed from this node, with its state.
    ReplicateStatus,
    /// The node's policy mode: set it (Some) or read it (None).
    Policy {
        set: Option<Policy>,
    },
    /// Which replicates have a master transaction (by client id or seq).
    Xref {
        master: Option<Fnr>,
        id: Option<String>,
        seq: Option<Seq>,
    },
    /// What log cleanup could delete (and, with `execute`, delete it).
    /// The horizon is the node's own: per master, the log seq of its
    /// newest set in the node's copy area (a master without one, or a node
    /// without an area, has nothing deleted).
    LogCleanup {
        master: Option<Fnr>,
        until: Option<Seq>,
        execute: bool,
    },
}

/// Copies and the protection log: copy jobs, taking a copy set, segments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CopyRequest {
    /// The copy-job definitions kept in the administration file (record
    /// 3); with `set`, replaces them first (the caller has validated them).
    CopyJobs { set: Option<String> },
    /// The protection log's segments, oldest first.
    PlogSegments,
    /// Removes the oldest closed segments at or before `through` that
    /// restart recovery no longer needs (see `Database::remove_segments`).
    PlogRemove { through: Lsn },
    /// Takes a hot, consistent copy of `files` (see [`crate::copy`]) for
    /// copy set `set`, into the directory that set claimed in the node's
    /// own copy area (`--copy-area`); nowhere else.
    CopyTake { files: Vec<Fnr>, set: String },
    /// Whether the protection log reads whole from LSN `from` to its end
    /// (a copy set taken at `from` rolls forward across it): answered as
    /// [`crate::plog::survey::ReadBack`] in JSON text.
    PlogCheck { from: Lsn },
}

/// A replication link from a master's task to a replicate on this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LinkRequest {
    /// Opens a replication link to a replicate on this node.
    LinkOpen {
        replicate: String,
        file: Fnr,
        confirmation: Fnr,
        master_db: DbId,
        master: Fnr,
    },
    /// Applies a batch on the link's replicate, with its confirmation.
    LinkApply {
        /// The confirmed seq this batch follows: the replicate refuses the
        /// batch (out of sequence) unless its confirmation is exactly there.
        follows: Seq,
        changes: Vec<ReplChange>,
        confirmation: Confirmation,
        /// The last seq and commit time (µs) of each master transaction in
        /// the batch that changed this replicate (for lag samples).
        txn_ends: Vec<(Seq, i64)>,
    },
    /// Link: start a load of the replicate as of master seq `snapshot`
    /// (its confirmation becomes a load-progress record; replicated batches
    /// wait until the load ends).
    LoadBegin {
        id: String,
        snapshot: Seq,
        source: String,
        rewrite: bool,
    },
    /// Link: replace the replicate's records in `[from, to)` (`to` None: to
    /// the end, the last chunk) with `records`, whose count and digest the
    /// sender computed (checked before anything is written). The last chunk
    /// carries the confirmation the replicate ends the load with.
    LoadChunk {
        id: String,
        from: Isn,
        to: Option<Isn>,
        records: Vec<(Isn, ByteBuf)>,
        count: u64,
        digest: Digest,
        last: Option<Confirmation>,
    },
    /// Link: answer ([`Response::Synced`]) once every batch this connection
    /// applied up to `seq` is durable on the replicate. A confirm set sends
    /// it after its batch; a feeder streaming needs none: the replicate
    /// reports each sync unasked.
    LinkSync { seq: Seq },
    /// Link: holds the replicate (it serves no current reads: shunned or
    /// in error at its master), or with `None` releases it, which the
    /// replicate allows only once its confirmation is at `level` (the
    /// master's level when the link opened) or beyond, and only if its
    /// hold is still `releasing` (the one it announced then: a hold set
    /// since, a shun or an error, is not cleared by a late release).
    /// Answered `Ok`.
    Hold {
        hold: Option<crate::catalog::Hold>,
        level: Seq,
        #[serde(default)]
        releasing: Option<crate::catalog::Hold>,
    },
}

/// What an operator asks of one replicate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReplicateAction {
    /// Load it online from a consistent read of the master (`from` None) or
    /// of a full replicate of the same master. `reinit` replaces what it
    /// holds; `rewrite` writes every record even where it is already equal
    /// (false: a scoped reinit moves only what differs).
    Init {
        from: Option<String>,
        reinit: bool,
        rewrite: bool,
        chunk: Option<u32>,
    },
    Shun {
        reason: String,
    },
    Unshun,
    ResetError,
    /// Marks it as being restored from a copy set (Some: why; it is not fed
    /// meanwhile) or clears the mark (None: feeding resumes from the
    /// restored confirmation).
    Restoring {
        why: Option<String>,
    },
    /// Move its confirmation forward to `seq`, skipping what lies between;
    /// a permanent gap record says so.
    ConfirmSet {
        seq: Seq,
        reason: String,
    },
    /// Compare it with the master as of its confirmed seq.
    Verify {
        max_isns: u32,
    },
    /// Its error log.
    Errors,
}

/// What a recovery plan (`etp recover run`) asks of a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RecoveryOp {
    /// Refuse (true) or accept again (false) client update transactions on
    /// this node; connections that sent `Exempt` still update (the
    /// recovery's own re-apply).
    Quiesce { on: bool },
    /// This connection's updates pass a quiesce.
    Exempt,
    /// Empty a master's log and start it at the master's current level
    /// (`at`: at that seq, for a master rebuilt to an earlier level).
    RefreshLog {
        master: Fnr,
        #[serde(default)]
        at: Option<Seq>,
    },
    /// Replace a file's records in `[from, to)` with `records` (ascending),
    /// deriving nothing; `last` makes it the file's last chunk, proved
    /// against that count and digest. A chunk from isn 1 first takes what
    /// the file holds as its baseline (it may be damaged).
    RestoreRange {
        file: Fnr,
        from: Isn,
        to: Option<Isn>,
        records: Vec<(Isn, ByteBuf)>,
        last: Option<crate::FileMeta>,
    },
    /// Raise a master's incarnation.
    RaiseIncarnation { master: Fnr },
    /// Make replicate file `file` a master with the new log file `log`
    /// starting at seq `at`, its incarnation above `floor` (failover).
    Promote {
        file: Fnr,
        /// Its confirmation file: the seq it confirms must be `at`.
        confirmation: Fnr,
        log: Fnr,
        at: Seq,
        floor: u32,
    },
    /// Take a damaged file's records as its new baseline (the first step of
    /// replacing it whole).
    Rebase { file: Fnr },
    /// Restore the newest usable copy set in the node's copy area that
    /// holds `file`; with `regenerate`, rolled forward with the protection log up
    /// to LSN `upto` (None: its end). The node's tasks are rebuilt
    /// afterwards, stopped. (A plan takes `upto` from the node's last LSN
    /// before its first restore there, so the restore's own commits are not
    /// replayed.)
    Restore {
        file: Fnr,
        regenerate: bool,
        upto: Option<Lsn>,
    },
    /// Re-apply to master `master`, set back to seq `level` by a restore
    /// that began after LSN `upto`, the client transactions this node's
    /// own protection log holds whole after that level
    /// ([`crate::reapply::from_log`]); answered as
    /// [`crate::reapply::FromLog`] in JSON text.
    Reapply { master: Fnr, level: Seq, upto: Lsn },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub dbid: DbId,
    pub last_lsn: Lsn,
    pub version: String,
    /// Where the node listens.
    #[serde(default)]
    pub listening: Option<std::net::SocketAddr>,
    /// Where its topology says this database is (None: no topology).
    #[serde(default)]
    pub topology_address: Option<std::net::SocketAddr>,
    /// Its copy area (`--copy-area`), if it has one.
    #[serde(default)]
    pub copy_area: Option<String>,
}

impl NodeInfo {
    /// The topology names this database at an address the node does not
    /// listen on: its peers cannot reach it there.
    pub fn address_mismatch(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        let (l, t) = (self.listening?, self.topology_address?);
        let same = l.port() == t.port() && (l.ip() == t.ip() || l.ip().is_unspecified());
        (!same).then_some((l, t))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitReply {
    pub lsn: Lsn,
    pub time_us: i64,
    pub client_id: Option<String>,
    pub seqs: Vec<(Fnr, Seq, Seq)>,
}

impl CommitReply {
    /// The commit as a client knows it (no metas; visible at its time).
    pub fn into_info(self) -> crate::database::CommitInfo {
        crate::database::CommitInfo {
            lsn: self.lsn,
            time_us: self.time_us,
            client_id: self.client_id,
            seqs: self.seqs.into_iter().map(|(f, a, b)| (f, (a, b))).collect(),
            metas: Vec::new(),
            visible_us: self.time_us,
        }
    }
}

/// A replicate's answer to `LinkOpen`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkState {
    /// The confirmation record, if the replicate has applied anything.
    pub confirmation: Option<Confirmation>,
    /// The replicate file's digest and count as its content stands now
    /// (recomputed from the records when the file is damaged).
    pub digest: Digest,
    pub count: u64,
    /// Why the replicate file is unusable, if it is.
    pub damaged: Option<crate::catalog::Damage>,
    /// A load in progress, if one is.
    #[serde(default)]
    pub load: Option<LoadProgress>,
    /// Why the replicate serves no current reads, if it does not (a
    /// restored replicate announces itself so, with its confirmation's
    /// level): its master releases it once it has confirmed the master's
    /// level.
    #[serde(default)]
    pub hold: Option<crate::catalog::Hold>,
}

/// How far a load has come, as the replicate's confirmation file records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadProgress {
    pub id: String,
    /// The master seq the load is consistent at.
    pub snapshot: Seq,
    pub source: String,
    pub rewrite: bool,
    /// The records below this isn are loaded.
    pub next: Isn,
    /// Count and digest of the records loaded so far.
    pub count: u64,
    pub digest: Digest,
    pub chunks: u64,
}

/// One replication task's state, as `etp task status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskReport {
    pub master: Fnr,
    pub master_name: String,
    pub state: TaskState,
    pub restart_interval_s: Option<u64>,
    pub policy: Policy,
    pub master_seq: Seq,
    /// Records in the master's log file, and their size (estimated from the
    /// newest records).
    pub log_records: u64,
    pub log_bytes: u64,
    /// What an operator should look at (e.g. a log above its size threshold).
    pub warnings: Vec<String>,
    pub replicates: Vec<ReplicateReport>,
}

/// Declares a state enum whose wire and JSON names are the given strings
/// (today's output, unchanged), with `as_str`, `Display` and `ALL`.
macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// A replicate's state, as its master's task reports it.
    ReplicaState {
        /// Streaming: fed as the master commits.
        Online = "online",
        /// Not fed now (link down, feeder stopped); `reason` says why.
        Offline = "offline",
        /// Being loaded (initial load or reinit).
        Initializing = "initializing",
        /// A copy set is being restored into it.
        Restoring = "restoring",
        /// Wrong or refused: fed no more until an operator (or the automatic
        /// policy's retry) clears it.
        Error = "error",
        /// Not fed, by an operator's decision.
        Shunned = "shunned",
        /// Its database answers but holds no topology (a wiped or new
        /// site): its files must be re-created (`etp admin apply`) and
        /// loaded.
        Uninitialized = "uninitialized",
    }
}

named_enum! {
    /// How far behind a replicate is.
    Health {
        /// Nothing unconfirmed.
        Current = "current",
        /// Behind, and confirming.
        Behind = "behind",
        /// Behind and not confirming for a while.
        Stalled = "stalled",
    }
}

named_enum! {
    /// What a replicate holds of its master.
    ReplicaKind {
        Full = "full",
        Partial = "partial",
    }
}

named_enum! {
    /// Whether a replicate equals its master's selection, gaps aside.
    Consistency {
        Consistent = "consistent",
        /// Equal except for the seqs its gap records name (confirm set).
        ConsistentExceptGaps = "consistent-except-gaps",
    }
}

named_enum! {
    /// Whether a task's feeders run.
    TaskState {
        Running = "running",
        Stopped = "stopped",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicateReport {
    pub name: String,
    pub database: DbId,
    pub address: String,
    pub kind: ReplicaKind,
    pub state: ReplicaState,
    /// Why it is in that state (error, shunned, offline), if anything says.
    pub reason: Option<String>,
    /// What its feeder is doing: streaming, connecting, retrying in …, loading, stopped.
    pub phase: String,
    /// Whether its feeder runs (streaming, loading, connecting or waiting
    /// to retry); false once it stopped and waits for an operator.
    #[serde(default)]
    pub feeding: bool,
    pub sent_seq: Seq,
    pub confirmed_seq: Seq,
    pub lag_records: u64,
    /// Bytes of log records not yet confirmed (an estimate beyond a bound: see `lag_bytes_exact`).
    pub lag_bytes: u64,
    pub lag_bytes_exact: bool,
    /// Age of the oldest master change it has not confirmed, s.
    pub lag_s: f64,
    /// How long it has been behind without confirming anything, s (from
    /// apply progress, never from heartbeats).
    pub stalled_s: f64,
    pub health: Health,
    pub consistency: Consistency,
    pub gaps: Vec<Gap>,
    /// Found at its last link open to hold another history than its
    /// master's (set until a load replaces it).
    #[serde(default)]
    pub diverged: Option<Divergence>,
    pub load: Option<LoadReport>,
    pub last_load: Option<LoadSummary>,
    pub last_error: Option<String>,
    pub errors_logged: u64,
    pub connects: u64,
    /// Batches sent while streaming (since the node started).
    #[serde(default)]
    pub batches_sent: u64,
    /// Of those, the ones the master's committing thread sent as soon as
    /// its sync returned (a short tail, with no other commit waiting),
    /// instead of waking the feeder to send them.
    #[serde(default)]
    pub batches_sent_by_committer: u64,
    /// Log records its feeder read on (re)connects to work out what the
    /// replicate should hold (a partial replicate's state rolled forward
    /// from its last anchor): what makes a reconnect slow.
    #[serde(default)]
    pub expected_rolled_forward: u64,
    /// The replicate serves no current reads (it said so when its link
    /// opened: restored from a copy, or shunned or in error before), and
    /// the seq it is released at (the master's level then).
    #[serde(default)]
    pub held: Option<HeldReport>,
    /// Holds released since the master's node started.
    #[serde(default)]
    pub releases: u64,
    /// A sync-down of its wiped site (seed 000), as it stands: in
    /// progress, settling, or complete.
    #[serde(default)]
    pub sync_down: Option<String>,
}

/// A held replicate as its master sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldReport {
    pub hold: crate::catalog::Hold,
    /// Released once it confirms this seq (None: shunned or in error, not
    /// fed, until an operator acts).
    pub release_at: Option<Seq>,
}

/// A load as its feeder sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadReport {
    pub id: String,
    pub snapshot: Seq,
    pub source: String,
    /// Master (or source) records read so far, and how many there are.
    pub scanned: u64,
    pub total: u64,
    /// Records loaded into the replicate so far (all runs).
    pub loaded: u64,
    /// Chunks committed by this run, and the isn it resumed from (1: from the start).
    pub chunks_this_run: u64,
    pub resumed_from: Isn,
    pub rows_per_s: f64,
    pub eta_s: Option<f64>,
}

/// What `etp replicate verify` found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    pub replicate: String,
    /// The master seq both sides were compared at.
    pub seq: Seq,
    pub equal: bool,
    pub expected_count: u64,
    pub expected_digest: Digest,
    pub count: u64,
    pub digest: Digest,
    pub ranges_checked: u64,
    pub ranges_differing: u64,
    /// (isn, changed | missing | extra)
    pub differences: Vec<(Isn, String)>,
    /// More differences exist than listed.
    pub truncated: bool,
}

/// One replicate's answer to `etp xref`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XrefEntry {
    pub replicate: String,
    /// applied, pending, skipped (gap), not affected (partial: no change there)
    pub status: String,
    pub confirmed_seq: Seq,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XrefReport {
    pub master: Fnr,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub lsn: Lsn,
    pub time_us: i64,
    pub client_id: Option<String>,
    pub replicates: Vec<XrefEntry>,
}

/// What log cleanup could delete, and why not more.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CleanupPlan {
    pub master: Fnr,
    pub master_name: String,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub records: u64,
    pub bytes: u64,
    /// Warn when the log holds more than this.
    pub warn_bytes: u64,
    /// (replicate, durably confirmed seq, where the figure comes from)
    pub replicates: Vec<(String, Seq, String)>,
    /// Seq of the master's most recent catalogued copy, if any.
    pub copy_horizon: Option<Seq>,
    /// The highest seq that may be deleted (None: nothing may be).
    pub safe_until: Option<Seq>,
    pub requested: Option<Seq>,
    /// Replicates that would need a full reinit if cleaned to `requested`.
    pub would_strand: Vec<String>,
    /// Copies that would lose their roll-forward path.
    pub would_orphan_copies: Vec<String>,
    pub deleted: u64,
    pub notes: Vec<String>,
}

// ------------------------------------------------- node state on the wire

/// How a node's tasks react to failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Tasks restart themselves (a lost link is retried, capped at the
    /// task's restart interval), replicates in error are retried, a new or
    /// redefined replicate is loaded without being asked.
    #[default]
    Automatic,
    /// Failures are detected and marked; nothing restarts by itself.
    Manual,
    /// Every task is stopped at a safe point and none starts.
    Maintenance,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Automatic => "automatic",
            Policy::Manual => "manual",
            Policy::Maintenance => "maintenance",
        })
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "automatic" => Ok(Policy::Automatic),
            "manual" => Ok(Policy::Manual),
            "maintenance" => Ok(Policy::Maintenance),
            other => Err(format!(
                "unknown policy {other:?}: expected automatic, manual or maintenance"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// When it was first and last seen (µs since the epoch).
    pub first_us: i64,
    pub last_us: i64,
    pub reason: String,
    /// How many times in a row it occurred.
    pub repeats: u64,
    /// error, reset, shun, unshun, info
    #[serde(default)]
    pub kind: String,
}

impl CopyAge {
    /// "role file F of database D (name)", for people.
    pub fn what(&self) -> String {
        format!(
            "{} file {} of database {}{}",
            self.role,
            self.file,
            self.database,
            self.name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        )
    }

    /// Its newest copy, for people: "newest copy SET, 1.5 h old" or "no copy".
    pub fn newest(&self) -> String {
        match (&self.newest_set, self.age_s) {
            (Some(s), Some(age)) => format!("newest copy {s}, {:.1} h old", age / 3600.0),
            _ => "no copy".into(),
        }
    }
}

/// A replicate holding another history than its master's: ahead of it
/// (the master was set back behind it) or different at the seq it confirms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// What the replicate's confirmation file holds.
    pub confirmed_seq: Seq,
    pub confirmed_incarnation: u32,
    /// The master's level (its log's last seq) and incarnation when found.
    pub master_seq: Seq,
    pub master_incarnation: u32,
    /// The seqs the replicate holds that its master's history does not
    /// (lost with the master's rewind): `master_seq + 1 ..= confirmed_seq`
    /// when it is ahead, else from the first seq the two disagree on.
    pub lost_from: Seq,
    pub why: String,
    pub time_us: i64,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "diverged: it confirms seq {} of incarnation {}, its master stands at seq {} of incarnation {}: {}",
            self.confirmed_seq,
            self.confirmed_incarnation,
            self.master_seq,
            self.master_incarnation,
            self.why
        )
    }
}

/// Master changes a replicate skipped, recorded for good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub from: Seq,
    pub to: Seq,
    pub reason: String,
    pub time_us: i64,
}

/// The last finished load of a replicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    pub id: String,
    pub snapshot: Seq,
    pub source: String,
    pub records: u64,
    pub written: u64,
    pub removed: u64,
    pub kept: u64,
    /// Chunks in all, and committed by the run that finished it.
    pub chunks: u64,
    pub chunks_last_run: u64,
    /// The isn the finishing run resumed from (1: it did the whole load).
    pub resumed_from: Isn,
    pub seconds_last_run: f64,
    pub finished_us: i64,
}

// ------------------------------------------------- errors

/// What an error answer means to the side that receives it: the only thing
/// a peer decides on (the message is for people and logs, never parsed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Nothing more specific: report it.
    Other,
    /// The request itself was wrong (unknown file, bad record, a missing
    /// record, a transaction too large, …): nothing was applied, and the
    /// same request would fail again.
    BadRequest,
    /// The transaction id was committed already, at this LSN.
    AlreadyCommitted { lsn: Lsn },
    /// A replicated batch does not follow the replicate's confirmation
    /// (another link applied first): reconnect and resume.
    OutOfSequence,
    /// A loaded chunk does not continue the load the replicate records.
    LoadOutOfSequence,
    /// A load is in progress on the replicate; batches wait for it.
    LoadInProgress,
    /// The replicate no longer matches what the master expects.
    Diverged,
    /// A file is damaged.
    Damaged,
    /// The node holds no topology: its site is uninitialized (wiped, or a
    /// new empty database in place of the one the topology names).
    Uninitialized,
    /// A replicate that serves no current reads (restored and not caught
    /// up, shunned or in error at its master, or being loaded): ask for
    /// stale reads to read what it holds anyway.
    Held,
    /// The node cannot take it now (closed, quiesced, stopped after a failed
    /// write): retry later, elsewhere, or after recovery.
    Unavailable,
    /// The request was understood and refused (a rule of the receiver).
    Refused,
    /// The peer's certificate does not allow this request (its role, or a
    /// link for a replicate its database does not master).
    NotAllowed,
    /// The node failed while handling it (an internal error): whether a
    /// commit it carried took effect is not known. A retry under the same
    /// transaction id is safe.
    OutcomeUnknown,
}

/// An error answer's content: its code and its message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(ErrorCode::Other, message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::new(ErrorCode::Other, message)
    }
}

impl From<crate::copy::SetError> for Failure {
    fn from(e: crate::copy::SetError) -> Failure {
        use crate::copy::SetError;
        let code = match &e {
            SetError::Refused(_) => ErrorCode::Refused,
            SetError::Db(d) => d.code(),
            _ => ErrorCode::Other,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<crate::error::DbError> for Failure {
    fn from(e: crate::error::DbError) -> Failure {
        Failure::new(e.code(), e.to_string())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
    Info(NodeInfo),
    Stored {
        isn: Isn,
    },
    Committed(CommitReply),
    Record(Option<ByteBuf>),
    Records {
        items: Vec<(Isn, ByteBuf)>,
        done: bool,
        /// The file is a log file: items are log records.
        is_log: bool,
    },
    Text(String),
    Stat {
        count: u64,
        digest: Digest,
        damaged: Option<crate::catalog::Damage>,
        /// The next isn (a log file's next seq).
        #[serde(default)]
        next_isn: u64,
    },
    Tasks(Vec<TaskReport>),
    Link(LinkState),
    /// A replicate's acknowledgement of a batch: it is applied (visible,
    /// queued for the replicate's group commit) at `applied_seq`, and every
    /// batch of the link up to `durable_seq` is durable. The replicate
    /// answers as soon as the batch is queued and syncs behind it, so
    /// `durable_seq` trails; the feeder counts a batch confirmed (and the
    /// master's log may be cleaned up to it) only once it is durable.
    Applied {
        applied_seq: Seq,
        durable_seq: Seq,
        digest: Digest,
        count: u64,
        lsn: Lsn,
    },
    /// Per master transaction: (its last seq, its master commit time, when it
    /// was visible on the replicate, when it was durable there), µs.
    Lag(Vec<(Seq, i64, i64, i64)>),
    /// A load's progress on the replicate.
    Loading(LoadProgress),
    /// A chunk committed on the replicate: the progress after it, and what
    /// it changed.
    LoadAck {
        progress: LoadProgress,
        stats: crate::database::LoadStats,
        /// The replicate file's count and digest after the chunk.
        count: u64,
        digest: Digest,
    },
    Range {
        count: u64,
        digest: Digest,
        records: Vec<(Isn, ByteBuf)>,
    },
    Verify(VerifyReport),
    Errors(Vec<ErrorEntry>),
    Policy(Policy),
    /// One report per master whose log holds the transaction (a
    /// transaction that wrote two masters is in both logs).
    Xref(Vec<XrefReport>),
    Cleanup(Vec<CleanupPlan>),
    Copied(crate::copy::Copied),
    Files {
        files: Vec<crate::FileDef>,
        topology: Option<String>,
    },
    Segments(Vec<crate::SegmentInfo>),
    Reach(ReachReport),
    CopyAges(Vec<CopyAge>),
    /// A `Chain` transaction's command `index` (0-based) failed; the
    /// transaction is backed out.
    ChainFailed {
        index: u32,
        code: ErrorCode,
        message: String,
    },
    /// The answer to [`LinkRequest::LinkSync`]: the link's batches up to
    /// `durable_seq` (at least the seq asked for) are durable.
    Synced {
        durable_seq: Seq,
    },
}

impl Request {
    pub fn encode(&self) -> Result<bytes::Bytes, WireError> {
        encode(self)
    }
    pub fn decode(frame: &[u8]) -> Result<Request, WireError> {
        decode(frame)
    }
}

impl Response {
    pub fn encode(&self) -> Result<bytes::Bytes, WireError> {
        encode(self)
    }
    pub fn decode(frame: &[u8]) -> Result<Response, WireError> {
        decode(frame)
    }
    /// An error answer: a [`Failure`], a `DbError` (its code kept), or a
    /// message (code [`ErrorCode::Other`]).
    pub fn error(e: impl Into<Failure>) -> Response {
        let Failure { code, message } = e.into();
        Response::Error { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let r = Request::Session(SessionRequest::Exec(Command::Store {
            file: Fnr(10),
            isn: Some(Isn(3)),
            fields: ByteBuf::from(vec![1, 2, 3]),
        }));
        let b = r.encode().expect("encode");
        match Request::decode(&b).expect("decode") {
            Request::Session(SessionRequest::Exec(Command::Store { file, isn, fields })) => {
                assert_eq!(
                    (file, isn, fields.into_vec()),
                    (Fnr(10), Some(Isn(3)), vec![1, 2, 3])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_version_is_named_and_garbage_is_refused() {
        let b = rmp_serde::to_vec_named(&Envelope {
            v: 99,
            msg: Request::Read(ReadRequest::Info),
        })
        .expect("encode");
        assert!(matches!(
            Request::decode(&b),
            Err(WireError::Version { found: 99 })
        ));
        assert!(matches!(
            Request::decode(b"\xff\x00garbage"),
            Err(WireError::Decode(_))
        ));
        let ok = Request::Read(ReadRequest::Info).encode().expect("encode");
        assert!(Request::decode(&ok[..ok.len() - 1]).is_err());
    }
}
