//! Harness for the system tests: the real `etp` binary, real processes,
//! real files. Every process a test starts is killed when its guard drops;
//! every wait has a deadline.

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `etp` binary of this build profile. The system tests are the
/// `maintenance` package's integration tests, so cargo has built it, in the
/// same invocation and with the same features, before any of them runs
/// (no second build of the workspace). The run's certificates ([`certs`])
/// are made first, so every node and client a test starts talks mutual TLS.
pub fn etp_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    certs();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>/etp
        let profile_dir = exe
            .parent()
            .and_then(|p| p.parent())
            .expect("test executable lives in target/<profile>/deps");
        let bin = profile_dir.join(format!("etp{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.exists(),
            "{} not found: run the system tests as `cargo test -p maintenance --test system`",
            bin.display()
        );
        bin
    })
}

/// The test run's certificate directory: the cluster's authority, the
/// clients `admin`, `reader` and `writer` (roles admin, read, write) and
/// the nodes `db1` to `db{NODE_CERTS}`,
/// made once per test process. This process talks to nodes as `admin`, and
/// nodes started through `maintenance::cluster` serve with them.
pub fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // A test process cannot remove its directory when it ends (statics
        // are not dropped): each run removes those of runs that ended.
        remove_ended_runs_certs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{CERTS_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("a temporary directory for the certificates")
            .keep();
        maintenance::cluster::use_local_certs(&dir, NODE_CERTS)
            .expect("making the test run's certificates");
        use propagator::net::{cert, Identity, Role};
        for (name, role) in [("reader", Role::Read), ("writer", Role::Write)] {
            let id = Identity {
                name: name.into(),
                role,
                db: None,
            };
            cert::issue(&dir, &id, 30).expect("issuing a test certificate");
        }
        dir
    })
}

/// How the certificate directories of test runs are named (the process
/// id follows).
const CERTS_PREFIX: &str = "etp-test-certs-";

/// Removes the certificate directories of test processes that no longer
/// run (named with their process id; a process id reused since keeps its
/// directory until a later run).
fn remove_ended_runs_certs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(CERTS_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Node certificates [`certs`] makes: databases 1 to this.
pub const NODE_CERTS: u32 = 12;

/// `etp` with the test run's certificates in its environment: as a client,
/// the `admin` certificate; as a node, `--certs` ([`certs`]).
pub fn etp_command() -> Command {
    let dir = certs();
    let mut c = Command::new(etp_bin());
    c.env("ETP_CA", dir.join("ca.crt"))
        .env("ETP_CERT", dir.join("admin.crt"))
        .env("ETP_KEY", dir.join("admin.key"))
        .env("ETP_CERTS", dir);
    c
}

/// The test run's credentials of `name` (a file stem in [`certs`]).
pub fn credentials(name: &str) -> std::sync::Arc<propagator::net::Tls> {
    let dir = certs();
    std::sync::Arc::new(
        propagator::net::Tls::load(
            &dir.join("ca.crt"),
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
        )
        .expect("the test run's credentials"),
    )
}

/// A blocking TLS connection to a node as `admin`, for tests that write
/// raw bytes to it.
pub fn tls_connect(
    addr: std::net::SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    tls_connect_as(addr, "admin")
}

/// [`tls_connect`] with the test run's certificate `name`.
pub fn tls_connect_as(
    addr: std::net::SocketAddr,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    tls_over(std::net::TcpStream::connect(addr).expect("connect"), name)
}

/// A TLS client over `tcp` with the test run's certificate `name`.
fn tls_over(
    tcp: std::net::TcpStream,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let server = rustls::pki_types::ServerName::try_from(propagator::net::NODE_SERVER_NAME)
        .expect("server name");
    let conn = rustls::ClientConnection::new(credentials(name).client_config(), server)
        .expect("client connection");
    rustls::StreamOwned::new(conn, tcp)
}

/// [`tls_connect_as`] from the local address `from` (another loopback
/// address, 127.0.0.2 …: another host, as the node counts them).
pub fn tls_connect_from(
    from: std::net::IpAddr,
    addr: std::net::SocketAddr,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    bind(&fd, &std::net::SocketAddr::new(from, 0)).expect("bind the source address");
    connect(&fd, &addr).expect("connect");
    tls_over(std::net::TcpStream::from(fd), name)
}

/// One request over a raw stream (a frame out, a frame back).
pub fn raw_call(
    s: &mut (impl std::io::Read + std::io::Write),
    req: &propagator::wire::Request,
) -> propagator::wire::Response {
    let body = req.encode().expect("encode");
    s.write_all(&(body.len() as u32).to_be_bytes())
        .expect("write");
    s.write_all(&body).expect("write");
    s.flush().expect("flush");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("answer header");
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).expect("answer");
    propagator::wire::Response::decode(&buf).expect("decode")
}

/// The server side of a TLS connection a fake node of database `db`
/// accepted, with that database's certificate.
pub fn tls_accept(
    tcp: std::net::TcpStream,
    db: u32,
) -> rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream> {
    let conn = rustls::ServerConnection::new(credentials(&format!("db{db}")).server_config())
        .expect("server connection");
    rustls::StreamOwned::new(conn, tcp)
}

/// Runs `etp ARGS` to completion.
pub fn etp(args: &[&str]) -> Output {
    etp_command().args(args).output().expect("running etp")
}

/// Runs `etp ARGS` with `input` on standard input.
pub fn etp_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = etp_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting etp");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("etp output");
    let _ = feeder.join();
    out
}

/// Asserts a command succeeded, showing its output if not.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "etp failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct KillGuard(pub Child);

impl KillGuard {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Parses `etp file dump` output into isn → fields.
pub fn parse_dump(text: &str) -> std::collections::BTreeMap<u64, serde_json::Value> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("dump line is JSON");
            (v["isn"].as_u64().expect("isn"), v["fields"].clone())
        })
        .collect()
}

/// A seed for a randomized test: `ETP_SEED` if set, else fresh; printed so
/// a failure can be reproduced.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("ETP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: seed {s} (rerun with ETP_SEED={s})");
    s
}

/// Damages a file of a stopped node's database behind the engine's back:
/// writes `edits` (None: delete) straight into its page store, as a bad
/// disk or an offline edit would. The next open finds the file damaged.
pub fn tamper(
    data: &Path,
    file: propagator::Fnr,
    edits: Vec<(propagator::Isn, Option<propagator::Record>)>,
) {
    use propagator::record::encode_record;
    let engine = propagator::Database::engine_of(data).expect("a database");
    let store = propagator::store::PageStore::open(&data.join("store"), engine, 1 << 20, 1 << 20)
        .expect("store");
    let applied = store.applied_lsn().expect("lsn");
    let records = edits
        .into_iter()
        .map(|(i, r)| (file, i, r.map(|r| encode_record(&r).expect("enc"))))
        .collect();
    store
        .apply(&propagator::store::StoreBatch {
            applied,
            records,
            ..Default::default()
        })
        .expect("tamper");
    store.flush().expect("flush");
}

/// Starts `cmd` (its standard output piped) and waits at most `limit` for
/// the first line it prints (`what`, for the failure): the process,
/// killed on drop, and that line.
pub fn first_line(mut cmd: Command, limit: Duration, what: &str) -> (KillGuard, String) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let guard = KillGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} not printed within {} s", limit.as_secs()));
    (guard, line)
}

/// A node process started as `etp node run --data DATA [--listen ADDR]`
/// (no `--listen`: where it listened before), its standard error appended
/// to `log` with the default log settings. Returns once it printed its
/// address.
pub fn start_node(
    data: &Path,
    listen: Option<&str>,
    log: &Path,
) -> (KillGuard, std::net::SocketAddr) {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening the node's log");
    let mut cmd = etp_command();
    cmd.args(["node", "run", "--data"]).arg(data);
    if let Some(l) = listen {
        cmd.args(["--listen", l]);
    }
    cmd.env_remove("ETP_LOG")
        .env_remove("ETP_LOG_FORMAT")
        .stderr(err);
    let (guard, line) = first_line(cmd, Duration::from_secs(30), "the node's `listening ADDR`");
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| {
            panic!(
                "node did not start: {line:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .parse()
        .expect("a socket address");
    (guard, addr)
}

/// A free loopback port (bound, then released: taken again at once by the
/// caller, so another process is unlikely to get it in between).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

/// One HTTP/1.1 exchange over TLS with a server whose certificate names
/// `host`, as the test run's certificate `name` (None: no client
/// certificate): the status code and the body, or None when the server
/// ended the connection without an answer (a refused handshake). (rustls
/// with *ring*, as the nodes: deprecated only for lacking post-quantum
/// key exchange.)
#[allow(deprecated)]
pub fn https_exchange(
    addr: std::net::SocketAddr,
    host: &str,
    name: Option<&str>,
    request: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let dir = certs();
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("a certificate")).expect("a root");
    }
    let config = match name {
        Some(n) => {
            let chain: Vec<_> =
                rustls::pki_types::CertificateDer::pem_file_iter(dir.join(format!("{n}.crt")))
                    .expect("crt")
                    .collect::<Result<_, _>>()
                    .expect("crt");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(format!("{n}.key")))
                .expect("key");
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth")
        }
        None => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    };
    let server = rustls::pki_types::ServerName::try_from(host.to_string()).expect("server name");
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), server).expect("connection");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    if s.write_all(request.as_bytes())
        .and_then(|_| s.flush())
        .is_err()
    {
        return None;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}
