//! The feeder's life: connect, check the replicate's confirmation and
//! digest, load it if it needs one, then stream whole master transactions
//! in a window of batches and check every acknowledgement; on a failure,
//! what the policy says (retry with backoff, error state, or stop).

use super::batch::next_batch;
use super::client::ConnReader;
use super::control::{Anchor, LoadOrder, Policy};
use super::feeder::*;
use super::tail::Tail;
use crate::catalog::{Hold, HoldKind};
use crate::digest::FileMeta;
use crate::ids::{Fnr, Seq};
use crate::wire::{ErrorCode, Response};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits out a backoff delay, unless asked to stop.
pub(super) async fn pause(f: &Feeder, delay: Duration) -> Option<String> {
    let mut stop = f.stop.subscribe();
    if let Some(why) = stop.borrow_and_update().clone() {
        return Some(why);
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => None,
        _ = stop.changed() => stop.borrow().clone(),
    }
}

/// The wait before retry `attempt` (from 0): 100 ms, growing by √2 each
/// time, up to `cap`. A replicate's node that restarts is back within a
/// few seconds (its store's recovery: 1.6 s after a kill in `etp bench
/// propagate`), and doubling waits put the attempts around then at 1.5 s
/// and 3.1 s; with these the link was back at 2.6 s.
pub(super) fn backoff(attempt: u32, cap: Duration) -> Duration {
    let a = attempt.min(24);
    let ms = 100u64 << (a / 2);
    let ms = if a % 2 == 1 { ms * 1414 / 1000 } else { ms };
    Duration::from_millis(ms).min(cap)
}

pub(super) async fn run(ctx: Arc<Ctx>, f: Arc<Feeder>) {
    let mut attempt: u32 = 0;
    let name = f.name().to_string();
    loop {
        if let Some(why) = f.stop.borrow().clone() {
            f.set_phase(format!("stopped ({why})"));
            return;
        }
        let ctl = ctx.control.replicate(&name);
        let policy = ctx.control.policy();
        if let Some((why, _)) = &ctl.shunned {
            // The replicate is told, so it refuses current reads; until its
            // node answers, this is retried (its node may be why it was
            // shunned).
            let hold = Hold::new(HoldKind::Shunned, why.clone());
            match deliver_hold(&ctx, &f.rep, Some(hold.clone()), Seq(0), None).await {
                // Unshunned meanwhile (its start found this run going):
                // fed again.
                Ok(()) if ctx.control.replicate(&name).shunned.is_none() => continue,
                Ok(()) => {
                    lock(&f.st).hold = Some((hold, None));
                    f.set_phase(format!("not fed (shunned: {why})"));
                    return;
                }
                Err(e) => {
                    let delay = backoff(attempt, ERROR_RETRY_CAP);
                    if attempt == 0 {
                        tracing::warn!(replicate = %name, error = %e.reason(),
                            "shunned replicate not told yet: it serves reads until its node answers");
                    }
                    attempt += 1;
                    f.set_phase(format!(
                        "not fed (shunned: {why}); telling its node in {} ms",
                        delay.as_millis()
                    ));
                    if let Some(why) = pause(&f, delay).await {
                        f.set_phase(format!("stopped ({why})"));
                        return;
                    }
                    continue;
                }
            }
        }
        if policy == Policy::Maintenance {
            f.set_phase("stopped (policy maintenance)");
            return;
        }
        if ctl.restoring.is_some() {
            f.set_phase("not fed (a copy set is being restored into it)");
            return;
        }
        // A damaged log cannot feed anyone: stop without blaming the
        // replicate (the master's recovery flow, case 3 or 4, mends it).
        if let Some(why) = ctx.db.file_info(ctx.log).ok().and_then(|i| i.damaged) {
            f.set_phase(format!(
                "stopped (the master's log file {} is damaged: {why})",
                ctx.log
            ));
            return;
        }
        if ctl.error.is_some() && policy != Policy::Automatic {
            f.set_phase(format!(
                "stopped (in error, policy {policy}: etp replicate reset-error {name})"
            ));
            return;
        }
        f.set_phase("connecting");
        let stop = feed(&ctx, &f, &mut attempt).await;
        {
            let mut s = lock(&f.st);
            s.streaming = false;
            s.load = None;
        }
        // A wiped site is reported as such; in automatic policy it is
        // synced down (its topology sent, then a load), else retried as a
        // lost link is until an operator acts.
        let stop = match stop {
            Stop::Uninitialized(m) => {
                if lock(&f.st).uninitialized.replace(m.clone()).is_none() {
                    tracing::error!(replicate = %name, reason = %m, "replicate's site is uninitialized");
                }
                if ctx.control.policy() == Policy::Automatic {
                    match sync_down(&ctx, &f).await {
                        Ok(()) => {
                            let what = format!(
                                "sync-down: the wiped site (database {}) took the topology and re-created its files; the replicate is loaded from the master next",
                                f.rep.def.database
                            );
                            tracing::warn!(replicate = %name, "{what}");
                            {
                                let mut s = lock(&f.st);
                                s.uninitialized = None;
                                s.sync_down = Some(SyncDown {
                                    since: Instant::now(),
                                    settled_since: None,
                                    done: None,
                                });
                            }
                            let (c, n2) = (ctx.control.clone(), name.clone());
                            if let Err(e) =
                                blocking(move || c.update_replicate(&n2, |r| r.log("info", &what)))
                                    .await
                            {
                                tracing::warn!(replicate = %name, error = %e, "cannot log the sync-down");
                            }
                            attempt = 0;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(replicate = %name, error = %e.reason(), "sync-down of the wiped site failed; retried");
                        }
                    }
                }
                Stop::Link(m)
            }
            other => other,
        };
        match stop {
            Stop::Stopped(why) => {
                save_anchor(&ctx, &f).await;
                f.set_phase(format!("stopped ({why})"));
                return;
            }
            Stop::Fatal(msg) => {
                tracing::error!(replicate = %name, error = %msg, "replicate in error");
                record_error(&ctx, &f, &msg).await;
                if ctx.control.policy() != Policy::Automatic {
                    f.set_phase(format!("stopped (error: {msg})"));
                    return;
                }
                let delay = backoff(attempt, ERROR_RETRY_CAP);
                attempt += 1;
                f.set_phase(format!("in error; retrying in {} ms", delay.as_millis()));
                if let Some(why) = pause(&f, delay).await {
                    f.set_phase(format!("stopped ({why})"));
                    return;
                }
            }
            Stop::Diverged(d) => {
                let msg = d.to_string();
                tracing::error!(replicate = %name, error = %msg, "replicate diverged from its master");
                record_error(&ctx, &f, &msg).await;
                let c = ctx.control.clone();
                let n2 = name.clone();
                if let Err(e) =
                    blocking(move || c.update_replicate(&n2, |r| r.diverged = Some(d))).await
                {
                    tracing::error!(replicate = %name, error = %e, "cannot record the divergence");
                }
                // Retrying feeds nothing: the replicate must be reloaded.
                f.set_phase(format!(
                    "stopped ({msg}; etp replicate reinit {name} reloads it from the master)"
                ));
                return;
            }
            Stop::Refused(msg) => {
                tracing::error!(replicate = %name, error = %msg, "replicate in error: load refused");
                record_error(&ctx, &f, &msg).await;
                f.set_phase(format!(
                    "stopped (error: {msg}; etp replicate reinit {name} orders a new load, reset-error retries this one)"
                ));
                return;
            }
            // (Turned into a lost link above.)
            Stop::Link(msg) | Stop::Uninitialized(msg) => {
                let first = {
                    let mut s = lock(&f.st);
                    s.last_error = Some(msg.clone());
                    let d = s.down.get_or_insert((std::time::Instant::now(), 0));
                    d.1 += 1;
                    d.1 == 1
                };
                if first {
                    tracing::warn!(replicate = %name, error = %msg, "replication link lost");
                } else {
                    tracing::debug!(replicate = %name, error = %msg, "reconnect failed");
                }
                let cap = match (ctx.control.policy(), ctx.def.restart_interval_s) {
                    (Policy::Automatic, Some(cap)) => cap,
                    (Policy::Automatic, None) => {
                        f.set_phase(format!("stopped (link lost: {msg}; no restart interval)"));
                        return;
                    }
                    (p, _) => {
                        f.set_phase(format!("stopped (link lost: {msg}; policy {p})"));
                        return;
                    }
                };
                let delay = backoff(attempt, Duration::from_secs(cap));
                attempt += 1;
                f.set_phase(format!("retrying in {} ms", delay.as_millis()));
                if let Some(why) = pause(&f, delay).await {
                    f.set_phase(format!("stopped ({why})"));
                    return;
                }
            }
            Stop::NeedsLoad(why) => {
                if ctx.control.policy() != Policy::Automatic && !master_is_empty(&ctx) {
                    f.set_phase(format!(
                        "stopped ({why}: etp replicate init {name}, or reinit --scoped)"
                    ));
                    return;
                }
                let why = if lock(&f.st)
                    .sync_down
                    .as_ref()
                    .is_some_and(|d| d.done.is_none())
                {
                    format!("sync-down of its wiped site: {why}")
                } else {
                    why
                };
                tracing::info!(replicate = %name, reason = %why, "loading the replicate (automatic policy)");
                let c = ctx.control.clone();
                let (n2, order) = (
                    name.clone(),
                    LoadOrder {
                        id: new_load_id(),
                        from: None,
                        // A redefined replicate moves only what differs.
                        rewrite: false,
                        chunk: None,
                        requested_us: now_us(),
                        why: format!("{why} (automatic policy)"),
                    },
                );
                if let Err(e) = blocking(move || {
                    c.update_replicate(&n2, |r| {
                        r.log("info", &format!("load ordered: {}", order.why));
                        r.load = Some(order);
                    })
                })
                .await
                {
                    f.set_phase(format!("stopped (cannot order a load: {e})"));
                    return;
                }
            }
        }
    }
}

/// Whether a sync-down has settled: the replicate streaming, its backlog
/// at or under the task's threshold for the task's settle time. Returns
/// the completion, for the logs, once.
fn sync_down_settled(ctx: &Ctx, f: &Feeder) -> Option<String> {
    let (backlog, settle) = ctx.sync_down_rule();
    let level = master_position(ctx).ok().flatten().map(|(last, _)| last);
    let mut st = lock(&f.st);
    let (confirmed, streaming) = (st.confirmed, st.streaming && st.load.is_none());
    let d = st.sync_down.as_mut().filter(|d| d.done.is_none())?;
    let lag = level.map_or(0, |l| l.0.saturating_sub(confirmed.0));
    if !streaming || lag > backlog {
        d.settled_since = None;
        return None;
    }
    let since = *d.settled_since.get_or_insert_with(Instant::now);
    if since.elapsed() < settle {
        return None;
    }
    d.done = Some(Instant::now());
    Some(format!(
        "sync-down complete: its backlog stayed at or under {backlog} log records for {} s (confirmed seq {confirmed}, {lag} behind), {:.1} s after its site took the topology",
        settle.as_secs(),
        d.since.elapsed().as_secs_f64()
    ))
}

/// Puts the replicate in error with `msg` (its error log and state), and
/// tells it, if its node answers, so it refuses current reads.
async fn record_error(ctx: &Arc<Ctx>, f: &Feeder, msg: &str) {
    lock(&f.st).last_error = Some(msg.to_string());
    let c = ctx.control.clone();
    let (name, m) = (f.name().to_string(), msg.to_string());
    if let Err(e) = blocking(move || c.update_replicate(&name, |r| r.fail(&m))).await {
        tracing::error!(replicate = %f.name(), error = %e, "cannot record the error state");
    }
    let hold = Hold::new(HoldKind::Error, msg);
    match deliver_hold(ctx, &f.rep, Some(hold.clone()), Seq(0), None).await {
        Ok(()) => lock(&f.st).hold = Some((hold, None)),
        Err(e) => tracing::warn!(replicate = %f.name(), error = %e.reason(),
            "the replicate in error was not told: it serves reads until its master reaches it"),
    }
}

/// Releases a held replicate that has confirmed `level`, the master's
/// level when its link opened, over a link of its own (the streaming one
/// goes on meanwhile): logged in its error log, counted. Not delivered,
/// the next link open tries again (the replicate still says it is held).
fn release(ctx: &Arc<Ctx>, f: &Arc<Feeder>, hold: Hold, level: Seq) {
    let (ctx, f) = (ctx.clone(), f.clone());
    tokio::spawn(async move {
        let name = f.name().to_string();
        // Retried while its feeder runs: a lost link is tried again, a
        // hold set since (refused) is not this release's to clear.
        let mut attempt = 0;
        loop {
            match deliver_hold(&ctx, &f.rep, None, level, Some(&hold)).await {
                Ok(()) => break,
                Err(Stop::Refused(why)) => {
                    tracing::info!(replicate = %name, level = %level, reason = %why, "release not delivered");
                    return;
                }
                Err(e) => {
                    if attempt == 0 {
                        tracing::warn!(replicate = %name, level = %level, error = %e.reason(),
                            "the replicate could not be released yet: retried");
                    }
                    let delay = backoff(attempt, Duration::from_secs(5));
                    attempt += 1;
                    if pause(&f, delay).await.is_some() || !f.running() {
                        return;
                    }
                }
            }
        }
        {
            let mut s = lock(&f.st);
            s.releases += 1;
            if s.hold
                .as_ref()
                .is_some_and(|(h, _)| h.since_us == hold.since_us)
            {
                s.hold = None;
            }
        }
        let what = format!(
            "released at seq {level}, its master's level: it serves current reads again (it was {hold})"
        );
        tracing::info!(replicate = %name, level = %level, "replicate released: {what}");
        let c = ctx.control.clone();
        if let Err(e) =
            blocking(move || c.update_replicate(&name, |r| r.log("unlock", &what))).await
        {
            tracing::warn!(replicate = %f.name(), error = %e, "cannot log the release");
        }
    });
}

/// A master that holds nothing and never logged anything: loading a new
/// replicate from it is trivial, whatever the policy.
pub(super) fn master_is_empty(ctx: &Ctx) -> bool {
    let count = |f: Fnr| ctx.db.file_info(f).map(|i| (i.meta.count, i.meta.next_isn));
    matches!(
        (count(Fnr(ctx.master.file)), count(ctx.log)),
        (Ok((0, _)), Ok((_, 1)))
    )
}

pub(super) fn new_load_id() -> String {
    format!(
        "load-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        fastrand_u32()
    )
}

pub(super) fn fastrand_u32() -> u32 {
    // No RNG dependency in the library: the clock's nanoseconds and a
    // counter are unique enough for an id that only has to differ between
    // loads of one replicate.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = chrono::Utc::now().timestamp_subsec_nanos();
    t ^ n.rotate_left(16)
}

/// Records the replicate's current expected meta as its anchor.
pub(super) async fn save_anchor(ctx: &Arc<Ctx>, f: &Arc<Feeder>) {
    let Some((seq, meta)) = *lock(&f.expected) else {
        return;
    };
    let anchor = Anchor {
        seq,
        count: meta.count,
        digest: meta.digest,
        def: f.def_hash,
    };
    if ctx.control.replicate(f.name()).anchor == Some(anchor) {
        return;
    }
    let c = ctx.control.clone();
    let name = f.name().to_string();
    if let Err(e) = blocking(move || c.update_replicate(&name, |r| r.anchor = Some(anchor))).await {
        tracing::warn!(replicate = %f.name(), error = %e, "cannot record the digest anchor");
    }
}

/// One connection's worth of feeding; returns why it ended.
pub(super) async fn feed(ctx: &Arc<Ctx>, f: &Arc<Feeder>, attempt: &mut u32) -> Stop {
    let rep = &f.rep;
    let name = f.name().to_string();
    let stop_rx = f.stop.subscribe();
    let (mut conn, state) = match open_link(ctx, rep).await {
        Ok(x) => x,
        Err(s) => return s,
    };
    {
        let mut s = lock(&f.st);
        if let Some((since, failed)) = s.down.take() {
            tracing::warn!(
                replicate = %name,
                down_s = since.elapsed().as_secs_f64(),
                failed_reconnects = failed.saturating_sub(1),
                "replication link restored after {:.1} s down",
                since.elapsed().as_secs_f64()
            );
        }
        s.connects += 1;
        s.uninitialized = None;
        s.has_confirmation = state.confirmation.is_some();
        if let Some(c) = &state.confirmation {
            s.confirmed = c.seq;
            s.sent = c.seq;
        }
    }
    let ctl = ctx.control.replicate(&name);
    // A load in progress (the replicate says where), one ordered, or one
    // that ended just before a crash (its confirmation names it).
    let order = ctl.load.clone();
    let finished_order = match (&order, &state.confirmation) {
        (Some(o), Some(c)) if c.loaded_by.as_deref() == Some(o.id.as_str()) => Some(o.clone()),
        _ => None,
    };
    let (conf_seq, expected) = if let Some(p) = state.load.clone() {
        let order = order.filter(|o| o.id == p.id);
        match super::load::run_load(ctx, f, &mut conn, super::load::Start::Resume(p, order)).await {
            Ok(x) => x,
            Err(stop) => return stop,
        }
    } else if let (Some(o), None) = (order, finished_order.as_ref()) {
        match super::load::run_load(ctx, f, &mut conn, super::load::Start::Begin(o)).await {
            Ok(x) => x,
            Err(stop) => return stop,
        }
    } else {
        if let Some(o) = finished_order {
            // The load ended, the order was not cleared: the confirmation is
            // the load's result.
            if let Some(c) = &state.confirmation {
                let mut m = FileMeta::new(Fnr(rep.def.file));
                m.count = c.count;
                m.digest = c.digest;
                if let Err(e) = super::load::finish_order(ctx, f, &o.id, c.seq, m, None).await {
                    return Stop::Link(e.to_string());
                }
            }
        }
        let conf_seq = state.confirmation.as_ref().map_or(Seq(0), |c| c.seq);
        if state.confirmation.is_none() {
            // A new replicate starts from a load (a consistent read of the
            // master), never from a replay of the log: the log may not
            // reach back to the master's first record, and a load is
            // proportional to what the master holds, not to its history.
            return Stop::NeedsLoad(format!(
                "a new replicate needs an initial load from master {}",
                ctx.master.name
            ));
        } else if ctl.anchor.is_some_and(|a| a.def != f.def_hash) {
            return Stop::NeedsLoad(
                "its definition (fields or predicate) changed since it was loaded".into(),
            );
        }
        if let Some(c) = &state.confirmation {
            match super::feeder::divergence(ctx, c).await {
                Ok(Some(d)) => return Stop::Diverged(d),
                Ok(None) => {}
                Err(e) => return Stop::Fatal(e.to_string()),
            }
        }
        let expected = match expected_at(ctx, f, conf_seq).await {
            Ok(m) => m,
            Err(e) => return Stop::Fatal(e.to_string()),
        };
        if state.digest != expected.digest || state.count != expected.count {
            let what = format!(
                "at seq {conf_seq} it holds digest {} over {} records, but the master expects digest {} over {} records",
                state.digest, state.count, expected.digest, expected.count
            );
            return match (state.damaged, &state.confirmation) {
                // Undamaged, and at its recorded level: another history.
                (None, Some(c)) => {
                    let (last, inc) = super::feeder::master_position(ctx)
                        .ok()
                        .flatten()
                        .unwrap_or((conf_seq, c.incarnation));
                    Stop::Diverged(crate::wire::Divergence {
                        confirmed_seq: conf_seq,
                        confirmed_incarnation: c.incarnation,
                        master_seq: last,
                        master_incarnation: inc,
                        // Which seqs differ is not known: none is named lost.
                        lost_from: Seq(conf_seq.0 + 1),
                        why: format!("{what} (its history differs from the master's)"),
                        time_us: now_us(),
                    })
                }
                (d, _) => Stop::Fatal(format!(
                    "replicate {name}: {what}{}",
                    d.map(|d| format!(" (its node reports: {d})"))
                        .unwrap_or_default()
                )),
            };
        }
        (conf_seq, expected)
    };
    {
        let mut s = lock(&f.st);
        s.phase = "streaming".into();
        s.streaming = true;
        s.load = None;
        s.has_confirmation = true;
        s.sent = conf_seq;
        s.confirmed = conf_seq;
        s.progress_us = now_us();
    }
    f.confirmed.send_replace(conf_seq);
    f.applied.send_replace(conf_seq);
    *lock(&f.expected) = Some((conf_seq, expected));
    // A held replicate (restored from a copy, or shunned or in error
    // before) is released once it confirms the master's level now.
    let mut release_at = None;
    lock(&f.st).hold = None;
    // (The master's level unread, it stays held until the next link open.)
    let level = master_position(ctx).ok().flatten().map(|(last, _)| last);
    if let (Some(h), Some(level)) = (state.hold.clone(), level) {
        let level = level.max(conf_seq);
        if h.kind == HoldKind::Restored {
            let c = state.confirmation.as_ref();
            let what = format!(
                "restored replicate announces incarnation {} seq {conf_seq}: locked until it confirms seq {level}, its master's level",
                c.map_or(0, |c| c.incarnation)
            );
            tracing::warn!(replicate = %name, "{what}");
            let (c, n2) = (ctx.control.clone(), name.clone());
            if let Err(e) =
                blocking(move || c.update_replicate(&n2, |r| r.log("info", &what))).await
            {
                tracing::warn!(replicate = %name, error = %e, "cannot log the restored replicate");
            }
        }
        lock(&f.st).hold = Some((h.clone(), Some(level)));
        if conf_seq >= level {
            release(ctx, f, h, level);
        } else {
            release_at = Some((h, level));
        }
    }
    if ctl.error.is_some() {
        let c = ctx.control.clone();
        let n2 = name.clone();
        let _ = blocking(move || {
            c.update_replicate(&n2, |r| {
                r.error = None;
                r.log(
                    "info",
                    "error cleared: the replicate checked out on reconnect",
                );
            })
        })
        .await;
    }
    let anchored = ctx.control.replicate(&name).anchor;
    if anchored.is_none_or(|a| a.def != f.def_hash) {
        save_anchor(ctx, f).await;
    }
    // The link's send side, shared with the group commit's leader: it
    // sends a short durable tail itself (see `tail`).
    let (mut reader, writer) = match conn.split() {
        Ok(x) => x,
        Err(e) => return link_err(e),
    };
    let tail = Arc::new(Tail::new(
        ctx.clone(),
        f.clone(),
        writer,
        conf_seq,
        expected,
    ));
    let hook: Arc<dyn crate::database::IdleDurable> = tail.clone();
    ctx.db.on_idle_durable(Arc::downgrade(&hook));
    let stop = stream(
        ctx,
        f,
        attempt,
        &mut reader,
        &tail,
        Resume {
            from: conf_seq,
            release_at,
        },
        stop_rx,
    )
    .await;
    // The leader sends nothing more on this link.
    lock(&tail.side).open = false;
    stop
}

/// Where a checked replicate's streaming begins.
struct Resume {
    /// The seq it confirms.
    from: Seq,
    /// Held: the hold it announced, released once it confirms this seq.
    release_at: Option<(Hold, Seq)>,
}

/// Streams whole master transactions to a checked replicate from the seq
/// it confirms on, and checks every answer; returns why it ended.
async fn stream(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    attempt: &mut u32,
    reader: &mut ConnReader,
    tail: &Arc<Tail>,
    resume: Resume,
    mut stop_rx: tokio::sync::watch::Receiver<Option<String>>,
) -> Stop {
    let (conf_seq, mut release_at) = (resume.from, resume.release_at);
    let rep = &f.rep;
    let name = f.name().to_string();
    let (mut last_anchor, mut anchored) = (Instant::now(), conf_seq);
    // Applied on the replicate, not yet reported durable there: the
    // master's expected state after each (confirmed once durable).
    let mut unconfirmed: VecDeque<(Seq, FileMeta)> = VecDeque::new();
    // The highest seq the replicate reported durable: it reports each of
    // its syncs unasked ([`Response::Synced`]), between its answers.
    let mut reported = conf_seq;
    let mut durable = ctx.db.subscribe_durable();
    let mut stopping: Option<String> = stop_rx.borrow_and_update().clone();
    // Asked to stop before streaming began: the leader sends nothing.
    lock(&tail.side).open = stopping.is_none();
    // A sync-down not yet declared complete is checked twice a second (a
    // deadline kept across the loop's turns: acknowledgements do not
    // push it back).
    let mut sync_check = tokio::time::Instant::now();
    loop {
        let syncing = lock(&f.st)
            .sync_down
            .as_ref()
            .is_some_and(|d| d.done.is_none());
        let (cursor, idle, can_send, blocked) = {
            let mut side = lock(&tail.side);
            if let Some(stop) = side.failed.take() {
                return stop;
            }
            // Idle: nothing in flight and everything applied confirmed.
            let idle = side.inflight.is_empty() && unconfirmed.is_empty();
            (
                side.cursor,
                idle,
                side.can_send(ctx.window) && stopping.is_none(),
                side.blocked(),
            )
        };
        if let Some(why) = &stopping {
            if idle {
                return Stop::Stopped(why.clone());
            }
        }
        tokio::select! {
            changed = stop_rx.changed(), if stopping.is_none() => {
                stopping = match changed {
                    Ok(()) => stop_rx.borrow().clone(),
                    Err(_) => Some("task dropped".into()),
                };
                if stopping.is_some() {
                    lock(&tail.side).open = false;
                }
            }
            _ = futures_util::future::OptionFuture::from(
                syncing.then(|| tokio::time::sleep_until(sync_check))
            ), if syncing => {
                sync_check = tokio::time::Instant::now() + Duration::from_millis(500);
                if let Some(what) = sync_down_settled(ctx, f) {
                    tracing::info!(replicate = %name, "{what}");
                    let (c, n2) = (ctx.control.clone(), name.clone());
                    if let Err(e) = blocking(move || c.update_replicate(&n2, |r| r.log("info", &what))).await {
                        tracing::warn!(replicate = %name, error = %e, "cannot log the sync-down's end");
                    }
                }
            }
            // A batch the socket did not take at once: the rest of it, as
            // soon as it takes more.
            w = tail.writable(), if blocked => {
                if let Err(stop) = w.and_then(|()| tail.flush(&mut lock(&tail.side))) {
                    return stop;
                }
            }
            // Acknowledgements; and while nothing is in flight, the
            // connection is watched too: anything the replicate sends then,
            // or the connection closing (its node stopped, restarted or
            // restored), ends this link at once, so an idle master never
            // keeps reporting a stale confirmation as current.
            resp = async {
                if idle {
                    Ok(reader.recv().await)
                } else {
                    tokio::time::timeout(ACK_TIMEOUT, reader.recv()).await
                }
            } => {
                let resp = match resp {
                    Err(_) => return Stop::Link(format!(
                        "no acknowledgement from {} for {} s", rep.address, ACK_TIMEOUT.as_secs()
                    )),
                    Ok(Err(e)) if idle => return Stop::Link(format!("the link went down while idle: {e}")),
                    Ok(Err(e)) => return link_err(e),
                    Ok(Ok(r)) => r,
                };
                {
                let mut side = lock(&tail.side);
                // Idle when the wait began, but the leader may have sent
                // since: only an answer to nothing ends the link.
                if side.inflight.is_empty() && unconfirmed.is_empty() {
                    return Stop::Link(format!("unexpected message while idle: {resp:?}"));
                }
                match resp {
                    Response::Synced { durable_seq } => {
                        // A sync the replicate reports unasked, between its answers.
                        if durable_seq > side.cursor {
                            return Stop::Link(format!(
                                "reported seq {durable_seq} durable, beyond the last sent ({})",
                                side.cursor
                            ));
                        }
                        reported = reported.max(durable_seq);
                    }
                    Response::Applied { applied_seq, durable_seq, digest, count, .. } => {
                        let Some((want_seq, want, sent_bytes)) = side.inflight.pop_front() else {
                            return Stop::Link("acknowledgement with nothing in flight".into());
                        };
                        side.inflight_bytes -= sent_bytes;
                        if applied_seq != want_seq || durable_seq > applied_seq {
                            return Stop::Link(format!(
                                "acknowledged applied seq {applied_seq}, durable seq {durable_seq}; expected {want_seq}"
                            ));
                        }
                        if digest != want.digest || count != want.count {
                            return Stop::Fatal(format!(
                                "replicate {name} at seq {applied_seq}: digest {digest} over {count} records, but the master expects digest {} over {} records",
                                want.digest, want.count
                            ));
                        }
                        unconfirmed.push_back((applied_seq, want));
                        f.applied.send_replace(applied_seq);
                        reported = reported.max(durable_seq);
                    }
                    Response::Error { code: ErrorCode::OutOfSequence, message } => {
                        // Another link applied first (a replaced connection
                        // draining): reconnect and resume from the confirmation.
                        return Stop::Link(message);
                    }
                    Response::Error { code: ErrorCode::Diverged, message } => {
                        let gaps = ctx.control.replicate(&name).gaps;
                        let hint = if gaps.is_empty() {
                            String::new()
                        } else {
                            format!(" (it has {} gap record(s) from confirm set: a reinit clears them)", gaps.len())
                        };
                        let at = side.inflight.front().map_or(side.cursor, |b| b.0);
                        return Stop::Fatal(format!("replicate {name} at seq {at}: {message}{hint}"));
                    }
                    Response::Error { message, .. } => return Stop::Link(message),
                    other => return Stop::Link(reader.unexpected(&other, "Applied").to_string()),
                }
                }
                // Confirmed means durable on the replicate.
                let mut confirmed = None;
                while let Some((s, _)) = unconfirmed.front() {
                    if *s > reported {
                        break;
                    }
                    confirmed = unconfirmed.pop_front();
                }
                if let Some((seq, want)) = confirmed {
                    {
                        let mut s = lock(&f.st);
                        s.confirmed = seq;
                        s.progress_us = now_us();
                    }
                    f.confirmed.send_replace(seq);
                    if let Some((h, level)) = release_at.take_if(|(_, l)| seq >= *l) {
                        release(ctx, f, h, level);
                    }
                    // The link works: the next loss backs off from the start.
                    *attempt = 0;
                    *lock(&f.expected) = Some((seq, want));
                    if last_anchor.elapsed() >= ANCHOR_EVERY
                        || seq.0.saturating_sub(anchored.0) >= ANCHOR_RECORDS
                    {
                        (last_anchor, anchored) = (Instant::now(), seq);
                        save_anchor(ctx, f).await;
                    }
                }
            }
            batch = next_batch(ctx, cursor, &mut durable, || {
                let side = lock(&tail.side);
                side.cursor != cursor || side.failed.is_some()
            }), if can_send => {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => return e,
                };
                if batch.is_empty() {
                    continue;
                }
                let mut side = lock(&tail.side);
                // The leader may have sent meanwhile and filled the window:
                // the batch is read again once there is room.
                if !side.can_send(ctx.window) {
                    continue;
                }
                let sent = tail.send(&mut side, batch, false);
                drop(side);
                if let Err(stop) = sent {
                    return stop;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn retries_wait_longer_by_root_two_up_to_the_cap() {
        let cap = Duration::from_secs(60);
        let waits: Vec<u64> = (0..8).map(|a| backoff(a, cap).as_millis() as u64).collect();
        assert_eq!(waits, vec![100, 141, 200, 282, 400, 565, 800, 1131]);
        let mut last = Duration::ZERO;
        for a in 0..100 {
            let w = backoff(a, cap);
            assert!(w >= last && w <= cap, "attempt {a}: {w:?}");
            last = w;
        }
        assert_eq!(backoff(99, cap), cap);
        assert_eq!(
            backoff(3, Duration::from_millis(150)),
            Duration::from_millis(150)
        );
    }
}
