//! Channel layers: where channels and groups live.
//!
//! A channel layer moves [`Message`]s between the parts of an application: every consumer owns
//! a channel, anyone holding a channel's name can [`send`](ChannelLayer::send) to it, and a
//! [`group_send`](ChannelLayer::group_send) delivers one message to every channel in a group.
//! The semantics are those of Django Channels, written down here so every layer — in-memory,
//! Redis, Redis pub/sub — can be held to them by one conformance suite.
//!
//! # Capacity
//!
//! A channel holds at most `capacity` undelivered messages ([`LayerConfig::capacity`], 100 by
//! default; [`LayerConfig::channel_capacity`] sets it per name pattern, first match wins).
//! - [`send`](ChannelLayer::send) to a full channel fails with [`Error::ChannelFull`] and queues
//!   nothing: the sender learns the receiver is not keeping up.
//! - [`group_send`](ChannelLayer::group_send) never fails because one member is full: that member
//!   misses the message and the drop is counted ([`LayerStats::group_full_drops`]), while every
//!   other member gets it. One slow consumer cannot stall a room. Before it comes to that, the
//!   in-memory layer pushes back on a fast sender: a `group_send` that leaves members more than
//!   half full waits (at most [`LayerConfig::group_backpressure`], 10 ms) for them to drain.
//!
//! # Expiry
//!
//! A message not received within `expiry` (60 s) of being sent is dropped, and its channel
//! leaves every group it was in: a consumer that stopped reading for that long is presumed dead.
//! Group membership itself expires `group_expiry` (one day) after the `group_add` that made it;
//! calling `group_add` again refreshes it. (switchboard's consumer runtime refreshes the groups
//! of long-lived connections for you, which Channels does not.)
//!
//! # Ordering
//!
//! Messages sent to one channel by one sender are received in the order sent. There is no order
//! between different senders.
//!
//! # Names
//!
//! Names are checked once, when a [`ChannelName`] or [`GroupName`] is built. `new_channel`
//! returns fresh process-local names (`specific.…!…`) that no other consumer will be given.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::{IntoMessage, Message};
use crate::name::{ChannelName, GroupName, IntoChannelName, IntoGroupName};

pub mod memory;

#[cfg(feature = "testing")]
pub mod conformance;

/// The settings every layer shares, with Channels' defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LayerConfig {
    /// Messages a channel holds before `send` fails with `ChannelFull`. Default 100.
    pub capacity: usize,
    /// How long an undelivered message lives. Default 60 s.
    pub expiry: Duration,
    /// How long a group membership lives after `group_add`. Default 86,400 s (one day).
    pub group_expiry: Duration,
    /// How long `group_send` may wait, after delivering, for members more than half full to
    /// drain below half (back-pressure on a fast sender instead of drops). Members already full
    /// are skipped without waiting. Zero disables it. Default 10 ms. Honoured by layers that
    /// can see their members' queues (the in-memory layer); Redis layers ignore it.
    pub group_backpressure: Duration,
    /// Per-pattern capacities; the first matching glob wins.
    channel_capacity: Vec<(glob::Pattern, usize)>,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            capacity: 100,
            expiry: Duration::from_secs(60),
            group_expiry: Duration::from_secs(86_400),
            group_backpressure: Duration::from_millis(10),
            channel_capacity: Vec::new(),
        }
    }
}

impl LayerConfig {
    /// Sets the default capacity.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the message expiry.
    pub fn expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// Sets the group membership expiry.
    pub fn group_expiry(mut self, group_expiry: Duration) -> Self {
        self.group_expiry = group_expiry;
        self
    }

    /// Sets how long `group_send` may wait for lagging members (zero disables).
    pub fn group_backpressure(mut self, wait: Duration) -> Self {
        self.group_backpressure = wait;
        self
    }

    /// Gives channels whose name matches the glob `pattern` (`*`, `?`, `[abc]`, `[!abc]`, as
    /// Python's `fnmatch`) their own capacity. Patterns are tried in the order added; the first
    /// match wins.
    ///
    /// ```
    /// use switchboard_core::LayerConfig;
    /// let cfg = LayerConfig::default().channel_capacity("http.response!*", 10)?;
    /// assert_eq!(cfg.capacity_for("http.response!abc"), 10);
    /// assert_eq!(cfg.capacity_for("chat"), 100);
    /// # Ok::<(), switchboard_core::Error>(())
    /// ```
    pub fn channel_capacity(mut self, pattern: &str, capacity: usize) -> Result<Self> {
        let p = glob::Pattern::new(pattern).map_err(|e| {
            Error::Protocol(format!("bad channel_capacity pattern {pattern:?}: {e}"))
        })?;
        self.channel_capacity.push((p, capacity));
        Ok(self)
    }

    /// The capacity of the named channel.
    pub fn capacity_for(&self, channel: &str) -> usize {
        self.channel_capacity
            .iter()
            .find(|(p, _)| p.matches(channel))
            .map_or(self.capacity, |&(_, c)| c)
    }
}

/// Counters a layer keeps about what it did not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Group deliveries skipped because the member's channel was full.
    pub group_full_drops: u64,
    /// Messages dropped because they were not received within `expiry`.
    pub expired_messages: u64,
    /// Channels currently held by the layer (this process's view).
    pub channels: u64,
    /// Groups currently held by the layer (this process's view).
    pub groups: u64,
}

/// A channel layer backend.
///
/// Implemented by [`InMemoryLayer`](memory::InMemoryLayer) here and by the Redis layers in
/// `switchboard-redis`. Application code usually holds a [`Layer`] handle instead, whose methods
/// take plain strings and JSON.
#[async_trait]
pub trait ChannelLayer: Send + Sync + 'static {
    /// The layer's settings.
    fn config(&self) -> &LayerConfig;

    /// A fresh, unique channel name starting with `prefix` (conventionally `"specific."`), for
    /// a consumer of this process to receive on.
    async fn new_channel(&self, prefix: &str) -> Result<ChannelName>;

    /// Queues `message` on `channel`. Fails with [`Error::ChannelFull`] if the channel holds
    /// `capacity` messages.
    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()>;

    /// Waits for the next message on `channel`. Cancel-safe: dropping the future loses nothing.
    async fn receive(&self, channel: &ChannelName) -> Result<Message>;

    /// A long-lived receiver for `channel`, for a consumer that receives on it for its whole life.
    /// Receiving through it is what [`receive`](ChannelLayer::receive) does without the per-call
    /// lookup and allocation. `None` (the default) makes [`Layer::receiver`] fall back to calling
    /// `receive` in a loop.
    fn receiver(&self, channel: &ChannelName) -> Option<Box<dyn ChannelReceiver>> {
        let _ = channel;
        None
    }

    /// Adds `channel` to `group` (or refreshes its membership).
    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()>;

    /// Removes `channel` from `group`; removing a non-member is not an error.
    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()>;

    /// Sends `message` to every member of `group`. Full members are skipped and counted.
    async fn group_send(&self, group: &GroupName, message: Message) -> Result<()>;

    /// The channels in `group` whose membership has not expired.
    async fn group_channels(&self, group: &GroupName) -> Result<Vec<ChannelName>>;

    /// Tells the layer nobody will receive on `channel` again (its consumer has gone): pending
    /// messages are dropped and what the layer held for it is freed. Sending to it afterwards
    /// behaves as sending to any channel nobody receives on.
    async fn discard_channel(&self, channel: &ChannelName) -> Result<()> {
        let _ = channel;
        Ok(())
    }

    /// Deletes every channel, message and group of this layer (its key prefix, for Redis).
    async fn flush(&self) -> Result<()>;

    /// Closes the layer: connections are released and later calls fail with
    /// [`Error::LayerClosed`].
    async fn close(&self) -> Result<()>;

    /// What the layer has not delivered, and how much it holds.
    fn stats(&self) -> LayerStats {
        LayerStats::default()
    }
}

/// Receives the messages of one channel, polled directly (no future allocated per message).
/// Obtained from [`Layer::receiver`].
pub trait ChannelReceiver: Send + 'static {
    /// Polls for the next message. Cancel-safe: a message is taken only when `Ready` is returned.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message>>;
}

impl dyn ChannelReceiver {
    /// Waits for the next message.
    pub async fn recv(&mut self) -> Result<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl fmt::Debug for dyn ChannelReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelReceiver")
    }
}

/// The fallback receiver: `receive` called in a loop.
struct ReceiveLoop {
    layer: Layer,
    channel: ChannelName,
    pending: Option<Pin<Box<dyn Future<Output = Result<Message>> + Send>>>,
}

impl ChannelReceiver for ReceiveLoop {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message>> {
        let fut = self.pending.get_or_insert_with(|| {
            let (layer, channel) = (self.layer.clone(), self.channel.clone());
            Box::pin(async move { layer.backend().receive(&channel).await })
        });
        let r = std::task::ready!(fut.as_mut().poll(cx));
        self.pending = None;
        Poll::Ready(r)
    }
}

/// A cheap, cloneable handle to a channel layer, for consumers and for code outside consumers
/// (HTTP handlers, background tasks). Its methods take names as strings and messages as JSON or
/// [`Message`]s, validating them on the way in.
///
/// ```
/// use switchboard_core::{InMemoryLayer, Layer, LayerConfig};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard_core::Result<()> {
/// let layer = Layer::new(InMemoryLayer::new(LayerConfig::default()));
/// let me = layer.new_channel().await?;
/// layer.group_add("room", &me).await?;
/// layer.group_send("room", serde_json::json!({"type": "chat.message", "text": "hi"})).await?;
/// assert_eq!(layer.receive(&me).await?.message_type(), "chat.message");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Layer(Arc<dyn ChannelLayer>);

impl Layer {
    /// Wraps a layer backend.
    pub fn new(layer: impl ChannelLayer) -> Layer {
        Layer(Arc::new(layer))
    }

    /// Wraps an already shared layer backend.
    pub fn from_arc(layer: Arc<dyn ChannelLayer>) -> Layer {
        Layer(layer)
    }

    /// The backend.
    pub fn backend(&self) -> &dyn ChannelLayer {
        &*self.0
    }

    /// The layer's settings.
    pub fn config(&self) -> &LayerConfig {
        self.0.config()
    }

    /// A fresh process-local channel name (`specific.…`).
    pub async fn new_channel(&self) -> Result<ChannelName> {
        self.0.new_channel("specific.").await
    }

    /// Sends to a channel; see [`ChannelLayer::send`].
    pub async fn send(
        &self,
        channel: impl IntoChannelName,
        message: impl IntoMessage,
    ) -> Result<()> {
        let channel = channel.into_channel_name()?;
        let message = message.into_message()?;
        self.0.send(&channel, message).await
    }

    /// Receives from a channel; see [`ChannelLayer::receive`].
    pub async fn receive(&self, channel: impl IntoChannelName) -> Result<Message> {
        let channel = channel.into_channel_name()?;
        self.0.receive(&channel).await
    }

    /// A long-lived receiver for a channel; see [`ChannelLayer::receiver`].
    pub fn receiver(&self, channel: &ChannelName) -> Box<dyn ChannelReceiver> {
        self.0.receiver(channel).unwrap_or_else(|| {
            Box::new(ReceiveLoop {
                layer: self.clone(),
                channel: channel.clone(),
                pending: None,
            })
        })
    }

    /// Adds a channel to a group; see [`ChannelLayer::group_add`].
    pub async fn group_add(
        &self,
        group: impl IntoGroupName,
        channel: impl IntoChannelName,
    ) -> Result<()> {
        let group = group.into_group_name()?;
        let channel = channel.into_channel_name()?;
        self.0.group_add(&group, &channel).await
    }

    /// Removes a channel from a group; see [`ChannelLayer::group_discard`].
    pub async fn group_discard(
        &self,
        group: impl IntoGroupName,
        channel: impl IntoChannelName,
    ) -> Result<()> {
        let group = group.into_group_name()?;
        let channel = channel.into_channel_name()?;
        self.0.group_discard(&group, &channel).await
    }

    /// Sends to every member of a group; see [`ChannelLayer::group_send`].
    pub async fn group_send(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        let group = group.into_group_name()?;
        let message = message.into_message()?;
        self.0.group_send(&group, message).await
    }

    /// The live members of a group.
    pub async fn group_channels(&self, group: impl IntoGroupName) -> Result<Vec<ChannelName>> {
        let group = group.into_group_name()?;
        self.0.group_channels(&group).await
    }

    /// Deletes everything the layer holds.
    pub async fn flush(&self) -> Result<()> {
        self.0.flush().await
    }

    /// Closes the layer.
    pub async fn close(&self) -> Result<()> {
        self.0.close().await
    }

    /// The layer's counters.
    pub fn stats(&self) -> LayerStats {
        self.0.stats()
    }
}

impl<L: ChannelLayer> From<L> for Layer {
    fn from(layer: L) -> Layer {
        Layer::new(layer)
    }
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("config", self.0.config())
            .finish_non_exhaustive()
    }
}
