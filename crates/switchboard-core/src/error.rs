//! The errors of channel layer calls.

use std::fmt;
use std::time::Duration;

use crate::message::MessageError;
use crate::name::{ChannelName, NameError};

/// `Result` with [`LayerError`].
pub type Result<T, E = LayerError> = std::result::Result<T, E>;

/// What can go wrong in a channel layer call.
///
/// The `Display` text is for logs and for the developer: [`Backend`](LayerError::Backend)
/// names the backend (a Redis host) and says what it answered. Do not show it to end users;
/// switchboard's consumer runtime never does (see [`is_internal`](LayerError::is_internal)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// `send` to a channel that holds `capacity` messages already. Nothing was queued.
    #[error("channel {channel} is full ({capacity} messages waiting); the message was not sent")]
    ChannelFull {
        /// The full channel.
        channel: ChannelName,
        /// Its capacity.
        capacity: usize,
    },
    /// A bad channel or group name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A value that is not a valid message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The layer was closed with [`ChannelLayer::close`](crate::ChannelLayer::close).
    #[error("the channel layer is closed")]
    Closed,
    /// The backend (Redis) could not be reached or failed; the call may be retried.
    #[error("channel layer backend unavailable: {0}")]
    Backend(#[source] BackendError),
    /// A layer call did not finish in time; it may be retried.
    #[error("channel layer call timed out after {0:?}")]
    Timeout(Duration),
    /// The layer was set up wrongly (a bad pattern, a bad URL, no hosts): fix the configuration.
    #[error("channel layer configuration: {0}")]
    Config(String),
    /// A call this layer cannot do, whatever its configuration (receiving on another process's
    /// channel, say).
    #[error("{0}")]
    Unsupported(String),
}

impl LayerError {
    /// Whether retrying the call later may succeed (the backend was unavailable or slow).
    pub fn is_transient(&self) -> bool {
        matches!(self, LayerError::Backend(_) | LayerError::Timeout(_))
    }

    /// Whether the error is about the server's own state rather than the input it was given:
    /// backend failures, timeouts, a closed layer, configuration, unsupported calls. Such an
    /// error's text must not reach a client (it can name hosts and addresses); a bad name, a
    /// bad message or a full channel can be explained to whoever sent it.
    pub fn is_internal(&self) -> bool {
        !matches!(
            self,
            LayerError::ChannelFull { .. } | LayerError::Name(_) | LayerError::Message(_)
        )
    }

    /// A backend error: `context` says what failed where ("redis at 127.0.0.1:6379"), `source`
    /// is the backend's own error.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> LayerError {
        LayerError::Backend(BackendError {
            context: context.into(),
            source: Some(source.into()),
        })
    }

    /// A backend error without an underlying error value.
    pub fn backend_msg(context: impl Into<String>) -> LayerError {
        LayerError::Backend(BackendError {
            context: context.into(),
            source: None,
        })
    }
}

/// A backend failure: what failed, and the backend's error as its
/// [`source`](std::error::Error::source). The `Display` text carries both, so a log line that
/// prints only the error's text still says why.
#[derive(Debug)]
pub struct BackendError {
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// What failed, without the backend's own message.
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{}: {s}", self.context),
            None => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = LayerError::backend("redis at 127.0.0.1:1", io);
        assert!(e.is_transient() && e.is_internal());
        assert_eq!(
            e.to_string(),
            "channel layer backend unavailable: redis at 127.0.0.1:1: refused"
        );
        let backend = std::error::Error::source(&e).and_then(|b| b.source());
        assert_eq!(backend.map(|s| s.to_string()).as_deref(), Some("refused"));
    }

    #[test]
    fn input_errors_are_not_internal() -> Result<(), NameError> {
        let full = LayerError::ChannelFull {
            channel: ChannelName::new("a")?,
            capacity: 1,
        };
        assert!(!full.is_internal());
        assert!(LayerError::Closed.is_internal());
        assert!(LayerError::Config("x".into()).is_internal());
        Ok(())
    }
}
