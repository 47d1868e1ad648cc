//! Which files of a kind (administration, master, log, replicate,
//! confirmation) are damaged, by their node's word or by their content.

use super::*;

impl LiveProbes {
    pub(super) fn damage(&self, what: &str) -> Answer {
        let mut bad = Vec::new();
        let mut seen = Vec::new();
        let mut note = |desc: String, s: &Option<Stat>, own: bool| {
            seen.push(desc.clone());
            if let Some(s) = s {
                let d = if own {
                    s.own_damage()
                } else {
                    s.damaged.as_ref().map(|d| d.reason.clone())
                };
                if let Some(d) = d {
                    bad.push(format!("{desc} is damaged: {d}"));
                }
            }
        };
        match what {
            "master" | "log" => {
                for m in &self.masters {
                    if what == "master" {
                        note(
                            format!("master {} (file {}) on database {}", m.name, m.fnr, m.db),
                            &m.stat,
                            true,
                        );
                    } else {
                        note(
                            format!(
                                "log file {} of master {} on database {}",
                                m.log, m.name, m.db
                            ),
                            &m.log_stat,
                            true,
                        );
                    }
                }
            }
            "replicate" | "confirmation" => {
                for r in &self.reps {
                    if what == "replicate" {
                        note(
                            format!(
                                "replicate {} (file {}) on database {}",
                                r.name, r.file, r.db
                            ),
                            &r.stat,
                            true,
                        );
                    } else {
                        note(
                            format!(
                                "confirmation file {} of replicate {} on database {}",
                                r.confirmation, r.name, r.db
                            ),
                            &r.conf_stat,
                            true,
                        );
                    }
                }
            }
            _ => {
                for a in &self.admins {
                    seen.push(format!(
                        "administration file {} on database {}",
                        a.fnr, a.db
                    ));
                    if let Some(d) = &a.damaged {
                        bad.push(format!(
                            "administration file {} on database {} is damaged: {d}",
                            a.fnr, a.db
                        ));
                    }
                }
            }
        }
        if bad.is_empty() {
            Answer::no(format!("intact: {}", seen.join("; ")))
        } else {
            Answer::yes(bad.join("; "))
        }
    }
}
