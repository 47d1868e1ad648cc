//! What goes wrong with copy sets, jobs and archives.

use propagator::copy::CopyError;
use propagator::copy::SetError;
use propagator::node::client::ClientError;
use propagator::node::NodeError;
use propagator::DbError;

/// Why a copy, a job or an archive did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A copy rule, a job definition or what the area holds refuses it.
    #[error("{0}")]
    Refused(String),
    /// A node answered what the request does not expect.
    #[error("{0}")]
    Unexpected(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error(transparent)]
    Set(#[from] SetError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Where it happened, and what went wrong there.
    #[error("{context}: {source}")]
    In {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

/// Says where an error happened, as `anyhow`'s `with_context` does.
pub trait Within<T> {
    fn within(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Within<T> for Result<T, E> {
    fn within(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::In {
            context: context(),
            source: Box::new(e.into()),
        })
    }
}
