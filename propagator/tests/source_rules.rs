//! Rules the source itself must keep, checked by reading it.
//!
//! **Nothing decides on an error's or a state's text.** Errors carry a code
//! (`wire::ErrorCode`) and states are enums (`wire::ReplicaState`, …); a
//! decision made by matching English text breaks silently the day the
//! wording changes. This test reads every library and binary source file
//! (test modules excluded) and fails on a string-literal `contains`,
//! `starts_with` or `ends_with`, unless the site is listed below with why it
//! is not such a decision — or why it is one still to be removed.

use std::path::{Path, PathBuf};

/// (file, the text of the line, why it is allowed).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "propagator/src/copy/area.rs",
        r#"name.starts_with('.') || !name.ends_with(".json")"#,
        "a file name's extension, not a message",
    ),
    (
        "maintenance/src/cluster.rs",
        r#"a.starts_with("--metrics")"#,
        "a command-line argument, not a message",
    ),
    (
        "propagator/src/store.rs",
        r#"e.to_string().contains("could not acquire lock")"#,
        "sled 0.34 reports a held lock only as an I/O error's text; the seam keeps the match in one place",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The lines of `text` outside its test module (everything from the first
/// `#[cfg(test)]` on is test code in this workspace's layout).
fn non_test_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .map(|(i, l)| (i + 1, l))
}

fn decides_on_text(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    [".contains(\"", ".starts_with(\"", ".ends_with(\""]
        .iter()
        .any(|p| code.contains(p))
}

#[test]
fn no_source_file_decides_on_an_error_or_state_text() {
    let root = workspace();
    let mut files = Vec::new();
    for krate in ["propagator", "maintenance", "backup", "flowcharts"] {
        sources(&root.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut found = Vec::new();
    let mut used = vec![false; ALLOWED.len()];
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap_or(f)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (n, line) in non_test_lines(&text) {
            if !decides_on_text(line) {
                continue;
            }
            match ALLOWED
                .iter()
                .position(|(file, needle, _)| *file == rel && line.contains(needle))
            {
                Some(i) => used[i] = true,
                None => found.push(format!("{rel}:{n}: {}", line.trim())),
            }
        }
    }
    assert!(
        found.is_empty(),
        "decisions on message or state text (use an ErrorCode or a state enum):\n{}",
        found.join("\n")
    );
    // An allowance whose site is gone must go too, so the list stays true.
    let stale: Vec<_> = ALLOWED
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|((f, n, _), _)| format!("{f}: {n}"))
        .collect();
    assert!(
        stale.is_empty(),
        "allowed sites no longer present: {stale:?}"
    );
}

#[test]
fn the_rule_catches_a_decision_on_text() {
    assert!(decides_on_text(
        r#"    if message.contains("out of sequence") {"#
    ));
    assert!(!decides_on_text(
        r#"    // message.contains("out of sequence")"#
    ));
    assert!(!decides_on_text(
        r#"    Response::Error { code: ErrorCode::OutOfSequence, .. } => {"#
    ));
}

/// An error typed as a bare `String` in a signature (`Result<T, String>`).
fn string_error(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.contains(", String>") && code.contains("Result<")
}

/// **Libraries return typed errors.** The node, the command runner and the
/// copy library return errors that carry what went wrong as a type (and a
/// wire code where they answer a request); `anyhow` stays in the binary.
#[test]
fn libraries_return_typed_errors() {
    let root = workspace();
    let mut files = Vec::new();
    sources(&root.join("propagator/src/node"), &mut files);
    files.push(root.join("propagator/src/exec.rs"));
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (n, line) in non_test_lines(&text) {
            if string_error(line) {
                found.push(format!("{}:{n}: {}", f.display(), line.trim()));
            }
        }
    }
    let mut lib = Vec::new();
    sources(&root.join("backup/src"), &mut lib);
    sources(&root.join("propagator/src"), &mut lib);
    for f in &lib {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (n, line) in non_test_lines(&text) {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains("anyhow::") || code.contains("use anyhow") {
                found.push(format!("{}:{n}: {}", f.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "untyped errors in a library (use a thiserror type):\n{}",
        found.join("\n")
    );
    assert!(string_error("fn f() -> Result<u64, String> {"));
    assert!(!string_error("fn f() -> Result<Vec<String>, OpError> {"));
}
