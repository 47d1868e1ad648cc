//! Data-driven walks in the style of raft-rs `testdata/`: each file in
//! `testdata/` holds cases of the form
//!
//! ```text
//! # why this case exists (comments and blank lines are kept on bless)
//! walk case2_replicate            <- or `diagnose` (triage, then the case)
//! unit_copy_with_intact_plog yes copy of 2026-11-20 at LSN 812   <- answers
//! reload_quicker_than_roll_forward no
//! ----
//! expected output, up to the next blank line
//! ```
//!
//! An answer line is `<probe or node id> <yes|no|?> [evidence or reason]`;
//! a node id wins over a probe name, `?` is unanswerable, and a question
//! with no answer line is unanswerable ("no answer given"). Answers that no
//! question used are reported in the output, so a stale case shows up.
//! Across all files every leaf of every shipped tree must be reached.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use flowcharts::{Answer, Answers, Node, Plan, TreeSet, Walk};

use crate::{blessing, builtin, crate_dir};

struct Case {
    /// Comment and blank lines before the command, kept verbatim.
    preamble: Vec<String>,
    command: String,
    input: Vec<String>,
    expected: Vec<String>,
    /// 1-based line of the command, for failure messages.
    line: usize,
}

fn parse_file(text: &str) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    loop {
        let mut preamble = Vec::new();
        while let Some((_, line)) = lines.peek() {
            if line.trim().is_empty() || line.starts_with('#') {
                preamble.push(line.to_string());
                lines.next();
            } else {
                break;
            }
        }
        let Some((n, command)) = lines.next() else {
            if preamble.iter().any(|l| !l.trim().is_empty()) {
                return Err("comment after the last case".to_string());
            }
            return Ok(cases);
        };
        let mut input = Vec::new();
        let mut separated = false;
        for (_, line) in lines.by_ref() {
            if line == "----" {
                separated = true;
                break;
            }
            input.push(line.to_string());
        }
        if !separated {
            return Err(format!("line {}: case without `----`", n + 1));
        }
        let mut expected = Vec::new();
        while let Some((_, line)) = lines.peek() {
            if line.trim().is_empty() {
                break;
            }
            expected.push(line.to_string());
            lines.next();
        }
        cases.push(Case {
            preamble,
            command: command.to_string(),
            input,
            expected,
            line: n + 1,
        });
    }
}

/// Answers from the case's input lines, remembering which were used.
struct Table {
    answers: BTreeMap<String, (String, String)>,
    used: BTreeSet<String>,
}

impl Table {
    fn parse(lines: &[String]) -> Result<Table, String> {
        let mut answers = BTreeMap::new();
        for line in lines {
            let mut parts = line.trim().splitn(3, ' ');
            let (Some(key), Some(word)) = (parts.next(), parts.next()) else {
                return Err(format!("answer line `{line}` needs a key and yes/no/?"));
            };
            if !matches!(word, "yes" | "no" | "?") {
                return Err(format!(
                    "answer line `{line}`: `{word}` is not yes, no or ?"
                ));
            }
            let text = parts.next().unwrap_or_default().trim().to_string();
            if answers
                .insert(key.to_string(), (word.to_string(), text))
                .is_some()
            {
                return Err(format!("`{key}` is answered twice"));
            }
        }
        Ok(Table {
            answers,
            used: BTreeSet::new(),
        })
    }
}

impl Answers for Table {
    type Error = std::convert::Infallible;
    fn answer(&mut self, node: &Node) -> Result<Answer, Self::Error> {
        let probe = node.question().and_then(|q| q.probe.as_deref());
        let key = std::iter::once(node.id.as_str())
            .chain(probe)
            .find(|k| self.answers.contains_key(*k));
        let Some(key) = key else {
            return Ok(Answer::unanswerable("no answer given"));
        };
        self.used.insert(key.to_string());
        let (word, text) = &self.answers[key];
        Ok(match word.as_str() {
            "yes" => Answer::yes(text.as_str()),
            "no" => Answer::no(text.as_str()),
            _ => Answer::unanswerable(text.as_str()),
        })
    }
}

fn print_walk(out: &mut String, walk: &Walk, reached: &mut BTreeSet<(String, String)>) {
    let _ = writeln!(out, "tree {}", walk.tree);
    for visit in &walk.path {
        let step = visit.step.as_deref().unwrap_or("-");
        let probe = visit.probe.as_deref().unwrap_or("operator");
        let _ = write!(
            out,
            "  {step} {} [{probe}] {}",
            visit.node,
            visit.answer.word()
        );
        if !visit.answer.text().is_empty() {
            let _ = write!(out, ": {}", visit.answer.text());
        }
        out.push('\n');
    }
    if let Some(leaf) = walk.plan.leaf() {
        reached.insert((walk.tree.clone(), leaf.to_string()));
    }
    match &walk.plan {
        Plan::Actions { leaf, steps, .. } => {
            let _ = writeln!(out, "  plan {leaf}");
            for (i, step) in steps.iter().enumerate() {
                let _ = writeln!(out, "    {}. {}", i + 1, step.display());
            }
        }
        Plan::Goto { leaf, case, .. } => {
            let _ = writeln!(out, "  goto {case} (leaf {leaf})");
        }
        Plan::Stopped { node, reason } => {
            let _ = writeln!(out, "  stopped at {node}: {reason}");
        }
    }
}

fn run_case(
    set: &TreeSet,
    case: &Case,
    reached: &mut BTreeSet<(String, String)>,
) -> Result<String, String> {
    let mut table = Table::parse(&case.input)?;
    let mut out = String::new();
    let words: Vec<&str> = case.command.split_whitespace().collect();
    match words.as_slice() {
        ["walk", tree] => {
            let tree = set.get(tree).ok_or_else(|| format!("no tree `{tree}`"))?;
            let walk = flowcharts::walk(tree, &mut table).map_err(|e| e.to_string())?;
            print_walk(&mut out, &walk, reached);
        }
        ["diagnose"] => {
            let diagnosis = flowcharts::diagnose(set, &mut table).map_err(|e| e.to_string())?;
            print_walk(&mut out, &diagnosis.triage, reached);
            if let Some(case) = &diagnosis.case {
                print_walk(&mut out, case, reached);
            }
        }
        _ => return Err(format!("unknown command `{}`", case.command)),
    }
    let unused: Vec<&String> = table
        .answers
        .keys()
        .filter(|k| !table.used.contains(*k))
        .collect();
    if !unused.is_empty() {
        let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(out, "unused answers: {}", names.join(", "));
    }
    Ok(out)
}

fn render_file(cases: &[Case], outputs: &[String]) -> String {
    let mut text = String::new();
    for (case, output) in cases.iter().zip(outputs) {
        for line in &case.preamble {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "{}", case.command);
        for line in &case.input {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "----");
        text.push_str(output);
    }
    text
}

#[test]
fn testdata_walks_match_and_cover_every_leaf() {
    let set = builtin();
    let dir = crate_dir().join("testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no testdata files");

    let mut reached = BTreeSet::new();
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("read testdata");
        let cases = match parse_file(&text) {
            Ok(cases) => cases,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut outputs = Vec::new();
        for case in &cases {
            let actual = match run_case(&set, case, &mut reached) {
                Ok(out) => out,
                Err(e) => {
                    failures.push(format!("{name}:{}: {e}", case.line));
                    String::new()
                }
            };
            let expected: String = case.expected.iter().map(|l| format!("{l}\n")).collect();
            if actual != expected && !blessing() {
                failures.push(format!(
                    "{name}:{}: `{}`\n--- expected\n{expected}--- actual\n{actual}",
                    case.line, case.command
                ));
            }
            outputs.push(actual);
        }
        if blessing() {
            std::fs::write(path, render_file(&cases, &outputs)).expect("bless testdata");
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(bless with FLOWCHARTS_BLESS=1 cargo test -p flowcharts)",
        failures.join("\n")
    );

    let mut missing = Vec::new();
    for tree in set.trees() {
        for leaf in tree.leaves() {
            if !reached.contains(&(tree.id.clone(), leaf.id.clone())) {
                missing.push(format!("{}/{}", tree.id, leaf.id));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "leaves no testdata case reaches: {missing:?}"
    );
}
