use std::fmt;

/// What went wrong, as far as the caller can act on it: fix its input,
/// look elsewhere, retry later, or report a bug. HTTP maps each kind to a
/// status (`rag-api`'s `http::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input is wrong; the message says what to fix.
    InvalidInput,
    /// The thing asked for does not exist.
    NotFound,
    /// A backend (store, model) cannot serve now; retrying later may work.
    Unavailable,
    /// Too many requests are waiting: the caller should retry shortly.
    Busy,
    /// Another writer holds what this would change (a source being
    /// synced elsewhere): retry when it has finished.
    Conflict,
    /// Anything else: a bug or a broken installation.
    Internal,
}

/// A boxed error kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error every trait in this crate returns: a kind, a message of our
/// own (what failed, in words a caller can act on) and the error that
/// caused it, kept whole for the logs.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
            source: None,
        }
    }
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidInput, msg)
    }
    pub fn not_found(msg: impl fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, msg)
    }
    pub fn unavailable(msg: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Unavailable, msg)
    }
    pub fn busy(msg: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Busy, msg)
    }
    pub fn conflict(msg: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Conflict, msg)
    }
    pub fn internal(msg: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Internal, msg)
    }

    /// This error, caused by `source` (kept for the logs, not shown in
    /// this error's message).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message alone, without the sources.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message and every source, `: `-separated (for logs and the CLI).
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_kept_out_of_the_message_and_in_the_chain() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::unavailable("metadata database").with_source(io);
        assert_eq!(e.to_string(), "metadata database");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(e.chain(), "metadata database: disk on fire");
        assert!(std::error::Error::source(&e).is_some());
    }
}
