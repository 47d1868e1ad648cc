//! Harness for the system tests: the real `etp` binary, real processes,
//! real files. Every process a test starts is killed when its guard drops;
//! every wait has a deadline.

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `etp` binary of this build profile, built once per test run if needed.
pub fn etp_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>/etp
        let profile_dir = exe
            .parent()
            .and_then(|p| p.parent())
            .expect("test executable lives in target/<profile>/deps");
        let bin = profile_dir.join("etp");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "maintenance", "--bin", "etp"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for etp");
        assert!(status.success(), "building etp failed");
        assert!(bin.exists(), "{} not found after build", bin.display());
        bin
    })
}

/// Runs `etp ARGS` to completion.
pub fn etp(args: &[&str]) -> Output {
    Command::new(etp_bin())
        .args(args)
        .output()
        .expect("running etp")
}

/// Runs `etp ARGS` with `input` on standard input.
pub fn etp_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(etp_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting etp");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("etp output");
    let _ = feeder.join();
    out
}

/// Asserts a command succeeded, showing its output if not.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "etp failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct KillGuard(pub Child);

impl KillGuard {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Parses `etp file dump` output into isn → fields.
pub fn parse_dump(text: &str) -> std::collections::BTreeMap<u64, serde_json::Value> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("dump line is JSON");
            (v["isn"].as_u64().expect("isn"), v["fields"].clone())
        })
        .collect()
}

/// A seed for a randomized test: `ETP_SEED` if set, else fresh; printed so
/// a failure can be reproduced.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("ETP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: seed {s} (rerun with ETP_SEED={s})");
    s
}

/// Damages a file of a stopped node's database behind the engine's back:
/// writes `edits` (None: delete) straight into its page store, as a bad
/// disk or an offline edit would. The next open finds the file damaged.
pub fn tamper(
    data: &Path,
    file: propagator::Fnr,
    edits: Vec<(propagator::Isn, Option<propagator::Record>)>,
) {
    use propagator::record::encode_record;
    let store = propagator::store::PageStore::open(&data.join("store"), 1 << 20).expect("store");
    let applied = store.applied_lsn().expect("lsn");
    let records = edits
        .into_iter()
        .map(|(i, r)| (file, i, r.map(|r| encode_record(&r).expect("enc"))))
        .collect();
    store
        .apply(&propagator::store::StoreBatch {
            applied,
            records,
            ..Default::default()
        })
        .expect("tamper");
    store.flush().expect("flush");
}
