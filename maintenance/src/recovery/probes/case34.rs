//! Cases 3 and 4 (a damaged log, or master and log): copies of master and
//! log, the log's coverage, a full replicate to rebuild from, replicates
//! ahead of the master.

use super::*;

impl LiveProbes {
    /// Cases 3 and 4: the master and its log.
    pub(super) fn case34(&self, name: &str) -> Answer {
        let Some(m) = self.master() else {
            return Answer::unanswerable("the topology defines no master");
        };
        let level = match m.level() {
            Some(l) => l,
            None => {
                return Answer::unanswerable(format!(
                    "master {}'s database {} does not answer",
                    m.name, m.db
                ))
            }
        };
        if name == "master_consistent" {
            return match &m.stat {
                None => Answer::unanswerable(format!("master {} cannot be read", m.name)),
                Some(s) => match s.own_damage() {
                    None => Answer::yes(format!(
                        "master {} holds {} records with digest {}, its recorded level at seq {level}{}",
                        m.name,
                        s.count,
                        s.digest,
                        s.damaged
                            .as_ref()
                            .map(|d| format!(" (marked only as its log's partner: {d})"))
                            .unwrap_or_default()
                    )),
                    Some(d) => Answer::no(format!("master {}: {d}", m.name)),
                },
            };
        }
        let set = match self.newest_set(m.db, m.fnr) {
            Err(a) => return a,
            Ok(s) => s,
        };
        let set_seq = |s: &backup::CopySet| s.seqs.get(&m.fnr).map_or(0, |q| q.0);
        match name {
            "master_log_copy_with_intact_plog" => match set {
                None => Answer::no(format!("no copy set holds master {}", m.name)),
                Some(s) if s.member(m.log).is_none() => Answer::no(format!(
                    "copy set {} holds master {} without its log",
                    s.id, m.name
                )),
                Some(s) => self.plog_covers(m.db, s),
            },
            "restored_log_behind_master" => match set {
                None => Answer::unanswerable(format!("no copy set holds master {}", m.name)),
                Some(s) if set_seq(s) < level => Answer::yes(format!(
                    "copy set {} holds the log at seq {}; the master is at seq {level}",
                    s.id,
                    set_seq(s)
                )),
                Some(s) => Answer::no(format!(
                    "copy set {} holds the log at seq {}, the master's level",
                    s.id,
                    set_seq(s)
                )),
            },
            "master_copy_exists" => match set {
                Some(s) => Answer::yes(format!(
                    "copy set {} holds master {} at seq {} (LSN {})",
                    s.id,
                    m.name,
                    set_seq(s),
                    s.lsn
                )),
                None => Answer::no(format!("no copy set holds master {}", m.name)),
            },
            "log_copy_matches_master_copy" => match set {
                Some(s) if s.member(m.log).is_some() => Answer::yes(format!(
                    "copy set {} holds master {} and log file {} taken at one LSN {}",
                    s.id, m.name, m.log, s.lsn
                )),
                Some(s) => Answer::no(format!("copy set {} lacks log file {}", s.id, m.log)),
                None => Answer::unanswerable(format!("no copy set holds master {}", m.name)),
            },
            "master_copy_newer_than_full_replicate" => {
                let Some(s) = set else {
                    return Answer::no(format!("no copy set holds master {}", m.name));
                };
                match self
                    .replicates_of(m)
                    .filter(|r| !r.partial && !r.damaged())
                    .filter_map(|r| r.confirmed.map(|c| (r, c.0)))
                    .max_by_key(|(_, q)| *q)
                {
                    None => Answer::yes(format!(
                        "no intact full replicate; copy set {} is at seq {}",
                        s.id,
                        set_seq(s)
                    )),
                    Some((r, q)) if set_seq(s) >= q => Answer::yes(format!(
                        "copy set {} is at seq {}; the newest full replicate {} confirms seq {q}",
                        s.id,
                        set_seq(s),
                        r.name
                    )),
                    Some((r, q)) => Answer::no(format!(
                        "copy set {} is at seq {}, below full replicate {} at seq {q}",
                        s.id,
                        set_seq(s),
                        r.name
                    )),
                }
            }
            "replicate_ahead_of_master" => {
                let Some(s) = set else {
                    return Answer::unanswerable(format!("no copy set holds master {}", m.name));
                };
                let ahead: Vec<String> = self
                    .replicates_of(m)
                    .filter_map(|r| r.confirmed.map(|c| (r, c.0)))
                    .filter(|(_, q)| *q > set_seq(s))
                    .map(|(r, q)| format!("{} at seq {q}", r.name))
                    .collect();
                if ahead.is_empty() {
                    Answer::no(format!(
                        "no replicate confirms beyond copy set {}'s seq {}",
                        s.id,
                        set_seq(s)
                    ))
                } else {
                    Answer::yes(format!(
                        "beyond copy set {}'s seq {}: {}",
                        s.id,
                        set_seq(s),
                        ahead.join(", ")
                    ))
                }
            }
            other => self.case5(other),
        }
    }
}
