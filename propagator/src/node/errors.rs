//! The node's error types for operator requests, and the one way it runs
//! blocking work off the reactor.
//!
//! Every error here carries the [`ErrorCode`] its answer goes out with, so
//! a client decides by code; the message is for people.

use crate::error::DbError;
use crate::node::control::ControlError;
use crate::wire::{ErrorCode, Failure};

/// A blocking task that panicked or was cancelled: nothing is known of
/// what it did.
#[derive(Debug, thiserror::Error)]
#[error("internal error: {0}")]
pub struct Internal(pub String);

/// Runs `f` on tokio's blocking pool (database calls block: ET waits for
/// the log sync). A panic there becomes `E`'s internal error.
pub(crate) async fn off_reactor<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<Internal> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(E::from(Internal(e.to_string()))),
    }
}

impl From<Internal> for Failure {
    fn from(e: Internal) -> Failure {
        Failure::new(ErrorCode::OutcomeUnknown, e.to_string())
    }
}

/// Why an operator request (task control, a replicate's lifecycle, xref,
/// log cleanup, a topology apply) was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request names what this node does not have (a replicate no
    /// task feeds, a transaction no log holds): the same request fails
    /// again.
    #[error("{0}")]
    NotHere(String),
    /// A rule refused it (a load in progress, a seq behind the
    /// confirmation, a topology this node cannot take): nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The replicate's node could not be reached, or the link failed.
    #[error("{0}")]
    Link(String),
    /// The peer's certificate does not allow it.
    #[error("{0}")]
    NotAllowed(String),
    /// A call to another node failed (its code is kept).
    #[error(transparent)]
    Client(#[from] crate::node::client::ClientError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Internal(#[from] Internal),
}

impl OpError {
    pub fn code(&self) -> ErrorCode {
        match self {
            OpError::NotHere(_) => ErrorCode::BadRequest,
            OpError::Refused(_) => ErrorCode::Refused,
            OpError::Link(_) => ErrorCode::Unavailable,
            OpError::NotAllowed(_) => ErrorCode::NotAllowed,
            OpError::Client(e) => e.code(),
            OpError::Db(e) => e.code(),
            OpError::Control(e) => e.code(),
            OpError::Internal(_) => ErrorCode::OutcomeUnknown,
        }
    }
}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Failure {
        Failure::new(e.code(), e.to_string())
    }
}
