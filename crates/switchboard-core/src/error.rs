//! The error type of switchboard's core.

use std::time::Duration;

use crate::message::MessageError;
use crate::name::NameError;
use crate::value::DecodeError;

/// `Result` with switchboard's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a layer call or a consumer handler.
///
/// Inside a consumer, returning any of these from a handler does not close the connection: the
/// runtime logs it and sends the client `{"type":"error","error":"<this message>"}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `send` to a channel that holds `capacity` messages already. Nothing was queued.
    #[error("channel {channel:?} is full ({capacity} messages waiting); the message was not sent")]
    ChannelFull {
        /// The full channel.
        channel: String,
        /// Its capacity.
        capacity: usize,
    },
    /// A bad channel or group name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A value that is not a valid message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A layer message or client frame that did not decode into the consumer's type.
    #[error("could not decode {what}: {source}")]
    Decode {
        /// What was being decoded ("event 'chat.message'", "client message").
        what: String,
        /// Why.
        source: DecodeError,
    },
    /// The layer was closed with [`ChannelLayer::close`](crate::ChannelLayer::close).
    #[error("the channel layer is closed")]
    LayerClosed,
    /// The layer's backend (Redis) could not be reached or failed; the call may be retried.
    #[error("channel layer backend unavailable: {0}")]
    Backend(String),
    /// A layer call did not finish in time.
    #[error("channel layer call timed out after {0:?}")]
    Timeout(Duration),
    /// The WebSocket is closed (or closing); nothing more can be sent on it.
    #[error("the connection is closed")]
    ConnectionClosed,
    /// A consumer-level protocol error with a message for the client.
    #[error("{0}")]
    Protocol(String),
    /// Any other error from application code.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// Wraps any error from application code.
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Error {
        Error::Other(e.into())
    }

    /// A protocol error whose text is shown to the client as `{"type":"error","error":TEXT}`.
    pub fn protocol(text: impl Into<String>) -> Error {
        Error::Protocol(text.into())
    }

    /// Whether retrying the call later may succeed (the backend was unavailable or slow).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Backend(_) | Error::Timeout(_))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Decode {
            what: "JSON".into(),
            source: DecodeError(e.to_string()),
        }
    }
}
