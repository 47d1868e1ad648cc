//! An in-memory medium for crash and I/O-fault tests.
//!
//! Each file keeps the bytes written so far and, separately, the bytes as of
//! its last successful sync. [`MemDir::crash_image`] builds what a power
//! loss could leave: every synced byte, plus for each file a random prefix of
//! what was written (appended or overwritten in place) after its last sync,
//! sometimes with its last sector replaced by garbage. Faults can be armed:
//! fail the next sync, fail every write from now on, or hold every sync
//! until released (a stalled disk).

use super::{Medium, MediumDir};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Default)]
pub struct MemFile {
    state: Mutex<FileState>,
    faults: Arc<Faults>,
}

#[derive(Default, Clone)]
struct FileState {
    written: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Default)]
struct Faults {
    /// The next this many file creations fail as if the process had no
    /// descriptor left (EMFILE).
    no_descriptors: std::sync::atomic::AtomicUsize,
    fail_next_sync: AtomicBool,
    fail_writes: AtomicBool,
    /// While set, every sync waits for it to be cleared.
    hold: Mutex<SyncHold>,
    released: Condvar,
}

#[derive(Default)]
struct SyncHold {
    on: bool,
    waiting: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Medium for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.state).written.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = lock(&self.state);
        let start = offset as usize;
        let end = start + buf.len();
        if end > s.written.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        buf.copy_from_slice(&s.written[start..end]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        let mut s = lock(&self.state);
        let start = offset as usize;
        if s.written.len() < start + buf.len() {
            s.written.resize(start + buf.len(), 0);
        }
        s.written[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        {
            let mut h = lock(&self.faults.hold);
            h.waiting += 1;
            while h.on {
                h = self
                    .faults
                    .released
                    .wait(h)
                    .unwrap_or_else(|p| p.into_inner());
            }
            h.waiting -= 1;
        }
        if self.faults.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        let mut s = lock(&self.state);
        s.synced = s.written.clone();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.state).written.resize(len as usize, 0);
        Ok(())
    }
}

/// A directory of [`MemFile`]s. Cloning shares the same files.
#[derive(Clone, Default)]
pub struct MemDir {
    files: Arc<Mutex<BTreeMap<String, Arc<MemFile>>>>,
    faults: Arc<Faults>,
}

impl MemDir {
    pub fn new() -> MemDir {
        MemDir::default()
    }

    /// The image a power loss could leave now (see the module docs); `seed`
    /// makes the choice of surviving unsynced bytes reproducible.
    pub fn crash_image(&self, seed: u64) -> MemDir {
        let mut rng = fastrand_lite(seed);
        let files = lock(&self.files);
        let out = MemDir::new();
        for (name, f) in files.iter() {
            let s = lock(&f.state);
            let (w, sy) = (&s.written, &s.synced);
            let mut bytes = sy.clone();
            // Unsynced writes span [first, last]: bytes that differ from the
            // synced image, or non-zero bytes past its end. They survive as a
            // prefix in write order (the writers here write front to back).
            let differs = |i: usize| match sy.get(i) {
                Some(b) => w[i] != *b,
                None => w[i] != 0,
            };
            let first = (0..w.len()).find(|i| differs(*i));
            let last = (0..w.len()).rev().find(|i| differs(*i));
            if let (Some(first), Some(last)) = (first, last) {
                let pending = &w[first..=last];
                // Often all of it reached the disk; otherwise a random prefix.
                let keep = if rng().is_multiple_of(4) {
                    pending.len()
                } else {
                    (rng() % (pending.len() as u64 + 1)) as usize
                };
                if bytes.len() < first + keep {
                    bytes.resize(first + keep, 0);
                }
                bytes[first..first + keep].copy_from_slice(&pending[..keep]);
                // Sometimes the last (partial) sector of what survived is garbage.
                if keep > 0 && rng().is_multiple_of(3) {
                    let end = first + keep;
                    let sector_start = end - (keep % 512).max(1).min(keep);
                    for b in &mut bytes[sector_start..end] {
                        *b = (rng() & 0xff) as u8;
                    }
                }
            }
            // An unsynced extension of the file (preallocated zeros) may or
            // may not have reached the disk.
            if w.len() > bytes.len() && rng().is_multiple_of(2) {
                bytes.resize(w.len(), 0);
            }
            out.insert(name, bytes);
        }
        out
    }

    /// Only the synced bytes of every file: the plainest power loss.
    pub fn synced_image(&self) -> MemDir {
        let files = lock(&self.files);
        let out = MemDir::new();
        for (name, f) in files.iter() {
            out.insert(name, lock(&f.state).synced.clone());
        }
        out
    }

    /// Puts a file with these (synced) bytes into the directory.
    pub fn insert(&self, name: &str, bytes: Vec<u8>) {
        let f = MemFile {
            state: Mutex::new(FileState {
                written: bytes.clone(),
                synced: bytes,
            }),
            faults: self.faults.clone(),
        };
        lock(&self.files).insert(name.to_string(), Arc::new(f));
    }

    /// The current (written) bytes of a file.
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.files)
            .get(name)
            .map(|f| lock(&f.state).written.clone())
    }

    /// The next `n` file creations fail with EMFILE ("too many open
    /// files"), as when connections hold every descriptor.
    pub fn no_descriptors_for(&self, n: usize) {
        self.faults.no_descriptors.store(n, Ordering::SeqCst);
    }

    pub fn fail_next_sync(&self) {
        self.faults.fail_next_sync.store(true, Ordering::SeqCst);
    }

    pub fn fail_writes(&self, on: bool) {
        self.faults.fail_writes.store(on, Ordering::SeqCst);
    }

    /// Holds every sync (`true`) until released (`false`): a disk that
    /// stalls, so a test can queue commits behind a sync in progress.
    pub fn hold_syncs(&self, on: bool) {
        lock(&self.faults.hold).on = on;
        if !on {
            self.faults.released.notify_all();
        }
    }

    /// Syncs waiting on [`MemDir::hold_syncs`] now.
    pub fn syncs_held(&self) -> usize {
        lock(&self.faults.hold).waiting
    }
}

/// A small xorshift generator: crash images must not depend on a global RNG.
fn fastrand_lite(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

impl MediumDir for MemDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.files).keys().cloned().collect())
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn Medium>> {
        lock(&self.files)
            .get(name)
            .cloned()
            .map(|f| f as Arc<dyn Medium>)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn Medium>> {
        let out =
            self.faults
                .no_descriptors
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if out.is_ok() {
            return Err(io::Error::from_raw_os_error(24));
        }
        let mut files = lock(&self.files);
        if files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let f = Arc::new(MemFile {
            state: Mutex::default(),
            faults: self.faults.clone(),
        });
        files.insert(name.to_string(), f.clone());
        Ok(f)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        lock(&self.files)
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = lock(&self.files);
        let f = files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        files.insert(to.to_string(), f);
        Ok(())
    }
    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self, name: &str) -> String {
        format!("mem:{name}")
    }
}
