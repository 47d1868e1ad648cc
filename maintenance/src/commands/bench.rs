//! `etp bench commit`: the disk's raw small-append fdatasync rate next to
//! durable single-record commits on a master with 1 and 16 clients, all in
//! one run so the ratios are meaningful on a disk whose speed drifts.

use crate::cli::BenchCommand;
use crate::Outcome;
use anyhow::Context;
use propagator::{Database, DbId, Fnr, Record, Role, Value};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MASTER: Fnr = Fnr(10);
const LOG: Fnr = Fnr(11);

pub fn run(c: BenchCommand) -> anyhow::Result<Outcome> {
    match c {
        BenchCommand::Commit {
            data,
            seconds,
            rounds,
            store,
        } => {
            use_engine(store);
            commit(&data, Duration::from_secs_f64(seconds), rounds)
        }
        BenchCommand::Propagate { data, store } => {
            use_engine(store);
            super::bench_propagate::run(data.as_deref())
        }
        BenchCommand::Copy {
            data,
            records,
            changes,
            store,
            keep,
        } => {
            use_engine(store);
            super::bench_copy::run(&data, records, changes, keep)
        }
    }
}

/// Every database the benchmark creates, here or in the node processes it
/// starts, gets this engine (through `ETP_STORE`, which they inherit).
fn use_engine(store: Option<propagator::Engine>) {
    let engine = store.unwrap_or_else(propagator::default_engine);
    // Set before any thread of this process starts.
    std::env::set_var("ETP_STORE", engine.name());
    eprintln!("etp bench: page store {engine}");
}

/// A new probe file, zero-filled to `zeros` bytes and synced if given.
fn probe_file(path: &Path, zeros: Option<u64>) -> anyhow::Result<std::fs::File> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("creating the probe file {}", path.display()))?;
    if let Some(n) = zeros {
        f.write_all_at(&vec![0u8; n as usize], 0)?;
        f.sync_all()?;
    }
    Ok(f)
}

/// Small appends, each made durable with `fdatasync`. With `prealloc` the
/// file is zero-filled first, so each sync writes data only (no size change
/// to record): what the protection log does in its preallocated segments.
fn fdatasync_rate(dir: &Path, d: Duration, prealloc: bool) -> anyhow::Result<f64> {
    let path = dir.join("fdatasync.probe");
    let f = probe_file(&path, prealloc.then_some(32 << 20))?;
    let buf = [0x5au8; 128];
    let start = Instant::now();
    let mut n = 0u64;
    let mut off = 0u64;
    while start.elapsed() < d {
        f.write_all_at(&buf, off)?;
        f.sync_data()?;
        off += buf.len() as u64;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// CPU time used so far by this process, all threads, from `/proc/self/stat`
/// (utime + stime, in the 100 Hz ticks Linux reports there); None elsewhere.
fn process_cpu() -> Option<Duration> {
    process_cpu_of("self")
}

/// [`process_cpu`] of process `pid` ("self" for this one).
pub(super) fn process_cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count fields from
    // the last ')'. After it come state (field 3), ..., utime (14), stime (15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU per commit and cores busy over a phase, as a phrase for its line.
struct CpuUse(Option<Duration>, Instant);

impl CpuUse {
    fn start() -> CpuUse {
        CpuUse(process_cpu(), Instant::now())
    }

    fn describe(&self, commits: u64) -> String {
        match (self.0, process_cpu()) {
            (Some(a), Some(b)) => {
                let cpu = b.saturating_sub(a).as_secs_f64();
                format!(
                    "{:.0} µs CPU a commit, {:.2} cores busy",
                    cpu * 1e6 / commits.max(1) as f64,
                    cpu / self.1.elapsed().as_secs_f64()
                )
            }
            _ => "CPU use unknown".into(),
        }
    }
}

/// Runs `clients` threads for `d`, each calling the commit function
/// `client(c)` made for it in a loop; the commits per second, and the CPU
/// they took. Every thread is joined; the first error is returned.
fn run_clients<C>(
    clients: usize,
    d: Duration,
    name: &str,
    client: impl Fn(usize) -> C,
) -> anyhow::Result<(f64, String)>
where
    C: FnMut() -> anyhow::Result<()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let cpu = CpuUse::start();
    let mut handles = Vec::with_capacity(clients);
    let mut result = Ok(());
    for c in 0..clients {
        let (stop, count, mut commit) = (stop.clone(), count.clone(), client(c));
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{c}"))
            .spawn(move || -> anyhow::Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    commit()?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The threads started so far are stopped and joined below.
                result = Err(anyhow::Error::new(e).context(format!("starting the {name} threads")));
                break;
            }
        }
    }
    if result.is_ok() {
        std::thread::sleep(d);
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a {name} thread panicked"))
            .and_then(|r| r);
        if result.is_ok() {
            result = r;
        }
    }
    result?;
    let commits = count.load(Ordering::Relaxed);
    let rate = commits as f64 / start.elapsed().as_secs_f64();
    Ok((rate, cpu.describe(commits)))
}

/// One client of the bare group commit: its entry is durable once `done`.
struct FloorWaiter {
    thread: std::thread::Thread,
    done: AtomicBool,
}

#[derive(Default)]
struct FloorQueue {
    pending: Vec<Arc<FloorWaiter>>,
    leader: bool,
    offset: u64,
    failed: Option<String>,
}

/// The file the bare group commit writes in place: zero-filled once, then
/// overwritten round and round, as the log writes its preallocated segments.
const FLOOR_FILE_BYTES: u64 = 16 << 20;

/// The bare group commit: a file written in place and its queue.
struct Floor {
    file: std::fs::File,
    q: std::sync::Mutex<FloorQueue>,
    /// Bytes per entry.
    entry: usize,
}

impl Floor {
    fn queue(&self) -> std::sync::MutexGuard<'_, FloorQueue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self) -> anyhow::Result<()> {
        match &self.queue().failed {
            Some(e) => anyhow::bail!("the group commit probe failed: {e}"),
            None => Ok(()),
        }
    }

    /// Queues one entry and returns once a sync covers it, leading the
    /// writes if nobody else is.
    fn commit(&self) -> anyhow::Result<()> {
        self.failed()?;
        let me = Arc::new(FloorWaiter {
            thread: std::thread::current(),
            done: AtomicBool::new(false),
        });
        let lead = {
            let mut q = self.queue();
            q.pending.push(me.clone());
            !std::mem::replace(&mut q.leader, true)
        };
        if lead {
            self.lead()?;
        }
        while !me.done.load(Ordering::Acquire) {
            std::thread::park();
        }
        self.failed()
    }

    /// Writes and syncs everything queued, group after group, until the
    /// queue is empty; wakes each group.
    fn lead(&self) -> anyhow::Result<()> {
        loop {
            let (mut group, offset) = {
                let mut q = self.queue();
                if q.pending.is_empty() {
                    q.leader = false;
                    return Ok(());
                }
                let group = std::mem::take(&mut q.pending);
                let bytes = (group.len() * self.entry) as u64;
                if q.offset + bytes > FLOOR_FILE_BYTES {
                    q.offset = 0;
                }
                let offset = q.offset;
                q.offset += bytes;
                (group, offset)
            };
            let written = self
                .file
                .write_all_at(&vec![0x5a; group.len() * self.entry], offset)
                .and_then(|_| self.file.sync_data());
            if let Err(e) = &written {
                // Nobody leads again: everyone queued is woken to see it.
                let mut q = self.queue();
                q.failed = Some(e.to_string());
                group.append(&mut q.pending);
            }
            for w in group {
                w.done.store(true, Ordering::Release);
                w.thread.unpark();
            }
            written.context("writing the group commit probe")?;
        }
    }
}

/// This machine's own ceiling for group commit: `clients` threads each
/// queue an `entry`-byte entry and wait until an `fdatasync` covers it. The
/// first to find nobody writing writes everything queued with one write,
/// syncs, wakes the group, and goes on while entries are queued: the shape
/// of the engine's committer with none of its work (no transaction, no
/// encoding, no page store, no applier). Its 16-to-1 ratio is what the
/// engine's ratio can be held against on the same disk and CPUs.
fn group_commit_floor(
    dir: &Path,
    clients: usize,
    entry: usize,
    d: Duration,
) -> anyhow::Result<(f64, String)> {
    let path = dir.join("group-commit-floor.probe");
    let floor = Arc::new(Floor {
        file: probe_file(&path, Some(FLOOR_FILE_BYTES))?,
        q: Default::default(),
        entry: entry.clamp(1, 1 << 20),
    });
    let (rate, usage) = run_clients(clients, d, "floor-client", |_| {
        let floor = floor.clone();
        move || floor.commit()
    })?;
    let usage = format!("bare group commit {clients} client(s): {usage}");
    std::fs::remove_file(&path)?;
    Ok((rate, usage))
}

/// What one engine phase measured.
struct Phase {
    rate: f64,
    /// Mean log entry bytes per commit.
    entry: usize,
    grouping: String,
}

/// Commits per second, and a line on how they were grouped.
fn commit_rate(dir: &Path, clients: usize, d: Duration) -> anyhow::Result<Phase> {
    let path = dir.join(format!("commit-{clients}"));
    Database::init(&path, DbId(1), None)?;
    let (db, _) = Database::open(&path)?;
    db.create_file(MASTER, "bench", Role::Plain)?;
    db.define_master(MASTER, LOG)?;
    let (rate, usage) = run_clients(clients, d, "bench-client", |c| {
        let mut s = db.session();
        let mut i = 0i64;
        move || -> anyhow::Result<()> {
            let mut r = Record::new();
            r.insert("client".into(), Value::Int(c as i64));
            r.insert("n".into(), Value::Int(i));
            r.insert("payload".into(), Value::Text("x".repeat(64)));
            s.store(MASTER, None, r)?;
            s.et(None)?;
            i += 1;
            Ok(())
        }
    })?;
    let m = db.metrics();
    let groups = m.fsync.count().max(1);
    let grouping = format!(
        "{clients} client(s): {:.1} commits per group, mean log sync {:.0} µs, {usage}",
        m.commits as f64 / groups as f64,
        m.fsync.sum * 1e6 / groups as f64
    );
    let entry = (m.commit_bytes / m.commits.max(1)) as usize;
    drop(db);
    std::fs::remove_dir_all(&path)?;
    Ok(Phase {
        rate,
        entry,
        grouping,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn commit(data: &Path, d: Duration, rounds: u32) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("etp-bench-commit-")
        .tempdir_in(data)
        .context("creating the bench directory")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# disk under {}; {rounds} round(s) of {:.1} s phases",
        data.display(),
        d.as_secs_f64()
    )?;
    let (mut syncs, mut ones, mut sixteens, mut r1, mut r16) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut inplaces, mut r1_inplace) = (Vec::new(), Vec::new());
    let (mut floor1s, mut floor16s, mut r16_floor, mut of_floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Each commit phase sits between two raw probes: its ratio is to
        // their mean, so a drift of the disk during the round cancels out.
        let before = fdatasync_rate(dir.path(), d, false)?;
        let inplace = fdatasync_rate(dir.path(), d, true)?;
        let one = commit_rate(dir.path(), 1, d)?;
        let (floor1, f1) = group_commit_floor(dir.path(), 1, one.entry, d)?;
        let (floor16, f16) = group_commit_floor(dir.path(), 16, one.entry, d)?;
        let sixteen = commit_rate(dir.path(), 16, d)?;
        let after = fdatasync_rate(dir.path(), d, false)?;
        let sync = (before + after) / 2.0;
        writeln!(
            out,
            "# round {round}: fdatasync {before:.0} → {after:.0}/s (in place {inplace:.0}/s), 1 client {:.0}/s, 16 clients {:.0}/s; bare group commit ({} B entries) 1 client {floor1:.0}/s, 16 clients {floor16:.0}/s",
            one.rate, sixteen.rate, one.entry
        )?;
        writeln!(out, "#   {}; {}", one.grouping, sixteen.grouping)?;
        writeln!(out, "#   {f1}; {f16}")?;
        out.flush()?;
        inplaces.push(inplace);
        r1_inplace.push(one.rate / inplace);
        syncs.push(sync);
        ones.push(one.rate);
        sixteens.push(sixteen.rate);
        r1.push(one.rate / sync);
        r16.push(sixteen.rate / one.rate);
        floor1s.push(floor1);
        floor16s.push(floor16);
        r16_floor.push(floor16 / floor1);
        of_floor.push(sixteen.rate / floor16);
    }
    writeln!(out, "fdatasync_per_s {:.0} /s", median(syncs))?;
    writeln!(out, "fdatasync_in_place_per_s {:.0} /s", median(inplaces))?;
    writeln!(out, "commit_1_client_per_s {:.0} /s", median(ones))?;
    writeln!(out, "commit_16_clients_per_s {:.0} /s", median(sixteens))?;
    writeln!(
        out,
        "group_commit_floor_1_client_per_s {:.0} /s",
        median(floor1s)
    )?;
    writeln!(
        out,
        "group_commit_floor_16_clients_per_s {:.0} /s",
        median(floor16s)
    )?;
    writeln!(
        out,
        "# median per-round ratio: 1 client / fdatasync = {:.2} (goal >= 0.8)",
        median(r1)
    )?;
    writeln!(
        out,
        "# median per-round ratio: 1 client / in-place fdatasync = {:.2} (the stricter bound: the log writes in place too)",
        median(r1_inplace)
    )?;
    writeln!(
        out,
        "# median per-round ratio: 16 clients / 1 client = {:.2} (goal >= 8)",
        median(r16)
    )?;
    writeln!(
        out,
        "# median per-round ratio: bare group commit 16 clients / 1 client = {:.2} (this machine's ceiling for the line above: the same queue, write and sync with no engine work)",
        median(r16_floor)
    )?;
    writeln!(
        out,
        "# median per-round ratio: 16 clients / bare group commit 16 clients = {:.2}",
        median(of_floor)
    )?;
    Ok(Outcome::Ok)
}
