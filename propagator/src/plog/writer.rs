//! Appending to the protection log.
//!
//! The writer never overwrites a synced frame. It appends a group of frames
//! with one write and makes them durable with one sync (group commit is the
//! caller batching many transactions into one `append` + `sync`). A failed
//! write or sync is never retried: the caller must stop committing, and the
//! next open truncates whatever unsynced tail the failure left.
//!
//! **Preallocation.** Space ahead of the last frame is written with zeros
//! (and synced with the next group) a chunk at a time, as PostgreSQL does
//! with its WAL segments. A commit's `fdatasync` is then an overwrite of
//! blocks that already exist, which on ext4 and XFS needs no journal commit:
//! an append that grows the file costs one, and that journal commit also
//! drags out every other file's dirty metadata (sled's among them). The
//! reader treats an all-zero frame header followed only by zeros as the end
//! of the log. A closed segment is cut back to its last frame at rotation.

use super::entry::{Checkpoint, PlogEntry};
use super::format::{encode_frame, segment_name, SegmentHeader, HEADER_LEN, MAX_PAYLOAD};
use super::LogError;
use crate::ids::DbId;
use crate::medium::{Medium, MediumDir};
use std::sync::Arc;

pub struct PlogWriter {
    dir: Arc<dyn MediumDir>,
    dbid: DbId,
    seg: Arc<dyn Medium>,
    seg_no: u64,
    path: String,
    offset: u64,
    /// Bytes of the file that exist (zeros past `offset`).
    allocated: u64,
    segment_size: u64,
    buf: Vec<u8>,
    /// Where the last `append` wrote: offset and length.
    appended: (u64, u64),
}

/// How much zeroed space is added at a time: 1 MiB for real segments,
/// less for the tiny segments tests use. The zeros reach the device with
/// the commit whose frames cross into them, so a chunk is a burst the next
/// sync of every process on the disk waits behind (a 4 MiB chunk made a
/// commit, and the replicates' and master's syncs around it, 2.5–3 ms
/// late); 1 MiB keeps that burst under a millisecond at the cost of one
/// journal commit per MiB of log.
fn chunk_size(segment_size: u64) -> u64 {
    segment_size.clamp(4096, 1 << 20).next_multiple_of(4096)
}

static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

/// Writes zeros over `[from, to)`.
fn write_zeros(seg: &dyn Medium, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        seg.write_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl PlogWriter {
    /// Creates segment `no` holding its header and an opening checkpoint,
    /// durably (file and directory synced) before returning.
    pub fn create_segment(
        dir: Arc<dyn MediumDir>,
        dbid: DbId,
        no: u64,
        checkpoint: &Checkpoint,
        segment_size: u64,
    ) -> Result<PlogWriter, LogError> {
        let name = segment_name(no);
        let path = dir.describe(&name);
        let seg = out_of_descriptors_retried(&path, || dir.create(&name))
            .map_err(|e| LogError::io(path.clone(), e))?;
        let header = SegmentHeader {
            dbid,
            segment: no,
            first_lsn: checkpoint.as_of.next(),
            created_us: chrono::Utc::now().timestamp_micros(),
        };
        let mut buf = header.encode().to_vec();
        let payload = PlogEntry::Checkpoint(checkpoint.clone()).encode();
        encode_frame(&mut buf, no, HEADER_LEN, &payload);
        let offset = buf.len() as u64;
        let allocated = offset.next_multiple_of(chunk_size(segment_size));
        buf.resize(allocated as usize, 0);
        seg.write_at(&buf, 0)
            .map_err(|e| LogError::io(path.clone(), e))?;
        seg.sync().map_err(|e| LogError::io(path.clone(), e))?;
        out_of_descriptors_retried(&path, || dir.sync_dir())
            .map_err(|e| LogError::io(path.clone(), e))?;
        Ok(PlogWriter {
            dir,
            dbid,
            seg,
            seg_no: no,
            path,
            offset,
            allocated,
            segment_size,
            buf: Vec::new(),
            appended: (0, 0),
        })
    }

    /// Continues writing at `offset` of an existing segment whose frames up
    /// to `offset` were verified. Anything but zeros after `offset` (the
    /// remains of an unsynced write) is zeroed and synced first, so no stale
    /// frame can ever line up behind a new one. Returns the writer and how
    /// many bytes were zeroed.
    pub fn resume(
        dir: Arc<dyn MediumDir>,
        dbid: DbId,
        seg_no: u64,
        seg: Arc<dyn Medium>,
        offset: u64,
        segment_size: u64,
    ) -> Result<(PlogWriter, u64), LogError> {
        let path = dir.describe(&segment_name(seg_no));
        let io = |e| LogError::io(path.clone(), e);
        let len = seg.len().map_err(io)?;
        let mut zeroed = 0;
        if len > offset {
            let mut tail = vec![0u8; (len - offset) as usize];
            seg.read_at(&mut tail, offset).map_err(io)?;
            if let Some(last) = tail.iter().rposition(|b| *b != 0) {
                zeroed = last as u64 + 1;
                write_zeros(&*seg, offset, offset + zeroed).map_err(io)?;
                seg.sync().map_err(io)?;
            }
        }
        let w = PlogWriter {
            dir,
            dbid,
            seg,
            seg_no,
            path,
            offset,
            allocated: len.max(offset),
            segment_size,
            buf: Vec::new(),
            appended: (0, 0),
        };
        Ok((w, zeroed))
    }

    /// Writes frames for `payloads` after the last one, without syncing.
    pub fn append<'p>(
        &mut self,
        payloads: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<(), LogError> {
        self.buf.clear();
        for p in payloads {
            if p.len() > MAX_PAYLOAD as usize {
                return Err(LogError::EntryTooLarge { size: p.len() });
            }
            let at = self.offset + self.buf.len() as u64;
            encode_frame(&mut self.buf, self.seg_no, at, p);
        }
        let end = self.offset + self.buf.len() as u64;
        if end > self.allocated {
            // Grow by whole chunks of zeros; the next sync makes them durable
            // together with the frames (one journal commit per chunk).
            let chunk = chunk_size(self.segment_size);
            let to = end.next_multiple_of(chunk);
            write_zeros(&*self.seg, self.allocated, to)
                .map_err(|e| LogError::io(self.path.clone(), e))?;
            self.allocated = to;
        }
        self.seg
            .write_at(&self.buf, self.offset)
            .map_err(|e| LogError::io(self.path.clone(), e))?;
        self.appended = (self.offset, self.buf.len() as u64);
        self.offset += self.buf.len() as u64;
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Starts writing the last `append`'s frames to the device; [`Self::sync`]
    /// still makes them durable.
    pub fn start_sync(&self) {
        self.seg.start_sync(self.appended.0, self.appended.1);
    }

    /// Makes everything appended durable (fdatasync).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.seg
            .sync()
            .map_err(|e| LogError::io(self.path.clone(), e))
    }

    pub fn needs_rotation(&self) -> bool {
        self.offset >= self.segment_size
    }

    /// Closes the current segment (already synced by the caller) and opens
    /// the next one with `checkpoint` as its first frame.
    pub fn rotate(&mut self, checkpoint: &Checkpoint) -> Result<(), LogError> {
        // A closed segment ends at its last frame: no preallocated zeros.
        self.seg
            .set_len(self.offset)
            .and_then(|_| self.seg.sync())
            .map_err(|e| LogError::io(self.path.clone(), e))?;
        let next = PlogWriter::create_segment(
            self.dir.clone(),
            self.dbid,
            self.seg_no + 1,
            checkpoint,
            self.segment_size,
        )?;
        *self = next;
        Ok(())
    }

    /// The segment number and offset the next frame will be written at.
    pub fn position(&self) -> (u64, u64) {
        (self.seg_no, self.offset)
    }
}

/// Runs `op` (opening a file: a new segment, its directory to sync), and
/// while it fails for want of a descriptor (EMFILE, ENFILE) tries again,
/// waiting 10 ms growing to 200 ms, for up to about 5 s. Connections and
/// the page store share the process's descriptors with the log: a moment
/// when they hold every one must not poison the database, whose commits
/// wait meanwhile. Nothing is created by a failed attempt, so a retry is
/// safe.
fn out_of_descriptors_retried<T>(
    path: &str,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut wait = std::time::Duration::from_millis(10);
    let mut waited = std::time::Duration::ZERO;
    loop {
        match op() {
            Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) && waited < RETRY_DESCRIPTORS => {
                if waited.is_zero() {
                    tracing::warn!(file = path, error = %e, "out of file descriptors: the protection log retries (commits wait)");
                }
                std::thread::sleep(wait);
                waited += wait;
                wait = (wait * 2).min(std::time::Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

/// How long the log waits for a descriptor before it fails.
const RETRY_DESCRIPTORS: std::time::Duration = std::time::Duration::from_secs(5);
