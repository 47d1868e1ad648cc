//! Client sessions: a connection's commands run on its own session (its
//! transaction backed out when the connection drops), refused while a
//! recovery has quiesced the database.

use super::*;
use crate::wire::SessionRequest;

/// A session request's answer: ready now, or once its commit is durable.
// Moved once per request: boxing the common answer would cost an
// allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    Now(Response),
    /// The transaction is queued for the group commit; the connection may
    /// run its next request meanwhile and sends this answer in its turn.
    Later(futures_util::future::BoxFuture<'static, Response>),
}

impl Node {
    /// Runs a session request. A request that ends with ET answers
    /// [`Step::Later`]: its commands run and its transaction is queued on a
    /// blocking thread, the session comes back to the connection as soon as
    /// the transaction is queued, and the same thread then waits for the
    /// sync (leading the group if its turn comes). So a client that keeps
    /// several transactions in flight has the next one resolved while the
    /// previous one syncs, and they share a sync; one that waits for each
    /// answer pays no extra thread hand-off for it.
    pub(super) async fn session(&self, conv: &mut Conversation, r: SessionRequest) -> Step {
        let (cmds, chain) = match r {
            SessionRequest::Exec(cmd) => (vec![cmd], false),
            SessionRequest::Batch(cmds) => (cmds, false),
            SessionRequest::Chain(cmds) => (cmds, true),
        };
        if !chain {
            conv.chain_failed = false;
        } else if conv.chain_failed {
            return Step::Now(Response::error(Failure::new(
                ErrorCode::Refused,
                "not run: an earlier pipelined transaction on this connection failed",
            )));
        }
        if cmds.is_empty() {
            return Step::Now(Response::Ok);
        }
        // Held until the commit is durable, so a quiesce waits for updates
        // in flight and the LSN it reports is the last one before it.
        let gate = self.update_gate.clone().read_owned().await;
        if !conv.exempt
            && self.quiesced.load(std::sync::atomic::Ordering::SeqCst)
            && cmds.iter().any(|c| match c {
                Command::Store { .. } | Command::Update { .. } | Command::Delete { .. } => true,
                // An open transaction may back out (BT), not commit.
                Command::Et { .. } => conv.session.as_ref().is_some_and(|s| s.in_transaction()),
                Command::Read { .. } | Command::Bt => false,
            })
        {
            // A refused chained transaction fails the ones chained after it.
            conv.chain_failed |= chain;
            return Step::Now(Response::error(Failure::new(
                ErrorCode::Unavailable,
                "updates are refused while a recovery runs on this database (quiesced by etp recover run): retry later",
            )));
        }
        let mut s = conv.session.take().unwrap_or_else(|| self.db.session());
        // Reads that want a current view, each judged before it runs (a
        // held replicate refuses them).
        let current = self.current_reads(&cmds);
        let db = self.db.clone();
        let (back, session) = tokio::sync::oneshot::channel::<(Session, bool)>();
        let run = tokio::task::spawn_blocking(move || {
            let n = cmds.len();
            // Read ahead for this batch only: a transaction that spans
            // batches reads each batch's records at its start.
            match writes_to_read(&cmds) {
                Some((file, isns)) => s.read_ahead(file, isns),
                None => s.end_read_ahead(),
            }
            let mut r = Response::Ok;
            let mut queued = None;
            let mut failed_at = None;
            for (i, cmd) in cmds.into_iter().enumerate() {
                r = match cmd {
                    Command::Et { id } if i + 1 == n => match s.et_queued(id) {
                        Ok(p) => {
                            queued = Some(p);
                            Response::Ok
                        }
                        Err(e) => Response::error(e),
                    },
                    Command::Read {
                        file,
                        isn,
                        stale: false,
                    } => {
                        let conf = current.iter().find(|(f, _)| *f == file);
                        match conf.and_then(|(_, c)| super::holds::held(&db, file, *c)) {
                            Some(refused) => Response::error(refused),
                            None => run_command(
                                &mut s,
                                Command::Read {
                                    file,
                                    isn,
                                    stale: false,
                                },
                            ),
                        }
                    }
                    cmd => run_command(&mut s, cmd),
                };
                if matches!(r, Response::Error { .. }) {
                    // The session has aborted the transaction, as a local
                    // session does: a later ET reports it.
                    failed_at = Some(i);
                    break;
                }
            }
            if chain && failed_at.is_some() {
                // A chained transaction is whole or nothing: backed out.
                s.bt();
            }
            // The connection gets its session back before the sync.
            let _ = back.send((s, failed_at.is_some()));
            let mut r = match queued {
                None => r,
                Some(p) => committed(p.wait()),
            };
            if chain {
                if let Response::Error { code, message } = r {
                    r = Response::ChainFailed {
                        index: failed_at.unwrap_or(n.saturating_sub(1)) as u32,
                        code,
                        message,
                    };
                }
            }
            // Released here, not where the answer is sent: a quiesce
            // waiting for it must not wait for the connection to read on.
            drop(gate);
            r
        });
        let Ok((s, failed)) = session.await else {
            // The blocking task ended without handing the session back: it
            // panicked. A new session (the transaction is gone) and its error.
            let e = match run.await {
                Err(e) => e.to_string(),
                Ok(_) => "the session was lost".into(),
            };
            conv.chain_failed |= chain;
            return Step::Now(Response::error(errors::Internal(e)));
        };
        conv.session = Some(s);
        if chain && failed {
            conv.chain_failed = true;
        }
        let answer = async move {
            match run.await {
                Ok(r) => r,
                Err(e) => Response::error(errors::Internal(e.to_string())),
            }
        };
        Step::Later(Box::pin(answer))
    }
}

fn committed(r: Result<crate::database::CommitInfo, DbError>) -> Response {
    match r {
        Ok(info) => Response::Committed(CommitReply {
            lsn: info.lsn,
            time_us: info.time_us,
            client_id: info.client_id,
            seqs: info.seqs.into_iter().map(|(f, (a, b))| (f, a, b)).collect(),
        }),
        Err(e) => Response::error(e),
    }
}

pub(super) fn bad_record(e: impl std::fmt::Display) -> Response {
    Response::error(Failure::new(
        ErrorCode::BadRequest,
        format!("bad record: {e}"),
    ))
}

/// Runs a write given a client's record bytes: `canonical` takes them as
/// they came, or hands back bytes that are not canonical, which `decoded`
/// then takes decoded. Undecodable bytes back the transaction out and
/// come back as `Err`.
fn with_record<T>(
    s: &mut Session,
    bytes: Vec<u8>,
    canonical: impl FnOnce(&mut Session, Vec<u8>) -> Result<Result<T, DbError>, Vec<u8>>,
    decoded: impl FnOnce(&mut Session, crate::record::Record) -> Result<T, DbError>,
) -> Result<Result<T, DbError>, crate::record::RecordError> {
    match canonical(s, bytes) {
        Ok(r) => Ok(r),
        Err(other) => match decode_record(&other) {
            Err(e) => {
                s.bt();
                Err(e)
            }
            Ok(r) => Ok(decoded(s, r)),
        },
    }
}

/// The file and isns whose committed records a batch's updates and
/// deletes read, when they all write one file and no transaction ends
/// before the last command (a commit in between changes what the ones
/// after it read).
fn writes_to_read(cmds: &[Command]) -> Option<(Fnr, Vec<Isn>)> {
    let mut file = None;
    let mut isns = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        let (f, isn) = match c {
            Command::Update { file, isn, .. } | Command::Delete { file, isn } => (*file, *isn),
            Command::Et { .. } | Command::Bt if i + 1 < cmds.len() => return None,
            _ => continue,
        };
        if *file.get_or_insert(f) != f {
            return None;
        }
        isns.push(isn);
    }
    Some((file?, isns))
}

pub(super) fn run_command(s: &mut Session, cmd: Command) -> Response {
    let err = |e: DbError| Response::error(e);
    match cmd {
        Command::Store { file, isn, fields } => {
            let stored = with_record(
                s,
                fields.into_vec(),
                |s, b| s.store_canonical(file, isn, b),
                |s, r| s.store(file, isn, r),
            );
            match stored {
                Ok(Ok(isn)) => Response::Stored { isn },
                Ok(Err(e)) => err(e),
                Err(e) => bad_record(e),
            }
        }
        Command::Update { file, isn, fields } => {
            let updated = with_record(
                s,
                fields.into_vec(),
                |s, b| s.update_canonical(file, isn, b),
                |s, p| s.update(file, isn, p),
            );
            match updated {
                Ok(Ok(())) => Response::Ok,
                Ok(Err(e)) => err(e),
                Err(e) => bad_record(e),
            }
        }
        Command::Delete { file, isn } => match s.delete(file, isn) {
            Ok(()) => Response::Ok,
            Err(e) => err(e),
        },
        Command::Read { file, isn, .. } => match s.read(file, isn) {
            Ok(r) => match r.map(|r| crate::record::encode_record(&r)).transpose() {
                Ok(b) => Response::Record(b.map(ByteBuf::from)),
                Err(e) => bad_record(e),
            },
            Err(e) => err(e),
        },
        Command::Et { id } => committed(s.et(id)),
        Command::Bt => {
            s.bt();
            Response::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(f: u32, i: u64) -> Command {
        Command::Delete {
            file: Fnr(f),
            isn: Isn(i),
        }
    }

    #[test]
    fn a_batch_reads_ahead_only_for_one_file_and_one_transaction() {
        let et = || Command::Et { id: None };
        assert_eq!(
            writes_to_read(&[del(10, 1), del(10, 3), et()]),
            Some((Fnr(10), vec![Isn(1), Isn(3)]))
        );
        // Two files: each command looks its record up.
        assert_eq!(writes_to_read(&[del(10, 1), del(11, 2), et()]), None);
        // A commit before the last command: what follows reads after it.
        assert_eq!(writes_to_read(&[del(10, 1), et(), del(10, 2), et()]), None);
        assert_eq!(writes_to_read(&[del(10, 1), Command::Bt, del(10, 2)]), None);
        // Nothing to read.
        assert_eq!(writes_to_read(&[et()]), None);
    }
}
