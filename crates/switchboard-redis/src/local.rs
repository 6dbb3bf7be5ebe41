//! Process-local channels: the per-channel queues both Redis layers deliver into.
//!
//! Redis holds one queue per *process* (channels_redis's process key) or nothing at all (pub/sub).
//! What a consumer waits on is a bounded queue in this process, fed by the layer's single
//! receive loop (or subscription) for the whole process. Each queue keeps the layer's rules:
//!
//! - **capacity**: a full queue refuses `send` from this process with `ChannelFull`; a group
//!   message for a full queue is dropped and counted (`group_full_drops`), as is a direct message
//!   from another process that found room in the Redis queue but not here;
//! - **expiry**: a message not received within `expiry` of being sent is dropped, and the
//!   channel leaves the groups this process added it to (reported on the `leave` channel, so the
//!   layer can tell Redis);
//! - **cancel safety**: a message is taken out of the queue only by the receive that returns it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use switchboard_core::{ChannelName, Error, GroupName, LayerConfig, LayerStats, Message, Result};
use tokio::sync::{Notify, mpsc};

/// A fast hasher for the maps looked up on every delivery (names are long; SipHash shows).
pub(crate) type Hasher = foldhash::fast::RandomState;

/// How many receives wait on a Redis queue, so its receive loop pops only while someone wants
/// messages (as channels_redis pops only inside `receive`).
#[derive(Debug, Default)]
pub(crate) struct Demand {
    pub(crate) waiters: AtomicUsize,
    pub(crate) wake: Notify,
    /// Whether the receive loop feeding this demand runs (cleared by [`Running`] when its task
    /// ends, whatever the reason), so a receive can start it again.
    running: AtomicBool,
}

impl Demand {
    /// Whether the receive loop runs.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

/// Marks a demand's receive loop as running while it lives: moved into the loop's task, it is
/// dropped when the task ends, panics, is aborted or its runtime shuts down.
#[derive(Debug)]
pub(crate) struct Running(Arc<Demand>);

impl Running {
    pub(crate) fn new(demand: &Arc<Demand>) -> Running {
        demand.running.store(true, Ordering::Release);
        Running(demand.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// One waiting receive, counted while it lives.
pub(crate) struct Waiting<'a>(&'a Demand);

impl<'a> Waiting<'a> {
    pub(crate) fn new(demand: &'a Demand) -> Waiting<'a> {
        if demand.waiters.fetch_add(1, Ordering::Relaxed) == 0 {
            demand.wake.notify_waiters();
        }
        Waiting(demand)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A channel's membership in a group, as this process added it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Membership {
    pub(crate) group: GroupName,
    /// When it joined, in Unix seconds (the score of the group's sorted set).
    pub(crate) joined: f64,
}

/// A channel whose messages expired, and the groups it must now leave.
#[derive(Debug)]
pub(crate) struct Leave {
    pub(crate) channel: ChannelName,
    pub(crate) groups: Vec<Membership>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    Full,
    /// A group message for a channel whose messages just expired: it left its groups instead.
    Left,
    /// A group message for a channel that is not (or no longer) a member here.
    NotMember,
    /// Not queued: the channel holds as many messages as receives wait on it
    /// ([`Local::push_wanted`]).
    Unwanted,
}

#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) group_full_drops: AtomicU64,
    pub(crate) expired: AtomicU64,
    /// Messages from other processes dropped because the local queue was full.
    pub(crate) direct_full_drops: AtomicU64,
    /// Stored messages that did not decode (logged and skipped).
    pub(crate) undecodable: AtomicU64,
}

struct Entry {
    deadline: Instant,
    message: Message,
}

#[derive(Default)]
struct State {
    messages: VecDeque<Entry>,
    groups: Vec<Membership>,
}

impl State {
    fn drop_expired(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while self.messages.front().is_some_and(|e| e.deadline <= now) {
            self.messages.pop_front();
            n += 1;
        }
        n
    }
}

/// What a push must check besides capacity and expiry.
#[derive(Clone, Copy)]
enum Rule<'a> {
    /// A message sent to the channel.
    Direct,
    /// A group message (not queued on a channel that leaves its groups now).
    Group,
    /// A group message for a member of this group, as of this Unix time.
    Member(&'a GroupName, f64),
    /// A named channel's message, wanted only while more receives wait on this demand than
    /// the channel holds messages.
    Wanted(&'a Demand),
}

/// One local channel's queue.
pub(crate) struct Queue {
    pub(crate) name: ChannelName,
    /// The receive loop this channel's messages come through (core layer).
    pub(crate) demand: Option<Arc<Demand>>,
    capacity: usize,
    state: Mutex<State>,
    notify: Notify,
}

impl Queue {
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().messages.len()
    }
}

/// The local channels of one layer instance.
pub(crate) struct Local {
    config: LayerConfig,
    /// This process's client prefix (32 hex digits), in every channel name it makes.
    client_id: String,
    channels: DashMap<ChannelName, Arc<Queue>, Hasher>,
    pub(crate) counters: Counters,
    closed: AtomicBool,
    leave: mpsc::UnboundedSender<Leave>,
    /// A clock read on every receive would cost more than the receive itself; receives read
    /// this one, which every message's [`deadline`](Local::deadline) and a 10 ms tick keep
    /// current (expiry may be that much late).
    epoch: Instant,
    coarse_ms: AtomicU64,
}

impl Local {
    pub(crate) fn new(config: LayerConfig) -> (Local, mpsc::UnboundedReceiver<Leave>) {
        let (leave, rx) = mpsc::unbounded_channel();
        (
            Local {
                config,
                client_id: uuid::Uuid::new_v4().simple().to_string(),
                channels: DashMap::with_hasher(Hasher::default()),
                counters: Counters::default(),
                closed: AtomicBool::new(false),
                leave,
                epoch: Instant::now(),
                coarse_ms: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Advances the coarse clock to `now`.
    pub(crate) fn tick(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if ms > self.coarse_ms.load(Ordering::Relaxed) {
            self.coarse_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    fn coarse_now(&self) -> Instant {
        self.epoch + Duration::from_millis(self.coarse_ms.load(Ordering::Relaxed))
    }

    /// This process's client prefix: the 32 hex digits in every channel name it hands out.
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether `name` is a process-local channel of this process.
    pub(crate) fn is_own(&self, name: &str) -> bool {
        name.find('!')
            .is_some_and(|i| name[..i].ends_with(self.client_id.as_str()))
    }

    /// A fresh process-local channel name of this process: `<prefix><client>!<random>`.
    pub(crate) fn new_name(&self, prefix: &str) -> Result<ChannelName> {
        Ok(ChannelName::new(format!(
            "{prefix}{}!{}",
            self.client_id,
            uuid::Uuid::new_v4().simple()
        ))?)
    }

    /// `send` to one of this process's channels: straight into its queue (a channel this
    /// process discarded takes nothing, silently, as Channels does).
    pub(crate) fn send_own(&self, channel: &ChannelName, message: Message) -> Result<()> {
        let Some(queue) = self.get(channel.as_str()) else {
            tracing::debug!(%channel, "send to a channel this process discarded; dropped");
            return Ok(());
        };
        let now = Instant::now();
        match self.push(
            &queue,
            message,
            now,
            self.deadline(now, Duration::ZERO),
            false,
        ) {
            Pushed::Full => Err(Error::ChannelFull {
                channel: channel.to_string(),
                capacity: queue.capacity(),
            }),
            Pushed::Queued | Pushed::Left | Pushed::NotMember | Pushed::Unwanted => Ok(()),
        }
    }

    /// The layer's stats, with `groups` as the layer counts them.
    pub(crate) fn stats(&self, groups: usize) -> LayerStats {
        let mut s = LayerStats::default();
        s.group_full_drops = self.counters.group_full_drops.load(Ordering::Relaxed);
        s.expired_messages = self.counters.expired.load(Ordering::Relaxed);
        s.channels = self.len() as u64;
        s.groups = groups as u64;
        s
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(Error::LayerClosed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.channels.len()
    }

    /// The queue of `name`, created if needed, fed through `demand`'s receive loop.
    pub(crate) fn register(&self, name: &ChannelName, demand: Option<&Arc<Demand>>) -> Arc<Queue> {
        if let Some(q) = self.channels.get(name) {
            return q.clone();
        }
        self.channels
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Queue {
                    name: name.clone(),
                    demand: demand.cloned(),
                    capacity: self.config.capacity_for(name.as_str()),
                    state: Mutex::new(State::default()),
                    notify: Notify::new(),
                })
            })
            .clone()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Queue>> {
        self.channels.get(name).map(|q| q.clone())
    }

    /// Forgets a channel: drops its messages and returns the groups it was in.
    pub(crate) fn remove(&self, name: &ChannelName) -> Vec<Membership> {
        let Some((_, q)) = self.channels.remove(name) else {
            return Vec::new();
        };
        let mut st = q.state.lock();
        st.messages.clear();
        std::mem::take(&mut st.groups)
    }

    /// Records that `queue`'s channel joined `group` (or refreshed its membership).
    pub(crate) fn track(&self, queue: &Queue, group: &GroupName, joined: f64) {
        let mut st = queue.state.lock();
        match st.groups.iter_mut().find(|m| &m.group == group) {
            Some(m) => m.joined = joined,
            None => st.groups.push(Membership {
                group: group.clone(),
                joined,
            }),
        }
    }

    /// Records that `queue`'s channel left `group`.
    pub(crate) fn untrack(&self, queue: &Queue, group: &GroupName) {
        queue.state.lock().groups.retain(|m| &m.group != group);
    }

    /// Every (channel, membership) this process tracks.
    pub(crate) fn all_memberships(&self) -> Vec<(ChannelName, Membership)> {
        let mut out = Vec::new();
        for q in self.channels.iter() {
            for m in q.state.lock().groups.iter() {
                out.push((q.name.clone(), m.clone()));
            }
        }
        out
    }

    /// The deadline of a message sent `age` ago, arriving at `now`. Called once per message
    /// before its pushes (however many members it goes to), it also advances the coarse clock.
    pub(crate) fn deadline(&self, now: Instant, age: Duration) -> Instant {
        self.tick(now);
        now + self.config.expiry.saturating_sub(age)
    }

    fn expired(&self, queue: &Queue, st: &mut State, n: usize) {
        if n == 0 {
            return;
        }
        self.counters.expired.fetch_add(n as u64, Ordering::Relaxed);
        let groups = std::mem::take(&mut st.groups);
        tracing::debug!(channel = %queue.name, expired = n, groups = groups.len(), "messages expired; the channel leaves its groups");
        if !groups.is_empty() {
            let _ = self.leave.send(Leave {
                channel: queue.name.clone(),
                groups,
            });
        }
    }

    /// Reports memberships to end (the layer's janitor tells Redis).
    pub(crate) fn leave(&self, leave: Leave) {
        let _ = self.leave.send(leave);
    }

    /// Queues a message. A group message (`via_group`) is not queued on a channel that leaves
    /// its groups now (its earlier messages expired), as Channels cleans expired channels out of
    /// a group before fanning out.
    pub(crate) fn push(
        &self,
        queue: &Queue,
        message: Message,
        now: Instant,
        deadline: Instant,
        via_group: bool,
    ) -> Pushed {
        let rule = if via_group { Rule::Group } else { Rule::Direct };
        self.push_inner(queue, message, now, deadline, rule)
    }

    /// Queues a message popped from a named channel's Redis queue only while more receives
    /// wait on `demand` than the channel holds messages; otherwise it is [`Pushed::Unwanted`]
    /// and belongs back in Redis, for the other processes reading the channel. Checked and
    /// queued under the channel's lock, so loops popping the channel from several hosts never
    /// queue more than the receives waiting.
    pub(crate) fn push_wanted(
        &self,
        queue: &Queue,
        message: Message,
        now: Instant,
        deadline: Instant,
        demand: &Demand,
    ) -> Pushed {
        self.push_inner(queue, message, now, deadline, Rule::Wanted(demand))
    }

    /// Queues a message sent to `group`, if this process holds the channel's membership in it
    /// and the membership has not expired (the pub/sub layer's fan-out).
    pub(crate) fn push_to_member(
        &self,
        queue: &Queue,
        message: Message,
        now: Instant,
        deadline: Instant,
        group: &GroupName,
        now_unix: f64,
    ) -> Pushed {
        let rule = Rule::Member(group, now_unix);
        self.push_inner(queue, message, now, deadline, rule)
    }

    fn push_inner(
        &self,
        queue: &Queue,
        message: Message,
        now: Instant,
        deadline: Instant,
        rule: Rule<'_>,
    ) -> Pushed {
        let via_group = matches!(rule, Rule::Group | Rule::Member(..));
        let mut st = queue.state.lock();
        if let Rule::Member(group, now_unix) = rule {
            let Some(i) = st.groups.iter().position(|m| &m.group == group) else {
                return Pushed::NotMember;
            };
            if now_unix - st.groups[i].joined >= self.config.group_expiry.as_secs_f64() {
                let m = st.groups.swap_remove(i);
                drop(st);
                self.leave(Leave {
                    channel: queue.name.clone(),
                    groups: vec![m],
                });
                return Pushed::NotMember;
            }
        }
        let n = st.drop_expired(now);
        self.expired(queue, &mut st, n);
        if via_group && n > 0 {
            return Pushed::Left;
        }
        if let Rule::Wanted(d) = rule
            && d.waiters.load(Ordering::Relaxed) <= st.messages.len()
        {
            return Pushed::Unwanted;
        }
        if st.messages.len() >= queue.capacity {
            drop(st);
            if via_group {
                self.counters
                    .group_full_drops
                    .fetch_add(1, Ordering::Relaxed);
            }
            return Pushed::Full;
        }
        st.messages.push_back(Entry { deadline, message });
        drop(st);
        queue.notify.notify_one();
        Pushed::Queued
    }

    /// Waits for the next message on `queue`. Cancel-safe. While it has to wait, it counts in
    /// the queue's receive demand (so the receive loop pops from Redis).
    pub(crate) async fn receive(&self, queue: &Queue) -> Result<Message> {
        let mut waiting = None;
        loop {
            self.check_open()?;
            let notified = queue.notify.notified();
            {
                let mut st = queue.state.lock();
                let n = st.drop_expired(self.coarse_now());
                self.expired(queue, &mut st, n);
                if let Some(e) = st.messages.pop_front() {
                    let more = !st.messages.is_empty();
                    drop(st);
                    if more {
                        // Another receiver of the same channel may be waiting.
                        queue.notify.notify_one();
                    }
                    return Ok(e.message);
                }
            }
            if waiting.is_none() {
                waiting = queue.demand.as_deref().map(Waiting::new);
            }
            notified.await;
        }
    }

    /// Drops expired messages everywhere (channels nobody touches expire too).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.tick(now);
        for q in self.channels.iter() {
            let mut st = q.state.lock();
            let n = st.drop_expired(now);
            self.expired(&q, &mut st, n);
        }
    }

    /// `flush`: every queued message and tracked membership is dropped; channels stay.
    pub(crate) fn clear(&self) {
        for q in self.channels.iter() {
            let mut st = q.state.lock();
            st.messages.clear();
            st.groups.clear();
        }
    }

    /// Closes: receivers return `LayerClosed`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for q in self.channels.iter() {
            q.notify.notify_waiters();
            q.notify.notify_one();
        }
    }

    /// Distinct groups this process tracks members of.
    pub(crate) fn group_count(&self) -> usize {
        let mut groups = std::collections::HashSet::new();
        for q in self.channels.iter() {
            for m in q.state.lock().groups.iter() {
                groups.insert(m.group.clone());
            }
        }
        groups.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use switchboard_core::{ChannelName, LayerConfig, Message};

    use super::{Demand, Local, Pushed, Running, Waiting};

    /// A loop's task that ends in any way marks its demand as not running, so the layer
    /// starts it again.
    #[tokio::test]
    async fn a_loop_that_ends_in_any_way_is_not_running() {
        let returns = Arc::new(Demand::default());
        let running = Running::new(&returns);
        assert!(returns.is_running());
        tokio::spawn(async move {
            let _running = running;
        })
        .await
        .ok();
        assert!(!returns.is_running());

        let panics = Arc::new(Demand::default());
        let running = Running::new(&panics);
        let r = tokio::spawn(async move {
            let _running = running;
            panic!("a bug");
        })
        .await;
        assert!(r.is_err_and(|e| e.is_panic()));
        assert!(!panics.is_running());

        let aborted = Arc::new(Demand::default());
        let running = Running::new(&aborted);
        let task = tokio::spawn(async move {
            let _running = running;
            std::future::pending::<()>().await;
        });
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert!(!aborted.is_running());
    }

    #[test]
    fn a_named_channel_queues_one_message_per_waiting_receive()
    -> Result<(), Box<dyn std::error::Error>> {
        let (local, _leave) = Local::new(LayerConfig::default());
        let name: ChannelName = "worker.jobs".parse()?;
        let q = local.register(&name, None);
        let demand = Demand::default();
        let m = Message::builder("job").build()?;
        let now = Instant::now();
        let deadline = now + Duration::from_secs(60);
        let push = || local.push_wanted(&q, m.clone(), now, deadline, &demand);
        assert_eq!(push(), Pushed::Unwanted, "nobody waits");
        let (_a, _b) = (Waiting::new(&demand), Waiting::new(&demand));
        assert_eq!(push(), Pushed::Queued);
        assert_eq!(push(), Pushed::Queued);
        assert_eq!(
            push(),
            Pushed::Unwanted,
            "two receives wait, two are queued"
        );
        assert_eq!(q.len(), 2);
        Ok(())
    }
}
