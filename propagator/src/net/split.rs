//! A client connection in two halves that can be used from different
//! threads: the reading half async, the writing half synchronous and
//! non-blocking, for a streaming replication link whose batches the group
//! commit's leader writes from the thread that synced them
//! (`node::tail`).
//!
//! On plain TCP these are tokio's owned halves. On TLS both halves share
//! the rustls connection under a mutex held only while records are
//! decrypted or encrypted: the writer encrypts a frame into its own buffer
//! of pending bytes ([`LinkWriter::append`]) and writes those to the socket
//! as it takes them; the reader decrypts what the socket delivers. Only the
//! writer ever writes to the socket, so ciphertext leaves in the order it
//! was made (anything the reader's processing queues, such as a key
//! update's answer, leaves with the next frame).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

struct Shared {
    sock: TcpStream,
    tls: Mutex<rustls::ClientConnection>,
}

impl Shared {
    fn tls(&self) -> std::sync::MutexGuard<'_, rustls::ClientConnection> {
        self.tls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The socket as a non-blocking `std::io` reader/writer for rustls.
struct Sock<'a>(&'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(b)
    }
}

/// Splits a TLS client stream (after its handshake) into its halves.
pub(crate) fn split_tls(
    s: tokio_rustls::client::TlsStream<super::TlsIo>,
) -> io::Result<(LinkReader, LinkWriter)> {
    let (buffered, mut tls) = s.into_inner();
    // Bytes read ahead of rustls go to it first.
    let mut ahead: &[u8] = buffered.buffer();
    while !ahead.is_empty() {
        // 0: rustls takes nothing more (the peer ended the session).
        if tls.read_tls(&mut ahead)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the node ended the TLS session",
            ));
        }
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    let sock = buffered.into_inner();
    // The link's window bounds what is in flight; frames are never cut.
    tls.set_buffer_limit(None);
    let shared = Arc::new(Shared {
        sock,
        tls: Mutex::new(tls),
    });
    Ok((
        LinkReader(Reader::Tls(shared.clone())),
        LinkWriter(Writer::Tls(shared)),
    ))
}

/// The reading half.
pub struct LinkReader(Reader);

enum Reader {
    Plain(OwnedReadHalf),
    Tls(Arc<Shared>),
}

impl LinkReader {
    pub(crate) fn plain(r: OwnedReadHalf) -> LinkReader {
        LinkReader(Reader::Plain(r))
    }
}

impl AsyncRead for LinkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = match &mut self.get_mut().0 {
            Reader::Plain(r) => return Pin::new(r).poll_read(cx, buf),
            Reader::Tls(s) => s.clone(),
        };
        loop {
            {
                let mut tls = shared.tls();
                match tls.reader().read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        // 0: the peer closed the session (end of stream).
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                // No plaintext: take what the socket has.
                match tls.read_tls(&mut Sock(&shared.sock)) {
                    Ok(0) => return Poll::Ready(Ok(())),
                    Ok(_) => {
                        tls.process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(shared.sock.poll_read_ready(cx))?;
        }
    }
}

/// The writing half: synchronous, never waits.
pub struct LinkWriter(Writer);

enum Writer {
    Plain(OwnedWriteHalf),
    Tls(Arc<Shared>),
}

impl LinkWriter {
    pub(crate) fn plain(w: OwnedWriteHalf) -> LinkWriter {
        LinkWriter(Writer::Plain(w))
    }

    /// Appends the bytes that carry `frame` on the wire to `pending`:
    /// the frame itself, or its TLS records.
    pub fn append(&self, pending: &mut Vec<u8>, frame: Vec<u8>) -> io::Result<()> {
        match &self.0 {
            Writer::Plain(_) => {
                if pending.is_empty() {
                    *pending = frame;
                } else {
                    pending.extend_from_slice(&frame);
                }
                Ok(())
            }
            Writer::Tls(s) => {
                let mut tls = s.tls();
                tls.writer().write_all(&frame)?;
                while tls.wants_write() {
                    tls.write_tls(pending)?;
                }
                Ok(())
            }
        }
    }

    /// Writes what the socket takes of `bytes` (made by [`LinkWriter::append`])
    /// without waiting.
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Writer::Plain(w) => w.try_write(bytes),
            Writer::Tls(s) => s.sock.try_write(bytes),
        }
    }

    /// Waits until the socket takes more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        match &self.0 {
            Writer::Plain(w) => w.writable().await,
            Writer::Tls(s) => s.sock.writable().await,
        }
    }
}
