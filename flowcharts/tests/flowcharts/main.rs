//! Integration tests of the shipped recovery trees (one test binary).
//!
//! - `datadriven`: the `testdata/*.txt` cases (answers in, path and plan out)
//!   and the rule that every leaf of every tree is covered by one of them;
//! - `rendered`: `rendered/` matches a fresh render of `trees/`;
//! - `exhaustive`: every combination of answers ends at a leaf;
//! - `shipped`: the shipped trees validate against the standard registry.
//!
//! `FLOWCHARTS_BLESS=1 cargo test -p flowcharts` rewrites the expected output
//! of `testdata/` and the files in `rendered/`.

mod datadriven;
mod exhaustive;
mod rendered;
mod shipped;

use std::path::PathBuf;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blessing() -> bool {
    std::env::var_os("FLOWCHARTS_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

fn builtin() -> flowcharts::TreeSet {
    flowcharts::TreeSet::builtin().expect("the shipped trees parse")
}
