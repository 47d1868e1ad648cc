//! Reads: the node's identity, a file's records in pages, its count and
//! digest, range digests (verification), the files it holds, and the
//! commit-to-apply samples of its replicates.

use super::*;
use crate::database::RangeContent;
use crate::wire::ReadRequest;

impl Node {
    pub(super) async fn read(&self, r: ReadRequest) -> Response {
        match r {
            ReadRequest::Info => self.info(),
            ReadRequest::LagSamples { replicate, after } => self.lag_samples(&replicate, after),
            ReadRequest::Dump {
                file,
                from,
                limit,
                stale,
            } => {
                let conf = (!stale).then(|| self.confirmation_of(file)).flatten();
                self.dump(file, from, limit, conf).await
            }
            ReadRequest::Files => self.files(),
            ReadRequest::FileStat { file } => self.file_stat(file),
            ReadRequest::RangeDigest {
                file,
                from,
                to,
                records,
            } => self.range_digest(file, from, to, records).await,
            ReadRequest::Reach { database } => self.reach(database).await,
            ReadRequest::CopyAges => match self.copy_ages().await {
                Ok(v) => Response::CopyAges(v),
                Err(e) => Response::error(e),
            },
        }
    }

    /// Tries to reach database `database` at its topology address.
    async fn reach(&self, database: DbId) -> Response {
        let addr = lock(&self.topology)
            .as_ref()
            .and_then(|v| v.addresses.get(&database).copied());
        let Some(addr) = addr else {
            return Response::error(Failure::new(
                ErrorCode::BadRequest,
                format!("database {database} is not in this node's topology"),
            ));
        };
        // (The connect is bounded: TCP and the handshake within CONNECT_TIMEOUT.)
        let (reached, refused, reason) = match client::Conn::connect_to(addr, database).await {
            Ok(_) => (true, false, None),
            Err(e) => (false, e.refused(), Some(e.to_string())),
        };
        Response::Reach(crate::wire::ReachReport {
            database,
            address: addr.to_string(),
            reached,
            refused,
            reason,
        })
    }

    pub(super) fn info(&self) -> Response {
        Response::Info(NodeInfo {
            dbid: self.db.dbid(),
            last_lsn: self.db.last_lsn(),
            version: env!("CARGO_PKG_VERSION").into(),
            listening: *lock(&self.listening),
            topology_address: lock(&self.topology)
                .as_ref()
                .and_then(|v| v.addresses.get(&self.db.dbid()).copied()),
            copy_area: self.copies.area.as_ref().map(|a| a.display().to_string()),
        })
    }

    pub(super) fn lag_samples(&self, replicate: &str, after: Seq) -> Response {
        Response::Lag(
            lock(&self.lag)
                .get(replicate)
                .map(|q| q.iter().filter(|s| s.0 > after).copied().collect())
                .unwrap_or_default(),
        )
    }

    /// Up to `limit` records of `file` from isn `from` on, as raw bytes.
    /// `current`: a current read of a replicate of the topology (its
    /// confirmation file), refused if it is held.
    pub(super) async fn dump(
        &self,
        file: Fnr,
        from: Isn,
        limit: u32,
        current: Option<Fnr>,
    ) -> Response {
        let db = self.db.clone();
        let limit = limit.clamp(1, 100_000) as usize;
        let r = errors::off_reactor(move || {
            if let Some(f) = current.and_then(|conf| super::holds::held(&db, file, conf)) {
                return Err(f);
            }
            let is_log = matches!(db.file(file)?.role, Role::Log { .. });
            let mut items = Vec::new();
            let mut done = true;
            let mut bytes = 0usize;
            db.for_each_raw(file, from, |isn, b| {
                // A page stays well inside one frame.
                if items.len() == limit || bytes + b.len() > MAX_DUMP_PAGE_BYTES {
                    done = false;
                    return Ok(false);
                }
                bytes += b.len() + 16;
                items.push((isn, ByteBuf::from(b.to_vec())));
                Ok(true)
            })
            .map_err(Failure::from)?;
            Ok((items, done, is_log))
        })
        .await;
        match r {
            Ok((items, done, is_log)) => Response::Records {
                items,
                done,
                is_log,
            },
            Err(e) => Response::error(e),
        }
    }

    pub(super) fn files(&self) -> Response {
        Response::Files {
            files: self.db.files().into_iter().map(|f| f.def).collect(),
            topology: lock(&self.topology).as_ref().map(|v| v.text.clone()),
        }
    }

    pub(super) fn file_stat(&self, file: Fnr) -> Response {
        match self.db.file_info(file) {
            Ok(i) => Response::Stat {
                count: i.meta.count,
                digest: i.meta.digest,
                damaged: i.damaged,
                next_isn: i.meta.next_isn,
            },
            Err(e) => Response::error(e),
        }
    }

    /// Count and digest of `[from, to)` of `file`, with its records if asked.
    pub(super) async fn range_digest(
        &self,
        file: Fnr,
        from: Isn,
        to: Option<Isn>,
        records: bool,
    ) -> Response {
        let db = self.db.clone();
        match blocking(move || db.range_digest(file, from, to, records)).await {
            Ok(RangeContent {
                count,
                digest,
                records: recs,
            }) => Response::Range {
                count,
                digest,
                records: recs
                    .into_iter()
                    .map(|(i, b)| (i, ByteBuf::from(b)))
                    .collect(),
            },
            Err(e) => Response::error(e),
        }
    }
}
