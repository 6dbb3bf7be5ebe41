//! Consumers: one per connection, as in Django Channels.
//!
//! A [`Consumer`]'s life is `connect` → (`receive` | `event`)* → `disconnect`:
//!
//! - [`connect`](Consumer::connect) runs during the WebSocket handshake. Call
//!   [`Context::accept`] to accept; return without accepting (or call [`Context::close`]) to
//!   refuse, and the client gets HTTP 403.
//! - [`receive`](Consumer::receive) gets each frame the client sends, as a raw [`Frame`] or —
//!   the JSON flavour — already decoded into your own `Deserialize` type.
//! - [`event`](Consumer::event) gets each layer message sent to the consumer's channel or to a
//!   group it joined, decoded by its `"type"` into your own serde enum (typed handlers), or as a
//!   raw [`Message`].
//! - [`disconnect`](Consumer::disconnect) runs once when the connection ends, whatever the
//!   reason. Groups joined through the [`Context`] are discarded afterwards automatically.
//!
//! Handlers of one connection run one at a time, in arrival order. A handler that returns an
//! error does not end the connection: the error is logged and the client is sent
//! `{"type":"error","error":"…"}`. So is a client frame that does not decode, and a layer message
//! whose type the consumer does not know.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::message::{IntoMessage, Message};
use crate::name::{ChannelName, GroupName, IntoChannelName, IntoGroupName};
use crate::scope::Scope;
use crate::value::DecodeError;

/// A data frame from or to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(Utf8Bytes),
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
        serde_json::from_slice(self.as_bytes()).map_err(|e| Error::Decode {
            what: "client message".into(),
            source: DecodeError(e.to_string()),
        })
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
    /// 1006: closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1008: policy violation (e.g. the client does not read what it is sent).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message was too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a consumer's [`receive`](Consumer::receive) takes: [`Frame`] for raw frames, or any
/// `Deserialize` type, decoded from the frame's JSON (the JSON flavour).
pub trait Incoming: Sized + Send + 'static {
    /// Decodes a client frame.
    fn from_frame(frame: Frame) -> Result<Self>;
}

impl Incoming for Frame {
    fn from_frame(frame: Frame) -> Result<Self> {
        Ok(frame)
    }
}

impl<T: DeserializeOwned + Send + 'static> Incoming for T {
    fn from_frame(frame: Frame) -> Result<Self> {
        frame.json()
    }
}

/// What a consumer's [`event`](Consumer::event) takes: [`Message`] for raw layer messages, or any
/// `Deserialize` type — usually an enum with `#[serde(tag = "type")]`, one variant per message
/// type, so each type gets its own typed handler arm.
pub trait Event: Sized + Send + 'static {
    /// Decodes a layer message.
    fn from_message(message: Message) -> Result<Self>;
}

impl Event for Message {
    fn from_message(message: Message) -> Result<Self> {
        Ok(message)
    }
}

impl<T: DeserializeOwned + Send + 'static> Event for T {
    fn from_message(message: Message) -> Result<Self> {
        message.decode().map_err(|source| Error::Decode {
            what: format!("event of type {:?}", message.message_type()),
            source,
        })
    }
}

/// A connection's behaviour. See the [module docs](self) for the lifecycle.
///
/// ```
/// use switchboard_core::{Consumer, Context, Result, async_trait};
/// use serde::Deserialize;
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
/// struct Chat { room: String }
///
/// #[async_trait]
/// impl Consumer for Chat {
///     type Incoming = Say;          // JSON flavour: frames decoded for us
///     type Event = RoomEvent;       // layer messages, by "type"
///
///     async fn connect(&mut self, cx: &mut Context) -> Result<()> {
///         cx.group_add(&self.room).await?; // discarded automatically on disconnect
///         cx.accept().await
///     }
///     async fn receive(&mut self, cx: &mut Context, say: Say) -> Result<()> {
///         let msg = serde_json::json!({"type": "chat.message", "user": "ann", "text": say.text});
///         cx.group_send(&self.room, msg).await
///     }
///     async fn event(&mut self, cx: &mut Context, ev: RoomEvent) -> Result<()> {
///         match ev {
///             RoomEvent::ChatMessage { user, text } => {
///                 cx.send_json(&serde_json::json!({"user": user, "text": text})).await
///             }
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Consumer: Send + 'static {
    /// What [`receive`](Consumer::receive) takes: [`Frame`], or a `Deserialize` type (JSON).
    type Incoming: Incoming;
    /// What [`event`](Consumer::event) takes: [`Message`], or a `Deserialize` type (by `"type"`).
    type Event: Event;

    /// Runs during the handshake. The default accepts.
    async fn connect(&mut self, cx: &mut Context) -> Result<()> {
        cx.accept().await
    }

    /// Handles one client frame.
    async fn receive(&mut self, cx: &mut Context, message: Self::Incoming) -> Result<()>;

    /// Handles one layer message. The default ignores it.
    async fn event(&mut self, cx: &mut Context, event: Self::Event) -> Result<()> {
        let _ = (cx, event);
        Ok(())
    }

    /// Runs once when the connection ends, with the close code (1006 if the client vanished).
    async fn disconnect(&mut self, cx: &mut Context, code: CloseCode) -> Result<()> {
        let _ = (cx, code);
        Ok(())
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Handshake,
    Open,
    Closed,
}

/// Frames queued for the socket, shared between the context (handlers push) and the runtime's
/// writer (which drains them while handlers run).
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) frames: std::collections::VecDeque<Out>,
    pub(crate) bytes: usize,
    pub(crate) phase: Phase,
    pub(crate) subprotocol: Option<String>,
    pub(crate) close: Option<(CloseCode, String)>,
    /// Set when a push would have passed the limits: the runtime closes with 1008.
    pub(crate) overflow: bool,
}

/// One queued outbound item.
#[derive(Debug)]
pub(crate) enum Out {
    Frame(Frame),
    Close(CloseCode, String),
    Ping,
}

/// Limits on what one connection may queue for a client that reads slowly.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutLimits {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
}

/// A consumer's handle on its connection and on the layer.
pub struct Context {
    layer: Layer,
    channel: ChannelName,
    scope: Scope,
    groups: Vec<GroupName>,
    pub(crate) out: Arc<Mutex<Outbound>>,
    limits: OutLimits,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("channel", &self.channel)
            .field("path", &self.scope.path())
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(
        layer: Layer,
        channel: ChannelName,
        scope: Scope,
        limits: OutLimits,
    ) -> Context {
        Context {
            layer,
            channel,
            scope,
            groups: Vec::new(),
            out: Arc::new(Mutex::new(Outbound {
                frames: std::collections::VecDeque::new(),
                bytes: 0,
                phase: Phase::Handshake,
                subprotocol: None,
                close: None,
                overflow: false,
            })),
            limits,
        }
    }

    /// Accepts the connection (no subprotocol). Accepting twice is harmless.
    pub async fn accept(&mut self) -> Result<()> {
        self.accept_with(None)
    }

    /// Accepts the connection with one of the subprotocols the client offered.
    pub async fn accept_subprotocol(&mut self, subprotocol: &str) -> Result<()> {
        if !self.scope.subprotocols().iter().any(|p| p == subprotocol) {
            return Err(Error::protocol(format!(
                "subprotocol {subprotocol:?} was not offered by the client (offered: {:?})",
                self.scope.subprotocols()
            )));
        }
        self.accept_with(Some(subprotocol.to_owned()))
    }

    fn accept_with(&mut self, subprotocol: Option<String>) -> Result<()> {
        let mut out = self.out.lock();
        match out.phase {
            Phase::Handshake => {
                out.phase = Phase::Open;
                out.subprotocol = subprotocol;
                Ok(())
            }
            Phase::Open => Ok(()),
            Phase::Closed => Err(Error::ConnectionClosed),
        }
    }

    /// Whether the connection has been accepted.
    pub fn is_accepted(&self) -> bool {
        self.out.lock().phase == Phase::Open
    }

    /// Closes the connection with `code` and `reason`. Before `accept`, this refuses the
    /// handshake and the client gets HTTP 403. Sends after this fail with `ConnectionClosed`.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        let mut out = self.out.lock();
        if out.phase == Phase::Open {
            // Cut the reason to the 123 bytes a close frame can carry, on a char boundary.
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            out.frames
                .push_back(Out::Close(code, reason[..end].to_owned()));
        }
        if out.close.is_none() {
            out.close = Some((code, reason.to_owned()));
        }
        out.phase = Phase::Closed;
        Ok(())
    }

    fn push(&mut self, frame: Frame) -> Result<()> {
        let mut out = self.out.lock();
        match out.phase {
            // ASGI: sending before accepting accepts.
            Phase::Handshake => out.phase = Phase::Open,
            Phase::Open => {}
            Phase::Closed => return Err(Error::ConnectionClosed),
        }
        let len = frame.len();
        if out.overflow
            || out.frames.len() >= self.limits.frames
            || out.bytes + len > self.limits.bytes
        {
            out.overflow = true;
            return Err(Error::ConnectionClosed);
        }
        out.bytes += len;
        out.frames.push_back(Out::Frame(frame));
        Ok(())
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<()> {
        self.push(Frame::Text(text.into()))
    }

    /// Sends a binary frame.
    pub async fn send_bytes(&mut self, bytes: impl Into<Bytes>) -> Result<()> {
        self.push(Frame::Binary(bytes.into()))
    }

    /// Sends a value as a JSON text frame.
    pub async fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value).map_err(Error::other)?;
        self.push(Frame::Text(text.into()))
    }

    /// Sends a layer message to the client as JSON. The text is rendered once per message and
    /// shared by every consumer that forwards it (a group message reaching a thousand sockets is
    /// serialized once).
    pub async fn send_message(&mut self, message: &Message) -> Result<()> {
        self.push(Frame::Text(message.to_json_text()))
    }

    /// Sends `{"type":"error","error":TEXT}`.
    pub async fn send_error(&mut self, text: impl fmt::Display) -> Result<()> {
        self.send_json(&serde_json::json!({"type": "error", "error": text.to_string()}))
            .await
    }

    /// Joins a group. Groups joined here are left automatically when the connection ends.
    pub async fn group_add(&mut self, group: impl IntoGroupName) -> Result<()> {
        let group = group.into_group_name()?;
        self.layer
            .backend()
            .group_add(&group, &self.channel)
            .await?;
        if !self.groups.contains(&group) {
            self.groups.push(group);
        }
        Ok(())
    }

    /// Leaves a group.
    pub async fn group_discard(&mut self, group: impl IntoGroupName) -> Result<()> {
        let group = group.into_group_name()?;
        self.layer
            .backend()
            .group_discard(&group, &self.channel)
            .await?;
        self.groups.retain(|g| g != &group);
        Ok(())
    }

    /// Sends a message to every member of a group (this consumer too, if it is a member).
    pub async fn group_send(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        self.layer.group_send(group, message).await
    }

    /// Sends a message to a channel.
    pub async fn send_to(
        &self,
        channel: impl IntoChannelName,
        message: impl IntoMessage,
    ) -> Result<()> {
        self.layer.send(channel, message).await
    }

    /// This consumer's channel name: give it to others so they can send to this consumer.
    pub fn channel_name(&self) -> &ChannelName {
        &self.channel
    }

    /// The groups joined through this context.
    pub fn groups(&self) -> &[GroupName] {
        &self.groups
    }

    /// The channel layer.
    pub fn layer(&self) -> &Layer {
        &self.layer
    }

    /// The connection's scope: path, parameters, query, headers, cookies, peer, user.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The scope, mutably (e.g. to store per-connection data in its extensions).
    pub fn scope_mut(&mut self) -> &mut Scope {
        &mut self.scope
    }

    pub(crate) fn take_groups(&mut self) -> Vec<GroupName> {
        std::mem::take(&mut self.groups)
    }
}
