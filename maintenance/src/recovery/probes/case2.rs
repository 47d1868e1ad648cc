//! Case 2 (a damaged replicate unit): a copy of the unit with an intact
//! protection log, reload against roll-forward, a restored replicate behind
//! its master, the cleanup horizon, partial replicates.

use super::*;

impl LiveProbes {
    pub(super) fn case2(&self, name: &str) -> Answer {
        let unit = self.unit();
        let Some(first) = unit.first().copied() else {
            return Answer::unanswerable("no replicate is damaged: there is no unit to recover");
        };
        let Some(m) = self
            .masters
            .iter()
            .find(|m| m.db == first.master_db && m.fnr == first.master)
        else {
            return Answer::unanswerable(format!(
                "replicate {}'s master is not defined",
                first.name
            ));
        };
        let names: Vec<&str> = unit.iter().map(|r| r.name.as_str()).collect();
        match name {
            "replicate_partial" => {
                let partial: Vec<&str> = unit
                    .iter()
                    .filter(|r| r.partial)
                    .map(|r| r.name.as_str())
                    .collect();
                if partial.is_empty() {
                    Answer::no(format!("{} full", names.join(", ")))
                } else {
                    Answer::yes(format!(
                        "{} has a field list or a selection",
                        partial.join(", ")
                    ))
                }
            }
            "full_replicate_available" => self.full_replicate_answer(m, &names),
            _ => {
                let (set, seq) = match self.unit_copy() {
                    Err(a) => return a,
                    Ok(None) => {
                        return Answer::no(format!(
                            "no copy set holds replicate {} with its confirmation",
                            first.name
                        ))
                    }
                    Ok(Some(x)) => x,
                };
                let level = m.level();
                match name {
                    "unit_copy_with_intact_plog" => self.plog_covers(first.db, set),
                    "reload_quicker_than_roll_forward" | "replicate_copy_above_cleanup_horizon" => {
                        match (level, m.task.as_ref()) {
                            (Some(last), Some(t)) => {
                                let first_held = last.saturating_sub(t.log_records) + 1;
                                if seq + 1 >= first_held {
                                    Answer::yes(format!(
                                        "copy set {} confirms seq {seq}; master {}'s log holds seq {first_held} to {last}, so replication can bring it up from there",
                                        set.id, m.name
                                    ))
                                } else {
                                    Answer::no(format!(
                                        "copy set {} confirms seq {seq}, but master {}'s log holds only seq {first_held} to {last}",
                                        set.id, m.name
                                    ))
                                }
                            }
                            _ => Answer::unanswerable(format!(
                                "the task of master {} does not report its log",
                                m.name
                            )),
                        }
                    }
                    "restored_replicate_behind_master" => match level {
                        None => Answer::unanswerable(format!(
                            "master {}'s database does not answer",
                            m.name
                        )),
                        Some(last) => yes_no(
                            seq < last,
                            format!(
                                "copy set {} confirms seq {seq}; the master is at seq {last}",
                                set.id
                            ),
                        ),
                    },
                    other => Answer::unanswerable(format!("no probe is named `{other}`")),
                }
            }
        }
    }
}
