//! The errors an entity answers with; the edges map each to a status code.

use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};

/// The reply port of an entity answer.
pub type Reply<T> = RpcReplyPort<Result<T, EntityError>>;

/// Why an entity refused or could not do what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum EntityError {
    /// The entity does not exist (or was deleted).
    #[error("not found")]
    NotFound,
    /// The caller may not do this to this entity.
    #[error("{0}")]
    Forbidden(String),
    /// `If-Match` named a version that is not the current one.
    #[error("version {expected} does not match the current version {current}")]
    PreconditionFailed {
        /// What the caller expected.
        expected: i64,
        /// What the entity has.
        current: i64,
    },
    /// The request conflicts with the entity's state.
    #[error("{message}")]
    Conflict {
        /// A stable machine-readable code such as `event_full`.
        code: String,
        /// A sentence for people.
        message: String,
    },
    /// The store could not be reached or failed; nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl EntityError {
    pub(crate) fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl From<crate::StoreError> for EntityError {
    fn from(e: crate::StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}
