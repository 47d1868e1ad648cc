//! Reads: records (through the overlay of commits not yet in the page
//! store), files and their metas, log records, range digests, and scans.

use super::*;

impl Database {
    /// The bytes of a record as of the last durable commit: an overlay entry
    /// from a commit not yet synced is not returned (the page store's value
    /// is older still, so `None` then means "not yet"). Meant for records
    /// that are written once, such as log records: replication must never
    /// ship a change that a crash could still take back.
    pub fn read_durable_raw(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, DbError> {
        let durable = *self.shared().durable.borrow();
        let st = lock(&self.shared().state);
        Self::usable_def(&st, fnr)?;
        match st.overlay.get(&(fnr, isn)) {
            Some((lsn, _)) if *lsn > durable => Ok(None),
            Some((_, v)) => Ok(v.clone()),
            None => Ok(self.shared().store.get(fnr, isn)?),
        }
    }

    /// The durable log records of a master from `from` on, contiguous, at
    /// most `max` of them and about `max_bytes` of images (at least one):
    /// what a feeder ships next. Records the log's tail
    /// holds in memory are shared from it; older ones are read with one
    /// range scan of the page store (a feeder draining a backlog reads the
    /// log in order, and a scan costs a fraction of a lookup per record),
    /// the overlay taking precedence for records not yet applied.
    pub fn read_log_run(
        &self,
        log: Fnr,
        from: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<std::sync::Arc<LogRecord>>, DbError> {
        let durable = *self.shared().durable.borrow();
        let (mut out, tail_first) = self.tail_run(log, from, max, max_bytes, durable)?;
        let seq = from.0;
        if !out.is_empty() || max == 0 {
            return Ok(out);
        }
        // Before the tail (or no tail): scan the page store.
        let upto = tail_first.map_or(u64::MAX, |f| f.0);
        let want = (max as u64).min(upto.saturating_sub(seq)) as usize;
        if want == 0 {
            return Ok(out);
        }
        // The scan runs without the state lock: a rewrite of the log
        // meanwhile (a refresh, a cleanup) makes what it read stale.
        let rewrites = self
            .shared()
            .log_rewrites
            .load(std::sync::atomic::Ordering::Acquire);
        let mut scanned = Vec::with_capacity(want.min(4096));
        let mut bytes = 0usize;
        for kv in self.shared().store.scan_shared(log, Isn(seq)) {
            let (isn, v) = kv?;
            if isn.0 >= seq + want as u64 || bytes >= max_bytes {
                break;
            }
            bytes += v.as_ref().len();
            scanned.push((isn, v));
        }
        // Which bytes each seq has, under the state lock; decoded after it.
        let mut found: Vec<(u64, Option<Vec<u8>>, Option<crate::store::StoredBytes>)> =
            Vec::with_capacity(scanned.len());
        {
            let st = lock(&self.shared().state);
            let stale = self
                .shared()
                .log_rewrites
                .load(std::sync::atomic::Ordering::Acquire)
                != rewrites;
            let mut it = scanned.into_iter().peekable();
            for s in seq..seq + want as u64 {
                match st.overlay.get(&(log, Isn(s))) {
                    Some((lsn, _)) if *lsn > durable => break,
                    Some((_, None)) => break,
                    Some((_, Some(v))) => {
                        while it.peek().is_some_and(|(i, _)| i.0 <= s) {
                            it.next();
                        }
                        found.push((s, Some(v.clone()), None));
                    }
                    None => {
                        while it.peek().is_some_and(|(i, _)| i.0 < s) {
                            it.next();
                        }
                        let scanned_here = !stale && it.peek().is_some_and(|(i, _)| i.0 == s);
                        match it.next().filter(|_| scanned_here) {
                            Some((_, v)) => found.push((s, None, Some(v))),
                            // Not scanned (applied out of the overlay while
                            // the scan ran), or the log was rewritten since:
                            // read under the lock, as a lookup does.
                            None => match self.shared().store.get(log, Isn(s))? {
                                Some(v) => found.push((s, Some(v), None)),
                                // Not in the page store (nor pending): the
                                // log ends here.
                                None => break,
                            },
                        }
                    }
                }
            }
        }
        for (_, owned, stored) in &found {
            let bytes: &[u8] = match (owned, stored) {
                (Some(v), _) => v,
                (None, Some(v)) => v.as_ref(),
                (None, None) => break,
            };
            let rec = LogRecord::decode(bytes)
                .map_err(|source| DbError::BadRecord { fnr: log, source })?;
            out.push(std::sync::Arc::new(rec));
        }
        // Read up to the tail: go on into it.
        let next = Seq(seq + out.len() as u64);
        if out.len() < max && tail_first == Some(next) {
            let used: usize = out.iter().map(|r| r.image_bytes()).sum();
            if used < max_bytes {
                let (more, _) =
                    self.tail_run(log, next, max - out.len(), max_bytes - used, durable)?;
                out.extend(more);
            }
        }
        Ok(out)
    }

    /// [`Database::read_log_run`] from the log's tail in memory only: `None`
    /// when the run begins before the tail (or there is no tail), so the
    /// page store would have to be read. It never blocks on I/O.
    pub fn read_log_tail(
        &self,
        log: Fnr,
        from: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<std::sync::Arc<LogRecord>>>, DbError> {
        let durable = *self.shared().durable.borrow();
        self.read_log_tail_upto(log, from, max, max_bytes, durable)
    }

    /// [`Database::read_log_tail`] up to `upto` rather than the durable
    /// LSN: for an idle hook's [`super::IdleDurable::prepare`], while its
    /// leader syncs the group ending at `upto`. Nothing read this way may
    /// leave the node before `upto` is durable.
    pub fn read_log_tail_upto(
        &self,
        log: Fnr,
        from: Seq,
        max: usize,
        max_bytes: usize,
        upto: Lsn,
    ) -> Result<Option<Vec<std::sync::Arc<LogRecord>>>, DbError> {
        let (out, first) = self.tail_run(log, from, max, max_bytes, upto)?;
        Ok((!out.is_empty() || first.is_some_and(|f| f <= from)).then_some(out))
    }

    /// The records the tail holds from `from` on, up to `durable`, and the
    /// tail's first seq.
    fn tail_run(
        &self,
        log: Fnr,
        from: Seq,
        max: usize,
        max_bytes: usize,
        durable: Lsn,
    ) -> Result<(Vec<std::sync::Arc<LogRecord>>, Option<Seq>), DbError> {
        Self::usable_def(&lock(&self.shared().state), log)?;
        let mut out: Vec<std::sync::Arc<LogRecord>> = Vec::new();
        let mut seq = from.0;
        let tails = lock(&self.shared().tails);
        let tail = tails.get(&log);
        if let Some(t) = tail {
            let mut bytes = 0usize;
            while out.len() < max && bytes < max_bytes {
                match t.get(Seq(seq)) {
                    Some((lsn, rec)) if *lsn <= durable => {
                        bytes += rec.image_bytes();
                        out.push(rec.clone());
                        seq += 1;
                    }
                    _ => break,
                }
            }
        }
        Ok((out, tail.and_then(|t| t.first())))
    }

    /// A durable log record of a master, by seq (see [`Database::read_durable_raw`]).
    pub fn read_log_record(&self, log: Fnr, seq: Seq) -> Result<Option<LogRecord>, DbError> {
        match self.read_durable_raw(log, Isn(seq.0))? {
            None => Ok(None),
            Some(b) => LogRecord::decode(&b)
                .map(Some)
                .map_err(|source| DbError::BadRecord { fnr: log, source }),
        }
    }

    /// A file's meta (count, digest, next isn) and damage, if any.
    pub fn file_info(&self, fnr: Fnr) -> Result<FileInfo, DbError> {
        lock(&self.shared().state).info(fnr)
    }

    /// A record and a file's meta and damage, read under one lock (a
    /// replicate's confirmation and its file's digest that belong together).
    pub fn read_with_info(
        &self,
        rec_fnr: Fnr,
        isn: Isn,
        info_fnr: Fnr,
    ) -> Result<(Option<Record>, FileInfo), DbError> {
        let st = lock(&self.shared().state);
        Self::usable_def(&st, rec_fnr)?;
        let info = st.info(info_fnr)?;
        let bytes = LatestView {
            st: &st,
            store: &self.shared().store,
            prefetched: None,
        }
        .get(rec_fnr, isn)?;
        let rec = match bytes {
            None => None,
            Some(b) => Some(decode_record(&b).map_err(|source| DbError::BadRecord {
                fnr: rec_fnr,
                source,
            })?),
        };
        Ok((rec, info))
    }

    /// The records the page store holds for `fnr` in `[from, to)`.
    pub(super) fn stored_range(
        &self,
        fnr: Fnr,
        from: Isn,
        to: Option<Isn>,
    ) -> Result<Vec<(Isn, Vec<u8>)>, DbError> {
        let mut out = Vec::new();
        for kv in self.shared().store.scan(fnr, from) {
            let (isn, v) = kv?;
            if to.is_some_and(|t| isn >= t) {
                break;
            }
            out.push((isn, v));
        }
        Ok(out)
    }

    /// The count and digest of a file's committed records with isns in
    /// `[from, to)` (`to` None: to the end), computed from the records, and
    /// the records if `keep` (at most `MAX_RANGE_RECORDS`). Works on a
    /// damaged file too: verification reads what it holds.
    pub fn range_digest(
        &self,
        fnr: Fnr,
        from: Isn,
        to: Option<Isn>,
        keep: bool,
    ) -> Result<RangeContent, DbError> {
        {
            let st = lock(&self.shared().state);
            st.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
        }
        self.wait_applied()?;
        let mut meta = FileMeta::new(fnr);
        let mut kept = Vec::new();
        for kv in self.shared().store.scan(fnr, from) {
            let (isn, v) = kv?;
            if to.is_some_and(|t| isn >= t) {
                break;
            }
            meta.change(isn, None, Some(&v));
            if keep {
                if kept.len() == MAX_RANGE_RECORDS {
                    return Err(DbError::TooLarge(format!(
                        "file {fnr} holds more than {MAX_RANGE_RECORDS} records in [{from}, {})",
                        to.map_or("end".into(), |t| t.to_string())
                    )));
                }
                kept.push((isn, v));
            }
        }
        Ok(RangeContent {
            count: meta.count,
            digest: meta.digest,
            records: kept,
        })
    }

    /// Up to `max_records` records (and about `max_bytes`) of a file from
    /// isn `from` on, straight from the page store (shared, not copied),
    /// without waiting for queued commits: a fuzzy scan, made exact by the
    /// log slice a copy carries with it.
    pub fn scan_store(
        &self,
        fnr: Fnr,
        from: Isn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Isn, crate::store::StoredBytes)>, DbError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for kv in self.shared().store.scan_shared(fnr, from) {
            let (isn, v) = kv?;
            bytes += v.as_ref().len() + 8;
            out.push((isn, v));
            if out.len() >= max_records || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The count and digest of a file's records as they stand in the page
    /// store, computed from the records themselves (also for a damaged file).
    pub fn content_digest(&self, fnr: Fnr) -> Result<(u64, crate::Digest), DbError> {
        self.wait_applied()?;
        let meta = recovery::scan_meta(&self.shared().store, fnr)?;
        Ok((meta.count, meta.digest))
    }

    /// Every file with its meta.
    pub fn files(&self) -> Vec<FileInfo> {
        let st = lock(&self.shared().state);
        st.catalog.keys().filter_map(|f| st.info(*f).ok()).collect()
    }

    /// A file's definition, refusing unknown and damaged files.
    pub fn file(&self, fnr: Fnr) -> Result<FileDef, DbError> {
        let st = lock(&self.shared().state);
        Self::usable_def(&st, fnr).cloned()
    }

    pub(super) fn usable_def(st: &Latest, fnr: Fnr) -> Result<&FileDef, DbError> {
        let def = st.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
        if let Some(reason) = st.damaged.get(&fnr) {
            return Err(DbError::FileDamaged {
                fnr,
                reason: reason.to_string(),
            });
        }
        Ok(def)
    }

    /// Reads a committed record (every acknowledged commit included).
    pub fn read(&self, fnr: Fnr, isn: Isn) -> Result<Option<Record>, DbError> {
        let bytes = {
            let st = lock(&self.shared().state);
            Self::usable_def(&st, fnr)?;
            match st.overlay.get(&(fnr, isn)) {
                Some((_, v)) => v.clone(),
                None => self.shared().store.get(fnr, isn)?,
            }
        };
        match bytes {
            None => Ok(None),
            Some(b) => Ok(Some(
                decode_record(&b).map_err(|source| DbError::BadRecord { fnr, source })?,
            )),
        }
    }

    /// Calls `f` with every committed record of `fnr` from isn `from` on, in
    /// ascending isn, until it returns `false`. Every commit acknowledged
    /// before the call is included.
    pub fn for_each_raw(
        &self,
        fnr: Fnr,
        from: Isn,
        mut f: impl FnMut(Isn, &[u8]) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        self.file(fnr)?;
        self.wait_applied()?;
        for kv in self.shared().store.scan_shared(fnr, from) {
            let (isn, v) = kv?;
            if !f(isn, v.as_ref())? {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with every log record of master `master` from `from` on.
    pub fn for_each_log_record(
        &self,
        master: Fnr,
        from: Seq,
        mut f: impl FnMut(LogRecord) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        let def = self.file(master)?;
        let Role::Master { log, .. } = def.role else {
            return Err(DbError::BadDefinition(format!(
                "file {master} is not a master file"
            )));
        };
        self.for_each_raw(log, Isn(from.0), |_, bytes| {
            let rec = LogRecord::decode(bytes)
                .map_err(|source| DbError::BadRecord { fnr: log, source })?;
            f(rec)
        })
    }

    /// The LSN a client transaction id was committed at (or is being
    /// committed at, by an ET in flight), if any.
    pub fn committed_id(&self, id: &str) -> Result<Option<Lsn>, DbError> {
        let shared = self.shared();
        let st = lock(&shared.state);
        match st.pending_ids.get(id) {
            Some(l) => Ok(Some(*l)),
            None => Ok(shared.store.client_id(id)?),
        }
    }
}

/// A range of a file: count, digest and (if asked) its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeContent {
    pub count: u64,
    pub digest: crate::Digest,
    /// The range's records, when asked for.
    pub records: Vec<(Isn, Vec<u8>)>,
}
