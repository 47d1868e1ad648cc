//! The durable file primitives every journal and catalog shares, written
//! through the medium seam ([`crate::medium`]) so the crash-image tests that
//! cover the protection log cover them too.
//!
//! **A framed file** ([`FramedFile`]) is an 8-byte magic naming its kind,
//! then frames:
//!
//! ```text
//! len: u32 LE | !len: u32 LE | checksum: u64 LE (first 8 bytes of blake3(payload)) | payload (len bytes)
//! ```
//!
//! Every append is synced before it returns; creating the file syncs it and
//! its directory. Reading tells a **torn tail** from damage: the last frame
//! cut short by a crash while it was written, or with its unwritten part
//! left as zeros (its header complete, its payload ending in zero bytes,
//! nothing after it), never completed, so nothing was done on its strength,
//! and it is cut off (with a warning). A frame whose length fields disagree,
//! or whose checksum does not match anywhere else, is damage, named by file
//! and byte offset, and nothing runs on it. (Payloads here are JSON, which
//! never ends in a zero byte, so a flipped byte in a complete last entry is
//! still damage.)
//!
//! **A replacement** ([`replace`]) writes a whole file under a temporary
//! name, syncs it, renames it over the old one and syncs the directory: a
//! reader sees the old content or the new, never part of either. A framed
//! file is rewritten (compacted) that way.

use crate::medium::{Medium, MediumDir};
use std::io;
use std::sync::Arc;

/// Header bytes of a frame.
pub const FRAME_HEADER: usize = 16;
/// The largest payload accepted: guards the length field against damage.
pub const MAX_PAYLOAD: u32 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error("{file} is damaged at byte offset {offset}: {reason}")]
    Damaged {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("cannot {what} {file}: {source}")]
    Io {
        what: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}

fn checksum(payload: &[u8]) -> u64 {
    let h = blake3::hash(payload);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[..4]);
    u32::from_le_bytes(x)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_le_bytes(x)
}

/// One frame around `payload`, ready to append.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut b = Vec::with_capacity(FRAME_HEADER + payload.len());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&(!len).to_le_bytes());
    b.extend_from_slice(&checksum(payload).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// What reading a framed file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Each frame's payload with its byte offset.
    pub frames: Vec<(u64, Vec<u8>)>,
    /// Bytes of whole, valid content (magic included); 0 for an empty file.
    pub valid_len: u64,
    /// A torn tail: its offset and length.
    pub torn: Option<(u64, u64)>,
}

impl Scan {
    /// The warning a dropped torn tail deserves, if there was one.
    pub fn torn_warning(&self, file: &str) -> Option<String> {
        self.torn.map(|(offset, len)| {
            format!(
                "{file}: dropped an incomplete entry at byte offset {offset} ({len} bytes): \
                 its write never completed (a crash while writing), so nothing was done on its strength"
            )
        })
    }
}

/// Reads the frames of `bytes`, a file of kind `magic` named `file` in errors.
pub fn scan(file: &str, magic: &[u8; 8], bytes: &[u8]) -> Result<Scan, FramedError> {
    let damaged = |offset: usize, reason: String| FramedError::Damaged {
        file: file.to_string(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < magic.len() {
        // A file cut short while its magic was written, or never written.
        if magic.starts_with(bytes) || bytes.iter().all(|b| *b == 0) {
            return Ok(Scan {
                torn: (!bytes.is_empty()).then_some((0, bytes.len() as u64)),
                ..Scan::default()
            });
        }
        return Err(damaged(0, "not a file of this kind (bad magic)".into()));
    }
    if &bytes[..magic.len()] != magic {
        return Err(damaged(0, "not a file of this kind (bad magic)".into()));
    }
    let mut off = magic.len();
    let mut frames = Vec::new();
    let mut torn = None;
    while off < bytes.len() {
        let rest = &bytes[off..];
        if rest.len() < FRAME_HEADER || rest.iter().all(|b| *b == 0) {
            torn = Some((off as u64, rest.len() as u64));
            break;
        }
        let len = le_u32(rest);
        if le_u32(&rest[4..]) != !len || len > MAX_PAYLOAD {
            return Err(damaged(
                off,
                "entry header is corrupt (length check fails)".into(),
            ));
        }
        let end = FRAME_HEADER + len as usize;
        if rest.len() < end {
            torn = Some((off as u64, rest.len() as u64));
            break;
        }
        let payload = &rest[FRAME_HEADER..end];
        if checksum(payload) != le_u64(&rest[8..]) {
            if end == rest.len() && payload.last() == Some(&0) {
                // The last append, its unwritten tail still zeros.
                torn = Some((off as u64, rest.len() as u64));
                break;
            }
            return Err(damaged(
                off,
                format!("checksum mismatch in a {len}-byte entry"),
            ));
        }
        frames.push((off as u64, payload.to_vec()));
        off += end;
    }
    Ok(Scan {
        valid_len: torn.map_or(bytes.len() as u64, |(o, _)| o),
        frames,
        torn,
    })
}

fn io_err(what: &'static str, file: String) -> impl FnOnce(io::Error) -> FramedError {
    move |source| FramedError::Io { what, file, source }
}

fn read_all(m: &dyn Medium) -> io::Result<Vec<u8>> {
    let len = m.len()? as usize;
    let mut b = vec![0u8; len];
    m.read_at(&mut b, 0)?;
    Ok(b)
}

/// Reads framed file `name` of `dir` without changing it; `None` if it does
/// not exist.
pub fn read(dir: &dyn MediumDir, name: &str, magic: &[u8; 8]) -> Result<Option<Scan>, FramedError> {
    let file = dir.describe(name);
    if !dir
        .list()
        .map_err(io_err("list the directory of", file.clone()))?
        .iter()
        .any(|n| n == name)
    {
        return Ok(None);
    }
    let m = dir.open(name).map_err(io_err("open", file.clone()))?;
    let bytes = read_all(m.as_ref()).map_err(io_err("read", file.clone()))?;
    scan(&file, magic, &bytes).map(Some)
}

/// Reads the framed file at `path` without opening it for writing (another
/// process may hold it and append); a missing file reads as empty.
pub fn read_path(path: &std::path::Path, magic: &[u8; 8]) -> Result<Scan, FramedError> {
    let file = path.display().to_string();
    match std::fs::read(path) {
        Ok(b) => scan(&file, magic, &b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Scan::default()),
        Err(e) => Err(io_err("read", file)(e)),
    }
}

/// Replaces file `name` of `dir` with `bytes`, atomically and durably (see
/// the module docs).
pub fn replace(dir: &dyn MediumDir, name: &str, bytes: &[u8]) -> Result<(), FramedError> {
    let tmp = format!(".{name}.tmp");
    let file = dir.describe(&tmp);
    if dir
        .list()
        .map_err(io_err("list the directory of", file.clone()))?
        .contains(&tmp)
    {
        dir.remove(&tmp).map_err(io_err("remove", file.clone()))?;
    }
    let m = dir.create(&tmp).map_err(io_err("create", file.clone()))?;
    m.write_at(bytes, 0)
        .and_then(|()| m.sync())
        .map_err(io_err("write", file.clone()))?;
    drop(m);
    dir.rename(&tmp, name)
        .map_err(io_err("rename into place", dir.describe(name)))?;
    dir.sync_dir()
        .map_err(io_err("sync the directory of", dir.describe(name)))
}

/// An open framed file, appended to durably.
pub struct FramedFile {
    dir: Arc<dyn MediumDir>,
    name: String,
    magic: [u8; 8],
    medium: Arc<dyn Medium>,
    len: u64,
    /// A rewrite failed part-way: which file the name holds is unknown, so
    /// nothing more is appended through this handle.
    broken: bool,
}

impl FramedFile {
    /// Opens framed file `name` of `dir`, creating it (magic written, file
    /// and directory synced) if it does not exist, and cutting off a torn
    /// tail (synced). Returns the file and what it held.
    pub fn open(
        dir: Arc<dyn MediumDir>,
        name: &str,
        magic: &[u8; 8],
    ) -> Result<(FramedFile, Scan), FramedError> {
        let file = dir.describe(name);
        // A replacement that did not finish: the file itself is intact.
        let tmp = format!(".{name}.tmp");
        let names = dir
            .list()
            .map_err(io_err("list the directory of", file.clone()))?;
        if names.contains(&tmp) {
            dir.remove(&tmp)
                .map_err(io_err("remove", dir.describe(&tmp)))?;
        }
        let (medium, scan) = if names.iter().any(|n| n == name) {
            let m = dir.open(name).map_err(io_err("open", file.clone()))?;
            let bytes = read_all(m.as_ref()).map_err(io_err("read", file.clone()))?;
            (m, scan(&file, magic, &bytes)?)
        } else {
            let m = dir.create(name).map_err(io_err("create", file.clone()))?;
            (m, Scan::default())
        };
        let mut len = scan.valid_len;
        if scan.torn.is_some() {
            medium
                .set_len(len)
                .and_then(|()| medium.sync())
                .map_err(io_err("cut the torn tail of", file.clone()))?;
        }
        if len < magic.len() as u64 {
            medium
                .set_len(0)
                .and_then(|()| medium.write_at(magic, 0))
                .and_then(|()| medium.sync())
                .map_err(io_err("write", file.clone()))?;
            dir.sync_dir()
                .map_err(io_err("sync the directory of", file.clone()))?;
            len = magic.len() as u64;
        }
        Ok((
            FramedFile {
                dir,
                name: name.to_string(),
                magic: *magic,
                medium,
                len,
                broken: false,
            },
            scan,
        ))
    }

    /// How to name the file to an operator.
    pub fn describe(&self) -> String {
        self.dir.describe(&self.name)
    }

    /// Appends one frame and syncs it before returning.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), FramedError> {
        if self.broken {
            return Err(FramedError::Io {
                what: "append to",
                file: self.describe(),
                source: io::Error::other("an earlier rewrite of it failed; open it again"),
            });
        }
        let b = encode_frame(payload);
        self.medium
            .write_at(&b, self.len)
            .and_then(|()| self.medium.sync())
            .map_err(io_err("append to", self.describe()))?;
        self.len += b.len() as u64;
        Ok(())
    }

    /// Rewrites the file to hold exactly `payloads` (a compaction), atomically.
    pub fn rewrite<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), FramedError> {
        let mut b = self.magic.to_vec();
        for p in payloads {
            b.extend_from_slice(&encode_frame(p));
        }
        self.broken = true;
        replace(self.dir.as_ref(), &self.name, &b)?;
        self.medium = self
            .dir
            .open(&self.name)
            .map_err(io_err("open", self.describe()))?;
        self.len = b.len() as u64;
        self.broken = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medium::MemDir;

    const MAGIC: &[u8; 8] = b"TESTFRM1";

    fn payloads(s: &Scan) -> Vec<Vec<u8>> {
        s.frames.iter().map(|(_, p)| p.clone()).collect()
    }

    #[test]
    fn appends_survive_reopen_and_a_rewrite_replaces_them() {
        let dir: Arc<dyn MediumDir> = Arc::new(MemDir::new());
        let (mut f, s) = FramedFile::open(dir.clone(), "j", MAGIC).expect("open");
        assert!(s.frames.is_empty());
        f.append(b"one").expect("append");
        f.append(b"two").expect("append");
        let (mut f, s) = FramedFile::open(dir.clone(), "j", MAGIC).expect("reopen");
        assert_eq!(payloads(&s), vec![b"one".to_vec(), b"two".to_vec()]);
        f.rewrite([b"two".as_slice()]).expect("rewrite");
        f.append(b"three").expect("append after rewrite");
        let s = read(dir.as_ref(), "j", MAGIC)
            .expect("read")
            .expect("exists");
        assert_eq!(payloads(&s), vec![b"two".to_vec(), b"three".to_vec()]);
        assert!(!dir
            .list()
            .expect("list")
            .iter()
            .any(|n| n.ends_with(".tmp")));
    }

    /// A power loss keeps every synced append; of the append under way when
    /// it struck, any prefix may have reached the disk. Reopening cuts that
    /// torn tail (never calls it damage) and keeps everything before it.
    #[test]
    fn power_loss_keeps_every_synced_frame_and_cuts_the_torn_tail() {
        for seed in 0..200u64 {
            let mem = MemDir::new();
            let dir: Arc<dyn MediumDir> = Arc::new(mem.clone());
            let (mut f, _) = FramedFile::open(dir.clone(), "j", MAGIC).expect("open");
            let n = 1 + seed % 7;
            for i in 0..n {
                f.append(format!("entry {i} {}", "x".repeat((seed % 50) as usize)).as_bytes())
                    .expect("append");
            }
            // The append under way: written, never synced; a prefix survives.
            let pending = encode_frame(b"the entry being written when the power went");
            let m = dir.open("j").expect("open medium");
            let at = m.len().expect("len");
            m.write_at(&pending, at).expect("write");
            let image = mem.synced_image();
            let survived = (seed as usize * 7) % (pending.len() + 1);
            let mut bytes = image.bytes("j").expect("the journal");
            bytes.extend_from_slice(&pending[..survived]);
            image.insert("j", bytes);
            let image: Arc<dyn MediumDir> = Arc::new(image);
            let (_, s) = FramedFile::open(image.clone(), "j", MAGIC).expect("reopen the image");
            let whole = survived == pending.len();
            assert_eq!(s.frames.len() as u64, n + u64::from(whole), "seed {seed}");
            assert_eq!(s.torn.is_some(), survived > 0 && !whole, "seed {seed}");
            let again = read(image.as_ref(), "j", MAGIC)
                .expect("read")
                .expect("exists");
            assert_eq!(again.torn, None, "seed {seed}: the torn tail was cut");
        }
    }

    /// The last append's header reached the disk, its payload did not (the
    /// extended file reads as zeros there): torn, not damage.
    #[test]
    fn a_last_frame_with_a_zeroed_payload_is_a_torn_tail() {
        let mem = MemDir::new();
        let dir: Arc<dyn MediumDir> = Arc::new(mem.clone());
        let (mut f, _) = FramedFile::open(dir.clone(), "j", MAGIC).expect("open");
        f.append(br#"{"a":1}"#).expect("append");
        let full = mem.bytes("j").expect("file");
        let next = encode_frame(br#"{"entry":"being written when the power went"}"#);
        let mut torn = full.clone();
        torn.extend_from_slice(&next[..FRAME_HEADER]);
        torn.resize(full.len() + next.len(), 0);
        let image = MemDir::new();
        image.insert("j", torn);
        let image: Arc<dyn MediumDir> = Arc::new(image);
        let (_, s) = FramedFile::open(image.clone(), "j", MAGIC).expect("torn, not damaged");
        assert_eq!(s.frames.len(), 1);
        assert_eq!(s.torn, Some((full.len() as u64, next.len() as u64)));
        // Cut: the file holds the first entry only.
        let again = read(image.as_ref(), "j", MAGIC)
            .expect("read")
            .expect("exists");
        assert_eq!((again.frames.len(), again.torn), (1, None));
    }

    /// A rewrite that failed part-way leaves the handle refusing appends:
    /// which file its name now holds is not known.
    #[test]
    fn appends_are_refused_after_a_failed_rewrite() {
        let mem = MemDir::new();
        let dir: Arc<dyn MediumDir> = Arc::new(mem.clone());
        let (mut f, _) = FramedFile::open(dir, "j", MAGIC).expect("open");
        f.append(b"one").expect("append");
        mem.fail_next_sync();
        assert!(f.rewrite([b"two".as_slice()]).is_err());
        assert!(f.append(b"three").is_err());
    }

    #[test]
    fn a_flipped_byte_is_damage_named_by_offset_not_a_torn_tail() {
        let dir: Arc<dyn MediumDir> = Arc::new(MemDir::new());
        let (mut f, _) = FramedFile::open(dir.clone(), "j", MAGIC).expect("open");
        f.append(b"first entry").expect("append");
        f.append(b"second entry").expect("append");
        let m = dir.open("j").expect("medium");
        let mut b = [0u8; 1];
        let at = MAGIC.len() as u64 + FRAME_HEADER as u64 + 2;
        m.read_at(&mut b, at).expect("read");
        m.write_at(&[b[0] ^ 0x20], at).expect("flip");
        match FramedFile::open(dir.clone(), "j", MAGIC) {
            Err(FramedError::Damaged { offset, reason, .. }) => {
                assert_eq!(offset, MAGIC.len() as u64, "{reason}");
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected damage, got {:?}", other.map(|(_, s)| s)),
        }
        // Another kind of file is refused by its magic.
        assert!(matches!(
            FramedFile::open(dir, "j", b"OTHERKND"),
            Err(FramedError::Damaged { offset: 0, .. })
        ));
    }
}
