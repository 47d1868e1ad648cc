//! The README's ten-minute walk-through, run command by command as a
//! newcomer would type it, so it cannot go stale. Its paths and ports are
//! swapped for a temporary directory and free ports; nothing else changes.

use etp_system_tests::{etp_bin, free_port, wait_for, KillGuard};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The `sh` blocks of the README section that starts with `heading`.
fn blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).expect("the walk-through section");
    let rest = &readme[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut out = Vec::new();
    let mut it = section.split("```sh\n").skip(1);
    for b in it.by_ref() {
        out.push(b[..b.find("```").expect("a closed block")].to_string());
    }
    out
}

/// Runs `script` with bash, `etp` on the PATH, after the walk-through's
/// `export` lines so far (`prelude`): a reader's one shell session.
fn sh_with(prelude: &str, script: &str) -> std::process::Output {
    sh(&format!("{prelude}{script}"))
}

/// Runs `script` with bash, `etp` on the PATH.
fn sh(script: &str) -> std::process::Output {
    let dir = etp_bin().parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("PATH", path)
        .env_remove("ETP_LOG")
        .output()
        .expect("running bash")
}

#[test]
fn the_readme_walk_through_runs_as_written() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("README.md");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("etp");
    let (p1, p2) = (free_port(), free_port());
    let swap = |s: &str| {
        s.replace("/tmp/etp", root.to_str().expect("utf-8 path"))
            .replace("7501", &p1.to_string())
            .replace("7502", &p2.to_string())
    };
    let blocks: Vec<String> = blocks(&readme, "## Ten minutes")
        .iter()
        .map(|b| swap(b))
        .collect();
    assert_eq!(blocks.len(), 4, "the walk-through's blocks: {blocks:?}");
    std::fs::create_dir_all(&root).expect("mkdir");

    // Block 1: init both databases, start both nodes in the background.
    let mut nodes = Vec::new();
    let mut prelude = String::new();
    for line in blocks[0].lines().filter(|l| !l.trim().is_empty()) {
        if line.split_whitespace().next() == Some("export") {
            prelude.push_str(line);
            prelude.push('\n');
            continue;
        }
        match line.trim().strip_suffix('&') {
            Some(bg) => {
                let dir = etp_bin().parent().expect("dir").display().to_string();
                let child = Command::new("bash")
                    .args(["-c", &format!("{prelude}exec {bg}")])
                    .env(
                        "PATH",
                        format!("{dir}:{}", std::env::var("PATH").unwrap_or_default()),
                    )
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("starting a node");
                nodes.push(KillGuard(child));
            }
            None => {
                let o = sh_with(&prelude, line);
                assert!(
                    o.status.success(),
                    "{line}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
    assert_eq!(nodes.len(), 2, "two nodes in the background");
    for p in [p1, p2] {
        wait_for("the node to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", p)).ok()
        });
    }

    // Block 2: the topology, applied.
    let o = sh_with(&prelude, &blocks[1]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("topology applied to databases"), "{out}");

    // Block 3: one transaction of two stores.
    let o = sh_with(&prelude, &blocks[2]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        out.lines().count(),
        1,
        "one line per committed transaction: {out}"
    );
    assert!(out.contains("\"lsn\""), "{out}");

    // Block 4: status, the replicate's records, verify — as a user would
    // run it again until the replicate has caught up.
    let out = wait_for(
        "the replicate to hold both records",
        Duration::from_secs(30),
        || {
            let o = sh_with(&prelude, &blocks[3]);
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            (o.status.success() && out.contains("Ada") && out.contains("Grace")).then_some(out)
        },
    );
    assert!(
        out.contains("customers_copy") && out.contains("equal"),
        "{out}"
    );
}
