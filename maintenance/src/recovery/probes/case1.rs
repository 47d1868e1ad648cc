//! Case 1 (a database restarted, replicates cut off or a client cut
//! mid-transaction): the master's state, interrupted transactions, whether
//! the tasks restart by themselves, replicates in error.

use super::*;

impl LiveProbes {
    pub(super) fn case1(&self, name: &str) -> Answer {
        let Some(m) = self.master() else {
            return Answer::unanswerable("the topology defines no master");
        };
        match name {
            "master_transaction_interrupted" => match &self.pending {
                None => Answer::unanswerable(
                    "no client journal given (--journal DIR): whether a client's update failed or stayed unanswered when the link broke is known only to the clients (a transaction left open was backed out by the node); give the journal, or answer for the clients",
                ),
                Some(p) if p.is_empty() => Answer::no(format!(
                    "the client journal {} holds no pending transaction",
                    self.sources.journal.as_deref().unwrap_or(Path::new("")).display()
                )),
                Some(p) => Answer::yes(format!(
                    "{} pending transaction(s) in the client journal: {}",
                    p.len(),
                    p.iter()
                        .take(5)
                        .map(|e| format!(
                            "{} ({}; {})",
                            e.id,
                            e.summary(),
                            e.last_error.as_deref().unwrap_or("not sent")
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            },
            "interrupted_transaction_used_et" => match &self.pending {
                Some(p) if !p.is_empty() => Answer::yes(format!(
                    "each of the {} journaled transaction(s) ends with ET under a client id, so the node backed out its incomplete part and a rerun of an id already committed is refused as done",
                    p.len()
                )),
                _ => Answer::unanswerable("no interrupted transaction is journaled"),
            },
            "master_reachable" => {
                let mut down: Vec<String> = Vec::new();
                if !self.reachable.contains(&m.db) {
                    down.push(format!("database {} of master {}", m.db, m.name));
                }
                for r in self.replicates_of(m) {
                    if !self.reachable.contains(&r.db) {
                        down.push(format!("database {} of replicate {}", r.db, r.name));
                    }
                }
                if down.is_empty() {
                    Answer::yes(format!(
                        "the databases of master {} and of its replicates answer",
                        m.name
                    ))
                } else {
                    Answer::no(format!("not answering: {}", down.join("; ")))
                }
            }
            "tasks_restart_by_themselves" => match &m.task {
                None => Answer::no(format!(
                    "master {}'s node reports no task for it",
                    m.name
                )),
                Some(t) => {
                    let mut why = Vec::new();
                    if t.restart_interval_s.is_none() {
                        why.push("it has no restart interval".to_string());
                    }
                    if t.policy != propagator::node::control::Policy::Automatic {
                        why.push(format!("the policy is {:?}", t.policy));
                    }
                    let stopped: Vec<&str> = t
                        .replicates
                        .iter()
                        // Offline with its feeder ended: it waits for an
                        // operator (a shunned or restoring one is not fed
                        // by design, and says so in its state).
                        .filter(|r| {
                            r.state == propagator::wire::ReplicaState::Offline && !r.feeding
                        })
                        .map(|r| r.name.as_str())
                        .collect();
                    if !stopped.is_empty() {
                        why.push(format!("feeding of {} is stopped", stopped.join(", ")));
                    }
                    if why.is_empty() {
                        Answer::yes(format!(
                            "task of {}: restart interval {} s, policy automatic, no feeder stopped",
                            m.name,
                            t.restart_interval_s.unwrap_or_default()
                        ))
                    } else {
                        Answer::no(format!("task of {}: {}", m.name, why.join("; ")))
                    }
                }
            },
            "replicate_in_error" => {
                let bad: Vec<String> = self
                    .replicates_of(m)
                    .filter(|r| r.state.as_deref() == Some("error"))
                    .map(|r| {
                        format!(
                            "{} is in error ({})",
                            r.name,
                            r.reason.as_deref().unwrap_or("no reason given")
                        )
                    })
                    .collect();
                if bad.is_empty() {
                    Answer::no(format!("no replicate of {} is in error", m.name))
                } else {
                    Answer::yes(bad.join("; "))
                }
            }
            other => self.case2(other),
        }
    }
}
