//! The error of copy-set work above one copy file: the copy area, its
//! catalog, verification, restore, regenerate and backout.

use crate::copy::CopyError;
use crate::error::DbError;
use crate::framed::FramedError;
use crate::slice::SliceError;

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// A rule of copy sets, or what the area holds, refuses the request.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Framed(#[from] FramedError),
    #[error(transparent)]
    Slice(#[from] SliceError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// What was being done when `source` happened.
    #[error("{context}: {source}")]
    In {
        context: String,
        #[source]
        source: Box<SetError>,
    },
}

/// Says what was being done when an error happened (as anyhow's context).
pub trait Within<T> {
    fn within(self, context: impl FnOnce() -> String) -> Result<T, SetError>;
}

impl<T, E: Into<SetError>> Within<T> for Result<T, E> {
    fn within(self, context: impl FnOnce() -> String) -> Result<T, SetError> {
        self.map_err(|e| SetError::In {
            context: context(),
            source: Box::new(e.into()),
        })
    }
}
