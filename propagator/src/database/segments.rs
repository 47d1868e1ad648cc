//! Protection-log segments: listed, and removed once archived and wholly
//! before what every copy still needs.

use super::*;

impl Database {
    /// The protection log's directory.
    pub fn plog_dir(&self) -> Arc<dyn MediumDir> {
        self.shared().plog.clone()
    }

    /// The protection log's segments, oldest first; the last one is open.
    pub fn plog_segments(&self) -> Result<Vec<SegmentInfo>, DbError> {
        let shared = self.shared();
        let segs = crate::plog::open_segments_readonly(&*shared.plog, shared.dbid)?;
        let mut out: Vec<SegmentInfo> = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            out.push(SegmentInfo {
                no: seg.no,
                name: crate::plog::format::segment_name(seg.no),
                path: seg.path.clone(),
                first_lsn: seg.header.first_lsn,
                last_lsn: segs
                    .get(i + 1)
                    .map(|n| Lsn(n.header.first_lsn.0.saturating_sub(1))),
                bytes: seg.len,
                created_us: seg.header.created_us,
            });
        }
        Ok(out)
    }

    /// Removes the oldest closed segments whose every commit is at or
    /// before `through` and that restart recovery can no longer need: the
    /// page store is flushed first and only segments wholly at or before
    /// its applied LSN go. The open segment always stays. Returns what was
    /// removed. The caller archives segments before removing them.
    pub fn remove_segments(&self, through: Lsn) -> Result<Vec<SegmentInfo>, DbError> {
        let shared = self.shared();
        self.wait_applied()?;
        shared.store.flush()?;
        let applied = shared.store.applied_lsn()?;
        let limit = Lsn(through.0.min(applied.0));
        let mut removed = Vec::new();
        for seg in self.plog_segments()? {
            match seg.last_lsn {
                Some(last) if last <= limit => {
                    shared
                        .plog
                        .remove(&seg.name)
                        .map_err(|e| crate::plog::LogError::io(seg.path.clone(), e))?;
                    removed.push(seg);
                }
                _ => break,
            }
        }
        if !removed.is_empty() {
            shared
                .plog
                .sync_dir()
                .map_err(|e| crate::plog::LogError::io(shared.plog.describe(""), e))?;
        }
        Ok(removed)
    }
}

/// One protection-log segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub no: u64,
    /// File name in the log directory.
    pub name: String,
    pub path: String,
    pub first_lsn: Lsn,
    /// The last LSN it holds; None for the open (last) segment.
    pub last_lsn: Option<Lsn>,
    pub bytes: u64,
    pub created_us: i64,
}
