//! The copy area: `sets/<id>.json` (the catalog: one file per set) and
//! `data/<id>/` (the set's copy files).
//!
//! A set id is `YYYYMMDDTHHMMSSZ-NNN` (its UTC time, then a number), checked
//! wherever an id comes from outside (a request, a command line, a catalog
//! entry, whose id must also be its file's name): no id names a path
//! outside the area.
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

/// Checks a set id's format, `YYYYMMDDTHHMMSSZ-NNN` (3 or 4 digits after
/// the dash), as [`Area::new_set`] makes them.
pub fn check_set_id(id: &str) -> Result<(), SetError> {
    let b = id.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = (20..=21).contains(&b.len())
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'Z'
        && b[16] == b'-'
        && digits(17..b.len());
    if !ok {
        refused!(
            "{:?} is not a copy set id (they look like 20261207T102054Z-001)",
            id.chars().take(80).collect::<String>()
        );
    }
    Ok(())
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

    /// The directory of set `id`'s copy files (the id checked first).
    pub fn data_dir(&self, id: &str) -> Result<PathBuf, SetError> {
        check_set_id(id)?;
        Ok(self.root.join("data").join(id))
    }

    /// The directory set `id` claimed ([`Area::new_set`]) for its files:
    /// it must be there, a directory of this area and not a link out of it.
    /// A node writes a copy only into such a directory of its own area.
    pub fn claimed_dir(&self, id: &str) -> Result<PathBuf, SetError> {
        let dir = self.data_dir(id)?;
        if self.root.join("sets").join(format!("{id}.json")).exists() {
            refused!("copy set {id} is catalogued already: its files are not written again");
        }
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => Ok(dir),
            Ok(_) => refused!(
                "{} is not a directory of copy area {}",
                dir.display(),
                self.root.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => refused!(
                "copy set {id} was not claimed in copy area {} (is it the area the copy is taken into?)",
                self.root.display()
            ),
            Err(e) => Err(e).within(|| format!("cannot read {}", dir.display())),
        }
    }

    /// Claims a new set id (and its data directory): the time, then a number.
    pub fn new_set(&self, now: chrono::DateTime<chrono::Utc>) -> Result<String, SetError> {
        let stamp = now.format("%Y%m%dT%H%M%SZ");
        for n in 1..10_000 {
            let id = format!("{stamp}-{n:03}");
            let dir = self.data_dir(&id)?;
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(id),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).within(|| format!("cannot create {}", dir.display())),
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
        check_set_id(id)?;
        let path = self.root.join("sets").join(format!("{id}.json"));
        std::fs::remove_file(&path)
            .within(|| format!("cannot remove catalog entry {}", path.display()))?;
        File::open(self.root.join("sets"))
            .and_then(|d| d.sync_all())
            .within(|| format!("cannot sync {}", self.root.display()))?;
        self.discard(id);
        Ok(())
    }

    /// Takes a set out of the catalog without removing its files: its
    /// entry moves to `sets-superseded/` (a database recovered to an
    /// earlier LSN than the set's has left the history the set belongs to;
    /// an operator can move it back).
    pub fn set_aside(&self, id: &str) -> Result<PathBuf, SetError> {
        check_set_id(id)?;
        let from = self.root.join("sets").join(format!("{id}.json"));
        let dir = self.root.join("sets-superseded");
        std::fs::create_dir_all(&dir).within(|| format!("cannot create {}", dir.display()))?;
        let to = dir.join(format!("{id}.json"));
        std::fs::rename(&from, &to)
            .within(|| format!("cannot move catalog entry {}", from.display()))?;
        for d in [self.root.join("sets"), dir] {
            File::open(&d)
                .and_then(|f| f.sync_all())
                .within(|| format!("cannot sync {}", d.display()))?;
        }
        Ok(to)
    }

    /// Removes the data directory of a set that never made the catalog.
    /// (Nothing is removed for an id of another format.)
    pub fn discard(&self, id: &str) {
        if let Ok(dir) = self.data_dir(id) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Every catalogued set, oldest first. An entry whose id is not a set
    /// id or not its file's name, or that names a member file outside its
    /// set's directory, is left out with a warning: nothing (a restore, a
    /// cleanup's horizon, a retention) acts on it, and one such entry does
    /// not take the rest of the catalog with it. `get` refuses it by name.
    pub fn list(&self) -> Result<Vec<CopySet>, SetError> {
        let named: Vec<(String, CopySet)> =
            read_json_dir_named(&self.root.join("sets"), "catalog entry")?;
        let mut sets = Vec::with_capacity(named.len());
        for (stem, set) in named {
            match check_entry(&self.root, &stem, &set) {
                Ok(()) => sets.push(set),
                Err(e) => tracing::warn!(reason = %e, "catalog entry left out"),
            }
        }
        sets.sort_by(|a, b| (a.time_us, &a.id).cmp(&(b.time_us, &b.id)));
        Ok(sets)
    }

    pub fn get(&self, id: &str) -> Result<CopySet, SetError> {
        check_set_id(id)?;
        let path = self.root.join("sets").join(format!("{id}.json"));
        if !path.exists() {
            refused!(
                "no copy set {id:?} in the catalog of {}",
                self.root.display()
            );
        }
        let text = std::fs::read(&path).within(|| format!("cannot read {}", path.display()))?;
        let set: CopySet = serde_json::from_slice(&text)
            .within(|| format!("catalog entry {} is damaged", path.display()))?;
        check_entry(&self.root, id, &set)?;
        Ok(set)
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

/// A catalog entry's id must be a set id and its file's name, and its
/// members' copy files plain names in its set's directory.
fn check_entry(root: &Path, stem: &str, set: &CopySet) -> Result<(), SetError> {
    let path = root.join("sets").join(format!("{stem}.json"));
    if set.id != stem || check_set_id(&set.id).is_err() {
        refused!(
            "catalog entry {} is damaged: it names set {:?}",
            path.display(),
            set.id.chars().take(80).collect::<String>()
        );
    }
    for m in &set.members {
        let name = &m.copy.name;
        if !plain_name(name) {
            refused!(
                "catalog entry {} is damaged: member file {:?} is not a file name",
                path.display(),
                name.chars().take(80).collect::<String>()
            );
        }
    }
    Ok(())
}

/// A file name and nothing more: no separator, not `.` or `..`.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\', '\0']) && name != "." && name != ".."
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
    Ok(read_json_dir_named(dir, what)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// [`read_json_dir`], each value with its file's name (without `.json`).
fn read_json_dir_named<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
) -> Result<Vec<(String, T)>, SetError> {
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
        let stem = name.trim_end_matches(".json").to_string();
        out.push((
            stem,
            serde_json::from_slice(&text)
                .within(|| format!("{what} {} is damaged", e.path().display()))?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_set_ids_name_a_set() {
        for ok in ["20261207T102054Z-001", "20261207T102054Z-9999"] {
            check_set_id(ok).expect(ok);
        }
        for bad in [
            "",
            "../../victim",
            "20261207T102054Z-001/..",
            "20261207T102054Z-01",
            "20261207T102054Z-00001",
            "20261207T102054Z_001",
            "2026120xT102054Z-001",
            "../sets/20261207T102054Z-001",
            "20261207T102054Z-0a1",
        ] {
            let e = check_set_id(bad).expect_err(bad).to_string();
            assert!(e.contains("not a copy set id"), "{bad}: {e}");
        }
    }

    fn set(id: &str) -> CopySet {
        CopySet {
            id: id.into(),
            kind: SetKind::Plain,
            job: None,
            run: None,
            taken_utc: String::new(),
            taken_local: String::new(),
            source: String::new(),
            dbid: DbId(1),
            lsn: Lsn(1),
            start_lsn: Lsn(1),
            time_us: 0,
            seqs: BTreeMap::new(),
            members: Vec::new(),
            confirmed: Vec::new(),
            bytes: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn a_catalog_entry_naming_another_set_or_a_path_is_refused_and_nothing_outside_is_touched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).expect("victim");
        std::fs::write(victim.join("keep"), b"x").expect("victim file");
        let area = Area::open(&tmp.path().join("area")).expect("area");
        let id = area.new_set(chrono::Utc::now()).expect("id");
        area.record(&set(&id)).expect("record");
        assert_eq!(area.list().expect("list").len(), 1);
        // An entry whose id is a path, under a set id's file name.
        let forged = "20200101T000000Z-001";
        let text = serde_json::to_vec(&set("../../victim")).expect("json");
        std::fs::write(
            area.root().join("sets").join(format!("{forged}.json")),
            text,
        )
        .expect("forge");
        // Left out of the list (the real set stays usable), refused by name.
        let listed: Vec<String> = area
            .list()
            .expect("list")
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(listed, vec![id.clone()]);
        let e = area.get(forged).expect_err("get").to_string();
        assert!(e.contains("is damaged") && e.contains("victim"), "{e}");
        // Removing or discarding by a path is refused, and leaves it be.
        assert!(area.remove("../../victim").is_err());
        area.discard("../../victim");
        area.discard("..");
        assert!(victim.join("keep").exists());
        assert!(area.get("../sets/x").is_err());
    }

    #[test]
    fn a_node_writes_only_into_a_claimed_directory_of_its_area() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let area = Area::open(&tmp.path().join("area")).expect("area");
        let id = area.new_set(chrono::Utc::now()).expect("id");
        assert_eq!(
            area.claimed_dir(&id).expect("claimed"),
            area.root().join("data").join(&id)
        );
        let e = area
            .claimed_dir("20200101T000000Z-001")
            .expect_err("unclaimed");
        assert!(e.to_string().contains("was not claimed"), "{e}");
        // A link in the area's data directory, pointing out of it.
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).expect("out");
        let link = "20200101T000000Z-002";
        std::os::unix::fs::symlink(&out, area.root().join("data").join(link)).expect("link");
        let e = area.claimed_dir(link).expect_err("link");
        assert!(
            e.to_string().contains("is not a directory of copy area"),
            "{e}"
        );
        assert!(area.claimed_dir("../../out").is_err());
        // A catalogued set's directory is not written again.
        area.record(&set(&id)).expect("record");
        let e = area.claimed_dir(&id).expect_err("catalogued");
        assert!(e.to_string().contains("catalogued already"), "{e}");
    }

    #[test]
    fn member_files_are_plain_names() {
        for ok in ["00010-orders.copy", "x", "a..b"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "a\0b"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}
