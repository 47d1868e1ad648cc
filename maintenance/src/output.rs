//! Printing: human tables by default, JSON with `--json`.

use std::io::Write;

/// Prints rows as an aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(|s| s.as_str()).collect()));
    }
}

pub fn json(v: &serde_json::Value) {
    println!("{v}");
}

/// Where a restore, regenerate or backout reports how far it has got: a
/// bar with rate and ETA on a terminal, `{"event":"progress",...}` lines
/// with `--json`, nothing otherwise (a pipe or a log file gets the result).
pub struct ProgressSink {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    phase: &'static str,
}

impl ProgressSink {
    pub fn new(json: bool) -> ProgressSink {
        let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>14} {bar:40} {human_pos}/{human_len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        ProgressSink {
            json,
            bar,
            phase: "",
        }
    }

    pub fn on(&mut self, p: &propagator::copy::restore::Progress) {
        if self.json {
            json(&serde_json::json!({
                "event": "progress",
                "phase": p.phase,
                "done": p.done,
                "total": p.total,
                "unit": p.unit,
            }));
            return;
        }
        if let Some(b) = &self.bar {
            // A new phase, or the same one again (regenerate verifies each
            // candidate set in turn).
            if p.phase != self.phase || b.length() != Some(p.total) || p.done < b.position() {
                self.phase = p.phase;
                b.reset();
                b.set_length(p.total);
                b.set_message(p.phase);
            }
            b.set_position(p.done);
        }
    }
}

impl Drop for ProgressSink {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
