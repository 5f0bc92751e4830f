use std::fmt;

/// The error every trait in this crate returns.
///
/// The variants say what the caller can do about it: fix its input, look
/// elsewhere, retry later, or report a bug.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's input is wrong; the message says what to fix.
    #[error("{0}")]
    InvalidInput(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A backend (store, model) cannot serve now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests are waiting: the caller should retry shortly.
    #[error("{0}")]
    Busy(String),
    /// Anything else: a bug or a broken installation.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidInput(msg.to_string())
    }
    pub fn not_found(msg: impl fmt::Display) -> Self {
        Error::NotFound(msg.to_string())
    }
    pub fn unavailable(msg: impl fmt::Display) -> Self {
        Error::Unavailable(msg.to_string())
    }
    pub fn busy(msg: impl fmt::Display) -> Self {
        Error::Busy(msg.to_string())
    }
    pub fn internal(msg: impl fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
