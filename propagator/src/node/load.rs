//! Initial load, reinitialization and verification of a replicate, online.
//!
//! **A consistent read at a known seq, without stopping the master.** A load
//! picks a snapshot seq `S` (the master's last durable seq, or the confirmed
//! seq of a full replicate it reads from) and walks the source in isn order,
//! chunk by chunk. The source keeps changing while it is read, so each chunk
//! is corrected with the master's log: for every record changed after `S`,
//! the before-image of its *first* change after `S` is its value at `S`
//! ([`Snapshot`]). A chunk scanned while the master's log stood at seq `C`
//! is exact once every log record up to `C` is folded in, because nothing
//! the scan saw can be newer than `C`.
//!
//! **Chunks are transactions on the replicate.** Each chunk replaces the
//! replicate's records in its isn range `[from, to)` and moves the load's
//! progress record in the confirmation file, in one transaction, guarded so
//! it applies exactly once and in order (`Database::load_range`). A crash
//! of either side loses at most the chunks in flight: the next connect reads
//! the progress and carries on from the last committed chunk. The last
//! chunk turns the progress record into the replicate's confirmation at `S`
//! (after checking the file's count and digest), so the task continues
//! exactly from there. A scoped reload (`rewrite` false) writes only the
//! records that differ, which is what a changed predicate or field list
//! needs.
//!
//! **Verification** reads the master at the replicate's confirmed seq the
//! same way (the replicate's feeder is paused so it stays there), compares
//! the digests, then range digests, then the records of the ranges that
//! differ, and names the isns.

use super::client::{ClientError, Conn};
use super::control::{Anchor, LoadOrder, LoadSummary};
use super::errors::OpError;
use super::feeder::{
    blocking, lock, now_us, open_link, timed, Ctx, Feeder, LoadRefusal, LoadStatus, Stop,
    ACK_TIMEOUT,
};
use super::view::view;
use crate::digest::{Digest, FileMeta};
use crate::error::DbError;
use crate::ids::{Fnr, Isn, Seq};
use crate::topology::Replicate;
use crate::wire::{Confirmation, ErrorCode, LoadProgress, Request, Response, VerifyReport};
use crate::wire::{LinkRequest, ReadRequest};
use futures_util::future::OptionFuture;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Records per chunk unless the task or the order says otherwise.
const DEFAULT_CHUNK: usize = 16384;
/// Bytes of records per chunk, at most.
const MAX_CHUNK_BYTES: usize = 8 << 20;
/// Chunks in flight.
const LOAD_WINDOW: usize = 3;
/// How often a load's progress is logged (on both sides), at most.
pub(super) const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) enum Start {
    Begin(LoadOrder),
    Resume(LoadProgress, Option<LoadOrder>),
}

/// Where a load or a verification reads records from.
enum Source {
    Master,
    /// A full replicate of the same master: its node and file.
    Replicate {
        rep: Box<Replicate>,
        conn: Box<Conn>,
    },
}

/// The master's content as of seq `at`, read while it keeps changing.
struct Snapshot {
    /// Log records up to here are folded into `undo`.
    folded: Seq,
    /// isn → its value at the snapshot seq, for every isn changed after it.
    undo: BTreeMap<Isn, Option<Vec<u8>>>,
}

impl Snapshot {
    fn new(at: Seq) -> Snapshot {
        Snapshot {
            folded: at,
            undo: BTreeMap::new(),
        }
    }

    /// Folds in every log record up to `upto`, waiting for them to be durable.
    async fn fold(&mut self, ctx: &Arc<Ctx>, upto: Seq) -> Result<(), Stop> {
        let mut durable = ctx.db.subscribe_durable();
        while self.folded < upto {
            durable.borrow_and_update();
            let (c, from) = (ctx.clone(), self.folded);
            let recs = blocking(move || {
                let mut out = Vec::new();
                let mut s = from.0 + 1;
                while s <= upto.0 && out.len() < 10_000 {
                    match c.db.read_log_record(c.log, Seq(s))? {
                        Some(r) => out.push((r.isn, r.before)),
                        None => break,
                    }
                    s += 1;
                }
                Ok::<_, DbError>(out)
            })
            .await
            .map_err(|e| Stop::Fatal(format!("reading the master's log: {e}")))?;
            if recs.is_empty() {
                // Not durable yet.
                if durable.changed().await.is_err() {
                    return Err(Stop::Link("the master database closed".into()));
                }
                continue;
            }
            for (isn, before) in recs {
                self.folded = Seq(self.folded.0 + 1);
                self.undo.entry(isn).or_insert(before);
            }
        }
        Ok(())
    }

    /// Whether a record in `[from, to)` changed after the snapshot.
    fn touches(&self, from: Isn, to: Option<Isn>) -> bool {
        match to {
            Some(t) => self.undo.range(from..t).next().is_some(),
            None => self.undo.range(from..).next().is_some(),
        }
    }

    /// The records of `[from, to)` as of the snapshot seq, in the
    /// replicate's view (`view`), from what a scan saw (already in it).
    fn correct(
        &mut self,
        scanned: Vec<(Isn, Vec<u8>)>,
        from: Isn,
        to: Option<Isn>,
        view: impl Fn(Isn, &[u8]) -> Result<Option<Vec<u8>>, Stop>,
    ) -> Result<Vec<(Isn, Vec<u8>)>, Stop> {
        let range = match to {
            Some(t) => self.undo.range(from..t),
            None => self.undo.range(from..),
        };
        if range.clone().next().is_none() {
            // Nothing in the range changed after the snapshot.
            return Ok(scanned);
        }
        let mut out: BTreeMap<Isn, Vec<u8>> = scanned
            .into_iter()
            .filter(|(i, _)| !self.undo.contains_key(i))
            .collect();
        let range = match to {
            Some(t) => self.undo.range(from..t),
            None => self.undo.range(from..),
        };
        for (i, v) in range {
            if let Some(v) = v {
                if let Some(v) = view(*i, v)? {
                    out.insert(*i, v);
                }
            }
        }
        // Entries below the next chunk are never needed again.
        if let Some(t) = to {
            let keep = self.undo.split_off(&t);
            let below: Vec<Isn> = self.undo.keys().copied().collect();
            self.undo = keep;
            // Keep the keys (not the images) so a later change of these isns
            // does not look like a first change after `at`.
            for i in below {
                self.undo.insert(i, None);
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// The master's last committed seq (its log's last isn).
fn master_seq(ctx: &Ctx) -> Seq {
    ctx.db
        .file_info(ctx.log)
        .map(|i| Seq(i.meta.next_isn.saturating_sub(1)))
        .unwrap_or_default()
}

impl Source {
    async fn open(ctx: &Arc<Ctx>, from: Option<&str>) -> Result<Source, Stop> {
        let Some(name) = from else {
            return Ok(Source::Master);
        };
        let rep = ctx
            .reps
            .iter()
            .find(|r| r.def.name == name)
            .cloned()
            .ok_or_else(|| {
                Stop::Fatal(format!(
                    "no replicate {name:?} of master {} to load from",
                    ctx.master.name
                ))
            })?;
        if rep.is_partial() {
            return Err(Stop::Fatal(format!(
                "replicate {name} is partial: a load reads from the master or a full replicate"
            )));
        }
        let conn = Conn::connect_to(rep.address, crate::ids::DbId(rep.def.database))
            .await
            .map_err(|e| Stop::Link(format!("connecting to {name}'s node: {e}")))?;
        Ok(Source::Replicate {
            rep: Box::new(rep),
            conn: Box::new(conn),
        })
    }

    fn name(&self) -> String {
        match self {
            Source::Master => "master".into(),
            Source::Replicate { rep, .. } => format!("replicate:{}", rep.def.name),
        }
    }

    /// Up to `limit` records from isn `from` on, in the replicate's view.
    /// On the master, a partial replicate's chunk is read by two threads
    /// at once, each over half of its isns (see [`scan_halves`]).
    async fn scan(
        &mut self,
        ctx: &Arc<Ctx>,
        rep: &Replicate,
        from: Isn,
        limit: usize,
    ) -> Result<Scanned, Stop> {
        match self {
            Source::Master if rep.is_partial() && limit >= 2 * MIN_HALF => {
                scan_halves(ctx, rep, from, limit).await
            }
            Source::Master => {
                let (c, r) = (ctx.clone(), rep.clone());
                blocking(move || scan_master(&c, &r, from, None, limit))
                    .await
                    .map_err(|e| Stop::Fatal(format!("reading the master: {e}")))
            }
            Source::Replicate { rep: src, conn } => {
                let req = Request::Read(ReadRequest::Dump {
                    file: Fnr(src.def.file),
                    from,
                    limit: limit as u32,
                    // A held source (restored and behind, shunned, in
                    // error, being loaded) is no level to load from.
                    stale: false,
                });
                match timed("reading the source replicate", conn.call(&req)).await? {
                    Response::Records { items, done, .. } => {
                        let mut out = Scanned {
                            done,
                            ..Scanned::default()
                        };
                        for (isn, b) in items {
                            out.read += 1;
                            out.last = Some(isn);
                            if let Some(v) =
                                view(rep, Some(&b)).map_err(|e| viewing(ctx, isn, e))?
                            {
                                out.sum.add(isn, &v);
                                out.records.push((isn, v));
                            }
                        }
                        Ok(out)
                    }
                    other => Err(Stop::Link(conn.unexpected(&other, "Records").to_string())),
                }
            }
        }
    }

    /// The seq the source stands at for a new snapshot.
    async fn snapshot_seq(&mut self, ctx: &Arc<Ctx>) -> Result<Seq, Stop> {
        match self {
            Source::Master => {
                let s = master_seq(ctx);
                // Durable before anything is built on it.
                let mut snap = Snapshot::new(Seq(0));
                snap.folded = Seq(s.0.saturating_sub(1));
                snap.fold(ctx, s).await?;
                Ok(s)
            }
            Source::Replicate { rep, .. } => {
                let (_c, state) = open_link(ctx, rep).await?;
                if state.load.is_some() {
                    return Err(Stop::Fatal(format!(
                        "replicate {} is itself being loaded",
                        rep.def.name
                    )));
                }
                state.confirmation.map(|c| c.seq).ok_or_else(|| {
                    Stop::Fatal(format!("replicate {} has never been fed", rep.def.name))
                })
            }
        }
    }
}

/// A chunk being read, with the source and snapshot it reads through (handed
/// back with the chunk).
///
/// The load loop `select!`s between reading the next chunk and the
/// replicate's acknowledgements. A read must never be dropped half-way when
/// an acknowledgement wins that race: the source's connection would be left
/// owing the answer to a `Dump` already sent, and the next read would take
/// that stale answer for its own range (a chunk `[24577, 24577)` carrying
/// isn 16388, which the replicate rightly refused, forever). So the read is
/// a task of its own, which runs until it completes whatever else happens —
/// and while the loop sums, encodes and sends the chunk before it. Only
/// when the load itself ends is a read still under way aborted (its
/// source is not used again).
struct ChunkRead(tokio::task::JoinHandle<(Result<Chunk, Stop>, Source, Snapshot)>);

impl Drop for ChunkRead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for ChunkRead {
    type Output = Result<(Result<Chunk, Stop>, Source, Snapshot), tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

fn read_chunk(
    ctx: Arc<Ctx>,
    f: Arc<Feeder>,
    mut src: Source,
    mut snap: Snapshot,
    from: Isn,
    limit: usize,
) -> ChunkRead {
    ChunkRead(tokio::spawn(async move {
        let chunk = next_chunk(&ctx, &f.rep, &mut src, &mut snap, from, limit).await;
        (chunk, src, snap)
    }))
}

/// One chunk ready to send.
struct Chunk {
    from: Isn,
    to: Option<Isn>,
    records: Vec<(Isn, Vec<u8>)>,
    /// The records' count and summed digest terms.
    sum: (u64, Digest),
    scanned: u64,
}

/// Reads the next chunk of the source as of the snapshot, in the replicate's view.
async fn next_chunk(
    ctx: &Arc<Ctx>,
    rep: &Replicate,
    src: &mut Source,
    snap: &mut Snapshot,
    from: Isn,
    limit: usize,
) -> Result<Chunk, Stop> {
    let scanned = src.scan(ctx, rep, from, limit).await?;
    // Nothing the scan saw is newer than this.
    let upto = master_seq(ctx);
    snap.fold(ctx, upto).await?;
    let to = match (scanned.done, scanned.last) {
        (false, Some(last)) => Some(Isn(last.0 + 1)),
        _ => None,
    };
    let touched = snap.touches(from, to);
    let records = snap.correct(scanned.records, from, to, |isn, b| {
        view(rep, Some(b)).map_err(|e| viewing(ctx, isn, e))
    })?;
    // Summed by the reading threads, unless the snapshot changed a record.
    let sum = match touched {
        true => chunk_meta(&records),
        false => (records.len() as u64, scanned.sum),
    };
    Ok(Chunk {
        from,
        to,
        records,
        sum,
        scanned: scanned.read,
    })
}

/// What one read of the source saw.
#[derive(Default)]
struct Scanned {
    /// In the replicate's view (a partial replicate's selection and
    /// projection), ascending.
    records: Vec<(Isn, Vec<u8>)>,
    /// How many records were read, and the last one's isn.
    read: u64,
    last: Option<Isn>,
    /// The file ends here.
    done: bool,
    /// The summed digest terms of `records`.
    sum: Digest,
}

fn viewing(ctx: &Ctx, isn: Isn, e: impl std::fmt::Display) -> Stop {
    Stop::Fatal(format!("master {} isn {isn}: {e}", ctx.master.name))
}

/// Records per half of a chunk read by two threads, at least.
const MIN_HALF: usize = 1024;

/// Reads the master from `from`, in the replicate's view: up to `limit`
/// records, or up to (not including) `until`, whichever comes first, and
/// at most [`MAX_CHUNK_BYTES`] kept. `done` when it reached `until` or the
/// end of the file. Viewed as it reads, on the reading thread: a partial
/// replicate's unselected records are never copied out of the store.
fn scan_master(
    ctx: &Ctx,
    rep: &Replicate,
    from: Isn,
    until: Option<Isn>,
    limit: usize,
) -> Result<Scanned, DbError> {
    let fnr = Fnr(ctx.master.file);
    let mut out = Scanned {
        done: true,
        ..Scanned::default()
    };
    let mut bytes = 0usize;
    ctx.db.for_each_raw(fnr, from, |isn, b| {
        if until.is_some_and(|u| isn >= u) {
            return Ok(false);
        }
        if out.read as usize >= limit || bytes >= MAX_CHUNK_BYTES {
            out.done = false;
            return Ok(false);
        }
        out.read += 1;
        out.last = Some(isn);
        if let Some(v) = view(rep, Some(b)).map_err(|source| DbError::BadRecord { fnr, source })? {
            bytes += v.len();
            out.sum.add(isn, &v);
            out.records.push((isn, v));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// A chunk of a partial replicate's load read by two threads at once: the
/// first reads the isns `[from, from + limit/2)`, the second up to the
/// rest of `limit` records from there. On two cores the master's scan —
/// its page store's iteration, about 0.3 µs a record here, and the view —
/// is most of a partial load's time, and a partial replicate keeps only
/// part of what is read. Should the first half stop short (its bytes),
/// the second's work is dropped and the chunk ends where the first did.
async fn scan_halves(
    ctx: &Arc<Ctx>,
    rep: &Replicate,
    from: Isn,
    limit: usize,
) -> Result<Scanned, Stop> {
    let half = limit / 2;
    let mid = Isn(from.0.saturating_add(half as u64));
    let (c1, r1) = (ctx.clone(), rep.clone());
    let (c2, r2) = (ctx.clone(), rep.clone());
    let (a, b) = tokio::join!(
        blocking(move || scan_master(&c1, &r1, from, Some(mid), usize::MAX)),
        blocking(move || scan_master(&c2, &r2, mid, None, limit - half)),
    );
    let fail = |e: OpError| Stop::Fatal(format!("reading the master: {e}"));
    let mut a = a.map_err(fail)?;
    if !a.done {
        return Ok(a);
    }
    let b = b.map_err(fail)?;
    a.records.extend(b.records);
    a.sum.0 = a.sum.0.wrapping_add(b.sum.0);
    a.read += b.read;
    a.last = b.last.or(a.last);
    a.done = b.done;
    Ok(a)
}

/// Starts reading the chunk from `next` with the reader (source and
/// snapshot), which the read owns until it hands them back.
fn start_read(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    reader: &mut Option<(Source, Snapshot)>,
    next: Isn,
    limit: usize,
    seen: (u64, u64),
) -> Option<ChunkRead> {
    let (src, snap) = reader.take()?;
    let span = scan_span(limit, seen, widens(&f.rep, &src));
    Some(read_chunk(ctx.clone(), f.clone(), src, snap, next, span))
}

/// Whether a load's chunks read more of the source than they keep (see
/// [`scan_span`]): a partial replicate loaded from the master, whose scan
/// is local and bounded by the bytes it keeps. (A source replicate's
/// `Dump` answers carry every record read, so they stay at `limit`.)
fn widens(rep: &Replicate, src: &Source) -> bool {
    rep.is_partial() && matches!(src, Source::Master)
}

/// How many source records the next chunk reads: for a partial replicate,
/// enough that about `limit` are kept, by the share kept so far (up to 8×
/// `limit`), so its chunks — each a commit and a sync on the replicate —
/// are as large as a full replicate's.
fn scan_span(limit: usize, (read, kept): (u64, u64), partial: bool) -> usize {
    const MAX_WIDEN: u64 = 8;
    if !partial || read == 0 {
        return limit;
    }
    let l = limit as u64;
    let span = match kept {
        0 => l * MAX_WIDEN,
        k => (l.saturating_mul(read) / k).clamp(l, l * MAX_WIDEN),
    };
    span as usize
}

fn chunk_meta(records: &[(Isn, Vec<u8>)]) -> (u64, Digest) {
    let mut m = FileMeta::new(Fnr(0));
    for (i, b) in records {
        m.change(*i, None, Some(b));
    }
    (m.count, m.digest)
}

/// Runs (or resumes) a load over the feeder's open link. Returns the seq the
/// replicate is now confirmed at and its expected meta there.
pub(super) async fn run_load(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    conn: &mut Conn,
    start: Start,
) -> Result<(Seq, FileMeta), Stop> {
    let rep = &f.rep;
    let name = f.name().to_string();
    let fnr = Fnr(rep.def.file);
    let (order, progress, src) = match start {
        Start::Begin(order) => {
            let mut src = Source::open(ctx, order.from.as_deref()).await?;
            let snapshot = src.snapshot_seq(ctx).await?;
            let req = Request::Link(LinkRequest::LoadBegin {
                id: order.id.clone(),
                snapshot,
                source: src.name(),
                rewrite: order.rewrite,
            });
            let p = match tokio::time::timeout(ACK_TIMEOUT, conn.call(&req)).await {
                Ok(Ok(Response::Loading(p))) => p,
                Ok(Ok(other)) => {
                    return Err(Stop::Link(conn.unexpected(&other, "Loading").to_string()))
                }
                Ok(Err(ClientError::Remote { code, message, .. })) => {
                    return Err(refused(f, &order.id, None, code, message))
                }
                Ok(Err(e)) => return Err(super::feeder::link_err(e)),
                Err(_) => {
                    return Err(Stop::Link(format!(
                        "starting the load took more than {} s",
                        ACK_TIMEOUT.as_secs()
                    )))
                }
            };
            tracing::info!(replicate = %name, id = %p.id, snapshot = %snapshot, source = %p.source, "load started");
            (order, p, src)
        }
        Start::Resume(p, order) => {
            let from = p.source.strip_prefix("replicate:").map(str::to_string);
            let order = order.unwrap_or_else(|| LoadOrder {
                id: p.id.clone(),
                from: from.clone(),
                rewrite: p.rewrite,
                chunk: None,
                requested_us: now_us(),
                why: "resuming the load the replicate records".into(),
            });
            let src = Source::open(ctx, from.as_deref()).await?;
            tracing::info!(replicate = %name, id = %p.id, next = %p.next, "load resumed");
            (order, p, src)
        }
    };
    let limit = order
        .chunk
        .or(ctx.def.load_chunk)
        .map_or(DEFAULT_CHUNK, |c| c.max(1) as usize);
    let total = ctx
        .db
        .file_info(Fnr(ctx.master.file))
        .map(|i| i.meta.count)
        .unwrap_or(0);
    let started = Instant::now();
    {
        let mut s = lock(&f.st);
        s.phase = format!(
            "loading from {} as of seq {}",
            progress.source, progress.snapshot
        );
        s.has_confirmation = false;
        s.load = Some(LoadStatus {
            id: progress.id.clone(),
            snapshot: progress.snapshot,
            source: progress.source.clone(),
            scanned: 0,
            total,
            loaded: progress.count,
            chunks_this_run: 0,
            resumed_from: progress.next,
            started,
        });
    }
    // The chunk reader owns the source and the snapshot; a read in progress
    // is kept across the loop's turns (see [`ChunkRead`]).
    let mut reader = Some((src, Snapshot::new(progress.snapshot)));
    let mut reading: Option<ChunkRead> = None;
    // What the replicate will hold after each chunk, as this side computes it.
    let mut running = {
        let mut m = FileMeta::new(fnr);
        m.count = progress.count;
        m.digest = progress.digest;
        m
    };
    let mut next = progress.next;
    let mut reading_done = false;
    // Records read from the source and kept in the replicate's view so far.
    let mut seen = (0u64, 0u64);
    // Chunks sent, not acknowledged: (from, to, expected meta after it).
    let mut inflight: VecDeque<(Isn, Option<Isn>, FileMeta)> = VecDeque::new();
    let mut stats = crate::database::LoadStats::default();
    let mut stop_rx = f.stop.subscribe();
    let mut stopping: Option<String> = stop_rx.borrow_and_update().clone();
    let mut last_said = Instant::now();
    loop {
        if let Some(why) = &stopping {
            if inflight.is_empty() {
                return Err(Stop::Stopped(why.clone()));
            }
        }
        let can_read = !reading_done && stopping.is_none() && inflight.len() < LOAD_WINDOW;
        if can_read && reading.is_none() {
            reading = start_read(ctx, f, &mut reader, next, limit, seen);
        }
        tokio::select! {
            changed = stop_rx.changed(), if stopping.is_none() => {
                stopping = match changed {
                    Ok(()) => stop_rx.borrow().clone(),
                    Err(_) => Some("task dropped".into()),
                };
            }
            resp = tokio::time::timeout(ACK_TIMEOUT, conn.recv()), if !inflight.is_empty() => {
                let resp = match resp {
                    Err(_) => return Err(Stop::Link(format!(
                        "no acknowledgement of a loaded chunk from {} for {} s",
                        rep.address, ACK_TIMEOUT.as_secs()
                    ))),
                    Ok(r) => r.map_err(super::feeder::link_err)?,
                };
                let Some((from, to, want)) = inflight.pop_front() else {
                    return Err(Stop::Link("acknowledgement with nothing in flight".into()));
                };
                match resp {
                    Response::LoadAck { progress: p, stats: s, count, digest } => {
                        stats += s;
                        {
                            let mut st = lock(&f.st);
                            if let Some(l) = st.load.as_mut() {
                                l.loaded = p.count;
                                l.chunks_this_run += 1;
                                // Progress in the master's log, every few
                                // seconds (the replicate's node logs what
                                // it applied likewise).
                                if last_said.elapsed() >= PROGRESS_EVERY {
                                    last_said = Instant::now();
                                    let secs = l.started.elapsed().as_secs_f64().max(1e-3);
                                    tracing::info!(replicate = %name, id = %l.id,
                                        scanned = l.scanned, total = l.total, loaded = l.loaded,
                                        rows_per_s = (l.scanned as f64 / secs).round(),
                                        "load progress");
                                }
                            }
                        }
                        if to.is_none() {
                            // The last chunk: the replicate now confirms the snapshot.
                            if (count, digest) != (want.count, want.digest) {
                                return Err(Stop::Fatal(format!(
                                    "replicate {name} after its load: digest {digest} over {count} records, expected {} over {}",
                                    want.digest, want.count
                                )));
                            }
                            let secs = started.elapsed().as_secs_f64();
                            let chunks_last_run = lock(&f.st).load.as_ref().map_or(0, |l| l.chunks_this_run);
                            let summary = LoadSummary {
                                id: order.id.clone(),
                                snapshot: progress.snapshot,
                                source: progress.source.clone(),
                                records: count,
                                written: stats.written,
                                removed: stats.removed,
                                kept: stats.kept,
                                chunks: p.chunks,
                                chunks_last_run,
                                resumed_from: progress.next,
                                seconds_last_run: secs,
                                finished_us: now_us(),
                            };
                            tracing::info!(replicate = %name, records = count, chunks = p.chunks, seconds = secs, "load finished");
                            f.forget_refusal();
                            finish_order(ctx, f, &order.id, progress.snapshot, want, Some(summary))
                                .await
                                .map_err(|e| Stop::Link(e.to_string()))?;
                            return Ok((progress.snapshot, want));
                        }
                        if (p.count, p.digest) != (want.count, want.digest) || Some(p.next) != to {
                            return Err(Stop::Fatal(format!(
                                "replicate {name} acknowledged load progress at isn {} with {} records (digest {}), expected isn {:?} with {} (digest {})",
                                p.next, p.count, p.digest, to, want.count, want.digest
                            )));
                        }
                    }
                    Response::Error { code, message } => {
                        return Err(refused(f, &order.id, Some(from), code, message))
                    }
                    other => return Err(Stop::Link(conn.unexpected(&other, "LoadAck").to_string())),
                }
            }
            Some(joined) = OptionFuture::from(reading.as_mut()), if reading.is_some() => {
                reading = None;
                let (chunk, src, snap) = joined
                    .map_err(|e| Stop::Fatal(format!("the load's chunk reader failed: {e}")))?;
                reader = Some((src, snap));
                let chunk = chunk?;
                match chunk.to {
                    Some(t) => {
                        // Chunks tile the isn space in order.
                        debug_assert!(t > next, "chunk [{next}, {t}) is empty or goes back");
                        next = t;
                    }
                    None => reading_done = true,
                }
                seen.0 += chunk.scanned;
                seen.1 += chunk.records.len() as u64;
                // The next read starts now, while this chunk is sent.
                if !reading_done && stopping.is_none() && inflight.len() + 1 < LOAD_WINDOW {
                    reading = start_read(ctx, f, &mut reader, next, limit, seen);
                }
                // Summed once: the chunk's terms are what the replicate
                // will add (every record in it is new to it).
                let (count, digest) = chunk.sum;
                running.add_sum(count, digest);
                if let Some((top, _)) = chunk.records.last() {
                    running.next_isn = running.next_isn.max(top.0.saturating_add(1));
                }
                let last = match chunk.to {
                    Some(_) => None,
                    None => Some(final_confirmation(ctx, &name, &order.id, progress.snapshot, &running).await?),
                };
                if let (Some(c), false) = (&last, rep.is_partial()) {
                    check_against_log(ctx, &name, c).await?;
                }
                {
                    let mut st = lock(&f.st);
                    if let Some(l) = st.load.as_mut() {
                        l.scanned += chunk.scanned;
                    }
                }
                let req = Request::Link(LinkRequest::LoadChunk {
                    id: order.id.clone(),
                    from: chunk.from,
                    to: chunk.to,
                    records: chunk
                        .records
                        .into_iter()
                        .map(|(i, b)| (i, ByteBuf::from(b)))
                        .collect(),
                    count,
                    digest,
                    last,
                });
                timed("sending a loaded chunk", conn.send(&req)).await?;
                inflight.push_back((chunk.from, chunk.to, running));
            }
        }
    }
}

/// What the replicate's error answer to a load request means for the load.
/// A chunk out of sequence (another link went first), a load in progress, a
/// node that cannot take it now, or one that failed inside (outcome unknown):
/// the link is retried, and the load resumes from what the replicate recorded. Anything else refuses the request itself:
/// retried once, and an error if the same request is refused again.
fn refused(f: &Feeder, load: &str, at: Option<Isn>, code: ErrorCode, message: String) -> Stop {
    match code {
        ErrorCode::OutOfSequence
        | ErrorCode::LoadOutOfSequence
        | ErrorCode::LoadInProgress
        | ErrorCode::Unavailable
        | ErrorCode::OutcomeUnknown => Stop::Link(message),
        code => f.load_refused(
            LoadRefusal {
                load: load.to_string(),
                at,
                code,
            },
            message,
        ),
    }
}

/// The confirmation a load ends with: the snapshot seq, its master time.
async fn final_confirmation(
    ctx: &Arc<Ctx>,
    name: &str,
    id: &str,
    snapshot: Seq,
    meta: &FileMeta,
) -> Result<Confirmation, Stop> {
    let c = ctx.clone();
    let rec = if snapshot.0 == 0 {
        None
    } else {
        blocking(move || c.db.read_log_record(c.log, snapshot))
            .await
            .map_err(|e| Stop::Fatal(e.to_string()))?
    };
    Ok(Confirmation {
        replicate: name.to_string(),
        master_db: ctx.db.dbid(),
        master: Fnr(ctx.master.file),
        seq: snapshot,
        incarnation: rec.as_ref().map_or(0, |r| r.incarnation),
        master_time_us: rec.as_ref().map_or(0, |r| r.time_us),
        digest: meta.digest,
        count: meta.count,
        applied_us: 0,
        loaded_by: Some(id.to_string()),
    })
}

/// A full replicate's load must reproduce the master's digest at the snapshot.
async fn check_against_log(ctx: &Arc<Ctx>, name: &str, c: &Confirmation) -> Result<(), Stop> {
    if c.seq.0 == 0 {
        return Ok(());
    }
    let (cx, seq) = (ctx.clone(), c.seq);
    let rec = blocking(move || cx.db.read_log_record(cx.log, seq))
        .await
        .map_err(|e| Stop::Fatal(e.to_string()))?;
    if let Some(r) = rec {
        if (r.master_count, r.master_digest) != (c.count, c.digest) {
            return Err(Stop::Fatal(format!(
                "load of {name}: the content read as of seq {seq} has digest {} over {} records, but the master's log says {} over {}",
                c.digest, c.count, r.master_digest, r.master_count
            )));
        }
    }
    Ok(())
}

/// Records a finished load: the order is cleared, the anchor set.
pub(super) async fn finish_order(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    id: &str,
    seq: Seq,
    meta: FileMeta,
    summary: Option<LoadSummary>,
) -> Result<(), OpError> {
    let c = ctx.control.clone();
    let (name, id, def) = (f.name().to_string(), id.to_string(), f.def_hash);
    blocking(move || {
        c.update_replicate(&name, |r| {
            if r.load.as_ref().is_some_and(|o| o.id == id) {
                r.load = None;
            }
            r.anchor = Some(Anchor {
                seq,
                count: meta.count,
                digest: meta.digest,
                def,
            });
            // A reload makes the replicate whole again.
            r.gaps.clear();
            r.error = None;
            r.diverged = None;
            r.log("info", &format!("load {id} finished at seq {seq}"));
            if summary.is_some() {
                r.last_load = summary;
            }
        })
    })
    .await
}

// ---------------------------------------------------------------- verification

/// Compares a replicate with the master as of its confirmed seq (its feeder
/// is paused by the caller, so the replicate stays there).
pub(super) async fn verify(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    max_isns: usize,
) -> Result<VerifyReport, OpError> {
    let rep = &f.rep;
    let (mut conn, state) = open_link(ctx, rep).await.map_err(Stop::into_op)?;
    if let Some(p) = state.load {
        return Err(OpError::Refused(format!(
            "replicate {} is being loaded ({} at isn {}): verify it when the load has ended",
            f.name(),
            p.id,
            p.next
        )));
    }
    let at = state.confirmation.as_ref().map_or(Seq(0), |c| c.seq);
    let expected = super::feeder::expected_at(ctx, f, at)
        .await
        .map_err(|e| OpError::Refused(e.to_string()))?;
    let mut report = VerifyReport {
        replicate: f.name().to_string(),
        seq: at,
        equal: false,
        expected_count: expected.count,
        expected_digest: expected.digest,
        count: state.count,
        digest: state.digest,
        ranges_checked: 0,
        ranges_differing: 0,
        differences: Vec::new(),
        truncated: false,
    };
    // A gap (confirm set) makes the expected digest the replicate's own
    // at that point, not the master's: then only the full comparison tells.
    let gaps = ctx.control.has_gaps(f.name());
    if !gaps && (state.count, state.digest) == (expected.count, expected.digest) {
        report.equal = true;
        return Ok(report);
    }
    let mut master_view = FileMeta::new(Fnr(rep.def.file));
    // Range by range, as of `at`.
    let mut src = Source::Master;
    let mut snap = Snapshot::new(at);
    let mut from = Isn(1);
    let file = Fnr(rep.def.file);
    loop {
        let chunk = next_chunk(ctx, rep, &mut src, &mut snap, from, 4096)
            .await
            .map_err(Stop::into_op)?;
        report.ranges_checked += 1;
        let (count, digest) = chunk_meta(&chunk.records);
        master_view.count += count;
        master_view.digest.0 = master_view.digest.0.wrapping_add(digest.0);
        let theirs = range(&mut conn, file, chunk.from, chunk.to, false).await?;
        if (theirs.0, theirs.1) != (count, digest) {
            report.ranges_differing += 1;
            let held = range(&mut conn, file, chunk.from, chunk.to, true).await?.2;
            diff(&chunk.records, &held, &mut report, max_isns);
        }
        match chunk.to {
            Some(t) => from = t,
            None => break,
        }
    }
    report.expected_count = master_view.count;
    report.expected_digest = master_view.digest;
    report.equal = report.differences.is_empty() && !report.truncated;
    Ok(report)
}

async fn range(
    conn: &mut Conn,
    file: Fnr,
    from: Isn,
    to: Option<Isn>,
    records: bool,
) -> Result<(u64, Digest, Vec<(Isn, Vec<u8>)>), OpError> {
    let req = Request::Read(ReadRequest::RangeDigest {
        file,
        from,
        to,
        records,
    });
    match conn.call(&req).await? {
        Response::Range {
            count,
            digest,
            records,
        } => Ok((
            count,
            digest,
            records
                .into_iter()
                .map(|(i, b)| (i, b.into_vec()))
                .collect(),
        )),
        other => Err(conn.unexpected(&other, "Range").into()),
    }
}

fn diff(want: &[(Isn, Vec<u8>)], held: &[(Isn, Vec<u8>)], report: &mut VerifyReport, max: usize) {
    let w: BTreeMap<Isn, &Vec<u8>> = want.iter().map(|(i, b)| (*i, b)).collect();
    let h: BTreeMap<Isn, &Vec<u8>> = held.iter().map(|(i, b)| (*i, b)).collect();
    let mut push = |isn: Isn, what: &str| {
        if report.differences.len() < max {
            report.differences.push((isn, what.to_string()));
        } else {
            report.truncated = true;
        }
    };
    let isns: std::collections::BTreeSet<Isn> = w.keys().chain(h.keys()).copied().collect();
    for i in isns {
        match (w.get(&i), h.get(&i)) {
            (Some(a), Some(b)) if a != b => push(i, "changed"),
            (Some(_), None) => push(i, "missing"),
            (None, Some(_)) => push(i, "extra"),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- confirm set

/// Moves a replicate's confirmation forward to `seq`, skipping what lies
/// between, with a permanent gap record (written first). Its feeder is
/// paused by the caller.
pub(super) async fn confirm_set(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    seq: Seq,
    reason: &str,
) -> Result<crate::node::control::Gap, OpError> {
    let (mut conn, state) = open_link(ctx, &f.rep).await.map_err(Stop::into_op)?;
    if state.load.is_some() {
        return Err(OpError::Refused(format!(
            "replicate {} is being loaded",
            f.name()
        )));
    }
    let Some(conf) = state.confirmation else {
        return Err(OpError::Refused(format!(
            "replicate {} has no confirmation yet: load it (etp replicate init)",
            f.name()
        )));
    };
    if seq <= conf.seq {
        return Err(OpError::Refused(format!(
            "replicate {} already confirms seq {}; confirm set only moves forward (moving back would apply changes twice)",
            f.name(),
            conf.seq
        )));
    }
    let (c, s2) = (ctx.clone(), seq);
    let rec = blocking(move || c.db.read_log_record(c.log, s2))
        .await?
        .ok_or_else(|| {
            OpError::Refused(format!(
                "the master's log holds no durable seq {seq} (it stands at {})",
                master_seq(ctx)
            ))
        })?;
    let gap = crate::node::control::Gap {
        from: Seq(conf.seq.0 + 1),
        to: seq,
        reason: reason.to_string(),
        time_us: now_us(),
    };
    let anchor = Anchor {
        seq,
        count: state.count,
        digest: state.digest,
        def: f.def_hash,
    };
    {
        let (c, name, g) = (ctx.control.clone(), f.name().to_string(), gap.clone());
        blocking(move || {
            c.update_replicate(&name, |r| {
                r.log(
                    "gap",
                    &format!(
                        "confirm set: seq {} to {} skipped: {}",
                        g.from, g.to, g.reason
                    ),
                );
                r.gaps.push(g);
                r.anchor = Some(anchor);
            })
        })
        .await?;
    }
    let req = Request::Link(LinkRequest::LinkApply {
        follows: conf.seq,
        changes: Vec::new(),
        confirmation: Confirmation {
            replicate: f.name().to_string(),
            master_db: ctx.db.dbid(),
            master: Fnr(ctx.master.file),
            seq,
            incarnation: rec.incarnation,
            master_time_us: rec.time_us,
            digest: state.digest,
            count: state.count,
            applied_us: 0,
            loaded_by: None,
        },
        txn_ends: Vec::new(),
    });
    // Applied is answered once queued, and the replicate reports its syncs
    // unasked (`Synced`): the confirm set is done once its seq is durable.
    conn.send(&req).await?;
    loop {
        match conn.recv().await? {
            Response::Applied { .. } => break,
            Response::Synced { .. } => {}
            other => return Err(conn.unexpected(&other, "Applied").into()),
        }
    }
    conn.send(&Request::Link(LinkRequest::LinkSync { seq }))
        .await?;
    loop {
        match conn.recv().await? {
            Response::Synced { durable_seq } if durable_seq >= seq => break,
            Response::Synced { .. } => {}
            other => return Err(conn.unexpected(&other, "Synced").into()),
        }
    }
    let mut m = FileMeta::new(Fnr(f.rep.def.file));
    m.count = state.count;
    m.digest = state.digest;
    *lock(&f.expected) = Some((seq, m));
    Ok(gap)
}
