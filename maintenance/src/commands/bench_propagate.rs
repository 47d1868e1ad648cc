//! `etp bench propagate`: the phases of `shared/bench/pg_peer.sh`, with its
//! metric names, on three real node processes on loopback: a master, a full
//! replicate, and a partial replicate with `grp % 4 == 0` over `id, grp, qty`.
//!
//! - a:  N rows in transactions of B, first insert until both replicates
//!   have applied the last seq (visible there, what pg_peer.sh's marker
//!   measures); `{phase}_durable_s` until both have durably confirmed it;
//! - c:  initial sync: a new replicate (full, then partial) added to the
//!   topology and loaded online from the N-row master, until it is online
//!   and confirms the master's last seq; then the same load again, with the
//!   loading node killed (-9) half-way and restarted: the time the resumed
//!   load took against a whole one;
//! - a2: the task stopped while another N rows commit, then started: time to drain;
//! - b:  M single-row commits at full speed, then M_PACED one every PACE_MS:
//!   commit-to-apply lag per commit (master commit time to the moment it
//!   was visible on the replicate, and to its sync there, both read from
//!   the same clock);
//! - d:  N/10 updates (ids 1..=N/10), then N/10 deletes (ids N/10+1..=2N/10,
//!   records no update touched, as pg_peer.sh), B rows per transaction.
//!
//! Transactions go to the master as one `Batch` request each (the whole
//! transaction in one round trip, as pg_peer.sh runs its loop server-side),
//! from one session. In phases a, a2 and d the client keeps `PIPELINE`
//! (default 8, as `etp exec --node`) transactions in flight: each
//! is still acknowledged only once it and all before it are durable.
//! `PIPELINE=1` sends each only after the one before is acknowledged, as
//! pg_peer.sh's loop commits. Phase b sends one at a time.

use crate::Outcome;
use anyhow::{bail, Context};
use maintenance::cluster::{Cluster, NodeProc, FULL, MASTER, PART};
use propagator::node::client::Client;
use propagator::record::encode_record;
use propagator::wire::ReplicaState;
use propagator::wire::{Command, Request, Response, TaskAction};
use propagator::wire::{OperationRequest, ReadRequest};
use propagator::{Isn, Record, Seq, Value};
use serde_bytes::ByteBuf;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Transactions the benchmark's client keeps in flight by default: as
/// `etp exec --node` does (measured here against 4 and 16, interleaved: 8
/// gave 64.7-66.1k bulk rows/s, 4 gave 54.6-58.4k, 16 gave 58.2-61.3k).
const DEFAULT_PIPELINE: u64 = 8;
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
const BULK2: u64 = 100_000_000;
const LAG1: u64 = 1_000_000_000;
const LAG2: u64 = 2_000_000_000;

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} must be a non-negative integer")),
    }
}

fn emit(metric: &str, value: impl std::fmt::Display, unit: &str) {
    println!("{metric} {value} {unit}");
}

fn emit_secs(metric: &str, secs: f64) {
    emit(metric, format!("{secs:.3}"), "s");
}

fn emit_rate(metric: &str, count: u64, secs: f64, unit: &str) {
    emit(metric, format!("{:.0}", count as f64 / secs), unit);
}

/// A replicate added for phase c.
fn sync_replicate(kind: &str) -> String {
    let (db, file, extra) = match kind {
        "full" => (2, 22, ""),
        _ => (
            3,
            32,
            "fields = [\"id\", \"grp\", \"qty\"]\npredicate = \"grp % 4 == 0\"\n",
        ),
    };
    format!(
        "\n[[replicate]]\nname = \"sync_{kind}\"\nmaster_database = 1\nmaster = 10\ndatabase = {db}\nfile = {file}\nconfirmation = {}\n{extra}",
        file + 1
    )
}

fn apply(text: String) -> anyhow::Result<()> {
    propagator::node::apply::apply_topology_blocking(&text)
        .map(|_| ())
        .context("applying the topology")
}

/// Waits until `name` confirms `seq` (the node answers when it happens).
fn confirmed(master: SocketAddr, name: &str, seq: Seq) -> anyhow::Result<()> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let mut c = Client::connect(master)?;
        match c.call(&Request::Operation(OperationRequest::WaitConfirmed {
            replicate: name.into(),
            seq,
            timeout_ms: 2000,
            applied: false,
        })) {
            Ok(Response::Ok) => return Ok(()),
            // The node restarted its tasks (topology applied) or is
            // reconnecting: ask again.
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => bail!("{name} did not confirm seq {seq}: {other:?}"),
        }
    }
}

fn replicate_report(
    master: SocketAddr,
    name: &str,
) -> anyhow::Result<propagator::wire::ReplicateReport> {
    match Client::connect(master)?.call(&Request::Operation(OperationRequest::ReplicateStatus))? {
        Response::Tasks(t) => t
            .into_iter()
            .flat_map(|t| t.replicates)
            .find(|r| r.name == name)
            .context("no such replicate"),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn topology(addrs: &[SocketAddr]) -> String {
    format!(
        r#"# etp bench propagate: pg_peer.sh's setup
[[database]]
dbid = 1
address = "{}"
[[database]]
dbid = 2
address = "{}"
[[database]]
dbid = 3
address = "{}"

[[master]]
database = 1
file = 10
name = "items"
log = 11
fields = ["id", "grp", "name", "qty", "price", "note"]

[[replicate]]
name = "bench_full"
master_database = 1
master = 10
database = 2
file = 20
confirmation = 21

[[replicate]]
name = "bench_part"
master_database = 1
master = 10
database = 3
file = 30
confirmation = 31
fields = ["id", "grp", "qty"]
predicate = "grp % 4 == 0"

[[task]]
master_database = 1
master = 10
restart_interval_s = 1
"#,
        addrs[0], addrs[1], addrs[2]
    )
}

/// pg_peer.sh's bulk row g.
fn item(g: u64) -> anyhow::Result<ByteBuf> {
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(g as i64));
    r.insert("grp".into(), Value::Int((g % 16) as i64));
    r.insert("name".into(), Value::Text(format!("item-{g}")));
    r.insert("qty".into(), Value::Int((g % 1000) as i64));
    r.insert("price".into(), Value::Float((g % 100_000) as f64 / 100.0));
    let h = blake3::hash(g.to_string().as_bytes()).to_hex();
    r.insert("note".into(), Value::Text(h[..32].to_string()));
    Ok(ByteBuf::from(encode_record(&r)?))
}

fn store(g: u64) -> anyhow::Result<Command> {
    Ok(Command::Store {
        file: MASTER,
        isn: Some(Isn(g)),
        fields: item(g)?,
    })
}

/// Runs one transaction (commands + ET) in one round trip; returns its last seq.
fn txn(c: &mut Client, mut cmds: Vec<Command>) -> anyhow::Result<(Seq, i64)> {
    cmds.push(Command::Et { id: None });
    match c.batch(cmds)? {
        Response::Committed(r) => Ok((
            r.seqs
                .iter()
                .map(|(_, _, last)| *last)
                .max()
                .unwrap_or_default(),
            r.time_us,
        )),
        other => bail!("transaction failed: {other:?}"),
    }
}

/// Transactions of `b` commands from `cmd(g)` for g in lo..lo+n, with
/// `depth` in flight (1: each waits for the one before); the last seq.
fn run_txns(
    c: &mut Client,
    lo: u64,
    n: u64,
    b: u64,
    depth: usize,
    cmd: impl Fn(u64) -> anyhow::Result<Command>,
) -> anyhow::Result<Seq> {
    let mut txns = Vec::new();
    let mut g = lo;
    while g < lo + n {
        let hi = (g + b).min(lo + n);
        let mut cmds = (g..hi).map(&cmd).collect::<anyhow::Result<Vec<_>>>()?;
        cmds.push(Command::Et { id: None });
        txns.push(cmds);
        g = hi;
    }
    let mut last = Seq(0);
    c.pipeline(txns, depth, |r| -> anyhow::Result<()> {
        match r {
            Response::Committed(r) => {
                let l = r.seqs.iter().map(|(_, _, l)| *l).max().unwrap_or_default();
                last = last.max(l);
                Ok(())
            }
            other => bail!("transaction failed: {other:?}"),
        }
    })?;
    Ok(last)
}

fn bulk(c: &mut Client, lo: u64, n: u64, b: u64, depth: usize) -> anyhow::Result<Seq> {
    run_txns(c, lo, n, b, depth, store)
}

/// Waits (the master node answers when it happens: no polling) until both
/// replicates confirm `target`; returns when each did, measured from `t0`.
fn caught_up(
    master: SocketAddr,
    target: Seq,
    t0: Instant,
    durable_metric: Option<&str>,
) -> anyhow::Result<(f64, f64)> {
    let wait = |name: &'static str, applied: bool| {
        std::thread::spawn(move || -> anyhow::Result<f64> {
            let mut c = Client::connect(master)?;
            match c.call(&Request::Operation(OperationRequest::WaitConfirmed {
                replicate: name.into(),
                seq: target,
                timeout_ms: PHASE_TIMEOUT.as_millis() as u64,
                applied,
            }))? {
                Response::Ok => Ok(t0.elapsed().as_secs_f64()),
                other => bail!("unexpected answer {other:?}"),
            }
        })
    };
    let join = |h: std::thread::JoinHandle<anyhow::Result<f64>>| {
        h.join().map_err(|_| anyhow::anyhow!("a waiter panicked"))?
    };
    // Caught up as pg_peer.sh measures it: applied (visible) on both.
    let (f, p) = (wait("bench_full", true), wait("bench_part", true));
    let (tf, tp) = (join(f)?, join(p)?);
    // And durable there (confirmed: the master may clean its log up to it).
    let (f, p) = (wait("bench_full", false), wait("bench_part", false));
    let td = join(f)?.max(join(p)?);
    if let Some(m) = durable_metric {
        emit_secs(&format!("{m}_durable_s"), td);
    }
    Ok((tf, tp))
}

fn file_count(node: &NodeProc, file: propagator::Fnr) -> anyhow::Result<u64> {
    match node
        .client()?
        .call(&Request::Read(ReadRequest::FileStat { file }))?
    {
        Response::Stat { count, .. } => Ok(count),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// CPU time per row of a phase on each process: the three nodes and this
/// one (the client), from `/proc/PID/stat` (user + system, all threads).
/// `pg_peer.sh` measures PostgreSQL's server processes the same way.
struct CpuMeter {
    pids: [Option<u32>; 3],
    at: [Duration; 4],
}

const CPU_WHO: [&str; 4] = ["master", "full", "part", "client"];

impl CpuMeter {
    fn now(pids: &[Option<u32>; 3]) -> [Duration; 4] {
        let cpu = |p: Option<u32>| {
            p.and_then(|p| super::bench::process_cpu_of(&p.to_string()))
                .unwrap_or_default()
        };
        [
            cpu(pids[0]),
            cpu(pids[1]),
            cpu(pids[2]),
            super::bench::process_cpu_of("self").unwrap_or_default(),
        ]
    }

    fn start(cl: &Cluster) -> CpuMeter {
        let pids = [cl.nodes[0].pid(), cl.nodes[1].pid(), cl.nodes[2].pid()];
        CpuMeter {
            at: Self::now(&pids),
            pids,
        }
    }

    /// `{phase}_cpu_{who}_us_per_row` for each process, the replicates'
    /// nodes together (as pg_peer.sh's replica cluster holds both), and
    /// the total.
    fn emit(&self, phase: &str, rows: u64) {
        let end = Self::now(&self.pids);
        let us: Vec<f64> = (0..4)
            .map(|i| end[i].saturating_sub(self.at[i]).as_secs_f64() * 1e6 / rows.max(1) as f64)
            .collect();
        for (who, v) in CPU_WHO.iter().zip(&us) {
            emit(
                &format!("{phase}_cpu_{who}_us_per_row"),
                format!("{v:.1}"),
                "us/row",
            );
        }
        let line = |name: &str, v: f64| {
            emit(
                &format!("{phase}_cpu_{name}_us_per_row"),
                format!("{v:.1}"),
                "us/row",
            )
        };
        line("replicas", us[1] + us[2]);
        line("total", us.iter().sum());
    }
}

fn peak_rss_mb(n: &NodeProc) -> f64 {
    let Some(pid) = n.pid() else { return 0.0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Linear interpolation, as PostgreSQL's percentile_cont.
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Commit-to-apply lag quantiles (p50, p90, p99, max) in ms, to the moment
/// each transaction was visible on the replicate (what pg_peer.sh measures:
/// its trigger fires at the apply worker's insert, before that commits) and
/// to the moment it was durable there.
fn lag_stats(
    node: &NodeProc,
    replicate: &str,
    set: &str,
    seqs: &[Seq],
    dump_dir: Option<&Path>,
) -> anyhow::Result<[[f64; 4]; 2]> {
    let mut c = node.client()?;
    let after = Seq(seqs.iter().map(|s| s.0).min().unwrap_or(1) - 1);
    let Response::Lag(samples) = c.call(&Request::Read(ReadRequest::LagSamples {
        replicate: replicate.into(),
        after,
    }))?
    else {
        bail!("unexpected lag answer");
    };
    let by_seq: std::collections::HashMap<Seq, (i64, i64, i64)> = samples
        .into_iter()
        .map(|(s, m, v, d)| (s, (m, v, d)))
        .collect();
    let (mut visible, mut durable) = (Vec::new(), Vec::new());
    // With `dump_dir`, each sample (seq, master time, visible, durable, in
    // µs) is kept for a look at where a tail comes from, in
    // lag-REPLICATE-SET.txt (SET: full_speed or paced).
    let mut dump = String::new();
    for s in seqs {
        let Some((m, v, d)) = by_seq.get(s) else {
            bail!("{replicate}: no lag sample for seq {s}");
        };
        if dump_dir.is_some() {
            dump.push_str(&format!("{s} {m} {v} {d}\n"));
        }
        visible.push((v - m) as f64 / 1000.0);
        durable.push((d - m) as f64 / 1000.0);
    }
    if let Some(dir) = dump_dir {
        let path = dir.join(format!("lag-{replicate}-{set}.txt"));
        std::fs::write(&path, dump).with_context(|| format!("writing {}", path.display()))?;
    }
    let q = |mut ms: Vec<f64>| {
        ms.sort_by(|a, b| a.total_cmp(b));
        [
            percentile(&ms, 0.5),
            percentile(&ms, 0.9),
            percentile(&ms, 0.99),
            ms.last().copied().unwrap_or_default(),
        ]
    };
    Ok([q(visible), q(durable)])
}

pub fn run(data: Option<&Path>) -> anyhow::Result<Outcome> {
    let n = env_u64("N", 200_000)?;
    let b = env_u64("B", 100)?;
    let m = env_u64("M", 2000)?;
    let m_paced = env_u64("M_PACED", 500)?;
    let pace = Duration::from_millis(env_u64("PACE_MS", 5)?);
    // Transactions in flight in the bulk, backlog and update/delete phases
    // (1: each waits for the one before). The lag phase sends one at a time.
    let depth = env_u64("PIPELINE", DEFAULT_PIPELINE)?.max(1) as usize;
    if n < 1000 || b < 1 || m < 1 {
        bail!("need N >= 1000, B >= 1, M >= 1 (got N={n} B={b} M={m})");
    }
    // ETP_BENCH_LAG_DUMP=DIR keeps each lag sample (see `lag_stats`). Made
    // now, so that a directory that cannot be is named before the phases
    // run rather than after phase b.
    let lag_dump = std::env::var_os("ETP_BENCH_LAG_DUMP")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from);
    if let Some(dir) = &lag_dump {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("ETP_BENCH_LAG_DUMP: cannot make {}", dir.display()))?;
    }
    let base = match data {
        Some(d) => d.to_path_buf(),
        None => std::env::var_os("BENCH_TMPDIR")
            .or_else(|| std::env::var_os("TMPDIR"))
            .map_or_else(|| "/tmp".into(), Into::into),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("etp-bench-propagate-")
        .tempdir_in(&base)?;
    // ETP_BENCH_KEEP=1 keeps the nodes' directories (and logs) for a look afterwards.
    let _remove_on_drop;
    let dir_path = if std::env::var_os("ETP_BENCH_KEEP").is_some() {
        dir.keep()
    } else {
        let p = dir.path().to_path_buf();
        _remove_on_drop = dir;
        p
    };
    let exe = std::env::current_exe()?;
    // BENCH_TLS=0: plain TCP on loopback (to measure what TLS costs).
    let tls = env_u64("BENCH_TLS", 1)? != 0;
    if tls {
        maintenance::cluster::use_local_certs(&dir_path.join("certs"), 3)?;
    } else {
        maintenance::cluster::use_plain_loopback();
    }
    emit("config_tls", u64::from(tls), "bool");
    eprintln!(
        "etp bench propagate: nodes under {} ({})",
        dir_path.as_path().display(),
        if tls {
            "mutual TLS"
        } else {
            "plain TCP on loopback"
        }
    );
    let mut cl = Cluster::start_with(&exe, dir_path.as_path(), topology)?;
    let mut c = cl.master().client()?;
    let mut ctl = cl.master().client()?;
    let maddr = cl.master().addr;
    emit("config_n", n, "rows");
    emit("config_b", b, "rows/txn");
    emit("config_pipeline", depth, "txns");

    // a. bulk
    eprintln!("a. bulk insert: {n} rows, {b} rows per transaction");
    let cpu = CpuMeter::start(&cl);
    let t0 = Instant::now();
    let last = bulk(&mut c, 1, n, b, depth)?;
    let t1 = t0.elapsed().as_secs_f64();
    let (tf, tp) = caught_up(maddr, last, t0, Some("a"))?;
    let wall = tf.max(tp);
    emit_secs("a_master_insert_s", t1);
    emit_rate("a_master_rows_per_s", n, t1, "rows/s");
    emit_rate("a_master_commits_per_s", n.div_ceil(b), t1, "commits/s");
    emit_secs("a_full_caught_up_s", tf);
    emit_secs("a_part_caught_up_s", tp);
    emit_secs("a_e2e_s", wall);
    emit_rate("a_e2e_rows_per_s", n, wall, "rows/s");
    emit_secs("a_tail_after_master_s", wall - t1);
    cpu.emit("a", n);
    emit("a_part_rows", file_count(&cl.nodes[2], PART)?, "rows");

    // c. initial sync of a new replicate, full then partial
    let base_topology = topology(&cl.nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
    // BENCH_SKIP_C=1 leaves phase c out (to see what it costs the other figures).
    let phase_c: &[(&str, usize, u32)] = if std::env::var_os("BENCH_SKIP_C").is_some() {
        &[]
    } else {
        &[("full", 1usize, 22u32), ("part", 2, 32)]
    };
    for &(kind, node, file) in phase_c {
        eprintln!("c. initial sync of a new {kind} replicate ({n} rows on the master)");
        let name = format!("sync_{kind}");
        let cpu = CpuMeter::start(&cl);
        let t0 = Instant::now();
        apply(format!("{base_topology}{}", sync_replicate(kind)))?;
        let applied = t0.elapsed().as_secs_f64();
        confirmed(maddr, &name, last)?;
        let wall = t0.elapsed().as_secs_f64();
        let rows = file_count(&cl.nodes[node], propagator::Fnr(file))?;
        let r = replicate_report(maddr, &name)?;
        if r.state != ReplicaState::Online || r.last_load.is_none() {
            bail!("{name} is {} after its load: {r:?}", r.state);
        }
        if let Some(l) = &r.last_load {
            // Where the wall time goes: the topology's apply, the load's own
            // run (the master's clock), the rest (starting the task, the
            // confirmation reaching the bench).
            eprintln!(
                "  {kind}: apply {applied:.3} s, load {:.3} s in {} chunks, wall {wall:.3} s",
                l.seconds_last_run, l.chunks
            );
        }
        emit_secs(&format!("c_{kind}_initial_sync_s"), wall);
        emit(&format!("c_{kind}_initial_sync_rows"), rows, "rows");
        emit_rate(
            &format!("c_{kind}_initial_sync_rows_per_s"),
            rows,
            wall,
            "rows/s",
        );
        cpu.emit(&format!("c_{kind}"), rows);
        if kind == "full" {
            // The same load again, its node killed half-way.
            let first = r.last_load.as_ref().map(|l| l.id.clone());
            let t0 = Instant::now();
            let req = Request::Operation(OperationRequest::Replicate {
                name: name.clone(),
                action: propagator::wire::ReplicateAction::Init {
                    from: None,
                    reinit: true,
                    rewrite: true,
                    chunk: None,
                },
            });
            match ctl.call(&req)? {
                Response::Tasks(_) => {}
                other => bail!("ordering a reinit: {other:?}"),
            }
            let deadline = Instant::now() + PHASE_TIMEOUT;
            loop {
                let r = replicate_report(maddr, &name)?;
                if r.load.as_ref().is_some_and(|l| l.scanned * 2 >= l.total) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the reinit of {name} did not get half-way");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let before_kill = t0.elapsed().as_secs_f64();
            cl.nodes[node].kill();
            let t1 = Instant::now();
            cl.nodes[node].restart()?;
            let l = loop {
                let r = replicate_report(maddr, &name)?;
                if let Some(l) = r.last_load.filter(|l| Some(&l.id) != first.as_ref()) {
                    if r.state == ReplicaState::Online {
                        break l;
                    }
                }
                if Instant::now() > deadline {
                    bail!("the resumed load of {name} did not finish");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            confirmed(maddr, &name, last)?;
            let resumed = t1.elapsed().as_secs_f64();
            emit_secs("c_full_resume_before_kill_s", before_kill);
            emit_secs("c_full_resume_after_restart_s", resumed);
            emit_secs("c_full_resume_saved_s", wall - resumed);
            emit(
                "c_full_resume_chunks_after_restart",
                l.chunks_last_run,
                "chunks",
            );
            emit("c_full_resume_chunks_total", l.chunks, "chunks");
            emit("c_full_resume_from_isn", l.resumed_from.0, "isn");
        }
        // Gone again, as pg_peer.sh drops the subscription.
        apply(base_topology.clone())?;
    }

    // BENCH_STOP_AFTER_C=1 ends the run here (to profile phase c alone).
    if std::env::var_os("BENCH_STOP_AFTER_C").is_some() {
        return Ok(Outcome::Ok);
    }

    // a2. backlog drain
    eprintln!("a2. backlog: task stopped while {n} rows commit, then started");
    let stop = ctl.call(&Request::Operation(OperationRequest::TaskControl {
        master: Some(MASTER),
        action: TaskAction::Stop,
    }))?;
    if !matches!(stop, Response::Tasks(_)) {
        bail!("cannot stop the task: {stop:?}");
    }
    let last = bulk(&mut c, BULK2 + 1, n, b, depth)?;
    eprintln!("a2. task started: draining {n} rows");
    let cpu = CpuMeter::start(&cl);
    let t0 = Instant::now();
    ctl.call(&Request::Operation(OperationRequest::TaskControl {
        master: Some(MASTER),
        action: TaskAction::Start,
    }))?;
    let (tf, tp) = caught_up(maddr, last, t0, Some("a2"))?;
    let wall = tf.max(tp);
    emit_secs("a2_full_drained_s", tf);
    emit_secs("a2_part_drained_s", tp);
    emit_secs("a2_drain_s", wall);
    emit_rate("a2_drain_rows_per_s", n, wall, "rows/s");
    emit_rate("a2_full_drain_rows_per_s", n, tf, "rows/s");
    cpu.emit("a2", n);

    // b. commit-to-apply lag
    eprintln!("b. lag: {m} single-row commits at full speed, then {m_paced} paced");
    let lag_row = |g: u64, i: u64| -> anyhow::Result<Command> {
        let mut r = Record::new();
        r.insert("id".into(), Value::Int(g as i64));
        r.insert("grp".into(), Value::Int(0));
        r.insert("name".into(), Value::Text("lag".into()));
        r.insert("qty".into(), Value::Int(i as i64));
        r.insert("price".into(), Value::Float(0.0));
        r.insert("note".into(), Value::Text("lag".into()));
        Ok(Command::Store {
            file: MASTER,
            isn: Some(Isn(g)),
            fields: ByteBuf::from(encode_record(&r)?),
        })
    };
    let cpu = CpuMeter::start(&cl);
    let t0 = Instant::now();
    let mut fast = Vec::new();
    for i in 1..=m {
        fast.push(txn(&mut c, vec![lag_row(LAG1 + i, i)?])?.0);
    }
    let t1 = t0.elapsed().as_secs_f64();
    let last = *fast.last().context("no lag commits")?;
    let (tf, tp) = caught_up(maddr, last, t0, Some("b"))?;
    emit_rate("b_master_commits_per_s", m, t1, "commits/s");
    emit("b_e2e_s", format!("{:.3}", tf.max(tp)), "s");
    cpu.emit("b", m);
    let mut paced = Vec::new();
    for i in 1..=m_paced {
        paced.push(txn(&mut c, vec![lag_row(LAG2 + i, i)?])?.0);
        std::thread::sleep(pace);
    }
    if let Some(last) = paced.last() {
        caught_up(maddr, *last, Instant::now(), None)?;
    }
    for (kind, node, name) in [("full", 1usize, "bench_full"), ("part", 2, "bench_part")] {
        for (set, seqs) in [("full_speed", &fast), ("paced", &paced)] {
            if seqs.is_empty() {
                continue;
            }
            let [visible, durable] =
                lag_stats(&cl.nodes[node], name, set, seqs, lag_dump.as_deref())?;
            for (i, q) in ["p50", "p90", "p99", "max"].iter().enumerate() {
                emit(
                    &format!("b_{set}_{kind}_lag_{q}_ms"),
                    format!("{:.3}", visible[i]),
                    "ms",
                );
            }
            for (i, q) in ["p50", "p99"].iter().enumerate() {
                let v = durable[if i == 0 { 0 } else { 2 }];
                emit(
                    &format!("b_{set}_{kind}_durable_lag_{q}_ms"),
                    format!("{v:.3}"),
                    "ms",
                );
            }
        }
    }

    // d. updates and deletes
    let u = n / 10;
    for (what, make) in [("update", true), ("delete", false)] {
        eprintln!("d. {u} {what}s, {b} rows per transaction");
        let cpu = CpuMeter::start(&cl);
        let t0 = Instant::now();
        // As pg_peer.sh: the updates change ids 1..=U, the deletes remove
        // ids U+1..=2U (records no update touched).
        let first = if make { 1 } else { u + 1 };
        let last = run_txns(&mut c, first, u, b, depth, |i| {
            Ok(if make {
                let mut p = Record::new();
                p.insert("qty".into(), Value::Int((i % 1000) as i64 + 1));
                p.insert("note".into(), Value::Text("updated".into()));
                Command::Update {
                    file: MASTER,
                    isn: Isn(i),
                    fields: ByteBuf::from(encode_record(&p)?),
                }
            } else {
                Command::Delete {
                    file: MASTER,
                    isn: Isn(i),
                }
            })
        })?;
        let t1 = t0.elapsed().as_secs_f64();
        let (tf, tp) = caught_up(maddr, last, t0, Some(&format!("d_{what}")))?;
        let wall = tf.max(tp);
        emit(&format!("d_{what}_rows"), u, "rows");
        emit_secs(&format!("d_{what}_master_s"), t1);
        emit_secs(&format!("d_{what}_full_caught_up_s"), tf);
        emit_secs(&format!("d_{what}_part_caught_up_s"), tp);
        emit_secs(&format!("d_{what}_e2e_s"), wall);
        emit_rate(&format!("d_{what}_e2e_rows_per_s"), u, wall, "rows/s");
        cpu.emit(&format!("d_{what}"), u);
    }

    for (name, node) in [("master", 0usize), ("full", 1), ("part", 2)] {
        emit(
            &format!("peak_rss_{name}_mb"),
            format!("{:.1}", peak_rss_mb(&cl.nodes[node])),
            "MB",
        );
    }
    eprintln!("verifying: full == master, part == select(project(master))");
    let master = cl.dump(0, MASTER)?;
    let full_ok = cl.dump(1, FULL)? == master;
    let part = cl.dump(2, PART)?;
    let part_ok = part == cl.expected_partial(&master);
    emit("verify_full_identical", u8::from(full_ok), "bool");
    emit("verify_part_identical", u8::from(part_ok), "bool");
    for node in &mut cl.nodes {
        node.stop()?;
    }
    if !(full_ok && part_ok) {
        bail!("a replicate differs from the master");
    }
    Ok(Outcome::Ok)
}
