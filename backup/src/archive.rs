//! Archiving the protection log: closed segments are copied into the copy
//! area (`plog/db<ID>/`, each with a JSON record of its LSN range, size and
//! blake3, written after the copy is synced and read back), and only then
//! may a segment leave the database's log — never one that the oldest
//! catalogued copy set of the database still needs to roll forward, nor
//! one restart recovery could need.

use crate::area::{read_json_dir, write_json_durably, Area};
use crate::error::{Error, Within};
use crate::take::Source;
use propagator::medium::{FsDir, MediumDir};
use propagator::{DbId, Lsn, SegmentInfo};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;

/// One archived segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    pub segment: SegmentInfo,
    pub blake3: String,
}

pub(crate) fn dir_of(area: &Area, dbid: DbId) -> PathBuf {
    area.root().join("plog").join(format!("db{}", dbid.0))
}

pub(crate) fn hash_file(path: &std::path::Path) -> Result<(u64, String), Error> {
    let mut f = std::fs::File::open(path).within(|| format!("cannot read {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .within(|| format!("cannot read {}", path.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

/// Every archived segment of database `dbid`, oldest first.
pub fn list(area: &Area, dbid: DbId) -> Result<Vec<Archived>, Error> {
    let mut out: Vec<Archived> = read_json_dir(&dir_of(area, dbid), "archive record")?;
    out.sort_by_key(|a| a.segment.no);
    Ok(out)
}

/// Re-hashes an archived segment; an error names the file.
pub fn verify(area: &Area, dbid: DbId, a: &Archived) -> Result<(), Error> {
    let path = dir_of(area, dbid).join(&a.segment.name);
    let (n, h) = hash_file(&path)?;
    if n != a.segment.bytes || h != a.blake3 {
        return Err(Error::Refused(format!(
            "archived log segment {} is {n} bytes with blake3 {h}, but was archived as {} bytes with blake3 {}",
            path.display(),
            a.segment.bytes,
            a.blake3
        )));
    }
    Ok(())
}

/// Archives every closed segment of the source's log not archived yet.
/// The segment files are read where the source's node keeps them (the
/// copy area and the nodes share a machine or a file system).
pub fn archive(area: &Area, source: &Source) -> Result<Vec<Archived>, Error> {
    let (dbid, _, _) = source.catalog()?;
    let dir = dir_of(area, dbid);
    std::fs::create_dir_all(&dir).within(|| format!("cannot create {}", dir.display()))?;
    let have: Vec<u64> = list(area, dbid)?.iter().map(|a| a.segment.no).collect();
    let mut out = Vec::new();
    for seg in source.segments()? {
        if seg.last_lsn.is_none() || have.contains(&seg.no) {
            continue;
        }
        let bytes =
            std::fs::read(&seg.path).within(|| format!("cannot read log segment {}", seg.path))?;
        if bytes.len() as u64 != seg.bytes {
            return Err(Error::Refused(format!(
                "log segment {} changed size while being archived",
                seg.path
            )));
        }
        out.push(store(area, dbid, seg, &bytes)?);
    }
    Ok(out)
}

/// Writes one segment's bytes into the archive (replacing an archived copy
/// of the same segment), synced and read back before its record is written.
pub fn store(area: &Area, dbid: DbId, seg: SegmentInfo, bytes: &[u8]) -> Result<Archived, Error> {
    let dir = dir_of(area, dbid);
    std::fs::create_dir_all(&dir).within(|| format!("cannot create {}", dir.display()))?;
    let medium = FsDir::new(&dir);
    let _ = medium.remove(&seg.name); // a leftover of an archive cut short
    medium
        .create(&seg.name)
        .and_then(|m| m.write_at(bytes, 0).and_then(|_| m.sync()))
        .and_then(|_| medium.sync_dir())
        .within(|| format!("cannot write {}", medium.describe(&seg.name)))?;
    let a = Archived {
        blake3: blake3::hash(bytes).to_hex().to_string(),
        segment: SegmentInfo {
            bytes: bytes.len() as u64,
            ..seg
        },
    };
    verify(area, dbid, &a)?;
    write_json_durably(&dir, &a.segment.name, &a)?;
    Ok(a)
}

/// Moves an archived segment (and its record) out of the archive into
/// `superseded-STAMP/` beside it: a database recovered to an LSN before it
/// left the history it belongs to.
pub fn set_aside(area: &Area, dbid: DbId, a: &Archived, stamp: &str) -> Result<PathBuf, Error> {
    let dir = dir_of(area, dbid);
    let to = dir.join(format!("superseded-{stamp}"));
    std::fs::create_dir_all(&to).within(|| format!("cannot create {}", to.display()))?;
    for name in [a.segment.name.clone(), format!("{}.json", a.segment.name)] {
        let from = dir.join(&name);
        if from.exists() {
            std::fs::rename(&from, to.join(&name))
                .within(|| format!("cannot move {}", from.display()))?;
        }
    }
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .within(|| format!("cannot sync {}", dir.display()))?;
    Ok(to)
}

/// What a prune did and why it stopped where it did.
#[derive(Debug, Serialize)]
pub struct Pruned {
    /// The oldest catalogued set's LSN: nothing after it is removed.
    pub horizon: Option<Lsn>,
    pub removed: Vec<SegmentInfo>,
    pub note: String,
}

/// Removes from the source's log the closed segments that are archived
/// (and verify) and wholly at or before the oldest catalogued copy set of
/// the database: every set can still be rolled forward from the live log.
pub fn prune(area: &Area, source: &Source) -> Result<Pruned, Error> {
    let (dbid, _, _) = source.catalog()?;
    let Some(oldest) = area
        .list()?
        .into_iter()
        .filter(|s| s.dbid == dbid)
        .map(|s| s.lsn)
        .min()
    else {
        return Ok(Pruned {
            horizon: None,
            removed: Vec::new(),
            note: format!("no catalogued copy set of database {dbid}: no log segment is removed"),
        });
    };
    let archived = list(area, dbid)?;
    let mut through = Lsn(0);
    for seg in source.segments()? {
        let Some(last) = seg.last_lsn else { break };
        if last > oldest {
            break;
        }
        let Some(a) = archived.iter().find(|a| a.segment.no == seg.no) else {
            break;
        };
        verify(area, dbid, a)?;
        through = last;
    }
    let removed = if through.0 == 0 {
        Vec::new()
    } else {
        source.remove_segments(through)?
    };
    let note = format!(
        "removed {} segment(s) through LSN {through}; the oldest copy set is at LSN {oldest}",
        removed.len()
    );
    Ok(Pruned {
        horizon: Some(oldest),
        removed,
        note,
    })
}
