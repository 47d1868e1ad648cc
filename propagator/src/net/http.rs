//! One HTTP stack for every page and endpoint the project serves (the
//! node's `/metrics`, the operator console): an axum router served by
//! hyper's HTTP/1.1 over plain TCP on loopback, or over TLS with client
//! certificates of the cluster's authority anywhere else.
//!
//! Every connection is bounded: at most [`Limits::max_connections`] at
//! once (one more is closed at once and counted), at most a quarter of
//! them (at least 2) in a TLS handshake from one address, the handshake
//! and the request head each within their deadline (a head not complete
//! in time closes the connection; one over the size limit is answered
//! 431), and the whole connection within [`Limits::lifetime`]. Each request carries
//! who sent it ([`Peer`]: its address, and the identity its certificate
//! names, under TLS) and axum's `ConnectInfo<SocketAddr>`.

use super::Identity;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Who is on the other end of a request: a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The identity the client's certificate names (None: plain TCP on
    /// loopback, where no certificate is asked for).
    pub identity: Option<Identity>,
}

impl Peer {
    /// How an audit line names the peer.
    pub fn who(&self) -> String {
        match &self.identity {
            Some(i) => format!("{} (role {}) from {}", i.name, i.role, self.addr),
            None => format!("{} (loopback, no certificate)", self.addr),
        }
    }
}

/// A listener's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake: Duration,
    /// The request head: complete within this, or 408.
    pub head: Duration,
    /// The request head's size: over this (at least 8 KiB), 431.
    pub head_bytes: usize,
    /// A connection is closed after this, whatever it is doing.
    pub lifetime: Duration,
    /// Keep a connection for more requests (a browser's), or answer one
    /// and close (a scraper's).
    pub keep_alive: bool,
}

/// What a listener counts.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections served (past their handshake, under TLS).
    pub served: AtomicU64,
    pub refused_limit: AtomicU64,
    pub refused_handshake: AtomicU64,
    /// Over their address's share of handshakes in progress.
    pub refused_per_ip: AtomicU64,
}

/// Serves `app` on `listener` until `shutdown` resolves: over TLS with
/// `tls` (whose configuration asks for client certificates), else plain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    counts: Arc<Counts>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // The node's own rule for handshakes per address (an IPv6 /64 counts
    // as one).
    let handshaking = Arc::new(super::PerIp::new((limits.max_connections / 4).max(2)));
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counts.refused_limit.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %addr, "http: too many connections; closing one");
            drop(stream);
            continue;
        };
        // A handshake holds a slot of its address's share until it ends.
        let shake = match &acceptor {
            Some(_) => match handshaking.take(addr.ip()) {
                Some(s) => Some(s),
                None => {
                    counts.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %addr, "http: too many handshakes from one address; closing one");
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let (app, acceptor, counts) = (app.clone(), acceptor.clone(), counts.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let _slot = slot;
            let work = async {
                match acceptor {
                    None => {
                        let peer = Peer {
                            addr,
                            identity: None,
                        };
                        counts.served.fetch_add(1, Ordering::Relaxed);
                        connection(stream, peer, app, limits).await;
                    }
                    Some(acc) => {
                        let tls = match tokio::time::timeout(limits.handshake, acc.accept(stream))
                            .await
                        {
                            Ok(Ok(t)) => t,
                            Ok(Err(e)) => {
                                counts.refused_handshake.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(peer = %addr, error = %e, "http: TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                counts.refused_handshake.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(peer = %addr, "http: TLS handshake not done in time");
                                return;
                            }
                        };
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| Identity::of_certificate(c.as_ref()));
                        let identity = match identity {
                            Some(Ok(i)) => i,
                            Some(Err(e)) => {
                                counts.refused_handshake.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(peer = %addr, error = %e, "http: a certificate of the authority that names no identity");
                                return;
                            }
                            None => {
                                counts.refused_handshake.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(peer = %addr, "http: no client certificate");
                                return;
                            }
                        };
                        drop(shake);
                        let peer = Peer {
                            addr,
                            identity: Some(identity),
                        };
                        counts.served.fetch_add(1, Ordering::Relaxed);
                        connection(tls, peer, app, limits).await;
                    }
                }
            };
            if tokio::time::timeout(limits.lifetime, work).await.is_err() {
                tracing::debug!(peer = %addr, "http: connection closed at the end of its lifetime");
            }
        });
    }
}

async fn connection<S>(stream: S, peer: Peer, app: Router, limits: Limits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let app = app
        .layer(axum::Extension(peer))
        .layer(axum::Extension(axum::extract::ConnectInfo(addr)));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_buf_size(limits.head_bytes.max(8192))
        .keep_alive(limits.keep_alive);
    let conn = b.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(peer = %addr, error = %e, "http: connection ended");
    }
}
