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
//! On a loopback address it serves plain HTTP, and acts for whoever can
//! reach the port (as an SSH tunnel would). Off loopback, or with
//! `--tls`, it serves HTTPS with its own certificate and asks every
//! browser for a certificate of the cluster's authority: any role may
//! look, only `admin` may act, and every action is logged with the
//! certificate's name.

mod actions;
mod job;
mod tree;
mod view;

use crate::Outcome;
use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use propagator::net::http::Peer;
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
    /// sampler found, one sample per [`SAMPLE_EVERY`] bucket, in time order.
    lag: Mutex<BTreeMap<String, VecDeque<LagSample>>>,
    /// One gather at a time: the latest, reused while it is fresh, so
    /// however many pages are asked for, the nodes see one client's
    /// requests.
    latest: tokio::sync::Mutex<Option<(std::time::Instant, Arc<view::ClusterView>)>>,
    /// Every form's CSRF token: random, made at start, shown only in the
    /// console's own pages.
    token: String,
    /// The recovery journal's directory for plans run from the page.
    pub state: std::path::PathBuf,
    /// The recovery run started from the page, if one was.
    job: Mutex<Option<Arc<job::Job>>>,
    /// Copy jobs run from the actions page, by `DATABASE/JOB`.
    copy_runs: Mutex<BTreeMap<String, Arc<job::CopyRun>>>,
}

/// A copy job run from the console, as the copies page shows it:
/// `DATABASE/JOB`, when it started (µs), its latest progress, and how it
/// ended (None: running; else whether it succeeded and what it said).
pub type CopyRunView = (String, i64, String, Option<(bool, String)>);

/// A replicate's lag when the console looked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LagSample {
    pub at_us: i64,
    pub records: u64,
    pub seconds: f64,
}

/// How far back the lag charts reach.
pub const LAG_WINDOW_US: i64 = 3_600_000_000;
/// How often the console samples the cluster with nobody looking (and
/// the width of a lag sample's bucket).
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A gather this recent is shown again rather than asked for anew.
const FRESH: std::time::Duration = std::time::Duration::from_secs(2);
/// A page waits this long for the cluster's state, at most.
const PAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

impl Console {
    pub fn new(node: SocketAddr, sources: crate::recovery::probes::Sources) -> Console {
        Console {
            node,
            sources,
            state: std::path::PathBuf::from("etp-recovery"),
            job: Mutex::new(None),
            copy_runs: Mutex::new(BTreeMap::new()),
            down_since: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(BTreeMap::new()),
            latest: tokio::sync::Mutex::new(None),
            token: new_token(),
        }
    }

    /// The cluster's state: the latest gather if it is fresh, else a new
    /// one (one at a time; a caller that waited for another's takes it).
    pub async fn cluster(self: &Arc<Self>) -> anyhow::Result<Arc<view::ClusterView>> {
        let mut latest = self.latest.lock().await;
        if let Some((at, v)) = latest.as_ref() {
            if at.elapsed() < FRESH {
                return Ok(v.clone());
            }
        }
        let c = self.clone();
        let v = Arc::new(tokio::task::spawn_blocking(move || view::gather(&c)).await?);
        self.record(&v);
        *latest = Some((std::time::Instant::now(), v.clone()));
        Ok(v)
    }

    /// Keeps the lag of every replicate `v` shows (an hour of it).
    pub fn record(&self, v: &view::ClusterView) {
        let seen = v
            .masters
            .iter()
            .filter_map(|m| m.task.as_ref())
            .flat_map(|t| t.replicates.iter())
            .map(|r| (r.name.as_str(), r.lag_records, r.lag_s));
        self.record_at(v.at_us, seen);
    }

    /// Keeps each `(replicate, lag in records, lag in seconds)` seen at
    /// `at_us`.
    fn record_at<'a>(&self, at_us: i64, seen: impl Iterator<Item = (&'a str, u64, f64)>) {
        let bucket = SAMPLE_EVERY.as_micros() as i64;
        let mut lag = lock(&self.lag);
        for (name, records, seconds) in seen {
            {
                let q = lag.entry(name.to_string()).or_default();
                let s = LagSample {
                    at_us,
                    records,
                    seconds,
                };
                // In time order, one per bucket (the latest of it).
                let i = q.partition_point(|o| o.at_us <= s.at_us);
                if i > 0 && q[i - 1].at_us / bucket == s.at_us / bucket {
                    q[i - 1] = s;
                } else {
                    q.insert(i, s);
                }
            }
        }
        // An hour of it, for every replicate (those gone age out).
        for q in lag.values_mut() {
            while q.front().is_some_and(|s| s.at_us < at_us - LAG_WINDOW_US) {
                q.pop_front();
            }
        }
        lag.retain(|_, q| !q.is_empty());
    }

    /// Where the recovery probes and runs look: the console's own
    /// sources, with the node's copy area when none was given and the node
    /// is on this machine (its path means something here), as the copies
    /// page does. Blocking.
    pub fn probe_sources(&self) -> crate::recovery::probes::Sources {
        let mut s = self.sources.clone();
        if s.area.is_none() && self.node.ip().is_loopback() {
            use propagator::wire::{ReadRequest, Request, Response};
            if let Ok(Response::Info(i)) = propagator::node::client::Client::connect(self.node)
                .and_then(|mut c| c.call(&Request::Read(ReadRequest::Info)))
            {
                s.area = i.copy_area.map(std::path::PathBuf::from);
            }
        }
        s
    }

    /// The copy jobs run from this console, as the copies page shows them.
    pub fn copy_runs_now(&self) -> Vec<CopyRunView> {
        lock(&self.copy_runs)
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    r.started_us,
                    lock(&r.message).clone(),
                    lock(&r.ended).clone(),
                )
            })
            .collect()
    }

    /// A replicate's lag samples, oldest first.
    pub fn lag_of(&self, replicate: &str) -> Vec<LagSample> {
        lock(&self.lag)
            .get(replicate)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The console's routes; a request whose `Host` is not a loopback name is
/// refused (a page on another site cannot make a browser ask the console
/// through a name it rebinds to loopback).
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(cluster_page))
        .route("/recovery", get(recovery_page))
        .route("/copies", get(copies_page))
        .route("/actions", get(actions_page))
        .route("/act", axum::routing::post(act))
        .route("/recovery/run", get(job::page).post(job::start))
        .route("/live.js", get(live_js))
        .route("/events/cluster", get(cluster_events))
        .route("/events/recovery-run", get(run_events))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(loopback_host))
        .with_state(console)
}

/// Whether a `Host` header names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What every page says about itself: never framed (no clickjacking of
/// the actions), nothing loaded from elsewhere, forms only to the console.
const SECURITY_HEADERS: [(&str, &str); 3] = [
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
];

pub(super) async fn loopback_host(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // Under TLS the browser checked the name against the console's
    // certificate, and the console its certificate: no rebinding.
    let tls = req
        .extensions()
        .get::<Peer>()
        .is_some_and(|p| p.identity.is_some());
    if !tls && !is_loopback_host(host) {
        return failure(
            StatusCode::FORBIDDEN,
            format!("the console answers only requests addressed to a loopback name (localhost, 127.0.0.1, [::1]); this one was for {host:?}"),
        );
    }
    let mut resp = next.run(req).await;
    for (k, v) in SECURITY_HEADERS {
        resp.headers_mut()
            .insert(k, axum::http::HeaderValue::from_static(v));
    }
    resp
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Html(view::not_found().into_string())).into_response()
}

async fn cluster_page(State(c): State<Arc<Console>>) -> Response {
    match tokio::time::timeout(PAGE_DEADLINE, c.cluster()).await {
        Ok(Ok(v)) => Html(view::cluster(&v, &c).into_string()).into_response(),
        Ok(Err(e)) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("gathering the cluster's state failed: {e}"),
        ),
        Err(_) => failure(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the cluster's nodes did not all answer within {} s: a node that accepts connections and does not answer holds the gather up; reload to see it again", PAGE_DEADLINE.as_secs()),
        ),
    }
}

/// How often a live page's content is sent again.
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
/// How often a live recovery run's events are sent again.
const RUN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The live pages' script, from the binary.
async fn live_js() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        view::LIVE_JS,
    )
        .into_response()
}

/// GET /events/cluster: the cluster page's content at once and then every [`LIVE_EVERY`],
/// as server-sent events (`page`), from the one shared gather: however
/// many pages are open, the nodes see one client.
async fn cluster_events(
    State(c): State<Arc<Console>>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // The first at once (a reconnecting page is brought up to date), then
    // every LIVE_EVERY.
    let s = futures_util::stream::unfold((c, true), |(c, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        let html = match tokio::time::timeout(PAGE_DEADLINE, c.cluster()).await {
            Ok(Ok(v)) => view::cluster_body(&v, &c).into_string(),
            Ok(Err(e)) => maud::html! { p.banner id="error" { "gathering the cluster's state failed: " (format!("{e:#}")) } }.into_string(),
            Err(_) => maud::html! { p.banner id="error" { "the cluster's nodes did not all answer within " (PAGE_DEADLINE.as_secs()) " s" } }.into_string(),
        };
        Some((Ok(Event::default().event("page").data(html)), (c, false)))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

/// GET /events/recovery-run: the run page's content every [`RUN_EVERY`]
/// while the run goes on; once it has ended, its last content and `end`.
async fn run_events(
    State(c): State<Arc<Console>>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let s = futures_util::stream::unfold((c, 0u8), |(c, stage)| async move {
        match stage {
            0 => {
                tokio::time::sleep(RUN_EVERY).await;
                let (body, running) = job::body(&c).await;
                let ev = Event::default().event("page").data(body.into_string());
                Some((Ok(ev), (c, if running { 0 } else { 1 })))
            }
            1 => Some((Ok(Event::default().event("end").data("ended")), (c, 2))),
            _ => None,
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

/// A CSRF token: 16 bytes from the kernel's random source, in hex (the
/// time and a counter if that cannot be read, still never shown outside
/// the console's pages).
fn new_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128;
        b = (t ^ (u128::from(fastrand::u64(..)) << 64)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares two tokens in time that does not depend on where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A page read from the nodes on the blocking pool (`read`), one
/// reading at a time as for the cluster's state, within the page deadline,
/// rendered by `render`.
async fn read_page<T: Send + 'static>(
    c: &Arc<Console>,
    what: &str,
    read: impl FnOnce(&Console) -> T + Send + 'static,
    render: impl FnOnce(&T) -> maud::Markup,
) -> Response {
    let _one = c.latest.lock().await;
    let c2 = c.clone();
    let got = tokio::time::timeout(
        PAGE_DEADLINE,
        tokio::task::spawn_blocking(move || read(&c2)),
    )
    .await;
    let (code, why) = match got {
        Ok(Ok(v)) => return Html(render(&v).into_string()).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed: {e}"),
        ),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("{what} took more than {} s", PAGE_DEADLINE.as_secs()),
        ),
    };
    failure(code, why)
}

/// The recovery page: a live diagnosis, drawn on its trees.
async fn recovery_page(State(c): State<Arc<Console>>) -> Response {
    let token = c.token.clone();
    read_page(&c, "the diagnosis", view::diagnose, move |v| {
        view::recovery(v, &token)
    })
    .await
}

/// The copies page.
async fn copies_page(State(c): State<Arc<Console>>) -> Response {
    read_page(&c, "reading the copies", view::copies, view::copies_page).await
}

/// The actions page: a form per replicate and master, the policy, and
/// the copy jobs of every node.
async fn actions_page(State(c): State<Arc<Console>>) -> Response {
    let node = c.node;
    let jobs = tokio::time::timeout(
        PAGE_DEADLINE,
        tokio::task::spawn_blocking(move || actions::job_names(node)),
    );
    let (v, jobs) = tokio::join!(tokio::time::timeout(PAGE_DEADLINE, c.cluster()), jobs);
    let jobs = match jobs {
        Ok(Ok(j)) => j,
        _ => Vec::new(),
    };
    match v {
        Ok(Ok(v)) => Html(actions::page(&v, &c.token, &jobs).into_string()).into_response(),
        _ => failure(
            StatusCode::GATEWAY_TIMEOUT,
            "the cluster's state could not be read",
        ),
    }
}

/// A posted form, checked: from the console's own pages (its `Origin`,
/// `Sec-Fetch-Site`), readable, and carrying the console's token; else the
/// refusal to send.
pub(super) fn guard(
    c: &Console,
    peer: &Peer,
    headers: &axum::http::HeaderMap,
    form: Result<axum::Form<BTreeMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Result<BTreeMap<String, String>, Response> {
    // A browser says where a form came from: only the console's own pages.
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site")
    {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "a form from another site is not the console's own: refused",
        ));
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        let host = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .unwrap_or("");
        // Under TLS, the page's own origin (the name the browser asked
        // for); on plain loopback, a loopback name.
        let own = match &peer.identity {
            Some(_) => headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| h.eq_ignore_ascii_case(host)),
            None => is_loopback_host(host),
        };
        if !own {
            return Err(failure(
                StatusCode::FORBIDDEN,
                format!("a form from {o:?} is not the console's own: refused"),
            ));
        }
    }
    let axum::Form(form) = form.map_err(|e| {
        failure(
            StatusCode::BAD_REQUEST,
            format!("the form cannot be read: {e}"),
        )
    })?;
    if !form.get("token").is_some_and(|t| same_token(t, &c.token)) {
        tracing::warn!(target: "etp::audit", who = %peer.who(), "console form refused: no valid token");
        return Err(failure(
            StatusCode::FORBIDDEN,
            "the form's token is missing or not this console's (a page of an earlier console, or another site's form): reload the page",
        ));
    }
    Ok(form)
}

/// An error page with its status code.
pub(super) fn failure(code: StatusCode, why: impl AsRef<str>) -> Response {
    (code, Html(view::failed(why.as_ref()).into_string())).into_response()
}

/// Whether the peer may act (not only look): under TLS its certificate's
/// role must be admin; on plain loopback the console acts with its own
/// credentials for whoever can reach the port (as through an SSH tunnel).
pub(super) fn may_act(peer: &Peer, what: &str) -> Result<(), Response> {
    match &peer.identity {
        Some(i) if i.role != propagator::net::Role::Admin => {
            tracing::warn!(target: "etp::audit", who = %peer.who(), action = %what, "console action refused: not the admin role");
            Err(failure(
                StatusCode::FORBIDDEN,
                format!(
                    "{what}: refused: acting needs the admin role, and certificate {} has role {}; nothing was done",
                    i.name, i.role
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A posted action: refused without the console's token or from another
/// origin, refused naming what is wrong when malformed; confirmed on a
/// page of its own; then carried out and logged with who asked.
async fn act(
    State(c): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: axum::http::HeaderMap,
    form: Result<axum::Form<BTreeMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match guard(&c, &peer, &headers, form) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let a = match actions::Act::parse(&form) {
        Ok(a) => a,
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("the form is wrong: {e}; nothing was done"),
            )
        }
    };
    let what = a.describe();
    if let Err(r) = may_act(&peer, &what) {
        return r;
    }
    if form.get("confirm").map(String::as_str) != Some("yes") {
        return Html(actions::confirm(&a, &c.token).into_string()).into_response();
    }
    let who = peer.who();
    let c2 = c.clone();
    let done = tokio::task::spawn_blocking(move || a.run(&c2)).await;
    // Whatever came of it, the next page gathers afresh.
    *c.latest.lock().await = None;
    match done {
        Ok(Ok(said)) => {
            tracing::warn!(target: "etp::audit", who = %who, action = %what, "console action done");
            Html(view::page("Done", None, maud::html! { h1 { "Done" } p id="result" { (said) } p { a href="/" { "The cluster page" } } }).into_string()).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "etp::audit", who = %who, action = %what, error = %e, "console action refused");
            failure(StatusCode::BAD_GATEWAY, format!("{what}: {e}"))
        }
        Err(e) => {
            tracing::warn!(target: "etp::audit", who = %who, action = %what, error = %e, "console action failed");
            failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
        }
    }
}

/// Serves the console on `listen` (a loopback address; port 0: any free
/// port) until SIGTERM or ctrl-c. Prints `console listening on
/// http://ADDR/` first.
pub fn run(
    node: SocketAddr,
    listen: SocketAddr,
    sources: crate::recovery::probes::Sources,
    state: std::path::PathBuf,
    tls: bool,
) -> anyhow::Result<Outcome> {
    let serving = match propagator::net::client() {
        _ if !tls && listen.ip().is_loopback() => None,
        propagator::net::Transport::Tls(t) => Some(t.server_config()),
        propagator::net::Transport::PlainLoopback => bail!(
            "{}: give the cluster's certificates (--ca, --cert, --key or ETP_CA, ETP_CERT, ETP_KEY): the console then serves HTTPS with that certificate (issued with `etp cert issue --host NAME` for the name browsers use) and asks every browser for a certificate of the same authority (role read to look, admin to act)",
            if tls {
                "--tls serves HTTPS with client certificates".to_string()
            } else {
                format!("{listen} is not a loopback address, and serving one needs TLS with client certificates")
            }
        ),
    };
    let scheme = if serving.is_some() { "https" } else { "http" };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the console's runtime")?;
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("console listening on {scheme}://{addr}/");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, node = %node, "console serving");
        let console = Arc::new(Console {
            state,
            ..Console::new(node, sources)
        });
        tokio::spawn(sample(console.clone()));
        let app = router(console);
        propagator::net::http::serve(
            listener,
            app,
            serving,
            LIMITS,
            Arc::new(propagator::net::http::Counts::default()),
            shutdown(),
        )
        .await;
        Ok(Outcome::Ok)
    });
    // A gather still waiting on a node is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    served
}

/// The console's listener bounds: a browser keeps a few connections (a
/// live page one more), a head arrives at once, nothing lasts a day.
const LIMITS: propagator::net::http::Limits = propagator::net::http::Limits {
    max_connections: 64,
    handshake: std::time::Duration::from_secs(10),
    head: std::time::Duration::from_secs(10),
    head_bytes: 16 << 10,
    lifetime: std::time::Duration::from_secs(3600),
    keep_alive: true,
};

/// Samples the cluster every [`SAMPLE_EVERY`], so the lag charts cover
/// the time nobody looked.
async fn sample(c: Arc<Console>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = c.cluster().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_served() {
        for ok in [
            "localhost",
            "localhost:7480",
            "127.0.0.1:7480",
            "[::1]:7480",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:7480",
            "10.0.0.1",
            "127.0.0.1.evil.example",
            "[fe80::1]:80",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn lag_samples_stay_in_time_order_one_per_bucket_for_an_hour() {
        let c = Console::new("127.0.0.1:1".parse().expect("addr"), Default::default());
        let s = 1_000_000i64;
        // Out of order (a slow gather ends after a quick one), and twice in
        // one bucket.
        c.record_at(100 * s, [("r", 1, 0.1)].into_iter());
        c.record_at(80 * s, [("r", 2, 0.2)].into_iter());
        c.record_at(103 * s, [("r", 3, 0.3)].into_iter());
        let got: Vec<(i64, u64)> = c.lag_of("r").iter().map(|x| (x.at_us, x.records)).collect();
        assert_eq!(got, vec![(80 * s, 2), (103 * s, 3)]);
        // An hour later the old ones are gone, and a replicate no longer
        // seen goes with its last sample.
        c.record_at(20 * s, [("gone", 9, 0.0)].into_iter());
        c.record_at(
            100 * s + LAG_WINDOW_US + 30 * s,
            [("r", 4, 0.4)].into_iter(),
        );
        let got: Vec<u64> = c.lag_of("r").iter().map(|x| x.records).collect();
        assert_eq!(got, vec![4]);
        assert!(c.lag_of("gone").is_empty());
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..31]));
        assert!(!same_token(&a, ""));
    }
}
