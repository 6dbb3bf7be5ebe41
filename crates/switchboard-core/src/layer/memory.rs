//! The in-memory channel layer: channels and groups for one process.
//!
//! This is switchboard's embedded default and, unlike Channels' `InMemoryChannelLayer`, it is
//! meant for production use inside one process:
//!
//! - **No global lock.** Channels and groups live in sharded maps (`dashmap`); each channel's
//!   queue has its own short mutex. Senders to different channels never wait for each other.
//! - **Fan-out shares one allocation.** `group_send` to N members pushes N clones of one
//!   [`Message`] handle (a reference count each), never N deep copies.
//! - **Expiry is lazy and local.** Channels' layer walks every channel and member on every
//!   `receive` and `group_send` (O(N²) per group message at N members). Here a channel's expired
//!   messages are dropped when that channel is touched, memberships are checked when their group
//!   is sent to, and a sweep of channels nobody touches runs at most once per `expiry`, piggy-
//!   backed on `new_channel`.
//!
//! The semantics (capacity, `ChannelFull`, expiry, group expiry) are those described in
//! [`crate::layer`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::layer::{ChannelLayer, ChannelReceiver, LayerConfig, LayerStats};
use crate::message::Message;
use crate::name::{ChannelName, GroupName, validate_channel_name};

/// Sharded maps with a fast, per-process randomly seeded hasher (names can come from users).
type DashMap<K, V> = dashmap::DashMap<K, V, ahash::RandomState>;

/// A coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, a few ms of resolution): expiry is counted
/// in seconds, and reading the precise clock on every delivery cost 8% of a fan-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Instant(coarsetime::Instant);

impl Instant {
    fn now() -> Instant {
        Instant(coarsetime::Instant::now_without_cache_update())
    }

    fn duration_since(self, earlier: Instant) -> Duration {
        if self.0 > earlier.0 {
            (self.0 - earlier.0).into()
        } else {
            Duration::ZERO
        }
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0 + coarsetime::Duration::from(d))
    }
}

/// The in-memory layer. Cheap to clone: clones share the same channels and groups.
#[derive(Clone)]
pub struct InMemoryLayer {
    inner: Arc<Inner>,
}

struct Inner {
    config: LayerConfig,
    channels: DashMap<ChannelName, Arc<Queue>>,
    groups: DashMap<GroupName, HashMap<ChannelName, Membership>>,
    full_drops: AtomicU64,
    expired: AtomicU64,
    closed: AtomicBool,
    last_sweep: Mutex<Instant>,
}

struct Membership {
    joined: Instant,
    queue: Arc<Queue>,
}

struct Queue {
    name: ChannelName,
    capacity: usize,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    messages: VecDeque<Entry>,
    /// The groups this channel is in, so that expiry can take it out of them.
    groups: Vec<GroupName>,
    /// Receivers waiting for a message. A push wakes them all: usually there is one (a
    /// consumer); with several (workers on one channel) the losers simply wait again, and a
    /// receiver that was woken and dropped cannot strand a message.
    waiters: Vec<Waker>,
    /// Group senders waiting for this queue to drain below half its capacity (back-pressure).
    drain_waiters: Vec<Waker>,
}

struct Entry {
    expires: Instant,
    message: Message,
}

enum Push {
    /// Queued; the queue now holds this many messages.
    Queued(usize),
    Full,
    /// A group delivery to a channel whose messages just expired: it left the group first.
    Left,
}

impl Queue {
    fn new(name: ChannelName, capacity: usize) -> Queue {
        Queue {
            name,
            capacity,
            state: Mutex::new(QueueState::default()),
        }
    }

    /// Queues a message that expires at `expires`. Returns whether it was queued, the number of
    /// expired messages dropped on the way, and (if any expired) the groups the channel must
    /// now leave. A group message (`via_group`) is not queued on a channel that leaves its
    /// groups now, as Channels cleans expired members out before it fans out.
    fn push(
        &self,
        message: Message,
        now: Instant,
        expires: Instant,
        via_group: bool,
    ) -> (Push, usize, Vec<GroupName>) {
        let mut st = self.state.lock();
        let (expired, leave) = st.drop_expired(now);
        if via_group && expired > 0 {
            return (Push::Left, expired, leave);
        }
        if st.messages.len() >= self.capacity {
            return (Push::Full, expired, leave);
        }
        st.messages.push_back(Entry { expires, message });
        let len = st.messages.len();
        let waiters = std::mem::take(&mut st.waiters);
        drop(st);
        for w in waiters {
            w.wake();
        }
        (Push::Queued(len), expired, leave)
    }

    /// Takes the next unexpired message, or registers `cx` to be woken by the next push.
    /// Returns the message (if any), and what expired on the way.
    fn poll_pop(&self, cx: &mut Context<'_>) -> (Poll<Message>, usize, Vec<GroupName>) {
        let mut st = self.state.lock();
        let (expired, leave) = if st.messages.is_empty() {
            (0, Vec::new())
        } else {
            st.drop_expired(Instant::now())
        };
        match st.messages.pop_front() {
            Some(e) => {
                if !st.drain_waiters.is_empty() && st.messages.len() < self.high_water() {
                    for w in std::mem::take(&mut st.drain_waiters) {
                        w.wake();
                    }
                }
                (Poll::Ready(e.message), expired, leave)
            }
            None => {
                if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    st.waiters.push(cx.waker().clone());
                }
                (Poll::Pending, expired, leave)
            }
        }
    }

    /// Half the capacity: above it a member is lagging and a group sender waits for it.
    fn high_water(&self) -> usize {
        (self.capacity / 2).max(1)
    }

    /// Ready once the queue is below its high-water mark (or full: then waiting is pointless).
    fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.state.lock();
        let len = st.messages.len();
        if len < self.high_water() || len >= self.capacity {
            return Poll::Ready(());
        }
        if !st.drain_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.drain_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut self.state.lock().waiters);
        for w in waiters {
            w.wake();
        }
    }
}

impl QueueState {
    /// Drops expired messages from the front. If any expired, the channel leaves its groups.
    fn drop_expired(&mut self, now: Instant) -> (usize, Vec<GroupName>) {
        let mut n = 0;
        while self.messages.front().is_some_and(|e| e.expires <= now) {
            self.messages.pop_front();
            n += 1;
        }
        if n > 0 {
            (n, std::mem::take(&mut self.groups))
        } else {
            (0, Vec::new())
        }
    }
}

impl std::fmt::Debug for InMemoryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryLayer")
            .field("config", &self.inner.config)
            .field("channels", &self.inner.channels.len())
            .field("groups", &self.inner.groups.len())
            .finish()
    }
}

impl Default for InMemoryLayer {
    fn default() -> Self {
        InMemoryLayer::new(LayerConfig::default())
    }
}

impl InMemoryLayer {
    /// A new, empty layer.
    pub fn new(config: LayerConfig) -> InMemoryLayer {
        InMemoryLayer {
            inner: Arc::new(Inner {
                config,
                channels: DashMap::default(),
                groups: DashMap::default(),
                full_drops: AtomicU64::new(0),
                expired: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                last_sweep: Mutex::new(Instant::now()),
            }),
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(Error::LayerClosed)
        } else {
            Ok(())
        }
    }

    fn queue(&self, channel: &ChannelName) -> Arc<Queue> {
        if let Some(q) = self.channels.get(channel) {
            return q.clone();
        }
        self.channels
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(Queue::new(
                    channel.clone(),
                    self.config.capacity_for(channel.as_str()),
                ))
            })
            .clone()
    }

    /// One receive attempt on `queue`: a message, an error if the layer closed, or pending.
    fn poll_receive(&self, queue: &Arc<Queue>, cx: &mut Context<'_>) -> Poll<Result<Message>> {
        if self.closed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(Error::LayerClosed));
        }
        let (polled, expired, leave) = queue.poll_pop(cx);
        self.after_expiry(queue, expired, leave);
        polled.map(Ok)
    }

    /// Accounts for expired messages and takes the channel out of the groups it must leave.
    /// Must be called with no group map guard held.
    fn after_expiry(&self, queue: &Arc<Queue>, expired: usize, leave: Vec<GroupName>) {
        if expired == 0 {
            return;
        }
        self.expired.fetch_add(expired as u64, Ordering::Relaxed);
        for group in leave {
            self.remove_member(&group, &queue.name, Some(queue));
        }
    }

    /// Removes `channel` from `group` (only if its membership is for `queue`, when given: a
    /// discarded and re-created channel must not lose its new membership).
    fn remove_member(&self, group: &GroupName, channel: &ChannelName, queue: Option<&Arc<Queue>>) {
        let mut now_empty = false;
        if let Some(mut members) = self.groups.get_mut(group) {
            let matches = members
                .get(channel)
                .is_some_and(|m| queue.is_none_or(|q| Arc::ptr_eq(&m.queue, q)));
            if matches {
                members.remove(channel);
            }
            now_empty = members.is_empty();
        }
        if now_empty {
            self.groups.remove_if(group, |_, m| m.is_empty());
        }
    }

    /// Drops expired messages and memberships nobody touched, and frees channels nobody holds.
    /// Runs at most once per `expiry`; the cost is one pass over channels and groups.
    fn sweep_if_due(&self, now: Instant) {
        {
            let Some(mut last) = self.last_sweep.try_lock() else {
                return; // another task is sweeping
            };
            if now.duration_since(*last) < self.config.expiry {
                return;
            }
            *last = now;
        }
        let mut evicted = Vec::new();
        self.channels.retain(|_, q| {
            let mut st = q.state.lock();
            let (n, leave) = st.drop_expired(now);
            // Keep a queue that holds messages, belongs to a group, or has a receiver (a
            // receiver holds its own reference to the queue).
            let keep = !st.messages.is_empty()
                || !leave.is_empty()
                || !st.groups.is_empty()
                || Arc::strong_count(q) > 1;
            if n > 0 {
                evicted.push((q.clone(), n, leave));
            }
            keep
        });
        for (q, n, leave) in evicted {
            self.after_expiry(&q, n, leave);
        }
        let group_expiry = self.config.group_expiry;
        let mut stale = Vec::new();
        self.groups.retain(|group, members| {
            members.retain(|_, m| {
                let live = now.duration_since(m.joined) < group_expiry;
                if !live {
                    stale.push((group.clone(), m.queue.clone()));
                }
                live
            });
            !members.is_empty()
        });
        for (group, q) in stale {
            q.state.lock().groups.retain(|g| g != &group);
        }
    }
}

#[async_trait]
impl ChannelLayer for InMemoryLayer {
    fn config(&self) -> &LayerConfig {
        &self.inner.config
    }

    async fn new_channel(&self, prefix: &str) -> Result<ChannelName> {
        self.inner.check_open()?;
        if prefix.contains('!') {
            validate_channel_name("!")?; // produces the channel-name error for a misplaced '!'
        }
        let name = ChannelName::new(format!(
            "{prefix}inmemory!{}",
            uuid::Uuid::new_v4().simple()
        ))?;
        self.inner.sweep_if_due(Instant::now());
        Ok(name)
    }

    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()> {
        self.inner.check_open()?;
        let queue = self.inner.queue(channel);
        let now = Instant::now();
        let (pushed, expired, leave) =
            queue.push(message, now, now + self.inner.config.expiry, false);
        self.inner.after_expiry(&queue, expired, leave);
        match pushed {
            Push::Queued(_) | Push::Left => Ok(()),
            Push::Full => Err(Error::ChannelFull {
                channel: channel.to_string(),
                capacity: queue.capacity,
            }),
        }
    }

    async fn receive(&self, channel: &ChannelName) -> Result<Message> {
        self.inner.check_open()?;
        let queue = self.inner.queue(channel);
        std::future::poll_fn(|cx| self.inner.poll_receive(&queue, cx)).await
    }

    fn receiver(&self, channel: &ChannelName) -> Option<Box<dyn ChannelReceiver>> {
        Some(Box::new(Receiver {
            inner: self.inner.clone(),
            queue: self.inner.queue(channel),
        }))
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        self.inner.check_open()?;
        let queue = self.inner.queue(channel);
        let mut members = self.inner.groups.entry(group.clone()).or_default();
        let previous = members.insert(
            channel.clone(),
            Membership {
                joined: Instant::now(),
                queue: queue.clone(),
            },
        );
        // Lock order: group shard, then queue state (as in group_send).
        let mut st = queue.state.lock();
        if !st.groups.contains(group) {
            st.groups.push(group.clone());
        }
        drop(st);
        drop(members);
        if let Some(old) = previous.filter(|m| !Arc::ptr_eq(&m.queue, &queue)) {
            old.queue.state.lock().groups.retain(|g| g != group);
        }
        Ok(())
    }

    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        self.inner.check_open()?;
        let removed = {
            let mut removed = None;
            let mut now_empty = false;
            if let Some(mut members) = self.inner.groups.get_mut(group) {
                removed = members.remove(channel);
                now_empty = members.is_empty();
            }
            if now_empty {
                self.inner.groups.remove_if(group, |_, m| m.is_empty());
            }
            removed
        };
        if let Some(m) = removed {
            m.queue.state.lock().groups.retain(|g| g != group);
        }
        Ok(())
    }

    async fn group_send(&self, group: &GroupName, message: Message) -> Result<()> {
        self.inner.check_open()?;
        let now = Instant::now();
        // Every member's copy expires at the same time: computed once, not per member.
        let expires = now + self.inner.config.expiry;
        let group_expiry = self.inner.config.group_expiry;
        let mut full = 0u64;
        let mut evictions = Vec::new();
        let mut stale = Vec::new();
        let wait = !self.inner.config.group_backpressure.is_zero();
        let mut lagging = Vec::new();
        if let Some(members) = self.inner.groups.get(group) {
            for (name, m) in members.iter() {
                if now.duration_since(m.joined) >= group_expiry {
                    stale.push((name.clone(), m.queue.clone()));
                    continue;
                }
                let (pushed, expired, leave) = m.queue.push(message.clone(), now, expires, true);
                match pushed {
                    Push::Full => full += 1,
                    Push::Queued(len)
                        if wait && len >= m.queue.high_water() && len < m.queue.capacity =>
                    {
                        lagging.push(m.queue.clone());
                    }
                    _ => {}
                }
                if expired > 0 {
                    evictions.push((m.queue.clone(), expired, leave));
                }
            }
        }
        // The group guard is released: now expiry may take channels out of groups.
        if full > 0 {
            self.inner.full_drops.fetch_add(full, Ordering::Relaxed);
            tracing::debug!(group = %group, skipped = full, "group_send skipped full channels");
        }
        for (q, n, leave) in evictions {
            self.inner.after_expiry(&q, n, leave);
        }
        for (name, q) in stale {
            self.inner.remove_member(group, &name, Some(&q));
            q.state.lock().groups.retain(|g| g != group);
        }
        if !lagging.is_empty() {
            // Back-pressure: give lagging members a moment to drain before the sender goes on.
            let drained = async {
                for q in &lagging {
                    std::future::poll_fn(|cx| q.poll_drained(cx)).await;
                }
            };
            let _ = tokio::time::timeout(self.inner.config.group_backpressure, drained).await;
        }
        Ok(())
    }

    async fn group_channels(&self, group: &GroupName) -> Result<Vec<ChannelName>> {
        self.inner.check_open()?;
        let now = Instant::now();
        let group_expiry = self.inner.config.group_expiry;
        Ok(self
            .inner
            .groups
            .get(group)
            .map(|members| {
                members
                    .iter()
                    .filter(|(_, m)| now.duration_since(m.joined) < group_expiry)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn discard_channel(&self, channel: &ChannelName) -> Result<()> {
        let Some((_, queue)) = self.inner.channels.remove(channel) else {
            return Ok(());
        };
        let groups = {
            let mut st = queue.state.lock();
            st.messages.clear();
            std::mem::take(&mut st.groups)
        };
        for group in groups {
            self.inner.remove_member(&group, channel, Some(&queue));
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.inner.groups.clear();
        self.inner.channels.retain(|_, q| {
            let mut st = q.state.lock();
            st.messages.clear();
            st.groups.clear();
            // A receiver waiting on this queue keeps it (and keeps receiving on it).
            Arc::strong_count(q) > 1
        });
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.flush().await?;
        for q in self.inner.channels.iter() {
            q.wake_all();
        }
        Ok(())
    }

    fn stats(&self) -> LayerStats {
        LayerStats {
            group_full_drops: self.inner.full_drops.load(Ordering::Relaxed),
            expired_messages: self.inner.expired.load(Ordering::Relaxed),
            channels: self.inner.channels.len() as u64,
            groups: self.inner.groups.len() as u64,
        }
    }
}

/// A consumer's long-lived receiver: holds its queue, so no lookup per message.
struct Receiver {
    inner: Arc<Inner>,
    queue: Arc<Queue>,
}

impl ChannelReceiver for Receiver {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message>> {
        self.inner.poll_receive(&self.queue, cx)
    }
}
