//! Operations the recovery flows perform on a running database:
//! refreshing a master's log at the master's level and raising a master's
//! incarnation. Each is one protection-logged transaction.

use super::{lock, Database, RangeContent};
use crate::catalog::{CatalogOp, FileDef, Role};
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{Fnr, Isn, Lsn, Seq};
use crate::log_record::{LogOp, LogRecord};
use serde::{Deserialize, Serialize};

/// What a log refresh did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshedLog {
    pub master: Fnr,
    pub log: Fnr,
    /// The log's only record after the refresh: the master's level.
    pub base_seq: Seq,
    pub master_count: u64,
    pub master_digest: String,
    /// Log records dropped.
    pub dropped: u64,
    /// The master was marked damaged only as its log's partner, and its
    /// content proved intact: the mark is cleared.
    pub master_cleared: bool,
}

/// What a promotion did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Promoted {
    pub master: Fnr,
    pub log: Fnr,
    /// The seq its log starts at (its base record's).
    pub seq: Seq,
    pub incarnation: u32,
    pub count: u64,
    pub digest: String,
}

impl Database {
    fn master_def(&self, master: Fnr) -> Result<(FileDef, Fnr, u32), DbError> {
        let def = self.file_info(master)?.def;
        match def.role {
            Role::Master { log, incarnation } => Ok((def, log, incarnation)),
            ref r => Err(DbError::BadDefinition(format!(
                "file {master} is a {} file, not a master",
                r.name()
            ))),
        }
    }

    /// Empties a master's log and starts it again at the master's current
    /// level: the log then holds one base record at the last seq, carrying
    /// the master's count and digest, so a load can take its confirmation
    /// from it and nothing older can be sent to a replicate. The master's
    /// content must match its recorded count and digest, else the refresh
    /// is refused (restore the master first); a damage mark it carries as
    /// its log's partner is then cleared.
    ///
    /// With `at`, the log restarts at that seq instead of its last one: a
    /// master just rebuilt from a full replicate is at that replicate's
    /// confirmed seq (at most the log's last; the seqs after it are lost and
    /// the caller records the gap).
    pub fn refresh_log(&self, master: Fnr, at: Option<Seq>) -> Result<RefreshedLog, DbError> {
        let (def, log, incarnation) = self.master_def(master)?;
        if let Some(why) = &def.restoring {
            return Err(DbError::FileDamaged {
                fnr: master,
                reason: crate::catalog::unfinished_restore(why),
            });
        }
        let last = Seq(self.file_info(log)?.meta.next_isn.saturating_sub(1));
        if let Some(a) = at.filter(|a| *a > last) {
            return Err(DbError::BadDefinition(format!(
                "the log of master {master} ends at seq {last}: it cannot restart at seq {a}"
            )));
        }
        self.wait_applied()?;
        let minfo = self.file_info(master)?;
        let RangeContent { count, digest, .. } = self.range_digest(master, Isn(1), None, false)?;
        if (count, digest) != (minfo.meta.count, minfo.meta.digest) {
            return Err(DbError::FileDamaged {
                fnr: master,
                reason: format!(
                    "its content ({count} records, digest {digest}) disagrees with its recorded level ({} records, digest {}): restore the master first",
                    minfo.meta.count, minfo.meta.digest
                ),
            });
        }
        let master_cleared = minfo.damaged.is_some();
        if master_cleared {
            self.rebase_file(master)?;
        }
        // `at` was checked against this end before anything was written.
        let base_seq = at.unwrap_or(last);
        let dropped = self.restart_log(
            master,
            log,
            base_seq,
            incarnation,
            minfo.meta,
            "refresh of the log at the master's level",
        )?;
        Ok(RefreshedLog {
            master,
            log,
            base_seq,
            master_count: minfo.meta.count,
            master_digest: minfo.meta.digest.to_string(),
            dropped,
            master_cleared,
        })
    }

    /// Replaces every record of master `master`'s log `log` with one base
    /// record at `base_seq` carrying the master's count and digest (`meta`);
    /// the log's next seq is `base_seq + 1`. Returns the records dropped.
    fn restart_log(
        &self,
        master: Fnr,
        log: Fnr,
        base_seq: Seq,
        incarnation: u32,
        meta_of_master: FileMeta,
        why: &str,
    ) -> Result<u64, DbError> {
        // Every log record is replaced: take what the log holds, damaged
        // or not, as the baseline the replacement is counted from.
        self.begin_restore(log, why)?;
        let next = base_seq.0 + 1;
        let mut wanted = Vec::new();
        let mut meta = FileMeta::new(log);
        meta.next_isn = next;
        if base_seq.0 > 0 {
            let rec = LogRecord {
                seq: base_seq,
                incarnation,
                lsn: self.last_lsn(),
                time_us: chrono::Utc::now().timestamp_micros(),
                client_id: None,
                master,
                isn: Isn(0),
                op: LogOp::Update,
                before: None,
                after: None,
                master_count: meta_of_master.count,
                master_digest: meta_of_master.digest,
                part: 1,
                parts: 1,
            };
            let bytes = rec.encode();
            meta.change(Isn(base_seq.0), None, Some(&bytes));
            wanted.push((Isn(base_seq.0), bytes));
        }
        let (_, stats) = self.restore_range(log, Isn(1), None, wanted, Some(meta))?;
        Ok(stats.removed)
    }

    /// Makes replicate file `fnr` a master, with the new log file `log`
    /// starting at seq `at` (the seq the replicate confirms: its content is
    /// the old master's at that seq) and an incarnation above `floor` (the
    /// old master's) and its own: failover to a full replicate. Its content
    /// must match its recorded count and digest. A promotion cut short
    /// (the file plain, or a master of `log` already) is finished.
    pub fn promote_replicate(
        &self,
        fnr: Fnr,
        confirmation: Fnr,
        log: Fnr,
        at: Seq,
        floor: u32,
    ) -> Result<Promoted, DbError> {
        let info = self.file_info(fnr)?;
        match info.def.role {
            Role::Replicate | Role::Plain => {}
            Role::Master { log: l, .. } if l == log => {}
            ref r => {
                return Err(DbError::BadDefinition(format!(
                    "file {fnr} is a {} file: only a replicate is promoted",
                    r.name()
                )))
            }
        }
        if let Some(d) = &info.damaged {
            return Err(DbError::FileDamaged {
                fnr,
                reason: d.reason.clone(),
            });
        }
        self.wait_applied()?;
        let RangeContent { count, digest, .. } = self.range_digest(fnr, Isn(1), None, false)?;
        if (count, digest) != (info.meta.count, info.meta.digest) {
            return Err(DbError::FileDamaged {
                fnr,
                reason: format!(
                    "its content ({count} records, digest {digest}) disagrees with its recorded level ({} records, digest {}): it cannot become the master",
                    info.meta.count, info.meta.digest
                ),
            });
        }
        if info.def.role == Role::Replicate {
            // No longer a replicate: no link applies to it from here on.
            self.commit(
                vec![CatalogOp::Define(FileDef {
                    role: Role::Plain,
                    ..info.def.clone()
                })],
                Vec::new(),
                None,
            )?;
        }
        // What it holds now is what it confirms: the level the new log
        // starts at must be that one (a batch may have landed since the
        // plan was made).
        if !matches!(self.file_info(fnr)?.def.role, Role::Master { .. }) {
            let confirmed = self
                .read(confirmation, Isn(u64::from(fnr.0)))?
                .map(|r| crate::confirmation::decode(&r));
            match confirmed {
                Some(Ok(crate::confirmation::Decoded::Confirmed(c))) if c.seq == at => {}
                Some(Ok(crate::confirmation::Decoded::Confirmed(c))) => {
                    return Err(DbError::BadDefinition(format!(
                        "replicate file {fnr} confirms seq {}, not the seq {at} the promotion was planned at: plan it again",
                        c.seq
                    )))
                }
                _ => {
                    return Err(DbError::BadDefinition(format!(
                        "replicate file {fnr} has no finished confirmation in file {confirmation}: it cannot become the master"
                    )))
                }
            }
        }
        let info = self.file_info(fnr)?;
        if !matches!(info.def.role, Role::Master { .. }) {
            self.define_master(fnr, log)?;
        }
        let (_, log, _) = self.master_def(fnr)?;
        let (incarnation, _) = self.raise_incarnation_above(fnr, floor)?;
        self.restart_log(
            fnr,
            log,
            at,
            incarnation,
            info.meta,
            "the log of a promoted replicate",
        )?;
        tracing::warn!(file = %fnr, %log, seq = %at, incarnation, "replicate promoted to master");
        Ok(Promoted {
            master: fnr,
            log,
            seq: at,
            incarnation,
            count: info.meta.count,
            digest: info.meta.digest.to_string(),
        })
    }

    /// Marks a file damaged for the rest of this run (it reads as damaged,
    /// and writes to it are refused) when a reader finds a record it cannot
    /// decode: the store was changed behind the engine's back. The next
    /// open finds it again the same way, or by its digest after an unclean
    /// stop. Returns false when it was marked already.
    pub fn mark_damaged(&self, fnr: Fnr, reason: String) -> bool {
        let mut st = lock(&self.shared().state);
        if st.damaged.contains_key(&fnr) {
            return false;
        }
        tracing::error!(file = %fnr, reason = %reason, "file damaged");
        st.damaged.insert(fnr, crate::catalog::Damage::own(reason));
        true
    }

    /// Raises a master's incarnation by one, so confirmations and log
    /// records from before a restore are told apart from those after it.
    /// Returns the new incarnation.
    pub fn raise_incarnation(&self, master: Fnr) -> Result<(u32, Lsn), DbError> {
        self.raise_incarnation_above(master, 0)
    }

    /// [`Database::raise_incarnation`] to above `floor` as well (the
    /// highest incarnation a history this master left behind used).
    pub fn raise_incarnation_above(&self, master: Fnr, floor: u32) -> Result<(u32, Lsn), DbError> {
        let (def, log, incarnation) = self.master_def(master)?;
        let next = incarnation.max(floor).saturating_add(1);
        let info = self.commit(
            vec![CatalogOp::Define(FileDef {
                role: Role::Master {
                    log,
                    incarnation: next,
                },
                ..def
            })],
            Vec::new(),
            None,
        )?;
        Ok((next, info.lsn))
    }
}
