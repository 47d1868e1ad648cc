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
