//! `etp log show`.

use super::open_or_context;
use crate::cli::LogCommand;
use crate::output;
use crate::Outcome;
use chrono::SecondsFormat;
use propagator::{Fnr, Seq};
use std::io::Write;

pub fn run(c: LogCommand) -> anyhow::Result<Outcome> {
    match c {
        LogCommand::PlanCleanup(a) => super::replicate::cleanup(a, false),
        LogCommand::Cleanup(a) => super::replicate::cleanup(a, true),
        LogCommand::Show {
            data,
            master,
            from,
            limit,
            json,
        } => {
            let db = open_or_context(&data.data)?;
            let limit = limit.unwrap_or(u64::MAX);
            let mut rows = Vec::new();
            let mut n = 0u64;
            let mut out = std::io::stdout().lock();
            db.for_each_log_record(Fnr(master), Seq(from), |r| {
                n += 1;
                if json {
                    if writeln!(out, "{}", r.to_json()).is_err() {
                        return Ok(false);
                    }
                } else {
                    rows.push(vec![
                        r.seq.to_string(),
                        r.lsn.to_string(),
                        r.time().to_rfc3339_opts(SecondsFormat::Millis, true),
                        r.op.name().to_string(),
                        r.isn.to_string(),
                        format!("{}/{}", r.part, r.parts),
                        r.client_id.clone().unwrap_or_default(),
                        r.master_digest.to_string(),
                    ]);
                }
                Ok(n < limit)
            })?;
            if !json {
                output::table(
                    &[
                        "seq",
                        "lsn",
                        "time",
                        "op",
                        "isn",
                        "part",
                        "id",
                        "master digest after",
                    ],
                    &rows,
                );
            }
            Ok(Outcome::Ok)
        }
    }
}
