//! Consumers: one per connection, as in Django Channels.
//!
//! A [`Consumer`]'s life is `connect` → (`receive` | `event`)* → `disconnect`:
//!
//! - [`connect`](Consumer::connect) runs during the WebSocket handshake. Call
//!   [`Connection::accept`] to accept; return without accepting (or call
//!   [`Connection::close`]) to refuse, and the client gets HTTP 403.
//! - [`receive`](Consumer::receive) gets each frame the client sends, as a raw [`Frame`] or —
//!   the JSON flavour — already decoded into your own `Deserialize` type ([`FromFrame`]).
//! - [`event`](Consumer::event) gets each layer message sent to the connection's channel or to a
//!   group it joined, as a raw [`Message`](switchboard_core::Message), decoded by its `"type"` into your own serde enum, or
//!   both ([`Decoded`](switchboard_core::Decoded)); see [`FromMessage`].
//! - [`disconnect`](Consumer::disconnect) runs once when the connection ends, whatever the
//!   reason. Groups joined through the [`Connection`] are left afterwards automatically.
//!
//! Handlers of one connection run one at a time, in arrival order. A handler that returns an
//! error does not end the connection: the error is logged and the client is sent
//! `{"type":"error","error":"…"}` (see [`Error::client_message`](crate::Error::client_message)).
//! So is a client frame that does not decode, and a layer message whose type the consumer does
//! not know.
//!
//! The trait's methods are `async fn`s — write them as such in your `impl` — and the runtime is
//! generic over the consumer, so an event costs no boxed future.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use switchboard_core::{DecodeError, FromMessage, Missed, Text};

use crate::connection::Connection;
use crate::endpoint::Refusal;
use crate::error::{Error, Result};

/// A data frame from or to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(Text),
    /// A binary frame.
    Binary(Bytes),
}

impl Frame {
    /// The text of a text frame; a binary frame is an error the client is told about.
    pub fn text(&self) -> Result<&str> {
        match self {
            Frame::Text(t) => Ok(t.as_str()),
            Frame::Binary(_) => Err(Error::protocol("expected a text frame, got a binary frame")),
        }
    }

    /// The frame's bytes (a text frame's UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => b,
        }
    }

    /// Decodes the frame (text or binary) as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(self.as_bytes()).map_err(|e| Error::BadFrame(DecodeError::from(e)))
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A WebSocket close code (RFC 6455 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, idle timeout, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1005: no code was given (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a text frame was not valid UTF-8.
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// 1008: policy violation (e.g. the client does not read what it is sent).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message was too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1013: try again later (the connection fell behind and missed messages).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// The code as a number.
    pub fn as_u16(self) -> u16 {
        self.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> CloseCode {
        CloseCode(code)
    }
}

/// What a consumer's [`receive`](Consumer::receive) takes: [`Frame`] for raw frames, or any
/// `Deserialize` type, decoded from the frame's JSON (the JSON flavour).
pub trait FromFrame: Sized + Send + 'static {
    /// Decodes a client frame.
    fn from_frame(frame: Frame) -> Result<Self, DecodeError>;
}

impl FromFrame for Frame {
    fn from_frame(frame: Frame) -> Result<Self, DecodeError> {
        Ok(frame)
    }
}

impl<T: DeserializeOwned + Send + 'static> FromFrame for T {
    fn from_frame(frame: Frame) -> Result<Self, DecodeError> {
        serde_json::from_slice(frame.as_bytes()).map_err(DecodeError::from)
    }
}

/// A connection's behaviour. See the [module docs](self) for the lifecycle.
///
/// ```
/// use serde::Deserialize;
/// use switchboard::{Connection, Consumer, GroupName, Result};
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type")]
/// enum RoomEvent {
///     #[serde(rename = "chat.message")]
///     ChatMessage { user: String, text: String },
/// }
///
/// #[derive(Deserialize)]
/// struct Say { text: String }
///
/// struct Chat { room: GroupName }
///
/// impl Consumer for Chat {
///     type Incoming = Say;          // JSON flavour: frames decoded for us
///     type Event = RoomEvent;       // layer messages, by "type"
///
///     async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
///         conn.group_add(&self.room).await?; // left automatically on disconnect
///         conn.accept().await
///     }
///     async fn receive(&mut self, conn: &mut Connection, say: Say) -> Result<()> {
///         let msg = serde_json::json!({"type": "chat.message", "user": "ann", "text": say.text});
///         conn.group_send(&self.room, msg).await
///     }
///     async fn event(&mut self, conn: &mut Connection, ev: RoomEvent) -> Result<()> {
///         match ev {
///             RoomEvent::ChatMessage { user, text } => {
///                 conn.send_json(&serde_json::json!({"user": user, "text": text})).await
///             }
///         }
///     }
/// }
/// ```
pub trait Consumer: Send + 'static {
    /// What [`receive`](Consumer::receive) takes: [`Frame`], or a `Deserialize` type (JSON).
    type Incoming: FromFrame;
    /// What [`event`](Consumer::event) takes: [`Message`](switchboard_core::Message), a
    /// `Deserialize` type (by `"type"`),
    /// or [`Decoded<T>`](switchboard_core::Decoded) (both).
    type Event: FromMessage;

    /// How many of this consumer's handlers may be in progress at once: the handler running
    /// now, plus the tasks handlers handed to [`Connection::spawn`]. The default, 1, is
    /// Channels' model — one input at a time, in arrival order, and `spawn` runs its task to
    /// the end before returning. With `N > 1`, up to `N − 1` spawned tasks run while the
    /// consumer takes its next inputs (a slow lookup no longer holds up the rest); what
    /// ordering still holds is in [`Connection::spawn`].
    const CONCURRENCY: usize = 1;

    /// Runs during the handshake. The default accepts.
    fn connect(&mut self, conn: &mut Connection) -> impl Future<Output = Result<()>> + Send {
        async move { conn.accept().await }
    }

    /// Handles one client frame.
    fn receive(
        &mut self,
        conn: &mut Connection,
        message: Self::Incoming,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Handles one layer message. The default ignores it.
    fn event(
        &mut self,
        conn: &mut Connection,
        event: Self::Event,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (conn, event);
        async { Ok(()) }
    }

    /// Runs when layer messages meant for this connection were lost, right after the last
    /// event received before the gap ([`Missed`]):
    ///
    /// - **dropped**: its channel was full — this client, or this consumer, fell behind its
    ///   group for longer than the layer's back-pressure wait — or they expired unread. The
    ///   default closes the connection with 1013 (try again later), so the client reconnects
    ///   (and reloads) instead of showing a hole — unless **recovered**: every group of the
    ///   connection keeps history and was joined "since" a position
    ///   ([`Connection::group_add_since`]), and the runtime has read what was missed again
    ///   from history ([`Subscription::recover`](switchboard_core::Subscription::recover)): it
    ///   comes next, in order, and the default goes on.
    /// - **interrupted**: the layer's connection to where messages come from was lost and made
    ///   again (a pub/sub subscription, a Redis that restarted empty); some messages may be
    ///   missing, for every connection of the process at once. The default goes on (the
    ///   runtime has logged and counted it): closing every connection at each Redis blip
    ///   would be worse than the gap. Override it to tell the client (a "resync" frame).
    ///
    /// Override it to do better: reload from a database, tell the client and go on.
    fn missed(
        &mut self,
        conn: &mut Connection,
        missed: Missed,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            if missed.dropped > 0 && !missed.recovered {
                conn.close(
                    CloseCode::TRY_AGAIN_LATER,
                    "fell behind; messages were missed",
                )
                .await
            } else {
                Ok(())
            }
        }
    }

    /// Runs once when the connection ends, with the close code (1006 if the client vanished).
    fn disconnect(
        &mut self,
        conn: &mut Connection,
        code: CloseCode,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (conn, code);
        async { Ok(()) }
    }
}

/// What a consumer factory returns: a consumer, or a [`Refusal`] that answers the handshake
/// (a path parameter that names no room: 404, say) before any channel is made.
pub trait IntoConsumer {
    /// The consumer.
    type Consumer: Consumer;
    /// The consumer, or why the connection is refused.
    fn into_consumer(self) -> Result<Self::Consumer, Refusal>;
}

impl<C: Consumer> IntoConsumer for C {
    type Consumer = C;
    fn into_consumer(self) -> Result<C, Refusal> {
        Ok(self)
    }
}

impl<C: Consumer> IntoConsumer for Result<C, Refusal> {
    type Consumer = C;
    fn into_consumer(self) -> Result<C, Refusal> {
        self
    }
}
