//! [`Connection`]: a consumer's handle on its client and on the channel layer.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use switchboard_core::{
    ChannelName, GroupName, IntoChannelName, IntoGroupName, IntoMessage, Layer, Message,
    Subscription, Text,
};
use tokio::task::{JoinError, JoinSet};

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
    pub(crate) frames: u32,
    /// `Consumer::CONCURRENCY` (kept here, where it costs no room).
    pub(crate) concurrency: u16,
    /// `ConnectionConfig::max_groups` (here for the same reason).
    pub(crate) groups: u16,
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
    /// Tasks handed to [`spawn`](Connection::spawn), once there have been any. Boxed: most
    /// connections never spawn, and every idle connection's task holds this struct.
    pub(crate) tasks: Option<Box<Tasks>>,
}

/// A connection's spawned tasks.
pub(crate) struct Tasks {
    pub(crate) set: JoinSet<Result<()>>,
    /// Tasks that ended while `spawn` waited for room, for the runtime to report.
    pub(crate) ended: Vec<std::result::Result<Result<()>, JoinError>>,
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
            tasks: None,
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
        push(&self.out, self.limits, frame)
    }

    /// Runs `task` beside the consumer's next inputs, if its
    /// [`CONCURRENCY`](crate::Consumer::CONCURRENCY) allows: with the default, 1, it runs
    /// `task` to the end here (and returns its result); with `N`, it waits until fewer than
    /// `N − 1` spawned tasks run, starts `task` and returns, so the runtime takes the next
    /// input while `task` runs. Give the task a [`handle`](Connection::handle) to reach the
    /// client and the layer.
    ///
    /// What still holds with `N > 1`: handlers start one at a time, in arrival order (they
    /// have `&mut self`); tasks start in the order they were spawned; the frames one task sends
    /// reach the client in its order. What does not: tasks end in any order, and their frames
    /// interleave with those of other tasks and handlers. A task's error is reported as a
    /// handler's is (an error frame); a panic closes the connection with 1011. When the
    /// connection ends, its tasks get `close_timeout` to finish, then are cancelled, and
    /// `disconnect` runs after them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::{Connection, Consumer, Frame, Message, Result};
    ///
    /// /// Looks words up slowly, four at a time.
    /// struct Lookup;
    ///
    /// impl Consumer for Lookup {
    ///     type Incoming = Frame;
    ///     type Event = Message;
    ///     const CONCURRENCY: usize = 4;
    ///
    ///     async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
    ///         let word = frame.text()?.to_owned();
    ///         let client = conn.handle();
    ///         conn.spawn(async move {
    ///             tokio::time::sleep(Duration::from_millis(100)).await; // a slow service
    ///             client.send_text(format!("{word}: found")).await
    ///         })
    ///         .await
    ///     }
    /// }
    /// ```
    pub async fn spawn<F>(&mut self, task: F) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let room = (self.limits.concurrency as usize).saturating_sub(1);
        if room == 0 {
            return task.await;
        }
        let tasks = self.tasks.get_or_insert_with(|| {
            Box::new(Tasks {
                set: JoinSet::new(),
                ended: Vec::new(),
            })
        });
        while tasks.set.len() >= room {
            match tasks.set.join_next().await {
                Some(ended) => tasks.ended.push(ended),
                None => break,
            }
        }
        tasks.set.spawn(tracing::Instrument::in_current_span(task));
        Ok(())
    }

    /// A handle on this connection for a spawned task: send to the client, to groups and to
    /// channels.
    pub fn handle(&self) -> ConnectionHandle {
        ConnectionHandle {
            out: self.out.clone(),
            limits: self.limits,
            layer: self.sub.layer().clone(),
            channel: self.sub.channel_name().clone(),
        }
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
        self.push_error(text)
    }

    /// [`send_error`](Connection::send_error) without the `async`: for the runtime, which
    /// reports a handler's error inline.
    pub(crate) fn push_error(&mut self, text: impl fmt::Display) -> Result<()> {
        let value = serde_json::json!({"type": "error", "error": text.to_string()});
        self.push(Frame::Text(serde_json::to_string(&value)?.into()))
    }

    /// Joins a group. Groups joined here are refreshed while the connection lives and left
    /// when it ends.
    ///
    /// Fails with `too many groups` (an error the client may be told) when the connection is
    /// in [`ConnectionConfig::max_groups`](crate::ConnectionConfig::max_groups) groups already.
    pub async fn group_add(&mut self, group: impl IntoGroupName) -> Result<()> {
        let group = self.may_join(group)?;
        Ok(self.sub.group_add(group).await?)
    }

    /// `group`, if the connection may join it: it is in fewer than
    /// [`ConnectionConfig::max_groups`](crate::ConnectionConfig::max_groups) groups, or in this
    /// one already.
    fn may_join(&self, group: impl IntoGroupName) -> Result<GroupName> {
        let group = group.into_group_name()?;
        let groups = self.sub.groups();
        if groups.len() >= usize::from(self.limits.groups) && !groups.contains(&group) {
            return Err(Error::protocol(format!(
                "too many groups: a connection may be in {} at most",
                self.limits.groups
            )));
        }
        Ok(group)
    }

    /// Joins a group that keeps history "since" a position the client saw (it sent it back
    /// on reconnecting): what the group got after it comes first, then live messages, with no
    /// gap and no duplicate; see
    /// [`Subscription::group_add_since`](switchboard_core::Subscription::group_add_since). A
    /// message's position is [`Message::position`]; send it to the client with the message
    /// for it to keep. The same group limit as [`group_add`](Connection::group_add) applies.
    pub async fn group_add_since(
        &mut self,
        group: impl IntoGroupName,
        since: Option<&switchboard_core::Position>,
    ) -> Result<switchboard_core::Resumed> {
        let group = self.may_join(group)?;
        Ok(self.sub.group_add_since(group, since).await?)
    }

    /// Leaves a group (and its presence, if this connection joined it).
    pub async fn group_discard(&mut self, group: impl IntoGroupName) -> Result<()> {
        Ok(self.sub.group_discard(group).await?)
    }

    /// Joins a group (within the same limit as [`group_add`](Connection::group_add)) and its
    /// presence: the connection is listed by
    /// [`Layer::presence`](switchboard_core::Layer::presence) in every process until it leaves
    /// or closes; see [`Subscription::presence_join`](switchboard_core::Subscription::presence_join).
    pub async fn presence_join(
        &mut self,
        group: impl IntoGroupName,
        info: switchboard_core::PresenceInfo,
    ) -> Result<()> {
        let group = self.may_join(group)?;
        Ok(self.sub.presence_join(group, info).await?)
    }

    /// Leaves a group's presence, staying in the group.
    pub async fn presence_leave(&mut self, group: impl IntoGroupName) -> Result<()> {
        Ok(self.sub.presence_leave(group).await?)
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

/// Queues a frame for the socket (see `Connection::push`).
fn push(out: &Mutex<Outbound>, limits: OutLimits, frame: Frame) -> Result<()> {
    let mut out = out.lock();
    match out.phase {
        // ASGI: sending before accepting accepts.
        Phase::Handshake => out.phase = Phase::Open,
        Phase::Open => {}
        Phase::Closed => return Err(Error::ConnectionClosed),
    }
    if out.overflow || out.frames.len() >= limits.frames as usize || out.bytes >= limits.bytes {
        out.overflow = true;
        return Err(Error::ConnectionClosed);
    }
    out.bytes += frame.len();
    out.frames.push_back(Out::Frame(frame));
    Ok(())
}

/// A connection's handle for a task it [spawned](Connection::spawn): the client, groups and
/// channels, without the consumer's `&mut`. Cheap to clone. Sends after the connection ended
/// fail with [`Error::ConnectionClosed`].
#[derive(Clone)]
pub struct ConnectionHandle {
    out: Arc<Mutex<Outbound>>,
    limits: OutLimits,
    layer: Layer,
    channel: ChannelName,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl ConnectionHandle {
    /// Sends a text frame.
    pub async fn send_text(&self, text: impl Into<Text>) -> Result<()> {
        push(&self.out, self.limits, Frame::Text(text.into()))
    }

    /// Sends a binary frame.
    pub async fn send_bytes(&self, bytes: impl Into<Bytes>) -> Result<()> {
        push(&self.out, self.limits, Frame::Binary(bytes.into()))
    }

    /// Sends a value as a JSON text frame.
    pub async fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)?;
        push(&self.out, self.limits, Frame::Text(text.into()))
    }

    /// Sends a layer message to the client as JSON.
    pub async fn send_message(&self, message: &Message) -> Result<()> {
        push(&self.out, self.limits, Frame::Text(message.to_json_text()))
    }

    /// Sends a message to every member of a group, as [`Connection::group_send`].
    pub async fn group_send(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        Ok(self
            .layer
            .group_send_from(&self.channel, group, message)
            .await?)
    }

    /// Sends a message to a channel.
    pub async fn send_to(
        &self,
        channel: impl IntoChannelName,
        message: impl IntoMessage,
    ) -> Result<()> {
        Ok(self.layer.send(channel, message).await?)
    }

    /// The connection's channel name.
    pub fn channel_name(&self) -> &ChannelName {
        &self.channel
    }

    /// The channel layer.
    pub fn layer(&self) -> &Layer {
        &self.layer
    }
}
