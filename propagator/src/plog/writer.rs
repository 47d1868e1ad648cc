//! Appending to the protection log.
//!
//! The writer never overwrites a synced byte. It appends a group of frames
//! with one write and makes them durable with one sync (group commit is the
//! caller batching many transactions into one `append` + `sync`). A failed
//! write or sync is never retried: the caller must stop committing, and the
//! next open truncates whatever unsynced tail the failure left.

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
    segment_size: u64,
    buf: Vec<u8>,
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
        let seg = dir
            .create(&name)
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
        seg.write_at(&buf, 0)
            .map_err(|e| LogError::io(path.clone(), e))?;
        seg.sync().map_err(|e| LogError::io(path.clone(), e))?;
        dir.sync_dir().map_err(|e| LogError::io(path.clone(), e))?;
        Ok(PlogWriter {
            dir,
            dbid,
            seg,
            seg_no: no,
            path,
            offset: buf.len() as u64,
            segment_size,
            buf: Vec::new(),
        })
    }

    /// Continues writing at `offset` of an existing (verified) segment.
    pub fn resume(
        dir: Arc<dyn MediumDir>,
        dbid: DbId,
        seg_no: u64,
        seg: Arc<dyn Medium>,
        offset: u64,
        segment_size: u64,
    ) -> PlogWriter {
        let path = dir.describe(&segment_name(seg_no));
        PlogWriter {
            dir,
            dbid,
            seg,
            seg_no,
            path,
            offset,
            segment_size,
            buf: Vec::new(),
        }
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
        self.seg
            .write_at(&self.buf, self.offset)
            .map_err(|e| LogError::io(self.path.clone(), e))?;
        self.offset += self.buf.len() as u64;
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
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
