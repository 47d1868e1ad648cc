//! The transaction journal of `etp exec --node ADDR --journal DIR`: client
//! transactions that must survive an unreachable master (DESIGN §2,
//! invariant 3, "autorestart").
//!
//! Every transaction read from the input gets a client id (its own, or a
//! generated one) and is appended to `DIR/journal.etpj` and synced **before**
//! it is sent. When the node cannot be reached, or the connection drops before
//! the ET is acknowledged, the node has backed the session out (autobackout),
//! so nothing of it is half-applied; the transaction stays pending and is run
//! again — later in the same command (capped backoff, `--retry-for`) or by
//! the next `etp exec --journal DIR`. The id makes the rerun exactly-once: a
//! node answers an ET whose id it has already committed with "already
//! committed at LSN n", which counts as success. Pending transactions run
//! strictly in journal order; a later one never overtakes an earlier one.
//!
//! ## File format
//!
//! `journal.etpj` starts with the 8-byte magic `ETPJNL01`, then frames:
//!
//! ```text
//! len: u32 LE | !len: u32 LE | checksum: u64 LE (first 8 bytes of blake3(payload)) | payload (JSON, len bytes)
//! ```
//!
//! Payloads: `txn` (a transaction: entry number, id, time, its command
//! lines), `attempt` (a failed try and why), `done` (committed, with its
//! LSN), `failed` (refused by the node: nothing of it was applied). Every
//! append is followed by `fdatasync`; creating the file syncs the file and its
//! directory. When entries have been resolved the file is compacted: the
//! pending entries are written to `journal.etpj.tmp`, synced, renamed over the
//! journal, and the directory is synced.
//!
//! ## Damage
//!
//! A frame whose length fields disagree, whose checksum does not match or
//! whose payload does not decode is damage: it is reported naming the file
//! and byte offset, and nothing runs. Only a **torn tail** — the last frame
//! cut short (or zero-filled) by a crash while it was being written — is
//! dropped, with a warning: its write never completed, so nothing was sent on
//! its strength (a torn `txn` was never sent; a torn `done` or `attempt`
//! merely leaves its transaction pending, and the rerun is exactly-once).

use anyhow::{bail, Context};
use chrono::{SecondsFormat, Utc};
use propagator::exec::{
    commit_json, Command as ExecCmd, ExecCommand, ExecTarget, LineError, MAX_LINE,
};
use propagator::framed::{self, FramedError, FramedFile};
use propagator::medium::FsDir;
use propagator::node::client::{Client, ClientError};
use propagator::record::record_to_json;
use propagator::wire::SessionRequest;
use propagator::wire::{ErrorCode, Request, Response};
use propagator::CommitInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The journal file inside the journal directory.
pub const FILE_NAME: &str = "journal.etpj";
/// Where compaction wrote before the framed-file primitive (removed at open).
const OLD_TMP_NAME: &str = "journal.etpj.tmp";
const LOCK_NAME: &str = "lock";
const MAGIC: &[u8; 8] = b"ETPJNL01";
/// Compact once this many entries were resolved since the last compaction
/// (and at the end of every run that resolved any).
const COMPACT_AFTER: u64 = 256;
/// The default of `--retry-for`.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A journal frame's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Frame {
    Txn {
        n: u64,
        id: String,
        /// When it was journaled (RFC 3339).
        at: String,
        /// The command lines before its ET, as given.
        cmds: Vec<String>,
        /// Failed attempts so far (folded in by compaction).
        #[serde(default)]
        attempts: u32,
        #[serde(default)]
        last_error: Option<String>,
        #[serde(default)]
        last_at: Option<String>,
    },
    Attempt {
        n: u64,
        at: String,
        error: String,
    },
    Done {
        n: u64,
        lsn: u64,
        /// The node said it had already committed this id.
        already: bool,
    },
    Failed {
        n: u64,
        error: String,
    },
}

/// A pending transaction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    pub n: u64,
    pub id: String,
    pub since: String,
    pub cmds: Vec<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub last_at: Option<String>,
}

impl Entry {
    /// "store file 10 isn 7 (+2 more)" — what the status lists.
    pub fn summary(&self) -> String {
        let Some(first) = self.cmds.first() else {
            return "(no commands: ET only)".into();
        };
        let mut s = match serde_json::from_str::<serde_json::Value>(first) {
            Ok(v) => {
                let mut s = v["op"].as_str().unwrap_or("?").to_string();
                if let Some(f) = v["file"].as_u64() {
                    s.push_str(&format!(" file {f}"));
                }
                if let Some(i) = v["isn"].as_u64() {
                    s.push_str(&format!(" isn {i}"));
                }
                s
            }
            Err(_) => first.chars().take(60).collect(),
        };
        if self.cmds.len() > 1 {
            s.push_str(&format!(" (+{} more)", self.cmds.len() - 1));
        }
        s
    }
}

/// The journal cannot be used as it is.
#[derive(Debug)]
pub enum JournalError {
    Damaged {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    InUse(PathBuf),
    Io {
        what: String,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Damaged {
                file,
                offset,
                reason,
            } => write!(
                f,
                "journal file {} is damaged at byte offset {offset}: {reason}; nothing was run \
                 (the journal may hold pending transactions: inspect it, then move it aside to start a new one)",
                file.display()
            ),
            JournalError::InUse(dir) => write!(
                f,
                "journal {} is in use by another etp exec",
                dir.display()
            ),
            JournalError::Io { what, path, error } => {
                write!(f, "cannot {what} {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for JournalError {}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> JournalError {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |error| JournalError::Io { what, path, error }
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<FramedError> for JournalError {
    fn from(e: FramedError) -> JournalError {
        match e {
            FramedError::Damaged {
                file,
                offset,
                reason,
            } => JournalError::Damaged {
                file: PathBuf::from(file),
                offset,
                reason,
            },
            FramedError::Io { what, file, source } => JournalError::Io {
                what: what.to_string(),
                path: PathBuf::from(file),
                error: source,
            },
        }
    }
}

fn payload(frame: &Frame) -> Vec<u8> {
    // Serializing this enum of strings and integers cannot fail.
    serde_json::to_vec(frame).unwrap_or_default()
}

/// One frame, ready to append (the format of [`propagator::framed`]).
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    framed::encode_frame(&payload(frame))
}

/// What a scan of the journal bytes found.
#[derive(Debug)]
pub struct Scan {
    /// Each frame with its byte offset.
    pub frames: Vec<(u64, Frame)>,
    /// Bytes of whole, valid content (magic included).
    pub valid_len: u64,
    /// A torn tail: its offset and length.
    pub torn: Option<(u64, u64)>,
}

/// Decodes the frames a framed scan found, telling a torn tail from damage
/// (see the module docs).
fn decode(file: &Path, s: framed::Scan) -> Result<Scan, JournalError> {
    let mut frames = Vec::with_capacity(s.frames.len());
    for (off, p) in s.frames {
        let f: Frame = serde_json::from_slice(&p).map_err(|e| JournalError::Damaged {
            file: file.to_path_buf(),
            offset: off,
            reason: format!("entry does not decode: {e}"),
        })?;
        frames.push((off, f));
    }
    Ok(Scan {
        frames,
        valid_len: s.valid_len,
        torn: s.torn,
    })
}

/// Reads frames from the journal's bytes.
pub fn scan(file: &Path, bytes: &[u8]) -> Result<Scan, JournalError> {
    decode(
        file,
        framed::scan(&file.display().to_string(), MAGIC, bytes)?,
    )
}

/// The pending entries a list of frames leaves, and how many were resolved.
fn replay(
    file: &Path,
    frames: &[(u64, Frame)],
) -> Result<(BTreeMap<u64, Entry>, u64, u64), JournalError> {
    let mut pending = BTreeMap::new();
    let mut next_n = 1;
    let mut resolved = 0;
    for (off, f) in frames {
        let damaged = |reason: String| JournalError::Damaged {
            file: file.to_path_buf(),
            offset: *off,
            reason,
        };
        match f {
            Frame::Txn {
                n,
                id,
                at,
                cmds,
                attempts,
                last_error,
                last_at,
            } => {
                if pending.contains_key(n) || *n < next_n {
                    return Err(damaged(format!("entry {n} is out of order")));
                }
                next_n = n + 1;
                pending.insert(
                    *n,
                    Entry {
                        n: *n,
                        id: id.clone(),
                        since: at.clone(),
                        cmds: cmds.clone(),
                        attempts: *attempts,
                        last_error: last_error.clone(),
                        last_at: last_at.clone(),
                    },
                );
            }
            Frame::Attempt { n, at, error } => {
                let e = pending.get_mut(n).ok_or_else(|| {
                    damaged(format!("an attempt names entry {n}, which is not pending"))
                })?;
                e.attempts += 1;
                e.last_error = Some(error.clone());
                e.last_at = Some(at.clone());
            }
            Frame::Done { n, .. } | Frame::Failed { n, .. } => {
                if pending.remove(n).is_none() {
                    return Err(damaged(format!(
                        "an outcome names entry {n}, which is not pending"
                    )));
                }
                resolved += 1;
            }
        }
    }
    Ok((pending, next_n, resolved))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// The journal's content, read without changing anything (for `--status`).
pub struct Snapshot {
    pub file: PathBuf,
    pub pending: Vec<Entry>,
    pub warnings: Vec<String>,
}

/// Reads a journal without taking it over. A missing journal is empty.
pub fn read(dir: &Path) -> Result<Snapshot, JournalError> {
    let file = dir.join(FILE_NAME);
    // Read only: another etp exec may hold the journal and append to it.
    let s = framed::read_path(&file, MAGIC)?;
    let warnings = s
        .torn_warning(&format!("journal file {}", file.display()))
        .into_iter()
        .collect();
    let s = decode(&file, s)?;
    let (pending, _, _) = replay(&file, &s.frames)?;
    Ok(Snapshot {
        file,
        pending: pending.into_values().collect(),
        warnings,
    })
}

/// An open journal, held exclusively by this process.
pub struct Journal {
    path: PathBuf,
    file: FramedFile,
    _lock: File,
    pending: BTreeMap<u64, Entry>,
    next_n: u64,
    resolved: u64,
    /// Said while opening (a torn tail dropped).
    pub warnings: Vec<String>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, locks it, drops a
    /// torn tail (with a warning) and refuses a damaged one.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err("create journal directory", dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::InUse(dir.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let old_tmp = dir.join(OLD_TMP_NAME);
        if old_tmp.exists() {
            // A compaction of an earlier version that did not finish: the
            // journal itself is intact.
            std::fs::remove_file(&old_tmp).map_err(io_err("remove", &old_tmp))?;
        }
        let path = dir.join(FILE_NAME);
        let (file, s) = FramedFile::open(Arc::new(FsDir::new(dir)), FILE_NAME, MAGIC)?;
        let warnings = s
            .torn_warning(&format!("journal file {}", path.display()))
            .into_iter()
            .collect();
        let s = decode(&path, s)?;
        let (pending, next_n, resolved) = replay(&path, &s.frames)?;
        Ok(Journal {
            path,
            file,
            _lock: lock,
            pending,
            next_n,
            resolved,
            warnings,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pending entries, in order.
    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.pending.values()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn entry(&self, n: u64) -> Option<&Entry> {
        self.pending.get(&n)
    }

    fn append(&mut self, frame: &Frame) -> Result<(), JournalError> {
        Ok(self.file.append(&payload(frame))?)
    }

    /// Journals a transaction, durably; returns its entry number.
    pub fn add(&mut self, id: String, cmds: Vec<String>) -> Result<u64, JournalError> {
        let n = self.next_n;
        let at = now_text();
        self.append(&Frame::Txn {
            n,
            id: id.clone(),
            at: at.clone(),
            cmds: cmds.clone(),
            attempts: 0,
            last_error: None,
            last_at: None,
        })?;
        self.next_n += 1;
        self.pending.insert(
            n,
            Entry {
                n,
                id,
                since: at,
                cmds,
                attempts: 0,
                last_error: None,
                last_at: None,
            },
        );
        Ok(n)
    }

    /// Records a failed attempt of a pending entry.
    pub fn attempt_failed(&mut self, n: u64, error: &str) -> Result<(), JournalError> {
        let at = now_text();
        self.append(&Frame::Attempt {
            n,
            at: at.clone(),
            error: error.to_string(),
        })?;
        if let Some(e) = self.pending.get_mut(&n) {
            e.attempts += 1;
            e.last_error = Some(error.to_string());
            e.last_at = Some(at);
        }
        Ok(())
    }

    fn resolve(&mut self, frame: Frame, n: u64) -> Result<(), JournalError> {
        self.append(&frame)?;
        self.pending.remove(&n);
        self.resolved += 1;
        if self.resolved >= COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }

    /// Marks an entry committed (at `lsn`), durably.
    pub fn done(&mut self, n: u64, lsn: u64, already: bool) -> Result<(), JournalError> {
        self.resolve(Frame::Done { n, lsn, already }, n)
    }

    /// Marks an entry refused by the node (nothing of it applied), durably.
    pub fn failed(&mut self, n: u64, error: &str) -> Result<(), JournalError> {
        self.resolve(
            Frame::Failed {
                n,
                error: error.to_string(),
            },
            n,
        )
    }

    /// Entries resolved since the last compaction.
    pub fn resolved(&self) -> u64 {
        self.resolved
    }

    /// Rewrites the journal with only the pending entries (tmp, sync,
    /// rename, sync the directory).
    pub fn compact(&mut self) -> Result<(), JournalError> {
        let frames: Vec<Vec<u8>> = self
            .pending
            .values()
            .map(|e| {
                payload(&Frame::Txn {
                    n: e.n,
                    id: e.id.clone(),
                    at: e.since.clone(),
                    cmds: e.cmds.clone(),
                    attempts: e.attempts,
                    last_error: e.last_error.clone(),
                    last_at: e.last_at.clone(),
                })
            })
            .collect();
        self.file.rewrite(frames.iter().map(Vec::as_slice))?;
        self.resolved = 0;
        Ok(())
    }
}

/// A fresh client transaction id: time, process and randomness.
pub fn new_id() -> String {
    format!(
        "etp-{:x}-{:x}-{:016x}",
        Utc::now().timestamp_micros(),
        std::process::id(),
        fastrand::u64(..)
    )
}

/// How one attempt at a transaction ended.
enum Attempt {
    Committed(CommitInfo),
    /// The node had committed this id already (an earlier attempt whose
    /// acknowledgement was lost).
    Already(u64),
    /// Unreachable, or the connection dropped: the node backed the session
    /// out; try again.
    Transient(String),
    /// The node refused it: nothing of it is applied; do not retry.
    Refused(String),
}

/// The node cannot commit now (stopping, must be reopened, or quiesced by a
/// recovery), or does not know how a commit ended: the id makes a retry safe.
fn transient(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unavailable | ErrorCode::OutcomeUnknown)
}

fn classify(e: ClientError) -> Attempt {
    match e {
        ClientError::Remote { code, message, .. } => match code {
            ErrorCode::AlreadyCommitted { lsn } => Attempt::Already(lsn.0),
            code if transient(code) => Attempt::Transient(message),
            _ => Attempt::Refused(message),
        },
        ClientError::TooLarge { .. } => Attempt::Refused(e.to_string()),
        // Unexpected: the outcome is unknown, and the id makes a retry safe.
        ClientError::Connect { .. }
        | ClientError::Io { .. }
        | ClientError::Closed { .. }
        | ClientError::Abandoned { .. }
        | ClientError::Unexpected { .. } => Attempt::Transient(e.to_string()),
    }
}

/// Runs one journaled transaction on a fresh (or clean) session: its
/// commands (one batch, or one by one when it reads), then ET with its id.
/// If a command fails, the ET with the id still goes out: on the aborted
/// session the node answers "already committed" when an earlier attempt did
/// commit (the command failed on that commit's own effects), else "aborted".
fn attempt(client: &mut Client, e: &Entry, out: &mut dyn Write) -> Attempt {
    let mut cmds = Vec::with_capacity(e.cmds.len());
    for (k, line) in e.cmds.iter().enumerate() {
        match ExecCommand::parse(line) {
            Ok(c) => cmds.push(c),
            Err(m) => {
                return Attempt::Refused(format!(
                    "journal entry {} command {} does not parse: {m}",
                    e.n,
                    k + 1
                ))
            }
        }
    }
    let reads = cmds.iter().any(|c| matches!(c, ExecCmd::Read { .. }));
    let mut command_error: Option<String> = None;
    if reads {
        for c in cmds {
            let r = match c {
                ExecCmd::Store { file, isn, fields } => client.store(file, isn, fields).map(|_| ()),
                ExecCmd::Update { file, isn, fields } => client.update(file, isn, fields),
                ExecCmd::Delete { file, isn } => client.delete(file, isn),
                ExecCmd::Read { file, isn, stale } => client.read(file, isn, stale).map(|r| {
                    let fields = r
                        .as_ref()
                        .map(record_to_json)
                        .unwrap_or(serde_json::Value::Null);
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::json!({ "file": file.0, "isn": isn.0, "fields": fields })
                    );
                }),
                ExecCmd::Et { .. } | ExecCmd::Bt => Ok(()),
            };
            match r {
                Ok(()) => {}
                // The node cannot take it now (quiesced, stopping): nothing
                // ran; retry later rather than send ET, which would commit
                // an empty transaction under this id.
                Err(ClientError::Remote { code, message, .. }) if transient(code) => {
                    return Attempt::Transient(message)
                }
                Err(ClientError::Remote { message, .. }) => {
                    command_error = Some(message);
                    break;
                }
                Err(other) => return classify(other),
            }
        }
    } else if !cmds.is_empty() {
        let mut wire = Vec::with_capacity(cmds.len());
        for c in cmds {
            match c.to_wire() {
                Ok(w) => wire.push(w),
                Err(m) => return Attempt::Refused(m.to_string()),
            }
        }
        match client.batch(wire) {
            Ok(_) => {}
            Err(ClientError::Remote { code, message, .. }) if transient(code) => {
                return Attempt::Transient(message)
            }
            Err(ClientError::Remote { message, .. }) => command_error = Some(message),
            Err(other) => return classify(other),
        }
    }
    match client.call(&Request::Session(SessionRequest::Exec(ExecCmd::Et {
        id: Some(e.id.clone()),
    }))) {
        Ok(Response::Committed(c)) => match command_error {
            // Cannot happen with a node whose failed commands abort the
            // session; never count it as this transaction.
            Some(m) => Attempt::Refused(format!(
                "{m} (and the node then committed an empty transaction at LSN {} under id {:?})",
                c.lsn, e.id
            )),
            None => Attempt::Committed(c.into_info()),
        },
        Ok(other) => Attempt::Transient(format!(
            "node answered {:?} to ET",
            format!("{other:?}").chars().take(100).collect::<String>()
        )),
        Err(err) => match (classify(err), command_error) {
            (Attempt::Refused(_), Some(m)) => Attempt::Refused(m),
            (a, _) => a,
        },
    }
}

/// How `etp exec --journal` is to run.
pub struct ExecOptions {
    pub node: SocketAddr,
    pub retry_for: Duration,
    /// Only rerun pending transactions; read no input.
    pub rerun_only: bool,
    /// Pass a recovery's quiesce (`etp recover run` reruns while the
    /// master refuses other clients' updates).
    pub exempt: bool,
}

/// How a journaled exec ended.
#[derive(Debug)]
pub enum ExecEnd {
    /// Nothing pending.
    Done,
    /// The node stayed unreachable: this many transactions are pending.
    Pending(usize),
    /// Bad input or a refused transaction (already printed as a JSON error
    /// line); this many stay pending. After a refusal the rest of the input
    /// is still read and journaled (pending, not sent): nothing given is lost.
    Error { message: String, pending: usize },
    /// The input ended inside a transaction: its commands were backed out
    /// (not journaled); this many stay pending.
    OpenAtEnd {
        first_line: usize,
        commands: usize,
        pending: usize,
    },
}

enum Sent {
    Done,
    GaveUp,
    Refused(String),
}

struct Runner<'a> {
    journal: Journal,
    opts: &'a ExecOptions,
    client: Option<Client>,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    out: &'a mut dyn Write,
}

impl Runner<'_> {
    /// Runs entry `n` until it is resolved or the retry window closes.
    fn send(
        &mut self,
        n: u64,
        from_earlier_run: bool,
        line: Option<usize>,
    ) -> anyhow::Result<Sent> {
        let Some(entry) = self.journal.entry(n).cloned() else {
            bail!("journal entry {n} vanished");
        };
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0u32;
        loop {
            let result = match &mut self.client {
                Some(c) => attempt(c, &entry, self.out),
                None => match Client::connect(self.opts.node).and_then(|mut c| {
                    if self.opts.exempt {
                        c.call(&propagator::wire::Request::Recovery(
                            propagator::wire::RecoveryOp::Exempt,
                        ))?;
                    }
                    Ok(c)
                }) {
                    Ok(mut c) => {
                        let r = attempt(&mut c, &entry, self.out);
                        self.client = Some(c);
                        r
                    }
                    Err(e) => Attempt::Transient(e.to_string()),
                },
            };
            let rerun = from_earlier_run || tries > 0 || entry.attempts > 0;
            match result {
                Attempt::Committed(info) => {
                    self.journal.done(n, info.lsn.0, false)?;
                    let mut v = commit_json(&info);
                    v["rerun"] = rerun.into();
                    writeln!(self.out, "{v}")?;
                    self.out.flush()?;
                    self.failing_since = None;
                    return Ok(Sent::Done);
                }
                Attempt::Already(lsn) => {
                    self.journal.done(n, lsn, true)?;
                    let v = serde_json::json!({
                        "lsn": lsn, "id": entry.id, "rerun": rerun, "already_committed": true
                    });
                    writeln!(self.out, "{v}")?;
                    self.out.flush()?;
                    self.failing_since = None;
                    return Ok(Sent::Done);
                }
                Attempt::Refused(msg) => {
                    self.journal.failed(n, &msg)?;
                    let mut v = serde_json::json!({ "error": msg, "id": entry.id, "rerun": rerun });
                    if let Some(l) = line {
                        v["line"] = l.into();
                    }
                    writeln!(self.out, "{v}")?;
                    self.out.flush()?;
                    // A refused ET leaves a clean session; start afresh anyway.
                    self.client = None;
                    return Ok(Sent::Refused(msg));
                }
                Attempt::Transient(msg) => {
                    self.client = None;
                    self.journal.attempt_failed(n, &msg)?;
                    tries += 1;
                    let since = *self.failing_since.get_or_insert_with(Instant::now);
                    let left = self.opts.retry_for.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        eprintln!(
                            "etp: giving up after {:.1} s: transaction {} not acknowledged: {msg}",
                            since.elapsed().as_secs_f64(),
                            entry.id
                        );
                        return Ok(Sent::GaveUp);
                    }
                    if tries == 1 {
                        eprintln!(
                            "etp: note: transaction {} not acknowledged ({msg}); retrying for up to {:.1} s",
                            entry.id,
                            left.as_secs_f64()
                        );
                    }
                    std::thread::sleep(backoff.min(left));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// `etp exec --node ADDR --journal DIR`: reruns pending transactions, then
/// (unless `rerun_only`) journals and runs the input's.
pub fn exec(
    dir: &Path,
    opts: &ExecOptions,
    input: impl BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<ExecEnd> {
    let journal = Journal::open(dir)?;
    for w in &journal.warnings {
        eprintln!("etp: warning: {w}");
    }
    let earlier: Vec<u64> = journal.pending().map(|e| e.n).collect();
    let mut r = Runner {
        journal,
        opts,
        client: None,
        failing_since: None,
        out,
    };
    // Once the node is given up on, or has refused a transaction, later
    // transactions are journaled only (pending): they are neither lost nor
    // run out of order.
    let mut hold = false;
    // Every problem met, in order (a refusal does not stop the input).
    let mut errors: Vec<String> = Vec::new();
    let mut bad_input = false;
    for n in earlier {
        match r.send(n, true, None)? {
            Sent::Done => {}
            Sent::GaveUp => {
                hold = true;
                break;
            }
            Sent::Refused(m) => {
                errors.push(format!("journaled transaction {n} was refused by the node: {m}; it is marked failed (nothing of it was applied)"));
                hold = true;
                break;
            }
        }
    }
    let mut open: Vec<String> = Vec::new();
    let mut open_from = 0usize;
    if !opts.rerun_only {
        for (i, line) in input.split(b'\n').enumerate() {
            let ln = i + 1;
            let line = line.context("reading commands")?;
            let bad = |out: &mut dyn Write, msg: String| -> anyhow::Result<String> {
                writeln!(out, "{}", serde_json::json!({ "error": msg, "line": ln }))?;
                out.flush()?;
                Ok(format!(
                    "line {ln}: {msg} (the input after it was not read)"
                ))
            };
            if line.len() > MAX_LINE {
                let e = LineError::TooLong { len: line.len() };
                errors.push(bad(r.out, e.to_string())?);
                bad_input = true;
                break;
            }
            let Ok(text) = std::str::from_utf8(&line) else {
                errors.push(bad(r.out, LineError::NotUtf8.to_string())?);
                bad_input = true;
                break;
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match ExecCommand::parse(text) {
                Err(m) => {
                    errors.push(bad(r.out, m.to_string())?);
                    bad_input = true;
                    break;
                }
                Ok(ExecCmd::Bt) => open.clear(),
                Ok(ExecCmd::Et { id }) => {
                    if id
                        .as_ref()
                        .is_some_and(|id| id.is_empty() || id.len() > 128)
                    {
                        errors.push(bad(r.out, "transaction id must be 1 to 128 bytes".into())?);
                        bad_input = true;
                        break;
                    }
                    let id = id.unwrap_or_else(new_id);
                    let n = r.journal.add(id, std::mem::take(&mut open))?;
                    if hold {
                        continue;
                    }
                    match r.send(n, false, Some(ln))? {
                        Sent::Done => {}
                        Sent::GaveUp => hold = true,
                        Sent::Refused(m) => {
                            errors.push(format!("line {ln}: {m}"));
                            hold = true;
                        }
                    }
                }
                Ok(_) => {
                    if open.is_empty() {
                        open_from = ln;
                    }
                    open.push(text.to_string());
                }
            }
        }
    }
    if r.journal.resolved() > 0 {
        r.journal.compact()?;
    }
    let pending = r.journal.pending_count();
    let path = r.journal.path().to_path_buf();
    // Input that ended inside a transaction is said so, whatever came before.
    let open_at_end = !open.is_empty() && !bad_input;
    if open_at_end {
        let msg = format!(
            "input ended inside a transaction: its {} command(s) from line {open_from} on were backed out (not journaled)",
            open.len()
        );
        writeln!(
            r.out,
            "{}",
            serde_json::json!({ "error": msg, "line": open_from })
        )?;
        r.out.flush()?;
        if !errors.is_empty() {
            errors.push(msg);
        }
    }
    Ok(match errors.is_empty() {
        false => ExecEnd::Error {
            message: errors.join("; "),
            pending,
        },
        true if open_at_end => ExecEnd::OpenAtEnd {
            first_line: open_from,
            commands: open.len(),
            pending,
        },
        true if pending > 0 => {
            eprintln!(
                "etp: {pending} transaction(s) pending in journal {}; run `etp exec --node ADDR --journal {} --rerun` when the node is back",
                path.display(),
                dir.display()
            );
            ExecEnd::Pending(pending)
        }
        true => ExecEnd::Done,
    })
}

/// `etp exec --journal DIR --status`: lists pending transactions. Returns
/// whether the journal is clean (readable, nothing pending).
pub fn status(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let snap = match read(dir) {
        Ok(s) => s,
        Err(e @ JournalError::Damaged { .. }) => {
            if json {
                writeln!(out, "{}", serde_json::json!({ "damaged": e.to_string() }))?;
            }
            eprintln!("etp: {e}");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    for w in &snap.warnings {
        eprintln!(
            "etp: warning: {w} (it will be dropped when the journal is next opened for exec)"
        );
    }
    if json {
        let items: Vec<serde_json::Value> = snap
            .pending
            .iter()
            .map(|e| {
                serde_json::json!({
                    "n": e.n, "id": e.id, "first": e.summary(), "commands": e.cmds.len(),
                    "attempts": e.attempts, "last_error": e.last_error,
                    "last_attempt": e.last_at, "since": e.since,
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "journal": snap.file.display().to_string(), "pending": items })
        )?;
    } else if snap.pending.is_empty() {
        writeln!(out, "journal {}: nothing pending", snap.file.display())?;
    } else {
        writeln!(
            out,
            "journal {}: {} pending transaction(s), rerun in this order:",
            snap.file.display(),
            snap.pending.len()
        )?;
        for e in &snap.pending {
            writeln!(
                out,
                "  #{} id {}  {}  since {}  attempts {}{}",
                e.n,
                e.id,
                e.summary(),
                e.since,
                e.attempts,
                e.last_error
                    .as_ref()
                    .map(|m| format!(
                        "  last error ({}): {m}",
                        e.last_at.as_deref().unwrap_or("?")
                    ))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(snap.pending.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(i: u64) -> String {
        format!(r#"{{"op":"store","file":10,"isn":{i},"fields":{{"a":{i}}}}}"#)
    }

    #[test]
    fn append_mark_done_and_reopen() -> anyhow::Result<()> {
        let d = tempfile::tempdir()?;
        let dir = d.path().join("j");
        {
            let mut j = Journal::open(&dir)?;
            let a = j.add("a".into(), vec![store(1)])?;
            let b = j.add("b".into(), vec![store(2), store(3)])?;
            j.attempt_failed(a, "down")?;
            j.done(a, 7, false)?;
            j.attempt_failed(b, "still down")?;
            assert_eq!(j.pending_count(), 1);
        }
        let j = Journal::open(&dir)?;
        let p: Vec<&Entry> = j.pending().collect();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, "b");
        assert_eq!(p[0].attempts, 1);
        assert_eq!(p[0].last_error.as_deref(), Some("still down"));
        assert_eq!(p[0].summary(), "store file 10 isn 2 (+1 more)");
        assert_eq!(read(&dir)?.pending, vec![p[0].clone()]);
        Ok(())
    }

    #[test]
    fn second_open_is_refused_while_held() -> anyhow::Result<()> {
        let d = tempfile::tempdir()?;
        let _j = Journal::open(d.path())?;
        assert!(matches!(
            Journal::open(d.path()),
            Err(JournalError::InUse(_))
        ));
        Ok(())
    }

    #[test]
    fn compaction_keeps_pending_and_numbers() -> anyhow::Result<()> {
        let d = tempfile::tempdir()?;
        let path = d.path().join(FILE_NAME);
        let mut j = Journal::open(d.path())?;
        for i in 0..300 {
            let n = j.add(format!("id{i}"), vec![store(i)])?;
            if i != 5 {
                j.done(n, i, false)?;
            }
        }
        // Compacted automatically on the way (COMPACT_AFTER), and again here.
        j.attempt_failed(6, "x")?;
        j.compact()?;
        let len = std::fs::metadata(&path)?.len();
        assert!(len < 1000, "compacted journal is {len} bytes");
        let n = j.add("next".into(), vec![])?;
        assert_eq!(n, 301);
        drop(j);
        let j = Journal::open(d.path())?;
        let ids: Vec<(u64, &str, u32)> = j
            .pending()
            .map(|e| (e.n, e.id.as_str(), e.attempts))
            .collect();
        assert_eq!(ids, vec![(6, "id5", 1), (301, "next", 0)]);
        assert!(!d.path().join(format!(".{FILE_NAME}.tmp")).exists());
        Ok(())
    }

    #[test]
    fn torn_tail_is_dropped_with_a_warning() -> anyhow::Result<()> {
        let d = tempfile::tempdir()?;
        let path = d.path().join(FILE_NAME);
        {
            let mut j = Journal::open(d.path())?;
            j.add("a".into(), vec![store(1)])?;
        }
        let whole = std::fs::read(&path)?;
        let frame = encode_frame(&Frame::Txn {
            n: 2,
            id: "b".into(),
            at: now_text(),
            cmds: vec![store(2)],
            attempts: 0,
            last_error: None,
            last_at: None,
        });
        for cut in [3, framed::FRAME_HEADER, frame.len() - 1] {
            let mut b = whole.clone();
            b.extend_from_slice(&frame[..cut]);
            std::fs::write(&path, &b)?;
            let j = Journal::open(d.path())?;
            assert_eq!(j.warnings.len(), 1, "cut {cut}");
            assert!(j.warnings[0].contains(&format!("offset {}", whole.len())));
            assert!(j.warnings[0].contains(FILE_NAME));
            assert_eq!(
                j.pending().map(|e| e.id.as_str()).collect::<Vec<_>>(),
                ["a"]
            );
            drop(j);
            assert_eq!(std::fs::read(&path)?, whole, "torn tail truncated");
        }
        // A zero-filled tail (size extended, data never written) is torn too.
        let mut b = whole.clone();
        b.extend_from_slice(&[0u8; 40]);
        std::fs::write(&path, &b)?;
        assert_eq!(Journal::open(d.path())?.warnings.len(), 1);
        Ok(())
    }

    #[test]
    fn damage_names_file_and_offset() -> anyhow::Result<()> {
        let d = tempfile::tempdir()?;
        let path = d.path().join(FILE_NAME);
        {
            let mut j = Journal::open(d.path())?;
            j.add("a".into(), vec![store(1)])?;
            j.add("b".into(), vec![store(2)])?;
        }
        let good = std::fs::read(&path)?;
        // A flipped payload byte in the first entry: checksum.
        let mut b = good.clone();
        b[MAGIC.len() + framed::FRAME_HEADER + 5] ^= 0x20;
        std::fs::write(&path, &b)?;
        let e = Journal::open(d.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("offset 8") && e.contains("checksum"), "{e}");
        // A damaged length in the first entry is not mistaken for a torn tail.
        let mut b = good.clone();
        b[MAGIC.len() + 1] ^= 0x01;
        std::fs::write(&path, &b)?;
        let e = read(d.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("offset 8") && e.contains("length"), "{e}");
        // The last entry damaged (complete, bad checksum): damage, not torn.
        let mut b = good.clone();
        let last = b.len() - 3;
        b[last] ^= 0x01;
        std::fs::write(&path, &b)?;
        assert!(matches!(read(d.path()), Err(JournalError::Damaged { .. })));
        // Not a journal at all.
        std::fs::write(&path, b"hello, world")?;
        let e = read(d.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("bad magic"), "{e}");
        Ok(())
    }

    #[test]
    fn attempts_are_classified_by_the_error_code_not_its_text() {
        let remote = |code, message: &str| ClientError::Remote {
            addr: "127.0.0.1:1".into(),
            code,
            message: message.into(),
        };
        let lsn = propagator::Lsn(42);
        assert!(matches!(
            classify(remote(ErrorCode::AlreadyCommitted { lsn }, "anything")),
            Attempt::Already(42)
        ));
        // The words do not matter: a refusal that mentions "already
        // committed" or "closed" is still a refusal.
        assert!(matches!(
            classify(remote(
                ErrorCode::BadRequest,
                "was already committed at LSN 7; the database is closed"
            )),
            Attempt::Refused(_)
        ));
        assert!(matches!(
            classify(remote(ErrorCode::Unavailable, "x")),
            Attempt::Transient(_)
        ));
        assert!(matches!(
            classify(remote(ErrorCode::OutcomeUnknown, "x")),
            Attempt::Transient(_)
        ));
        assert_ne!(new_id(), new_id());
    }
}
