//! Copies and the protection log: the copy-job definitions, a copy set taken
//! through this node, and the protection log's segments (listed, removed
//! once archived).

use super::*;
use crate::ids::Lsn;
use crate::wire::CopyRequest;

impl Node {
    pub(super) async fn copy(&self, r: CopyRequest) -> Response {
        match r {
            CopyRequest::CopyJobs { set } => self.copy_jobs(set).await,
            CopyRequest::PlogSegments => self.plog_segments(),
            CopyRequest::PlogRemove { through } => self.plog_remove(through).await,
            CopyRequest::CopyTake { files, dir, set } => self.copy_take(files, dir, set).await,
        }
    }

    /// The copy-job definitions, replaced first by `set` if given.
    pub(super) async fn copy_jobs(&self, set: Option<String>) -> Response {
        let db = self.db.clone();
        match blocking(move || admin::copy_jobs(&db, set)).await {
            Ok(text) => Response::Text(text),
            Err(e) => Response::error(e),
        }
    }

    pub(super) fn plog_segments(&self) -> Response {
        match self.db.plog_segments() {
            Ok(v) => Response::Segments(v),
            Err(e) => Response::error(e),
        }
    }

    pub(super) async fn plog_remove(&self, through: Lsn) -> Response {
        let db = self.db.clone();
        match blocking(move || db.remove_segments(through)).await {
            Ok(v) => Response::Segments(v),
            Err(e) => Response::error(e),
        }
    }

    /// A copy set of `files` taken into `dir` as set `set`.
    pub(super) async fn copy_take(&self, files: Vec<Fnr>, dir: String, set: String) -> Response {
        let db = self.db.clone();
        let r = errors::off_reactor(move || {
            let area = crate::medium::FsDir::new(&dir);
            crate::copy::take(&db, &files, &area, &set, &mut |_| {})
                .map_err(|e| Failure::from(e.to_string()))
        })
        .await;
        match r {
            Ok(c) => Response::Copied(c),
            Err(e) => Response::error(e),
        }
    }
}
