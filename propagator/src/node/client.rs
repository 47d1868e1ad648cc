//! A connection to a node: one request, one response, in order.
//!
//! [`Conn`] is async (replication links and node-to-node calls use it);
//! [`Client`] wraps it with its own small runtime for command-line tools,
//! and implements [`ExecTarget`] so `etp exec --node` runs the very same
//! runner as `etp exec --data`.

use crate::database::CommitInfo;
use crate::exec::ExecTarget;
use crate::ids::{Fnr, Isn};
use crate::record::{decode_record, encode_record, Record};
use crate::wire::{codec, Command, Request, Response};
use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// How long connecting to a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to node {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to node {addr} failed: {reason}")]
    Io { addr: String, reason: String },
    #[error("message for node {addr} is too large to send: {reason}")]
    TooLarge { addr: String, reason: String },
    #[error("node {addr} closed the connection")]
    Closed { addr: String },
    #[error("node {addr}: {message}")]
    Remote { addr: String, message: String },
    #[error("node {addr} answered {got} where {want} was expected")]
    Unexpected {
        addr: String,
        got: String,
        want: &'static str,
    },
}

pub struct Conn {
    addr: SocketAddr,
    framed: Framed<TcpStream, LengthDelimitedCodec>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn, ClientError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr: addr.to_string(),
                reason: "timed out".into(),
            })?
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            addr,
            framed: Framed::new(stream, codec()),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn io(&self, reason: impl ToString) -> ClientError {
        ClientError::Io {
            addr: self.addr.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Sends a request without waiting for its response (pipelining).
    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let b = req.encode().map_err(|e| ClientError::TooLarge {
            addr: self.addr.to_string(),
            reason: e.to_string(),
        })?;
        self.framed.send(b).await.map_err(|e| self.io(e))
    }

    /// The next response; remote errors are returned as responses.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        match self.framed.next().await {
            None => Err(ClientError::Closed {
                addr: self.addr.to_string(),
            }),
            Some(Err(e)) => Err(self.io(e)),
            Some(Ok(frame)) => Response::decode(&frame).map_err(|e| self.io(e)),
        }
    }

    /// One request and its response; a remote error becomes `Err`.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req).await?;
        match self.recv().await? {
            Response::Error { message } => Err(ClientError::Remote {
                addr: self.addr.to_string(),
                message,
            }),
            other => Ok(other),
        }
    }

    pub fn unexpected(&self, got: &Response, want: &'static str) -> ClientError {
        ClientError::Unexpected {
            addr: self.addr.to_string(),
            got: format!("{got:?}").chars().take(200).collect(),
            want,
        }
    }
}

/// A blocking client for command-line tools.
pub struct Client {
    rt: tokio::runtime::Runtime,
    conn: Conn,
    in_txn: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("cannot start a runtime: {e}"),
            })?;
        let conn = rt.block_on(Conn::connect(addr))?;
        Ok(Client {
            rt,
            conn,
            in_txn: false,
        })
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let Client { rt, conn, .. } = self;
        rt.block_on(conn.call(req))
    }

    /// Several commands of this session in one round trip (see [`Request::Batch`]).
    pub fn batch(&mut self, cmds: Vec<Command>) -> Result<Response, ClientError> {
        self.call(&Request::Batch(cmds))
    }

    fn exec(&mut self, cmd: Command) -> Result<Response, ClientError> {
        self.call(&Request::Exec(cmd))
    }

    fn ok(&self, r: Response) -> Result<(), ClientError> {
        match r {
            Response::Ok => Ok(()),
            other => Err(self.conn.unexpected(&other, "Ok")),
        }
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
            let r = self.call(&Request::Dump {
                file,
                from,
                limit: 10_000,
            })?;
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
                message: format!("record {isn} of file {file} does not decode: {e}"),
            })?;
            f(isn, rec)
        })
    }
}

fn encode_for_wire(r: &Record) -> Result<ByteBuf, ClientError> {
    encode_record(r)
        .map(ByteBuf::from)
        .map_err(|e| ClientError::Remote {
            addr: "local".into(),
            message: e.to_string(),
        })
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

    fn read(&mut self, file: Fnr, isn: Isn) -> Result<Option<Record>, ClientError> {
        match self.exec(Command::Read { file, isn })? {
            Response::Record(None) => Ok(None),
            Response::Record(Some(b)) => {
                decode_record(&b)
                    .map(Some)
                    .map_err(|e| ClientError::Remote {
                        addr: self.conn.addr.to_string(),
                        message: e.to_string(),
                    })
            }
            other => Err(self.conn.unexpected(&other, "Record")),
        }
    }

    fn et(&mut self, id: Option<String>) -> Result<CommitInfo, ClientError> {
        self.in_txn = false;
        match self.exec(Command::Et { id })? {
            Response::Committed(c) => Ok(CommitInfo {
                lsn: c.lsn,
                time_us: c.time_us,
                client_id: c.client_id,
                seqs: c.seqs.into_iter().map(|(f, a, b)| (f, (a, b))).collect(),
                metas: Vec::new(),
                visible_us: c.time_us,
            }),
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
}
