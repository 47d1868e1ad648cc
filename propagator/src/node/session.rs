//! Client sessions: a connection's commands run on its own session (its
//! transaction backed out when the connection drops), refused while a
//! recovery has quiesced the database.

use super::*;
use crate::wire::SessionRequest;

impl Node {
    pub(super) async fn session(&self, conv: &mut Conversation, r: SessionRequest) -> Response {
        match r {
            SessionRequest::Exec(cmd) => self.exec(conv, vec![cmd]).await,
            SessionRequest::Batch(cmds) if cmds.is_empty() => Response::Ok,
            SessionRequest::Batch(cmds) => self.exec(conv, cmds).await,
        }
    }

    pub(super) async fn exec(&self, conv: &mut Conversation, cmds: Vec<Command>) -> Response {
        // Held while the commands run, so a quiesce waits for updates in
        // flight and the LSN it reports is the last one before it.
        let _gate = self.update_gate.read().await;
        if !conv.exempt
            && self.quiesced.load(std::sync::atomic::Ordering::SeqCst)
            && cmds.iter().any(|c| match c {
                Command::Store { .. } | Command::Update { .. } | Command::Delete { .. } => true,
                // An open transaction may back out (BT), not commit.
                Command::Et { .. } => conv.session.as_ref().is_some_and(|s| s.in_transaction()),
                Command::Read { .. } | Command::Bt => false,
            })
        {
            return Response::error(Failure::new(
                ErrorCode::Unavailable,
                "updates are refused while a recovery runs on this database (quiesced by etp recover run): retry later",
            ));
        }
        let mut s = conv.session.take().unwrap_or_else(|| self.db.session());
        let (s, r) = match errors::off_reactor(move || {
            let mut r = Response::Ok;
            for cmd in cmds {
                r = run_command(&mut s, cmd);
                if matches!(r, Response::Error { .. }) {
                    // The session has aborted the transaction, as a local
                    // session does: a later ET reports it.
                    break;
                }
            }
            Ok::<_, Internal>((s, r))
        })
        .await
        {
            Ok(x) => x,
            Err(e) => return Response::error(e),
        };
        conv.session = Some(s);
        r
    }
}

pub(super) fn bad_record(e: impl std::fmt::Display) -> Response {
    Response::error(Failure::new(
        ErrorCode::BadRequest,
        format!("bad record: {e}"),
    ))
}

pub(super) fn run_command(s: &mut Session, cmd: Command) -> Response {
    let err = |e: DbError| Response::error(e);
    match cmd {
        Command::Store { file, isn, fields } => match decode_record(&fields) {
            Err(e) => {
                s.bt();
                bad_record(e)
            }
            Ok(r) => match s.store(file, isn, r) {
                Ok(isn) => Response::Stored { isn },
                Err(e) => err(e),
            },
        },
        Command::Update { file, isn, fields } => match decode_record(&fields) {
            Err(e) => {
                s.bt();
                bad_record(e)
            }
            Ok(p) => match s.update(file, isn, p) {
                Ok(()) => Response::Ok,
                Err(e) => err(e),
            },
        },
        Command::Delete { file, isn } => match s.delete(file, isn) {
            Ok(()) => Response::Ok,
            Err(e) => err(e),
        },
        Command::Read { file, isn } => match s.read(file, isn) {
            Ok(r) => match r.map(|r| crate::record::encode_record(&r)).transpose() {
                Ok(b) => Response::Record(b.map(ByteBuf::from)),
                Err(e) => bad_record(e),
            },
            Err(e) => err(e),
        },
        Command::Et { id } => match s.et(id) {
            Ok(info) => Response::Committed(CommitReply {
                lsn: info.lsn,
                time_us: info.time_us,
                client_id: info.client_id,
                seqs: info.seqs.into_iter().map(|(f, (a, b))| (f, a, b)).collect(),
            }),
            Err(e) => err(e),
        },
        Command::Bt => {
            s.bt();
            Response::Ok
        }
    }
}
