//! The copy area: `sets/<id>.json` (the catalog: one file per set) and
//! `data/<id>/` (the set's copy files).
//!
//! A set is in the catalog exactly when its JSON file exists. It is written
//! to a temporary name, synced, renamed and the directory synced, only
//! after every member file was written, synced and read back: a job cut
//! short leaves at most an orphan data directory, never a half set.

use super::error::{SetError, Within};
use crate::copy::CopiedFile;
use crate::{DbId, Fnr, Lsn, Seq};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What a set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    /// A master and its log file (and the administration file, if any).
    Master,
    /// Replicates and the confirmation file they share.
    Replicate,
    /// Plain files only.
    Plain,
}

/// One member file of a set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub fnr: Fnr,
    pub name: String,
    pub role: String,
    /// For a master: its log; for a log: its master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<Fnr>,
    pub copy: CopiedFile,
}

/// A replicate's confirmation as a replicate copy set holds it: restoring
/// the set needs the master's log from `seq + 1` on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confirmed {
    pub replicate: String,
    pub master_db: u32,
    pub master: u32,
    pub seq: u64,
}

/// One catalogued copy set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopySet {
    pub id: String,
    pub kind: SetKind,
    /// The job that took it, if a job did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The run of that job (its sets share it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    pub taken_utc: String,
    pub taken_local: String,
    /// Where it was taken from: a node address or a data directory.
    pub source: String,
    pub dbid: DbId,
    /// Every member is its file exactly as of this LSN.
    pub lsn: Lsn,
    pub start_lsn: Lsn,
    /// Commit time of `lsn`, µs since the epoch.
    pub time_us: i64,
    /// Per master in the set: the last seq of its log.
    pub seqs: BTreeMap<Fnr, Seq>,
    pub members: Vec<Member>,
    /// For a replicate set: each replicate's confirmation in the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confirmed: Vec<Confirmed>,
    pub bytes: u64,
    /// How long taking it took.
    pub seconds: f64,
}

impl CopySet {
    pub fn member(&self, fnr: Fnr) -> Option<&Member> {
        self.members.iter().find(|m| m.fnr == fnr)
    }
}

pub struct Area {
    root: PathBuf,
}

impl Area {
    /// Opens (creating if needed) a copy area.
    pub fn open(root: &Path) -> Result<Area, SetError> {
        for d in ["sets", "data"] {
            std::fs::create_dir_all(root.join(d))
                .within(|| format!("cannot create copy area {}", root.display()))?;
        }
        Ok(Area {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.root.join("data").join(id)
    }

    /// Claims a new set id (and its data directory): the time, then a number.
    pub fn new_set(&self, now: chrono::DateTime<chrono::Utc>) -> Result<String, SetError> {
        let stamp = now.format("%Y%m%dT%H%M%SZ");
        for n in 1..10_000 {
            let id = format!("{stamp}-{n:03}");
            match std::fs::create_dir(self.data_dir(&id)) {
                Ok(()) => return Ok(id),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .within(|| format!("cannot create {}", self.data_dir(&id).display()))
                }
            }
        }
        refused!("no free set id for {stamp} in {}", self.root.display())
    }

    /// Records a set in the catalog, durably.
    pub fn record(&self, set: &CopySet) -> Result<(), SetError> {
        write_json_durably(&self.root.join("sets"), &set.id, set)
    }

    /// Drops a set: its catalog entry first, then its files.
    pub fn remove(&self, id: &str) -> Result<(), SetError> {
        let path = self.root.join("sets").join(format!("{id}.json"));
        std::fs::remove_file(&path)
            .within(|| format!("cannot remove catalog entry {}", path.display()))?;
        File::open(self.root.join("sets"))
            .and_then(|d| d.sync_all())
            .within(|| format!("cannot sync {}", self.root.display()))?;
        self.discard(id);
        Ok(())
    }

    /// Removes the data directory of a set that never made the catalog.
    pub fn discard(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.data_dir(id));
    }

    /// Every catalogued set, oldest first.
    pub fn list(&self) -> Result<Vec<CopySet>, SetError> {
        let mut sets: Vec<CopySet> = read_json_dir(&self.root.join("sets"), "catalog entry")?;
        sets.sort_by(|a, b| (a.time_us, &a.id).cmp(&(b.time_us, &b.id)));
        Ok(sets)
    }

    pub fn get(&self, id: &str) -> Result<CopySet, SetError> {
        let path = self.root.join("sets").join(format!("{id}.json"));
        if !path.exists() {
            refused!(
                "no copy set {id:?} in the catalog of {}",
                self.root.display()
            );
        }
        let text = std::fs::read(&path).within(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&text)
            .within(|| format!("catalog entry {} is damaged", path.display()))
    }

    /// The newest set of database `dbid` holding file `fnr` (with an LSN at
    /// most `max_lsn`, if given).
    pub fn newest_with(
        &self,
        dbid: DbId,
        fnr: Fnr,
        max_lsn: Option<Lsn>,
    ) -> Result<Vec<CopySet>, SetError> {
        let mut v: Vec<CopySet> = self
            .list()?
            .into_iter()
            .filter(|s| s.dbid == dbid && s.member(fnr).is_some())
            .filter(|s| max_lsn.is_none_or(|m| s.lsn <= m))
            .collect();
        v.reverse();
        Ok(v)
    }

    /// Per master of database `dbid`: the log seq of its newest catalogued
    /// copy set — the log-cleanup horizon (nothing after it may be removed:
    /// restoring that set and rolling forward needs it).
    pub fn horizons(&self, dbid: DbId) -> Result<BTreeMap<Fnr, Seq>, SetError> {
        let mut out = BTreeMap::new();
        for s in self.list()? {
            if s.dbid != dbid {
                continue;
            }
            for (m, seq) in &s.seqs {
                out.insert(*m, *seq);
            }
        }
        Ok(out)
    }
}

/// Writes `value` as `dir/name.json`, durably: to a temporary name, synced,
/// renamed, the directory synced ([`crate::framed::replace`], through
/// the medium seam). A reader sees the whole file or none.
pub fn write_json_durably<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), SetError> {
    let file = format!("{name}.json");
    let text = serde_json::to_vec_pretty(value)
        .within(|| format!("encoding {}", dir.join(&file).display()))?;
    crate::framed::replace(&crate::medium::FsDir::new(dir), &file, &text)
        .within(|| format!("cannot write {}", dir.join(&file).display()))
}

/// Every `*.json` in `dir` (temporary files left out), decoded; `what`
/// names them in an error. A missing directory holds none.
pub fn read_json_dir<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
) -> Result<Vec<T>, SetError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).within(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.within(|| format!("cannot read {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let text =
            std::fs::read(e.path()).within(|| format!("cannot read {}", e.path().display()))?;
        out.push(
            serde_json::from_slice(&text)
                .within(|| format!("{what} {} is damaged", e.path().display()))?,
        );
    }
    Ok(out)
}
