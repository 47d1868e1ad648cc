//! The cluster's state as the pages show it: gathered from the nodes, and
//! rendered.

use super::Console;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use propagator::catalog::Role;
use propagator::node::client::Client;
use propagator::topology::Valid;
use propagator::wire::{
    Health, OperationRequest, ReadRequest, ReplicaState, ReplicateReport, Request, Response,
    TaskReport,
};
use propagator::DbId;
use std::net::SocketAddr;

/// One database of the topology, as the console found it.
pub struct DbRow {
    pub db: DbId,
    pub addr: SocketAddr,
    /// Its last LSN, when it answered.
    pub last_lsn: Option<u64>,
    /// Why it did not answer.
    pub down: Option<String>,
    /// Since when it has been found unreachable (µs since the epoch).
    pub down_since: Option<i64>,
}

/// One master, with its task's state.
pub struct MasterRow {
    pub name: String,
    pub db: DbId,
    pub file: u32,
    pub incarnation: Option<u32>,
    pub task: Option<TaskReport>,
    /// Why its task's state is not shown (its node did not answer, or
    /// answered without it).
    pub no_task: Option<String>,
}

/// What the cluster page shows.
pub struct ClusterView {
    pub node: SocketAddr,
    pub at_us: i64,
    /// The topology could not be read (the page says why).
    pub error: Option<String>,
    pub databases: Vec<DbRow>,
    pub masters: Vec<MasterRow>,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub(super) fn topology(node: SocketAddr) -> anyhow::Result<Valid> {
    crate::recovery::topology_of(node)
}

/// Asks every node of the topology `c.node` holds for its state.
pub fn gather(c: &Console) -> ClusterView {
    let at_us = now_us();
    let v = match topology(c.node) {
        Ok(v) => v,
        Err(e) => {
            return ClusterView {
                node: c.node,
                at_us,
                error: Some(format!("node {} gave no topology: {e:#}", c.node)),
                databases: Vec::new(),
                masters: Vec::new(),
            }
        }
    };
    let mut databases = Vec::new();
    let mut masters: Vec<MasterRow> = v
        .topology
        .masters
        .iter()
        .map(|m| MasterRow {
            name: m.name.clone(),
            db: DbId(m.database),
            file: m.file,
            incarnation: None,
            task: None,
            no_task: Some("its node does not answer".into()),
        })
        .collect();
    for (db, addr) in &v.addresses {
        let asked = (|| -> anyhow::Result<(u64, Vec<propagator::FileDef>, Vec<TaskReport>)> {
            let mut client = Client::connect(*addr)?;
            let lsn = match client.call(&Request::Read(ReadRequest::Info))? {
                Response::Info(i) => i.last_lsn.0,
                other => anyhow::bail!("it answered {other:?} to Info"),
            };
            let files = match client.call(&Request::Read(ReadRequest::Files))? {
                Response::Files { files, .. } => files,
                other => anyhow::bail!("it answered {other:?} to Files"),
            };
            let tasks = match client.call(&Request::Operation(OperationRequest::ReplicateStatus))? {
                Response::Tasks(t) => t,
                other => anyhow::bail!("it answered {other:?} to ReplicateStatus"),
            };
            Ok((lsn, files, tasks))
        })();
        let mut since = super::lock(&c.down_since);
        match asked {
            Ok((lsn, files, tasks)) => {
                since.remove(db);
                for m in masters.iter_mut().filter(|m| m.db == *db) {
                    m.incarnation = files
                        .iter()
                        .find(|f| f.fnr.0 == m.file)
                        .and_then(|f| match f.role {
                            Role::Master { incarnation, .. } => Some(incarnation),
                            _ => None,
                        });
                    m.task = tasks.iter().find(|t| t.master.0 == m.file).cloned();
                    m.no_task = m.task.is_none().then(|| {
                        "its node runs no task for it (no replicate, or not started)".into()
                    });
                }
                databases.push(DbRow {
                    db: *db,
                    addr: *addr,
                    last_lsn: Some(lsn),
                    down: None,
                    down_since: None,
                });
            }
            Err(e) => {
                let first = *since.entry(*db).or_insert(at_us);
                databases.push(DbRow {
                    db: *db,
                    addr: *addr,
                    last_lsn: None,
                    down: Some(format!("{e:#}")),
                    down_since: Some(first),
                });
            }
        }
    }
    ClusterView {
        node: c.node,
        at_us,
        error: None,
        databases,
        masters,
    }
}

/// The pages' style: in the binary, nothing fetched.
const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2433; background: #fafbfc; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem 0; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem 0; }
.meta { color: #5b6577; font-size: .85rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e7ee; font-size: .9rem; vertical-align: top; }
th { background: #eef1f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #146c2e; font-weight: 600; }
.warn { color: #8a5a00; font-weight: 600; }
.bad { color: #b3261e; font-weight: 600; }
.why { color: #5b6577; font-size: .8rem; }
.banner { padding: .6rem .8rem; border-radius: 4px; background: #fdecea; color: #b3261e; }
nav a { margin-right: 1rem; }
ol.path li { margin: .3rem 0; }
.treebox { overflow-x: auto; background: #fff; border: 1px solid #e3e7ee; padding: .4rem; margin: .6rem 0 1.2rem 0; }
code { background: #eef1f6; padding: 0 .25rem; border-radius: 3px; }
form.inline { display: inline-block; margin-right: .6rem; }
"#;

pub(super) fn page(title: &str, refresh_s: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(s) = refresh_s {
                    meta http-equiv="refresh" content=(s);
                }
                title { (title) " · etp console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav { a href="/" { "Cluster" } a href="/recovery" { "Recovery" } a href="/copies" { "Copies" } a href="/actions" { "Actions" } }
                (body)
            }
        }
    }
}

/// A page kept current: with JavaScript, its `main` is replaced by each
/// fragment the server sends on `events` (server-sent events, `/live.js`);
/// without, it reloads every `refresh_s` seconds.
pub(super) fn live_page(title: &str, refresh_s: u32, events: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                noscript { meta http-equiv="refresh" content=(refresh_s); }
                title { (title) " · etp console" }
                style { (PreEscaped(STYLE)) }
                script src="/live.js" defer {}
            }
            body {
                nav { a href="/" { "Cluster" } a href="/recovery" { "Recovery" } a href="/copies" { "Copies" } a href="/actions" { "Actions" } }
                main id="live" data-events=(events) { (body) }
            }
        }
    }
}

/// The little script of the live pages: one `EventSource`, each `page`
/// event's HTML put in place of `main`, an `end` event closing it.
pub const LIVE_JS: &str = r#"(function () {
  var main = document.getElementById("live");
  if (!main || !window.EventSource) { return; }
  var es = new EventSource(main.getAttribute("data-events"));
  es.addEventListener("page", function (e) {
    main.innerHTML = e.data;
    main.setAttribute("data-updates", String(Number(main.getAttribute("data-updates") || "0") + 1));
  });
  es.addEventListener("end", function () { es.close(); });
})();
"#;

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| us.to_string())
}

fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

fn state_class(r: &ReplicateReport) -> &'static str {
    match r.state {
        ReplicaState::Online if r.health == Health::Current => "ok",
        ReplicaState::Online | ReplicaState::Initializing | ReplicaState::Restoring => "warn",
        _ => "bad",
    }
}

/// The cluster page: every database (reachable or not, since when), every
/// master with its seq and incarnation and its task's policy, every
/// replicate with its state, health, confirmed seq, lag, stalled time and
/// gaps. Refreshed every 5 s (a meta refresh: no script needed).
pub fn cluster(v: &ClusterView, c: &Console) -> Markup {
    live_page("Cluster", 5, "/events/cluster", cluster_body(v, c))
}

/// The cluster page's content (what a live update replaces).
pub fn cluster_body(v: &ClusterView, c: &Console) -> Markup {
    {
        html! {
            h1 { "Cluster" }
            p.meta { "as of " (time(v.at_us)) ", through node " (v.node.to_string()) }
            @if let Some(e) = &v.error {
                p.banner id="error" { (e) }
            }
            h2 { "Databases" }
            table id="databases" {
                tr { th { "database" } th { "address" } th { "state" } th { "last LSN" } }
                @for d in &v.databases {
                    tr id={ "db-" (d.db.0) } {
                        td { (d.db.0) }
                        td { (d.addr.to_string()) }
                        @match (&d.down, d.down_since) {
                            (Some(why), since) => td {
                                span.bad { "unreachable" }
                                @if let Some(s) = since { " since " (time(s)) }
                                div.why { (why) }
                            },
                            (None, _) => td { span.ok { "reachable" } },
                        }
                        td.num { (d.last_lsn.map_or("–".to_string(), |l| l.to_string())) }
                    }
                }
            }
            h2 { "Masters" }
            table id="masters" {
                tr { th { "master" } th { "database" } th { "file" } th { "seq" } th { "incarnation" } th { "task" } th { "policy" } th { "restart interval" } }
                @for m in &v.masters {
                    tr id={ "master-" (m.name) } {
                        td { (m.name) }
                        td { (m.db.0) }
                        td { (m.file) }
                        td.num { (m.task.as_ref().map_or("–".to_string(), |t| t.master_seq.to_string())) }
                        td.num { (m.incarnation.map_or("–".to_string(), |i| i.to_string())) }
                        @match &m.task {
                            Some(t) => {
                                td { (t.state.to_string())
                                    @for w in &t.warnings { div.why { (w) } }
                                }
                                td { (t.policy.to_string()) }
                                td { (t.restart_interval_s.map_or("none (a lost link stops it)".to_string(), |s| format!("{s} s"))) }
                            },
                            None => { td.bad { (m.no_task.as_deref().unwrap_or("–")) } td { "–" } td { "–" } },
                        }
                    }
                }
            }
            h2 { "Replicates" }
            table id="replicates" {
                tr { th { "replicate" } th { "master" } th { "kind" } th { "state" } th { "health" } th { "confirmed" } th { "lag" } th { "lag, last hour" } th { "stalled" } th { "gaps" } }
                @for m in &v.masters {
                    @if let Some(t) = &m.task {
                        @for r in &t.replicates {
                            tr id={ "rep-" (r.name) } {
                                td { (r.name) }
                                td { (m.name) }
                                td { (r.kind.to_string()) }
                                td {
                                    span class=(state_class(r)) { (r.state.to_string()) }
                                    @if let Some(why) = &r.reason { div.why { (why) } }
                                    @if let Some(h) = &r.held {
                                        div.why { "serves no current reads (" (h.hold.kind.name())
                                            @if let Some(at) = h.release_at { "; released at seq " (at.to_string()) }
                                            ")" }
                                    }
                                    @if let Some(d) = &r.sync_down { div.why { "sync-down " (d) } }
                                    @if let Some(l) = &r.load {
                                        div.load {
                                            "loading from " (l.source) ": "
                                            progress id={ "load-" (r.name) } max=(l.total.max(1)) value=(l.scanned.min(l.total)) {}
                                            " " (l.scanned.min(l.total)) " / " (l.total) " records, "
                                            (format!("{:.0}", l.rows_per_s)) " rec/s"
                                            @if let Some(eta) = l.eta_s { ", about " (secs(eta)) " left" }
                                        }
                                    }
                                }
                                td { (r.health.to_string()) }
                                td.num { (r.confirmed_seq.to_string()) }
                                td.num { (r.lag_records) " rec, " @if !r.lag_bytes_exact { "~" } (r.lag_bytes) " B, " (secs(r.lag_s)) }
                                td { (lag_chart(&r.name, &c.lag_of(&r.name), v.at_us)) }
                                td.num { @if r.stalled_s > 0.0 { (secs(r.stalled_s)) } @else { "–" } }
                                td {
                                    @if r.gaps.is_empty() { "none" }
                                    @for g in &r.gaps { (g.from.to_string()) ".." (g.to.to_string()) " " }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A replicate's lag in seconds over the last hour, as an SVG line drawn
/// here (the newest sample at the right edge; the scale is the hour's
/// highest lag, at least one second).
pub fn lag_chart(name: &str, samples: &[super::LagSample], now_us: i64) -> Markup {
    const W: f64 = 240.0;
    const H: f64 = 36.0;
    // (A lag that is not a finite, non-negative number draws as none.)
    let lag = |s: &super::LagSample| {
        if s.seconds.is_finite() {
            s.seconds.max(0.0)
        } else {
            0.0
        }
    };
    let top = samples.iter().map(lag).fold(1.0f64, f64::max);
    let from = now_us - super::LAG_WINDOW_US;
    let points: Vec<String> = samples
        .iter()
        .map(|s| {
            let x = (s.at_us - from) as f64 / super::LAG_WINDOW_US as f64 * W;
            let y = H - (lag(s) / top) * (H - 2.0) - 1.0;
            format!("{:.1},{:.1}", x.clamp(0.0, W), y)
        })
        .collect();
    let newest = samples.last();
    html! {
        svg class="lag" data-replicate=(name) width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) }
            role="img" xmlns="http://www.w3.org/2000/svg" {
            title {
                "lag of " (name) " over the last hour: at most " (secs(top)) "; now "
                (newest.map_or("no sample".to_string(), |s| format!("{} ({} records)", secs(s.seconds), s.records)))
            }
            rect x="0" y="0" width=(W) height=(H) fill="#f3f5f9" {}
            polyline points=(points.join(" ")) fill="none" stroke="#2f6fdf" stroke-width="1.5" {}
            @if let Some(s) = newest {
                circle cx=(points.last().and_then(|p| p.split(',').next()).unwrap_or("0")) cy=(format!("{:.1}", H - (lag(s) / top) * (H - 2.0) - 1.0)) r="2" fill="#2f6fdf" {}
            }
        }
        span.why { " max " (secs(top)) }
    }
}

/// A live diagnosis, or why there is none.
pub struct RecoveryView {
    pub node: SocketAddr,
    pub at_us: i64,
    pub diagnosis: Result<flowcharts::Diagnosis, String>,
    pub set: Option<flowcharts::TreeSet>,
    pub warnings: Vec<String>,
    /// The plan's steps bound to the live cluster (which databases, files
    /// and replicates each acts on), or why they could not be.
    pub bound: Option<Result<Vec<String>, String>>,
}

/// Diagnoses the cluster as `etp recover diagnose` does (the probes read
/// the nodes, and the copy area and client journal the console was given).
pub fn diagnose(c: &Console) -> RecoveryView {
    let at_us = now_us();
    let set = flowcharts::TreeSet::builtin().map_err(|e| format!("the built-in trees: {e}"));
    crate::recovery::run::settle_links(c.node, std::time::Duration::from_secs(2));
    let (diagnosis, warnings, bound) = match (
        crate::recovery::probes::LiveProbes::gather(c.node, &c.probe_sources()),
        &set,
    ) {
        (Err(e), _) => (
            Err(format!("probing the cluster through {}: {e:#}", c.node)),
            Vec::new(),
            None,
        ),
        (_, Err(e)) => (Err(e.clone()), Vec::new(), None),
        (Ok(mut probes), Ok(set)) => {
            let d =
                flowcharts::diagnose(set, &mut probes).map_err(|e| format!("the diagnosis: {e}"));
            // The steps as `recover run` would carry them out now.
            let bound = match d.as_ref().map(|d| d.plan()) {
                Ok(flowcharts::Plan::Actions { steps, .. }) => Some(
                    crate::recovery::plan::bind(steps, &probes)
                        .map(|b| b.iter().map(|s| s.describe()).collect())
                        .map_err(|e| format!("{e:#}")),
                ),
                _ => None,
            };
            (d, probes.copy_alarms.clone(), bound)
        }
    };
    RecoveryView {
        node: c.node,
        at_us,
        diagnosis,
        set: set.ok(),
        warnings,
        bound,
    }
}

fn walk_list(w: &flowcharts::Walk) -> Markup {
    html! {
        ol.path data-tree=(w.tree) {
            @for v in &w.path {
                li data-node=(v.node) data-answer=(v.answer.word()) {
                    strong { (v.step.as_deref().unwrap_or(&v.node)) } " " (v.question) " "
                    span class=(match v.answer.word() { "yes" => "ok", "no" => "warn", _ => "bad" }) { (v.answer.word()) }
                    div.why { (v.answer.text()) }
                }
            }
        }
        @match &w.plan {
            flowcharts::Plan::Actions { leaf, outcome, steps, .. } => {
                p { "Leaf " strong { (leaf) } ": " (outcome) }
                ol.plan {
                    @for s in steps {
                        li { code { (s.action) } @for (k, v) in &s.params { " " (k) "=" code { (v) } } }
                    }
                }
            }
            flowcharts::Plan::Goto { leaf, outcome, case, .. } => {
                p { "Leaf " strong { (leaf) } ": " (outcome) " → " strong { (case) } }
            }
            flowcharts::Plan::Stopped { node, reason } => {
                p.banner { "Stopped at " strong { (node) } ": " (reason) }
            }
        }
    }
}

/// The recovery page: the live diagnosis's path through triage and the
/// case it chose, each question with its answer and evidence, the leaf's
/// plan, and each tree drawn with that path on it.
pub fn recovery(v: &RecoveryView, token: &str) -> Markup {
    page(
        "Recovery",
        None,
        html! {
            h1 { "Recovery" }
            p.meta { "diagnosed " (time(v.at_us)) " through node " (v.node.to_string())
                " · run it yourself: " code { "etp recover run --node " (v.node.to_string()) " --dry-run" } }
            @for w in &v.warnings { p.banner { "warning: " (w) } }
            @match &v.diagnosis {
                Err(e) => p.banner id="error" { (e) },
                Ok(d) => {
                    @let intact = d.triage.plan.leaf() == Some("all_intact");
                    p id="verdict" class=(if intact { "ok" } else { "bad" }) {
                        @if intact { "All intact: nothing to recover." }
                        @else { "Recovery needed: " (d.plan().leaf().unwrap_or("a question has no answer")) }
                    }
                    @match &v.bound {
                        Some(Ok(steps)) => {
                            h2 { "The plan, bound to the cluster" }
                            ol id="bound-plan" { @for s in steps { li { code { (s) } } } }
                            p.why { "Carried out by " code { "etp recover run --node " (v.node.to_string()) " --execute" } " (a journaled run, resumable), or from here:" }
                            @for (mode, label) in [("dry_run", "Dry run (nothing done)"), ("execute", "Run the plan…")] {
                                form.inline method="post" action="/recovery/run" {
                                    input type="hidden" name="token" value=(token);
                                    input type="hidden" name="mode" value=(mode);
                                    button type="submit" { (label) }
                                }
                            }
                        },
                        Some(Err(e)) => p.banner { "The plan cannot be bound to the cluster: " (e) },
                        None => {},
                    }
                    @for w in std::iter::once(&d.triage).chain(d.case.as_ref()) {
                        h2 { (w.tree) }
                        (walk_list(w))
                        @if let Some(t) = v.set.as_ref().and_then(|s| s.get(&w.tree)) {
                            div.treebox { (super::tree::svg(t, Some(w))) }
                        }
                    }
                }
            }
        },
    )
}

/// The copies page's facts.
pub struct CopiesView {
    pub node: SocketAddr,
    pub at_us: i64,
    /// The copy area read, and why not when it could not be.
    pub area: Result<std::path::PathBuf, String>,
    pub sets: Vec<backup::CopySet>,
    pub runs: Vec<backup::schedule::JobRun>,
    /// Per node: its copy-job definitions (TOML), or why not.
    pub jobs: Vec<(DbId, Result<String, String>)>,
    pub ages: Vec<propagator::wire::CopyAge>,
    /// How many nodes answered with their copies' ages (of `nodes`).
    pub ages_from: usize,
    pub nodes: usize,
    pub cleanup: Vec<propagator::wire::CleanupPlan>,
    /// What could not be asked.
    pub problems: Vec<String>,
    /// Copy jobs run from this console: `DATABASE/JOB`, when started, its
    /// latest progress, and how it ended (None: running).
    pub console_runs: Vec<super::CopyRunView>,
}

/// Reads the copy area (the console's `--area`, else the node's own, when
/// it is on this machine) and asks every node of the topology for its copy
/// jobs, the ages of its newest copies and its log's cleanup plan.
pub fn copies(c: &Console) -> CopiesView {
    let at_us = now_us();
    let mut problems = Vec::new();
    let mut out = CopiesView {
        node: c.node,
        at_us,
        area: Err("no copy area known: start the console with --area DIR".into()),
        sets: Vec::new(),
        runs: Vec::new(),
        jobs: Vec::new(),
        ages: Vec::new(),
        ages_from: 0,
        nodes: 0,
        cleanup: Vec::new(),
        problems: Vec::new(),
        console_runs: c.copy_runs_now(),
    };
    let v = match topology(c.node) {
        Ok(v) => v,
        Err(e) => {
            out.problems
                .push(format!("node {} gave no topology: {e:#}", c.node));
            return out;
        }
    };
    let mut node_area = None;
    out.nodes = v.addresses.len();
    for (db, addr) in &v.addresses {
        let mut client = match Client::connect(*addr) {
            Ok(cl) => cl,
            Err(e) => {
                problems.push(format!("database {db} ({addr}): {e}"));
                continue;
            }
        };
        // (The node's own area is read only when the node is on this
        // machine's loopback: elsewhere the path means nothing here.)
        if *addr == c.node && addr.ip().is_loopback() {
            if let Ok(Response::Info(i)) = client.call(&Request::Read(ReadRequest::Info)) {
                node_area = i.copy_area;
            }
        }
        let jobs = match client.call(&Request::Copy(propagator::wire::CopyRequest::CopyJobs {
            set: None,
        })) {
            Ok(Response::Text(t)) => Ok(t),
            Ok(other) => Err(format!("it answered {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        out.jobs.push((*db, jobs));
        match client.call(&Request::Read(ReadRequest::CopyAges)) {
            Ok(Response::CopyAges(a)) => {
                out.ages_from += 1;
                out.ages.extend(a)
            }
            Ok(other) => problems.push(format!("database {db}: copy ages: it answered {other:?}")),
            Err(e) => problems.push(format!("database {db}: copy ages: {e}")),
        }
        // Only a node that runs a master's task has a cleanup plan.
        if !v.topology.masters.iter().any(|m| DbId(m.database) == *db) {
            continue;
        }
        match client.call(&Request::Operation(OperationRequest::LogCleanup {
            master: None,
            until: None,
            execute: false,
        })) {
            Ok(Response::Cleanup(p)) => out.cleanup.extend(p),
            Ok(other) => problems.push(format!(
                "database {db}: cleanup plan: it answered {other:?}"
            )),
            Err(e) => problems.push(format!("database {db}: cleanup plan: {e}")),
        }
    }
    let dir = c
        .sources
        .area
        .clone()
        .or(node_area.map(std::path::PathBuf::from));
    // (A page creates nothing: an area that is not there is said so.)
    if let Some(dir) = dir.filter(|d| {
        let there = d.join("sets").is_dir() && d.join("data").is_dir();
        if !there {
            out.area = Err(format!("no copy area at {}", d.display()));
        }
        there
    }) {
        match backup::Area::open(&dir) {
            Ok(area) => {
                match area.list() {
                    Ok(sets) => out.sets = sets,
                    Err(e) => problems.push(format!("the catalog of {}: {e}", dir.display())),
                }
                match backup::schedule::history(&area) {
                    Ok(runs) => out.runs = runs,
                    Err(e) => problems.push(format!("the job history of {}: {e:#}", dir.display())),
                }
                out.area = Ok(dir);
            }
            Err(e) => out.area = Err(format!("{}: {e}", dir.display())),
        }
    }
    out.problems = problems;
    out
}

/// The files `ages` names, each once (every node with a copy area reports
/// every file of the topology).
fn distinct<'a>(
    ages: impl Iterator<Item = &'a propagator::wire::CopyAge>,
) -> Vec<&'a propagator::wire::CopyAge> {
    let mut seen = std::collections::BTreeSet::new();
    ages.filter(|a| seen.insert((a.database, a.file))).collect()
}

/// The copies page: the catalog (newest first), the copy jobs with their
/// runs, the files without a recent copy, and what log cleanup may delete.
pub fn copies_page(v: &CopiesView) -> Markup {
    page(
        "Copies",
        None,
        html! {
            h1 { "Copies" }
            p.meta { "as of " (time(v.at_us)) ", through node " (v.node.to_string()) " · area "
                @match &v.area { Ok(a) => code { (a.display().to_string()) }, Err(e) => span.bad { (e) } } }
            @for p in &v.problems { p.banner { (p) } }
            h2 { "Files without a recent copy" }
            @let alarms = distinct(v.ages.iter().filter(|a| a.alarm));
            // (A node without --copy-alarm-hours raises no alarm: a file
            // with no copy at all is named all the same.)
            @let never = distinct(v.ages.iter().filter(|a| !a.alarm && a.newest_set.is_none()));
            @let answered = v.ages_from == v.nodes && v.nodes > 0;
            @if alarms.is_empty() && never.is_empty() && answered {
                p.ok id="no-alarm" { "Every master, log and administration file has a copy, none older than its node's alarm age." }
            }
            @if !alarms.is_empty() {
                ul id="alarms" { @for a in &alarms { li.bad { (a.what()) ": " (a.newest()) } } }
            }
            @if !never.is_empty() {
                ul id="never-copied" { @for a in &never { li.warn { (a.what()) ": no copy at all" } } }
            }
            @if !answered {
                p.warn id="alarms-unknown" { "Not every node said how old its copies are (" (v.ages_from) " of " (v.nodes) "): see above." }
            }
            @if !v.console_runs.is_empty() {
                h2 { "Copy jobs run from this console" }
                table id="console-runs" {
                    tr { th { "job" } th { "started" } th { "state" } }
                    @for (key, at, msg, ended) in &v.console_runs {
                        tr id={ "run-" (key.replace('/', "-")) } {
                            td { (key) }
                            td { (time(*at)) }
                            @match ended {
                                None => td { span.warn { "running: " } (msg) },
                                Some((true, said)) => td { span.ok { "ok: " } (said) },
                                Some((false, said)) => td { span.bad { "failed: " } (said) },
                            }
                        }
                    }
                }
            }
            h2 { "Copy sets" }
            table id="sets" {
                tr { th { "set" } th { "kind" } th { "database" } th { "taken" } th { "LSN" } th { "seqs" } th { "members" } th { "bytes" } th { "job" } }
                @for s in v.sets.iter().rev().take(200) {
                    tr id={ "set-" (s.id) } {
                        td { code { (s.id) } }
                        td { (format!("{:?}", s.kind).to_lowercase()) }
                        td.num { (s.dbid.0) }
                        td { (s.taken_utc) }
                        td.num { (s.lsn.to_string()) }
                        td { @for (f, q) in &s.seqs { "file " (f.to_string()) ": " (q.to_string()) " " }
                             @for c in &s.confirmed { div.why { (c.replicate) " confirms " (c.seq) } } }
                        td { @for m in &s.members {
                            div { (m.fnr.to_string()) " " (m.name) " (" (m.role) ") "
                                span.why { (m.copy.bytes) " B, blake3 " (m.copy.blake3.get(..16).unwrap_or(&m.copy.blake3)) "…" } }
                        } }
                        td.num { (s.bytes) }
                        td { (s.job.as_deref().unwrap_or("by hand")) }
                    }
                }
            }
            p.why { (v.sets.len()) " set(s) in the catalog"
                @if v.sets.len() > 200 { ", the newest 200 shown" }
                ". Verify a set against its digests with " code { "etp copy verify SET --area AREA" } "." }
            h2 { "Copy jobs" }
            @for (db, jobs) in &v.jobs {
                @match jobs {
                    Ok(t) if !t.trim().is_empty() => { h3 { "database " (db.0) } pre { (t) } },
                    Ok(_) => {},
                    Err(e) => p.bad { "database " (db.0) ": " (e) },
                }
            }
            table id="runs" {
                tr { th { "job" } th { "slot" } th { "started" } th { "seconds" } th { "result" } th { "sets" } }
                @for r in v.runs.iter().rev().take(50) {
                    tr {
                        td { (r.job) } td { (r.slot) } td { (r.started) } td.num { (format!("{:.1}", r.seconds)) }
                        td { @if r.ok { span.ok { "ok" } } @else { span.bad { "failed" } @if let Some(e) = &r.error { div.why { (e) } } } }
                        td { @for s in &r.sets { code { (s) } " " } }
                    }
                }
            }
            h2 { "Log retention" }
            table id="cleanup" {
                tr { th { "master" } th { "log" } th { "may delete" } th { "why not more" } }
                @for p in &v.cleanup {
                    tr id={ "cleanup-" (p.master_name) } {
                        td { (p.master_name) }
                        td { "seqs " (p.first_seq.to_string()) " to " (p.last_seq.to_string()) ", " (p.records) " records, " (p.bytes) " B" }
                        td { @match p.safe_until { Some(s) => { "up to seq " (s.to_string()) }, None => { "nothing" } } }
                        td {
                            @for (r, seq, why) in &p.replicates { div { (r) " confirms " (seq.to_string()) span.why { " (" (why) ")" } } }
                            div { "newest master copy: " (p.copy_horizon.map_or("none".to_string(), |s| format!("seq {s}"))) }
                            @for n in &p.notes { div.why { (n) } }
                        }
                    }
                }
            }
        },
    )
}

pub fn not_found() -> Markup {
    page(
        "Not found",
        None,
        html! { h1 { "Not found" } p { "No such page. " a href="/" { "The cluster page" } } },
    )
}

pub fn failed(why: &str) -> Markup {
    page("Error", None, html! { h1 { "Error" } p.banner { (why) } })
}

#[cfg(test)]
mod tests {
    use super::super::LagSample;
    use super::lag_chart;

    #[test]
    fn a_lag_chart_puts_the_hour_across_and_the_highest_lag_at_the_top() {
        let now = 10_000_000_000i64;
        let at = |ago_s: i64, seconds: f64| LagSample {
            at_us: now - ago_s * 1_000_000,
            records: 7,
            seconds,
        };
        let svg = lag_chart("r", &[at(1800, 2.0), at(0, 4.0)], now).into_string();
        assert!(svg.contains(r#"points="120.0,18.0 240.0,1.0""#), "{svg}");
        assert!(
            svg.contains("at most 4.0 s; now 4.0 s (7 records)"),
            "{svg}"
        );
        // Older than the hour: at the left edge; no sample, no line.
        let svg = lag_chart("r", &[at(7200, 0.5)], now).into_string();
        assert!(svg.contains(r#"points="0.0,"#), "{svg}");
        let svg = lag_chart("r", &[], now).into_string();
        assert!(
            svg.contains(r#"points="""#) && svg.contains("no sample"),
            "{svg}"
        );
    }
}
