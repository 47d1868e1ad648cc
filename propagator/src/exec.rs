//! The scriptable command interface: one JSON command per line.
//!
//! ```text
//! {"op":"store","file":10,"isn":7,"fields":{"name":"a","qty":3}}   isn optional
//! {"op":"update","file":10,"isn":7,"fields":{"qty":4}}            null removes a field
//! {"op":"delete","file":10,"isn":7}
//! {"op":"read","file":10,"isn":7}
//! {"op":"et","id":"optional-client-id"}
//! {"op":"bt"}
//! ```
//! Commands before an ET form one transaction. Each ET prints one JSON line
//! (`lsn`, `seq` per master touched, `time`, `id`); a read prints the record.
//! The first bad line prints a JSON error naming the line and stops; the
//! open transaction is backed out, so nothing of it remains.
//!
//! [`run_exec`] drives any [`ExecTarget`], so the same runner serves a local
//! database and a node connection.

use crate::database::CommitInfo;
use crate::error::DbError;
use crate::ids::{Fnr, Isn};
use crate::record::{record_from_json, record_to_json, Record};
use crate::session::Session;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// The longest input line accepted.
pub const MAX_LINE: usize = 4 << 20;

/// One command of a transaction. `R` is how a record travels: a [`Record`]
/// when parsed from a JSON line ([`ExecCommand`]), its canonical encoded
/// bytes on the wire ([`crate::wire::Command`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command<R> {
    Store {
        file: Fnr,
        isn: Option<Isn>,
        fields: R,
    },
    Update {
        file: Fnr,
        isn: Isn,
        fields: R,
    },
    Delete {
        file: Fnr,
        isn: Isn,
    },
    Read {
        file: Fnr,
        isn: Isn,
        /// Read a replicate even if it serves no current reads (held; see
        /// [`crate::wire::ErrorCode::Held`]).
        #[serde(default)]
        stale: bool,
    },
    Et {
        id: Option<String>,
    },
    Bt,
}

/// A command parsed from a JSON line.
pub type ExecCommand = Command<Record>;

/// What is wrong with an input line.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON. The column is the line's own (the runner names the line).
    #[error("not valid JSON at column {column}: {reason}")]
    Json { column: usize, reason: String },
    #[error("line is {len} bytes; the limit is {MAX_LINE}")]
    TooLong { len: usize },
    #[error("line is not valid UTF-8")]
    NotUtf8,
    /// A record that does not convert (a field's value).
    #[error(transparent)]
    Record(crate::record::RecordError),
    /// A command that is not well-formed; the message names the key.
    #[error("{0}")]
    Invalid(String),
}

impl LineError {
    fn json(e: serde_json::Error) -> LineError {
        // serde_json appends " at line L column C"; the line is always 1
        // here (one command per line), and the runner names the input line.
        let full = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let reason = full.strip_suffix(&position).unwrap_or(&full).to_string();
        LineError::Json {
            column: e.column(),
            reason,
        }
    }
}

fn field_u64(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<u64>, LineError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().filter(|n| *n > 0).map(Some).ok_or_else(|| {
            LineError::Invalid(format!("\"{key}\" must be a positive integer, got {v}"))
        }),
    }
}

fn required_u64(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    op: &str,
) -> Result<u64, LineError> {
    field_u64(obj, key)?.ok_or_else(|| LineError::Invalid(format!("op \"{op}\" needs \"{key}\"")))
}

fn file_of(obj: &serde_json::Map<String, serde_json::Value>, op: &str) -> Result<Fnr, LineError> {
    let n = required_u64(obj, "file", op)?;
    u32::try_from(n).map(Fnr).map_err(|_| {
        LineError::Invalid(format!(
            "\"file\" {n} is larger than the largest file number"
        ))
    })
}

impl ExecCommand {
    /// The command as it goes on the wire: its record in canonical bytes.
    pub fn to_wire(&self) -> Result<crate::wire::Command, crate::record::RecordError> {
        let enc = |r: &Record| crate::record::encode_record(r).map(serde_bytes::ByteBuf::from);
        Ok(match self {
            Command::Store { file, isn, fields } => Command::Store {
                file: *file,
                isn: *isn,
                fields: enc(fields)?,
            },
            Command::Update { file, isn, fields } => Command::Update {
                file: *file,
                isn: *isn,
                fields: enc(fields)?,
            },
            Command::Delete { file, isn } => Command::Delete {
                file: *file,
                isn: *isn,
            },
            Command::Read { file, isn, stale } => Command::Read {
                file: *file,
                isn: *isn,
                stale: *stale,
            },
            Command::Et { id } => Command::Et { id: id.clone() },
            Command::Bt => Command::Bt,
        })
    }

    /// Parses one line, saying exactly what is wrong with a bad one.
    pub fn parse(line: &str) -> Result<ExecCommand, LineError> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(LineError::json)?;
        let bad = |m: &str| LineError::Invalid(m.to_string());
        let obj = v
            .as_object()
            .ok_or_else(|| bad("a command must be a JSON object"))?;
        let op = obj
            .get("op")
            .ok_or_else(|| bad("missing \"op\""))?
            .as_str()
            .ok_or_else(|| bad("\"op\" must be a string"))?;
        let allowed: &[&str] = match op {
            "store" => &["op", "file", "isn", "fields"],
            "update" => &["op", "file", "isn", "fields"],
            "delete" => &["op", "file", "isn"],
            "read" => &["op", "file", "isn", "stale"],
            "et" => &["op", "id"],
            "bt" => &["op"],
            other => {
                return Err(LineError::Invalid(format!(
                    "unknown op \"{other}\" (expected store, update, delete, read, et or bt)"
                )))
            }
        };
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(LineError::Invalid(format!(
                "unknown key \"{k}\" for op \"{op}\""
            )));
        }
        let fields = |obj: &serde_json::Map<String, serde_json::Value>| {
            let f = obj
                .get("fields")
                .ok_or_else(|| LineError::Invalid(format!("op \"{op}\" needs \"fields\"")))?;
            record_from_json(f).map_err(LineError::Record)
        };
        Ok(match op {
            "store" => ExecCommand::Store {
                file: file_of(obj, op)?,
                isn: field_u64(obj, "isn")?.map(Isn),
                fields: fields(obj)?,
            },
            "update" => ExecCommand::Update {
                file: file_of(obj, op)?,
                isn: Isn(required_u64(obj, "isn", op)?),
                fields: fields(obj)?,
            },
            "delete" => ExecCommand::Delete {
                file: file_of(obj, op)?,
                isn: Isn(required_u64(obj, "isn", op)?),
            },
            "read" => ExecCommand::Read {
                file: file_of(obj, op)?,
                isn: Isn(required_u64(obj, "isn", op)?),
                stale: match obj.get("stale") {
                    None | Some(serde_json::Value::Null) => false,
                    Some(serde_json::Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(LineError::Invalid(format!(
                            "\"stale\" must be true or false, got {other}"
                        )))
                    }
                },
            },
            "et" => ExecCommand::Et {
                id: match obj.get("id") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(LineError::Invalid(format!(
                            "\"id\" must be a string, got {other}"
                        )))
                    }
                },
            },
            _ => ExecCommand::Bt,
        })
    }
}

/// Something that runs transactions: a local session or a node connection.
pub trait ExecTarget {
    type Error: std::fmt::Display;
    fn store(&mut self, file: Fnr, isn: Option<Isn>, fields: Record) -> Result<Isn, Self::Error>;
    fn update(&mut self, file: Fnr, isn: Isn, fields: Record) -> Result<(), Self::Error>;
    fn delete(&mut self, file: Fnr, isn: Isn) -> Result<(), Self::Error>;
    fn read(&mut self, file: Fnr, isn: Isn, stale: bool) -> Result<Option<Record>, Self::Error>;
    fn et(&mut self, id: Option<String>) -> Result<CommitInfo, Self::Error>;
    fn bt(&mut self) -> Result<(), Self::Error>;
    fn in_transaction(&self) -> bool;

    /// Sends a whole transaction (writes, then ET) without waiting for its
    /// answer, if this target pipelines; `Ok(false)`: it does not, and the
    /// runner runs the commands one by one. Answers come back in order
    /// through [`ExecTarget::recv_txn`].
    fn send_txn(&mut self, _txn: &[&ExecCommand]) -> Result<bool, Self::Error> {
        Ok(false)
    }

    /// The answer to the oldest transaction sent: its commit, or the index
    /// of the command that failed and why. `None` if nothing was sent.
    #[allow(clippy::type_complexity)]
    fn recv_txn(
        &mut self,
    ) -> Option<Result<Result<CommitInfo, (usize, Self::Error)>, Self::Error>> {
        None
    }
}

impl ExecTarget for Session {
    type Error = DbError;
    fn store(&mut self, file: Fnr, isn: Option<Isn>, fields: Record) -> Result<Isn, DbError> {
        Session::store(self, file, isn, fields)
    }
    fn update(&mut self, file: Fnr, isn: Isn, fields: Record) -> Result<(), DbError> {
        Session::update(self, file, isn, fields)
    }
    fn delete(&mut self, file: Fnr, isn: Isn) -> Result<(), DbError> {
        Session::delete(self, file, isn)
    }
    /// A local session reads the database directory itself: `stale` is
    /// for a node, which refuses current reads of a held replicate.
    fn read(&mut self, file: Fnr, isn: Isn, _stale: bool) -> Result<Option<Record>, DbError> {
        Session::read(self, file, isn)
    }
    fn et(&mut self, id: Option<String>) -> Result<CommitInfo, DbError> {
        Session::et(self, id)
    }
    fn bt(&mut self) -> Result<(), DbError> {
        Session::bt(self);
        Ok(())
    }
    fn in_transaction(&self) -> bool {
        Session::in_transaction(self)
    }
}

/// The JSON line printed for an ET.
pub fn commit_json(info: &CommitInfo) -> serde_json::Value {
    let seq: serde_json::Map<String, serde_json::Value> = info
        .seqs
        .iter()
        .map(|(m, (_, last))| (m.0.to_string(), serde_json::Value::from(last.0)))
        .collect();
    let time = DateTime::<Utc>::from_timestamp_micros(info.time_us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    serde_json::json!({ "lsn": info.lsn.0, "seq": seq, "time": time, "id": info.client_id })
}

/// How a run of `exec` ended.
#[derive(Debug, Default)]
pub struct ExecOutcome {
    pub committed: u64,
    /// The failing line (1-based) and why.
    pub error: Option<(usize, String)>,
    /// The input ended inside a transaction, which was backed out.
    pub backed_out_at_end: Option<OpenAtEnd>,
}

/// The transaction input left open, backed out at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAtEnd {
    /// Its first command's line (1-based).
    pub first_line: usize,
    pub commands: usize,
}

/// Runs every command of `input` against `target`, printing results to `out`.
pub fn run_exec<T: ExecTarget>(
    target: &mut T,
    input: impl BufRead,
    out: &mut dyn Write,
) -> std::io::Result<ExecOutcome> {
    run_exec_pipelined(target, input, out, 1)
}

/// Transactions sent and not yet answered, each with the input lines of
/// its commands (the ET's last).
type InFlight = std::collections::VecDeque<Vec<usize>>;

/// Reports every transaction in flight, in order; `Ok(false)` if one
/// failed (see [`answer_one`]).
fn answer_all<T: ExecTarget>(
    target: &mut T,
    inflight: &mut InFlight,
    out: &mut dyn Write,
    outcome: &mut ExecOutcome,
) -> std::io::Result<bool> {
    while !inflight.is_empty() {
        if !answer_one(target, inflight, out, outcome)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reports the oldest transaction in flight. `Ok(false)`: it failed (the
/// error is reported, the rest in flight read and dropped: the node ran
/// none of them), and the run stops.
fn answer_one<T: ExecTarget>(
    target: &mut T,
    inflight: &mut InFlight,
    out: &mut dyn Write,
    outcome: &mut ExecOutcome,
) -> std::io::Result<bool> {
    let Some(lines) = inflight.pop_front() else {
        return Ok(true);
    };
    let last = lines.last().copied().unwrap_or(0);
    let failed = match target.recv_txn() {
        None => return Ok(true),
        Some(Ok(Ok(info))) => {
            outcome.committed += 1;
            writeln!(out, "{}", commit_json(&info))?;
            out.flush()?;
            return Ok(true);
        }
        Some(Ok(Err((i, e)))) => (lines.get(i).copied().unwrap_or(last), e.to_string()),
        Some(Err(e)) => (last, e.to_string()),
    };
    // Those sent after it were refused (or cannot be told): read them so
    // the connection is in step before the back-out below.
    while inflight.pop_front().is_some() {
        if let Some(Err(_)) = target.recv_txn() {
            break;
        }
    }
    let (n, msg) = failed;
    stop_at(target, out, outcome, n, msg)?;
    Ok(false)
}

/// The run stops at line `n`: the open transaction is backed out and the
/// error printed and kept in the outcome.
fn stop_at<T: ExecTarget>(
    target: &mut T,
    out: &mut dyn Write,
    outcome: &mut ExecOutcome,
    n: usize,
    msg: String,
) -> std::io::Result<()> {
    let _ = target.bt();
    let written = writeln!(out, "{}", serde_json::json!({ "error": msg, "line": n }))
        .and_then(|_| out.flush());
    outcome.error = Some((n, msg));
    written
}

/// [`run_exec`] with up to `depth` transactions in flight when the target
/// pipelines: a transaction of writes ending in ET is sent whole, without
/// waiting for the ones before it. Results print in input order, and the
/// run stops at the first failure as [`run_exec`] does, with nothing after
/// it committed (the node refuses the transactions chained after a failed
/// one). A transaction that reads, or backs out, runs command by command
/// once every earlier one is answered.
pub fn run_exec_pipelined<T: ExecTarget>(
    target: &mut T,
    input: impl BufRead,
    out: &mut dyn Write,
    depth: usize,
) -> std::io::Result<ExecOutcome> {
    let mut outcome = ExecOutcome::default();
    let mut open: Option<OpenAtEnd> = None;
    let mut inflight = InFlight::new();
    // The open transaction's writes, held to be sent whole at its ET.
    let mut held: Vec<(usize, ExecCommand)> = Vec::new();
    // The open transaction runs command by command (it read, or the
    // target does not pipeline).
    let mut serial = depth <= 1;
    let mut pipelines = depth > 1;
    for (i, line) in input.split(b'\n').enumerate() {
        let n = i + 1;
        let line = line?;
        let fail = |target: &mut T, out: &mut dyn Write, outcome: &mut ExecOutcome, msg: String| {
            // Reported even if the output fails: the outcome says it.
            let _ = stop_at(target, out, outcome, n, msg);
        };
        // Whatever stops the run reports the transactions before it first.
        if (line.len() > MAX_LINE || std::str::from_utf8(&line).is_err())
            && !answer_all(target, &mut inflight, out, &mut outcome)?
        {
            return Ok(outcome);
        }
        if line.len() > MAX_LINE {
            let e = LineError::TooLong { len: line.len() };
            fail(target, out, &mut outcome, e.to_string());
            return Ok(outcome);
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            fail(target, out, &mut outcome, LineError::NotUtf8.to_string());
            return Ok(outcome);
        };
        if text.trim().is_empty() {
            continue;
        }
        let cmd = match ExecCommand::parse(text) {
            Ok(c) => c,
            Err(e) => {
                if !answer_all(target, &mut inflight, out, &mut outcome)? {
                    return Ok(outcome);
                }
                fail(target, out, &mut outcome, e.to_string());
                return Ok(outcome);
            }
        };
        match cmd {
            ExecCommand::Et { .. } | ExecCommand::Bt => open = None,
            _ => {
                let o = open.get_or_insert(OpenAtEnd {
                    first_line: n,
                    commands: 0,
                });
                o.commands += 1;
            }
        }
        if !serial {
            match cmd {
                ExecCommand::Store { .. }
                | ExecCommand::Update { .. }
                | ExecCommand::Delete { .. } => {
                    held.push((n, cmd));
                    continue;
                }
                ExecCommand::Et { .. } if !held.is_empty() => {
                    held.push((n, cmd));
                    let txn: Vec<&ExecCommand> = held.iter().map(|(_, c)| c).collect();
                    match target.send_txn(&txn) {
                        Ok(true) => {
                            inflight.push_back(held.drain(..).map(|(l, _)| l).collect());
                            if inflight.len() >= depth
                                && !answer_one(target, &mut inflight, out, &mut outcome)?
                            {
                                return Ok(outcome);
                            }
                            continue;
                        }
                        // The target does not pipeline: this transaction
                        // and every later one run as they came.
                        Ok(false) => {
                            serial = true;
                            pipelines = false;
                        }
                        // It could not be sent (a record too large to
                        // encode, a lost connection): once the earlier ones
                        // are answered it runs command by command, so its
                        // error names the command's own line.
                        Err(_) => {
                            if !answer_all(target, &mut inflight, out, &mut outcome)? {
                                return Ok(outcome);
                            }
                        }
                    }
                    let last = held.pop();
                    let earlier = std::mem::take(&mut held);
                    if let Some(stop) = run_held(target, earlier, out, &mut outcome)? {
                        return Ok(stop);
                    }
                    let Some((_, cmd)) = last else { continue };
                    let r = run_one(target, cmd, out, &mut outcome)?;
                    if let Err(e) = r {
                        fail(target, out, &mut outcome, e.to_string());
                        return Ok(outcome);
                    }
                    continue;
                }
                _ => {
                    // A read or a back-out: every earlier transaction is
                    // answered first, then this one runs as it came.
                    if !answer_all(target, &mut inflight, out, &mut outcome)? {
                        return Ok(outcome);
                    }
                    if let Some(stop) =
                        run_held(target, std::mem::take(&mut held), out, &mut outcome)?
                    {
                        return Ok(stop);
                    }
                    if !matches!(cmd, ExecCommand::Et { .. } | ExecCommand::Bt) {
                        serial = true;
                    }
                }
            }
        } else if pipelines && matches!(cmd, ExecCommand::Et { .. } | ExecCommand::Bt) {
            // The transaction run command by command ends here; the next
            // may pipeline again.
            serial = false;
        }
        let result = run_one(target, cmd, out, &mut outcome)?;
        if let Err(e) = result {
            fail(target, out, &mut outcome, e.to_string());
            return Ok(outcome);
        }
    }
    if !answer_all(target, &mut inflight, out, &mut outcome)? {
        return Ok(outcome);
    }
    // The input ended inside a transaction whose writes were held: run them
    // as they came (they may fail on their own), then back them out below.
    if let Some(stop) = run_held(target, std::mem::take(&mut held), out, &mut outcome)? {
        return Ok(stop);
    }
    end_of_input(target, open, out, outcome)
}

/// Runs held writes one by one; the outcome to return if one failed.
fn run_held<T: ExecTarget>(
    target: &mut T,
    held: Vec<(usize, ExecCommand)>,
    out: &mut dyn Write,
    outcome: &mut ExecOutcome,
) -> std::io::Result<Option<ExecOutcome>> {
    for (n, cmd) in held {
        if let Err(e) = run_one(target, cmd, out, outcome)? {
            stop_at(target, out, outcome, n, e.to_string())?;
            return Ok(Some(std::mem::take(outcome)));
        }
    }
    Ok(None)
}

/// Runs one command; the target's error, if it failed.
fn run_one<T: ExecTarget>(
    target: &mut T,
    cmd: ExecCommand,
    out: &mut dyn Write,
    outcome: &mut ExecOutcome,
) -> std::io::Result<Result<(), T::Error>> {
    Ok(match cmd {
        ExecCommand::Store { file, isn, fields } => target.store(file, isn, fields).map(|_| ()),
        ExecCommand::Update { file, isn, fields } => target.update(file, isn, fields),
        ExecCommand::Delete { file, isn } => target.delete(file, isn),
        ExecCommand::Read { file, isn, stale } => match target.read(file, isn, stale) {
            Ok(r) => {
                let fields = r
                    .as_ref()
                    .map(record_to_json)
                    .unwrap_or(serde_json::Value::Null);
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "file": file.0, "isn": isn.0, "fields": fields })
                )?;
                Ok(())
            }
            Err(e) => Err(e),
        },
        ExecCommand::Et { id } => match target.et(id) {
            Ok(info) => {
                outcome.committed += 1;
                writeln!(out, "{}", commit_json(&info))?;
                out.flush()?;
                Ok(())
            }
            Err(e) => Err(e),
        },
        ExecCommand::Bt => target.bt(),
    })
}

/// The end of the input: a transaction left open is backed out and said so.
fn end_of_input<T: ExecTarget>(
    target: &mut T,
    open: Option<OpenAtEnd>,
    out: &mut dyn Write,
    mut outcome: ExecOutcome,
) -> std::io::Result<ExecOutcome> {
    if target.in_transaction() {
        let _ = target.bt();
        let o = open.unwrap_or(OpenAtEnd {
            first_line: 1,
            commands: 0,
        });
        let msg = format!(
            "input ended inside a transaction: its {} command(s) from line {} on were backed out",
            o.commands, o.first_line
        );
        writeln!(
            out,
            "{}",
            serde_json::json!({ "error": msg, "line": o.first_line })
        )?;
        outcome.backed_out_at_end = Some(o);
    }
    out.flush()?;
    Ok(outcome)
}
