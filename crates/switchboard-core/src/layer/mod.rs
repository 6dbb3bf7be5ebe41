#![doc = include_str!("../../docs/layers.md")]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::Receiver;
use crate::error::{LayerError, Result};
use crate::history::{HistoryConfig, Position, Recovery, no_history};
use crate::message::{IntoMessage, Message};
use crate::metrics::{self, Op};
use crate::name::{ChannelName, GroupName, IntoChannelName, IntoGroupName};
use crate::presence::{PresenceEntry, Throttle};
use crate::subscription::Subscription;

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
    /// drain below half: back-pressure that slows a fast sender to its group's pace instead
    /// of dropping messages (a WebSocket sender's socket is not read meanwhile). A member that
    /// does not drain within it is *overrun*: senders stop waiting for it until it drains
    /// below half, and once it is full the messages it cannot take are dropped — and counted
    /// for its receiver ([`Subscription::take_missed`](crate::Subscription::take_missed)),
    /// which is told (a WebSocket consumer closes with 1013 by default). Zero disables the
    /// wait. Default 1 s. Every layer honours it for the members in this process (the Redis
    /// layers cannot see other processes' queues).
    pub group_backpressure: Duration,
    /// Per-pattern capacities; the first matching glob wins.
    channel_capacity: Vec<(glob::Pattern, usize)>,
    /// Per-pattern group histories; the first matching glob wins. None by default.
    group_history: Vec<(glob::Pattern, HistoryConfig)>,
    /// How long a presence entry lives without a heartbeat: a subscription refreshes its
    /// entries every third of it, so the entries of a process that crashed vanish within it.
    /// Default 60 s.
    pub presence_ttl: Duration,
    /// Presence events (`presence.join`, `presence.leave`) each process may send to one group
    /// per second; past that one `presence.sync` follows the second. Default 20.
    pub presence_event_rate: u32,
    /// Groups whose presence changes are sent to the group as events. None by default.
    presence_events: Vec<glob::Pattern>,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            capacity: 100,
            expiry: Duration::from_secs(60),
            group_expiry: Duration::from_secs(86_400),
            group_backpressure: Duration::from_secs(1),
            channel_capacity: Vec::new(),
            group_history: Vec::new(),
            presence_ttl: Duration::from_secs(60),
            presence_event_rate: 20,
            presence_events: Vec::new(),
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
    /// # Ok::<(), switchboard_core::LayerError>(())
    /// ```
    pub fn channel_capacity(mut self, pattern: &str, capacity: usize) -> Result<Self> {
        let p = glob::Pattern::new(pattern).map_err(|e| {
            LayerError::Config(format!("bad channel_capacity pattern {pattern:?}: {e}"))
        })?;
        self.channel_capacity.push((p, capacity));
        Ok(self)
    }

    /// Keeps the last `size` messages (each for at most `ttl`) of every group whose name
    /// matches the glob `pattern`, with a [`Position`] on each, so that a
    /// subscriber can join "since" the last one it saw and get what it missed
    /// ([`Subscription::group_add_since`]). Patterns are tried in the order added; the first
    /// match wins. A `size` of 0 numbers the group's messages without keeping them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard_core::LayerConfig;
    /// let cfg = LayerConfig::default().group_history("chat_*", 100, Duration::from_secs(300))?;
    /// assert_eq!(cfg.history_for("chat_lobby").map(|h| h.size), Some(100));
    /// assert!(cfg.history_for("tweets").is_none());
    /// # Ok::<(), switchboard_core::LayerError>(())
    /// ```
    pub fn group_history(mut self, pattern: &str, size: usize, ttl: Duration) -> Result<Self> {
        let p = glob::Pattern::new(pattern).map_err(|e| {
            LayerError::Config(format!("bad group_history pattern {pattern:?}: {e}"))
        })?;
        if ttl.is_zero() {
            return Err(LayerError::Config(format!(
                "group_history {pattern:?}: the ttl must be more than zero"
            )));
        }
        self.group_history.push((p, HistoryConfig { size, ttl }));
        Ok(self)
    }

    /// Sets how long a presence entry lives without a heartbeat
    /// ([`presence_ttl`](LayerConfig::presence_ttl)).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_millis(100));
        self
    }

    /// Sends presence changes of every group whose name matches the glob `pattern` to the
    /// group as messages: `presence.join` and `presence.leave` (see "Presence" in
    /// [`crate::layer`]), at most [`presence_event_rate`](LayerConfig::presence_event_rate) a
    /// second per group and process.
    ///
    /// ```
    /// use switchboard_core::LayerConfig;
    /// let cfg = LayerConfig::default().presence_events("chat_*")?;
    /// assert!(cfg.presence_events_for("chat_lobby"));
    /// assert!(!cfg.presence_events_for("tweets"));
    /// # Ok::<(), switchboard_core::LayerError>(())
    /// ```
    pub fn presence_events(mut self, pattern: &str) -> Result<Self> {
        let p = glob::Pattern::new(pattern).map_err(|e| {
            LayerError::Config(format!("bad presence_events pattern {pattern:?}: {e}"))
        })?;
        self.presence_events.push(p);
        Ok(self)
    }

    /// Whether the named group's presence changes are sent to it as events.
    pub fn presence_events_for(&self, group: &str) -> bool {
        self.presence_events.iter().any(|p| p.matches(group))
    }

    /// The history kept for the named group, if any.
    pub fn history_for(&self, group: &str) -> Option<HistoryConfig> {
        if self.group_history.is_empty() {
            return None;
        }
        self.group_history
            .iter()
            .find(|(p, _)| p.matches(group))
            .map(|&(_, h)| h)
    }

    /// The history kept for `group`, or the error of a layer asked to resume a group that
    /// keeps none ([`no_history`]).
    pub fn history_of(&self, group: &GroupName) -> Result<HistoryConfig> {
        self.history_for(group.as_str())
            .ok_or_else(|| no_history(group))
    }

    /// Whether any group keeps history.
    pub fn has_history(&self) -> bool {
        !self.group_history.is_empty()
    }

    /// The capacity of the named channel.
    pub fn capacity_for(&self, channel: &str) -> usize {
        self.channel_capacity
            .iter()
            .find(|(p, _)| p.matches(channel))
            .map_or(self.capacity, |&(_, c)| c)
    }
}

/// Counters a layer keeps about what it did not deliver, and what it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Group deliveries skipped because the member's channel was full.
    pub group_full_drops: u64,
    /// Messages from other processes dropped because the receiving channel's queue here was
    /// full (the Redis layers; a `send` in this process fails with `ChannelFull` instead).
    pub remote_full_drops: u64,
    /// Messages dropped because they were not received within `expiry`.
    pub expired_messages: u64,
    /// Stored messages that did not decode (logged and skipped; the Redis layers).
    pub undecodable: u64,
    /// Group messages queued for a member channel of this process.
    pub group_deliveries: u64,
    /// Channels currently held by the layer (this process's view).
    pub channels: u64,
    /// Groups currently held by the layer (this process's view).
    pub groups: u64,
}

/// A channel layer backend.
///
/// Implemented by [`InMemoryLayer`](memory::InMemoryLayer) here and by the Redis layers in
/// `switchboard-redis`, each on the local delivery [`Engine`](crate::engine::Engine).
/// Application code holds a [`Layer`] handle instead, whose methods take plain strings and
/// JSON and validate them on the way in.
#[async_trait]
pub trait ChannelLayer: Send + Sync + 'static {
    /// The layer's settings.
    fn config(&self) -> &LayerConfig;

    /// A fresh, unique channel name starting with `prefix` (conventionally `"specific."`), for
    /// a consumer of this process to receive on.
    async fn new_channel(&self, prefix: &str) -> Result<ChannelName>;

    /// Queues `message` on `channel`. Fails with [`LayerError::ChannelFull`] if the channel
    /// holds `capacity` messages.
    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()>;

    /// A long-lived receiver for `channel`, polled without a lookup, an allocation or a future
    /// per message.
    async fn receiver(&self, channel: &ChannelName) -> Result<Receiver>;

    /// Waits for the next message on `channel`. Cancel-safe: dropping the future loses
    /// nothing.
    async fn receive(&self, channel: &ChannelName) -> Result<Message> {
        self.receiver(channel).await?.recv().await
    }

    /// Adds `channel` to `group` (or refreshes its membership).
    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()>;

    /// Removes `channel` from `group`; removing a non-member is not an error.
    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()>;

    /// Sends `message` to every member of `group`. Full members are skipped and counted.
    async fn group_send(&self, group: &GroupName, message: Message) -> Result<()>;

    /// [`group_send`](ChannelLayer::group_send) on behalf of the consumer receiving on
    /// `sender`: the back-pressure wait ([`LayerConfig::group_backpressure`]) does not wait
    /// for `sender`'s own queue, which its consumer cannot drain while it is sending.
    async fn group_send_from(
        &self,
        sender: &ChannelName,
        group: &GroupName,
        message: Message,
    ) -> Result<()> {
        let _ = sender;
        self.group_send(group, message).await
    }

    /// [`group_send`](ChannelLayer::group_send), answering the [`Position`] the message got in
    /// the group's history (`None` for a group without history; the default always answers
    /// `None`). A publisher that tells its caller an id — an HTTP `POST` answer — uses this.
    async fn group_send_positioned(
        &self,
        group: &GroupName,
        message: Message,
    ) -> Result<Option<Position>> {
        self.group_send(group, message).await.map(|()| None)
    }

    /// What `group`'s history holds after `since`, oldest first — everything it holds for
    /// `None` — without joining the group: `recovered` as for
    /// [`group_add_since`](ChannelLayer::group_add_since), and the group's position now. A
    /// backtrack ("the last 5") is the tail of it. [`LayerError::Unsupported`] for a group
    /// without history (and from the default).
    async fn history(&self, group: &GroupName, since: Option<&Position>) -> Result<Recovery> {
        let _ = since;
        Err(no_history(group))
    }

    /// Forgets `group`'s history: its next message starts a new epoch at offset 1, and a
    /// position from before is not recovered. [`LayerError::Unsupported`] for a group without
    /// history (and from the default).
    async fn history_clear(&self, group: &GroupName) -> Result<()> {
        Err(no_history(group))
    }

    /// Adds `channel` to `group` as [`group_add`](ChannelLayer::group_add) does and, for a
    /// group that keeps history ([`LayerConfig::group_history`]), returns what was sent to it
    /// after `since` (see [`Recovery`]): everything sent after the join reaches the channel
    /// live, everything before it is in the returned messages, and what is in both is told
    /// apart by its position ([`Subscription::group_add_since`] drops the copy). A layer
    /// without history for the group answers [`LayerError::Unsupported`]; the default does
    /// for every group.
    async fn group_add_since(
        &self,
        group: &GroupName,
        channel: &ChannelName,
        since: Option<&Position>,
    ) -> Result<Recovery> {
        let _ = (channel, since);
        Err(no_history(group))
    }

    /// The channels in `group` whose membership has not expired.
    async fn group_channels(&self, group: &GroupName) -> Result<Vec<ChannelName>>;

    /// Tells the layer nobody will receive on `channel` again (its consumer has gone): pending
    /// messages are dropped and the channel leaves its groups. Sending to it afterwards
    /// behaves as sending to any channel nobody receives on.
    async fn discard_channel(&self, channel: &ChannelName) -> Result<()>;

    /// Deletes every channel, message and group of this layer (its key prefix, for Redis).
    async fn flush(&self) -> Result<()>;

    /// Closes the layer: connections are released and later calls fail with
    /// [`LayerError::Closed`].
    async fn close(&self) -> Result<()>;

    /// What the layer has not delivered, and how much it holds.
    fn stats(&self) -> LayerStats;

    /// Checks that the layer can serve — it is open and its backend answers (the Redis layers
    /// `PING` each host) — for a readiness probe. The default answers `Ok`.
    async fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Adds `entry` to `group`'s presence, or refreshes it (the entry of its channel), for
    /// [`presence_ttl`](LayerConfig::presence_ttl). The default answers
    /// [`LayerError::Unsupported`].
    async fn presence_add(&self, group: &GroupName, entry: &PresenceEntry) -> Result<()> {
        let _ = entry;
        Err(no_presence(group))
    }

    /// Removes `channel`'s entry from `group`'s presence; removing none is not an error.
    async fn presence_remove(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let _ = channel;
        Err(no_presence(group))
    }

    /// The entries of `group`'s presence that have not expired, from every process.
    async fn presence(&self, group: &GroupName) -> Result<Vec<PresenceEntry>> {
        Err(no_presence(group))
    }

    /// How many entries [`presence`](ChannelLayer::presence) would list, without listing them.
    async fn presence_count(&self, group: &GroupName) -> Result<usize> {
        Err(no_presence(group))
    }
}

/// The error for presence on a layer that keeps none.
fn no_presence(group: &GroupName) -> LayerError {
    LayerError::Unsupported(format!("this layer keeps no presence (group {group})"))
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
pub struct Layer(Arc<dyn ChannelLayer>, Arc<Throttle>);

impl Layer {
    /// Wraps a layer backend.
    pub fn new(layer: impl ChannelLayer) -> Layer {
        Layer(Arc::new(layer), Arc::default())
    }

    /// Wraps an already shared layer backend.
    pub fn from_arc(layer: Arc<dyn ChannelLayer>) -> Layer {
        Layer(layer, Arc::default())
    }

    /// This handle's presence-event throttle (shared by its clones).
    pub(crate) fn throttle(&self) -> &Throttle {
        &self.1
    }

    /// Who is in `group`, from every process: the entries of subscribers that joined its
    /// presence ([`Subscription::presence_join`]) and have not expired.
    pub async fn presence(&self, group: impl IntoGroupName) -> Result<Vec<PresenceEntry>> {
        let group = group.into_group_name()?;
        self.0.presence(&group).await
    }

    /// How many are in `group` ([`presence`](Layer::presence) without the list): one Redis
    /// command on the Redis layers.
    pub async fn presence_count(&self, group: impl IntoGroupName) -> Result<usize> {
        let group = group.into_group_name()?;
        self.0.presence_count(&group).await
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

    /// A [`Subscription`]: a fresh channel to receive on, and the groups joined through it,
    /// kept alive while it lives and left when it is dropped.
    pub async fn subscribe(&self) -> Result<Subscription> {
        Subscription::new(self).await
    }

    /// Sends to a channel; see [`ChannelLayer::send`].
    pub async fn send(
        &self,
        channel: impl IntoChannelName,
        message: impl IntoMessage,
    ) -> Result<()> {
        let channel = channel.into_channel_name()?;
        let message = message.into_message()?;
        metrics::layer_op!(Op::Send, self.0.send(&channel, message))
    }

    /// Receives from a channel; see [`ChannelLayer::receive`].
    pub async fn receive(&self, channel: impl IntoChannelName) -> Result<Message> {
        let channel = channel.into_channel_name()?;
        self.0.receive(&channel).await
    }

    /// A long-lived receiver for a channel; see [`ChannelLayer::receiver`].
    pub async fn receiver(&self, channel: impl IntoChannelName) -> Result<Receiver> {
        let channel = channel.into_channel_name()?;
        self.0.receiver(&channel).await
    }

    /// Adds a channel to a group; see [`ChannelLayer::group_add`].
    pub async fn group_add(
        &self,
        group: impl IntoGroupName,
        channel: impl IntoChannelName,
    ) -> Result<()> {
        let group = group.into_group_name()?;
        let channel = channel.into_channel_name()?;
        metrics::layer_op!(Op::GroupAdd, self.0.group_add(&group, &channel))
    }

    /// Removes a channel from a group; see [`ChannelLayer::group_discard`].
    pub async fn group_discard(
        &self,
        group: impl IntoGroupName,
        channel: impl IntoChannelName,
    ) -> Result<()> {
        let group = group.into_group_name()?;
        let channel = channel.into_channel_name()?;
        metrics::layer_op!(Op::GroupDiscard, self.0.group_discard(&group, &channel))
    }

    /// Sends to every member of a group; see [`ChannelLayer::group_send`].
    pub async fn group_send(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        let group = group.into_group_name()?;
        let message = message.into_message()?;
        metrics::layer_op!(Op::GroupSend, self.0.group_send(&group, message))
    }

    /// Sends to every member of a group and answers the position the message got in its
    /// history; see [`ChannelLayer::group_send_positioned`].
    pub async fn group_send_positioned(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<Option<Position>> {
        let group = group.into_group_name()?;
        let message = message.into_message()?;
        metrics::layer_op!(Op::GroupSend, self.0.group_send_positioned(&group, message))
    }

    /// What a group's history holds after a position (all of it for `None`), without joining;
    /// see [`ChannelLayer::history`].
    pub async fn history(
        &self,
        group: impl IntoGroupName,
        since: Option<&Position>,
    ) -> Result<Recovery> {
        let group = group.into_group_name()?;
        self.0.history(&group, since).await
    }

    /// Forgets a group's history (a new epoch); see [`ChannelLayer::history_clear`].
    pub async fn history_clear(&self, group: impl IntoGroupName) -> Result<()> {
        let group = group.into_group_name()?;
        self.0.history_clear(&group).await
    }

    /// Sends to every member of a group on behalf of `sender`'s consumer; see
    /// [`ChannelLayer::group_send_from`].
    pub async fn group_send_from(
        &self,
        sender: &ChannelName,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        let group = group.into_group_name()?;
        let message = message.into_message()?;
        metrics::layer_op!(
            Op::GroupSend,
            self.0.group_send_from(sender, &group, message)
        )
    }

    /// The live members of a group.
    pub async fn group_channels(&self, group: impl IntoGroupName) -> Result<Vec<ChannelName>> {
        let group = group.into_group_name()?;
        self.0.group_channels(&group).await
    }

    /// Forgets a channel whose receiver has gone; see [`ChannelLayer::discard_channel`].
    pub async fn discard_channel(&self, channel: impl IntoChannelName) -> Result<()> {
        let channel = channel.into_channel_name()?;
        self.0.discard_channel(&channel).await
    }

    /// Deletes everything the layer holds.
    pub async fn flush(&self) -> Result<()> {
        metrics::layer_op!(Op::Flush, self.0.flush())
    }

    /// Closes the layer.
    pub async fn close(&self) -> Result<()> {
        self.0.close().await
    }

    /// The layer's counters.
    pub fn stats(&self) -> LayerStats {
        self.0.stats()
    }

    /// Whether the layer can serve now; see [`ChannelLayer::check`].
    pub async fn check(&self) -> Result<()> {
        self.0.check().await
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
