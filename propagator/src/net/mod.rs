//! The wire's transport: mutual TLS between every node and every client,
//! or plain TCP on loopback only when a node is started with
//! `--insecure-loopback`.
//!
//! **Trust.** A cluster has one certificate authority ([`cert::init`]). Each
//! certificate it issues ([`cert::issue`]) names one [`Identity`]: a name, a
//! [`Role`] and, for a node's certificate (role `replication`), the database
//! it serves. The identity is carried in the certificate as one URI subject
//! alternative name, `etp:ROLE:NAME` or `etp:replication:NAME:DBID`, so it is
//! signed by the authority with the rest of the certificate.
//!
//! - A node accepts only clients whose certificate chains to the cluster's
//!   authority (rustls' webpki client verifier), and decides what each may
//!   ask by its role ([`roles`]).
//! - A client accepts only a server whose certificate chains to the same
//!   authority and is a node's certificate: node certificates carry the DNS
//!   name [`NODE_SERVER_NAME`] (and the server-auth usage), client
//!   certificates do not, so a client certificate cannot pose as a node.
//!   A node is identified by its database, not by a host name: a caller
//!   that expects database N checks the peer's identity
//!   ([`Identity::db`]) after the handshake.
//!
//! **One identity per process.** A node talks to other nodes with its own
//! certificate; a command-line tool with the certificate it was given. The
//! process's client side is set once ([`set_client`]) and every
//! [`crate::node::client::Conn`] uses it.

pub mod cert;
pub mod http;
pub mod roles;
pub mod split;

use crate::ids::DbId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The DNS name every node certificate carries and every client asks for:
/// nodes are told apart by their database ([`Identity::db`]), not by host
/// names, so a node keeps its certificate when its address changes.
pub const NODE_SERVER_NAME: &str = "node.etp.invalid";

/// What a certificate's holder may do (the table is in [`roles`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Dumps, reads, status.
    Read,
    /// Client sessions (transactions), and what `read` may do.
    Write,
    /// A node: replication links for the replicates the topology gives
    /// its database, and the calls one node makes of another.
    Replication,
    /// Topology, policy, tasks, replicate lifecycle, confirmation edits,
    /// copies, recovery, and what `write` may do.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Read, Role::Write, Role::Replication, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Replication => "replication",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: one of read, write, replication, admin"))
    }
}

/// Who holds a certificate: its name, its role and, for a node, its database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// The database a node's certificate serves (role `replication` only).
    pub db: Option<DbId>,
}

/// What is wrong with a certificate, its name or its identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertificateError(pub String);

/// Why a name cannot be a certificate's name.
pub fn check_name(name: &str) -> Result<(), CertificateError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !matches!(name, "." | "..");
    if ok {
        Ok(())
    } else {
        Err(CertificateError(format!(
            "bad certificate name {name:?}: 1 to 64 of A-Z a-z 0-9 - _ . (not . or ..)"
        )))
    }
}

impl Identity {
    /// The URI subject alternative name that carries this identity.
    pub fn uri(&self) -> String {
        match self.db {
            Some(db) => format!("etp:{}:{}:{db}", self.role, self.name),
            None => format!("etp:{}:{}", self.role, self.name),
        }
    }

    /// The identity a URI of [`Identity::uri`]'s form names, if it is one.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let parts: Vec<&str> = uri.split(':').collect();
        let (role, name, db) = match parts.as_slice() {
            ["etp", role, name] => (role, name, None),
            ["etp", role, name, db] => (role, name, Some(DbId(db.parse().ok()?))),
            _ => return None,
        };
        let role: Role = role.parse().ok()?;
        check_name(name).ok()?;
        // A node's certificate names its database; no other does.
        if (role == Role::Replication) != db.is_some() {
            return None;
        }
        Some(Identity {
            name: name.to_string(),
            role,
            db,
        })
    }

    /// The identity a certificate (DER) carries.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, CertificateError> {
        let bad = |s: String| CertificateError(s);
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| bad(format!("not a readable certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| bad(format!("bad subject alternative names: {e}")))?
            .ok_or_else(|| {
                bad("the certificate names no etp identity (no subject alternative name)".into())
            })?;
        let mut found = san.value.general_names.iter().filter_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Identity::from_uri(u),
            _ => None,
        });
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (None, _) => Err(bad(
                "the certificate names no etp identity (no etp: URI)".into()
            )),
            (Some(_), Some(_)) => Err(bad(
                "the certificate names more than one etp identity".into()
            )),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.db {
            Some(db) => write!(
                f,
                "{} ({} certificate of database {db})",
                self.name, self.role
            ),
            None => write!(f, "{} ({} certificate)", self.name, self.role),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{file}: {reason}")]
    Credentials { file: String, reason: String },
    #[error("plain TCP to {addr} refused: it is not a loopback address; give the cluster's certificates (--ca, --cert, --key or ETP_CA, ETP_CERT, ETP_KEY; `etp cert init` and `etp cert issue` make them)")]
    NotLoopback { addr: SocketAddr },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("{addr}: {reason}")]
    Peer { addr: SocketAddr, reason: String },
}

/// A node's or a client's credentials: the cluster's authority, its own
/// certificate and key, and the TLS configurations built from them.
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// The identity of the certificate.
    pub me: Identity,
}

/// rustls with *ring*, as the project's design asks. (rustls marks it
/// deprecated for lacking post-quantum key exchange, which only its
/// aws-lc-rs provider has.)
///
/// Both ends are this program, so the suite is ours to pick: AES-128-GCM
/// first (a bulk load's megabytes cost less to encrypt than with
/// AES-256-GCM, rustls' first choice), the others after.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

fn credentials(file: &Path, reason: impl fmt::Display) -> NetError {
    NetError::Credentials {
        file: file.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Tls {
    /// Loads the authority's certificate `ca`, and `cert` (a PEM chain, its
    /// own certificate first) with its private key `key`.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, NetError> {
        let roots_der: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| credentials(ca, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| credentials(ca, e))?;
        if roots_der.is_empty() {
            return Err(credentials(ca, "no certificate in it"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| credentials(cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| credentials(cert, e))?;
        let Some(leaf) = chain.first() else {
            return Err(credentials(cert, "no certificate in it"));
        };
        let me = Identity::of_certificate(leaf).map_err(|e| credentials(cert, e))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| credentials(key, e))?;
        Tls::from_der(roots_der, chain, key_der, me).map_err(|e| credentials(cert, e))
    }

    /// Builds the configurations from DER (see [`Tls::load`]).
    pub fn from_der(
        roots_der: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        me: Identity,
    ) -> Result<Tls, CertificateError> {
        let bad = |s: String| CertificateError(s);
        let mut roots = rustls::RootCertStore::empty();
        for r in roots_der {
            roots
                .add(r)
                .map_err(|e| bad(format!("the authority's certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| bad(format!("the authority's certificate: {e}")))?;
        let versions = [&rustls::version::TLS13];
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad(format!("the certificate and its key: {e}")))?;
        // No session resumption: nodes and tools keep their connections,
        // and no ticket arrives unasked after the handshake.
        server.send_tls13_tickets = 0;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(format!("the certificate and its key: {e}")))?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            me,
        })
    }
}

impl Tls {
    /// The TLS configuration a node serves with.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The TLS configuration connections to nodes are made with.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// Handshakes in progress per peer address, each at most `max`.
pub(crate) struct PerIp {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One handshake's place in its address's count, given back on drop.
pub(crate) struct PerIpPlace {
    of: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    pub(crate) fn new(max: usize) -> PerIp {
        PerIp {
            max: max.max(1),
            counts: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// A place for a handshake from `ip`, if it has fewer than `max`.
    pub(crate) fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PerIpPlace> {
        // One IPv6 host usually holds a whole /64.
        let ip = match ip.to_canonical() {
            std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
            v4 => v4,
        };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIpPlace {
            of: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpPlace {
    fn drop(&mut self) {
        let mut counts = self.of.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// How a process talks to nodes, or how a node serves.
#[derive(Clone)]
pub enum Transport {
    /// Mutual TLS with the cluster's certificates.
    Tls(Arc<Tls>),
    /// Plain TCP, to and from loopback addresses only.
    PlainLoopback,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Tls(t) => write!(f, "Tls({})", t.me),
            Transport::PlainLoopback => f.write_str("PlainLoopback"),
        }
    }
}

static CLIENT: RwLock<Option<Transport>> = RwLock::new(None);

/// Sets how this process's connections to nodes are made.
pub fn set_client(t: Transport) {
    *CLIENT.write().unwrap_or_else(|p| p.into_inner()) = Some(t);
}

/// How this process's connections to nodes are made (plain TCP to
/// loopback until [`set_client`] says otherwise).
pub fn client() -> Transport {
    CLIENT
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or(Transport::PlainLoopback)
}

/// What TLS runs over: the socket behind a read buffer. rustls reads at
/// most 4 KiB a call; through [`TLS_READ_BUFFER`] bytes of buffer a bulk
/// load's megabytes take a sixteenth of the reads (system calls).
pub type TlsIo = tokio::io::BufReader<TcpStream>;

/// The read buffer under a TLS connection.
pub const TLS_READ_BUFFER: usize = 64 << 10;

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TlsIo>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => match Pin::new(s.as_mut()).poll_read(cx, buf) {
                // A peer that closes its socket without ending its TLS
                // session (a tool that exits, a node killed) ends the
                // stream, as on plain TCP; a frame cut short by it is
                // still an error to the framing above.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn peer_identity(
    addr: SocketAddr,
    certs: Option<&[CertificateDer<'_>]>,
) -> Result<Identity, NetError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| NetError::Peer {
            addr,
            reason: "presented no certificate".into(),
        })?;
    Identity::of_certificate(leaf).map_err(|e| NetError::Peer { addr, reason: e.0 })
}

/// A plain TCP connection, to or from a loopback address only.
fn plain(tcp: TcpStream, addr: SocketAddr) -> Result<(Stream, Option<Identity>), NetError> {
    if !addr.ip().is_loopback() {
        return Err(NetError::NotLoopback { addr });
    }
    Ok((Stream::Plain(tcp), None))
}

impl Transport {
    /// Takes a connection a node accepted: the TLS handshake (the caller
    /// bounds its time) and the client's identity; `None` on plain TCP
    /// (only from loopback).
    pub async fn accept(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<(Stream, Option<Identity>), NetError> {
        let _ = tcp.set_nodelay(true);
        match self {
            Transport::PlainLoopback => plain(tcp, addr),
            Transport::Tls(t) => {
                let s = tokio_rustls::TlsAcceptor::from(t.server.clone())
                    .accept(TlsIo::with_capacity(TLS_READ_BUFFER, tcp))
                    .await
                    .map_err(|e| NetError::Handshake {
                        addr,
                        reason: e.to_string(),
                    })?;
                let id = peer_identity(addr, s.get_ref().1.peer_certificates())?;
                Ok((Stream::Tls(Box::new(s.into())), Some(id)))
            }
        }
    }

    /// Connects to a node: TCP, then the TLS handshake. Returns the node's
    /// identity (`None` on plain TCP, only to loopback).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<(Stream, Option<Identity>), NetError> {
        let _ = tcp.set_nodelay(true);
        match self {
            Transport::PlainLoopback => plain(tcp, addr),
            Transport::Tls(t) => {
                let name =
                    ServerName::try_from(NODE_SERVER_NAME).map_err(|e| NetError::Handshake {
                        addr,
                        reason: e.to_string(),
                    })?;
                let s = tokio_rustls::TlsConnector::from(t.client.clone())
                    .connect(name, TlsIo::with_capacity(TLS_READ_BUFFER, tcp))
                    .await
                    .map_err(|e| NetError::Handshake {
                        addr,
                        reason: format!(
                            "{e} (does the node serve TLS with this cluster's certificates?)"
                        ),
                    })?;
                let id = peer_identity(addr, s.get_ref().1.peer_certificates())?;
                if id.role != Role::Replication {
                    return Err(NetError::Peer {
                        addr,
                        reason: format!("presented {id}, not a node's certificate"),
                    });
                }
                Ok((Stream::Tls(Box::new(s.into())), Some(id)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_address_holds_at_most_its_share_of_handshakes() {
        let h = std::sync::Arc::new(PerIp::new(2));
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = (
            "127.0.0.1".parse().expect("ip"),
            "127.0.0.2".parse().expect("ip"),
        );
        let one = h.take(a).expect("first");
        let two = h.take(a).expect("second");
        assert!(h.take(a).is_none(), "a third from one address");
        let _other = h.take(b).expect("another address has its own share");
        drop(one);
        let again = h.take(a).expect("a slot given back is free");
        drop(two);
        drop(again);
        assert!(
            !h.counts.lock().expect("lock").contains_key(&a),
            "no entry left behind"
        );
    }

    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri_and_bad_ones_are_refused() {
        for id in [
            Identity {
                name: "alice".into(),
                role: Role::Admin,
                db: None,
            },
            Identity {
                name: "db2".into(),
                role: Role::Replication,
                db: Some(DbId(2)),
            },
            Identity {
                name: "ro.1".into(),
                role: Role::Read,
                db: None,
            },
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id.clone()));
        }
        for bad in [
            "etp:root:alice",
            "etp:admin:alice:3",
            "etp:replication:db2",
            "etp:replication:db2:x",
            "etp:admin:..",
            "etp:admin:a/b",
            "http:admin:alice",
            "etp:admin:alice:1:2",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }
}
