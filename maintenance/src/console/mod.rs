//! `etp console`: the operator's pages, served over HTTP (axum) and
//! rendered on the server (maud, compiled into the binary). Nothing is
//! fetched from anywhere but the cluster's nodes, and the pages work
//! without JavaScript.
//!
//! The console talks to the cluster as the CLI does: through the node it
//! is given (the topology it holds) and then each node of that topology,
//! with the same client credentials. Each page is gathered afresh, on the
//! blocking pool (the node client is blocking), with every connection
//! bounded by the client's connect and call deadlines: a stopped node
//! shows as unreachable at once, and a slow one never blocks another
//! request.
//!
//! This first part serves the cluster page (`/`). It binds loopback
//! addresses only: serving other addresses waits for TLS with client
//! certificates on the console's own listener.

mod tree;
mod view;

use crate::Outcome;
use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use propagator::DbId;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the console keeps between requests.
pub struct Console {
    /// The node whose topology names the cluster.
    pub node: SocketAddr,
    /// Where the recovery probes look besides the nodes.
    pub sources: crate::recovery::probes::Sources,
    /// Since when (µs since the epoch) each database has been found
    /// unreachable, kept across requests.
    down_since: Mutex<BTreeMap<DbId, i64>>,
    /// Per replicate, its lag over the last hour: what every page and the
    /// sampler found.
    lag: Mutex<BTreeMap<String, VecDeque<LagSample>>>,
}

/// A replicate's lag when the console looked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LagSample {
    pub at_us: i64,
    pub records: u64,
    pub seconds: f64,
}

/// How far back the lag charts reach.
pub const LAG_WINDOW_US: i64 = 3_600_000_000;
/// How often the console samples the cluster with nobody looking.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Console {
    pub fn new(node: SocketAddr, sources: crate::recovery::probes::Sources) -> Console {
        Console {
            node,
            sources,
            down_since: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keeps the lag of every replicate `v` shows (an hour of it).
    pub fn record(&self, v: &view::ClusterView) {
        let mut lag = lock(&self.lag);
        for t in v.masters.iter().filter_map(|m| m.task.as_ref()) {
            for r in &t.replicates {
                let q = lag.entry(r.name.clone()).or_default();
                q.push_back(LagSample {
                    at_us: v.at_us,
                    records: r.lag_records,
                    seconds: r.lag_s,
                });
                while q.front().is_some_and(|s| s.at_us < v.at_us - LAG_WINDOW_US) {
                    q.pop_front();
                }
            }
        }
    }

    /// A replicate's lag samples, oldest first.
    pub fn lag_of(&self, replicate: &str) -> Vec<LagSample> {
        lock(&self.lag)
            .get(replicate)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(cluster_page))
        .route("/recovery", get(recovery_page))
        .fallback(not_found)
        .with_state(console)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Html(view::not_found().into_string())).into_response()
}

async fn cluster_page(State(c): State<Arc<Console>>) -> Response {
    let gathered = {
        let c = c.clone();
        tokio::task::spawn_blocking(move || view::gather(&c)).await
    };
    match gathered {
        Ok(v) => {
            c.record(&v);
            Html(view::cluster(&v, &c).into_string()).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(view::failed(&format!("gathering the cluster's state failed: {e}")).into_string()),
        )
            .into_response(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The recovery page: a live diagnosis, drawn on its trees.
async fn recovery_page(State(c): State<Arc<Console>>) -> Response {
    let c2 = c.clone();
    match tokio::task::spawn_blocking(move || view::diagnose(&c2)).await {
        Ok(v) => Html(view::recovery(&v).into_string()).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(view::failed(&format!("the diagnosis failed: {e}")).into_string()),
        )
            .into_response(),
    }
}

/// Serves the console on `listen` (a loopback address; port 0: any free
/// port) until SIGTERM or ctrl-c. Prints `console listening on
/// http://ADDR/` first.
pub fn run(
    node: SocketAddr,
    listen: SocketAddr,
    sources: crate::recovery::probes::Sources,
) -> anyhow::Result<Outcome> {
    if !listen.ip().is_loopback() {
        bail!(
            "the console binds loopback addresses only ({listen} is not one): serving other addresses needs TLS with client certificates, which the console does not have yet; reach it through an SSH tunnel meanwhile"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the console's runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("console listening on http://{addr}/");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, node = %node, "console serving");
        let console = Arc::new(Console::new(node, sources));
        tokio::spawn(sample(console.clone()));
        let app = router(console);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving the console")?;
        Ok(Outcome::Ok)
    })
}

/// Samples the cluster every [`SAMPLE_EVERY`], so the lag charts cover
/// the time nobody looked.
async fn sample(c: Arc<Console>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        every.tick().await;
        let c2 = c.clone();
        if let Ok(v) = tokio::task::spawn_blocking(move || view::gather(&c2)).await {
            c.record(&v);
        }
    }
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
