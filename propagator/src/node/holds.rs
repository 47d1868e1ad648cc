//! Held replicates (seed 001's restored replica): a replicate file that
//! serves no current reads — restored from a copy and not yet caught up,
//! shunned or in error at its master, or being loaded — refuses a client's
//! read unless the client asks for stale reads; its master's task holds it
//! (shun, error) and releases it once it has confirmed the master's level.

use super::*;
use crate::catalog::Hold;
use crate::confirmation::{decode as decode_confirmation, Decoded};

impl Node {
    /// The confirmation file of replicate file `file` of this node, by the
    /// topology it holds (None: no replicate of its topology lives there).
    pub(super) fn confirmation_of(&self, file: Fnr) -> Option<Fnr> {
        let me = self.db.dbid().0;
        lock(&self.topology).as_ref().and_then(|v| {
            v.replicates
                .iter()
                .find(|r| r.def.database == me && r.def.file == file.0)
                .map(|r| Fnr(r.def.confirmation))
        })
    }

    /// What [`held`] needs to judge the reads among `cmds` that want a
    /// current view: each file with its confirmation file.
    /// Only replicates of its topology are judged: every other read costs
    /// nothing more.
    pub(super) fn current_reads(&self, cmds: &[Command]) -> Vec<(Fnr, Fnr)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Read {
                    file, stale: false, ..
                } => Some((*file, self.confirmation_of(*file)?)),
                _ => None,
            })
            .collect()
    }

    /// Link: holds this link's replicate, or releases it once its
    /// confirmation is at `level` or beyond.
    pub(super) async fn link_hold(
        &self,
        conv: &Conversation,
        hold: Option<Hold>,
        level: Seq,
        releasing: Option<Hold>,
    ) -> Response {
        let Some(link) = &conv.link else {
            return Response::error("Hold before LinkOpen");
        };
        let owner = self.link_owner(link.file);
        let _owner = owner.lock().await;
        let (db, file, conf, name) = (
            self.db.clone(),
            link.file,
            link.confirmation,
            link.name.clone(),
        );
        let r = errors::off_reactor(move || -> Result<(Option<Hold>, Option<Hold>), Failure> {
            if hold.is_none() {
                // Only the hold the master saw: one set since stays.
                let now = db.file_info(file)?.def.hold;
                if !crate::catalog::same_hold(now.as_ref(), releasing.as_ref()) {
                    return Err(Failure::new(
                        ErrorCode::Refused,
                        format!(
                            "replicate {name} is held differently now ({}): a release of the hold its master saw does not clear it",
                            now.as_ref().map_or("not held".into(), |h| h.to_string())
                        ),
                    ));
                }
                // Released only at the master's level: what it confirms is
                // what it holds (the confirmation commits with the changes).
                let at = db
                    .read(conf, Isn(u64::from(file.0)))?
                    .as_ref()
                    .map(decode_confirmation)
                    .transpose()
                    .map_err(|e| Failure::new(ErrorCode::Damaged, e.to_string()))?;
                let confirmed = match at {
                    Some(Decoded::Confirmed(c)) => c.seq,
                    Some(Decoded::Loading(p)) => {
                        return Err(Failure::new(
                            ErrorCode::Refused,
                            format!("replicate {name} is being loaded (load {}): it is released when the load has ended and it confirms seq {level}", p.id),
                        ))
                    }
                    None => Seq(0),
                };
                if confirmed < level {
                    return Err(Failure::new(
                        ErrorCode::Refused,
                        format!("replicate {name} confirms seq {confirmed}: it is released only at its master's level, seq {level}"),
                    ));
                }
            }
            let old = db.set_hold(file, hold.clone())?;
            Ok((old, hold))
        })
        .await;
        match r {
            Ok((old, new)) => {
                match (&old, &new) {
                    (Some(o), None) => {
                        tracing::info!(replicate = %link.name, file = %link.file, level = %level,
                            "replicate released: it confirms its master's level (it was {o})")
                    }
                    (_, Some(n)) if old.as_ref().map(|o| o.kind) != Some(n.kind) => {
                        tracing::warn!(replicate = %link.name, file = %link.file,
                            "replicate held: it serves no current reads: {n}")
                    }
                    _ => {}
                }
                Response::Ok
            }
            Err(e) => Response::error(e),
        }
    }
}

/// Why a current read of `file` is refused, if it is: a replicate held
/// (see [`Hold`]) or being loaded (its confirmation, in `confirmation`, is
/// a load's progress record). Anything else reads as usual (an unknown or
/// damaged file gets the read's own error).
pub(super) fn held(db: &Database, file: Fnr, confirmation: Fnr) -> Option<Failure> {
    let info = db.file_info(file).ok()?;
    if info.def.role != Role::Replicate {
        return None;
    }
    if let Some(h) = &info.def.hold {
        return Some(Failure::new(
            ErrorCode::Held,
            format!("replicate file {file} serves no current reads: it is {h}; ask for stale reads (--stale, or \"stale\": true) to read what it holds"),
        ));
    }
    let rec = db.read(confirmation, Isn(u64::from(file.0))).ok()??;
    match decode_confirmation(&rec) {
        Ok(Decoded::Loading(p)) => Some(Failure::new(
            ErrorCode::Held,
            format!("replicate file {file} serves no current reads: it is being loaded (load {}, as of its master's seq {}); ask for stale reads (--stale, or \"stale\": true) to read what it holds", p.id, p.snapshot),
        )),
        _ => None,
    }
}
