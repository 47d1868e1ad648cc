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
                    "reload_quicker_than_roll_forward" => {
                        // The unit's members as copied, against the
                        // protection log a roll-forward would write and
                        // read on the replicate's database: one applied
                        // change per master change since the copy's
                        // confirmed seq, at about the size of the master's
                        // log records (each carries the same before- and
                        // after-images).
                        let copy: u64 = set.members.iter().map(|m| m.copy.bytes).sum();
                        match (level, m.task.as_ref()) {
                            (Some(last), Some(t)) if t.log_records > 0 => {
                                let changes = last.saturating_sub(seq);
                                let each = t.log_bytes / t.log_records;
                                let replay = changes.saturating_mul(each);
                                yes_no(
                                    replay > copy,
                                    format!(
                                        "about {} of protection log to replay ({changes} change(s) since copy set {}'s seq {seq}, about {each} bytes each) against {} of copy to reload",
                                        human_bytes(replay),
                                        set.id,
                                        human_bytes(copy)
                                    ),
                                )
                            }
                            _ => Answer::unanswerable(format!(
                                "the task of master {} does not report its log",
                                m.name
                            )),
                        }
                    }
                    "replicate_copy_above_cleanup_horizon" => match (level, m.task.as_ref()) {
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
                    },
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

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}
