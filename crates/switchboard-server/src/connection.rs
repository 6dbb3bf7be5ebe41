//! [`Connection`]: a consumer's handle on its client and on the channel layer.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use switchboard_core::{
    ChannelName, GroupName, IntoChannelName, IntoGroupName, IntoMessage, Layer, Message,
    Subscription, Text,
};

use crate::consumer::{CloseCode, Frame};
use crate::error::{Error, Result};
use crate::scope::Scope;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Handshake,
    Open,
    Closed,
}

/// Frames queued for the socket, shared between the connection (handlers push) and the
/// runtime's writer (which drains them while handlers run).
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) frames: VecDeque<Out>,
    pub(crate) bytes: usize,
    pub(crate) phase: Phase,
    pub(crate) subprotocol: Option<String>,
    pub(crate) close: Option<(CloseCode, String)>,
    /// Set when a push found the queue over its limits: the runtime closes with 1008.
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

/// A consumer's handle on its connection: accept or close it, send frames to the client, join
/// and leave groups, send to other channels, and read the [`Scope`].
///
/// Its layer side is a [`Subscription`]: the connection's own channel plus the groups joined
/// through it, refreshed while the connection lives and left when it ends, whatever the reason.
pub struct Connection {
    sub: Subscription,
    scope: Scope,
    pub(crate) out: Arc<Mutex<Outbound>>,
    limits: OutLimits,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("channel", self.sub.channel_name())
            .field("path", &self.scope.path())
            .field("groups", &self.sub.groups())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(sub: Subscription, scope: Scope, limits: OutLimits) -> Connection {
        Connection {
            sub,
            scope,
            out: Arc::new(Mutex::new(Outbound {
                frames: VecDeque::new(),
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
    /// handshake: the client gets HTTP 403 with `reason` as the body. Sends after this fail
    /// with `ConnectionClosed`.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        let mut out = self.out.lock();
        if out.phase == Phase::Open {
            out.frames.push_back(Out::Close(code, reason.to_owned()));
        }
        if out.close.is_none() {
            out.close = Some((code, reason.to_owned()));
        }
        out.phase = Phase::Closed;
        Ok(())
    }

    /// Queues a frame. The outbound limits bound the backlog of a client that reads slowly:
    /// a frame is refused (and the connection closed with 1008) once the frames already waiting
    /// reach [`outbound_frames`](crate::ConnectionConfig::outbound_frames) or
    /// [`outbound_bytes`](crate::ConnectionConfig::outbound_bytes). One frame of any size is
    /// taken while the backlog is under them: the limits never cap a single message.
    fn push(&mut self, frame: Frame) -> Result<()> {
        let mut out = self.out.lock();
        match out.phase {
            // ASGI: sending before accepting accepts.
            Phase::Handshake => out.phase = Phase::Open,
            Phase::Open => {}
            Phase::Closed => return Err(Error::ConnectionClosed),
        }
        if out.overflow || out.frames.len() >= self.limits.frames || out.bytes >= self.limits.bytes
        {
            out.overflow = true;
            return Err(Error::ConnectionClosed);
        }
        out.bytes += frame.len();
        out.frames.push_back(Out::Frame(frame));
        Ok(())
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<Text>) -> Result<()> {
        self.push(Frame::Text(text.into()))
    }

    /// Sends a binary frame.
    pub async fn send_bytes(&mut self, bytes: impl Into<Bytes>) -> Result<()> {
        self.push(Frame::Binary(bytes.into()))
    }

    /// Sends a value as a JSON text frame.
    pub async fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)?;
        self.push(Frame::Text(text.into()))
    }

    /// Sends a layer message to the client as JSON. The text is rendered once per message and
    /// shared by every connection that forwards it (a group message reaching a thousand sockets
    /// is serialized once).
    pub async fn send_message(&mut self, message: &Message) -> Result<()> {
        self.push(Frame::Text(message.to_json_text()))
    }

    /// Sends `{"type":"error","error":TEXT}`.
    pub async fn send_error(&mut self, text: impl fmt::Display) -> Result<()> {
        self.send_json(&serde_json::json!({"type": "error", "error": text.to_string()}))
            .await
    }

    /// Joins a group. Groups joined here are refreshed while the connection lives and left
    /// when it ends.
    pub async fn group_add(&mut self, group: impl IntoGroupName) -> Result<()> {
        Ok(self.sub.group_add(group).await?)
    }

    /// Leaves a group.
    pub async fn group_discard(&mut self, group: impl IntoGroupName) -> Result<()> {
        Ok(self.sub.group_discard(group).await?)
    }

    /// Sends a message to every member of a group (this connection too, if it is a member);
    /// see [`Subscription::group_send`](switchboard_core::Subscription::group_send).
    pub async fn group_send(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        Ok(self.sub.group_send(group, message).await?)
    }

    /// Sends a message to a channel.
    pub async fn send_to(
        &self,
        channel: impl IntoChannelName,
        message: impl IntoMessage,
    ) -> Result<()> {
        Ok(self.sub.layer().send(channel, message).await?)
    }

    /// This connection's channel name: give it to others so they can send to this consumer.
    pub fn channel_name(&self) -> &ChannelName {
        self.sub.channel_name()
    }

    /// The groups joined through this connection.
    pub fn groups(&self) -> &[GroupName] {
        self.sub.groups()
    }

    /// The channel layer.
    pub fn layer(&self) -> &Layer {
        self.sub.layer()
    }

    /// The connection's scope: path, parameters, query, headers, cookies, peer, user.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The scope, mutably (e.g. to store per-connection data in its extensions).
    pub fn scope_mut(&mut self) -> &mut Scope {
        &mut self.scope
    }

    pub(crate) fn subscription(&mut self) -> &mut Subscription {
        &mut self.sub
    }
}
