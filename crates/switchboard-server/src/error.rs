//! What a consumer's handlers return, and what a client is told about it.

use std::borrow::Cow;

use switchboard_core::{DecodeError, LayerError, MessageError, NameError};

/// `Result` with the handler [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a consumer's handler.
///
/// A handler that returns an error does not end its connection: the runtime logs the error and
/// sends the client `{"type":"error","error":TEXT}`, where TEXT is
/// [`client_message`](Error::client_message): the error's own words when it is about the
/// client's input ([`Protocol`](Error::Protocol), [`BadFrame`](Error::BadFrame), a bad name, a
/// full channel), and a generic text with a reference otherwise — a backend's address or a
/// database's message never reaches a client. The log line carries the same reference.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A channel layer call failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// A client frame did not decode into the consumer's `Incoming` type.
    #[error("could not decode the message: {0}")]
    BadFrame(DecodeError),
    /// A layer message did not decode into the consumer's `Event` type (the error names the
    /// message's type).
    #[error("could not decode the event: {0}")]
    BadEvent(DecodeError),
    /// The WebSocket is closed (or closing); nothing more can be sent on it.
    #[error("the connection is closed")]
    ConnectionClosed,
    /// A refusal meant for the client: its text is what the client is told.
    #[error("{0}")]
    Protocol(String),
    /// Any other error from application code (internal: the client is not told its text).
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// Wraps any error from application code.
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Error {
        Error::Other(e.into())
    }

    /// An error whose text is for the client: `{"type":"error","error":TEXT}`.
    pub fn protocol(text: impl Into<String>) -> Error {
        Error::Protocol(text.into())
    }

    /// Whether the error is about the server's own state (a backend, a bug, a database) rather
    /// than the client's input: its text must not reach the client.
    pub fn is_internal(&self) -> bool {
        match self {
            Error::Layer(e) => e.is_internal(),
            Error::BadFrame(_) | Error::Protocol(_) | Error::ConnectionClosed => false,
            Error::BadEvent(_) | Error::Other(_) => true,
        }
    }

    /// What the client may be told: the error's text, or for an internal error a generic text
    /// naming `reference` (which the server's log line carries too).
    pub fn client_message(&self, reference: &str) -> Cow<'_, str> {
        match self {
            Error::Layer(LayerError::ChannelFull { .. }) => {
                Cow::Borrowed("the recipient is not keeping up; the message was not delivered")
            }
            e if e.is_internal() => {
                Cow::Owned(format!("internal server error (reference {reference})"))
            }
            e => Cow::Owned(e.to_string()),
        }
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        Error::Layer(LayerError::Name(e))
    }
}

impl From<MessageError> for Error {
    fn from(e: MessageError) -> Self {
        Error::Layer(LayerError::Message(e))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Other(Box::new(e))
    }
}

/// For HTTP handlers beside consumers (a publish endpoint): logs `error` at `warn`, under a
/// fresh reference, as the failure of `what`, and returns what the client may be told —
/// `"{what} failed (reference 3f2a9c1b)"`, never the error's own text.
///
/// ```
/// let told = switchboard::error::report("publishing", &"redis at 10.0.0.7:6379: refused");
/// assert!(told.starts_with("publishing failed (reference ") && !told.contains("10.0.0.7"));
/// ```
pub fn report(what: &str, error: &dyn std::fmt::Display) -> String {
    let r = reference();
    tracing::warn!(error = %error, reference = %r, "{what} failed");
    format!("{what} failed (reference {r})")
}

/// [`reference`] for an internal error, whose client text names one; empty for any other
/// (its client text is the error itself), so a bad frame costs no id.
pub(crate) fn reference_for(e: &Error) -> String {
    if e.is_internal() {
        reference()
    } else {
        String::new()
    }
}

/// A short random reference for an error, logged with its details and given to the client.
pub(crate) fn reference() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_tell_the_client_only_a_reference() {
        let backend = Error::from(LayerError::backend(
            "redis at 10.0.0.7:6379",
            std::io::Error::other("connection refused"),
        ));
        let told = backend.client_message("ab12cd34");
        assert_eq!(told, "internal server error (reference ab12cd34)");
        assert!(!told.contains("10.0.0.7"));
        assert_eq!(
            Error::protocol("no such room").client_message("x"),
            "no such room"
        );
        let bad = Error::from(switchboard_core::GroupName::new("a b").unwrap_err());
        assert!(
            bad.client_message("x").contains("\"a b\""),
            "input errors explain themselves"
        );
    }
}
