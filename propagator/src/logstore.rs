//! The storage of a master's ETP log file: an append-only segmented file of
//! its own, beside the page store (`store/log-<fnr>/seg-<n>.log`).
//!
//! The log is written in seq order, read in seq order by the feeders and cut
//! from the front by cleanup; an ordered key-value engine wrote every log
//! record twice (its journal, then its tables) and merged them over and over.
//! Here each record is written once, as one frame appended to the active
//! segment, and found through an index in memory (seq → segment, offset)
//! rebuilt from the frames at open.
//!
//! ```text
//! segment: "ETPLOGF1" fnr(u32 BE) segment no(u32 BE), then frames
//! frame:   crc32c(u32 LE, over the rest) len(u32 LE) kind(u8) key(u64 LE) payload[len]
//!          kind 1 put   key = seq, payload = the record
//!          kind 2 del   key = seq
//!          kind 3 mark  key = LSN: every frame before it is the file as of that LSN
//! ```
//!
//! Like the page store it is a cache of the protection log's effect, not
//! the truth: frames are written without a sync (a segment is synced when it
//! is closed, and every store when the page store is flushed, which comes
//! before protection-log segments are removed). At open the store is the
//! frames up to its last mark; what follows the mark (a batch cut short) or
//! a bad frame is reported, and restart recovery rebuilds the file from the
//! protection log after the mark — or, if the protection log no longer
//! reaches back that far, stops naming the segment and offset.
//!
//! Segments are removed from the front once no live record is in them
//! (cleanup deletes from the front), so a tombstone never outlives the
//! record it hides.

use crate::ids::{Fnr, Isn, Lsn};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

const MAGIC: &[u8; 8] = b"ETPLOGF1";
const SEG_HEADER: u64 = 16;
const FRAME_HEADER: usize = 17;
const PUT: u8 = 1;
const DEL: u8 = 2;
const MARK: u8 = 3;
/// A frame longer than this is damage, not a record (the wire's frame limit).
const MAX_PAYLOAD: u32 = 160 << 20;
/// Read past a frame's header in one go, hoping to hold its whole body.
const READ_AHEAD: usize = 1024;
/// Records read under one lock by a scan.
const SCAN_CHUNK: usize = 512;

/// Where a log store cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFault {
    pub path: String,
    pub segment: u32,
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for LogFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log segment {} offset {}: {}",
            self.path, self.offset, self.reason
        )
    }
}

/// What open found after the store's last mark, not yet removed.
#[derive(Clone, Debug)]
pub struct LogTail {
    /// The segment and offset the store is cut back to.
    pub segment: u32,
    pub offset: u64,
    /// Bytes after it (in its segment and any later one).
    pub bytes: u64,
    /// A bad frame found there, if the tail is not just a batch cut short.
    pub fault: Option<LogFault>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("log store {dir}: {reason}")]
    Io { dir: String, reason: String },
    #[error("log store {dir}: {fault}")]
    Damaged { dir: String, fault: LogFault },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    isn: u64,
    seg: u32,
    off: u32,
}

const DEAD: u32 = u32::MAX;

struct Segment {
    no: u32,
    file: File,
    len: u64,
    /// Live entries of the index in this segment.
    live: u64,
}

/// seq → location, sorted by seq; deleted entries are marked dead in place
/// and swept when they are many (cleanup deletes from the front).
#[derive(Default)]
struct Index {
    entries: Vec<Entry>,
    dead: usize,
}

impl Index {
    fn find(&self, isn: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&isn, |e| e.isn)
    }

    /// Sets `isn`'s location; returns the segment it was in before.
    fn put(&mut self, isn: u64, seg: u32, off: u32) -> Option<u32> {
        if self.entries.last().is_none_or(|l| l.isn < isn) {
            self.entries.push(Entry { isn, seg, off });
            return None;
        }
        match self.find(isn) {
            Ok(i) => {
                let old = self.entries[i].seg;
                if old == DEAD {
                    self.dead -= 1;
                }
                self.entries[i] = Entry { isn, seg, off };
                (old != DEAD).then_some(old)
            }
            Err(i) => {
                self.entries.insert(i, Entry { isn, seg, off });
                None
            }
        }
    }

    /// Removes `isn`; returns the segment it was in.
    fn delete(&mut self, isn: u64) -> Option<u32> {
        let i = self.find(isn).ok()?;
        let old = self.entries[i].seg;
        if old == DEAD {
            return None;
        }
        self.entries[i].seg = DEAD;
        self.dead += 1;
        if self.dead > 1024 && self.dead * 2 > self.entries.len() {
            self.entries.retain(|e| e.seg != DEAD);
            self.dead = 0;
        }
        Some(old)
    }

    fn get(&self, isn: u64) -> Option<Entry> {
        let e = self.entries[self.find(isn).ok()?];
        (e.seg != DEAD).then_some(e)
    }

    /// Up to `n` live entries with isn ≥ `from`.
    fn from(&self, from: u64, n: usize) -> Vec<Entry> {
        let i = self.find(from).unwrap_or_else(|i| i);
        self.entries[i..]
            .iter()
            .filter(|e| e.seg != DEAD)
            .take(n)
            .copied()
            .collect()
    }
}

struct Inner {
    segs: Vec<Segment>,
    index: Index,
    applied: Lsn,
    /// Set at open when frames follow the last mark; cleared by repair.
    tail: Option<LogTail>,
    /// A write failed: nothing more is written (the database is poisoned).
    failed: bool,
    /// A segment was made since the store's directory was last synced.
    dir_dirty: bool,
}

pub struct LogStore {
    fnr: Fnr,
    dir: PathBuf,
    seg_size: u64,
    inner: RwLock<Inner>,
}

/// One frame read from bytes.
struct Frame<'a> {
    kind: u8,
    key: u64,
    payload: &'a [u8],
    len: usize,
}

/// Parses the frame at the start of `buf`: `Ok(None)` if `buf` is too short
/// to hold it (read more), an error saying what is wrong with it.
fn parse(buf: &[u8]) -> Result<Option<Frame<'_>>, String> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let kind = buf[8];
    if crc == 0 && len == 0 && kind == 0 {
        return Err("zeroed bytes where a frame should be".into());
    }
    if !(PUT..=MARK).contains(&kind) || len > MAX_PAYLOAD {
        return Err(format!(
            "not a frame (kind {kind}, length {len}): damaged bytes"
        ));
    }
    let total = FRAME_HEADER + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    if crc32c::crc32c(&buf[4..total]) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(Some(Frame {
        kind,
        key: u64::from_le_bytes(buf[9..17].try_into().expect("8 bytes")),
        payload: &buf[FRAME_HEADER..total],
        len: total,
    }))
}

fn frame(out: &mut Vec<u8>, kind: u8, key: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn segment_name(no: u32) -> String {
    format!("seg-{no:08}.log")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogStore {
    fn io(&self, what: &str, e: impl std::fmt::Display) -> LogStoreError {
        LogStoreError::Io {
            dir: self.dir.display().to_string(),
            reason: format!("{what}: {e}"),
        }
    }

    fn seg_path(&self, no: u32) -> PathBuf {
        self.dir.join(segment_name(no))
    }

    /// A store with no segment read or written yet.
    fn empty(dir: &Path, fnr: Fnr, seg_size: u64, applied: Lsn) -> LogStore {
        LogStore {
            fnr,
            dir: dir.to_path_buf(),
            seg_size: seg_size.clamp(4096, 1 << 30),
            inner: RwLock::new(Inner {
                segs: Vec::new(),
                index: Index::default(),
                applied,
                tail: None,
                failed: false,
                dir_dirty: true,
            }),
        }
    }

    /// Creates an empty store in `dir` (which must not exist), marked as the
    /// file at `lsn`, synced.
    pub fn create(dir: &Path, fnr: Fnr, seg_size: u64, lsn: Lsn) -> Result<Self, LogStoreError> {
        let store = LogStore::empty(dir, fnr, seg_size, lsn);
        std::fs::create_dir_all(dir).map_err(|e| store.io("create", e))?;
        {
            let mut inner = store.write();
            let seg = store.new_segment(1)?;
            inner.segs.push(seg);
            let mut buf = Vec::new();
            frame(&mut buf, MARK, lsn.0, &[]);
            store.write_out(&mut inner, &buf)?;
            inner.segs[0]
                .file
                .sync_data()
                .map_err(|e| store.io("sync", e))?;
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(|e| store.io("sync directory", e))?;
        }
        Ok(store)
    }

    /// Opens the store in `dir`: its frames up to the last mark. Anything
    /// after it is reported in [`LogStore::tail`] and left on disk until
    /// [`LogStore::repair`].
    pub fn open(dir: &Path, fnr: Fnr, seg_size: u64) -> Result<Self, LogStoreError> {
        let store = LogStore::empty(dir, fnr, seg_size, Lsn(0));
        let mut nos = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| store.io("list", e))? {
            let entry = entry.map_err(|e| store.io("list", e))?;
            let name = entry.file_name();
            let Some(no) = name
                .to_str()
                .and_then(|n| n.strip_prefix("seg-"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            nos.push(no);
        }
        nos.sort_unstable();
        let mut inner = store.write();
        // Ops since the last mark, applied to the index at the next one.
        let mut pending: Vec<(u8, u64, u32, u32)> = Vec::new();
        // Just after the last mark.
        let mut cut: Option<(usize, u64)> = None;
        let mut fault = None;
        'segs: for (i, &no) in nos.iter().enumerate() {
            let path = store.seg_path(no);
            let fault_at = |offset: u64, reason: String| LogFault {
                path: path.display().to_string(),
                segment: no,
                offset,
                reason,
            };
            if i > 0 && no != nos[i - 1] + 1 {
                fault = Some(fault_at(
                    0,
                    format!("segment {} is missing", nos[i - 1] + 1),
                ));
                break;
            }
            let bytes = std::fs::read(&path).map_err(|e| store.io("read", e))?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| store.io("open", e))?;
            inner.segs.push(Segment {
                no,
                file,
                len: bytes.len() as u64,
                live: 0,
            });
            let header_ok = bytes.len() as u64 >= SEG_HEADER
                && &bytes[0..8] == MAGIC
                && bytes[8..12] == fnr.0.to_be_bytes()
                && bytes[12..16] == no.to_be_bytes();
            if !header_ok {
                fault = Some(fault_at(
                    0,
                    format!("not a segment of log file {fnr}'s store (bad header)"),
                ));
                break;
            }
            let mut pos = SEG_HEADER as usize;
            while pos < bytes.len() {
                match parse(&bytes[pos..]) {
                    Ok(Some(f)) => {
                        match f.kind {
                            MARK => {
                                for (kind, isn, seg, off) in pending.drain(..) {
                                    if kind == PUT {
                                        inner.index.put(isn, seg, off);
                                    } else {
                                        inner.index.delete(isn);
                                    }
                                }
                                inner.applied = Lsn(f.key);
                                cut = Some((inner.segs.len() - 1, (pos + f.len) as u64));
                            }
                            kind => pending.push((kind, f.key, no, pos as u32)),
                        }
                        pos += f.len;
                    }
                    Ok(None) => {
                        fault = Some(fault_at(pos as u64, "a frame cut short".into()));
                        break 'segs;
                    }
                    Err(reason) => {
                        fault = Some(fault_at(pos as u64, reason));
                        break 'segs;
                    }
                }
            }
        }
        if inner.segs.is_empty() {
            return Err(LogStoreError::Damaged {
                dir: dir.display().to_string(),
                fault: LogFault {
                    path: dir.display().to_string(),
                    segment: 0,
                    offset: 0,
                    reason: "no segment".into(),
                },
            });
        }
        let (cut_seg, cut_off) = cut.unwrap_or((0, SEG_HEADER));
        let after: u64 = inner.segs[cut_seg].len.saturating_sub(cut_off)
            + inner.segs[cut_seg + 1..].iter().map(|s| s.len).sum::<u64>()
            + nos[inner.segs.len()..]
                .iter()
                .map(|n| {
                    std::fs::metadata(store.seg_path(*n))
                        .map(|m| m.len())
                        .unwrap_or(0)
                })
                .sum::<u64>();
        if after > 0 || fault.is_some() {
            inner.tail = Some(LogTail {
                segment: inner.segs[cut_seg].no,
                offset: cut_off,
                bytes: after,
                fault,
            });
        }
        // What is past the cut is not the store (yet: repair removes it).
        inner.segs.truncate(cut_seg + 1);
        inner.segs[cut_seg].len = cut_off;
        let counts = inner.index.entries.iter().filter(|e| e.seg != DEAD).fold(
            std::collections::HashMap::<u32, u64>::new(),
            |mut m, e| {
                *m.entry(e.seg).or_default() += 1;
                m
            },
        );
        for s in &mut inner.segs {
            s.live = counts.get(&s.no).copied().unwrap_or(0);
        }
        drop(inner);
        Ok(store)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fnr(&self) -> Fnr {
        self.fnr
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The LSN the store holds the file as of.
    pub fn applied(&self) -> Lsn {
        self.read().applied
    }

    /// What open found after the last mark (until [`LogStore::repair`]).
    pub fn tail(&self) -> Option<LogTail> {
        self.read().tail.clone()
    }

    /// Removes what follows the last mark (truncates its segment, removes
    /// later ones): the protection log will write it again.
    pub fn repair(&self) -> Result<(), LogStoreError> {
        let mut inner = self.write();
        let Some(tail) = inner.tail.take() else {
            return Ok(());
        };
        let last = inner.segs.last().expect("a store has a segment");
        last.file
            .set_len(last.len)
            .map_err(|e| self.io("truncate", e))?;
        last.file.sync_all().map_err(|e| self.io("sync", e))?;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| self.io("list", e))? {
            let entry = entry.map_err(|e| self.io("list", e))?;
            let later = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("seg-"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|no| no > tail.segment);
            if later {
                std::fs::remove_file(entry.path()).map_err(|e| self.io("remove", e))?;
            }
        }
        sync_dir(&self.dir).map_err(|e| self.io("sync directory", e))?;
        Ok(())
    }

    fn new_segment(&self, no: u32) -> Result<Segment, LogStoreError> {
        let path = self.seg_path(no);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| self.io("create segment", e))?;
        let mut h = Vec::with_capacity(SEG_HEADER as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.fnr.0.to_be_bytes());
        h.extend_from_slice(&no.to_be_bytes());
        file.write_all_at(&h, 0)
            .map_err(|e| self.io("write segment header", e))?;
        Ok(Segment {
            no,
            file,
            len: SEG_HEADER,
            live: 0,
        })
    }

    /// Appends `buf` (whole frames) to the active segment.
    fn write_out(&self, inner: &mut Inner, buf: &[u8]) -> Result<(), LogStoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        let seg = inner.segs.last_mut().expect("a store has a segment");
        if let Err(e) = seg.file.write_all_at(buf, seg.len) {
            inner.failed = true;
            return Err(self.io("write", e));
        }
        seg.len += buf.len() as u64;
        Ok(())
    }

    /// Writes `records` (seq, `None`: removed) and a mark of `lsn`. A
    /// segment that fills is synced and closed, and segments at the front
    /// with no live record left are removed.
    pub fn apply<'a>(
        &self,
        records: impl IntoIterator<Item = (Isn, Option<&'a [u8]>)>,
        lsn: Lsn,
    ) -> Result<(), LogStoreError> {
        let mut guard = self.write();
        let inner = &mut *guard;
        if inner.failed {
            return Err(self.io("write", "an earlier write failed"));
        }
        self.append(inner, records, lsn, None)
    }

    /// Writes new records — a bulk chunk — and a mark of the LSN the store
    /// is already at, then syncs: they are part of the store from here on,
    /// before the protection-log entry that names them
    /// ([`crate::catalog::CatalogOp::Bulk`]) is written. Should that entry
    /// never be, restart recovery's rescan finds records the log does not
    /// account for.
    pub fn bulk<'a>(
        &self,
        records: impl IntoIterator<Item = (Isn, &'a [u8])>,
    ) -> Result<(), LogStoreError> {
        let mut guard = self.write();
        let inner = &mut *guard;
        self.append_new(inner, records, None)?;
        let synced = inner
            .segs
            .last()
            .expect("a store has a segment")
            .file
            .sync_data();
        if let Err(e) = synced {
            inner.failed = true;
            return Err(self.io("sync", e));
        }
        // A segment made since the directory was last synced: its name too.
        if inner.dir_dirty {
            sync_dir(&self.dir).map_err(|e| self.io("sync directory", e))?;
            inner.dir_dirty = false;
        }
        Ok(())
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        let inner = self.read();
        inner.index.entries.len() == inner.index.dead
    }

    /// Writes new records (ascending seqs above any the store held), in
    /// batches, then syncs: a file restored whole into a new database,
    /// whose protection-log entry naming the records comes after (see
    /// [`crate::store::PageStore::ingest`]). Each segment that fills is
    /// synced by a thread of its own while the next is written (the
    /// writer does not wait on the disk for each), and all of them before
    /// this returns.
    pub fn ingest(
        &self,
        records: &mut dyn Iterator<Item = (Isn, Vec<u8>)>,
    ) -> Result<(), LogStoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<(u32, File)>();
        let dir = self.dir.clone();
        let behind = std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || {
                for (no, f) in rx {
                    f.sync_data()
                        .map_err(|e| format!("syncing segment {no} of {}: {e}", dir.display()))?;
                }
                Ok::<(), String>(())
            })
            .map_err(|e| self.io("start a sync thread", e))?;
        let written = self.ingest_batches(records, &tx);
        drop(tx);
        let synced = match behind.join() {
            Ok(r) => r.map_err(|e| self.io("sync", e)),
            Err(_) => Err(self.io("sync", "the sync thread panicked")),
        };
        if written.is_err() || synced.is_err() {
            self.write().failed = true;
        }
        synced?;
        written?;
        let lsn = self.applied();
        self.sync(lsn)
    }

    fn ingest_batches(
        &self,
        records: &mut dyn Iterator<Item = (Isn, Vec<u8>)>,
        filled: &std::sync::mpsc::Sender<(u32, File)>,
    ) -> Result<(), LogStoreError> {
        let mut batch: Vec<(Isn, Vec<u8>)> = Vec::with_capacity(4096);
        loop {
            batch.clear();
            batch.extend((&mut *records).take(4096));
            if batch.is_empty() {
                break;
            }
            let mut guard = self.write();
            self.append_new(
                &mut guard,
                batch.iter().map(|(i, v)| (*i, v.as_slice())),
                Some(filled),
            )?;
        }
        Ok(())
    }

    /// Appends new records, marked as of the LSN the store is already at.
    fn append_new<'a>(
        &self,
        inner: &mut Inner,
        records: impl IntoIterator<Item = (Isn, &'a [u8])>,
        filled: Option<&std::sync::mpsc::Sender<(u32, File)>>,
    ) -> Result<(), LogStoreError> {
        if inner.failed {
            return Err(self.io("write", "an earlier write failed"));
        }
        let lsn = inner.applied;
        let records = records.into_iter().map(|(i, v)| (i, Some(v)));
        self.append(inner, records, lsn, filled)
    }

    fn append<'a>(
        &self,
        inner: &mut Inner,
        records: impl IntoIterator<Item = (Isn, Option<&'a [u8]>)>,
        lsn: Lsn,
        filled: Option<&std::sync::mpsc::Sender<(u32, File)>>,
    ) -> Result<(), LogStoreError> {
        let mut buf = Vec::new();
        for (isn, v) in records {
            let need = FRAME_HEADER as u64 + v.map_or(0, |v| v.len() as u64);
            let active = inner.segs.last().expect("a store has a segment");
            // (Never an empty segment: a record larger than a segment
            // gets one of its own.)
            let used = active.len + buf.len() as u64;
            if used > SEG_HEADER && used + need > self.seg_size {
                self.write_out(inner, &buf)?;
                buf.clear();
                let active = inner.segs.last().expect("a store has a segment");
                match filled {
                    // Synced behind the writer (see `ingest`).
                    Some(tx) => {
                        let f = active.file.try_clone().map_err(|e| self.io("sync", e))?;
                        tx.send((active.no, f))
                            .map_err(|_| self.io("sync", "the sync thread stopped"))?;
                    }
                    None => active.file.sync_data().map_err(|e| self.io("sync", e))?,
                }
                let next = self.new_segment(active.no + 1)?;
                inner.dir_dirty = true;
                inner.segs.push(next);
            }
            let active = inner.segs.last().expect("a store has a segment");
            let (no, off) = (active.no, active.len + buf.len() as u64);
            let old = match v {
                Some(v) => {
                    frame(&mut buf, PUT, isn.0, v);
                    let off =
                        u32::try_from(off).map_err(|_| self.io("write", "segment over 4 GiB"))?;
                    let old = inner.index.put(isn.0, no, off);
                    if let Some(s) = inner.segs.iter_mut().rev().find(|s| s.no == no) {
                        s.live += 1;
                    }
                    old
                }
                None => {
                    frame(&mut buf, DEL, isn.0, &[]);
                    inner.index.delete(isn.0)
                }
            };
            if let Some(old) = old {
                if let Some(s) = inner.segs.iter_mut().find(|s| s.no == old) {
                    s.live -= 1;
                }
            }
        }
        frame(&mut buf, MARK, lsn.0, &[]);
        self.write_out(inner, &buf)?;
        inner.applied = lsn;
        while inner.segs.len() > 1 && inner.segs[0].live == 0 {
            let path = self.seg_path(inner.segs[0].no);
            std::fs::remove_file(&path).map_err(|e| self.io("remove segment", e))?;
            inner.segs.remove(0);
        }
        Ok(())
    }

    /// Writes a mark of `lsn` if the store is behind it: the caller knows
    /// no record of this file changed in between. Then syncs.
    pub fn sync(&self, lsn: Lsn) -> Result<(), LogStoreError> {
        let mut inner = self.write();
        if inner.failed {
            return Err(self.io("write", "an earlier write failed"));
        }
        if inner.applied < lsn {
            let mut buf = Vec::new();
            frame(&mut buf, MARK, lsn.0, &[]);
            self.write_out(&mut inner, &buf)?;
            inner.applied = lsn;
        }
        inner
            .segs
            .last()
            .expect("a store has a segment")
            .file
            .sync_data()
            .map_err(|e| self.io("sync", e))?;
        sync_dir(&self.dir).map_err(|e| self.io("sync directory", e))?;
        inner.dir_dirty = false;
        Ok(())
    }

    fn damaged(&self, seg: u32, offset: u64, reason: String) -> LogStoreError {
        LogStoreError::Damaged {
            dir: self.dir.display().to_string(),
            fault: LogFault {
                path: self.seg_path(seg).display().to_string(),
                segment: seg,
                offset,
                reason,
            },
        }
    }

    /// Reads the frame of `e` (its bytes checked) from `file`.
    fn read_entry(&self, file: &File, e: Entry) -> Result<Vec<u8>, LogStoreError> {
        let mut buf = vec![0u8; FRAME_HEADER + READ_AHEAD];
        let n = read_at_most(file, &mut buf, u64::from(e.off)).map_err(|x| self.io("read", x))?;
        buf.truncate(n);
        loop {
            match parse(&buf) {
                Ok(Some(f)) if f.kind == PUT && f.key == e.isn => return Ok(f.payload.to_vec()),
                Ok(Some(_)) => {
                    return Err(self.damaged(
                        e.seg,
                        e.off.into(),
                        format!("the frame of seq {} holds another record", e.isn),
                    ))
                }
                Ok(None) => {
                    let want = if buf.len() >= FRAME_HEADER {
                        FRAME_HEADER
                            + u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize
                    } else {
                        FRAME_HEADER
                    };
                    if want <= buf.len() {
                        return Err(self.damaged(e.seg, e.off.into(), "a frame cut short".into()));
                    }
                    let have = buf.len();
                    buf.resize(want, 0);
                    let n = read_at_most(file, &mut buf[have..], u64::from(e.off) + have as u64)
                        .map_err(|x| self.io("read", x))?;
                    if n < want - have {
                        return Err(self.damaged(e.seg, e.off.into(), "a frame cut short".into()));
                    }
                }
                Err(reason) => return Err(self.damaged(e.seg, e.off.into(), reason)),
            }
        }
    }

    pub fn get(&self, isn: Isn) -> Result<Option<Vec<u8>>, LogStoreError> {
        let inner = self.read();
        let Some(e) = inner.index.get(isn.0) else {
            return Ok(None);
        };
        let seg = inner
            .segs
            .iter()
            .find(|s| s.no == e.seg)
            .ok_or_else(|| self.damaged(e.seg, 0, "segment gone".into()))?;
        self.read_entry(&seg.file, e).map(Some)
    }

    /// Up to [`SCAN_CHUNK`] records with seq ≥ `from`, in order, read under
    /// one lock; runs of frames in one segment are read with one call.
    fn chunk(&self, from: u64) -> Result<Vec<(Isn, Vec<u8>)>, LogStoreError> {
        let inner = self.read();
        let entries = inner.index.from(from, SCAN_CHUNK);
        let mut out = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            // A run: entries of one segment at increasing offsets.
            let mut j = i + 1;
            while j < entries.len()
                && entries[j].seg == entries[i].seg
                && entries[j].off > entries[j - 1].off
            {
                j += 1;
            }
            let seg = inner
                .segs
                .iter()
                .find(|s| s.no == entries[i].seg)
                .ok_or_else(|| self.damaged(entries[i].seg, 0, "segment gone".into()))?;
            let start = u64::from(entries[i].off);
            let end = match entries.get(j) {
                // Up to the next entry when it follows in the same segment.
                Some(n) if n.seg == seg.no && u64::from(n.off) > start => u64::from(n.off),
                _ => (u64::from(entries[j - 1].off) + (FRAME_HEADER + READ_AHEAD) as u64)
                    .min(seg.len),
            };
            let mut buf = vec![0u8; (end - start) as usize];
            let n = read_at_most(&seg.file, &mut buf, start).map_err(|x| self.io("read", x))?;
            buf.truncate(n);
            for e in &entries[i..j] {
                let at = (u64::from(e.off) - start) as usize;
                match buf.get(at..).map(parse) {
                    Some(Ok(Some(f))) if f.kind == PUT && f.key == e.isn => {
                        out.push((Isn(e.isn), f.payload.to_vec()))
                    }
                    Some(Ok(None)) => out.push((Isn(e.isn), self.read_entry(&seg.file, *e)?)),
                    Some(Ok(Some(_))) => {
                        return Err(self.damaged(
                            e.seg,
                            e.off.into(),
                            format!("the frame of seq {} holds another record", e.isn),
                        ))
                    }
                    Some(Err(reason)) => return Err(self.damaged(e.seg, e.off.into(), reason)),
                    None => out.push((Isn(e.isn), self.read_entry(&seg.file, *e)?)),
                }
            }
            i = j;
        }
        Ok(out)
    }

    /// The records with seq ≥ `from`, in order.
    pub fn scan(self: &std::sync::Arc<Self>, from: Isn) -> Scan {
        Scan {
            store: self.clone(),
            next: from.0,
            buf: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// Reads every frame of every segment, checking each: the first bad
    /// one, if any.
    pub fn verify(&self) -> Result<Option<LogFault>, LogStoreError> {
        let inner = self.read();
        for seg in &inner.segs {
            let mut bytes = vec![0u8; seg.len as usize];
            let n = read_at_most(&seg.file, &mut bytes, 0).map_err(|e| self.io("read", e))?;
            let path = self.seg_path(seg.no).display().to_string();
            let fault = |offset: u64, reason: String| LogFault {
                path: path.clone(),
                segment: seg.no,
                offset,
                reason,
            };
            if n < bytes.len() {
                return Ok(Some(fault(
                    n as u64,
                    "the segment is shorter than written".into(),
                )));
            }
            if bytes.len() < SEG_HEADER as usize || &bytes[0..8] != MAGIC {
                return Ok(Some(fault(0, "bad segment header".into())));
            }
            let mut pos = SEG_HEADER as usize;
            while pos < bytes.len() {
                match parse(&bytes[pos..]) {
                    Ok(Some(f)) => pos += f.len,
                    Ok(None) => return Ok(Some(fault(pos as u64, "a frame cut short".into()))),
                    Err(reason) => return Ok(Some(fault(pos as u64, reason))),
                }
            }
        }
        Ok(None)
    }

    /// The segments, oldest first: (number, bytes).
    pub fn segments(&self) -> Vec<(u32, u64)> {
        self.read().segs.iter().map(|s| (s.no, s.len)).collect()
    }
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A scan of a log store, read a chunk at a time (records committed while
/// it runs may show, as they would in a scan that started later).
pub struct Scan {
    store: std::sync::Arc<LogStore>,
    next: u64,
    buf: std::collections::VecDeque<(Isn, Vec<u8>)>,
    done: bool,
}

impl Iterator for Scan {
    type Item = Result<(Isn, Vec<u8>), LogStoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            match self.store.chunk(self.next) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(c) => {
                    if c.len() < SCAN_CHUNK {
                        self.done = true;
                    }
                    match c.last() {
                        Some((isn, _)) if isn.0 < u64::MAX => self.next = isn.0 + 1,
                        Some(_) => self.done = true,
                        None => {}
                    }
                    self.buf.extend(c);
                }
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn all(s: &Arc<LogStore>) -> BTreeMap<u64, Vec<u8>> {
        s.scan(Isn(0))
            .map(|r| r.map(|(i, v)| (i.0, v)).expect("scan"))
            .collect()
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u64, Vec<u8>),
        Del(u64),
        Reopen,
        /// Removes everything below this seq (cleanup).
        Cut(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..400, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(i, v)| Op::Put(i, v)),
            2 => (0u64..400).prop_map(Op::Del),
            1 => Just(Op::Reopen),
            1 => (0u64..400).prop_map(Op::Cut),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The store, written in batches, read back through scans and
        /// point reads, and reopened, always equals a map given the same
        /// writes; removed segments never hold a live record.
        #[test]
        fn the_store_equals_a_map_through_writes_cleanups_and_reopens(
            batches in proptest::collection::vec(proptest::collection::vec(op(), 1..12), 1..30)
        ) {
            let t = tempfile::tempdir().expect("tempdir");
            let dir = t.path().join("log-7");
            let mut s = Arc::new(LogStore::create(&dir, Fnr(7), 4096, Lsn(1)).expect("create"));
            let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut lsn = 1;
            for b in batches {
                let mut writes: Vec<(Isn, Option<Vec<u8>>)> = Vec::new();
                for o in b {
                    match o {
                        Op::Put(i, v) => { model.insert(i, v.clone()); writes.push((Isn(i), Some(v))); }
                        Op::Del(i) => { model.remove(&i); writes.push((Isn(i), None)); }
                        Op::Cut(below) => {
                            let gone: Vec<u64> = model.range(..below).map(|(k, _)| *k).collect();
                            for k in gone { model.remove(&k); writes.push((Isn(k), None)); }
                        }
                        Op::Reopen => {
                            lsn += 1;
                            s.apply(writes.iter().map(|(i, v)| (*i, v.as_deref())), Lsn(lsn)).expect("apply");
                            writes.clear();
                            drop(s);
                            s = Arc::new(LogStore::open(&dir, Fnr(7), 4096).expect("open"));
                            prop_assert!(s.tail().is_none());
                            prop_assert_eq!(s.applied(), Lsn(lsn));
                        }
                    }
                }
                lsn += 1;
                s.apply(writes.iter().map(|(i, v)| (*i, v.as_deref())), Lsn(lsn)).expect("apply");
                prop_assert_eq!(&all(&s), &model);
                for (k, v) in model.iter().take(5) {
                    let got = s.get(Isn(*k)).expect("get");
                    prop_assert_eq!(got.as_ref(), Some(v));
                }
                prop_assert_eq!(s.get(Isn(1000)).expect("get"), None);
            }
            prop_assert_eq!(s.verify().expect("verify"), None);
            drop(s);
            let s = Arc::new(LogStore::open(&dir, Fnr(7), 4096).expect("open"));
            prop_assert_eq!(all(&s), model);
        }
    }

    fn filled(dir: &Path, n: u64) -> Arc<LogStore> {
        let s = Arc::new(LogStore::create(dir, Fnr(3), 4096, Lsn(1)).expect("create"));
        for i in 0..n {
            let v = [i as u8; 100];
            s.apply([(Isn(i + 1), Some(&v[..]))], Lsn(i + 2))
                .expect("apply");
        }
        s
    }

    #[test]
    fn a_batch_cut_short_is_dropped_back_to_the_last_mark() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("log");
        let s = filled(&dir, 10);
        let last = *s.segments().last().expect("segment");
        drop(s);
        // Half a frame past the last mark, as a kill -9 mid-write leaves.
        let path = dir.join(segment_name(last.0));
        let mut extra = Vec::new();
        frame(&mut extra, PUT, 11, &[7; 50]);
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all_at(&extra[..30], last.1).expect("write");
        let s = Arc::new(LogStore::open(&dir, Fnr(3), 4096).expect("open"));
        assert_eq!(s.applied(), Lsn(11));
        let tail = s.tail().expect("a tail");
        assert_eq!(tail.bytes, 30);
        s.repair().expect("repair");
        assert_eq!(all(&s).len(), 10);
        drop(s);
        let s = Arc::new(LogStore::open(&dir, Fnr(3), 4096).expect("open"));
        assert!(s.tail().is_none());
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), last.1);
    }

    #[test]
    fn a_flipped_byte_is_found_and_named() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("log");
        let s = filled(&dir, 100);
        assert!(s.segments().len() > 2, "{:?}", s.segments());
        drop(s);
        let path = dir.join(segment_name(1));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[200] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let s = Arc::new(LogStore::open(&dir, Fnr(3), 4096).expect("open"));
        let tail = s.tail().expect("a tail");
        let fault = tail.fault.expect("a fault");
        assert_eq!(fault.segment, 1);
        assert!(fault.offset <= 200, "{fault}");
        // The store stops at the last mark before it.
        assert!(s.applied() < Lsn(10), "{:?}", s.applied());
        assert!(all(&s).len() < 10);
    }

    #[test]
    fn a_damaged_frame_read_by_a_running_store_is_an_error_not_a_record() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("log");
        let s = filled(&dir, 5);
        let path = dir.join(segment_name(1));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[SEG_HEADER as usize + FRAME_HEADER + 3] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let e = s.get(Isn(1)).expect_err("damaged");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        let f = s.verify().expect("verify").expect("a fault");
        // The first frame is the mark of the store's creation.
        assert_eq!((f.segment, f.offset), (1, SEG_HEADER + FRAME_HEADER as u64));
        assert!(s.scan(Isn(0)).any(|r| r.is_err()));
    }

    #[test]
    fn cleanup_from_the_front_removes_whole_segments_only() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("log");
        let s = filled(&dir, 200);
        let before = s.segments();
        assert!(before.len() > 4);
        // Delete the first 100 records.
        let dels: Vec<(Isn, Option<&[u8]>)> = (1..=100).map(|i| (Isn(i), None)).collect();
        s.apply(dels, Lsn(300)).expect("apply");
        let after = s.segments();
        assert!(after.len() < before.len());
        assert!(after[0].0 > 1);
        // Every remaining record is still there, and nothing before 101.
        let got = all(&s);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            (101..=200).collect::<Vec<_>>()
        );
        drop(s);
        let s = Arc::new(LogStore::open(&dir, Fnr(3), 4096).expect("open"));
        assert_eq!(all(&s), got);
    }

    #[test]
    fn an_ingest_fills_segments_synced_behind_it_and_reads_back_after_a_reopen() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("log");
        let s = Arc::new(LogStore::create(&dir, Fnr(3), 4096, Lsn(7)).expect("create"));
        assert!(s.is_empty());
        let want: BTreeMap<u64, Vec<u8>> = (1..=300).map(|i| (i, vec![i as u8; 100])).collect();
        let mut recs = want.iter().map(|(i, v)| (Isn(*i), v.clone()));
        s.ingest(&mut recs).expect("ingest");
        assert!(!s.is_empty());
        assert!(s.segments().len() > 5, "{:?}", s.segments());
        assert_eq!(all(&s), want);
        // At the LSN it was at: the records are new, named by a later entry.
        assert_eq!(s.applied(), Lsn(7));
        drop(s);
        let s = Arc::new(LogStore::open(&dir, Fnr(3), 4096).expect("open"));
        assert_eq!(all(&s), want);
        assert_eq!((s.applied(), s.tail().is_none()), (Lsn(7), true));
    }
}
