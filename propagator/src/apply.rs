//! Turning a transaction's changes into page-store writes.
//!
//! [`Applier`] is the one place that decides what a commit writes: the
//! records themselves, one derived [`LogRecord`] per change of a master file,
//! and the count and digest of every file touched. The live commit path and
//! restart replay both run it, so replay reproduces the live bytes exactly.

use crate::catalog::{CatalogOp, FileDef, Role};
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{Fnr, Isn, Lsn, Seq};
use crate::log_record::{LogOp, LogRecord};
use crate::plog::Change;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The state a commit applies on top of.
pub trait StateView {
    fn def(&self, fnr: Fnr) -> Option<FileDef>;
    fn meta(&self, fnr: Fnr) -> Option<FileMeta>;
    fn get(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, DbError>;
}

struct PendingLog {
    master: Fnr,
    isn: Isn,
    op: LogOp,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
    master_count: u64,
    master_digest: crate::digest::Digest,
}

/// What a commit writes.
#[derive(Default)]
pub struct Derived {
    pub changes: Vec<Change>,
    /// Every record written, derived log records included, in order.
    pub records: Vec<(Fnr, Isn, Option<Vec<u8>>)>,
    /// Metas after the commit of every file it touched.
    pub metas: BTreeMap<Fnr, FileMeta>,
    /// Definitions the commit created or changed.
    pub catalog: BTreeMap<Fnr, FileDef>,
    /// Per master touched: (first seq, last seq) written to its log.
    pub seqs: BTreeMap<Fnr, (Seq, Seq)>,
    /// The log records derived, decoded, with their log file (for the
    /// log's tail kept in memory for the feeders).
    pub logs: Vec<(Fnr, std::sync::Arc<LogRecord>)>,
    /// Log files written other than by derivation (a cleanup, a restore, a
    /// refresh): their tails in memory no longer hold.
    pub rewritten_logs: HashSet<Fnr>,
    /// Files the commit emptied from an isn on ([`CatalogOp::Clear`]):
    /// their records there go before `records` are written.
    pub cleared: Vec<(Fnr, Isn)>,
}

pub struct Applier<'v, V: StateView> {
    view: &'v V,
    lsn: Lsn,
    time_us: i64,
    client_id: Option<String>,
    local: HashMap<(Fnr, Isn), Option<Vec<u8>>>,
    /// Roles looked up so far (a definition is cloned once per file, not per change).
    roles: HashMap<Fnr, Role>,
    pending: Vec<PendingLog>,
    /// Files whose changes are written as given ([`CatalogOp::Restore`]).
    raw: HashSet<Fnr>,
    /// Next isns set at the end of the commit ([`CatalogOp::Restore`]).
    next_isn: Vec<(Fnr, u64)>,
    out: Derived,
}

impl<'v, V: StateView> Applier<'v, V> {
    pub fn new(view: &'v V, lsn: Lsn, time_us: i64, client_id: Option<String>) -> Self {
        Applier {
            view,
            lsn,
            time_us,
            client_id,
            local: HashMap::new(),
            roles: HashMap::new(),
            pending: Vec::new(),
            raw: HashSet::new(),
            next_isn: Vec::new(),
            out: Derived::default(),
        }
    }

    /// Sets the commit's time, stamped on the log records [`Self::finish`]
    /// derives: a commit takes its time once its changes are resolved, as
    /// PostgreSQL takes its commit timestamp at COMMIT, after the rows.
    pub fn set_time(&mut self, time_us: i64) {
        self.time_us = time_us;
    }

    pub fn def(&self, fnr: Fnr) -> Option<FileDef> {
        self.out
            .catalog
            .get(&fnr)
            .cloned()
            .or_else(|| self.view.def(fnr))
    }

    fn meta_mut(&mut self, fnr: Fnr) -> &mut FileMeta {
        let view = self.view;
        self.out
            .metas
            .entry(fnr)
            .or_insert_with(|| view.meta(fnr).unwrap_or_else(|| FileMeta::new(fnr)))
    }

    /// Whether `isn` has never held a record of `fnr`, in the state or in
    /// this commit so far: every change moves the file's next isn above its
    /// own isn (derived log records rely on the same: their seq is the log's
    /// next isn), and a rebase never lowers a client file's (see
    /// [`Self::catalog_op`]), so an isn at or above it is unused, with no
    /// lookup. Not at `u64::MAX`: there the next isn saturates, and a record
    /// may hold it.
    pub fn unused(&self, fnr: Fnr, isn: Isn) -> bool {
        let next = match self.out.metas.get(&fnr) {
            Some(m) => Some(m.next_isn),
            None => self.view.meta(fnr).map(|m| m.next_isn),
        };
        next.is_some_and(|n| n < u64::MAX && isn.0 >= n)
    }

    /// Whether this commit has changed the record already.
    pub fn touched(&self, fnr: Fnr, isn: Isn) -> bool {
        self.local.contains_key(&(fnr, isn))
    }

    /// The record as this commit has left it so far.
    pub fn current(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, DbError> {
        match self.local.get(&(fnr, isn)) {
            Some(v) => Ok(v.clone()),
            None if self
                .out
                .cleared
                .iter()
                .any(|(f, from)| *f == fnr && isn >= *from) =>
            {
                Ok(None)
            }
            None => self.view.get(fnr, isn),
        }
    }

    pub fn catalog_op(&mut self, op: &CatalogOp) {
        match op {
            CatalogOp::Define(def) => {
                self.roles.remove(&def.fnr);
                self.meta_mut(def.fnr);
                self.out.catalog.insert(def.fnr, def.clone());
            }
            CatalogOp::Rebase(meta) => {
                let mut meta = *meta;
                // A rebase counts what a scan found; a client commit that
                // landed after the scan is not in it. A client file's next
                // isn never goes down, so a new isn stays unused (a log's
                // does: a refresh may rewind it).
                if self.def(meta.fnr).is_some_and(|d| d.role.client_writable()) {
                    if let Some(now) = self.view.meta(meta.fnr) {
                        meta.next_isn = meta.next_isn.max(now.next_isn);
                    }
                }
                self.out.metas.insert(meta.fnr, meta);
            }
            CatalogOp::Restore { fnr, next_isn } => {
                self.raw.insert(*fnr);
                self.meta_mut(*fnr);
                if let Some(n) = next_isn {
                    self.next_isn.push((*fnr, *n));
                }
            }
            CatalogOp::Clear { fnr, from, meta } => {
                let gone = |f: &Fnr, i: &Isn| f == fnr && i >= from;
                self.local.retain(|(f, i), _| !gone(f, i));
                self.out.records.retain(|(f, i, _)| !gone(f, i));
                self.out.changes.retain(|c| !gone(&c.fnr, &c.isn));
                self.out.metas.insert(*fnr, FileMeta { fnr: *fnr, ..*meta });
                self.out.cleared.push((*fnr, *from));
            }
            CatalogOp::Bulk(b) => {
                if matches!(self.role(b.fnr), Some(Role::Log { .. })) {
                    self.out.rewritten_logs.insert(b.fnr);
                }
                let m = self.meta_mut(b.fnr);
                m.add_sum(b.count, b.digest);
                m.next_isn = m.next_isn.max(b.last.0.saturating_add(1));
            }
        }
    }

    /// Applies one change. With `verify`, the change's before-image must be
    /// what the state holds (replay uses this to detect a damaged store).
    fn role(&mut self, fnr: Fnr) -> Option<Role> {
        if let Some(r) = self.roles.get(&fnr) {
            return Some(r.clone());
        }
        let role = self.def(fnr)?.role;
        self.roles.insert(fnr, role.clone());
        Some(role)
    }

    pub fn change(&mut self, c: Change, verify: bool) -> Result<(), DbError> {
        let role = self.role(c.fnr).ok_or(DbError::UnknownFile(c.fnr))?;
        if matches!(role, Role::Log { .. }) {
            self.out.rewritten_logs.insert(c.fnr);
        }
        if verify {
            let cur = self.current(c.fnr, c.isn)?;
            if cur != c.before {
                return Err(DbError::BeforeImageMismatch {
                    fnr: c.fnr,
                    isn: c.isn,
                    lsn: self.lsn,
                });
            }
        }
        let meta = self.meta_mut(c.fnr);
        meta.change(c.isn, c.before.as_deref(), c.after.as_deref());
        let (count, digest) = (meta.count, meta.digest);
        if matches!(role, Role::Master { .. }) && !self.raw.contains(&c.fnr) {
            let op = match (&c.before, &c.after) {
                (None, _) => LogOp::Store,
                (Some(_), Some(_)) => LogOp::Update,
                (Some(_), None) => LogOp::Delete,
            };
            self.pending.push(PendingLog {
                master: c.fnr,
                isn: c.isn,
                op,
                before: c.before.clone(),
                after: c.after.clone(),
                master_count: count,
                master_digest: digest,
            });
        }
        self.local.insert((c.fnr, c.isn), c.after.clone());
        self.out.records.push((c.fnr, c.isn, c.after.clone()));
        self.out.changes.push(c);
        Ok(())
    }

    /// Derives the log records and returns everything the commit writes.
    pub fn finish(mut self) -> Result<Derived, DbError> {
        let mut parts: BTreeMap<Fnr, u32> = BTreeMap::new();
        for p in &self.pending {
            *parts.entry(p.master).or_default() += 1;
        }
        let mut part_no: BTreeMap<Fnr, u32> = BTreeMap::new();
        for p in std::mem::take(&mut self.pending) {
            let Some(Role::Master { log, incarnation }) = self.role(p.master) else {
                unreachable!("pending log records are made only for master files");
            };
            let lmeta = self.meta_mut(log);
            let seq = Seq(lmeta.next_isn);
            let n = part_no.entry(p.master).or_default();
            *n += 1;
            let rec = LogRecord {
                seq,
                incarnation,
                lsn: self.lsn,
                time_us: self.time_us,
                client_id: self.client_id.clone(),
                master: p.master,
                isn: p.isn,
                op: p.op,
                before: p.before,
                after: p.after,
                master_count: p.master_count,
                master_digest: p.master_digest,
                part: *n,
                parts: parts[&p.master],
            };
            let bytes = rec.encode();
            let lmeta = self.meta_mut(log);
            lmeta.change(Isn(seq.0), None, Some(&bytes));
            self.out.records.push((log, Isn(seq.0), Some(bytes)));
            self.out.logs.push((log, std::sync::Arc::new(rec)));
            self.out
                .seqs
                .entry(p.master)
                .and_modify(|r| r.1 = seq)
                .or_insert((seq, seq));
        }
        for (fnr, n) in std::mem::take(&mut self.next_isn) {
            self.meta_mut(fnr).next_isn = n;
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::FileDef;

    /// A state of two files: a plain one and a log, both with next isn 100.
    struct Two;

    impl StateView for Two {
        fn def(&self, fnr: Fnr) -> Option<FileDef> {
            let role = match fnr.0 {
                1 => Role::Plain,
                2 => Role::Log { master: Fnr(3) },
                _ => return None,
            };
            Some(FileDef {
                fnr,
                name: format!("f{}", fnr.0),
                role,
                restoring: None,
                hold: None,
            })
        }
        fn meta(&self, fnr: Fnr) -> Option<FileMeta> {
            self.def(fnr).map(|_| FileMeta {
                next_isn: 100,
                ..FileMeta::new(fnr)
            })
        }
        fn get(&self, _: Fnr, _: Isn) -> Result<Option<Vec<u8>>, DbError> {
            Ok(None)
        }
    }

    #[test]
    fn a_rebase_never_lowers_a_client_files_next_isn_but_may_a_logs() {
        let mut ap = Applier::new(&Two, Lsn(7), 0, None);
        for fnr in [Fnr(1), Fnr(2)] {
            ap.catalog_op(&CatalogOp::Rebase(FileMeta {
                next_isn: 5,
                ..FileMeta::new(fnr)
            }));
        }
        assert!(
            !ap.unused(Fnr(1), Isn(50)),
            "a plain file's isn 50 may be taken"
        );
        assert!(ap.unused(Fnr(1), Isn(100)));
        assert!(
            ap.unused(Fnr(2), Isn(50)),
            "a refreshed log starts again at 5"
        );
        assert!(
            !ap.unused(Fnr(3), Isn(50)),
            "an unknown file proves nothing"
        );
        let d = ap.finish().expect("finish");
        assert_eq!(d.metas[&Fnr(1)].next_isn, 100);
        assert_eq!(d.metas[&Fnr(2)].next_isn, 5);
    }

    #[test]
    fn the_last_isn_is_never_unused() {
        struct Full;
        impl StateView for Full {
            fn def(&self, fnr: Fnr) -> Option<FileDef> {
                Two.def(fnr)
            }
            fn meta(&self, fnr: Fnr) -> Option<FileMeta> {
                Some(FileMeta {
                    next_isn: u64::MAX,
                    ..FileMeta::new(fnr)
                })
            }
            fn get(&self, _: Fnr, _: Isn) -> Result<Option<Vec<u8>>, DbError> {
                Ok(None)
            }
        }
        let ap = Applier::new(&Full, Lsn(7), 0, None);
        assert!(!ap.unused(Fnr(1), Isn(u64::MAX)));
    }
}
