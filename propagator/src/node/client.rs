//! A connection to a node: one request, one response, in order.
//!
//! [`Conn`] is async (replication links and node-to-node calls use it);
//! [`Client`] wraps it with its own small runtime for command-line tools,
//! and implements [`ExecTarget`] so `etp exec --node` runs the very same
//! runner as `etp exec --data`.

use crate::database::CommitInfo;
use crate::exec::ExecTarget;
use crate::ids::{Fnr, Isn};
use crate::net::split::{LinkReader, LinkWriter};
use crate::net::{Identity, Stream};
use crate::record::{decode_record, encode_record, Record};
use crate::wire::Frames;
use crate::wire::{codec, Command, ErrorCode, Request, Response};
use crate::wire::{ReadRequest, SessionRequest};
use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// How long connecting to a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to node {addr}: {reason}")]
    Connect {
        addr: String,
        reason: String,
        /// The address refused the connection: nothing listens there.
        refused: bool,
    },
    #[error("connection to node {addr} failed: {reason}")]
    Io { addr: String, reason: String },
    #[error("message for node {addr} is too large to send: {reason}")]
    TooLarge { addr: String, reason: String },
    #[error("node {addr} closed the connection")]
    Closed { addr: String },
    #[error("node {addr}: {message}")]
    Remote {
        addr: String,
        code: ErrorCode,
        message: String,
    },
    #[error("an earlier request to node {addr} was abandoned before its answer arrived; the connection must be reopened")]
    Abandoned { addr: String },
    #[error("node {addr} answered {got} where {want} was expected")]
    Unexpected {
        addr: String,
        got: String,
        want: &'static str,
    },
}

impl ClientError {
    /// The address refused the connection (nothing listens there: the
    /// node is stopped and its host up), as opposed to a path that failed
    /// or a peer that answered wrongly.
    pub fn refused(&self) -> bool {
        matches!(self, ClientError::Connect { refused: true, .. })
    }

    /// The code an answer that passes this error on carries: a peer's own
    /// code, or `Unavailable` for a link that failed.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Remote { code, .. } => *code,
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Closed { .. }
            | ClientError::Abandoned { .. } => ErrorCode::Unavailable,
            ClientError::TooLarge { .. } => ErrorCode::BadRequest,
            ClientError::Unexpected { .. } => ErrorCode::Other,
        }
    }
}

/// One connection to a node. Answers come back in request order, so an
/// answer is matched to its request only by counting: [`Conn::call`] refuses
/// to run while an earlier request's answer is still owed (a `call` whose
/// future was dropped between its send and its receive, e.g. a losing
/// `tokio::select!` branch), since the next answer read would be that
/// earlier one. Pipelining callers use [`Conn::send`] and [`Conn::recv`].
pub struct Conn {
    addr: SocketAddr,
    framed: Framed<Stream, Frames>,
    /// Who the node is (None: plain TCP on loopback).
    peer: Option<Identity>,
    /// Requests sent (or begun) whose answers have not been read.
    owed: usize,
    /// Whether any answer arrived on this connection.
    answered: bool,
}

impl Conn {
    /// Connects to the node at `addr` with this process's transport
    /// ([`crate::net::client`]): TCP and the TLS handshake, both within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(addr: SocketAddr) -> Result<Conn, ClientError> {
        Conn::connect_with(addr, &crate::net::client()).await
    }

    /// [`Conn::connect`] with another transport (another certificate).
    pub async fn connect_with(
        addr: SocketAddr,
        transport: &crate::net::Transport,
    ) -> Result<Conn, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
            refused: false,
        };
        let (stream, peer) = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| ClientError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                    refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                })?;
            transport
                .connect(tcp, addr)
                .await
                .map_err(|e| connect_err(e.to_string()))
        })
        .await
        .map_err(|_| {
            connect_err(format!(
                "no connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })??;
        Ok(Conn {
            addr,
            framed: Framed::new(stream, codec()),
            peer,
            owed: 0,
            answered: false,
        })
    }

    /// Connects to the node that serves database `db` at `addr`: on TLS
    /// its certificate must be that database's.
    pub async fn connect_to(addr: SocketAddr, db: crate::ids::DbId) -> Result<Conn, ClientError> {
        let c = Conn::connect(addr).await?;
        match &c.peer {
            Some(id) if id.db != Some(db) => Err(ClientError::Connect {
                refused: false,
                addr: addr.to_string(),
                reason: format!("the node presented {id}, where database {db} was expected"),
            }),
            _ => Ok(c),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Who the node is, by its certificate (None: plain TCP on loopback).
    pub fn peer(&self) -> Option<&Identity> {
        self.peer.as_ref()
    }

    fn io(&self, reason: impl ToString) -> ClientError {
        io_err(self.addr, reason)
    }

    /// Sends a request without waiting for its response (pipelining).
    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let b = req.encode().map_err(|e| ClientError::TooLarge {
            addr: self.addr.to_string(),
            reason: e.to_string(),
        })?;
        // Counted before the send: a send dropped half-way may still reach
        // the node (the frame sits in the write buffer), so its answer is owed.
        self.owed += 1;
        self.framed.send(b).await.map_err(|e| self.io(e))
    }

    /// The next response; remote errors are returned as responses.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        let frame = self.framed.next().await;
        if matches!(frame, Some(Ok(_))) {
            self.owed = self.owed.saturating_sub(1);
            self.answered = true;
        }
        let r = answer(self.addr, frame);
        match r {
            // Plain TCP to a node that serves TLS: its alert reads as a
            // frame of an impossible length, or the socket closes.
            Err(ClientError::Io { addr, reason }) if self.peer.is_none() && !self.answered => {
                Err(ClientError::Io {
                    addr,
                    reason: format!("{reason} (does the node serve TLS? give the cluster's certificates: --ca, --cert, --key or ETP_CA, ETP_CERT, ETP_KEY)"),
                })
            }
            r => r,
        }
    }

    /// One request and its response; a remote error becomes `Err`. Refused
    /// while an earlier request's answer is owed ([`ClientError::Abandoned`]):
    /// never returns another request's answer.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        if self.owed > 0 {
            return Err(ClientError::Abandoned {
                addr: self.addr.to_string(),
            });
        }
        self.send(req).await?;
        match self.recv().await? {
            Response::Error { code, message } => Err(ClientError::Remote {
                addr: self.addr.to_string(),
                code,
                message,
            }),
            other => Ok(other),
        }
    }

    /// The connection in two halves, for a replication link whose batches
    /// may be written from the thread that made them durable (see
    /// `node::tail`): the answers, read as before, and the socket's write
    /// half. Only between requests: with an answer owed, or bytes read and
    /// not yet decoded, the halves would lose track of the conversation.
    pub fn split(self) -> Result<(ConnReader, LinkWriter), ClientError> {
        if self.owed > 0 {
            return Err(ClientError::Abandoned {
                addr: self.addr.to_string(),
            });
        }
        let parts = self.framed.into_parts();
        if !parts.read_buf.is_empty() || !parts.write_buf.is_empty() {
            return Err(io_err(self.addr, "the node sent bytes nobody asked for"));
        }
        let (rd, wr) = match parts.io {
            Stream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (LinkReader::plain(rd), LinkWriter::plain(wr))
            }
            Stream::Tls(tls) => match *tls {
                tokio_rustls::TlsStream::Client(c) => {
                    crate::net::split::split_tls(c).map_err(|e| io_err(self.addr, e))?
                }
                tokio_rustls::TlsStream::Server(_) => {
                    return Err(io_err(self.addr, "a server's side cannot be split"))
                }
            },
        };
        Ok((
            ConnReader {
                addr: self.addr,
                framed: tokio_util::codec::FramedRead::new(rd, codec()),
            },
            wr,
        ))
    }

    pub fn unexpected(&self, got: &Response, want: &'static str) -> ClientError {
        unexpected(self.addr, got, want)
    }
}

/// A frame read from node `addr` (or the end of the connection) as its answer.
fn answer(
    addr: SocketAddr,
    frame: Option<Result<bytes::BytesMut, std::io::Error>>,
) -> Result<Response, ClientError> {
    match frame {
        None => Err(ClientError::Closed {
            addr: addr.to_string(),
        }),
        Some(Err(e)) => Err(io_err(addr, e)),
        Some(Ok(frame)) => Response::decode(&frame).map_err(|e| io_err(addr, e)),
    }
}

fn io_err(addr: SocketAddr, reason: impl ToString) -> ClientError {
    ClientError::Io {
        addr: addr.to_string(),
        reason: reason.to_string(),
    }
}

fn unexpected(addr: SocketAddr, got: &Response, want: &'static str) -> ClientError {
    ClientError::Unexpected {
        addr: addr.to_string(),
        got: format!("{got:?}").chars().take(200).collect(),
        want,
    }
}

/// The reading half of a split [`Conn`].
pub struct ConnReader {
    addr: SocketAddr,
    framed: tokio_util::codec::FramedRead<LinkReader, Frames>,
}

impl ConnReader {
    /// The next response; remote errors are returned as responses.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        answer(self.addr, self.framed.next().await)
    }

    pub fn unexpected(&self, got: &Response, want: &'static str) -> ClientError {
        unexpected(self.addr, got, want)
    }
}

/// How long a blocking client waits for most answers.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a blocking client waits for the answer to `req`: a wait the
/// request names itself, plus a minute; a copy, a restore, a
/// verification or a read-back of the protection log (as long as the
/// data they move) six hours; anything else
/// [`ANSWER_TIMEOUT`].
pub fn answer_timeout(req: &Request) -> Duration {
    use crate::wire::{CopyRequest, OperationRequest, RecoveryOp, ReplicateAction};
    const LONG: Duration = Duration::from_secs(6 * 3600);
    match req {
        Request::Operation(OperationRequest::WaitConfirmed { timeout_ms, .. }) => {
            Duration::from_millis(*timeout_ms).saturating_add(Duration::from_secs(60))
        }
        Request::Operation(OperationRequest::Replicate {
            action: ReplicateAction::Verify { .. },
            ..
        })
        | Request::Copy(CopyRequest::CopyTake { .. } | CopyRequest::PlogCheck { .. })
        | Request::Recovery(
            RecoveryOp::Restore { .. }
            | RecoveryOp::RestoreRange { .. }
            | RecoveryOp::Rebase { .. }
            | RecoveryOp::Reapply { .. },
        ) => LONG,
        _ => ANSWER_TIMEOUT,
    }
}

fn silent(addr: SocketAddr, limit: Duration) -> ClientError {
    io_err(
        addr,
        format!(
            "no answer within {} s (the node is stalled or not an etp node)",
            limit.as_secs()
        ),
    )
}

/// A blocking client for command-line tools.
pub struct Client {
    rt: tokio::runtime::Runtime,
    conn: Conn,
    in_txn: bool,
    /// Dumps read held replicates too (see [`Client::stale_reads`]).
    stale: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        Client::connect_with(addr, &crate::net::client())
    }

    /// [`Client::connect`] with another transport (another certificate).
    pub fn connect_with(
        addr: SocketAddr,
        transport: &crate::net::Transport,
    ) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Connect {
                refused: false,
                addr: addr.to_string(),
                reason: format!("cannot start a runtime: {e}"),
            })?;
        let conn = rt.block_on(Conn::connect_with(addr, transport))?;
        Ok(Client {
            rt,
            conn,
            in_txn: false,
            stale: false,
        })
    }

    /// One request and its answer, within [`answer_timeout`]: a node that
    /// never answers is named, never waited for forever.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let Client { rt, conn, .. } = self;
        let limit = answer_timeout(req);
        let addr = conn.addr();
        rt.block_on(async {
            tokio::time::timeout(limit, conn.call(req))
                .await
                .unwrap_or_else(|_| Err(silent(addr, limit)))
        })
    }

    /// Several commands of this session in one round trip (see [`Request::Session(SessionRequest::Batch)`]).
    pub fn batch(&mut self, cmds: Vec<Command>) -> Result<Response, ClientError> {
        self.call(&Request::Session(SessionRequest::Batch(cmds)))
    }

    /// Sends a request without waiting for its answer (pipelining): the
    /// answers come back in request order through [`Client::recv`].
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let Client { rt, conn, .. } = self;
        rt.block_on(conn.send(req))
    }

    /// The next answer owed (remote errors are answers here), within
    /// [`ANSWER_TIMEOUT`].
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        let Client { rt, conn, .. } = self;
        let addr = conn.addr();
        rt.block_on(async {
            tokio::time::timeout(ANSWER_TIMEOUT, conn.recv())
                .await
                .unwrap_or_else(|_| Err(silent(addr, ANSWER_TIMEOUT)))
        })
    }

    /// Runs whole transactions (each a batch of commands ending with ET)
    /// with up to `depth` in flight on this connection, and hands each
    /// answer to `answer` in order. The node resolves a transaction while
    /// the ones before it sync, and a group sync makes several durable at
    /// once; each is still acknowledged only once it and every one before
    /// it are durable. An error from `answer` stops sending; the answers
    /// already owed are still read (and passed on) before it returns.
    pub fn pipeline<E: From<ClientError>>(
        &mut self,
        txns: impl IntoIterator<Item = Vec<Command>>,
        depth: usize,
        mut answer: impl FnMut(Response) -> Result<(), E>,
    ) -> Result<(), E> {
        let depth = depth.max(1);
        let mut owed = 0usize;
        let mut first_err = None;
        for cmds in txns {
            if owed >= depth {
                let r = self.recv()?;
                owed -= 1;
                if let Err(e) = answer(r) {
                    first_err = Some(e);
                    break;
                }
            }
            self.send(&Request::Session(SessionRequest::Batch(cmds)))?;
            owed += 1;
        }
        while owed > 0 {
            let r = self.recv()?;
            owed -= 1;
            if let Err(e) = answer(r) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn exec(&mut self, cmd: Command) -> Result<Response, ClientError> {
        self.call(&Request::Session(SessionRequest::Exec(cmd)))
    }

    fn ok(&self, r: Response) -> Result<(), ClientError> {
        match r {
            Response::Ok => Ok(()),
            other => Err(self.conn.unexpected(&other, "Ok")),
        }
    }

    /// Whether [`Client::dump_raw`] and [`Client::dump`] read a replicate
    /// that serves no current reads (held: restored and not caught up,
    /// shunned, in error, being loaded) rather than being refused: for a
    /// tool that inspects what a replicate holds, whatever its state.
    pub fn stale_reads(&mut self, yes: bool) -> &mut Client {
        self.stale = yes;
        self
    }

    /// Every record of a file in ascending isn, in pages, as raw bytes;
    /// `f` is told whether the file is a log file.
    pub fn dump_raw(
        &mut self,
        file: Fnr,
        mut f: impl FnMut(Isn, &[u8], bool) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let mut from = Isn(1);
        loop {
            let r = self.call(&Request::Read(ReadRequest::Dump {
                file,
                from,
                limit: 10_000,
                stale: self.stale,
            }))?;
            let Response::Records {
                items,
                done,
                is_log,
            } = r
            else {
                return Err(self.conn.unexpected(&r, "Records"));
            };
            for (isn, bytes) in items {
                from = Isn(isn.0 + 1);
                f(isn, &bytes, is_log)?;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Every record of a (non-log) file in ascending isn.
    pub fn dump(
        &mut self,
        file: Fnr,
        mut f: impl FnMut(Isn, Record) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let addr = self.conn.addr.to_string();
        self.dump_raw(file, |isn, bytes, _| {
            let rec = decode_record(bytes).map_err(|e| ClientError::Remote {
                addr: addr.clone(),
                code: ErrorCode::BadRequest,
                message: format!("record {isn} of file {file} does not decode: {e}"),
            })?;
            f(isn, rec)
        })
    }
}

fn encode_for_wire(r: &Record) -> Result<ByteBuf, ClientError> {
    encode_record(r).map(ByteBuf::from).map_err(local_error)
}

/// A record that cannot be sent, as the client's error.
fn local_error(e: crate::record::RecordError) -> ClientError {
    ClientError::Remote {
        addr: "local".into(),
        code: ErrorCode::BadRequest,
        message: e.to_string(),
    }
}

impl ExecTarget for Client {
    type Error = ClientError;

    fn store(&mut self, file: Fnr, isn: Option<Isn>, fields: Record) -> Result<Isn, ClientError> {
        self.in_txn = true;
        let record = encode_for_wire(&fields)?;
        match self.exec(Command::Store {
            file,
            isn,
            fields: record,
        })? {
            Response::Stored { isn } => Ok(isn),
            other => Err(self.conn.unexpected(&other, "Stored")),
        }
    }

    fn update(&mut self, file: Fnr, isn: Isn, fields: Record) -> Result<(), ClientError> {
        self.in_txn = true;
        let patch = encode_for_wire(&fields)?;
        let r = self.exec(Command::Update {
            file,
            isn,
            fields: patch,
        })?;
        self.ok(r)
    }

    fn delete(&mut self, file: Fnr, isn: Isn) -> Result<(), ClientError> {
        self.in_txn = true;
        let r = self.exec(Command::Delete { file, isn })?;
        self.ok(r)
    }

    fn read(&mut self, file: Fnr, isn: Isn, stale: bool) -> Result<Option<Record>, ClientError> {
        match self.exec(Command::Read { file, isn, stale })? {
            Response::Record(None) => Ok(None),
            Response::Record(Some(b)) => {
                decode_record(&b)
                    .map(Some)
                    .map_err(|e| ClientError::Remote {
                        addr: self.conn.addr.to_string(),
                        code: ErrorCode::Other,
                        message: e.to_string(),
                    })
            }
            other => Err(self.conn.unexpected(&other, "Record")),
        }
    }

    fn et(&mut self, id: Option<String>) -> Result<CommitInfo, ClientError> {
        self.in_txn = false;
        match self.exec(Command::Et { id })? {
            Response::Committed(c) => Ok(c.into_info()),
            other => Err(self.conn.unexpected(&other, "Committed")),
        }
    }

    fn bt(&mut self) -> Result<(), ClientError> {
        self.in_txn = false;
        let r = self.exec(Command::Bt)?;
        self.ok(r)
    }

    fn in_transaction(&self) -> bool {
        self.in_txn
    }

    fn send_txn(&mut self, txn: &[&crate::exec::ExecCommand]) -> Result<bool, ClientError> {
        let cmds = txn
            .iter()
            .map(|c| c.to_wire().map_err(local_error))
            .collect::<Result<Vec<_>, _>>()?;
        self.send(&Request::Session(SessionRequest::Chain(cmds)))?;
        Ok(true)
    }

    fn recv_txn(
        &mut self,
    ) -> Option<Result<Result<CommitInfo, (usize, ClientError)>, ClientError>> {
        let addr = self.conn.addr.to_string();
        Some(match self.recv() {
            Err(e) => Err(e),
            Ok(Response::Committed(c)) => Ok(Ok(c.into_info())),
            Ok(Response::ChainFailed {
                index,
                code,
                message,
            }) => Ok(Err((
                index as usize,
                ClientError::Remote {
                    addr,
                    code,
                    message,
                },
            ))),
            // Not run (an earlier one failed): no command of it is to blame.
            Ok(Response::Error { code, message }) => Ok(Err((
                usize::MAX,
                ClientError::Remote {
                    addr,
                    code,
                    message,
                },
            ))),
            Ok(other) => Err(self.conn.unexpected(&other, "Committed")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A node that answers every `Dump` after `delay` with one record whose
    /// isn is the `from` it was asked for, so an answer names its request.
    async fn slow_node(delay: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mut framed = Framed::new(stream, codec());
            while let Some(Ok(frame)) = framed.next().await {
                let Ok(Request::Read(ReadRequest::Dump { from, .. })) = Request::decode(&frame)
                else {
                    return;
                };
                tokio::time::sleep(delay).await;
                let resp = Response::Records {
                    items: vec![(from, ByteBuf::from(vec![1u8]))],
                    done: false,
                    is_log: false,
                };
                let Ok(b) = resp.encode() else { return };
                if framed.send(b).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    fn dump(from: u64) -> Request {
        Request::Read(ReadRequest::Dump {
            file: Fnr(20),
            from: Isn(from),
            limit: 8192,
            stale: false,
        })
    }

    /// The defect behind a load from a full replicate refused forever: a
    /// `Dump` call dropped by a losing `select!` branch left its answer on
    /// the connection, and the next call (for the next chunk) took it as its
    /// own: records of `[16385, …)` for a chunk starting at 24577.
    #[tokio::test]
    async fn an_abandoned_call_never_hands_its_answer_to_the_next_call() {
        let addr = slow_node(Duration::from_millis(200)).await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        let first = dump(16385);
        let abandoned = tokio::time::timeout(Duration::from_millis(20), conn.call(&first)).await;
        assert!(abandoned.is_err(), "the first call should still be waiting");
        match conn.call(&dump(24577)).await {
            Err(ClientError::Abandoned { .. }) => {}
            Ok(Response::Records { items, .. }) => panic!(
                "the call for isn 24577 was answered with the abandoned call's records: {:?}",
                items.iter().map(|(i, _)| *i).collect::<Vec<_>>()
            ),
            other => panic!("unexpected: {other:?}"),
        }
    }

    /// Pipelining (send, send, recv, recv) is unaffected: answers are owed
    /// and paid in order, and `call` works again once they are read.
    #[tokio::test]
    async fn pipelined_sends_are_answered_in_order_then_calls_work_again() {
        let addr = slow_node(Duration::from_millis(1)).await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        conn.send(&dump(1)).await.expect("send");
        conn.send(&dump(2)).await.expect("send");
        for want in [1, 2] {
            match conn.recv().await.expect("recv") {
                Response::Records { items, .. } => assert_eq!(items[0].0, Isn(want)),
                other => panic!("unexpected: {other:?}"),
            }
        }
        match conn.call(&dump(3)).await.expect("call") {
            Response::Records { items, .. } => assert_eq!(items[0].0, Isn(3)),
            other => panic!("unexpected: {other:?}"),
        }
    }
}
