//! Errors of loading and checking trees.

use std::path::PathBuf;

use crate::validate::Invalid;

/// Why a tree or a set of trees was refused.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The text is not a tree file (TOML syntax, missing or misspelt key).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// The tree parsed but is not acceptable; every problem names its node.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Two files declare the same tree id.
    #[error("tree `{id}` is defined by both {first} and {second}")]
    DuplicateTree {
        id: String,
        first: String,
        second: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
