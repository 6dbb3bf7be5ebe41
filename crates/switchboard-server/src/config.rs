//! [`ConnectionConfig`]: the limits and keep-alive of each connection.

use std::time::Duration;

use crate::connection::OutLimits;
use crate::consumer::CloseCode;

/// What to do with a client frame that does not decode, or a layer message whose type the
/// consumer does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BadInput {
    /// Log it and send the client `{"type":"error","error":"…"}`; the connection stays up.
    #[default]
    ErrorFrame,
    /// Log it and close the connection with this code (e.g. 4400).
    Close(CloseCode),
}

/// Per-connection settings: limits and keep-alive. The defaults suit many small connections.
///
/// Set what you need and keep the rest (every field has a setter of its name):
///
/// ```
/// use std::time::Duration;
/// use switchboard::ConnectionConfig;
///
/// let config = ConnectionConfig::default()
///     .max_message_size(1 << 20)
///     .idle_timeout(Duration::from_secs(120));
/// assert_eq!(config.max_message_size, 1 << 20);
/// ```
///
/// The limits, and how they fit together:
///
/// - **inbound**: a client message (or frame) larger than `max_message_size` closes the
///   connection with 1009, after telling the client why. The read buffer starts at
///   `read_buffer_size` and grows for a longer frame.
/// - **outbound**: what handlers send waits in a queue until the socket takes it. The queue's
///   backlog is bounded by `outbound_frames` and `outbound_bytes`: a client that does not read
///   fills it and is closed with 1008. They bound the *backlog*, not a message: one message of
///   any size is queued while the backlog is under them, so raising `max_message_size` is
///   enough for an echo of big messages.
/// - **keep-alive**: a ping every `ping_interval`; a client silent (no frame, no pong) for
///   `idle_timeout` is closed with 1001.
/// - **rates**: a client sending more than `max_messages_per_second` or
///   `max_bytes_per_second` is slowed down (its socket is not read until it is back under),
///   not closed; `max_groups` bounds the groups a connection joins.
/// - **before the WebSocket**: the HTTP side has its own limits ([`HttpLimits`](crate::HttpLimits):
///   header timeout, connections waiting for their request) and so does the endpoint
///   ([`EndpointLimits`](crate::endpoint::EndpointLimits): handshakes at once, connections
///   per address and per user).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Largest message a client may send; a bigger one closes the connection with 1009.
    /// Default 64 KiB.
    pub max_message_size: usize,
    /// Read buffer per connection, allocated (and touched) up front; a longer frame grows it.
    /// Default 1 KiB: chat-sized frames fit, and idle connections stay cheap.
    pub read_buffer_size: usize,
    /// Frames are batched up to this size before a write. Default 4 KiB.
    pub write_buffer_size: usize,
    /// Frames that may wait for a slow client before it is closed with 1008. Default 1,024.
    pub outbound_frames: usize,
    /// Bytes that may wait for a slow client before it is closed with 1008. Default 1 MiB.
    pub outbound_bytes: usize,
    /// How often to ping the client; `None` disables pings. Default 20 s.
    pub ping_interval: Option<Duration>,
    /// Close the connection (1001) when nothing — no frame, no pong — came from the client for
    /// this long. Default 60 s.
    pub idle_timeout: Duration,
    /// How long to wait for the client's reply to our close frame. Meanwhile what the client
    /// still sends is read and discarded (up to 64 MiB), so that a client still writing a
    /// message over the limit reads the 1009 instead of a TCP reset. Default 2 s.
    pub close_timeout: Duration,
    /// Bad client frames and unknown event types. Default: error frame, stay connected.
    pub bad_input: BadInput,
    /// Join the connection's groups again every `group_expiry / 2`, so a connection that lives
    /// longer than `group_expiry` keeps its memberships (Channels lets them lapse). Default on.
    pub refresh_groups: bool,
    /// Groups one connection may be in at once; a `group_add` past it fails with an error
    /// the client may be told (`too many groups`). Default 100.
    pub max_groups: usize,
    /// Messages per second a client may send, on average, in bursts of up to a second's
    /// worth; past it the connection stops reading the client's socket until it is back
    /// under (the client is slowed by TCP, and nothing is lost). Default none.
    pub max_messages_per_second: Option<u32>,
    /// Payload bytes per second a client may send, as `max_messages_per_second`. Default
    /// none.
    pub max_bytes_per_second: Option<u64>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_message_size: 64 * 1024,
            read_buffer_size: 1024,
            write_buffer_size: 4 * 1024,
            outbound_frames: 1024,
            outbound_bytes: 1024 * 1024,
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(2),
            bad_input: BadInput::ErrorFrame,
            refresh_groups: true,
            max_groups: 100,
            max_messages_per_second: None,
            max_bytes_per_second: None,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {
        impl ConnectionConfig {
            $(
                $(#[$doc])*
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`max_message_size`](ConnectionConfig::max_message_size).
    max_message_size: usize,
    /// Sets [`read_buffer_size`](ConnectionConfig::read_buffer_size).
    read_buffer_size: usize,
    /// Sets [`write_buffer_size`](ConnectionConfig::write_buffer_size).
    write_buffer_size: usize,
    /// Sets [`outbound_frames`](ConnectionConfig::outbound_frames).
    outbound_frames: usize,
    /// Sets [`outbound_bytes`](ConnectionConfig::outbound_bytes).
    outbound_bytes: usize,
    /// Sets [`ping_interval`](ConnectionConfig::ping_interval).
    ping_interval: Option<Duration>,
    /// Sets [`idle_timeout`](ConnectionConfig::idle_timeout).
    idle_timeout: Duration,
    /// Sets [`close_timeout`](ConnectionConfig::close_timeout).
    close_timeout: Duration,
    /// Sets [`bad_input`](ConnectionConfig::bad_input).
    bad_input: BadInput,
    /// Sets [`refresh_groups`](ConnectionConfig::refresh_groups).
    refresh_groups: bool,
    /// Sets [`max_groups`](ConnectionConfig::max_groups).
    max_groups: usize,
    /// Sets [`max_messages_per_second`](ConnectionConfig::max_messages_per_second).
    max_messages_per_second: Option<u32>,
    /// Sets [`max_bytes_per_second`](ConnectionConfig::max_bytes_per_second).
    max_bytes_per_second: Option<u64>,
}

impl ConnectionConfig {
    /// The tungstenite settings these limits imply.
    pub(crate) fn websocket_config(
        &self,
    ) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        // tungstenite's write buffer grows past `write_buffer_size` only while writes fail
        // (the runtime waits for the socket before each frame), so it needs no bound of its own.
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }

    pub(crate) fn out_limits(&self) -> OutLimits {
        OutLimits {
            frames: u32::try_from(self.outbound_frames).unwrap_or(u32::MAX),
            concurrency: 1,
            groups: u16::try_from(self.max_groups).unwrap_or(u16::MAX),
            bytes: self.outbound_bytes,
        }
    }
}
