//! Case 5 (a damaged administration file): the topology a node still
//! serves, a copy of the administration file, an export.

use super::*;

impl LiveProbes {
    /// The topology the nodes with an intact administration file serve.
    pub(super) fn served_topology(&self) -> Option<&str> {
        self.admins
            .iter()
            .filter(|a| a.damaged.is_none())
            .find_map(|a| a.topology.as_deref())
    }

    pub(super) fn case5(&self, name: &str) -> Answer {
        let damaged = self.damaged_admins();
        let Some(a) = damaged.first() else {
            return Answer::unanswerable("no administration file is damaged");
        };
        match name {
            "admin_export_current" => {
                let Some(export) = &self.export else {
                    return Answer::no("no topology export given (--export FILE)");
                };
                let path = self
                    .sources
                    .export
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display();
                match Valid::parse(export) {
                    Err(e) => Answer::no(format!("the export {path} is not a valid topology: {e}")),
                    Ok(_) => match self.served_topology() {
                        Some(t) if t == export => Answer::yes(format!(
                            "the export {path} equals the topology the intact nodes serve"
                        )),
                        Some(_) => Answer::no(format!(
                            "the export {path} differs from the topology the intact nodes serve"
                        )),
                        None => Answer::unanswerable(format!(
                            "the export {path} is a valid topology, but no node with an intact administration file serves one to compare it with"
                        )),
                    },
                }
            }
            _ => {
                let set = match self.newest_set(a.db, a.fnr) {
                    Err(x) => return x,
                    Ok(s) => s,
                };
                let Some(set) = set else {
                    return Answer::no(format!(
                        "no copy set of database {} holds the administration file {}",
                        a.db, a.fnr
                    ));
                };
                match name {
                    "admin_copy_with_intact_plog" => self.plog_covers(a.db, set),
                    "admin_copy_exists" => Answer::yes(format!(
                        "copy set {} holds the administration file of database {} (LSN {})",
                        set.id, a.db, set.lsn
                    )),
                    "definitions_changed_after_copy" => {
                        let Some(area) = &self.sources.area else {
                            return Answer::unanswerable("no copy area given");
                        };
                        match copied_topology(area, set, a.fnr) {
                            Err(e) => Answer::unanswerable(format!(
                                "the administration file in copy set {} cannot be read: {e:#}",
                                set.id
                            )),
                            Ok(copied) => match self.served_topology() {
                                None => Answer::unanswerable(
                                    "no node with an intact administration file serves a topology to compare with",
                                ),
                                Some(now) => {
                                    let changed = Some(now) != copied.as_deref();
                                    yes_no(
                                        changed,
                                        format!(
                                            "the topology in copy set {} {} the one the intact nodes serve",
                                            set.id,
                                            if changed { "differs from" } else { "equals" }
                                        ),
                                    )
                                }
                            },
                        }
                    }
                    other => Answer::unanswerable(format!("no probe is named `{other}`")),
                }
            }
        }
    }
}
