//! Re-applying committed transactions read back from a protection log
//! (case 4's C4.2 and C4.7; Berkeley DB's catastrophic recovery, seed
//! 003): a database set back to an earlier level — a master restored from
//! a copy set or rebuilt from a full replicate, a database recovered to
//! the last LSN before damage in its log — gets the client transactions
//! the log still holds whole after that level, as new transactions, each
//! whole or not at all, and each only where it still fits.
//!
//! The rule that keeps this safe is the before-image: a transaction runs
//! only if every record it changed still holds what it found then (absent
//! for a store). A transaction lost in the damage, or one refused here,
//! that changed the same record makes every later one on that record a
//! named conflict instead of a silent overwrite.
//!
//! Each re-applied transaction commits under a client id, so a rerun (a
//! recovery plan resumed after a crash) finds it committed and does not
//! apply it twice: its own id where the database does not know it yet (a
//! database rebuilt from copies: a client rerunning it from its journal is
//! then told it committed), else `etp-reapply:LSN:TIME` (a live master,
//! whose id table still holds the original id at its original LSN, so the
//! client's rerun is refused as done all the same).

use crate::catalog::Role;
use crate::database::Database;
use crate::error::DbError;
use crate::ids::{Fnr, Isn, Lsn, Seq};
use crate::plog::survey::{read_commits, ReadBack};
use crate::plog::{Commit, LogError};
use crate::record::{decode_record, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What re-applying transactions did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reapplied {
    /// (old LSN, new LSN): re-applied as a new transaction (or found
    /// re-applied already, by an earlier attempt).
    pub done: Vec<(Lsn, Lsn)>,
    /// Not re-applied: a record it changed is not what it found then (a
    /// transaction lost in the damage, or one not re-applied, changed it).
    pub conflicts: Vec<Conflict>,
    /// Not client transactions (definitions, replicated or restored
    /// changes, engine records): not re-applied; their files are
    /// recovered by their own means (a replicate by its master).
    pub skipped: Vec<Lsn>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub lsn: Lsn,
    pub file: Fnr,
    pub isn: Isn,
    pub why: String,
}

/// The id a re-applied transaction commits under, or the LSN it was
/// re-applied at already.
fn id_for(db: &Database, c: &Commit) -> Result<Result<String, Lsn>, DbError> {
    let own = format!("etp-reapply:{}:{}", c.lsn.0, c.time_us);
    if let Some(l) = db.committed_id(&own)? {
        return Ok(Err(l));
    }
    if let Some(id) = &c.client_id {
        match db.committed_id(id)? {
            None => return Ok(Ok(id.clone())),
            // The original commit itself: the id stays with it.
            Some(l) if l == c.lsn => {}
            Some(l) => return Ok(Err(l)),
        }
    }
    Ok(Ok(own))
}

/// Re-applies `commits` (in LSN order) to `db` as new transactions, each
/// whole or not at all; with `only`, just their changes to those files
/// (the others kept the transaction's effect). A transaction runs only if
/// every record it changes still holds its before-image, and then sets
/// each to its after-image (a master's change derives its log record as
/// any client's does, so replicates get it).
pub fn reapply(
    db: &Database,
    commits: &[Commit],
    only: Option<&BTreeSet<Fnr>>,
) -> Result<Reapplied, DbError> {
    let mut out = Reapplied::default();
    'commit: for c in commits {
        let changes: Vec<_> = c
            .changes
            .iter()
            .filter(|ch| only.is_none_or(|o| o.contains(&ch.fnr)))
            .collect();
        let client = !changes.is_empty()
            && c.catalog.is_empty()
            && changes
                .iter()
                .all(|ch| db.file(ch.fnr).is_ok_and(|d| d.role.client_writable()));
        if !client {
            out.skipped.push(c.lsn);
            continue;
        }
        let id = match id_for(db, c)? {
            Ok(id) => id,
            Err(at) => {
                out.done.push((c.lsn, at));
                continue;
            }
        };
        let mut s = db.session();
        for ch in &changes {
            // As this transaction sees it (a record it changes twice).
            let now = s.read(ch.fnr, ch.isn)?;
            // Compared as records (an encoding may differ in bytes).
            let found = match (&now, &ch.before) {
                (None, None) => true,
                (Some(x), Some(b)) => decode_record(b).is_ok_and(|y| *x == y),
                _ => false,
            };
            if !found {
                s.bt();
                out.conflicts.push(Conflict {
                    lsn: c.lsn,
                    file: ch.fnr,
                    isn: ch.isn,
                    why: match (&now, &ch.before) {
                        (None, Some(_)) => "the record it changed is gone".into(),
                        (Some(_), None) => "the record it stored exists".into(),
                        _ => "the record it changed holds another value".into(),
                    },
                });
                continue 'commit;
            }
            let bad = |source| DbError::BadRecord {
                fnr: ch.fnr,
                source,
            };
            let done = match (&ch.before, &ch.after) {
                (_, None) => s.delete(ch.fnr, ch.isn),
                (None, Some(a)) => decode_record(a)
                    .map_err(bad)
                    .and_then(|r| s.store(ch.fnr, Some(ch.isn), r).map(|_| ())),
                (Some(b), Some(a)) => {
                    // The after-image, with a null for each field it dropped.
                    decode_record(a)
                        .and_then(|mut patch| {
                            for k in decode_record(b)?.keys() {
                                patch.entry(k.clone()).or_insert(Value::Null);
                            }
                            Ok(patch)
                        })
                        .map_err(bad)
                        .and_then(|patch| s.update(ch.fnr, ch.isn, patch))
                }
            };
            // Refused (a schema, a limit): named, and the others go on.
            if let Err(e) = done {
                s.bt();
                out.conflicts.push(Conflict {
                    lsn: c.lsn,
                    file: ch.fnr,
                    isn: ch.isn,
                    why: format!("refused: {e}"),
                });
                continue 'commit;
            }
        }
        match s.et(Some(id)) {
            Ok(info) => out.done.push((c.lsn, info.lsn)),
            Err(e) => out.conflicts.push(Conflict {
                lsn: c.lsn,
                file: changes[0].fnr,
                isn: changes[0].isn,
                why: format!("its commit was refused: {e}"),
            }),
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum ReapplyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("file {0} is not a master of this database")]
    NotMaster(Fnr),
}

/// A client transaction of a master read back from the log, with the seqs
/// it was given then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub lsn: Lsn,
    pub seqs: (Seq, Seq),
}

/// What [`from_log`] read and re-applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FromLog {
    pub master: Fnr,
    pub level: Seq,
    pub upto: Lsn,
    pub read: ReadBack,
    /// The master's transactions after `level` the log holds whole, in
    /// order.
    pub chosen: Vec<Chosen>,
    pub reapplied: Reapplied,
}

impl FromLog {
    /// The seqs (as first given) of the transactions re-applied.
    pub fn recovered_seqs(&self) -> Vec<(Seq, Seq)> {
        let done: BTreeSet<Lsn> = self.reapplied.done.iter().map(|d| d.0).collect();
        self.chosen
            .iter()
            .filter(|c| done.contains(&c.lsn))
            .map(|c| c.seqs)
            .collect()
    }
}

/// Re-applies to master `master`, set back to seq `level` by a restore
/// that began after LSN `upto`, the client transactions its database's own
/// log holds whole from after that level up to `upto`: the last stretch
/// of the log's transactions on the master whose seqs all lie above
/// `level` and rise from one to the next. A transaction at or across the
/// level, a rewrite of the master's records (restore, clear, bulk load,
/// rebase), or seqs given again (its log set back) end an older
/// history and start the stretch again; a cleanup of its log does not.
/// Damage in the log's middle is read across: what follows it is
/// re-applied where it fits (a gap in the seqs is what the damage hid).
pub fn from_log(
    db: &Database,
    master: Fnr,
    level: Seq,
    upto: Lsn,
) -> Result<FromLog, ReapplyError> {
    let def = db.file(master)?;
    let Role::Master { log, .. } = def.role else {
        return Err(ReapplyError::NotMaster(master));
    };
    // Read back from the log's end, a window of segments doubling until
    // it holds the stretch's start (a commit at or below the level, or a
    // rewrite of the master), or the whole log: not the whole log when
    // the level is recent.
    let firsts: Vec<Lsn> = crate::plog::open_segments_readonly(db.plog_dir().as_ref(), db.dbid())?
        .iter()
        .map(|s| s.header.first_lsn)
        .filter(|l| *l <= upto)
        .collect();
    let mut back = 1usize;
    let (chosen, read) = loop {
        let start = firsts.len().saturating_sub(back);
        let from = if start == 0 { Lsn(0) } else { firsts[start] };
        let (chosen, bounded, read) = select(db, master, log, level, from, upto)?;
        if bounded || start == 0 {
            break (chosen, read);
        }
        back *= 2;
    };
    let commits: Vec<Commit> = chosen.iter().map(|(_, c)| c.clone()).collect();
    let reapplied = reapply(db, &commits, Some(&BTreeSet::from([master])))?;
    Ok(FromLog {
        master,
        level,
        upto,
        read,
        chosen: chosen.into_iter().map(|(c, _)| c).collect(),
        reapplied,
    })
}

/// What [`select`] found: the stretch, whether its start was read, and
/// what the read saw.
type Selected = (Vec<(Chosen, Commit)>, bool, ReadBack);

/// The stretch [`from_log`] re-applies, read from LSN `from` to `upto`,
/// and whether the read held its start (else an earlier one may).
fn select(
    db: &Database,
    master: Fnr,
    log: Fnr,
    level: Seq,
    from: Lsn,
    upto: Lsn,
) -> Result<Selected, ReapplyError> {
    let mut chosen: Vec<(Chosen, Commit)> = Vec::new();
    let mut bounded = false;
    let read = read_commits(
        db.plog_dir().as_ref(),
        db.dbid(),
        from,
        upto,
        &mut |c: Commit, _| {
            // The master's records themselves rewritten (restored,
            // cleared, loaded in bulk, rebased): what came before is
            // another history. (A definition alone — a damage mark, a hold,
            // an incarnation — rewrites no record.)
            let rewritten = c.catalog.iter().any(|op| {
                op.fnr() == master && !matches!(op, crate::catalog::CatalogOp::Define(_))
            });
            if rewritten {
                chosen.clear();
                bounded = true;
                return;
            }
            let n = c.changes.iter().filter(|ch| ch.fnr == master).count() as u64;
            let Some(m) = c.metas.iter().find(|m| m.fnr == log).filter(|_| n > 0) else {
                // Not a client transaction on the master (its log
                // cleaned up, refreshed or rebased, another file): its
                // seqs, if it moved them, show in the next one's.
                return;
            };
            let seqs = (Seq(m.next_isn.saturating_sub(n)), Seq(m.next_isn - 1));
            // At or across the level: the history up to it, which the
            // restore brought back.
            if seqs.0 <= level {
                chosen.clear();
                bounded = true;
                return;
            }
            // Seqs given again (the log was set back, perhaps by a commit
            // the damage hid): only the newest history counts.
            if chosen.last().is_some_and(|(p, _)| seqs.0 <= p.seqs.1) {
                chosen.clear();
                bounded = true;
            }
            chosen.push((Chosen { lsn: c.lsn, seqs }, c));
        },
    )?;
    Ok((chosen, bounded, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DbId;
    use crate::record::Record;

    const MASTER: Fnr = Fnr(10);
    const LOG: Fnr = Fnr(11);

    fn rec(v: i64) -> Record {
        let mut r = Record::new();
        r.insert("v".into(), Value::Int(v));
        r
    }

    /// One transaction setting records `keys` to `v`: its LSN and last seq.
    fn set(
        db: &Database,
        keys: std::ops::RangeInclusive<u64>,
        v: i64,
        id: Option<&str>,
    ) -> (Lsn, Seq) {
        let mut s = db.session();
        for k in keys {
            if s.read(MASTER, Isn(k)).expect("read").is_some() {
                s.update(MASTER, Isn(k), rec(v)).expect("update");
            } else {
                s.store(MASTER, Some(Isn(k)), rec(v)).expect("store");
            }
        }
        let info = s.et(id.map(str::to_string)).expect("et");
        (info.lsn, info.seqs[&MASTER].1)
    }

    fn values(db: &Database) -> Vec<i64> {
        (1..=6)
            .map(|k| match db.session().read(MASTER, Isn(k)).expect("read") {
                Some(r) => match r.get("v") {
                    Some(Value::Int(v)) => *v,
                    other => panic!("{other:?}"),
                },
                None => 0,
            })
            .collect()
    }

    /// A master set back to an earlier level gets, from its own log, the
    /// transactions after that level, each once: a second run (a resumed
    /// plan) finds them all re-applied and changes nothing; the seqs
    /// recovered are the ones first given.
    #[test]
    fn a_master_set_back_gets_its_later_transactions_from_its_log_exactly_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Database::init(tmp.path(), DbId(3), None).expect("init");
        let (db, _) = Database::open(tmp.path()).expect("open");
        db.create_file(MASTER, "m", Role::Plain).expect("create");
        db.define_master(MASTER, LOG).expect("define");
        let (_, level) = set(&db, 1..=6, 1, None);
        let (_, s2) = set(&db, 1..=2, 2, Some("client-2"));
        // A cleanup of the master's log between them (as `log cleanup`
        // deletes records) leaves the stretch whole.
        db.restore_range(LOG, Isn(1), Some(Isn(4)), Vec::new(), None)
            .expect("cleanup");
        let (l3, s3) = set(&db, 3..=4, 3, None);
        let (upto, s4) = set(&db, 1..=1, 4, Some("client-4"));
        assert_eq!(values(&db), vec![4, 2, 3, 3, 1, 1]);
        // Set back by hand to the level's content (after `upto`).
        set(&db, 1..=6, 1, None);
        let f = from_log(&db, MASTER, level, upto).expect("from log");
        assert_eq!(f.read.fault, None);
        assert_eq!(f.chosen.len(), 3, "{f:?}");
        assert!(f.reapplied.conflicts.is_empty(), "{f:?}");
        assert_eq!(values(&db), vec![4, 2, 3, 3, 1, 1]);
        assert_eq!(
            f.recovered_seqs(),
            vec![
                (Seq(level.0 + 1), s2),
                (Seq(s2.0 + 1), s3),
                (Seq(s3.0 + 1), s4)
            ]
        );
        // The client's own ids stay where they were first committed.
        assert!(db.committed_id("client-2").expect("id").is_some());
        let last = db.last_lsn();
        let again = from_log(&db, MASTER, level, upto).expect("again");
        assert_eq!(again.reapplied.done.len(), 3, "{again:?}");
        assert!(again.reapplied.conflicts.is_empty(), "{again:?}");
        assert_eq!(db.last_lsn(), last, "a rerun commits nothing");
        // A level past a transaction leaves it out, and one re-applied
        // already is found so even after its record moved on.
        set(&db, 3..=3, 9, None);
        let later = from_log(&db, MASTER, s2, l3).expect("later");
        assert_eq!(later.chosen.len(), 1, "{later:?}");
        assert_eq!(later.chosen[0].lsn, l3, "{later:?}");
        assert_eq!(later.reapplied.done.len(), 1, "{later:?}");
        assert_eq!(values(&db), vec![4, 2, 9, 3, 1, 1]);
        db.close().expect("close");
    }

    /// Over a log of many segments, the window read back from its end
    /// grows until it holds the level: the stretch is the same as a read
    /// of the whole log would give, wherever the level lies.
    #[test]
    fn the_stretch_is_found_across_many_segments() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Database::init(tmp.path(), DbId(3), Some(4096)).expect("init");
        let (db, _) = Database::open(tmp.path()).expect("open");
        db.create_file(MASTER, "m", Role::Plain).expect("create");
        db.define_master(MASTER, LOG).expect("define");
        let mut marks = Vec::new();
        for v in 1..=60i64 {
            marks.push(set(&db, 1..=100, v, None));
        }
        let segments = crate::plog::open_segments_readonly(db.plog_dir().as_ref(), db.dbid())
            .expect("segments")
            .len();
        assert!(segments > 4, "{segments} segments");
        let upto = marks[59].0;
        for at in [0usize, 10, 40, 57, 59] {
            let level = marks[at].1;
            // (Nothing is re-applied: every record holds the last value.)
            let f = from_log(&db, MASTER, level, upto).expect("from log");
            assert_eq!(f.chosen.len(), 59 - at, "level after transaction {at}");
            assert_eq!(
                f.chosen.first().map(|c| c.seqs.0),
                (at < 59).then_some(Seq(level.0 + 1))
            );
        }
        db.close().expect("close");
    }
}
