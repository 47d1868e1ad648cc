//! Newtypes for the engine's identifiers and counters, so a file number can
//! never be passed where a record number or log position is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// A database: one node process with its own data directory.
    DbId, u32
);
id_type!(
    /// A file number inside one database.
    Fnr, u32
);
id_type!(
    /// Internal sequence number: the key of a record inside a file.
    Isn, u64
);
id_type!(
    /// Position of a committed transaction in the protection log (1, 2, 3, … gap-free).
    Lsn, u64
);
id_type!(
    /// Position of a log record in a master's ETP log file (1, 2, 3, … gap-free per master).
    Seq, u64
);

impl Lsn {
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}
