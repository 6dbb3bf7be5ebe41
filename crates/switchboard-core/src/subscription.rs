//! [`Subscription`]: a channel and the groups joined through it, kept alive while it lives.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::engine::Receiver;
use crate::error::{LayerError, Result};
use crate::history::{Position, Resumed};
use crate::layer::Layer;
use crate::message::{IntoMessage, Message};
use crate::metrics::{self, Op};
use crate::name::{ChannelName, GroupName, IntoGroupName};
use crate::presence::{PresenceEntry, PresenceInfo, Verdict};

type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A future behind a mutex that is never locked (`get_mut` needs `&mut`): the subscription
/// stays `Sync` (a handler holds `&Connection` across awaits) though the future is only `Send`.
type Exclusive<T> = std::sync::Mutex<T>;

/// A channel to receive on, plus the groups joined through it: what every receiver of a
/// layer's messages holds — a WebSocket consumer's connection, a server-sent-events or
/// long-poll stream, a worker.
///
/// - [`recv`](Subscription::recv) / [`poll_recv`](Subscription::poll_recv) take the next
///   message from the channel (direct sends and group messages alike), without a future per
///   message; both are cancel-safe.
/// - [`group_add`](Subscription::group_add) joins a group and remembers it. While the
///   subscription is received from, every `group_expiry / 2` it joins its groups again, so a
///   subscription that lives longer than `group_expiry` keeps its memberships (Channels lets
///   them lapse).
/// - [`close`](Subscription::close) leaves the groups and tells the layer the channel is gone
///   ([`Layer::discard_channel`]). Dropping a subscription that was not closed does the same in
///   a background task, whatever the reason it was dropped: a handler that panicked, a client
///   that went away mid-stream.
///
/// ```
/// use switchboard_core::{InMemoryLayer, Layer};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard_core::Result<()> {
/// let layer = Layer::new(InMemoryLayer::default());
/// let mut sub = layer.subscribe().await?;
/// sub.group_add("news").await?;
/// layer.group_send("news", serde_json::json!({"type": "news.flash", "text": "hi"})).await?;
/// assert_eq!(sub.recv().await?.message_type(), "news.flash");
/// sub.close().await;
/// assert!(layer.group_channels("news").await?.is_empty());
/// # Ok(()) }
/// ```
pub struct Subscription {
    layer: Layer,
    receiver: Receiver,
    groups: Vec<GroupName>,
    /// Whether the channel is this subscription's own (made for it, discarded with it), or a
    /// named channel others receive on too.
    owns_channel: bool,
    refresh: Refresh,
    closed: bool,
    /// Messages a resume read from history, received before the channel's.
    replay: std::collections::VecDeque<Message>,
    /// The groups joined "since" a position (see [`Resume`]).
    resumed: Vec<Resume>,
    /// The presence entries this subscription holds ([`Subscription::presence_join`]),
    /// refreshed with its groups.
    presence: Vec<(GroupName, PresenceEntry)>,
}

/// Pushes `item`, making room for just it when `v` has none: most subscriptions hold one group
/// (one presence entry), and `Vec`'s first growth (to four) would give every connection room
/// for three it never uses.
fn push_lean<T>(v: &mut Vec<T>, item: T) {
    if v.capacity() == 0 {
        v.reserve_exact(1);
    }
    v.push(item);
}

/// A group joined "since" a position.
struct Resume {
    group: GroupName,
    /// Its history's epoch.
    epoch: Box<str>,
    /// The last offset a replay covered: a live message of this history at or before it is a
    /// copy of one the replay had (it was sent between the join and the read), and is dropped.
    boundary: u64,
    /// The last offset received (where [`Subscription::recover`] reads again from).
    delivered: u64,
}

struct Refresh {
    every: Option<Duration>,
    /// Armed while there are groups to refresh: wakes the task when a refresh is due.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer was polled since it was armed or reset, and so holds the task's
    /// waker: until it has fired, a receive does not poll it again (that would be work per
    /// message for nothing).
    polled: bool,
    /// A refresh on its way.
    running: Option<Exclusive<Pending>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", self.receiver.channel_name())
            .field("groups", &self.groups)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription on a fresh channel of this process.
    pub async fn new(layer: &Layer) -> Result<Subscription> {
        let channel = layer.new_channel().await?;
        let receiver = match layer.receiver(&channel).await {
            Ok(r) => r,
            Err(e) => {
                let _ = layer.discard_channel(&channel).await;
                return Err(e);
            }
        };
        Ok(Subscription::build(layer, receiver, true))
    }

    /// A subscription on a named channel that other receivers may share (`worker.jobs`):
    /// closing it leaves its groups but keeps the channel and its messages.
    pub async fn named(layer: &Layer, channel: &ChannelName) -> Result<Subscription> {
        let receiver = layer.receiver(channel).await?;
        Ok(Subscription::build(layer, receiver, false))
    }

    fn build(layer: &Layer, receiver: Receiver, owns_channel: bool) -> Subscription {
        let every = (layer.config().group_expiry / 2).max(Duration::from_secs(1));
        Subscription {
            layer: layer.clone(),
            receiver,
            groups: Vec::new(),
            owns_channel,
            refresh: Refresh {
                every: Some(every),
                timer: None,
                polled: false,
                running: None,
            },
            closed: false,
            replay: std::collections::VecDeque::new(),
            resumed: Vec::new(),
            presence: Vec::new(),
        }
    }

    /// The channel: give its name to whoever should be able to send to this subscription.
    pub fn channel_name(&self) -> &ChannelName {
        self.receiver.channel_name()
    }

    /// The groups joined through this subscription.
    pub fn groups(&self) -> &[GroupName] {
        &self.groups
    }

    /// The layer.
    pub fn layer(&self) -> &Layer {
        &self.layer
    }

    /// How often groups are joined again (`None`: never). Default `group_expiry / 2`, at least
    /// one second; while the subscription holds presence entries, at most a third of
    /// [`presence_ttl`](crate::LayerConfig::presence_ttl) (their heartbeat). `None` stops the
    /// heartbeat too: the entries then expire.
    pub fn set_refresh(&mut self, every: Option<Duration>) {
        self.refresh.every = every;
        self.refresh.timer = None;
        self.refresh.polled = false;
        self.arm();
    }

    /// Joins `group` (or refreshes the membership).
    pub async fn group_add(&mut self, group: impl IntoGroupName) -> Result<()> {
        self.check_open()?;
        let group = group.into_group_name()?;
        let add = self
            .layer
            .backend()
            .group_add(&group, self.receiver.channel_name());
        metrics::layer_op!(Op::GroupAdd, add)?;
        if !self.groups.contains(&group) {
            push_lean(&mut self.groups, group);
        }
        self.arm();
        Ok(())
    }

    /// Joins `group` "since" `since` — the position of the last message of the group this
    /// subscriber saw (a client's `Last-Event-ID`, say) — for a group that keeps history
    /// ([`LayerConfig::group_history`](crate::LayerConfig::group_history)): what was sent to
    /// the group after it is received first, oldest first, then what comes live, with no gap
    /// and no message twice across the switch (the join comes before the history is read; a
    /// live message the replay already had is dropped). With `since` `None` it joins from now.
    ///
    /// When the history cannot give everything after `since` — the position is from another
    /// epoch, or older than the history holds — nothing is replayed and
    /// [`Resumed::recovered`] is `false`: the app should reload its state rather than show a
    /// hole. The subscription is in the group either way. A group without history fails with
    /// [`LayerError::Unsupported`] (and is not joined).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard_core::{InMemoryLayer, Layer, LayerConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard_core::Result<()> {
    /// let cfg = LayerConfig::default().group_history("chat_*", 100, Duration::from_secs(60))?;
    /// let layer = Layer::new(InMemoryLayer::new(cfg));
    /// let mut sub = layer.subscribe().await?;
    /// sub.group_add("chat_lobby").await?;
    /// layer.group_send("chat_lobby", serde_json::json!({"type": "chat", "n": 1})).await?;
    /// let seen = sub.recv().await?.position().cloned();
    /// sub.close().await; // away for a while
    /// layer.group_send("chat_lobby", serde_json::json!({"type": "chat", "n": 2})).await?;
    ///
    /// let mut back = layer.subscribe().await?;
    /// let resumed = back.group_add_since("chat_lobby", seen.as_ref()).await?;
    /// assert!(resumed.recovered);
    /// assert_eq!(back.recv().await?.get("n").and_then(|n| n.as_i64()), Some(2));
    /// # Ok(()) }
    /// ```
    pub async fn group_add_since(
        &mut self,
        group: impl IntoGroupName,
        since: Option<&Position>,
    ) -> Result<Resumed> {
        self.check_open()?;
        let group = group.into_group_name()?;
        let add = self
            .layer
            .backend()
            .group_add_since(&group, self.receiver.channel_name(), since);
        let recovery = metrics::layer_op!(Op::GroupAdd, add)?;
        if !self.groups.contains(&group) {
            push_lean(&mut self.groups, group.clone());
        }
        self.arm();
        let replayed = recovery.messages.len();
        let last = recovery
            .messages
            .last()
            .and_then(Message::position)
            .map_or(recovery.position.offset(), Position::offset);
        self.resumed.retain(|r| r.group != group);
        let delivered = since
            .filter(|s| recovery.recovered && s.epoch() == recovery.position.epoch())
            .map_or(recovery.position.offset(), Position::offset);
        push_lean(
            &mut self.resumed,
            Resume {
                group,
                epoch: recovery.position.epoch().into(),
                boundary: last,
                delivered,
            },
        );
        self.replay.extend(recovery.messages);
        Ok(Resumed {
            recovered: recovery.recovered,
            replayed,
            position: recovery.position,
        })
    }

    /// Joins `group` (if this subscription is not in it yet) and its presence: `info` is
    /// listed by [`Layer::presence`] in every process until this subscription leaves the group,
    /// leaves its presence, or is closed or dropped — or, if its process crashed, until
    /// [`presence_ttl`](crate::LayerConfig::presence_ttl) has passed without a heartbeat (the
    /// subscription refreshes its entries every third of it while it is received from). A
    /// second call for the same group replaces the entry. For a group with presence events
    /// ([`LayerConfig::presence_events`](crate::LayerConfig::presence_events)) the first join
    /// sends `presence.join` to the group.
    ///
    /// ```
    /// use switchboard_core::{InMemoryLayer, Layer, PresenceInfo};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard_core::Result<()> {
    /// let layer = Layer::new(InMemoryLayer::default());
    /// let mut ann = layer.subscribe().await?;
    /// ann.presence_join("chat_lobby", PresenceInfo::new("tab-1").user("ann")).await?;
    /// assert_eq!(layer.presence_count("chat_lobby").await?, 1);
    /// let here = layer.presence("chat_lobby").await?;
    /// assert_eq!(here[0].user.as_deref(), Some("ann"));
    /// ann.close().await;
    /// assert_eq!(layer.presence_count("chat_lobby").await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn presence_join(
        &mut self,
        group: impl IntoGroupName,
        info: PresenceInfo,
    ) -> Result<()> {
        self.check_open()?;
        info.check()?;
        let group = group.into_group_name()?;
        if !self.groups.contains(&group) {
            self.group_add(&group).await?;
        }
        let mut entry = PresenceEntry::new(self.channel_name().clone(), &info);
        let held = self.presence.iter().position(|(g, _)| g == &group);
        if let Some(i) = held {
            entry.since_ms = self.presence[i].1.since_ms; // a new entry, the same arrival
        }
        self.layer.backend().presence_add(&group, &entry).await?;
        match held {
            Some(i) => self.presence[i].1 = entry,
            None => {
                push_lean(&mut self.presence, (group.clone(), entry.clone()));
                presence_event(&self.layer, &group, "presence.join", &entry).await;
                // The heartbeat may be due sooner than the groups' refresh.
                self.refresh.timer = None;
                self.arm();
            }
        }
        Ok(())
    }

    /// Leaves `group`'s presence (staying in the group); sends `presence.leave` for a group
    /// with presence events. Leaving a presence it does not hold is not an error.
    pub async fn presence_leave(&mut self, group: impl IntoGroupName) -> Result<()> {
        self.check_open()?;
        let group = group.into_group_name()?;
        let Some(i) = self.presence.iter().position(|(g, _)| g == &group) else {
            return Ok(());
        };
        let (group, entry) = self.presence.swap_remove(i);
        leave_presence(&self.layer, &group, &entry).await
    }

    /// Leaves `group` (and its presence, if this subscription holds an entry there).
    pub async fn group_discard(&mut self, group: impl IntoGroupName) -> Result<()> {
        self.check_open()?;
        let group = group.into_group_name()?;
        if let Some(i) = self.presence.iter().position(|(g, _)| g == &group) {
            let (group, entry) = self.presence.swap_remove(i);
            if let Err(e) = leave_presence(&self.layer, &group, &entry).await {
                tracing::warn!(%group, error = %e, "leaving a group's presence failed");
            }
        }
        if self.refresh.running.take().is_some() {
            // The cancelled refresh may not have reached every group: do it again at once,
            // without this one. (What it already sent reaches the layer before the discard
            // below: both go the same way.)
            if let Some(t) = self.refresh.timer.as_mut() {
                t.as_mut().reset(Instant::now());
                self.refresh.polled = false;
            }
        }
        self.groups.retain(|g| g != &group);
        self.resumed.retain(|r| r.group != group);
        let discard = self
            .layer
            .backend()
            .group_discard(&group, self.receiver.channel_name());
        metrics::layer_op!(Op::GroupDiscard, discard)
    }

    /// Sends `message` to every member of `group` (this subscription too, if it is one) as
    /// [`Layer::group_send_from`] this subscription's channel: a back-pressure wait does not
    /// wait for this subscription's own queue, which cannot drain while its owner sends.
    pub async fn group_send(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        self.layer
            .group_send_from(self.receiver.channel_name(), group, message)
            .await
    }

    /// Polls for the next message: what was sent to the channel or to one of its groups.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message>> {
        if self.closed {
            return Poll::Ready(Err(LayerError::Closed));
        }
        self.poll_refresh(cx);
        if let Some(m) = self.replay.pop_front() {
            self.received(&m);
            return Poll::Ready(Ok(m));
        }
        loop {
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Ok(m)) if self.replayed_already(&m) => continue,
                Poll::Ready(Ok(m)) => {
                    self.received(&m);
                    return Poll::Ready(Ok(m));
                }
                other => return other,
            }
        }
    }

    /// Notes the position of a message handed out, for [`recover`](Subscription::recover).
    fn received(&mut self, m: &Message) {
        if self.resumed.is_empty() {
            return;
        }
        if let Some(p) = m.position()
            && let Some(r) = self.resumed.iter_mut().find(|r| *r.epoch == *p.epoch())
        {
            r.delivered = r.delivered.max(p.offset());
        }
    }

    /// Whether the subscription joined a group "since" a position
    /// ([`group_add_since`](Subscription::group_add_since)), so that
    /// [`recover`](Subscription::recover) has something to read.
    pub fn has_history(&self) -> bool {
        !self.resumed.is_empty()
    }

    /// After a gap ([`take_missed`](Subscription::take_missed)): reads every group joined
    /// "since" a position again from the last message received from it, so that what was
    /// missed comes next — in order, once (what the channel still holds of it is dropped as a
    /// copy). Returns whether that covers everything: every group of the subscription keeps
    /// history, and every history could give what followed (a group whose history moved to
    /// another epoch or lost what followed is joined from its position now, and the answer is
    /// `false`). Messages sent to the channel itself or to groups without history are not
    /// recovered.
    pub async fn recover(&mut self) -> Result<bool> {
        self.check_open()?;
        let mut whole = self.resumed.len() == self.groups.len();
        for i in 0..self.resumed.len() {
            let (group, from) = {
                let r = &self.resumed[i];
                (r.group.clone(), Position::new(&r.epoch, r.delivered)?)
            };
            let add = self.layer.backend().group_add_since(
                &group,
                self.receiver.channel_name(),
                Some(&from),
            );
            let recovery = metrics::layer_op!(Op::GroupAdd, add)?;
            let r = &mut self.resumed[i];
            r.epoch = recovery.position.epoch().into();
            r.boundary = recovery
                .messages
                .last()
                .and_then(Message::position)
                .map_or(recovery.position.offset(), Position::offset);
            if !recovery.recovered {
                r.delivered = recovery.position.offset();
                whole = false;
            }
            self.replay.extend(recovery.messages);
        }
        Ok(whole)
    }

    /// [`take_missed`](Subscription::take_missed), and where the subscription has history
    /// ([`has_history`](Subscription::has_history)) [`recover`](Subscription::recover) at once:
    /// [`Missed::recovered`](crate::Missed::recovered) says whether what was missed comes next.
    /// A recover that fails is logged, and the answer is "not recovered".
    pub async fn take_missed_and_recover(&mut self) -> crate::Missed {
        let mut missed = self.take_missed();
        if self.has_history() {
            match Box::pin(self.recover()).await {
                Ok(whole) => missed.recovered = whole,
                Err(e) => {
                    tracing::warn!(channel = %self.channel_name(), error = %e, "could not recover from history")
                }
            }
        }
        missed
    }

    /// Whether `m` is a live copy of a message a resume replayed.
    fn replayed_already(&self, m: &Message) -> bool {
        if self.resumed.is_empty() {
            return false;
        }
        let Some(p) = m.position() else {
            return false;
        };
        self.resumed
            .iter()
            .any(|r| *r.epoch == *p.epoch() && p.offset() <= r.boundary)
    }

    /// Waits for the next message.
    pub async fn recv(&mut self) -> Result<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// What was missed right after the last message received, and forgets it: group messages
    /// this channel could not take (its queue was full, the senders' back-pressure wait ran
    /// out) and messages that expired before they were received
    /// ([`Missed::dropped`](crate::Missed::dropped)), and an interruption a backend knows of (a
    /// pub/sub subscription made again: [`Missed::interrupted`](crate::Missed::interrupted)). Each
    /// is told once the receiver reaches the place where it happened: call it after each
    /// receive.
    pub fn take_missed(&self) -> crate::Missed {
        self.receiver.take_missed()
    }

    /// Whether [`take_missed`](Subscription::take_missed) has something to tell.
    pub fn has_missed(&self) -> bool {
        self.receiver.has_missed()
    }

    /// Group messages the channel's queue could not take because it was full, since it was
    /// made: it grows while a receiver that stopped receiving is losing messages.
    pub fn dropped(&self) -> u64 {
        self.receiver.dropped()
    }

    /// Ready with [`dropped`](Subscription::dropped) once it is past `seen`; else registers
    /// `cx` to be woken at the next drop, taking nothing (for a consumer that has stopped
    /// receiving for now, to know when it starts losing messages).
    pub fn poll_dropped(&self, cx: &mut Context<'_>, seen: u64) -> Poll<u64> {
        self.receiver.poll_dropped(cx, seen)
    }

    /// Leaves the groups and discards the channel (if it is this subscription's own). Errors
    /// are logged: the layer forgets the memberships by itself when they expire. Later
    /// receives fail with [`LayerError::Closed`].
    pub async fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        self.refresh = Refresh {
            every: None,
            timer: None,
            polled: false,
            running: None,
        };
        let groups = std::mem::take(&mut self.groups);
        let presence = std::mem::take(&mut self.presence);
        cleanup(
            &self.layer,
            self.receiver.channel_name(),
            groups,
            presence,
            self.owns_channel,
        )
        .await;
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            Err(LayerError::Closed)
        } else {
            Ok(())
        }
    }

    /// How often the groups (and presence entries) are refreshed.
    fn interval(&self) -> Option<Duration> {
        let every = self.refresh.every?;
        if self.presence.is_empty() {
            return Some(every);
        }
        let heartbeat = (self.layer.config().presence_ttl / 3).max(Duration::from_millis(30));
        Some(every.min(heartbeat))
    }

    /// Arms the refresh timer when there are groups to refresh and it is not armed.
    fn arm(&mut self) {
        if let (Some(every), None, false) =
            (self.interval(), &self.refresh.timer, self.groups.is_empty())
        {
            self.refresh.timer = Some(Box::pin(tokio::time::sleep(every)));
            self.refresh.polled = false;
        }
    }

    fn poll_refresh(&mut self, cx: &mut Context<'_>) {
        let interval = self.interval();
        let r = &mut self.refresh;
        if let Some(f) = r.running.as_mut()
            && f.get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .poll(cx)
                .is_ready()
        {
            r.running = None;
        }
        let (Some(timer), Some(every)) = (r.timer.as_mut(), interval) else {
            return;
        };
        if r.polled && !timer.is_elapsed() {
            return; // the timer holds this task's waker and has not fired
        }
        r.polled = true;
        if timer.as_mut().poll(cx).is_pending() {
            return;
        }
        timer.as_mut().reset(Instant::now() + every);
        let _ = timer.as_mut().poll(cx); // registers the next wake-up
        if r.running.is_some() || self.groups.is_empty() {
            return;
        }
        let (layer, channel, groups, presence) = (
            self.layer.clone(),
            self.receiver.channel_name().clone(),
            self.groups.clone(),
            self.presence.clone(),
        );
        let mut running: Pending = Box::pin(async move {
            for group in groups {
                let add = layer.backend().group_add(&group, &channel);
                if let Err(e) = metrics::layer_op!(Op::GroupAdd, add) {
                    tracing::warn!(%group, %channel, error = %e, "refreshing a group membership failed");
                }
            }
            for (group, entry) in presence {
                if let Err(e) = layer.backend().presence_add(&group, &entry).await {
                    tracing::warn!(%group, %channel, error = %e, "refreshing a presence entry failed");
                }
            }
        });
        if running.as_mut().poll(cx).is_pending() {
            r.running = Some(Exclusive::new(running));
        }
    }
}

/// Takes `entry` out of `group`'s presence and tells the group if it has presence events.
async fn leave_presence(layer: &Layer, group: &GroupName, entry: &PresenceEntry) -> Result<()> {
    let r = layer.backend().presence_remove(group, &entry.channel).await;
    presence_event(layer, group, "presence.leave", entry).await;
    r
}

/// Sends `presence.join` / `presence.leave` for `entry` to `group` if the group has presence
/// events, within the throttle; a suppressed event's window ends with one `presence.sync`.
async fn presence_event(layer: &Layer, group: &GroupName, kind: &str, entry: &PresenceEntry) {
    let config = layer.config();
    if !config.presence_events_for(group.as_str()) {
        return;
    }
    match layer.throttle().check(group, config.presence_event_rate) {
        Verdict::Send => {
            let event = serde_json::json!({
                "type": kind,
                "group": group.as_str(),
                "client_id": entry.client_id,
                "user": entry.user,
                "meta": entry.meta,
                "since_ms": entry.since_ms,
            });
            if let Err(e) = layer.group_send(group, event).await {
                tracing::warn!(%group, error = %e, "a presence event could not be sent");
            }
        }
        Verdict::Suppress { first: None } => {}
        Verdict::Suppress { first: Some(after) } => {
            let (layer, group) = (layer.clone(), group.clone());
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            rt.spawn(async move {
                tokio::time::sleep(after).await;
                let missed = layer.throttle().take_suppressed(&group);
                let sync = serde_json::json!({
                    "type": "presence.sync",
                    "group": group.as_str(),
                    "missed_events": missed,
                });
                if let Err(e) = layer.group_send(&group, sync).await {
                    tracing::warn!(%group, error = %e, "presence.sync could not be sent");
                }
            });
        }
    }
}

async fn cleanup(
    layer: &Layer,
    channel: &ChannelName,
    groups: Vec<GroupName>,
    presence: Vec<(GroupName, PresenceEntry)>,
    owned: bool,
) {
    for (group, entry) in presence {
        if let Err(e) = leave_presence(layer, &group, &entry).await {
            tracing::warn!(%group, %channel, error = %e, "leaving a group's presence failed");
        }
    }
    for group in groups {
        let discard = layer.backend().group_discard(&group, channel);
        if let Err(e) = metrics::layer_op!(Op::GroupDiscard, discard) {
            tracing::warn!(%group, %channel, error = %e, "leaving a group failed");
        }
    }
    if owned && let Err(e) = layer.backend().discard_channel(channel).await {
        tracing::debug!(%channel, error = %e, "discard_channel failed");
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let groups = std::mem::take(&mut self.groups);
        let presence = std::mem::take(&mut self.presence);
        if groups.is_empty() && !self.owns_channel {
            return;
        }
        let (layer, channel, owned) = (
            self.layer.clone(),
            self.receiver.channel_name().clone(),
            self.owns_channel,
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { cleanup(&layer, &channel, groups, presence, owned).await });
            }
            Err(_) => {
                tracing::debug!(%channel, "subscription dropped outside a runtime; its memberships expire by themselves");
            }
        }
    }
}
