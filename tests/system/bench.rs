//! `etp bench commit` runs its phases end to end and prints every figure
//! the issue asks for, plus the bare group commit it is held against.

use etp_system_tests::{etp, ok};

#[test]
fn bench_commit_prints_every_figure_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("bench");
    let data = d.to_str().expect("utf-8");
    let out = ok(&etp(&[
        "bench",
        "commit",
        "--data",
        data,
        "--rounds",
        "1",
        "--seconds",
        "0.2",
    ]));
    for metric in [
        "fdatasync_per_s",
        "fdatasync_in_place_per_s",
        "commit_1_client_per_s",
        "commit_16_clients_per_s",
        "group_commit_floor_1_client_per_s",
        "group_commit_floor_16_clients_per_s",
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(metric))
            .unwrap_or_else(|| panic!("no {metric} line in:\n{out}"));
        let value: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{metric}: no number in {line:?}"));
        assert!(value > 0.0, "{metric} is {value}:\n{out}");
    }
    for ratio in [
        "ratio: 16 clients / 1 client =",
        "ratio: bare group commit 16 clients / 1 client =",
    ] {
        assert!(out.contains(ratio), "no ratio {ratio:?} in:\n{out}");
    }
    assert!(out.contains("µs CPU a commit"), "no CPU use in:\n{out}");
    // Its databases and probe files are gone; the directory it made stays.
    let left: Vec<_> = std::fs::read_dir(&d)
        .expect("the data directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let out = etp(&["bench", "commit", "--data", data, "--rounds", "0"]);
    assert_eq!(out.status.code(), Some(2), "zero rounds must be refused");
}
