//! Client sessions and their transactions.
//!
//! A session buffers the commands of its open transaction; nothing reaches
//! the protection log or the page store before ET, so backing out (BT, a
//! dropped session, a dead connection, a crash) leaves no trace. Commands are
//! checked when given, against the latest state and the session's own
//! writes (or, for a batch's updates and deletes read ahead, the state at
//! the batch's start: [`Session::read_ahead`]), and checked again at ET;
//! any error aborts the whole transaction.

use crate::database::{
    CommitInfo, Database, Op, PendingCommit, Seen, MAX_TXN_BYTES, MAX_TXN_COMMANDS,
};
use crate::error::DbError;
use crate::ids::{Fnr, Isn};
use crate::record::{apply_patch, check_field_name, decode_record, encode_record, Record, Value};
use std::collections::HashMap;

/// A record as this transaction left it.
enum Local {
    Record(Record),
    /// Stored or updated by the op at this index, whose bytes hold the
    /// record: decoded only if the transaction reads or updates it again.
    Op(usize),
}

pub struct Session {
    db: Database,
    ops: Vec<Op>,
    /// The session's own view of records it has written: `None` = deleted.
    local: HashMap<(Fnr, Isn), Option<Local>>,
    aborted: Option<String>,
    /// Record bytes the open transaction writes (stores, updated images).
    bytes: usize,
    /// Committed records read ahead for the commands about to run (see
    /// [`Session::read_ahead`]); dropped when the transaction ends.
    ahead: Option<Ahead>,
}

/// The committed records of `fnr` in `[lo, hi]`, read by one scan.
struct Ahead {
    fnr: Fnr,
    lo: Isn,
    hi: Isn,
    found: HashMap<Isn, Seen>,
}

/// The fewest updates and deletes of one file worth one read ahead.
const READ_AHEAD_MIN: usize = 32;
/// The widest isn range read ahead (a scan reads every record in it,
/// under the state lock: about 0.3 ms with fjall at this width).
const READ_AHEAD_SPAN: u64 = 1024;
/// The most isns of the range per record the commands read: a scan's
/// record costs about half a lookup (measured: 100 dense records, 32 µs
/// by one scan against 56 µs by lookups, fjall).
const READ_AHEAD_DENSITY: u64 = 2;

impl Session {
    pub(crate) fn new(db: Database) -> Session {
        Session {
            db,
            ops: Vec::new(),
            local: HashMap::new(),
            aborted: None,
            bytes: 0,
            ahead: None,
        }
    }

    /// Reads ahead, by one scan, the committed records that the updates and
    /// deletes at `isns` (of file `fnr`, about to be given in this
    /// transaction) will read, when they are many and dense; each then
    /// reads its record from there instead of by a lookup of its own. A
    /// record is read as of the moment of the scan rather than of its
    /// command; the commit checks a record found as it checks any record
    /// read (no commit wrote it since), and a record not found is refused
    /// as missing, as a lookup at the scan would have. Whatever was read
    /// ahead before is dropped first; nothing is read ahead when the isns
    /// are few or sparse, nor when the scan fails (each command then
    /// reads, and reports, on its own).
    pub fn read_ahead(&mut self, fnr: Fnr, mut isns: Vec<Isn>) {
        self.ahead = None;
        if isns.len() < READ_AHEAD_MIN || self.aborted.is_some() {
            return;
        }
        isns.sort_unstable();
        isns.dedup();
        let (Some(&lo), Some(&hi)) = (isns.first(), isns.last()) else {
            return;
        };
        // The scan holds the state lock throughout and reads every record
        // of the span: only where it costs no more than the lookups would.
        let span = hi.0 - lo.0 + 1;
        if isns.len() < READ_AHEAD_MIN
            || span > READ_AHEAD_SPAN
            || span > READ_AHEAD_DENSITY * isns.len() as u64
        {
            return;
        }
        if let Ok(found) = self.db.writable_get_range(fnr, lo, hi) {
            self.ahead = Some(Ahead { fnr, lo, hi, found });
        }
    }

    /// Drops what was read ahead: the commands that follow look their
    /// records up.
    pub fn end_read_ahead(&mut self) {
        self.ahead = None;
    }

    /// The committed record `isn` of `fnr`, for a command that writes it:
    /// from what was read ahead when it covers the isn, else looked up.
    fn committed(&mut self, fnr: Fnr, isn: Isn) -> Result<Option<Seen>, DbError> {
        if let Some(a) = &mut self.ahead {
            if a.fnr == fnr && a.lo <= isn && isn <= a.hi {
                // Taken: a later command of the transaction on this isn
                // finds the transaction's own write first.
                return Ok(a.found.remove(&isn));
            }
        }
        self.db.writable_get(fnr, isn)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Whether a transaction is open (has commands).
    pub fn in_transaction(&self) -> bool {
        !self.ops.is_empty() || self.aborted.is_some()
    }

    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, DbError>) -> Result<T, DbError> {
        if let Some(reason) = &self.aborted {
            return Err(DbError::Aborted(reason.clone()));
        }
        if self.ops.len() >= MAX_TXN_COMMANDS {
            let e = DbError::TooLarge(format!("more than {MAX_TXN_COMMANDS} commands"));
            self.abort(&e);
            return Err(e);
        }
        let r = f(self);
        if let Err(e) = &r {
            self.abort(e);
        }
        r
    }

    /// Counts `n` more record bytes written by this transaction, refusing
    /// to hold more than [`MAX_TXN_BYTES`].
    fn hold(&mut self, n: usize) -> Result<(), DbError> {
        self.bytes += n;
        if self.bytes > MAX_TXN_BYTES {
            return Err(DbError::TooLarge(format!(
                "more than {MAX_TXN_BYTES} bytes of records"
            )));
        }
        Ok(())
    }

    fn abort(&mut self, e: &DbError) {
        self.ahead = None;
        self.bytes = 0;
        self.ops.clear();
        self.local.clear();
        self.aborted = Some(e.to_string());
    }

    /// A record this transaction wrote (`Some(None)`: deleted), decoded.
    fn mine(&self, fnr: Fnr, isn: Isn) -> Result<Option<Option<Record>>, DbError> {
        match self.local.get(&(fnr, isn)) {
            None => Ok(None),
            Some(None) => Ok(Some(None)),
            Some(Some(Local::Record(r))) => Ok(Some(Some(r.clone()))),
            Some(Some(Local::Op(i))) => match self.ops.get(*i) {
                Some(Op::Store { bytes, .. })
                | Some(Op::Update {
                    seen: Some((_, bytes)),
                    ..
                }) => decode_record(bytes)
                    .map(|r| Some(Some(r)))
                    .map_err(|source| DbError::BadRecord { fnr, source }),
                _ => Err(DbError::Aborted(format!(
                    "record {isn} of file {fnr} lost its write in this transaction"
                ))),
            },
        }
    }

    /// Checks a record (field names, size) and returns its canonical
    /// encoding.
    fn check_record(fnr: Fnr, rec: &Record) -> Result<Vec<u8>, DbError> {
        for k in rec.keys() {
            check_field_name(k).map_err(|source| DbError::BadRecord { fnr, source })?;
        }
        encode_record(rec).map_err(|source| DbError::BadRecord { fnr, source })
    }

    /// Stores a new record; `isn` None lets the engine assign the next one.
    pub fn store(&mut self, fnr: Fnr, isn: Option<Isn>, record: Record) -> Result<Isn, DbError> {
        self.guard(|s| {
            let bytes = Self::check_record(fnr, &record)?;
            s.db.check_schema(fnr, record.keys().map(String::as_str))?;
            s.store_checked(fnr, isn, bytes, Some(record))
        })
    }

    /// Stores a new record given as MessagePack bytes (as a client sends
    /// it), if they are already in the canonical encoding: kept as they
    /// came, checked without being decoded. Other bytes are handed back
    /// (`Err`) for the caller to decode and [`Session::store`].
    pub fn store_canonical(
        &mut self,
        fnr: Fnr,
        isn: Option<Isn>,
        bytes: Vec<u8>,
    ) -> Result<Result<Isn, DbError>, Vec<u8>> {
        let checked = match crate::record::canonical_fields(&bytes) {
            None => None,
            Some(names) => Some(self.db.check_schema(fnr, names.into_iter())),
        };
        match checked {
            None => Err(bytes),
            Some(schema) => Ok(self.guard(|s| {
                schema?;
                s.store_checked(fnr, isn, bytes, None)
            })),
        }
    }

    /// Stores checked canonical bytes (`record`: their decoded form, if at
    /// hand).
    fn store_checked(
        &mut self,
        fnr: Fnr,
        isn: Option<Isn>,
        bytes: Vec<u8>,
        record: Option<Record>,
    ) -> Result<Isn, DbError> {
        {
            let s = self;
            if isn == Some(Isn(0)) {
                return Err(DbError::ZeroIsn(fnr));
            }
            s.hold(bytes.len())?;
            // Checks the file (exists, writable, undamaged) before taking an isn.
            let (isn, stored) = s.db.prepare_store(fnr, isn)?;
            let exists = match s.local.get(&(fnr, isn)) {
                Some(mine) => mine.is_some(),
                None => stored,
            };
            if exists {
                return Err(DbError::RecordExists { fnr, isn });
            }
            let mine = match record {
                Some(r) => Local::Record(r),
                None => Local::Op(s.ops.len()),
            };
            s.local.insert((fnr, isn), Some(mine));
            s.ops.push(Op::Store { fnr, isn, bytes });
            Ok(isn)
        }
    }

    /// Replaces the named fields; a `Null` value removes the field.
    pub fn update(&mut self, fnr: Fnr, isn: Isn, patch: Record) -> Result<(), DbError> {
        self.guard(|s| {
            let missing = DbError::RecordMissing { fnr, isn };
            // The record as this transaction sees it, and, when that is the
            // committed one, its bytes (the commit reuses the result if
            // they are still what it finds).
            let (mut rec, committed) = match s.mine(fnr, isn)? {
                Some(mine) => (mine.ok_or(missing)?, None),
                None => {
                    let b = s.committed(fnr, isn)?.ok_or(missing)?;
                    let r = decode_record(&b.bytes)
                        .map_err(|source| DbError::BadRecord { fnr, source })?;
                    (r, Some(b))
                }
            };
            // A null removes a field, declared or not.
            let written = patch.iter().filter(|(_, v)| **v != Value::Null);
            s.db.check_schema(fnr, written.map(|(k, _)| k.as_str()))?;
            apply_patch(&mut rec, &patch);
            let merged = Self::check_record(fnr, &rec)?;
            s.hold(merged.len())?;
            s.local.insert((fnr, isn), Some(Local::Record(rec)));
            let seen = committed.map(|before| (before, merged));
            s.ops.push(Op::Update {
                fnr,
                isn,
                patch,
                seen,
            });
            Ok(())
        })
    }

    /// Replaces the named fields, given as MessagePack bytes (as a client
    /// sends them), if they are canonical: the committed record is patched
    /// at the byte level (no decode, no encode). Other bytes are handed back
    /// (`Err`) for the caller to decode and [`Session::update`].
    pub fn update_canonical(
        &mut self,
        fnr: Fnr,
        isn: Isn,
        patch: Vec<u8>,
    ) -> Result<Result<(), DbError>, Vec<u8>> {
        let entries = crate::record::canonical_entries(&patch);
        let decoded: Option<Record> = entries.as_ref().and_then(|es| {
            es.iter()
                .map(|e| {
                    Some((
                        e.name.to_string(),
                        crate::record::decode_value(e.value).ok()?,
                    ))
                })
                .collect()
        });
        let (Some(entries), Some(decoded)) = (entries, decoded) else {
            return Err(patch);
        };
        if self.local.contains_key(&(fnr, isn)) {
            // Written by this transaction already: patched as a record.
            return Ok(self.update(fnr, isn, decoded));
        }
        Ok(self.guard(|s| {
            // A null removes a field, declared or not.
            let written = entries.iter().filter(|e| e.value != [0xc0]).map(|e| e.name);
            s.db.check_schema(fnr, written)?;
            let before = s
                .committed(fnr, isn)?
                .ok_or(DbError::RecordMissing { fnr, isn })?;
            let bad = |source| DbError::BadRecord { fnr, source };
            let merged = match crate::record::canonical_entries(&before.bytes) {
                Some(current) => crate::record::patch_entries(&current, &entries).map_err(bad)?,
                None => {
                    let mut rec = decode_record(&before.bytes).map_err(bad)?;
                    apply_patch(&mut rec, &decoded);
                    Self::check_record(fnr, &rec)?
                }
            };
            s.hold(merged.len())?;
            s.local.insert((fnr, isn), Some(Local::Op(s.ops.len())));
            s.ops.push(Op::Update {
                fnr,
                isn,
                patch: decoded,
                seen: Some((before, merged)),
            });
            Ok(())
        }))
    }

    pub fn delete(&mut self, fnr: Fnr, isn: Isn) -> Result<(), DbError> {
        self.guard(|s| {
            let (exists, seen) = match s.local.get(&(fnr, isn)) {
                Some(mine) => (mine.is_some(), None),
                None => {
                    let seen = s.committed(fnr, isn)?;
                    (seen.is_some(), seen)
                }
            };
            if !exists {
                return Err(DbError::RecordMissing { fnr, isn });
            }
            s.local.insert((fnr, isn), None);
            s.ops.push(Op::Delete { fnr, isn, seen });
            Ok(())
        })
    }

    /// Reads a record as this transaction sees it (its own writes included).
    /// Reading a file clients may not write reads the committed state.
    pub fn read(&mut self, fnr: Fnr, isn: Isn) -> Result<Option<Record>, DbError> {
        if let Some(r) = self.mine(fnr, isn)? {
            return Ok(r);
        }
        self.db.read(fnr, isn)
    }

    /// ET: commits the open transaction, durably, before returning.
    pub fn et(&mut self, client_id: Option<String>) -> Result<CommitInfo, DbError> {
        self.et_queued(client_id)?.wait()
    }

    /// ET without waiting for the sync: the transaction is resolved, visible
    /// to the session's next one, and queued; the answer says when it is
    /// durable. A pipelining connection runs its next transaction meanwhile.
    pub fn et_queued(&mut self, client_id: Option<String>) -> Result<PendingCommit, DbError> {
        if let Some(reason) = self.aborted.take() {
            // A rerun of a transaction that did commit (its acknowledgement
            // was lost) fails on its own effects; its id tells the truth.
            if let Some(id) = &client_id {
                if let Some(lsn) = self.db.committed_id(id)? {
                    return Err(DbError::AlreadyCommitted {
                        id: id.clone(),
                        lsn,
                    });
                }
            }
            return Err(DbError::Aborted(reason));
        }
        let ops = std::mem::take(&mut self.ops);
        // Read before this commit: the next transaction reads again.
        self.ahead = None;
        self.local.clear();
        self.bytes = 0;
        self.db.commit_queued(vec![], ops, client_id, false)
    }

    /// BT: backs out the open transaction.
    pub fn bt(&mut self) {
        self.ahead = None;
        self.bytes = 0;
        self.ops.clear();
        self.local.clear();
        self.aborted = None;
    }
}
