//! `etp demo`: the main job, a real propagation on the default topology.
//!
//! Three node processes on loopback (master, full replicate, partial
//! replicate), the example topology applied, a seeded workload of stores,
//! updates that move records in and out of the partial's selection, deletes
//! and some backed-out transactions; the partial replicate's node is killed
//! (SIGKILL) and restarted half-way. Then it waits until both replicates
//! confirm the master's last seq and checks full == master and
//! partial == select(project(master)) from the dumps.

use crate::cli::DemoArgs;
use crate::Outcome;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use maintenance::cluster::{Cluster, MASTER};
use propagator::exec::ExecTarget;
use propagator::node::client::Client;
use propagator::wire::ReplicaState;
use propagator::{Isn, Record, Value};
use std::time::{Duration, Instant};

/// One transaction of the demo workload against the master (through a node client).
pub fn random_txn(
    c: &mut Client,
    rng: &mut fastrand::Rng,
    live: &mut Vec<u64>,
    next: &mut u64,
) -> anyhow::Result<bool> {
    let committed = live.clone();
    for _ in 0..rng.u32(1..=4) {
        let roll = rng.u32(0..10);
        if roll < 5 || live.len() < 10 {
            let mut r = Record::new();
            r.insert("id".into(), Value::Int(*next as i64));
            r.insert("grp".into(), Value::Int(rng.i64(0..16)));
            r.insert("qty".into(), Value::Int(rng.i64(0..100)));
            r.insert("note".into(), Value::Text(format!("item-{next}")));
            c.store(MASTER, Some(Isn(*next)), r)?;
            live.push(*next);
            *next += 1;
        } else if roll < 8 {
            // Moves records in and out of the partial's selection.
            let isn = live[rng.usize(..live.len())];
            let mut p = Record::new();
            p.insert("grp".into(), Value::Int(rng.i64(0..16)));
            p.insert("qty".into(), Value::Int(rng.i64(0..100)));
            c.update(MASTER, Isn(isn), p)?;
        } else {
            let isn = live.swap_remove(rng.usize(..live.len()));
            c.delete(MASTER, Isn(isn))?;
        }
    }
    if rng.u32(0..20) == 0 {
        c.bt()?;
        *live = committed;
        Ok(false)
    } else {
        c.et(None)?;
        Ok(true)
    }
}

/// The applied topology: masters, replicates, their predicates and fields.
fn print_topology(v: &propagator::topology::Valid) {
    for m in &v.topology.masters {
        println!(
            "   master {} (file {}, log file {}) on database {}, fields {}",
            m.name,
            m.file,
            m.log,
            m.database,
            m.fields.join(", ")
        );
    }
    for r in &v.replicates {
        let d = &r.def;
        let kind = match (&d.predicate, &d.fields) {
            (None, None) => "full replicate (every record, every field)".to_string(),
            (p, f) => format!(
                "partial replicate: records where {}, fields {}",
                p.as_deref().unwrap_or("true"),
                f.as_ref().map_or("all".to_string(), |f| f.join(", "))
            ),
        };
        println!(
            "   {} (file {}, confirmation file {}) on database {}: {kind}",
            d.name, d.file, d.confirmation, d.database
        );
    }
}

/// A line above the progress bar (or plainly, when there is no terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

pub fn run(a: DemoArgs) -> anyhow::Result<Outcome> {
    let tmp;
    let dir = match &a.data {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("etp-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe().context("locating the etp binary")?;
    let certs = dir.join("certs");
    maintenance::cluster::use_local_certs(&certs, 3)?;
    println!(
        "== certificates (mutual TLS) in {}: the cluster's authority, nodes db1-db3, client admin",
        certs.display()
    );
    println!("== starting 3 nodes under {}", dir.display());
    let mut cluster = Cluster::start(&exe, &dir, Some(1))?;
    for n in &cluster.nodes {
        println!(
            "   database {} at {} ({})",
            n.dbid,
            n.addr,
            n.data.display()
        );
    }
    println!("== applied {}:", dir.join("topology.toml").display());
    print_topology(&cluster.topology);
    println!("== workload: {} transactions of 1 to 4 commands each against master items: half stores of new records, 3 in 10 updates of grp and qty (which move records in and out of the partial's selection), 2 in 10 deletes; 1 transaction in 20 ends with BT, backed out on purpose", a.transactions);

    let total = a.transactions;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("   {bar:40} {pos}/{len} transactions {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rng = fastrand::Rng::with_seed(20261122);
    let (mut live, mut next) = (Vec::new(), 1u64);
    let (mut committed, mut backed_out) = (0u64, 0u64);
    let mut client = cluster.master().client()?;
    let start = Instant::now();
    let mut killed_at = None;
    for t in 0..total {
        if t == total / 2 {
            say(
                &bar,
                format!(
                "   killing the partial replicate's node (SIGKILL, pid {}) after {t} transactions",
                cluster.nodes[2].pid().map_or("?".into(), |p| p.to_string())
            ),
            );
            cluster.nodes[2].kill();
            killed_at = Some(Instant::now());
        }
        if t == total / 2 + total / 10 {
            cluster.nodes[2].restart()?;
            say(&bar, format!(
                "   restarted it after {:.2} s; its feeder reconnects and resumes from its confirmation",
                killed_at.map_or(0.0, |k| k.elapsed().as_secs_f64())
            ));
        }
        if random_txn(&mut client, &mut rng, &mut live, &mut next)? {
            committed += 1;
        } else {
            backed_out += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let workload = start.elapsed();
    if !cluster.nodes[2].is_running() {
        cluster.nodes[2].restart()?;
    }
    let (seq, lag) = cluster.wait_converged(Duration::from_secs(120))?;
    let rows = cluster.check_equal()?;
    let status = cluster.task_status()?;
    println!(
        "== {committed} transactions committed, {backed_out} backed out on purpose (the workload's BTs) in {:.2} s ({:.0} commits/s, {:.0} log records/s)",
        workload.as_secs_f64(),
        committed as f64 / workload.as_secs_f64(),
        seq.0 as f64 / workload.as_secs_f64()
    );
    println!(
        "== both replicates confirmed master seq {seq} {:.0} ms after the last commit",
        lag.as_secs_f64() * 1000.0
    );
    for r in &status.replicates {
        println!(
            "   {}: {}, confirmed seq {}, {} connects",
            r.name, r.state, r.confirmed_seq, r.connects
        );
    }
    println!("   (connects: the links the master's task opened to the replicate. A new replicate takes two without any failure: the first finds it has no confirmation yet and orders its initial load, the second loads it and then streams. Each restart of the replicate's node adds one.)");
    let part = cluster.dump(2, maintenance::cluster::PART)?.len();
    println!("== checked from the dumps: full replicate == master ({rows} rows); partial == the master's records its predicate selects, cut to its fields ({part} rows)");
    for n in &mut cluster.nodes {
        n.stop()?;
    }
    if status
        .replicates
        .iter()
        .any(|r| r.state != ReplicaState::Online)
    {
        bail!("a replicate is not online");
    }
    println!("== nodes stopped cleanly");
    Ok(Outcome::Ok)
}
