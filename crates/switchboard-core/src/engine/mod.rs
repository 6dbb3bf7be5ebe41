//! The local delivery engine: where every layer delivers.
//!
//! Whatever carries a message between processes — nothing (the in-memory layer), Redis queues,
//! Redis pub/sub — it ends in a queue in the receiving process. This module is those queues,
//! written once for every layer, as socketioxide's `CoreLocalAdapter` is for its adapters:
//!
//! - **channels**: one bounded queue per channel ([`LayerConfig::capacity`], per pattern
//!   [`LayerConfig::channel_capacity`]); a message not received within
//!   [`LayerConfig::expiry`] is dropped and its channel leaves its groups;
//! - **receivers** polled without a future per message, waking only the task that waits;
//!   [`Demand`] tells a backend how many receivers wait, so it fetches only for them;
//! - **groups**: an index of this process's members of each group, each membership timed
//!   ([`LayerConfig::group_expiry`]), with a back-index from each channel to its groups so that
//!   expiry and discard take it out of every group at once;
//! - **fan-out** that pushes one shared [`Message`] handle to every member, skips (and counts)
//!   full members, and reports the lagging ones for **back-pressure**
//!   ([`LayerConfig::group_backpressure`]);
//! - one coarse clock, one hasher, one set of counters ([`LayerStats`]).
//!
//! A layer adds only its transport: [`InMemoryLayer`](crate::InMemoryLayer) is this engine and
//! nothing else; the Redis layers add channels_redis's keys, scripts and receive loops, and
//! hear about memberships the engine ended (expired messages, expired memberships) through
//! [`Engine::with_leaves`], to end them in Redis too.
//!
//! The semantics are those of [`crate::layer`]; the conformance suite checks them on every
//! layer.

pub(crate) mod clock;
mod queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::{LayerError, Result};
use crate::history::{HistoryConfig, Position, Recovery, Ring};
use crate::layer::{LayerConfig, LayerStats};
use crate::message::Message;
use crate::name::{ChannelName, GroupName};

use clock::Instant;
use queue::Mode;
pub use queue::{Demand, Missed, Pushed, Queue, Receiver};

/// The hasher of every map the layers look names up in: fast, and seeded at random per
/// process (names can come from users).
pub type Hasher = foldhash::fast::RandomState;

type DashMap<K, V> = dashmap::DashMap<K, V, Hasher>;

/// A channel name's share of a group's digest ([`Engine::group_digest`]): its XXH3 64-bit hash
/// (seed 0), the same in every process and every version. A set's digest is the XOR of its
/// members' shares, so it does not depend on their order.
pub fn member_digest(channel: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(channel.as_bytes())
}

/// The local delivery engine of one layer instance. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Engine(Arc<Shared>);

struct Shared {
    config: LayerConfig,
    channels: DashMap<ChannelName, Arc<Queue>>,
    groups: DashMap<GroupName, Members>,
    counters: Counters,
    closed: AtomicBool,
    last_sweep: Mutex<Instant>,
    leaves: Option<mpsc::UnboundedSender<Leave>>,
    /// The history of each group that keeps one ([`LayerConfig::group_history`]).
    histories: DashMap<GroupName, Arc<Mutex<Ring>>>,
}

#[derive(Default)]
struct Counters {
    group_full_drops: AtomicU64,
    remote_full_drops: AtomicU64,
    expired: AtomicU64,
    undecodable: AtomicU64,
    group_deliveries: AtomicU64,
}

/// This process's members of one group.
#[derive(Default)]
struct Members {
    map: HashMap<ChannelName, Member, Hasher>,
    /// The XOR of [`member_digest`] over the names in `map`, kept as members come and go.
    digest: u64,
    /// Set by a fan-out that left members lagging, cleared by the next look that finds none:
    /// lets a sender whose fan-out runs elsewhere (pub/sub) skip the look when nobody lags.
    lagging: AtomicBool,
}

struct Member {
    joined: Instant,
    queue: Arc<Queue>,
}

/// Memberships the engine ended by itself — the channel's messages expired, or the
/// membership did — reported to a backend that keeps memberships of its own (Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leave {
    /// The channel.
    pub channel: ChannelName,
    /// The groups it left.
    pub groups: Vec<GroupName>,
}

/// One of this process's memberships, as [`Engine::memberships`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The group.
    pub group: GroupName,
    /// The member.
    pub channel: ChannelName,
    /// How long ago it joined (or last refreshed its membership).
    pub age: Duration,
}

/// When a message arrived and when it expires, computed once for all the queues it goes to.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    now: Instant,
    expires: Instant,
}

/// Members a fan-out left more than half full: a sender waits for them
/// ([`Engine::backpressure`]).
#[derive(Debug, Default)]
pub struct Lagging(Vec<Arc<Queue>>);

impl Lagging {
    /// Whether no member lags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Leaves out `sender`'s own queue, if given: a consumer that sends to a group it belongs
    /// to cannot drain its queue while it waits, so waiting for it would only cost the whole
    /// [`LayerConfig::group_backpressure`].
    pub fn without(mut self, sender: Option<&ChannelName>) -> Lagging {
        if let Some(sender) = sender {
            self.0.retain(|q| q.name != *sender);
        }
        self
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("channels", &self.0.channels.len())
            .field("groups", &self.0.groups.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with `config`'s capacities and expiries.
    pub fn new(config: LayerConfig) -> Engine {
        Engine::build(config, None)
    }

    /// An engine that reports the memberships it ends by itself (see [`Leave`]).
    pub fn with_leaves(config: LayerConfig) -> (Engine, mpsc::UnboundedReceiver<Leave>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Engine::build(config, Some(tx)), rx)
    }

    fn build(config: LayerConfig, leaves: Option<mpsc::UnboundedSender<Leave>>) -> Engine {
        Engine(Arc::new(Shared {
            config,
            channels: DashMap::default(),
            groups: DashMap::default(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            last_sweep: Mutex::new(Instant::now()),
            leaves,
            histories: DashMap::default(),
        }))
    }

    /// The settings.
    pub fn config(&self) -> &LayerConfig {
        &self.0.config
    }

    /// `Err(Closed)` once [`close`](Engine::close) was called.
    pub fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(LayerError::Closed)
        } else {
            Ok(())
        }
    }

    /// Whether [`close`](Engine::close) was called.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Relaxed)
    }

    // -- channels ---------------------------------------------------------------------------

    /// The queue of `channel`, made if it does not exist.
    pub fn queue(&self, channel: &ChannelName) -> Arc<Queue> {
        self.queue_with(channel, None)
    }

    /// The queue of `channel`, made fed by `demand` if it does not exist.
    pub fn queue_fed_by(&self, channel: &ChannelName, demand: &Arc<Demand>) -> Arc<Queue> {
        self.queue_with(channel, Some(demand))
    }

    fn queue_with(&self, channel: &ChannelName, demand: Option<&Arc<Demand>>) -> Arc<Queue> {
        if let Some(q) = self.0.channels.get(channel) {
            return q.clone();
        }
        self.0
            .channels
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(Queue::new(
                    channel.clone(),
                    self.0.config.capacity_for(channel.as_str()),
                    demand.cloned(),
                ))
            })
            .clone()
    }

    /// The queue of `channel`, if it exists.
    pub fn get(&self, channel: &str) -> Option<Arc<Queue>> {
        self.0.channels.get(channel).map(|q| q.clone())
    }

    /// A receiver on `queue`.
    pub fn receiver(&self, queue: Arc<Queue>) -> Receiver {
        Receiver::new(self.clone(), queue)
    }

    /// Waits for the next message on `queue`: what a [`Receiver`] does, for one message,
    /// without making one. Cancel-safe.
    pub async fn receive(&self, queue: &Arc<Queue>) -> Result<Message> {
        let mut w = queue::Waiting {
            queue,
            waiting: false,
        };
        std::future::poll_fn(|cx| queue::poll_queue(self, queue, &mut w.waiting, cx)).await
    }

    /// Forgets `channel`: drops its queue and messages and takes it out of every group here.
    /// Returns the groups it left. Later sends make a new, empty queue.
    pub fn discard(&self, channel: &ChannelName) -> Vec<GroupName> {
        let Some((_, queue)) = self.0.channels.remove(channel) else {
            return Vec::new();
        };
        let groups = {
            let mut st = queue.state.lock();
            st.messages.clear();
            std::mem::take(&mut st.groups)
        };
        for group in &groups {
            self.remove_member(group, channel, Some(&queue));
        }
        groups
    }

    /// Channels held.
    pub fn channel_count(&self) -> usize {
        self.0.channels.len()
    }

    // -- delivery ---------------------------------------------------------------------------

    /// The arrival of a message sent `age` ago (zero: now).
    #[inline]
    pub fn arrival(&self, age: Duration) -> Arrival {
        let now = Instant::now();
        Arrival {
            now,
            expires: now + self.0.config.expiry.saturating_sub(age),
        }
    }

    /// `send`: queues `message` on `queue`, or fails with [`LayerError::ChannelFull`].
    pub fn send(&self, queue: &Arc<Queue>, message: Message) -> Result<()> {
        let at = self.arrival(Duration::ZERO);
        match self.push(queue, message, &at, Mode::Direct) {
            Pushed::Full => Err(LayerError::ChannelFull {
                channel: queue.name.clone(),
                capacity: queue.capacity,
            }),
            _ => Ok(()),
        }
    }

    /// `send` to `channel`, whose queue is made if it does not exist. (The queue is used where
    /// it is found, not cloned: a send then costs no reference count on the queue the receiver
    /// is locking.)
    pub fn send_to(&self, channel: &ChannelName, message: Message) -> Result<()> {
        if let Some(q) = self.0.channels.get(channel) {
            return self.send(&q, message);
        }
        self.send(&self.queue(channel), message)
    }

    /// A message another process sent to `queue`'s channel. A full queue drops it; the drop
    /// is counted ([`LayerStats::remote_full_drops`]).
    pub fn deliver(&self, queue: &Arc<Queue>, message: Message, at: &Arrival) -> Pushed {
        let pushed = self.push(queue, message, at, Mode::Direct);
        if pushed == Pushed::Full {
            self.0
                .counters
                .remote_full_drops
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(channel = %queue.name, "local queue full; a message from another process was dropped");
        }
        pushed
    }

    /// A message fetched from a shared queue (a named channel other processes read too) for
    /// the receivers waiting on `demand`: queued only while more receivers wait than `queue`
    /// holds messages, else [`Pushed::Unwanted`] (give it back). Checked and queued under the
    /// queue's lock, so fetchers on several hosts never queue more than the receivers waiting.
    pub fn deliver_wanted(
        &self,
        queue: &Arc<Queue>,
        message: Message,
        at: &Arrival,
        demand: &Demand,
    ) -> Pushed {
        let pushed = self.push(queue, message, at, Mode::Wanted(demand));
        if pushed == Pushed::Full {
            self.0
                .counters
                .remote_full_drops
                .fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    /// A group message for one member, `queue`, found by the backend (the Redis layer reads
    /// its members from Redis). A full member is skipped and counted; a lagging one is added to
    /// `lagging`.
    pub fn deliver_to_member(
        &self,
        queue: &Arc<Queue>,
        message: Message,
        at: &Arrival,
        lagging: &mut Lagging,
    ) -> Pushed {
        let pushed = self.push(queue, message, at, Mode::Group);
        match pushed {
            Pushed::Full => {
                self.0
                    .counters
                    .group_full_drops
                    .fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Queued(len) => {
                self.0
                    .counters
                    .group_deliveries
                    .fetch_add(1, Ordering::Relaxed);
                if self.waits() && queue.lags_at(len) {
                    lagging.0.push(queue.clone());
                }
            }
            _ => {}
        }
        pushed
    }

    fn push(&self, queue: &Arc<Queue>, message: Message, at: &Arrival, mode: Mode<'_>) -> Pushed {
        let (pushed, expired, leave) = queue.push(message, at.now, at.expires, mode);
        if expired > 0 {
            self.after_expiry(queue, expired, leave);
        }
        pushed
    }

    /// Whether group sends wait for lagging members at all.
    fn waits(&self) -> bool {
        !self.0.config.group_backpressure.is_zero()
    }

    /// Accounts for `expired` messages of `queue` and takes its channel out of `leave`, the
    /// groups it was in. Must be called with no group map guard held.
    pub(crate) fn after_expiry(&self, queue: &Arc<Queue>, expired: usize, leave: Vec<GroupName>) {
        if expired == 0 {
            return;
        }
        self.0
            .counters
            .expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        tracing::debug!(channel = %queue.name, expired, groups = leave.len(), "messages expired; the channel leaves its groups");
        for group in &leave {
            self.remove_member(group, &queue.name, Some(queue));
        }
        self.report(&queue.name, leave);
    }

    fn report(&self, channel: &ChannelName, groups: Vec<GroupName>) {
        if let Some(tx) = &self.0.leaves
            && !groups.is_empty()
        {
            let _ = tx.send(Leave {
                channel: channel.clone(),
                groups,
            });
        }
    }

    /// Counts group deliveries a backend skipped because the members' queues were full (the
    /// Redis layer's script skips full process queues).
    pub fn count_group_full_drops(&self, n: u64) {
        self.0
            .counters
            .group_full_drops
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Counts messages a backend found expired before they reached a queue.
    pub fn count_expired(&self, n: u64) {
        self.0.counters.expired.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a stored message that did not decode (the backend logs and skips it).
    pub fn count_undecodable(&self) {
        self.0.counters.undecodable.fetch_add(1, Ordering::Relaxed);
    }

    // -- groups -----------------------------------------------------------------------------

    /// Adds `queue`'s channel to `group` here, or refreshes its membership.
    pub fn group_add(&self, group: &GroupName, queue: &Arc<Queue>) {
        let mut members = self.0.groups.entry(group.clone()).or_default();
        let previous = members.map.insert(
            queue.name.clone(),
            Member {
                joined: Instant::now(),
                queue: queue.clone(),
            },
        );
        if previous.is_none() {
            members.digest ^= member_digest(queue.name.as_str());
        }
        // Lock order: group shard, then queue state (as in a fan-out).
        {
            let mut st = queue.state.lock();
            if !st.groups.contains(group) {
                st.groups.push(group.clone());
            }
        }
        drop(members);
        // A channel discarded and made again has a new queue: the old one is not a member.
        if let Some(old) = previous.filter(|m| !Arc::ptr_eq(&m.queue, queue)) {
            old.queue.state.lock().groups.retain(|g| g != group);
        }
    }

    /// Takes `channel` out of `group` here; returns whether it was a member.
    pub fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> bool {
        match self.remove_member(group, channel, None) {
            Some(queue) => {
                queue.state.lock().groups.retain(|g| g != group);
                true
            }
            None => false,
        }
    }

    /// Removes `channel` from the index of `group` (only if its membership is for `queue`,
    /// when given: a discarded and re-made channel must keep its new membership). Returns the
    /// removed member's queue.
    fn remove_member(
        &self,
        group: &GroupName,
        channel: &ChannelName,
        queue: Option<&Arc<Queue>>,
    ) -> Option<Arc<Queue>> {
        let mut removed = None;
        let mut now_empty = false;
        if let Some(mut members) = self.0.groups.get_mut(group) {
            let matches = members
                .map
                .get(channel)
                .is_some_and(|m| queue.is_none_or(|q| Arc::ptr_eq(&m.queue, q)));
            if matches {
                removed = members.map.remove(channel).map(|m| m.queue);
                if removed.is_some() {
                    members.digest ^= member_digest(channel.as_str());
                }
            }
            now_empty = members.map.is_empty();
        }
        if now_empty {
            self.0.groups.remove_if(group, |_, m| m.map.is_empty());
        }
        removed
    }

    /// Delivers `message` to every member of `group` here: memberships older than
    /// `group_expiry` end instead, full members are skipped and counted
    /// ([`LayerStats::group_full_drops`]). Returns the members left lagging, for
    /// [`backpressure`](Engine::backpressure).
    pub fn group_send(&self, group: &str, message: &Message) -> Lagging {
        self.group_deliver(group, message, &self.arrival(Duration::ZERO))
    }

    /// [`group_send`](Engine::group_send) of a message that arrived `at` (from another
    /// process: its expiry counts from when it was sent).
    pub fn group_deliver(&self, group: &str, message: &Message, at: &Arrival) -> Lagging {
        let group_expiry = self.0.config.group_expiry;
        let waits = self.waits();
        let mut full = 0u64;
        let mut queued = 0u64;
        let mut expired_queues = Vec::new();
        let mut stale = Vec::new();
        let mut lagging = Lagging::default();
        if let Some(members) = self.0.groups.get(group) {
            for m in members.map.values() {
                if at.now.duration_since(m.joined) >= group_expiry {
                    stale.push((members.key().clone(), m.queue.clone()));
                    continue;
                }
                let (pushed, expired, leave) =
                    m.queue
                        .push(message.clone(), at.now, at.expires, Mode::Group);
                match pushed {
                    Pushed::Full => full += 1,
                    Pushed::Queued(len) => {
                        queued += 1;
                        if waits && m.queue.lags_at(len) {
                            lagging.0.push(m.queue.clone());
                        }
                    }
                    _ => {}
                }
                if expired > 0 {
                    expired_queues.push((m.queue.clone(), expired, leave));
                }
            }
            if !lagging.is_empty() {
                members.lagging.store(true, Ordering::Relaxed);
            }
        }
        // The group guard is released: now expiry may take channels out of groups.
        if queued > 0 {
            self.0
                .counters
                .group_deliveries
                .fetch_add(queued, Ordering::Relaxed);
        }
        if full > 0 {
            self.0
                .counters
                .group_full_drops
                .fetch_add(full, Ordering::Relaxed);
            tracing::debug!(group, skipped = full, "group_send skipped full channels");
        }
        for (q, n, leave) in expired_queues {
            self.after_expiry(&q, n, leave);
        }
        for (group, q) in stale {
            self.end_membership(&group, &q);
        }
        lagging
    }

    // -- history ----------------------------------------------------------------------------

    /// The history of `group`, made (with a fresh epoch) if it has none.
    fn ring(&self, group: &GroupName, config: HistoryConfig) -> Arc<Mutex<Ring>> {
        if let Some(r) = self.0.histories.get(group) {
            return r.clone();
        }
        self.0
            .histories
            .entry(group.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Ring::new(config))))
            .clone()
    }

    /// The history of `group` if its name matches a [`LayerConfig::group_history`] pattern
    /// (made if it has none yet); a group that has one already is not matched again.
    fn ring_if_kept(&self, group: &GroupName) -> Option<Arc<Mutex<Ring>>> {
        if !self.0.config.has_history() {
            return None;
        }
        if let Some(r) = self.0.histories.get(group) {
            return Some(r.clone());
        }
        let config = self.0.config.history_for(group.as_str())?;
        Some(self.ring(group, config))
    }

    /// [`group_send`](Engine::group_send), for a group that keeps history
    /// ([`LayerConfig::group_history`]) after giving `message` the group's next [`Position`]
    /// and keeping it. Sends to one such group are numbered and delivered one at a time, so
    /// every member gets them in offset order. Returns the members left lagging, and the
    /// position the message got (`None`: the group keeps no history).
    pub fn group_send_message(
        &self,
        group: &GroupName,
        message: Message,
    ) -> (Lagging, Option<Position>) {
        let ring = match self.ring_if_kept(group) {
            Some(ring) if crate::history::kept_in_history(&message) => ring,
            _ => return (self.group_send(group.as_str(), &message), None),
        };
        let mut ring = ring.lock();
        let stamped = ring.push(message, Instant::now());
        let position = stamped.position().cloned();
        (self.group_send(group.as_str(), &stamped), position)
    }

    /// What `group`'s history holds after `since` (everything it holds for `None`), without
    /// joining; see [`ChannelLayer::history`](crate::ChannelLayer::history).
    pub fn history(
        &self,
        group: &GroupName,
        since: Option<&Position>,
        config: HistoryConfig,
    ) -> Recovery {
        let ring = self.ring(group, config);
        let mut ring = ring.lock();
        match since {
            Some(since) => ring.since(Some(since), Instant::now()),
            None => ring.all(Instant::now()),
        }
    }

    /// Forgets `group`'s history: its next message starts a new epoch at offset 1.
    pub fn history_clear(&self, group: &GroupName) {
        self.0.histories.remove(group);
    }

    /// Adds `queue`'s channel to `group` and reads the group's history after `since`, at one
    /// moment: a message is either in the returned [`Recovery`] or delivered to the queue
    /// after this returns, never neither (and never both, here).
    pub fn group_add_since(
        &self,
        group: &GroupName,
        queue: &Arc<Queue>,
        since: Option<&Position>,
        config: HistoryConfig,
    ) -> Recovery {
        let ring = self.ring(group, config);
        let mut ring = ring.lock();
        self.group_add(group, queue);
        ring.since(since, Instant::now())
    }

    /// Forgets the histories whose messages have all expired and whose group has no member
    /// here (a new one starts a new epoch).
    fn sweep_histories(&self) {
        let now = Instant::now();
        let groups = &self.0.groups;
        self.0
            .histories
            .retain(|g, r| groups.contains_key(g) || !r.lock().is_idle(now));
    }

    /// Marks a gap ([`Queue::mark_gap`]) on every member here of `groups` and on the queues
    /// of `channels`, once per queue: the backend lost messages meant for them (a pub/sub
    /// subscription made again after its connection was lost). Returns how many it marked.
    pub fn mark_gaps<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a str>,
        channels: impl IntoIterator<Item = &'a str>,
    ) -> usize {
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        for g in groups {
            if let Some(members) = self.0.groups.get(g) {
                queues.extend(members.map.values().map(|m| m.queue.clone()));
            }
        }
        queues.extend(channels.into_iter().filter_map(|c| self.get(c)));
        queues.sort_by_key(|q| Arc::as_ptr(q) as usize);
        queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for q in &queues {
            q.mark_gap();
        }
        queues.len()
    }

    /// Marks a gap on every queue here (the backend lost what it held for this process).
    /// Returns how many it marked.
    pub fn mark_gap_everywhere(&self) -> usize {
        let queues: Vec<Arc<Queue>> = self.0.channels.iter().map(|q| q.value().clone()).collect();
        for q in &queues {
            q.mark_gap();
        }
        queues.len()
    }

    /// Ends an expired membership: index, back-index, report.
    fn end_membership(&self, group: &GroupName, queue: &Arc<Queue>) {
        if self
            .remove_member(group, &queue.name, Some(queue))
            .is_some()
        {
            queue.state.lock().groups.retain(|g| g != group);
            self.report(&queue.name, vec![group.clone()]);
        }
    }

    /// The members of `group` here whose membership has not expired.
    pub fn group_members(&self, group: &str) -> Vec<ChannelName> {
        let now = Instant::now();
        let group_expiry = self.0.config.group_expiry;
        self.0
            .groups
            .get(group)
            .map(|members| {
                members
                    .map
                    .iter()
                    .filter(|(_, m)| now.duration_since(m.joined) < group_expiry)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many members `group` has here, and the XOR of their names' [`member_digest`]s
    /// (`(0, 0)` for a group without members). Two processes that agree on both hold the
    /// same member set, but for a 64-bit hash collision: a backend uses it to tell whether a
    /// group message can be served from this index, as the sender saw the group.
    pub fn group_digest(&self, group: &str) -> (usize, u64) {
        self.0
            .groups
            .get(group)
            .map_or((0, 0), |m| (m.map.len(), m.digest))
    }

    /// Whether `group` has any member here.
    pub fn has_members(&self, group: &str) -> bool {
        self.0.groups.contains_key(group)
    }

    /// Groups with members here.
    pub fn group_count(&self) -> usize {
        self.0.groups.len()
    }

    /// The groups with members here.
    pub fn group_names(&self) -> Vec<GroupName> {
        self.0.groups.iter().map(|g| g.key().clone()).collect()
    }

    /// Every membership here, with its age (a backend writes them again after its store lost
    /// them).
    pub fn memberships(&self) -> Vec<Membership> {
        let now = Instant::now();
        let mut out = Vec::new();
        for entry in self.0.groups.iter() {
            for (channel, m) in &entry.map {
                out.push(Membership {
                    group: entry.key().clone(),
                    channel: channel.clone(),
                    age: now.duration_since(m.joined),
                });
            }
        }
        out
    }

    /// The members of `group` here that lag, if the last fan-out to the group left any (for a
    /// sender whose fan-out ran elsewhere, as the pub/sub layer's subscription does).
    pub fn lagging_members(&self, group: &str) -> Lagging {
        let mut lagging = Lagging::default();
        if !self.waits() {
            return lagging;
        }
        if let Some(members) = self.0.groups.get(group)
            && members.lagging.load(Ordering::Relaxed)
        {
            lagging.0.extend(
                members
                    .map
                    .values()
                    .filter(|m| m.queue.lags_at(m.queue.len()))
                    .map(|m| m.queue.clone()),
            );
            if lagging.is_empty() {
                members.lagging.store(false, Ordering::Relaxed);
            }
        }
        lagging
    }

    /// Back-pressure: waits, at most [`LayerConfig::group_backpressure`], for the `lagging`
    /// members to drain below half their capacity, so a fast sender slows down to its room's
    /// pace instead of overflowing it.
    pub async fn backpressure(&self, lagging: Lagging) {
        if lagging.is_empty() {
            return;
        }
        let drained = async {
            for q in &lagging.0 {
                std::future::poll_fn(|cx| q.poll_drained(cx)).await;
            }
        };
        if tokio::time::timeout(self.0.config.group_backpressure, drained)
            .await
            .is_err()
        {
            // Waited the whole time for these: the ones still lagging are stalled. Senders stop
            // waiting for them (until they drain below half); once full they miss messages,
            // and their receivers are told ([`Queue::take_missed`]).
            for q in &lagging.0 {
                if q.lags_at(q.len()) {
                    q.set_overrun();
                    tracing::debug!(channel = %q.name, "group member did not drain within the back-pressure wait");
                }
            }
        }
    }

    // -- upkeep -----------------------------------------------------------------------------

    /// [`sweep`](Engine::sweep)s if the last sweep was `expiry` ago or more (for a layer
    /// without a background task: the in-memory layer calls it when it makes a channel).
    pub fn sweep_if_due(&self) {
        let now = Instant::now();
        {
            let Some(mut last) = self.0.last_sweep.try_lock() else {
                return; // another task is sweeping
            };
            if now.duration_since(*last) < self.0.config.expiry {
                return;
            }
            *last = now;
        }
        self.sweep();
    }

    /// Drops expired messages and memberships nobody touched, and frees the queues of channels
    /// that hold nothing, are in no group and have no receiver. One pass over channels and
    /// groups.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut evicted = Vec::new();
        self.0.channels.retain(|_, q| {
            let mut st = q.state.lock();
            let (n, leave) = st.drop_expired(now, &q.missed);
            // A receiver holds its own reference to the queue.
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
        let group_expiry = self.0.config.group_expiry;
        let mut stale = Vec::new();
        for entry in self.0.groups.iter() {
            for m in entry.map.values() {
                if now.duration_since(m.joined) >= group_expiry {
                    stale.push((entry.key().clone(), m.queue.clone()));
                }
            }
        }
        for (group, q) in stale {
            self.end_membership(&group, &q);
        }
        self.sweep_histories();
    }

    /// `flush`: every message, membership and history is dropped (a group's next history has
    /// a new epoch); receivers keep their channels.
    pub fn flush(&self) {
        self.0.groups.clear();
        self.0.histories.clear();
        self.0.channels.retain(|_, q| {
            let mut st = q.state.lock();
            st.messages.clear();
            st.groups.clear();
            Arc::strong_count(q) > 1
        });
    }

    /// Closes: everything is flushed, and receivers (now and later) fail with
    /// [`LayerError::Closed`].
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::Relaxed);
        self.flush();
        for q in self.0.channels.iter() {
            q.wake_receivers();
        }
    }

    /// The counters, with what the engine holds.
    pub fn stats(&self) -> LayerStats {
        let c = &self.0.counters;
        LayerStats {
            group_full_drops: c.group_full_drops.load(Ordering::Relaxed),
            remote_full_drops: c.remote_full_drops.load(Ordering::Relaxed),
            expired_messages: c.expired.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            group_deliveries: c.group_deliveries.load(Ordering::Relaxed),
            channels: self.0.channels.len() as u64,
            groups: self.0.groups.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn group(s: &str) -> GroupName {
        GroupName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn msg() -> Message {
        Message::builder("m")
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_named_channel_queues_one_message_per_waiting_receiver() {
        let engine = Engine::new(LayerConfig::default());
        let demand = Arc::new(Demand::per_receiver());
        let q = engine.queue_fed_by(&name("worker.jobs"), &demand);
        let at = engine.arrival(Duration::ZERO);
        let push = || engine.deliver_wanted(&q, msg(), &at, &demand);
        assert_eq!(push(), Pushed::Unwanted, "nobody waits");
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut a, mut b) = (engine.receiver(q.clone()), engine.receiver(q.clone()));
        assert!(a.poll_recv(&mut cx).is_pending());
        assert!(b.poll_recv(&mut cx).is_pending());
        assert_eq!(demand.waiting(), 2);
        assert_eq!(push(), Pushed::Queued(1));
        assert_eq!(push(), Pushed::Queued(2));
        assert_eq!(push(), Pushed::Unwanted, "two wait, two are queued");
        assert!(a.poll_recv(&mut cx).is_ready());
        assert_eq!(
            demand.waiting(),
            1,
            "a receiver that got its message stops waiting"
        );
        drop(b);
        assert_eq!(demand.waiting(), 0, "a dropped receiver stops waiting");
    }

    #[test]
    fn a_groups_digest_follows_its_members_in_any_order() {
        let engine = Engine::new(LayerConfig::default());
        let room = group("room");
        let (a, b, c) = (
            engine.queue(&name("a")),
            engine.queue(&name("b")),
            engine.queue(&name("c")),
        );
        assert_eq!(engine.group_digest("room"), (0, 0));
        for q in [&a, &b, &c, &b] {
            engine.group_add(&room, q); // b twice: a refresh, not a second member
        }
        let all = member_digest("a") ^ member_digest("b") ^ member_digest("c");
        assert_eq!(engine.group_digest("room"), (3, all));
        assert_ne!(all, 0);
        assert!(engine.group_discard(&room, &name("b")));
        assert!(!engine.group_discard(&room, &name("b")));
        assert_eq!(
            engine.group_digest("room"),
            (2, member_digest("c") ^ member_digest("a"))
        );
        // A discarded channel leaves every group; the digest drops it too.
        engine.discard(&name("a"));
        assert_eq!(engine.group_digest("room"), (1, member_digest("c")));
        engine.discard(&name("c"));
        assert_eq!(engine.group_digest("room"), (0, 0));
        // The share is fixed (XXH3-64 with seed 0), whatever the process: other processes
        // compare digests with this one.
        assert_eq!(member_digest(""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn expiry_takes_a_channel_out_of_its_groups_and_reports_it() {
        let cfg = LayerConfig::default().expiry(Duration::ZERO);
        let (engine, mut leaves) = Engine::with_leaves(cfg);
        let q = engine.queue(&name("a"));
        engine.group_add(&group("room"), &q);
        let at = engine.arrival(Duration::ZERO);
        engine.deliver(&q, msg(), &at);
        std::thread::sleep(Duration::from_millis(20));
        engine.sweep();
        assert!(!engine.has_members("room"));
        assert_eq!(
            leaves.try_recv().ok(),
            Some(Leave {
                channel: name("a"),
                groups: vec![group("room")]
            })
        );
        assert_eq!(engine.stats().expired_messages, 1);
    }

    fn numbered(n: i64) -> Message {
        Message::builder("t")
            .field("n", n)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn n_of(m: &Message) -> i64 {
        m.get("n").and_then(|v| v.as_i64()).unwrap_or(-1)
    }

    #[test]
    fn a_full_member_is_told_what_it_missed_where_it_missed_it() {
        let engine = Engine::new(LayerConfig::default().capacity(4));
        let q = engine.queue(&name("a"));
        engine.group_add(&group("room"), &q);
        for n in 0..10 {
            let _ = engine.group_send("room", &numbered(n));
        }
        assert_eq!(q.dropped(), 6);
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        let mut rx = engine.receiver(q.clone());
        for n in 0..4 {
            assert!(
                rx.take_missed().is_empty(),
                "nothing missed before message {n}"
            );
            match rx.poll_recv(&mut cx) {
                Poll::Ready(Ok(m)) => assert_eq!(n_of(&m), n),
                other => panic!("expected message {n}, got {other:?}"),
            }
        }
        assert_eq!(
            rx.take_missed(),
            Missed {
                dropped: 6,
                interrupted: false,
                recovered: false,
            },
            "the six dropped after the fourth"
        );
        assert!(rx.take_missed().is_empty(), "told once");
        // The gap closes: what comes next is received.
        let _ = engine.group_send("room", &numbered(10));
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Ok(m)) if n_of(&m) == 10));
        assert!(rx.take_missed().is_empty());
        assert_eq!(engine.stats().group_full_drops, 6);
    }

    #[test]
    fn a_gap_marked_by_a_backend_comes_after_what_is_queued() {
        let engine = Engine::new(LayerConfig::default());
        let q = engine.queue(&name("a"));
        let at = engine.arrival(Duration::ZERO);
        engine.deliver(&q, numbered(1), &at);
        q.mark_gap();
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        let mut rx = engine.receiver(q.clone());
        let interrupted = Missed {
            dropped: 0,
            interrupted: true,
            recovered: false,
        };
        assert!(rx.take_missed().is_empty());
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Ok(m)) if n_of(&m) == 1));
        assert_eq!(rx.take_missed(), interrupted);
        q.mark_gap();
        assert!(rx.has_missed(), "a gap on an empty queue is there at once");
        assert_eq!(rx.take_missed(), interrupted);
    }

    #[test]
    fn expired_messages_count_as_missed() {
        let engine = Engine::new(LayerConfig::default().expiry(Duration::ZERO));
        let q = engine.queue(&name("a"));
        let at = engine.arrival(Duration::ZERO);
        engine.deliver(&q, msg(), &at);
        engine.deliver(&q, msg(), &at);
        std::thread::sleep(Duration::from_millis(20));
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        let mut rx = engine.receiver(q.clone());
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!(rx.take_missed().dropped, 2);
    }

    #[tokio::test]
    async fn a_member_that_does_not_drain_is_waited_for_once() {
        let wait = Duration::from_millis(100);
        let engine = Engine::new(LayerConfig::default().capacity(10).group_backpressure(wait));
        let q = engine.queue(&name("stalled"));
        engine.group_add(&group("room"), &q);
        let start = std::time::Instant::now();
        for n in 0..30 {
            let lagging = engine.group_send("room", &numbered(n));
            engine.backpressure(lagging).await;
        }
        let took = start.elapsed();
        // Waited once (from the fifth message on it lags), not once per message.
        assert!(took >= wait, "{took:?}");
        assert!(
            took < wait * 4,
            "{took:?}: waited for an overrun member again"
        );
        assert_eq!(q.dropped(), 20);
        // Drained below half, it is waited for again.
        let mut rx = engine.receiver(q.clone());
        for _ in 0..10 {
            let _ = rx.recv().await;
        }
        assert_eq!(rx.take_missed().dropped, 20);
        let lagging: Vec<bool> = (30..35)
            .map(|n| !engine.group_send("room", &numbered(n)).is_empty())
            .collect();
        assert_eq!(
            lagging,
            [false, false, false, false, true],
            "lags again at half full"
        );
    }

    fn futures_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }

    use std::task::{Context, Poll};
}
