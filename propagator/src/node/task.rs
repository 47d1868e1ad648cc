//! The replication task of one master: a feeder per replicate.
//!
//! Each feeder owns one link to its replicate's node, its own cursor and
//! its own window of batches in flight, so a slow or unreachable replicate
//! never holds back another. On every (re)connect it asks the replicate for
//! its confirmation and resumes after the confirmed seq — never from its own
//! memory — after checking the replicate's digest against what the master
//! expects at that seq. It then ships whole master transactions in batches
//! as soon as they are durable on the master (it wakes on the database's
//! durable-LSN watch: no polling), and checks every acknowledgement's digest.
//!
//! Partial replicates get the projection of the records their predicate
//! selects over the full after-image: a record that leaves the selection is
//! deleted from the replicate, one that enters is stored. A record on which
//! the predicate fails to evaluate (a missing field, a wrong type) counts as
//! not selected ([`Predicate::selects`]).
//!
//! What happens on a failure depends on the node's [`Policy`]:
//! - a lost link is retried with backoff capped at the task's restart
//!   interval (automatic policy and a restart interval), else the feeder
//!   stops until `etp task start|restart`;
//! - a digest mismatch or a diverged replicate puts it in `error` (recorded
//!   in its error log); the automatic policy retries it with backoff, the
//!   manual one waits for `etp replicate reset-error`;
//! - a replicate that needs a load (new, or redefined) is loaded by the
//!   automatic policy ([`super::load`]) and waits for `etp replicate init`
//!   under the manual one (unless its master is still empty);
//! - the maintenance policy stops every feeder at a safe point (between
//!   acknowledged batches or chunks) and starts none.

use super::control::Control;
use super::feeder::*;
use super::stream::run;
use crate::database::Database;
use crate::digest::FileMeta;
use crate::ids::{Fnr, Seq};
use crate::topology::{MasterDef, Replicate, TaskDef};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every task of a node shares: its database, its control records,
/// and the topology text it serves (sent to a wiped replicate site to sync
/// it down).
pub struct Env {
    pub db: Database,
    pub control: Arc<Control>,
    pub topology: Arc<str>,
}

pub struct Task {
    pub(super) ctx: Arc<Ctx>,
    pub(super) feeders: Vec<Arc<Feeder>>,
}

impl Task {
    /// Starts the feeders (unless the policy or a replicate's state says
    /// not to); call inside a tokio runtime.
    pub fn start(
        env: Env,
        master: MasterDef,
        def: TaskDef,
        reps: Vec<Replicate>,
        run: bool,
        known: &BTreeMap<(String, u128), (Seq, FileMeta)>,
    ) -> Task {
        let Env {
            db,
            control,
            topology,
        } = env;
        let ctx = Arc::new(Ctx {
            db,
            topology,
            log: Fnr(master.log),
            window: def.window.map_or(DEFAULT_WINDOW, |w| w as usize),
            batch: def.batch.map_or(DEFAULT_BATCH, |b| b as usize),
            master,
            def,
            control,
            reps: reps.clone(),
        });
        let feeders = reps
            .into_iter()
            .map(|rep| {
                let def_hash = definition_hash(&rep);
                let expected = known.get(&(rep.def.name.clone(), def_hash)).copied();
                Arc::new(Feeder {
                    def_hash,
                    rep,
                    st: Mutex::new(FeedState {
                        phase: "starting".into(),
                        progress_us: now_us(),
                        ..FeedState::default()
                    }),
                    confirmed: tokio::sync::watch::channel(Seq(0)).0,
                    applied: tokio::sync::watch::channel(Seq(0)).0,
                    handle: Mutex::new(None),
                    expected: Mutex::new(expected),
                    stop: tokio::sync::watch::channel(None).0,
                    refusal: Mutex::new(None),
                })
            })
            .collect();
        let t = Task { ctx, feeders };
        if run {
            t.start_feeders();
        }
        t
    }

    /// What each feeder knows of its replicate's expected state: by name
    /// and definition.
    pub(super) fn expected_states(&self) -> Vec<((String, u128), (Seq, FileMeta))> {
        self.feeders
            .iter()
            .filter_map(|f| Some(((f.name().to_string(), f.def_hash), (*lock(&f.expected))?)))
            .collect()
    }

    pub fn master(&self) -> Fnr {
        Fnr(self.ctx.master.file)
    }

    pub fn feeds(&self, replicate: &str) -> bool {
        self.feeders.iter().any(|f| f.name() == replicate)
    }

    pub(super) fn feeder(&self, replicate: &str) -> Option<&Arc<Feeder>> {
        self.feeders.iter().find(|f| f.name() == replicate)
    }

    /// Starts every feeder that is not running (those the policy and their
    /// state allow: see [`run`]).
    pub fn start_feeders(&self) {
        for f in &self.feeders {
            self.start_one(f);
        }
    }

    pub(super) fn start_one(&self, f: &Arc<Feeder>) {
        let mut h = lock(&f.handle);
        if h.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        f.stop.send_replace(None);
        f.set_phase("starting");
        let (ctx, f2) = (self.ctx.clone(), f.clone());
        *h = Some(tokio::spawn(async move { run(ctx, f2).await }));
    }

    /// Stops every feeder at a safe point: between acknowledged batches (a
    /// batch is one transaction on the replicate, applied whole or not at
    /// all) or between load chunks.
    pub async fn stop_feeders(&self, why: &str) {
        for f in &self.feeders {
            f.stop.send_replace(Some(why.to_string()));
        }
        for f in &self.feeders {
            stop_one(f, why).await;
        }
    }

    pub(super) async fn stop_feeder(&self, f: &Arc<Feeder>, why: &str) {
        f.stop.send_replace(Some(why.to_string()));
        stop_one(f, why).await;
    }

    /// Stops at once (shutdown): the replicate sees whole batches or none.
    pub fn abort(&self) {
        for f in &self.feeders {
            if let Some(h) = lock(&f.handle).take() {
                h.abort();
            }
            let mut s = lock(&f.st);
            s.streaming = false;
            s.load = None;
            s.phase = "stopped (node shutting down)".into();
        }
    }

    /// A receiver of the named replicate's confirmed (durable) seq, or with
    /// `applied` of the seq it has applied (visible, its sync to follow), if
    /// this task feeds it.
    pub fn watch_confirmed(
        &self,
        replicate: &str,
        applied: bool,
    ) -> Option<tokio::sync::watch::Receiver<Seq>> {
        self.feeder(replicate).map(|f| {
            if applied {
                f.applied.subscribe()
            } else {
                f.confirmed.subscribe()
            }
        })
    }
}

async fn stop_one(f: &Arc<Feeder>, why: &str) {
    let h = lock(&f.handle).take();
    if let Some(mut h) = h {
        // Enough for the batches in flight to be acknowledged.
        let grace = ACK_TIMEOUT + Duration::from_secs(2);
        if tokio::time::timeout(grace, &mut h).await.is_err() {
            h.abort();
        }
    }
    let mut s = lock(&f.st);
    s.streaming = false;
    s.load = None;
    s.phase = format!("stopped ({why})");
}
