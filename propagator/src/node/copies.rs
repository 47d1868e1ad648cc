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
            CopyRequest::CopyTake { files, set } => self.copy_take(files, set).await,
            CopyRequest::PlogCheck { from } => self.plog_check(from).await,
        }
    }

    /// Reads the protection log from `from` to its end, every frame
    /// checked: where it is damaged, if it is.
    async fn plog_check(&self, from: Lsn) -> Response {
        let db = self.db.clone();
        let r = errors::off_reactor(move || {
            // Up to what is durable: a commit given its LSN may not be
            // on disk yet.
            let durable = *db.subscribe_durable().borrow();
            crate::plog::survey::read_commits(
                db.plog_dir().as_ref(),
                db.dbid(),
                from,
                durable,
                &mut |_, _| {},
            )
            .map_err(|e| Failure::from(e.to_string()))
        })
        .await;
        match r.and_then(|r| serde_json::to_string(&r).map_err(|e| Failure::from(e.to_string()))) {
            Ok(t) => Response::Text(t),
            Err(e) => Response::error(e),
        }
    }

    /// The copy-job definitions, replaced first by `set` if given (once
    /// the node's own check passed them, against its copy area).
    pub(super) async fn copy_jobs(&self, set: Option<String>) -> Response {
        if let Some(text) = &set {
            let Some(check) = self.copies.check_jobs.clone() else {
                return Response::error(Failure::new(
                    ErrorCode::Refused,
                    "this node does not take copy jobs (it was started without their check)",
                ));
            };
            let (text, area) = (text.clone(), self.copies.area.clone());
            let topology = lock(&self.topology).clone();
            let checked = errors::off_reactor(move || {
                check(&text, area.as_deref(), topology.as_ref())
                    .map_err(|e| Failure::from(e.to_string()))
            })
            .await;
            if let Err(e) = checked {
                return Response::error(Failure::new(
                    ErrorCode::Refused,
                    format!("copy jobs refused: {}", e.message),
                ));
            }
        }
        let db = self.db.clone();
        match blocking(move || admin::copy_jobs(&db, set)).await {
            Ok(text) => Response::Text(text),
            Err(e) => Response::error(e),
        }
    }

    /// The age of the newest copy set of every master, log and
    /// administration file of the topology, from this node's copy area.
    pub(crate) async fn copy_ages(&self) -> Result<Vec<crate::wire::CopyAge>, Failure> {
        let Some(v) = lock(&self.topology).clone() else {
            return Ok(Vec::new());
        };
        if self.copies.area.is_none() {
            return Ok(Vec::new());
        }
        let area = self.copies.area()?;
        let alarm_after = self.copies.alarm_after;
        errors::off_reactor(move || {
            let sets = area.list().map_err(Failure::from)?;
            let now = chrono::Utc::now().timestamp_micros();
            let mut want: Vec<(DbId, Fnr, &str, Option<String>)> = Vec::new();
            for m in &v.topology.masters {
                let db = DbId(m.database);
                want.push((db, Fnr(m.file), "master", Some(m.name.clone())));
                want.push((db, Fnr(m.log), "log", Some(m.name.clone())));
            }
            for db in v.addresses.keys() {
                want.push((*db, v.admin_file(), "administration", None));
            }
            Ok(want
                .into_iter()
                .map(|(db, fnr, role, name)| {
                    let newest = sets
                        .iter()
                        .filter(|s| s.dbid == db && s.member(fnr).is_some())
                        .max_by_key(|s| s.time_us);
                    let age_s = newest.map(|s| (now - s.time_us).max(0) as f64 / 1e6);
                    crate::wire::CopyAge {
                        database: db,
                        file: fnr,
                        role: role.to_string(),
                        name,
                        newest_set: newest.map(|s| s.id.clone()),
                        age_s,
                        alarm: alarm_after
                            .is_some_and(|a| age_s.is_none_or(|s| s > a.as_secs_f64())),
                    }
                })
                .collect())
        })
        .await
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

    /// A copy set of `files` taken as set `set`, into the directory that
    /// set claimed in this node's copy area (nowhere else).
    pub(super) async fn copy_take(&self, files: Vec<Fnr>, set: String) -> Response {
        let db = self.db.clone();
        let copies = self.copies.clone();
        let r = errors::off_reactor(move || {
            let dir = copies.area()?.claimed_dir(&set).map_err(Failure::from)?;
            crate::copy::take(
                &db,
                &files,
                &crate::medium::FsDir::new(&dir),
                &set,
                &mut |_| {},
            )
            .map_err(|e| Failure::from(e.to_string()))
        })
        .await;
        match r {
            Ok(c) => Response::Copied(c),
            Err(e) => Response::error(e),
        }
    }
}
