//! `etp db check`: every protection-log frame and every file's content
//! against its recorded digest.

use super::*;

impl Database {
    /// Verifies the whole protection log and every file's content digest.
    pub fn check(&self) -> Result<CheckReport, DbError> {
        let shared = self.shared();
        self.wait_applied()?;
        let mut report = CheckReport::default();
        // Read-only: a segment being created right now must not be taken
        // for a torn one and removed.
        match crate::plog::open_segments_readonly(&*shared.plog, shared.dbid) {
            Err(e) => report.log_problem = Some(e.to_string()),
            Ok(segments) => {
                report.segments = segments.len() as u64;
                let mut scan = LogScan::new(&segments, 0);
                loop {
                    match scan.next_frame() {
                        Ok(Some(_)) => report.frames += 1,
                        Ok(None) => break,
                        Err(f) => {
                            report.log_problem = Some(format!(
                                "segment {} ({}) offset {}: {} (intact only before LSN {})",
                                f.segment, f.path, f.offset, f.reason, f.expected_lsn
                            ));
                            break;
                        }
                    }
                }
                report.log_end = scan.last_lsn();
            }
        }
        let (catalog, metas, damaged) = {
            let st = lock(&shared.state);
            (st.catalog.clone(), st.metas.clone(), st.damaged.clone())
        };
        for def in catalog.values() {
            let expected = metas
                .get(&def.fnr)
                .copied()
                .unwrap_or(FileMeta::new(def.fnr));
            // A log file's store: every frame read and checked, not only
            // the live ones a scan reads.
            let frames = match shared.store.log_store(def.fnr) {
                Some(ls) => ls
                    .verify()
                    .map_err(crate::store::StoreError::from)?
                    .map(|f| f.to_string()),
                None => None,
            };
            let problem = if let Some(d) = damaged.get(&def.fnr) {
                Some(d.reason.clone())
            } else if frames.is_some() {
                frames
            } else {
                match recovery::content_problem(&shared.store, &expected) {
                    Ok(p) => p,
                    // Records that cannot be read are this file's problem.
                    Err(DbError::Store(e)) => Some(e.to_string()),
                    Err(e) => return Err(e),
                }
            };
            report.files.push(FileCheck {
                fnr: def.fnr,
                name: def.name.clone(),
                role: def.role.name(),
                count: expected.count,
                digest: expected.digest.to_string(),
                problem,
            });
        }
        Ok(report)
    }
}

/// What `Database::check` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub segments: u64,
    pub frames: u64,
    pub log_end: Lsn,
    pub log_problem: Option<String>,
    pub files: Vec<FileCheck>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileCheck {
    pub fnr: Fnr,
    pub name: String,
    pub role: &'static str,
    pub count: u64,
    pub digest: String,
    pub problem: Option<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.log_problem.is_none() && self.files.iter().all(|f| f.problem.is_none())
    }
}
