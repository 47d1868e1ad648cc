//! Opening and scanning protection-log segments.

use super::entry::PlogEntry;
use super::format::{
    frame_crc, parse_segment_name, SegmentHeader, FRAME_HEADER_LEN, FRAME_MAGIC, HEADER_LEN,
    MAX_PAYLOAD,
};
use super::LogError;
use crate::ids::{DbId, Lsn};
use crate::medium::{Medium, MediumDir};
use std::sync::Arc;

/// An open segment file and its verified header.
#[derive(Clone)]
pub struct Segment {
    pub no: u64,
    pub path: String,
    pub header: SegmentHeader,
    pub medium: Arc<dyn Medium>,
    pub len: u64,
}

/// What opening the segments found besides the segments themselves.
pub struct OpenedSegments {
    pub segments: Vec<Segment>,
    /// A last segment whose creation was cut short (no complete header):
    /// removed, and named here.
    pub removed_torn: Option<String>,
}

/// Opens every segment in `dir`, checking headers, ownership and that no
/// segment number is missing. A last segment with a torn header (a crash
/// while creating it, before anything was committed into it) is removed.
pub fn open_segments(dir: &dyn MediumDir, dbid: DbId) -> Result<OpenedSegments, LogError> {
    open_segments_inner(dir, dbid, true)
}

/// Opens every segment in `dir` to read it, changing nothing: a last
/// segment with an incomplete header (being created right now, or torn) is
/// left out.
pub fn open_segments_readonly(dir: &dyn MediumDir, dbid: DbId) -> Result<Vec<Segment>, LogError> {
    Ok(open_segments_inner(dir, dbid, false)?.segments)
}

fn open_segments_inner(
    dir: &dyn MediumDir,
    dbid: DbId,
    remove_torn: bool,
) -> Result<OpenedSegments, LogError> {
    let names = dir.list().map_err(|e| LogError::io(dir.describe(""), e))?;
    let mut numbered: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|n| parse_segment_name(&n).map(|no| (no, n)))
        .collect();
    numbered.sort();
    if numbered.is_empty() {
        return Err(LogError::NoSegments {
            dir: dir.describe(""),
        });
    }
    let mut segments: Vec<Segment> = Vec::new();
    let mut removed_torn = None;
    let count = numbered.len();
    for (i, (no, name)) in numbered.into_iter().enumerate() {
        let path = dir.describe(&name);
        let medium = dir.open(&name).map_err(|e| LogError::io(path.clone(), e))?;
        let len = medium.len().map_err(|e| LogError::io(path.clone(), e))?;
        let mut hb = vec![0u8; HEADER_LEN.min(len) as usize];
        medium
            .read_at(&mut hb, 0)
            .map_err(|e| LogError::io(path.clone(), e))?;
        let header = match SegmentHeader::decode(&hb) {
            Ok(h) => h,
            Err(_) if i + 1 == count && i > 0 && len < HEADER_LEN + FRAME_HEADER_LEN => {
                if !remove_torn {
                    break;
                }
                dir.remove(&name)
                    .map_err(|e| LogError::io(path.clone(), e))?;
                dir.sync_dir().map_err(|e| LogError::io(path.clone(), e))?;
                removed_torn = Some(path);
                break;
            }
            Err(reason) => return Err(LogError::BadHeader { path, reason }),
        };
        if header.dbid != dbid {
            return Err(LogError::WrongDatabase {
                path,
                found: header.dbid,
                expected: dbid,
            });
        }
        if header.segment != no {
            return Err(LogError::BadHeader {
                path,
                reason: format!(
                    "header says segment {}, file name says {no}",
                    header.segment
                ),
            });
        }
        if let Some(prev) = segments.last() {
            if no != prev.no + 1 {
                return Err(LogError::MissingSegment {
                    missing: prev.no + 1,
                    before: prev.path.clone(),
                    after: path,
                });
            }
        }
        segments.push(Segment {
            no,
            path,
            header,
            medium,
            len,
        });
    }
    Ok(OpenedSegments {
        segments,
        removed_torn,
    })
}

/// A frame that failed a check, and where.
#[derive(Clone, Debug)]
pub struct ScanFault {
    /// Index into the scanned segment slice.
    pub seg_idx: usize,
    pub segment: u64,
    pub path: String,
    pub offset: u64,
    /// The LSN the next commit should have had.
    pub expected_lsn: Lsn,
    pub reason: String,
}

/// One verified frame.
pub struct Scanned {
    pub seg_idx: usize,
    pub segment: u64,
    pub offset: u64,
    /// Offset just past this frame.
    pub end: u64,
    pub entry: PlogEntry,
}

const READ_CHUNK: usize = 1 << 20;

/// Buffered reads over one segment.
struct FrameReader {
    medium: Arc<dyn Medium>,
    len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl FrameReader {
    fn new(seg: &Segment) -> FrameReader {
        FrameReader {
            medium: seg.medium.clone(),
            len: seg.len,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// Bytes `[off, off+n)`, or `None` if they run past the end of the file.
    fn bytes(&mut self, off: u64, n: usize) -> std::io::Result<Option<&[u8]>> {
        if off + n as u64 > self.len {
            return Ok(None);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if off < self.buf_start || off + n as u64 > buf_end {
            let want = n.max(READ_CHUNK).min((self.len - off) as usize);
            self.buf.resize(want, 0);
            self.medium.read_at(&mut self.buf, off)?;
            self.buf_start = off;
        }
        let s = (off - self.buf_start) as usize;
        Ok(Some(&self.buf[s..s + n]))
    }

    /// The offset of the first non-zero byte at or after `off`.
    fn first_nonzero(&mut self, mut off: u64) -> std::io::Result<Option<u64>> {
        while off < self.len {
            let n = (self.len - off).min(READ_CHUNK as u64) as usize;
            let chunk = self.bytes(off, n)?.unwrap_or_default();
            if let Some(i) = chunk.iter().position(|b| *b != 0) {
                return Ok(Some(off + i as u64));
            }
            off += n as u64;
        }
        Ok(None)
    }

    /// Reads and checks the frame at `off`: `Ok(None)` at a clean end.
    fn frame(&mut self, segment: u64, off: u64) -> Result<Option<(PlogEntry, u64)>, String> {
        if off == self.len {
            return Ok(None);
        }
        let head_len = FRAME_HEADER_LEN.min(self.len - off) as usize;
        let head = match self.bytes(off, head_len) {
            Ok(Some(h)) => h.to_vec(),
            Ok(None) => return Err("frame header cut short by the end of the file".into()),
            Err(e) => return Err(format!("read error: {e}")),
        };
        if head.iter().all(|b| *b == 0) {
            // Preallocated space: the end of the log, if only zeros follow.
            return match self.first_nonzero(off) {
                Ok(None) => Ok(None),
                Ok(Some(at)) => Err(format!(
                    "zeroed frame header, but non-zero bytes follow at offset {at}"
                )),
                Err(e) => Err(format!("read error: {e}")),
            };
        }
        if head.len() < FRAME_HEADER_LEN as usize {
            return Err("frame header cut short by the end of the file".into());
        }
        if &head[0..4] != FRAME_MAGIC {
            return Err("bad frame magic".into());
        }
        let n = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        if n > MAX_PAYLOAD {
            return Err(format!("frame length {n} exceeds the limit"));
        }
        let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        let payload = match self.bytes(off + FRAME_HEADER_LEN, n as usize) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(format!(
                    "frame of {n} bytes cut short by the end of the file"
                ))
            }
            Err(e) => return Err(format!("read error: {e}")),
        };
        let actual = frame_crc(segment, off, payload);
        if actual != crc {
            return Err(format!(
                "checksum mismatch (stored {crc:08x}, computed {actual:08x})"
            ));
        }
        let entry = PlogEntry::decode(payload).map_err(|e| format!("undecodable entry: {e}"))?;
        Ok(Some((entry, off + FRAME_HEADER_LEN + n as u64)))
    }
}

/// Scans frames across segments in order, checking every frame and the LSN
/// chain: each segment opens with a checkpoint at `first_lsn - 1`, commits
/// follow one LSN apart, later checkpoints repeat the last LSN.
pub struct LogScan<'a> {
    segs: &'a [Segment],
    idx: usize,
    reader: Option<FrameReader>,
    offset: u64,
    last_lsn: Lsn,
}

impl<'a> LogScan<'a> {
    pub fn new(segs: &'a [Segment], start_idx: usize) -> LogScan<'a> {
        let last_lsn = segs
            .get(start_idx)
            .map(|s| Lsn(s.header.first_lsn.0.saturating_sub(1)))
            .unwrap_or_default();
        LogScan {
            segs,
            idx: start_idx,
            reader: None,
            offset: HEADER_LEN,
            last_lsn,
        }
    }

    /// The LSN of the last commit scanned so far.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    fn fault(&self, offset: u64, reason: String) -> ScanFault {
        let seg = &self.segs[self.idx];
        ScanFault {
            seg_idx: self.idx,
            segment: seg.no,
            path: seg.path.clone(),
            offset,
            expected_lsn: self.last_lsn.next(),
            reason,
        }
    }

    pub fn next_frame(&mut self) -> Result<Option<Scanned>, ScanFault> {
        loop {
            let Some(seg) = self.segs.get(self.idx) else {
                return Ok(None);
            };
            if self.reader.is_none() {
                if seg.header.first_lsn != self.last_lsn.next() {
                    return Err(self.fault(
                        0,
                        format!(
                            "segment starts at LSN {} but the log before it ended at LSN {}",
                            seg.header.first_lsn, self.last_lsn
                        ),
                    ));
                }
                self.reader = Some(FrameReader::new(seg));
                self.offset = HEADER_LEN;
            }
            let offset = self.offset;
            let reader = self.reader.as_mut().expect("set above");
            match reader.frame(seg.no, offset) {
                Err(reason) => return Err(self.fault(offset, reason)),
                Ok(None) => {
                    if offset == HEADER_LEN {
                        return Err(self.fault(offset, "segment holds no checkpoint".into()));
                    }
                    self.idx += 1;
                    self.reader = None;
                    continue;
                }
                Ok(Some((entry, end))) => {
                    let first = offset == HEADER_LEN;
                    match &entry {
                        PlogEntry::Checkpoint(c) if c.as_of == self.last_lsn => {}
                        PlogEntry::Checkpoint(c) => {
                            return Err(self.fault(
                                offset,
                                format!(
                                    "checkpoint as of LSN {} where LSN {} was expected",
                                    c.as_of, self.last_lsn
                                ),
                            ))
                        }
                        PlogEntry::Commit(_) if first => {
                            return Err(self
                                .fault(offset, "segment does not open with a checkpoint".into()))
                        }
                        PlogEntry::Commit(c) if c.lsn == self.last_lsn.next() => {
                            self.last_lsn = c.lsn;
                        }
                        PlogEntry::Commit(c) => {
                            return Err(self.fault(
                                offset,
                                format!(
                                    "commit with LSN {} where LSN {} was expected",
                                    c.lsn,
                                    self.last_lsn.next()
                                ),
                            ))
                        }
                    }
                    self.offset = end;
                    return Ok(Some(Scanned {
                        seg_idx: self.idx,
                        segment: seg.no,
                        offset,
                        end,
                        entry,
                    }));
                }
            }
        }
    }
}

/// The well-formed frames of `seg` from `offset` on, each checked alone
/// (magic, length, CRC; not the LSN chain), damaged stretches skipped: what
/// a survey lists after a fault in the middle of the log.
pub fn frames_from(seg: &Segment, offset: u64) -> std::io::Result<Vec<(u64, PlogEntry)>> {
    let mut reader = FrameReader::new(seg);
    let mut out = Vec::new();
    let mut at = offset;
    loop {
        match reader.frame(seg.no, at) {
            Ok(Some((entry, end))) => {
                out.push((at, entry));
                at = end;
            }
            Ok(None) => break,
            Err(_) => match valid_frame_after(seg, at)? {
                Some(next) => at = next,
                None => break,
            },
        }
    }
    Ok(out)
}

/// Whether any well-formed frame (magic, length and CRC all right) starts
/// after `offset` in `seg`: if one does, damage at `offset` is in the middle
/// of the log, not a torn tail.
pub fn valid_frame_after(seg: &Segment, offset: u64) -> std::io::Result<Option<u64>> {
    let mut all = vec![0u8; seg.len as usize];
    seg.medium.read_at(&mut all, 0)?;
    let mut pos = offset as usize + 1;
    while pos + FRAME_HEADER_LEN as usize <= all.len() {
        let Some(found) = all[pos..].windows(4).position(|w| w == FRAME_MAGIC) else {
            break;
        };
        let at = pos + found;
        if at + FRAME_HEADER_LEN as usize <= all.len() {
            let n = u32::from_le_bytes(all[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(all[at + 8..at + 12].try_into().expect("4 bytes"));
            let start = at + FRAME_HEADER_LEN as usize;
            if n as u32 <= MAX_PAYLOAD
                && start + n <= all.len()
                && frame_crc(seg.no, at as u64, &all[start..start + n]) == crc
            {
                return Ok(Some(at as u64));
            }
        }
        pos = at + 1;
    }
    Ok(None)
}
