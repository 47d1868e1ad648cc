//! The I/O seam under the protection log (and, later, copy files).
//!
//! Everything the engine writes that must survive a crash goes through a
//! [`Medium`] inside a [`MediumDir`]. Production uses [`FsDir`]; tests use
//! [`MemDir`], which keeps written bytes apart from synced bytes and can
//! build the image a crash or power loss would leave (after redb's
//! `tests/crash_consistency.rs`).

mod mem;

pub use mem::{MemDir, MemFile};

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file: positioned reads and writes, length, durable sync.
#[allow(clippy::len_without_is_empty)]
pub trait Medium: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Starts writing `len` bytes at `offset` to the device without waiting,
    /// so that work done before [`Medium::sync`] overlaps the write. Only a
    /// hint: nothing is durable until `sync` returns, and its failure is
    /// `sync`'s to report.
    fn start_sync(&self, _offset: u64, _len: u64) {}
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A directory of media.
pub trait MediumDir: Send + Sync {
    fn list(&self) -> io::Result<Vec<String>>;
    fn open(&self, name: &str) -> io::Result<Arc<dyn Medium>>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Arc<dyn Medium>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists (atomically, as
    /// rename(2) does); durable after [`MediumDir::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// How to name `name` to an operator (a path).
    fn describe(&self, name: &str) -> String;
}

/// A real directory.
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    pub fn new(path: impl AsRef<Path>) -> FsDir {
        FsDir {
            path: path.as_ref().to_path_buf(),
        }
    }
}

struct FsFile(File);

impl Medium for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    /// `posix_fadvise(DONTNEED)`, which on Linux starts the writeback of
    /// the range's dirty pages and returns (PostgreSQL's `pg_flush_data`
    /// falls back to it where `sync_file_range` is missing). The range was
    /// just written, so every page of it is dirty and none is dropped.
    fn start_sync(&self, offset: u64, len: u64) {
        // No length would mean "to the end of the file".
        if let Some(len) = std::num::NonZeroU64::new(len) {
            let _ = rustix::fs::fadvise(&self.0, offset, Some(len), rustix::fs::Advice::DontNeed);
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl MediumDir for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(n) = e.file_name().to_str() {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn Medium>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join(name))?;
        Ok(Arc::new(FsFile(f)))
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn Medium>> {
        use std::os::unix::fs::OpenOptionsExt;
        // Readable by the database's owner only (see `database::private`).
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path.join(name))?;
        Ok(Arc::new(FsFile(f)))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}
