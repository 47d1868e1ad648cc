//! `etp bench copy`: copy throughput of a master of about 1 KiB records,
//! without and with a concurrent writer, next to the disk's sequential
//! write rate measured in the same run (as `shared/bench/limits.sh` does:
//! 8 MiB writes, then one fsync); then restore and regenerate times for the
//! master after `changes` more commits. The writer's commit rate alone (for
//! 2 s before the loaded copies) and during them says how much a copy slows
//! it; the restore's rate over the set's bytes is set against the mean of
//! disk probes taken right before and right after it, with each phase's
//! time (from the progress the operations report).

use crate::Outcome;
use anyhow::Context;
use backup::restore::{self, Target};
use backup::take::{take_job, Ask, Source};
use backup::Area;
use propagator::{Database, DbId, Fnr, Isn, Record, Role, Value};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MASTER: Fnr = Fnr(10);
const LOG: Fnr = Fnr(11);

fn record(k: u64, v: u64) -> Record {
    let mut r = Record::new();
    r.insert("k".into(), Value::Int(k as i64));
    r.insert("v".into(), Value::Int(v as i64));
    // About 1 KiB of pseudo-random text (64 symbols: 6 bits in 8), so
    // neither the copy nor the disk probe gains much from compression.
    const SYMBOLS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = (k ^ v.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let text: String = (0..992)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            SYMBOLS[(x & 63) as usize] as char
        })
        .collect();
    r.insert("payload".into(), Value::Text(text));
    r
}

/// Sequential write MB/s of `mb` MiB including the final fsync, measured
/// as `shared/bench/limits.sh` does: one incompressible 1 MiB chunk
/// written `mb` times, then one fsync (a constant pattern would let a
/// compressing virtual disk flatter the figure).
fn seq_write(dir: &Path, mb: u64) -> anyhow::Result<f64> {
    let path = dir.join("seq.probe");
    let mut f = std::fs::File::create(&path).context("creating the write probe")?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let chunk: Vec<u8> = (0..(1usize << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let t = Instant::now();
    for _ in 0..mb {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    let s = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(mb as f64 * 1.048576 / s)
}

/// Flushes every dirty page of the machine (`sync`), so a measurement
/// does not pay for the writeback of the phase before it.
fn flush_all() {
    let _ = std::process::Command::new("sync").status();
}

/// Copies the master set into `area`; returns (MB/s of the engine copy,
/// MB/s of the whole set with its read-back verification, bytes of the
/// copy, bytes of its master file).
fn copy_once(db: &Database, area: &Area) -> anyhow::Result<(f64, f64, u64, u64)> {
    let dir = tempfile::Builder::new()
        .prefix("raw-")
        .tempdir_in(area.root())
        .context("temp dir")?;
    let t = Instant::now();
    let c = propagator::copy::take(
        db,
        &[MASTER, LOG],
        &propagator::medium::FsDir::new(dir.path()),
        "bench",
        &mut |_| {},
    )?;
    let raw_s = t.elapsed().as_secs_f64();
    let bytes: u64 = c.files.iter().map(|f| f.bytes).sum();
    let master: u64 = c
        .files
        .iter()
        .filter(|f| f.def.fnr == MASTER)
        .map(|f| f.bytes)
        .sum();
    let sets = take_job(
        area,
        Some("bench"),
        &[Ask {
            source: Source::Local(db.clone()),
            files: vec![MASTER],
        }],
        &mut |_| {},
    )?;
    let set = &sets[0].set;
    Ok((
        bytes as f64 / 1e6 / raw_s,
        set.bytes as f64 / 1e6 / set.seconds,
        bytes,
        master,
    ))
}

/// When each phase of a restore or regenerate began and last reported.
#[derive(Default)]
struct Phases(Vec<(&'static str, Instant, Instant)>);

impl Phases {
    fn on(&mut self, p: &restore::Progress) {
        let now = Instant::now();
        match self.0.last_mut() {
            Some(last) if last.0 == p.phase => last.2 = now,
            _ => self.0.push((p.phase, now, now)),
        }
    }

    /// Each phase's seconds, in order (a phase's end is the next one's start).
    fn seconds(&self) -> Vec<(&'static str, f64)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, (p, start, end))| {
                let end = self.0.get(i + 1).map_or(*end, |n| n.1);
                (*p, end.duration_since(*start).as_secs_f64())
            })
            .collect()
    }
}

pub fn run(data: &Path, records: u64, changes: u64, keep: bool) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("etp-bench-copy-")
        .tempdir_in(data)
        .context("creating the bench directory")?;
    let mut out = std::io::stdout().lock();
    let dbdir = dir.path().join("db");
    Database::init(&dbdir, DbId(1), None)?;
    let (db, _) = Database::open(&dbdir)?;
    db.create_file(MASTER, "bench", Role::Plain)?;
    db.define_master(MASTER, LOG)?;
    eprintln!("filling the master with {records} records");
    let t = Instant::now();
    let mut s = db.session();
    for k in 1..=records {
        s.store(MASTER, Some(Isn(k)), record(k, 0))?;
        if k.is_multiple_of(2000) || k == records {
            s.et(None)?;
        }
    }
    drop(s);
    db.wait_applied()?;
    eprintln!("filled in {:.1} s", t.elapsed().as_secs_f64());
    // The log file holds as much again; the master alone is what the issue sizes.
    let area = Area::open(&dir.path().join("area"))?;

    // Each copy is measured between two probes of the disk, each preceded
    // by a `sync`, so writeback left by the phase before does not land on
    // one side only; its ratio is taken against the pair's mean.
    let probe = |dir: &Path| -> anyhow::Result<f64> {
        flush_all();
        seq_write(dir, 1024)
    };
    let idle_before = probe(dir.path())?;
    flush_all();
    let (raw_idle, set_idle, bytes, master_bytes) = copy_once(&db, &area)?;
    let idle_after = probe(dir.path())?;
    // Under write load: one writer updating records as fast as it commits.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = {
        let (db, stop, done) = (db.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut s = db.session();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let k = 1 + (i * 7919) % records;
                s.update(MASTER, Isn(k), record(k, i))?;
                s.et(None)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // The writer alone first, for its rate without a copy beside it.
    let alone = Duration::from_secs(2);
    std::thread::sleep(alone);
    let before = done.load(Ordering::Relaxed);
    let writer_alone = before as f64 / alone.as_secs_f64();
    let t = Instant::now();
    let (raw_load, set_load, _, _) = copy_once(&db, &area)?;
    let during = done.load(Ordering::Relaxed) - before;
    let writer_during = during as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    w.join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let load_after = probe(dir.path())?;
    let disk_idle = (idle_before + idle_after) / 2.0;
    let disk_load = (idle_after + load_after) / 2.0;
    let disk = (idle_before + idle_after + load_after) / 3.0;

    // Changes after the newest copy, in transactions of 100.
    eprintln!("committing {changes} changes after the copy");
    let newest = area.list()?.last().map(|s| s.lsn).unwrap_or_default();
    let mut s = db.session();
    for i in 1..=changes {
        let k = 1 + (i * 104_729) % records;
        s.update(MASTER, Isn(k), record(k, 1_000_000 + i))?;
        if i.is_multiple_of(100) || i == changes {
            s.et(None)?;
        }
    }
    drop(s);
    let set = area
        .list()?
        .into_iter()
        .rev()
        .find(|s| s.lsn == newest)
        .context("the newest set")?;
    let set_bytes: u64 = set.members.iter().map(|m| m.copy.bytes).sum();
    let into = dir.path().join("restored");
    // Measured between two probes of the disk, as each copy is (and after
    // a `sync`: the writeback of the phase before is not the restore's).
    let disk_before = probe(dir.path())?;
    flush_all();
    let t = Instant::now();
    let mut phases = Phases::default();
    restore::restore_to_dir(&into, &area, &set, &mut |p| phases.on(p))?;
    let restore_s = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&into)?;
    let disk_after = probe(dir.path())?;
    let into = dir.path().join("regenerated");
    Database::init(&into, DbId(1), None)?;
    flush_all();
    let (target, _) = Database::open(&into)?;
    let t = Instant::now();
    let mut regen_phases = Phases::default();
    let r = restore::regenerate(&db, &area, MASTER, Target::End, Some(&target), &mut |p| {
        regen_phases.on(p)
    })?;
    let regen_s = t.elapsed().as_secs_f64();
    let same = target.file_info(MASTER)?.meta == db.file_info(MASTER)?.meta;
    target.close()?;
    db.close()?;
    anyhow::ensure!(same, "the regenerated master differs from the live one");

    writeln!(
        out,
        "# master {records} records, its copy file {:.0} MB; master + log copied = {:.0} MB",
        master_bytes as f64 / 1e6,
        bytes as f64 / 1e6
    )?;
    writeln!(
        out,
        "# disk sequential write probes (sync, then 1 GiB of incompressible 1 MiB writes + fsync, as limits.sh): {idle_before:.0} before, {idle_after:.0} between, {load_after:.0} after the copies (MB/s)"
    )?;
    writeln!(out, "disk_seq_write_mb_per_s {disk:.0} MB/s")?;
    writeln!(out, "copy_idle_mb_per_s {raw_idle:.0} MB/s")?;
    writeln!(out, "copy_under_load_mb_per_s {raw_load:.0} MB/s")?;
    writeln!(out, "copy_set_idle_mb_per_s {set_idle:.0} MB/s")?;
    writeln!(out, "copy_set_under_load_mb_per_s {set_load:.0} MB/s")?;
    writeln!(out, "# writer commits during the loaded copy: {during}")?;
    writeln!(
        out,
        "copy_writer_alone_commits_per_s {writer_alone:.0} commits/s"
    )?;
    writeln!(
        out,
        "copy_writer_during_commits_per_s {writer_during:.0} commits/s"
    )?;
    writeln!(
        out,
        "# the writer during the copies / alone = {:.2} (goal >= 0.67: slowed by at most a third)",
        writer_during / writer_alone.max(1e-9)
    )?;
    writeln!(out, "restore_{records}_s {restore_s:.1} s")?;
    let restore_mb = set_bytes as f64 / 1e6 / restore_s;
    writeln!(out, "restore_mb_per_s {restore_mb:.0} MB/s")?;
    for (phase, secs) in phases.seconds() {
        writeln!(out, "restore_{}_s {secs:.1} s", phase.replace(' ', "_"))?;
    }
    writeln!(
        out,
        "# restore: the set's {:.0} MB in {restore_s:.1} s; / disk (the probes around it: {disk_before:.0} before, {disk_after:.0} after) = {:.2} (goal >= 0.3)",
        set_bytes as f64 / 1e6,
        restore_mb / ((disk_before + disk_after) / 2.0)
    )?;
    writeln!(
        out,
        "regenerate_{records}_plus_{}_commits_s {regen_s:.1} s",
        r.commits
    )?;
    let regen = regen_phases.seconds();
    for (phase, secs) in &regen {
        writeln!(out, "regenerate_{}_s {secs:.1} s", phase.replace(' ', "_"))?;
    }
    if let Some((_, secs)) = regen.iter().find(|(p, _)| *p == "roll forward") {
        writeln!(
            out,
            "regenerate_changes_per_s {:.0} changes/s",
            changes as f64 / secs.max(1e-6)
        )?;
    }
    writeln!(
        out,
        "# copy idle / disk (the probes around it) = {:.2}, under load / disk = {:.2} (goal >= 0.5)",
        raw_idle / disk_idle,
        raw_load / disk_load
    )?;
    writeln!(
        out,
        "# set (copy + read-back verify) idle / disk = {:.2}",
        set_idle / disk_idle
    )?;
    if keep {
        let kept = dir.keep();
        writeln!(
            out,
            "# kept: database {}, copy area {} (set {})",
            kept.join("db").display(),
            kept.join("area").display(),
            set.id
        )?;
    }
    Ok(Outcome::Ok)
}
