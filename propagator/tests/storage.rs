//! Guards the storage-core invariants in-process: atomicity of a master
//! change and its log record, autobackout, autorestart (redo after the page
//! store fell behind), power-loss images of the protection log, and damage
//! that is detected and named, never used.

mod sled {
    const ENGINE: propagator::Engine = propagator::Engine::Sled;
    include!("storage/cases.rs");
}

mod fjall {
    const ENGINE: propagator::Engine = propagator::Engine::Fjall;
    include!("storage/cases.rs");
}

/// The engine a database was made with is the one it opens with, and the
/// one `Database::engine` reports.
#[test]
fn each_database_keeps_the_engine_it_was_made_with() {
    for engine in propagator::Engine::ALL {
        let t = tempfile::tempdir().expect("tempdir");
        propagator::Database::init_with_engine(t.path(), propagator::DbId(1), None, engine)
            .expect("init");
        let (db, _) = propagator::Database::open(t.path()).expect("open");
        assert_eq!(db.engine(), engine);
    }
}

/// The environment variable that makes
/// [`fjall_store_killed_while_writing_hard_keeps_taking_writes`] the child
/// that writes and dies (its value: the store's directory).
const KILLED_WRITER: &str = "ETP_TEST_KILLED_WRITER_STORE";

/// One batch of `n` records of 150 bytes to two files from `first` on.
fn hard_batch(applied: u64, first: u64, n: u64) -> propagator::store::StoreBatch {
    let mut records = Vec::with_capacity(2 * n as usize);
    for i in first..first + n {
        for fnr in [propagator::Fnr(20), propagator::Fnr(21)] {
            records.push((fnr, propagator::Isn(i), Some(vec![(i % 251) as u8; 150])));
        }
    }
    propagator::store::StoreBatch {
        applied: propagator::Lsn(applied),
        records,
        ..Default::default()
    }
}

/// The fjall journals in a store directory.
fn journals(store: &std::path::Path) -> usize {
    std::fs::read_dir(store.join("journals")).map_or(0, |d| d.count())
}

/// A store killed while it writes hard is recovered with several sealed
/// memtables per partition to flush. fjall 2.11.2's flusher flushed one
/// per wake-up and recovery woke it once per partition, so the rest stayed
/// queued, kept their journals and filled the write buffer, and writes
/// after the reopen halted for good (`vendor/fjall/PATCHES.md`). The child
/// process writes on and is killed (-9) once six journals exist; the
/// reopened store must then take another 400,000
/// records (about a second here; 60 s allowed) and free its journals (a
/// memtable left queued keeps them all, until writes halt once they reach
/// 512 MiB; without the fix 54 were left after 30 s).
#[test]
fn fjall_store_killed_while_writing_hard_keeps_taking_writes() {
    use propagator::store::PageStore;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::mpsc::RecvTimeoutError;
    const BATCH: u64 = 2_000;
    /// The child's exit code when it wrote its most without six journals.
    const TOO_FEW_JOURNALS: i32 = 3;
    if let Ok(dir) = std::env::var(KILLED_WRITER) {
        let dir = std::path::PathBuf::from(dir);
        let s = PageStore::open(&dir, propagator::Engine::Fjall, 64 << 20, 1 << 20).expect("store");
        let mut told = false;
        for i in 1..=4_000 {
            s.apply(&hard_batch(i, i * BATCH, BATCH)).expect("write");
            if !told && journals(&dir) >= 6 {
                // Still writing when the parent's kill lands.
                println!("six journals");
                told = true;
            }
        }
        std::process::exit(TOO_FEW_JOURNALS);
    }
    for _round in 0..3 {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("store");
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = std::process::Command::new(exe)
            .args([
                "--exact",
                "fjall_store_killed_while_writing_hard_keeps_taking_writes",
                "--nocapture",
                "--quiet",
            ])
            .env(KILLED_WRITER, &dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run the writer");
        let out = child.stdout.take().expect("the writer's stdout");
        let told = std::io::BufRead::lines(std::io::BufReader::new(out))
            .map_while(Result::ok)
            .any(|l| l == "six journals");
        let _ = child.kill();
        let status = child.wait().expect("the writer's end");
        assert!(
            told && status.signal() == Some(9),
            "the writer was to be killed while writing with six journals: {status}"
        );
        let sealed = journals(&dir);
        assert!(
            sealed >= 4,
            "the writer was killed with only {sealed} journals"
        );
        let s =
            PageStore::open(&dir, propagator::Engine::Fjall, 64 << 20, 1 << 20).expect("reopen");
        let s = std::sync::Arc::new(s);
        let from = s.applied_lsn().expect("applied").0 + 1;
        let (tx, rx) = std::sync::mpsc::channel();
        let w = s.clone();
        let writer = std::thread::spawn(move || {
            for k in 0..100 {
                let lsn = from + k;
                w.apply(&hard_batch(lsn, lsn * BATCH, BATCH))
                    .expect("write after the reopen");
                if tx.send(k + 1).is_err() {
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut done = 0;
        while done < 100 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(k) => done = k,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "writes halted after the reopen of a store killed with {sealed} journals: \
                     {done} of 100 batches in 60 s, {} journals now",
                    journals(&dir)
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let e = writer.join().err();
                    panic!("the writer after the reopen failed: {e:?}")
                }
            }
        }
        writer.join().expect("the writer after the reopen");
        // Everything written is flushed in the end, and the journals go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while journals(&dir) > 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the journals of a store killed with {sealed} are never freed: {} after 30 s",
                journals(&dir)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(s);
    }
}
