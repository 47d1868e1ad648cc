//! Running the recovery plan from the console: a dry run (the bound plan,
//! nothing done) or, once confirmed, the journaled run `etp recover run
//! --execute` makes, on a thread of its own; its events are shown as they
//! come. The journal lives in the console's `--state` directory, so a run
//! interrupted (the console stopped, a step failed) is resumed by the next
//! one, from the page or from the CLI.

use super::{guard, view, Console};
use crate::recovery::{self, Report, RunOptions};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A run started from the page.
pub struct Job {
    pub started_us: i64,
    pub execute: bool,
    /// Its events, for people, in order.
    events: Mutex<Vec<String>>,
    /// How it ended (None: still running): everything intact, and what
    /// it said.
    ended: Mutex<Option<(bool, String)>>,
}

impl Job {
    fn new(execute: bool) -> Job {
        Job {
            started_us: chrono::Utc::now().timestamp_micros(),
            execute,
            events: Mutex::new(Vec::new()),
            ended: Mutex::new(None),
        }
    }

    fn running(&self) -> bool {
        super::lock(&self.ended).is_none()
    }
}

/// Collects a run's events into its job.
struct Collect(Arc<Job>);

impl Report for Collect {
    fn event(&mut self, _json: serde_json::Value, human: String) {
        super::lock(&self.0.events).push(human);
    }

    fn walk(&mut self, walk: &flowcharts::Walk) {
        let leaf = walk.plan.leaf().unwrap_or("(stopped)");
        super::lock(&self.0.events).push(format!("walked {}: {leaf}", walk.tree));
    }
}

/// Runs the recovery as the CLI does, reporting into `job`.
fn run(c: &Console, job: &Arc<Job>) {
    let opts = RunOptions {
        node: c.node,
        case: None,
        execute: job.execute,
        confirm: false,
        sources: c.probe_sources(),
        state: c.state.clone(),
        wait: std::time::Duration::from_secs(300),
        answers: None,
    };
    let ended = match recovery::run::run(opts, &mut Collect(job.clone())) {
        Ok(crate::Outcome::Ok) => (true, "ended: everything intact and verified".to_string()),
        Ok(crate::Outcome::Problem) => (
            false,
            "ended: recovery needed, or stopped at a step that waits for an operator (see above)"
                .to_string(),
        ),
        Err(e) => (false, format!("failed: {e:#}")),
    };
    *super::lock(&job.ended) = Some(ended);
}

/// POST /recovery/run: `mode=dry_run` shows the plan, bound, doing
/// nothing; `mode=execute` asks for a confirmation, then starts the run.
pub async fn start(
    State(c): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<propagator::net::http::Peer>,
    headers: axum::http::HeaderMap,
    form: Result<axum::Form<BTreeMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match guard(&c, &peer, &headers, form) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let execute = match form.get("mode").map(String::as_str) {
        Some("dry_run") => false,
        Some("execute") => true,
        other => {
            return super::failure(
                StatusCode::BAD_REQUEST,
                format!("mode must be dry_run or execute, not {other:?}; nothing was done"),
            )
        }
    };
    // Even a dry run takes the one run slot (and replaces the run the page
    // shows): starting either is acting.
    if let Err(r) = super::may_act(
        &peer,
        if execute {
            "running the recovery plan"
        } else {
            "a dry run of the recovery plan"
        },
    ) {
        return r;
    }
    if execute && form.get("confirm").map(String::as_str) != Some("yes") {
        return Html(
            view::page(
                "Confirm",
                None,
                html! {
                    h1 { "Confirm" }
                    p id="what" { "Carry out the recovery plan (a journaled run in " code { (c.state.display().to_string()) } ", as " code { "etp recover run --execute" } " makes it)." }
                    form method="post" action="/recovery/run" {
                        input type="hidden" name="token" value=(c.token);
                        input type="hidden" name="mode" value="execute";
                        input type="hidden" name="confirm" value="yes";
                        button type="submit" { "Yes, run the plan" }
                        " " a href="/recovery" { "No, back" }
                    }
                },
            )
            .into_string(),
        )
        .into_response();
    }
    let job = {
        let mut slot = super::lock(&c.job);
        if slot.as_ref().is_some_and(|j| j.running()) {
            return super::failure(
                StatusCode::CONFLICT,
                "a recovery run started here is still going: see /recovery/run",
            );
        }
        let job = Arc::new(Job::new(execute));
        *slot = Some(job.clone());
        job
    };
    tracing::warn!(target: "etp::audit", who = %peer.who(), execute, "console recovery run started");
    let c2 = c.clone();
    let j2 = job.clone();
    let started = std::thread::Builder::new()
        .name("console-recovery".into())
        .spawn(move || run(&c2, &j2));
    if let Err(e) = started {
        *super::lock(&job.ended) = Some((false, format!("failed to start: {e}")));
    }
    Redirect::to("/recovery/run").into_response()
}

/// GET /recovery/run: the run started here (its events as they come,
/// refreshed every 2 s while it runs) and the journal's unfinished plan.
pub async fn page(State(c): State<Arc<Console>>) -> Response {
    let (body, running) = body(&c).await;
    let html = if running {
        view::live_page("Recovery run", 2, "/events/recovery-run", body)
    } else {
        view::page("Recovery run", None, body)
    };
    Html(html.into_string()).into_response()
}

/// The run page's content (what a live update replaces), and whether the
/// run is still going.
pub async fn body(c: &Arc<Console>) -> (maud::Markup, bool) {
    let job = super::lock(&c.job).clone();
    let state = c.state.clone();
    let unfinished = tokio::task::spawn_blocking(move || recovery::journal::unfinished(&state))
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    let running = job.as_ref().is_some_and(|j| j.running());
    let body = html! {
        h1 { "Recovery run" }
        @match &job {
            None => p { "No run was started from this console. " a href="/recovery" { "The diagnosis" } },
            Some(j) => {
                p.meta { (if j.execute { "executed" } else { "dry run" }) ", started " (chrono::DateTime::from_timestamp_micros(j.started_us).map(|t| t.to_rfc3339()).unwrap_or_default()) }
                ol id="events" { @for e in super::lock(&j.events).iter() { li { pre { (e) } } } }
                @match super::lock(&j.ended).as_ref() {
                    Some((intact, end)) => p id="ended" class=(if *intact { "ok" } else { "warn" }) { (end) },
                    None => p id="running" { "running…" },
                }
            },
        }
        @if let Some(u) = &unfinished {
            p.banner id="unfinished" { "The journal holds an unfinished plan: " (u) " — running again resumes it." }
        }
    };
    (body, running)
}

/// A copy job run from the actions page, on a thread of its own.
pub struct CopyRun {
    pub started_us: i64,
    /// Its latest progress message.
    pub message: Mutex<String>,
    /// How it ended (None: still running): whether it succeeded, and what
    /// it did.
    pub ended: Mutex<Option<(bool, String)>>,
}

/// Starts copy job `name` of database `database` (its node at `addr`)
/// now, into that node's copy area, as `etp copy jobs run` does; the
/// copies page shows its progress and how it ended. One run of a job at a
/// time from here; the node's own schedule is not changed.
pub fn start_copy_job(
    c: &Console,
    addr: std::net::SocketAddr,
    database: u32,
    name: String,
) -> Result<String, String> {
    use propagator::wire::{ReadRequest, Request, Response};
    let text = backup::schedule::fetch_jobs(addr).map_err(|e| e.to_string())?;
    let (def, _) = backup::schedule::parse_jobs(&text).map_err(|e| e.to_string())?;
    let job = def
        .job
        .iter()
        .find(|j| j.name == name)
        .cloned()
        .ok_or_else(|| format!("database {database} defines no copy job {name:?}"))?;
    // The job writes into the node's own copy area: a path that means
    // something here only when the node is on this machine.
    if !addr.ip().is_loopback() {
        return Err(format!(
            "database {database}'s node ({addr}) is not on this machine: its copy area is not a path here; run the job there (etp copy jobs run {name} --node {addr})"
        ));
    }
    let root = match propagator::node::client::Client::connect(addr)
        .and_then(|mut cl| cl.call(&Request::Read(ReadRequest::Info)))
        .map_err(|e| e.to_string())?
    {
        Response::Info(i) => i.copy_area.map(std::path::PathBuf::from),
        other => return Err(format!("node {addr} answered {other:?}")),
    }
    .or(def.area.clone())
    .ok_or_else(|| {
        format!("node {addr} has no copy area for its jobs (start it with --copy-area DIR)")
    })?;
    let area = backup::Area::open(&root).map_err(|e| e.to_string())?;
    let sources = backup::schedule::node_sources(addr).map_err(|e| e.to_string())?;
    let key = format!("{database}/{name}");
    let run = {
        let mut runs = super::lock(&c.copy_runs);
        if runs
            .get(&key)
            .is_some_and(|r| super::lock(&r.ended).is_none())
        {
            return Err(format!(
                "copy job {name} of database {database} is still running from here: see the copies page"
            ));
        }
        let run = Arc::new(CopyRun {
            started_us: chrono::Utc::now().timestamp_micros(),
            message: Mutex::new("starting".into()),
            ended: Mutex::new(None),
        });
        runs.insert(key, run.clone());
        run
    };
    std::thread::Builder::new()
        .name("console-copy-job".into())
        .spawn(move || {
            let now = chrono::Utc::now();
            let r = backup::schedule::run_job(&area, &job, now, now, &sources, &mut |m| {
                *super::lock(&run.message) = m.to_string();
            });
            let said = if r.ok {
                format!(
                    "done in {:.1} s: set(s) {}{}",
                    r.seconds,
                    r.sets.join(", "),
                    if r.done.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", r.done.join("; "))
                    }
                )
            } else {
                format!(
                    "failed after {:.1} s: {}",
                    r.seconds,
                    r.error.as_deref().unwrap_or("no reason given")
                )
            };
            tracing::warn!(target: "etp::audit", job = %job.name, ok = r.ok, %said, "console copy job ended");
            *super::lock(&run.ended) = Some((r.ok, said));
        })
        .map_err(|e| format!("cannot start the job's thread: {e}"))?;
    Ok(format!(
        "started: copy job {name} of database {database}, into {}; the copies page shows its progress and how it ended",
        root.display()
    ))
}
