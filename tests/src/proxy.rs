//! A TCP fault-injecting proxy for link-fault tests between two node
//! processes.
//!
//! Point one node at [`FaultProxy::addr`] instead of the other node's
//! address; the proxy forwards every accepted connection to the real target
//! and lets the test cut, stall, refuse or reset the link at will.
//!
//! Built on std threads and `std::net` only. Every connection has two pump
//! threads (one per direction) whose sockets have short read and write
//! timeouts, so flags (stall, cut, shutdown) are noticed within
//! [`POLL`]. Dropping the proxy stops the acceptor, closes the listening
//! port and every connection, and joins every thread it started.
//!
//! About resets: an abortive close (an RST on the wire) needs `SO_LINGER`
//! with a zero timeout, but `TcpStream::set_linger` is still unstable
//! (`tcp_linger`) and the workspace forbids `unsafe`, so
//! [`FaultProxy::reset_after`] closes both sockets with
//! `shutdown(Shutdown::Both)` instead. The peers see the stream end (EOF, or
//! an error on a later write) exactly at the byte threshold, so the frame in
//! flight is cut short all the same; they just may not see `ECONNRESET`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often pump threads look at their flags (socket read/write timeout).
pub const POLL: Duration = Duration::from_millis(50);
/// How often the acceptor polls its nonblocking listener.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// How long connecting to the target may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Size of each pump's buffer: the most bytes moved per read.
const BUF_SIZE: usize = 16 * 1024;

/// A direction of travel through the proxy. The client is whoever connected
/// to the proxy; the server is the proxy's target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }
}

/// Locks a mutex, ignoring poisoning: the protected state stays consistent
/// (plain flags and maps), and `Drop` must not panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// One proxied connection, as seen by `cut` and the reset logic.
struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    killed: AtomicBool,
    /// Bytes forwarded on this connection, by `Direction::index`.
    bytes: [AtomicU64; 2],
}

impl Conn {
    /// Closes both sockets in both directions; both pumps exit promptly.
    fn close(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// An armed `reset_after`.
struct ResetArm {
    direction: Direction,
    after_bytes: u64,
    /// Bytes already forwarded (in `direction`) by connections open when the
    /// reset was armed; connections not listed started at zero.
    baselines: HashMap<u64, u64>,
}

struct Shared {
    target: SocketAddr,
    shutdown: AtomicBool,
    refusing: AtomicBool,
    stalled: Mutex<bool>,
    stall_changed: Condvar,
    accepted: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    open: AtomicUsize,
    bytes: [AtomicU64; 2],
    /// Latency added before forwarding each read, in µs, by `Direction::index`.
    delays: [AtomicU64; 2],
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    arm: Mutex<Option<ResetArm>>,
    /// Connection threads (each joins its second pump thread itself).
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopping(&self, conn: &Conn) -> bool {
        conn.killed() || self.shutdown.load(Ordering::SeqCst)
    }

    /// Blocks while the proxy is stalled. Returns `false` if the connection
    /// was killed or the proxy is shutting down meanwhile.
    fn wait_unstalled(&self, conn: &Conn) -> bool {
        let mut stalled = lock(&self.stalled);
        loop {
            if self.stopping(conn) {
                return false;
            }
            if !*stalled {
                return true;
            }
            stalled = self
                .stall_changed
                .wait_timeout(stalled, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// With `n` bytes read in `dir`, how many to forward, and whether to reset
    /// the connection right after forwarding them.
    fn reset_check(&self, conn: &Conn, dir: Direction, n: usize) -> (usize, bool) {
        let mut arm = lock(&self.arm);
        let Some(a) = arm.as_ref() else {
            return (n, false);
        };
        if a.direction != dir {
            return (n, false);
        }
        let base = a.baselines.get(&conn.id).copied().unwrap_or(0);
        let sent = conn.bytes[dir.index()]
            .load(Ordering::SeqCst)
            .saturating_sub(base);
        let remaining = a.after_bytes.saturating_sub(sent);
        match usize::try_from(remaining) {
            Ok(r) if r <= n => {
                *arm = None;
                (r, true)
            }
            _ => (n, false),
        }
    }
}

/// A TCP proxy on `127.0.0.1` that forwards to one target and injects link
/// faults on demand. Dropping it closes the port and every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("accepted", &self.accepted())
            .field("open", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards each accepted connection to `target`.
    pub fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            shutdown: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            stalled: Mutex::new(false),
            stall_changed: Condvar::new(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            delays: [AtomicU64::new(0), AtomicU64::new(0)],
            conns: Mutex::new(HashMap::new()),
            arm: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(&shared, listener))?
        };
        Ok(FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Closes every current connection (both sockets, `shutdown(Both)`); new
    /// connections are still accepted.
    pub fn cut(&self) {
        for conn in lock(&self.shared.conns).values() {
            conn.close();
        }
        self.shared.stall_changed.notify_all();
    }

    /// Stops forwarding bytes (both directions) on current and new
    /// connections until [`resume`](Self::resume); connections stay open and
    /// data is held (left in the socket buffers), not dropped.
    pub fn stall(&self) {
        *lock(&self.shared.stalled) = true;
    }

    /// Undoes [`stall`](Self::stall): held data is delivered.
    pub fn resume(&self) {
        *lock(&self.shared.stalled) = false;
        self.shared.stall_changed.notify_all();
    }

    /// Refuses new connections (accepts then immediately closes them) until
    /// [`accept_again`](Self::accept_again): "link down". Current connections
    /// are untouched; combine with [`cut`](Self::cut) to drop them too.
    pub fn refuse(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
    }

    /// Undoes [`refuse`](Self::refuse).
    pub fn accept_again(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }

    /// Adds `latency` before each forwarded read in `direction` (on current
    /// and new connections; `Duration::ZERO` removes it): a slow link, so a
    /// request's answer arrives well after the other side moved on.
    pub fn delay(&self, direction: Direction, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shared.delays[direction.index()].store(us, Ordering::SeqCst);
    }

    /// Arms a mid-frame reset: once a connection has forwarded `after_bytes`
    /// more bytes in `direction` (counted from now for connections already
    /// open, from their start for new ones), exactly that many are forwarded
    /// and the connection is closed abruptly, cutting whatever frame is in
    /// flight. Applies once, to the first connection that crosses the
    /// threshold; arming again replaces a pending arm. `after_bytes == 0`
    /// resets on the next byte in `direction`, forwarding none of it.
    ///
    /// The close is `shutdown(Both)` on both sockets, not an RST: see the
    /// module docs (`TcpStream::set_linger` is unstable).
    pub fn reset_after(&self, direction: Direction, after_bytes: u64) {
        let baselines = lock(&self.shared.conns)
            .values()
            .map(|c| (c.id, c.bytes[direction.index()].load(Ordering::SeqCst)))
            .collect();
        *lock(&self.shared.arm) = Some(ResetArm {
            direction,
            after_bytes,
            baselines,
        });
    }

    /// Whether a `reset_after` is armed and has not fired yet.
    pub fn reset_pending(&self) -> bool {
        lock(&self.shared.arm).is_some()
    }

    /// Resets fired so far by [`reset_after`](Self::reset_after).
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, refused ones excluded. A connection
    /// whose upstream connect fails (target down) counts, and is closed at
    /// once.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused so far while [`refuse`](Self::refuse) was in force.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Accepted connections not yet finished (both pumps still to exit).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Total bytes forwarded in `direction`, over all connections. Bytes are
    /// counted as they are handed to the receiving socket, so when a peer has
    /// read them they are already included.
    pub fn bytes(&self, direction: Direction) -> u64 {
        self.shared.bytes[direction.index()].load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.stall_changed.notify_all();
        // The acceptor owns the listener: joining it closes the port, and no
        // worker is added after it has exited.
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // A connection registering after this sweep sees `shutdown` (set
        // before, checked under the same lock) and closes itself.
        for conn in lock(&self.shared.conns).values() {
            conn.close();
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

/// Decrements the open-connection count when a connection thread ends,
/// however it ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut next_id: u64 = 0;
    while !shared.shutdown.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // WouldBlock (nothing pending) or a transient error such as
            // EMFILE: wait a little and look again.
            Err(_) => {
                thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if shared.shutdown.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            break;
        }
        if shared.refusing.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let id = next_id;
        next_id += 1;
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(Arc::clone(shared));
        let worker = thread::Builder::new()
            .name(format!("proxy-conn-{id}"))
            .spawn(move || {
                let shared = Arc::clone(&guard.0);
                run_connection(&shared, id, client);
                drop(guard);
            });
        // On spawn failure the closure (guard and client) is dropped: the
        // client is closed and the count restored.
        if let Ok(worker) = worker {
            let mut workers = lock(&shared.workers);
            workers.retain(|w| !w.is_finished());
            workers.push(worker);
        }
    }
}

fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(POLL))?;
    Ok(())
}

/// Connects to the target and pumps both directions until the connection
/// ends. Runs on the connection's own thread (which pumps client → server)
/// and spawns a second thread for server → client.
fn run_connection(shared: &Arc<Shared>, id: u64, client: TcpStream) {
    let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let setup = || -> io::Result<_> {
        configure(&client)?;
        configure(&server)?;
        let conn = Arc::new(Conn {
            id,
            client: client.try_clone()?,
            server: server.try_clone()?,
            killed: AtomicBool::new(false),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        Ok((conn, client.try_clone()?, server.try_clone()?))
    };
    let Ok((conn, client_w, server_r)) = setup() else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    };
    {
        let mut conns = lock(&shared.conns);
        if shared.shutdown.load(Ordering::SeqCst) {
            conn.close();
            return;
        }
        conns.insert(id, Arc::clone(&conn));
    }
    let back = {
        let shared = Arc::clone(shared);
        let conn = Arc::clone(&conn);
        thread::Builder::new()
            .name(format!("proxy-conn-{id}-s2c"))
            .spawn(move || {
                pump(
                    &shared,
                    &conn,
                    server_r,
                    client_w,
                    Direction::ServerToClient,
                )
            })
    };
    match back {
        Ok(back) => {
            pump(shared, &conn, client, server, Direction::ClientToServer);
            let _ = back.join();
        }
        Err(_) => conn.close(),
    }
    lock(&shared.conns).remove(&id);
}

/// Forwards `src` → `dst` in `dir` until EOF (propagated as a half-close),
/// an error, a reset, a cut, or shutdown.
fn pump(shared: &Shared, conn: &Conn, mut src: TcpStream, mut dst: TcpStream, dir: Direction) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        // Not reading while stalled keeps the data in the kernel buffers.
        if !shared.wait_unstalled(conn) {
            return;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => {
                conn.close();
                return;
            }
        };
        let delay = shared.delays[dir.index()].load(Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_micros(delay));
        }
        // Data read just as a stall began is held here until resume.
        if !shared.wait_unstalled(conn) {
            return;
        }
        let (len, reset) = shared.reset_check(conn, dir, n);
        let Some(data) = buf.get(..len) else {
            conn.close();
            return;
        };
        if !write_fully(shared, conn, &mut dst, data, dir) {
            conn.close();
            return;
        }
        if reset {
            shared.resets.fetch_add(1, Ordering::SeqCst);
            conn.close();
            return;
        }
    }
}

/// Writes all of `data`. Returns `false` if the write failed or the
/// connection was killed meanwhile.
///
/// Bytes are counted before they are written (and the unwritten rest taken
/// back on failure), so once a peer has received bytes, [`FaultProxy::bytes`]
/// already includes them.
fn write_fully(
    shared: &Shared,
    conn: &Conn,
    dst: &mut TcpStream,
    mut data: &[u8],
    dir: Direction,
) -> bool {
    let count = |n: usize, add: bool| {
        for counter in [&conn.bytes[dir.index()], &shared.bytes[dir.index()]] {
            if add {
                counter.fetch_add(n as u64, Ordering::SeqCst);
            } else {
                counter.fetch_sub(n as u64, Ordering::SeqCst);
            }
        }
    };
    count(data.len(), true);
    while !data.is_empty() {
        if shared.stopping(conn) {
            count(data.len(), false);
            return false;
        }
        match dst.write(data) {
            Ok(k) if k > 0 => data = data.get(k..).unwrap_or_default(),
            Err(e) if is_timeout(&e) => continue,
            Ok(_) | Err(_) => {
                count(data.len(), false);
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(5);

    type Handler = Arc<dyn Fn(TcpStream, &AtomicBool) + Send + Sync>;

    /// A local server running `handler` per connection on its own thread;
    /// dropping it stops and joins everything.
    struct TestServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        acceptor: Option<JoinHandle<()>>,
    }

    impl TestServer {
        fn start(handler: Handler) -> io::Result<TestServer> {
            let listener = TcpListener::bind(("127.0.0.1", 0))?;
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            let stop = Arc::new(AtomicBool::new(false));
            let acceptor = {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut conns = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((s, _)) => {
                                let (stop, handler) = (Arc::clone(&stop), Arc::clone(&handler));
                                conns.push(thread::spawn(move || {
                                    if s.set_nonblocking(false).is_ok()
                                        && s.set_read_timeout(Some(POLL)).is_ok()
                                    {
                                        handler(s, &stop);
                                    }
                                }));
                            }
                            Err(_) => thread::sleep(ACCEPT_POLL),
                        }
                    }
                    for c in conns {
                        let _ = c.join();
                    }
                })
            };
            Ok(TestServer {
                addr,
                stop,
                acceptor: Some(acceptor),
            })
        }

        fn echo() -> io::Result<TestServer> {
            Self::start(Arc::new(|mut s: TcpStream, stop: &AtomicBool| {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => return,
                    }
                }
            }))
        }

        /// Reads until EOF or error, then reports the total received.
        fn sink(tx: mpsc::Sender<u64>) -> io::Result<TestServer> {
            let tx = Mutex::new(tx);
            Self::start(Arc::new(move |mut s: TcpStream, stop: &AtomicBool| {
                let mut total = 0u64;
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => break,
                    }
                }
                let _ = lock(&tx).send(total);
            }))
        }

        /// Sends `n` bytes, then waits for the client to go away.
        fn source(n: usize) -> io::Result<TestServer> {
            Self::start(Arc::new(move |mut s: TcpStream, stop: &AtomicBool| {
                if s.write_all(&pattern(n)).is_err() {
                    return;
                }
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => return,
                    }
                }
            }))
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(a) = self.acceptor.take() {
                let _ = a.join();
            }
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(s)
    }

    /// Reads exactly `n` bytes, failing if they do not arrive by the deadline.
    fn read_n(s: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("only {got} of {n} bytes"),
                ));
            }
            match s.read(&mut out[got..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("EOF after {got} of {n} bytes"),
                    ))
                }
                Ok(k) => got += k,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads until EOF or error; returns the bytes received before that, or
    /// `None` if the stream still stands at the deadline.
    fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => return Some(out),
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return Some(out),
            }
        }
        None
    }

    /// Expects nothing to arrive for `quiet`.
    fn assert_quiet(s: &mut TcpStream, quiet: Duration) {
        let until = Instant::now() + quiet;
        let mut buf = [0u8; 64];
        while Instant::now() < until {
            match s.read(&mut buf) {
                Err(e) if is_timeout(&e) => {}
                other => panic!("expected no data while stalled, got {other:?}"),
            }
        }
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
        s.write_all(msg)?;
        assert_eq!(read_n(s, msg.len())?, msg);
        Ok(())
    }

    #[test]
    fn forwards_both_ways() -> io::Result<()> {
        let echo = TestServer::echo()?;
        let proxy = FaultProxy::start(echo.addr)?;
        assert_eq!(proxy.target(), echo.addr);
        let mut a = connect(proxy.addr())?;
        let mut b = connect(proxy.addr())?;
        roundtrip(&mut a, b"hello")?;
        roundtrip(&mut b, b"world!")?;
        // Large enough to need the socket buffers on both sides: write from
        // another thread while reading the echo.
        let big = pattern(200_000);
        let mut writer = a.try_clone()?;
        let echoed = thread::scope(|scope| {
            let w = scope.spawn(|| writer.write_all(&big));
            let echoed = read_n(&mut a, big.len());
            (
                w.join().map_err(|_| io::Error::other("writer panicked")),
                echoed,
            )
        });
        echoed.0??;
        assert!(echoed.1? == big, "echo differs");
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.open_connections(), 2);
        assert_eq!(proxy.bytes(Direction::ClientToServer), 200_011);
        assert_eq!(proxy.bytes(Direction::ServerToClient), 200_011);

        // A client half-close reaches the server, whose close comes back.
        a.shutdown(Shutdown::Write)?;
        assert_eq!(read_to_close(&mut a, DEADLINE), Some(Vec::new()));
        drop(b);
        wait_until("connections to finish", || proxy.open_connections() == 0);
        Ok(())
    }

    #[test]
    fn cut_closes_live_connections_and_accepts_new_ones() -> io::Result<()> {
        let echo = TestServer::echo()?;
        let proxy = FaultProxy::start(echo.addr)?;
        let mut a = connect(proxy.addr())?;
        roundtrip(&mut a, b"before")?;
        proxy.cut();
        assert!(
            read_to_close(&mut a, DEADLINE).is_some(),
            "client still connected after cut"
        );
        wait_until("cut connection to finish", || proxy.open_connections() == 0);
        let mut b = connect(proxy.addr())?;
        roundtrip(&mut b, b"after")?;
        assert_eq!(proxy.accepted(), 2);
        Ok(())
    }

    #[test]
    fn cut_while_stalled_still_closes() -> io::Result<()> {
        let echo = TestServer::echo()?;
        let proxy = FaultProxy::start(echo.addr)?;
        let mut a = connect(proxy.addr())?;
        roundtrip(&mut a, b"x")?;
        proxy.stall();
        a.write_all(b"held")?;
        proxy.cut();
        assert!(read_to_close(&mut a, DEADLINE).is_some());
        wait_until("connection to finish", || proxy.open_connections() == 0);
        Ok(())
    }

    #[test]
    fn stall_holds_and_resume_delivers() -> io::Result<()> {
        let echo = TestServer::echo()?;
        let proxy = FaultProxy::start(echo.addr)?;
        let mut a = connect(proxy.addr())?;
        roundtrip(&mut a, b"warm")?;
        proxy.stall();
        a.write_all(b"held-1")?;
        // A connection made during the stall is accepted but held too.
        let mut b = connect(proxy.addr())?;
        b.write_all(b"held-2")?;
        assert_quiet(&mut a, Duration::from_millis(200));
        assert_quiet(&mut b, Duration::from_millis(50));
        assert_eq!(proxy.bytes(Direction::ClientToServer), 4);
        wait_until("second connection", || proxy.open_connections() == 2);
        proxy.resume();
        assert_eq!(read_n(&mut a, 6)?, b"held-1");
        assert_eq!(read_n(&mut b, 6)?, b"held-2");
        assert_eq!(proxy.bytes(Direction::ClientToServer), 16);
        assert_eq!(proxy.bytes(Direction::ServerToClient), 16);
        Ok(())
    }

    #[test]
    fn refuse_then_accept_again() -> io::Result<()> {
        let echo = TestServer::echo()?;
        let proxy = FaultProxy::start(echo.addr)?;
        let mut live = connect(proxy.addr())?;
        roundtrip(&mut live, b"up")?;
        proxy.refuse();
        let mut r = connect(proxy.addr())?;
        // The write may or may not fail depending on timing; either way the
        // connection must end without an echo.
        let _ = r.write_all(b"anyone?");
        assert_eq!(read_to_close(&mut r, DEADLINE), Some(Vec::new()));
        assert_eq!(proxy.refused(), 1);
        assert_eq!(proxy.accepted(), 1);
        // Existing connections are untouched.
        roundtrip(&mut live, b"still")?;
        proxy.accept_again();
        let mut c = connect(proxy.addr())?;
        roundtrip(&mut c, b"back")?;
        assert_eq!(proxy.accepted(), 2);
        Ok(())
    }

    #[test]
    fn reset_after_client_to_server_cuts_at_threshold() -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let sink = TestServer::sink(tx)?;
        let proxy = FaultProxy::start(sink.addr)?;
        let mut a = connect(proxy.addr())?;
        a.write_all(&pattern(5))?;
        wait_until("first bytes", || {
            proxy.bytes(Direction::ClientToServer) == 5
        });
        // Counted from arming: 10 more bytes, so 15 in all on this connection.
        proxy.reset_after(Direction::ClientToServer, 10);
        assert!(proxy.reset_pending());
        let _ = a.write_all(&pattern(1000));
        assert_eq!(
            rx.recv_timeout(DEADLINE).ok(),
            Some(15),
            "server must see exactly the bytes up to the threshold"
        );
        assert!(read_to_close(&mut a, DEADLINE).is_some());
        wait_until("reset connection to finish", || {
            proxy.open_connections() == 0
        });
        assert_eq!(proxy.bytes(Direction::ClientToServer), 15);
        assert_eq!(proxy.bytes(Direction::ServerToClient), 0);
        assert_eq!(proxy.resets(), 1);
        assert!(!proxy.reset_pending());

        // Applies once: the next connection forwards everything.
        let mut b = connect(proxy.addr())?;
        b.write_all(&pattern(100))?;
        b.shutdown(Shutdown::Write)?;
        assert_eq!(rx.recv_timeout(DEADLINE).ok(), Some(100));
        assert_eq!(proxy.bytes(Direction::ClientToServer), 115);
        assert_eq!(proxy.resets(), 1);
        Ok(())
    }

    #[test]
    fn reset_after_server_to_client_on_next_connection() -> io::Result<()> {
        let source = TestServer::source(100_000)?;
        let proxy = FaultProxy::start(source.addr)?;
        proxy.reset_after(Direction::ServerToClient, 40_000);
        let mut a = connect(proxy.addr())?;
        let got = read_to_close(&mut a, DEADLINE).expect("reset closes the connection");
        assert_eq!(got, pattern(40_000));
        wait_until("reset connection to finish", || {
            proxy.open_connections() == 0
        });
        assert_eq!(proxy.bytes(Direction::ServerToClient), 40_000);
        assert_eq!(proxy.resets(), 1);

        let mut b = connect(proxy.addr())?;
        assert_eq!(read_n(&mut b, 100_000)?, pattern(100_000));
        assert_eq!(proxy.bytes(Direction::ServerToClient), 140_000);
        Ok(())
    }

    #[test]
    fn reset_after_zero_forwards_nothing() -> io::Result<()> {
        let echo = TestServer::echo()?;
        let proxy = FaultProxy::start(echo.addr)?;
        proxy.reset_after(Direction::ServerToClient, 0);
        let mut a = connect(proxy.addr())?;
        let _ = a.write_all(b"ping");
        assert_eq!(read_to_close(&mut a, DEADLINE), Some(Vec::new()));
        assert_eq!(proxy.bytes(Direction::ClientToServer), 4);
        assert_eq!(proxy.bytes(Direction::ServerToClient), 0);
        Ok(())
    }

    #[test]
    fn drop_closes_port_and_connections() -> io::Result<()> {
        let echo = TestServer::echo()?;
        let proxy = FaultProxy::start(echo.addr)?;
        let addr = proxy.addr();
        let mut a = connect(addr)?;
        roundtrip(&mut a, b"x")?;
        proxy.stall();
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(2), "drop was slow");
        assert!(read_to_close(&mut a, DEADLINE).is_some());
        assert!(TcpStream::connect(addr).is_err(), "port still open");
        Ok(())
    }
}
