//! Copy files: hot, consistent copies of database files.
//!
//! A copy is taken while the database keeps committing:
//! 1. the copy point at the start (LSN `start`, catalog and metas) is read
//!    under the state lock, and the page store is let catch up to it;
//! 2. each file's records are scanned from the page store (a fuzzy dump:
//!    each record as of some LSN at or after `start`);
//! 3. the copy point at the end (LSN `lsn`) is read, and waited for;
//! 4. the protection-log slice `(start, lsn]` — every record those commits
//!    wrote to the copied files, derived log records included — is read
//!    from the log itself and appended.
//!
//! Replaying the slice's after-images over the dump, in LSN order, gives
//! each file exactly as of `lsn`, whatever the scan saw of the commits in
//! between; the copy's end frame carries the file's count and digest as of
//! `lsn` and a reader proves the result against them.
//!
//! Layout: the magic `ETPCOPY1`, then frames `[len u32 LE][crc32c u32 LE]
//! [payload]`, the CRC over the length bytes and the payload, the payload a
//! MessagePack [`CopyFrame`]: one header, record frames in ascending isn,
//! slice frames in LSN order, one end frame. The whole file's blake3 is
//! returned to the caller, who catalogues it. Written through the medium
//! seam ([`crate::medium`]), as the protection log is.
//!
//! Above one copy file: [`area`], the copy area with its catalog of copy
//! sets, and [`restore`]: verify, restore, regenerate and back out. They
//! live here, beside the engine, so a node restores a set into its own
//! database (a recovery step) without the binary lending it a closure.

/// Returns a [`SetError::Refused`] with a formatted message (as anyhow's `bail!`).
macro_rules! refused {
    ($($t:tt)*) => {
        return Err($crate::copy::SetError::Refused(format!($($t)*)))
    };
}

pub mod area;
mod error;
pub mod restore;

pub use error::{SetError, Within};

use crate::catalog::{FileDef, Role};
use crate::database::CopyPoint;
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Lsn, Seq};
use crate::medium::{Medium, MediumDir};
use crate::slice::{read_slice, SliceBase, SliceError};
use crate::Database;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub const COPY_MAGIC: &[u8; 8] = b"ETPCOPY1";
/// The copy format this engine writes and reads.
pub const COPY_FORMAT: u32 = 1;
const FRAME_HEADER: usize = 8;

/// How deep a copy frame's MessagePack may nest: a frame nests a few
/// levels, and skipping a crafted one nested hundreds deep (rmp-serde's
/// own bound is 1024) overflowed a 2 MiB thread stack (found by fuzzing;
/// a node restores on such threads).
const MAX_FRAME_DEPTH: usize = 32;

/// Decodes a frame's payload, nested at most [`MAX_FRAME_DEPTH`] deep.
fn shallow<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_FRAME_DEPTH);
    T::deserialize(&mut de)
}
/// The largest frame payload accepted when reading.
const MAX_FRAME: usize = 64 << 20;
const SCAN_RECORDS: usize = 16_384;
/// A dump reads, encodes and writes in pieces of about 1 MiB, so what
/// `pwrite` copies into the page cache is still in the core's cache: with
/// 4 MiB scans and 8 MiB writes, that copy was 45 % of a copy's CPU and an
/// idle copy of 2.1 GB ran at 490–545 MB/s; with 1 MiB, 795–804 MB/s
/// (`etp bench copy`, 1M records of 1 KiB, session 17).
const SCAN_BYTES: usize = 1 << 20;
const WRITE_BUFFER: usize = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyHeader {
    pub format: u32,
    /// The copy set this file belongs to.
    pub set: String,
    pub dbid: DbId,
    pub def: FileDef,
    /// LSN the page-store scan started at.
    pub start_lsn: Lsn,
    pub start_meta: FileMeta,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyEnd {
    /// The copy is the file as of this LSN.
    pub lsn: Lsn,
    pub time_us: i64,
    /// Count, digest and next isn of the file as of `lsn`.
    pub meta: FileMeta,
    /// For a master or its log: the last seq of the log as of `lsn`.
    #[serde(default)]
    pub seq: Option<Seq>,
    pub dump_records: u64,
    pub slice_commits: u64,
    pub slice_records: u64,
}

/// One frame. `R` is how record bytes are held: read back as `ByteBuf`,
/// written straight from the page store (same encoding).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CopyFrame<R = ByteBuf> {
    Header(CopyHeader),
    /// Records of the fuzzy dump, ascending isn.
    Records(Vec<(Isn, R)>),
    /// What one commit of the slice wrote to this file (None: deleted).
    Slice {
        lsn: Lsn,
        time_us: i64,
        records: Vec<(Isn, Option<ByteBuf>)>,
    },
    End(CopyEnd),
}

/// A [`CopyFrame`] as the first pass of [`resolve_with`] reads it: the
/// dump's records skipped over, not decoded.
#[derive(Deserialize)]
enum Skimmed {
    Header(CopyHeader),
    Records(serde::de::IgnoredAny),
    Slice {
        lsn: Lsn,
        #[serde(rename = "time_us")]
        _time_us: serde::de::IgnoredAny,
        records: Vec<(Isn, Option<ByteBuf>)>,
    },
    End(CopyEnd),
}

/// A copy file that failed a check, or could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("copy file {path}: I/O error: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("copy file {path} is damaged at offset {offset}: {reason}")]
    Damaged {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("copy file {path} does not hold what it should: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("cannot copy file {fnr}: {reason}")]
    Refused { fnr: Fnr, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Slice(#[from] SliceError),
}

/// One file of a copy, as written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CopiedFile {
    pub def: FileDef,
    /// File name inside the copy directory.
    pub name: String,
    pub bytes: u64,
    /// blake3 of the whole copy file, hex.
    pub blake3: String,
    pub start_lsn: Lsn,
    /// What its end frame says.
    #[serde(flatten)]
    pub end: CopyEnd,
}

/// The files of one copy, all as of one LSN.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Copied {
    pub dbid: DbId,
    pub start_lsn: Lsn,
    pub lsn: Lsn,
    pub time_us: i64,
    /// Per master copied: the last seq of its log as of `lsn`.
    pub seqs: BTreeMap<Fnr, Seq>,
    pub files: Vec<CopiedFile>,
}

/// The copy file name for a file.
pub fn copy_file_name(def: &FileDef) -> String {
    format!("{:05}-{}.etpcopy", def.fnr.0, def.name)
}

struct FrameWriter {
    medium: Arc<dyn Medium>,
    path: String,
    offset: u64,
    buf: Vec<u8>,
    hash: blake3::Hasher,
    /// Paces the writes against the database's commits, when dumping.
    pacer: Option<Pacer>,
}

/// Holds a copy's writes back while they slow the database's commits.
///
/// Each commit's `fdatasync` ends in a cache flush of the device, which
/// must also persist whatever the copy wrote since the last one: a copy
/// writing at the disk's rate took a single-row writer beside it to about
/// half its rate alone. After each buffer written, the pacer compares the
/// mean log sync latency of the commits made meanwhile (at least
/// [`Pacer::COMMITS`] of them) with a baseline: the lowest window mean
/// seen, drifting up by 5 % a window (the mean since the database opened,
/// to begin with). Above
/// [`Pacer::SLOWER`] times it, it sleeps before the next write (doubling
/// the pause up to [`Pacer::MAX`]); at or below, it halves the pause. With
/// no commits meanwhile it does not wait at all.
struct Pacer {
    db: Database,
    /// The fsync histogram's (sum in seconds, count) at the last write.
    last: (f64, u64),
    /// When the window began (at `last`).
    since: std::time::Instant,
    lowest: f64,
    pause: std::time::Duration,
}

impl Pacer {
    const MIN: std::time::Duration = std::time::Duration::from_millis(2);
    const MAX: std::time::Duration = std::time::Duration::from_millis(64);
    /// The fewest commits meanwhile that say anything.
    const COMMITS: u64 = 16;
    /// How much slower than the lowest mean the commits' syncs may get.
    /// Measured (`etp bench copy --records 300000`, interleaved, the
    /// writer's rate during the copies over its rate alone): no pacing
    /// 0.57 / 0.61 / 0.66 / 0.57, 1.5 0.74 / 0.64 / 0.70 / 0.62, 1.2
    /// 0.76 / 0.71; the copy under load went from 400-440 to 316-331 MB/s
    /// (at 1M records, 157 MB/s with the writer at 0.68).
    const SLOWER: f64 = 1.2;

    fn new(db: &Database) -> Pacer {
        let f = db.metrics().fsync;
        let count = f.count();
        Pacer {
            db: db.clone(),
            last: (f.sum, count),
            since: std::time::Instant::now(),
            // The mean since the database opened, before this copy.
            lowest: if count >= Self::COMMITS {
                f.sum / count as f64
            } else {
                f64::INFINITY
            },
            pause: std::time::Duration::ZERO,
        }
    }

    /// Called after each buffer written: waits if the commits are slowed.
    /// A window spans buffers until it holds [`Pacer::COMMITS`] commits (a
    /// 1 MiB buffer is written in about a millisecond, with a commit or
    /// none beside it); meanwhile the pause decided last goes on, and a
    /// window with no commit for 100 ms (no writer) ends it.
    fn pace(&mut self) {
        let f = self.db.metrics().fsync;
        let (sum, count) = (f.sum, f.count());
        let (dsum, dcount) = (sum - self.last.0, count.saturating_sub(self.last.1));
        if dcount < Self::COMMITS {
            if dcount == 0 && self.since.elapsed() >= std::time::Duration::from_millis(100) {
                self.pause = std::time::Duration::ZERO;
            }
            if self.pause >= Self::MIN {
                std::thread::sleep(self.pause);
            }
            return;
        }
        self.last = (sum, count);
        self.since = std::time::Instant::now();
        let mean = dsum / dcount as f64;
        // The baseline drifts up a little each window, so one lucky window
        // (or a device that got slower for other reasons) does not hold
        // the copy back for the rest of it.
        self.lowest = mean.min(self.lowest * 1.05);
        self.pause = if mean > self.lowest * Self::SLOWER {
            (self.pause * 2).clamp(Self::MIN, Self::MAX)
        } else {
            self.pause / 2
        };
        if self.pause >= Self::MIN {
            std::thread::sleep(self.pause);
        }
    }
}

impl FrameWriter {
    fn new(medium: Arc<dyn Medium>, path: String) -> FrameWriter {
        let mut w = FrameWriter {
            medium,
            path,
            offset: 0,
            buf: Vec::with_capacity(2 * WRITE_BUFFER),
            hash: blake3::Hasher::new(),
            pacer: None,
        };
        w.buf.extend_from_slice(COPY_MAGIC);
        w
    }

    fn io(&self, source: std::io::Error) -> CopyError {
        CopyError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn frame<R: Serialize>(&mut self, f: &CopyFrame<R>) -> Result<(), CopyError> {
        // Encoded in place after a header patched once the length is known.
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER]);
        if let Err(e) = rmp_serde::encode::write(&mut self.buf, f) {
            self.buf.truncate(start);
            return Err(CopyError::Mismatch {
                path: self.path.clone(),
                reason: format!("a frame does not encode: {e}"),
            });
        }
        let len = self.buf.len() - start - FRAME_HEADER;
        if len > MAX_FRAME {
            self.buf.truncate(start);
            return Err(CopyError::Mismatch {
                path: self.path.clone(),
                reason: format!("a frame of {len} bytes is too large"),
            });
        }
        let lb = (len as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&lb), &self.buf[start + FRAME_HEADER..]);
        self.buf[start..start + 4].copy_from_slice(&lb);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CopyError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.medium
            .write_at(&self.buf, self.offset)
            .map_err(|e| self.io(e))?;
        self.hash.update(&self.buf);
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        if let Some(p) = &mut self.pacer {
            p.pace();
        }
        Ok(())
    }

    /// Flushes and syncs; returns the length and blake3 of the file.
    fn finish(mut self) -> Result<(u64, String), CopyError> {
        self.flush()?;
        self.medium.sync().map_err(|e| self.io(e))?;
        Ok((self.offset, self.hash.finalize().to_hex().to_string()))
    }
}

/// The nice value of a copy's dump threads. On two cores the two dumps (a
/// master and its log) took both, and a writer beside the copy committed at
/// 0.52-0.55 of its rate alone; at nice 10, 0.59-0.66 (`etp bench copy`,
/// two runs each, interleaved). The rest of the slowdown is the device:
/// each commit's cache flush also flushes the copy's writes.
const DUMP_NICE: i32 = 10;

/// Puts the calling dump thread [`DUMP_NICE`] behind where it was for the
/// CPU (a lower priority is always allowed; not getting it is not the
/// copy's failure). Not on sled: a sled read may start one of its I/O
/// threads, which would inherit the priority and keep it for everyone.
#[cfg(target_os = "linux")]
fn lower_priority(db: &Database) {
    if db.engine() == crate::store::Engine::Sled {
        return;
    }
    let me = rustix::thread::gettid();
    if let Ok(now) = rustix::process::getpriority_process(Some(me)) {
        let _ = rustix::process::setpriority_process(Some(me), (now + DUMP_NICE).min(19));
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_db: &Database) {}

/// Writes a copy file's header and the fuzzy dump of its file; returns the
/// writer (for the slice and end frames) and the records dumped.
fn dump_file(
    db: &Database,
    dir: &dyn MediumDir,
    header: CopyHeader,
) -> Result<(FrameWriter, u64), CopyError> {
    let fnr = header.def.fnr;
    let name = copy_file_name(&header.def);
    let path = dir.describe(&name);
    let medium = dir.create(&name).map_err(|source| CopyError::Io {
        path: path.clone(),
        source,
    })?;
    let mut w = FrameWriter::new(medium, path);
    w.pacer = Some(Pacer::new(db));
    w.frame(&CopyFrame::<ByteBuf>::Header(header))?;
    let mut from = Isn(1);
    let mut n = 0u64;
    loop {
        let batch = db.scan_store(fnr, from, SCAN_RECORDS, SCAN_BYTES)?;
        let Some((last, _)) = batch.last() else { break };
        from = Isn(last.0 + 1);
        n += batch.len() as u64;
        w.frame(&CopyFrame::Records(batch))?;
    }
    Ok((w, n))
}

/// Takes a hot, consistent copy of `files` of `db` into `dir` (see the
/// module docs), naming the copy set `set`. Every file must exist and be
/// undamaged. `progress` is called with the bytes written so far.
pub fn take(
    db: &Database,
    files: &[Fnr],
    dir: &dyn MediumDir,
    set: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied, CopyError> {
    let p0 = db.copy_point()?;
    let mut defs = Vec::new();
    for fnr in files {
        let def = p0.catalog.get(fnr).cloned().ok_or(CopyError::Refused {
            fnr: *fnr,
            reason: "no such file".into(),
        })?;
        if let Some(reason) = p0.damaged.get(fnr) {
            return Err(CopyError::Refused {
                fnr: *fnr,
                reason: format!("it is damaged ({reason}); a copy of it would be useless"),
            });
        }
        defs.push(def);
    }
    let meta_at =
        |p: &CopyPoint, fnr: Fnr| p.metas.get(&fnr).copied().unwrap_or(FileMeta::new(fnr));
    // Each file's dump on a thread of its own (the scan, encoding and
    // hashing are CPU work; the files are independent).
    let dumps: Vec<Result<(FrameWriter, u64), CopyError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = defs
            .iter()
            .map(|def| {
                let header = CopyHeader {
                    format: COPY_FORMAT,
                    set: set.to_string(),
                    dbid: db.dbid(),
                    def: def.clone(),
                    start_lsn: p0.lsn,
                    start_meta: meta_at(&p0, def.fnr),
                };
                scope.spawn(move || {
                    lower_priority(db);
                    dump_file(db, dir, header)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(CopyError::Mismatch {
                        path: dir.describe(""),
                        reason: "a dump thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut writers = BTreeMap::new();
    let mut dumped = BTreeMap::new();
    let mut written = 0u64;
    for (def, d) in defs.iter().zip(dumps) {
        let (w, n) = d?;
        written += w.offset + w.buf.len() as u64;
        progress(written);
        dumped.insert(def.fnr, n);
        writers.insert(def.fnr, w);
    }
    let p1 = db.copy_point()?;
    let wanted: BTreeSet<Fnr> = files.iter().copied().collect();
    let mut base = SliceBase {
        catalog: p0.catalog.clone(),
        metas: p0.metas.clone(),
    };
    let mut commits: BTreeMap<Fnr, (u64, u64)> = BTreeMap::new();
    let mut failed = None;
    read_slice(
        &*db.plog_dir(),
        db.dbid(),
        &mut base,
        p0.lsn,
        Some(p1.lsn),
        &wanted,
        |c| {
            let c = c.whole()?;
            let mut per: BTreeMap<Fnr, Vec<(Isn, Option<ByteBuf>)>> = BTreeMap::new();
            for r in c.records {
                per.entry(r.fnr)
                    .or_default()
                    .push((r.isn, r.after.map(ByteBuf::from)));
            }
            for (fnr, records) in per {
                if let Some(w) = writers.get_mut(&fnr) {
                    let e = commits.entry(fnr).or_default();
                    e.0 += 1;
                    e.1 += records.len() as u64;
                    if let Err(e) = w.frame(&CopyFrame::<ByteBuf>::Slice {
                        lsn: c.lsn,
                        time_us: c.time_us,
                        records,
                    }) {
                        failed = Some(e);
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        },
    )?;
    if let Some(e) = failed {
        return Err(e);
    }
    let mut out = Vec::new();
    for def in defs {
        let Some(mut w) = writers.remove(&def.fnr) else {
            continue;
        };
        let (slice_commits, slice_records) = commits.get(&def.fnr).copied().unwrap_or_default();
        let log = match &def.role {
            Role::Master { log, .. } => Some(*log),
            Role::Log { .. } => Some(def.fnr),
            _ => None,
        };
        let end = CopyEnd {
            lsn: p1.lsn,
            time_us: p1.time_us,
            meta: meta_at(&p1, def.fnr),
            seq: log.map(|l| Seq(meta_at(&p1, l).next_isn.saturating_sub(1))),
            dump_records: dumped.get(&def.fnr).copied().unwrap_or(0),
            slice_commits,
            slice_records,
        };
        w.frame(&CopyFrame::<ByteBuf>::End(end.clone()))?;
        let (bytes, blake3) = w.finish()?;
        out.push(CopiedFile {
            name: copy_file_name(&def),
            def,
            bytes,
            blake3,
            start_lsn: p0.lsn,
            end,
        });
    }
    dir.sync_dir().map_err(|source| CopyError::Io {
        path: dir.describe(""),
        source,
    })?;
    let seqs = out
        .iter()
        .filter(|f| matches!(f.def.role, Role::Master { .. }))
        .filter_map(|f| f.end.seq.map(|q| (f.def.fnr, q)))
        .collect();
    Ok(Copied {
        dbid: db.dbid(),
        start_lsn: p0.lsn,
        lsn: p1.lsn,
        time_us: p1.time_us,
        seqs,
        files: out,
    })
}

/// Reads a copy file frame by frame, checking every CRC.
pub struct CopyReader {
    medium: Arc<dyn Medium>,
    path: String,
    len: u64,
    offset: u64,
    hash: blake3::Hasher,
    /// The last frame's payload (reused: a dump frame is megabytes).
    buf: Vec<u8>,
}

impl CopyReader {
    pub fn open(dir: &dyn MediumDir, name: &str) -> Result<CopyReader, CopyError> {
        let path = dir.describe(name);
        let io = |source| CopyError::Io {
            path: path.clone(),
            source,
        };
        let medium = dir.open(name).map_err(io)?;
        let len = medium.len().map_err(io)?;
        let mut r = CopyReader {
            medium,
            path,
            len,
            offset: 0,
            hash: blake3::Hasher::new(),
            buf: Vec::new(),
        };
        let mut magic = [0u8; 8];
        if len < 8 {
            return Err(r.damaged(0, "shorter than its magic".into()));
        }
        r.read(&mut magic)?;
        if &magic != COPY_MAGIC {
            return Err(r.damaged(0, "not a copy file (bad magic)".into()));
        }
        Ok(r)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn damaged(&self, offset: u64, reason: String) -> CopyError {
        CopyError::Damaged {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), CopyError> {
        self.medium
            .read_at(buf, self.offset)
            .map_err(|source| CopyError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.hash.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// The next frame and its offset; None at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<(u64, CopyFrame)>, CopyError> {
        let Some(at) = self.next_payload()? else {
            return Ok(None);
        };
        let frame: CopyFrame = shallow(&self.buf)
            .map_err(|e| self.damaged(at, format!("frame does not decode: {e}")))?;
        Ok(Some((at, frame)))
    }

    /// The next frame's header: its offset, payload length and CRC.
    fn next_header(&mut self) -> Result<Option<(u64, usize, u32)>, CopyError> {
        let at = self.offset;
        if at == self.len {
            return Ok(None);
        }
        if self.len - at < FRAME_HEADER as u64 {
            return Err(self.damaged(at, "a frame header is cut short".into()));
        }
        let mut h = [0u8; FRAME_HEADER];
        self.read(&mut h)?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_FRAME || (len as u64) > self.len - self.offset {
            return Err(self.damaged(at, format!("frame length {len} runs past the file")));
        }
        Ok(Some((at, len, crc)))
    }

    /// Reads the next frame's payload into `self.buf`, its CRC checked;
    /// its offset.
    fn next_payload(&mut self) -> Result<Option<u64>, CopyError> {
        let Some((at, len, crc)) = self.next_header()? else {
            return Ok(None);
        };
        self.read_payload(at, len, crc)?;
        Ok(Some(at))
    }

    /// Reads a payload of `len` bytes into `self.buf` and checks it
    /// against its frame's CRC (over the length bytes and the payload).
    fn read_payload(&mut self, at: u64, len: usize, crc: u32) -> Result<(), CopyError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        let read = self.read(&mut buf);
        self.buf = buf;
        read?;
        let got = crc32c::crc32c_append(crc32c::crc32c(&(len as u32).to_le_bytes()), &self.buf);
        if got != crc {
            return Err(self.damaged(at, "frame checksum mismatch".into()));
        }
        Ok(())
    }

    /// The next frame and its offset, but a dump's record frame is stepped
    /// over unread (its header only; what it holds, its CRC and the whole
    /// file's hash are for a full read to check), and its offset is all
    /// that is returned of it. For a first look at the structure and the
    /// log slice, which follow the dump.
    fn next_skimmed(&mut self) -> Result<Option<(u64, Skimmed)>, CopyError> {
        /// How a record frame's payload begins: a one-entry map keyed "Records".
        const RECORDS: &[u8] = b"\x81\xa7Records";
        let Some((at, len, crc)) = self.next_header()? else {
            return Ok(None);
        };
        if len >= RECORDS.len() {
            let mut head = [0u8; RECORDS.len()];
            self.medium
                .read_at(&mut head, self.offset)
                .map_err(|source| CopyError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if head == RECORDS {
                self.offset += len as u64;
                return Ok(Some((at, Skimmed::Records(serde::de::IgnoredAny))));
            }
        }
        self.read_payload(at, len, crc)?;
        let frame: Skimmed = shallow(&self.buf)
            .map_err(|e| self.damaged(at, format!("frame does not decode: {e}")))?;
        Ok(Some((at, frame)))
    }

    /// The blake3 of everything read so far, hex.
    pub fn hash_hex(&self) -> String {
        self.hash.finalize().to_hex().to_string()
    }
}

/// Records in ascending isn.
pub type Records = Vec<(Isn, Vec<u8>)>;

/// Final values (None: absent) laid over records that stream in ascending
/// isn: a copy's log slice over its dump, a roll-forward over a copy, the
/// before-images of a backout over a file.
pub struct Overlay {
    it: std::iter::Peekable<std::collections::btree_map::IntoIter<Isn, Option<Vec<u8>>>>,
}

impl Overlay {
    pub fn new(values: BTreeMap<Isn, Option<Vec<u8>>>) -> Overlay {
        Overlay {
            it: values.into_iter().peekable(),
        }
    }

    /// The next chunk of records (ascending, after every earlier chunk)
    /// with the overlay's values up to its last isn laid over it.
    pub fn merge(&mut self, chunk: Records) -> Records {
        let mut out = Vec::with_capacity(chunk.len());
        for (isn, v) in chunk {
            let mut replaced = false;
            while let Some((oi, _)) = self.it.peek() {
                if *oi > isn {
                    break;
                }
                replaced = *oi == isn;
                if let Some((oi, Some(ov))) = self.it.next() {
                    out.push((oi, ov));
                }
                if replaced {
                    break;
                }
            }
            if !replaced {
                out.push((isn, v));
            }
        }
        out
    }

    /// The overlay's values after the last chunk.
    pub fn rest(&mut self) -> Records {
        self.it
            .by_ref()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .collect()
    }
}

/// A copy file read through: its header and end, and the file's final
/// records (the dump with the slice replayed over it), checked against the
/// end frame's count and digest.
pub struct Resolved {
    pub header: CopyHeader,
    pub end: CopyEnd,
    /// blake3 of the whole file, hex.
    pub blake3: String,
    pub bytes: u64,
}

/// Reads a copy file in two passes: first its structure and the slice's
/// final after-images (the dump's frames stepped over), then every frame
/// whole (CRCs, the whole file's hash), the dump merged with the slice and
/// passed to `each` in ascending isn in chunks. The result's count and
/// digest must equal the end frame's, or the copy is refused; the caller
/// compares the hash with the catalog's.
pub fn resolve(
    dir: &dyn MediumDir,
    name: &str,
    each: &mut dyn FnMut(Records) -> Result<(), CopyError>,
) -> Result<Resolved, CopyError> {
    resolve_with(dir, name, Prove::Here, each)
}

/// Who proves a resolved copy's count and digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prove {
    /// [`resolve_with`] itself, against the end frame.
    Here,
    /// The caller, from the records it is given (a restore proves the file
    /// it wrote against the copy's meta with its last chunk): each record's
    /// digest term is computed once, not twice.
    ByCaller,
}

/// [`resolve`], with the count and digest proved by `prove`.
///
/// The first pass reads no more of a dump's record frame than its header;
/// the second, which reads and decodes every frame, checks the CRCs, the
/// dump's isn order and (through the hash it returns) every byte. So a
/// damaged copy may be found only after part of it was passed to `each`:
/// a restore proves each file with its last chunk, and a restore into a
/// database that holds anything verifies the whole set first.
pub fn resolve_with(
    dir: &dyn MediumDir,
    name: &str,
    prove: Prove,
    each: &mut dyn FnMut(Records) -> Result<(), CopyError>,
) -> Result<Resolved, CopyError> {
    let mut r = CopyReader::open(dir, name)?;
    let mut header = None;
    let mut end = None;
    let mut overlay: BTreeMap<Isn, Option<Vec<u8>>> = BTreeMap::new();
    let mut last_lsn = Lsn(0);
    while let Some((at, f)) = r.next_skimmed()? {
        if end.is_some() {
            return Err(r.damaged(at, "a frame after the end frame".into()));
        }
        match f {
            Skimmed::Header(h) => {
                if header.is_some() {
                    return Err(r.damaged(at, "a second header".into()));
                }
                if h.format != COPY_FORMAT {
                    return Err(r.damaged(at, format!("copy format {} is not 1", h.format)));
                }
                last_lsn = h.start_lsn;
                header = Some(h);
            }
            _ if header.is_none() => {
                return Err(r.damaged(at, "the first frame is not the header".into()));
            }
            Skimmed::Records(_) => {
                if !overlay.is_empty() {
                    return Err(r.damaged(at, "dump records after the log slice".into()));
                }
            }
            Skimmed::Slice { lsn, records, .. } => {
                if lsn <= last_lsn {
                    return Err(r.damaged(at, "log slice out of LSN order".into()));
                }
                last_lsn = lsn;
                for (isn, v) in records {
                    overlay.insert(isn, v.map(|b| b.into_vec()));
                }
            }
            Skimmed::End(e) => {
                if e.lsn < last_lsn {
                    return Err(r.damaged(at, "end LSN before the log slice".into()));
                }
                end = Some(e);
            }
        }
    }
    let (Some(header), Some(end)) = (header, end) else {
        return Err(r.damaged(r.len, "the file ends without its end frame".into()));
    };
    // Second pass: every frame read whole (CRCs and the whole file's hash),
    // the dump decoded, with the slice laid over it.
    let mut r2 = CopyReader::open(dir, name)?;
    let mut meta = FileMeta::new(header.def.fnr);
    let mut overlay = Overlay::new(overlay);
    let mut emit = |out: Records| -> Result<(), CopyError> {
        if prove == Prove::Here {
            for (isn, v) in &out {
                meta.change(*isn, None, Some(v));
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            each(out)
        }
    };
    let mut last_isn = Isn(0);
    while let Some((at, f)) = r2.next_frame()? {
        if let CopyFrame::Records(recs) = f {
            for (isn, _) in &recs {
                if *isn <= last_isn {
                    return Err(r2.damaged(at, "dump records out of isn order".into()));
                }
                last_isn = *isn;
            }
            emit(overlay.merge(recs.into_iter().map(|(i, v)| (i, v.into_vec())).collect()))?;
        }
    }
    let rest = overlay.rest();
    let mut rest = rest.into_iter().peekable();
    while rest.peek().is_some() {
        emit(rest.by_ref().take(SCAN_RECORDS).collect())?;
    }
    let blake3 = r2.hash_hex();
    let bytes = r2.len;
    if prove == Prove::Here && (meta.count, meta.digest) != (end.meta.count, end.meta.digest) {
        return Err(CopyError::Mismatch {
            path: r2.path.clone(),
            reason: format!(
                "its records resolve to {} records with digest {}, but it was taken with {} records, digest {}",
                meta.count, meta.digest, end.meta.count, end.meta.digest
            ),
        });
    }
    Ok(Resolved {
        header,
        end,
        blake3,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_replaces_inserts_and_deletes_across_chunks() {
        let v = |b: u8| vec![b];
        let mut o = Overlay::new(BTreeMap::from([
            (Isn(1), None),        // deletes a dumped record
            (Isn(2), Some(v(20))), // inserted before the first dumped isn above it
            (Isn(3), Some(v(30))), // replaces
            (Isn(9), Some(v(90))), // after every chunk
        ]));
        let a = o.merge(vec![(Isn(1), v(1)), (Isn(3), v(3))]);
        assert_eq!(a, vec![(Isn(2), v(20)), (Isn(3), v(30))]);
        let b = o.merge(vec![(Isn(5), v(5))]);
        assert_eq!(b, vec![(Isn(5), v(5))]);
        assert_eq!(o.rest(), vec![(Isn(9), v(90))]);
    }
}
