//! `etp demo`: the main job, run end to end through the real commands —
//! a database with a master file and its log, a workload of transactions
//! through `etp exec` (a child process), the tail of the log, and a check.

use crate::cli::DemoArgs;
use crate::Outcome;
use anyhow::{bail, Context};
use propagator::{Fnr, Seq};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

const MASTER: u32 = 10;
const LOG: u32 = 11;

fn etp(args: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the etp binary")?;
    let status = Command::new(exe)
        .args(args)
        .status()
        .context("running etp")?;
    if !status.success() {
        bail!("`etp {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A seeded workload: stores, updates, deletes and some backed-out transactions.
fn workload(transactions: u64, seed: u64) -> (String, u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut live: Vec<u64> = Vec::new();
    let mut next = 1u64;
    let mut text = String::new();
    let mut bts = 0;
    for t in 0..transactions {
        let committed = live.clone();
        for _ in 0..rng.u32(1..=4) {
            let roll = rng.u32(0..10);
            if roll < 5 || live.len() < 10 {
                text.push_str(&format!(
                    "{{\"op\":\"store\",\"file\":{MASTER},\"isn\":{next},\"fields\":{{\"id\":{next},\"grp\":{},\"qty\":{},\"name\":\"item-{next}\"}}}}\n",
                    rng.u32(0..16),
                    rng.u32(0..100)
                ));
                live.push(next);
                next += 1;
            } else if roll < 8 {
                let isn = live[rng.usize(..live.len())];
                text.push_str(&format!(
                    "{{\"op\":\"update\",\"file\":{MASTER},\"isn\":{isn},\"fields\":{{\"qty\":{},\"grp\":{}}}}}\n",
                    rng.u32(0..100),
                    rng.u32(0..16)
                ));
            } else {
                let isn = live.swap_remove(rng.usize(..live.len()));
                text.push_str(&format!(
                    "{{\"op\":\"delete\",\"file\":{MASTER},\"isn\":{isn}}}\n"
                ));
            }
        }
        if rng.u32(0..20) == 0 {
            text.push_str("{\"op\":\"bt\"}\n");
            live = committed;
            bts += 1;
        } else {
            text.push_str(&format!("{{\"op\":\"et\",\"id\":\"demo-{t}\"}}\n"));
        }
    }
    (text, bts)
}

pub fn run(a: DemoArgs) -> anyhow::Result<Outcome> {
    let tmp;
    let dir = match &a.data {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("etp-demo-").tempdir()?;
            tmp.path().join("db1")
        }
    };
    let d = dir
        .to_str()
        .context("the data directory must be valid UTF-8")?;
    println!("== creating database 1 in {d}: master file {MASTER} with its ETP log file {LOG}");
    etp(&["db", "init", "--data", d, "--dbid", "1"])?;
    etp(&[
        "file",
        "create",
        "--data",
        d,
        "--file",
        &MASTER.to_string(),
        "--name",
        "orders",
    ])?;
    etp(&[
        "master",
        "define",
        "--data",
        d,
        "--file",
        &MASTER.to_string(),
        "--log",
        &LOG.to_string(),
    ])?;

    println!(
        "== running {} transactions through `etp exec`",
        a.transactions
    );
    let (input, bts) = workload(a.transactions, 20261122);
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut child = Command::new(exe)
        .args(["exec", "--data", d])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting etp exec")?;
    let mut stdin = child.stdin.take().context("exec stdin")?;
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let stdout = child.stdout.take().context("exec stdout")?;
    let mut acks = 0u64;
    let mut last = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line.contains("\"error\"") {
            bail!("exec reported an error: {line}");
        }
        acks += 1;
        last = line;
    }
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("feeder panicked"))??;
    let status = child.wait()?;
    if !status.success() {
        bail!("etp exec failed ({status})");
    }
    let secs = start.elapsed().as_secs_f64();
    println!("   {acks} transactions committed, {bts} backed out, in {secs:.2} s ({:.0} commits/s); last: {last}", acks as f64 / secs);

    let db = super::open_or_context(&dir)?;
    let files = db.files();
    let master = files
        .iter()
        .find(|f| f.def.fnr == Fnr(MASTER))
        .context("master file")?;
    let log = files
        .iter()
        .find(|f| f.def.fnr == Fnr(LOG))
        .context("log file")?;
    println!(
        "   master: {} records, digest {}; log: {} records",
        master.meta.count, master.meta.digest, log.meta.count
    );
    if log.meta.count > 0 {
        let m = master.meta.digest;
        let mut last_digest = None;
        db.for_each_log_record(Fnr(MASTER), Seq(log.meta.count), |r| {
            last_digest = Some(r.master_digest);
            Ok(true)
        })?;
        if last_digest != Some(m) {
            bail!("the last log record's master digest {last_digest:?} is not the master's digest {m}");
        }
        println!("   the last log record carries the master's current digest: consistent");
    }
    drop(db);
    println!("== the last 5 records of the master's log (`etp log show`)");
    let from = log.meta.count.saturating_sub(4).max(1).to_string();
    etp(&[
        "log",
        "show",
        "--data",
        d,
        "--master",
        &MASTER.to_string(),
        "--from",
        &from,
    ])?;
    println!("== `etp db check`");
    etp(&["db", "check", "--data", d])?;
    Ok(Outcome::Ok)
}
