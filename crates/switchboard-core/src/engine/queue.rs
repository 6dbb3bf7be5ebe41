//! One channel's queue, its receivers, and the demand a backend feeds it by.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::Engine;
use super::clock::Instant;
use crate::error::Result;
use crate::message::Message;
use crate::name::{ChannelName, GroupName};

/// How many receivers wait on the queues a backend feeds, so it fetches messages only while
/// someone wants them — as channels_redis pops a Redis queue only inside `receive`.
///
/// A receiver counts from the moment it has to wait (its poll returned `Pending`) until it
/// takes a message or is dropped.
#[derive(Debug, Default)]
pub struct Demand {
    waiters: AtomicUsize,
    wake: Notify,
    /// Wake the feeder at every new waiting receiver, not only the first (a feeder that fetches
    /// one message per waiting receiver needs to know of each).
    every: bool,
}

impl Demand {
    /// A demand whose feeder is woken when the first receiver starts waiting.
    pub fn new() -> Demand {
        Demand::default()
    }

    /// A demand whose feeder is woken whenever one more receiver starts waiting.
    pub fn per_receiver() -> Demand {
        Demand {
            every: true,
            ..Demand::default()
        }
    }

    /// Receivers waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters.load(Ordering::Relaxed)
    }

    /// A future that completes at the next wake-up. Created before reading
    /// [`waiting`](Demand::waiting), it cannot miss a receiver that starts waiting in between.
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    fn start_waiting(&self) {
        if self.waiters.fetch_add(1, Ordering::Relaxed) == 0 || self.every {
            self.wake.notify_waiters();
        }
    }

    fn stop_waiting(&self) {
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Entry {
    pub(crate) expires: Instant,
    pub(crate) message: Message,
    /// What was missed right after this message: group messages dropped because the queue
    /// was full (the count, in the low 31 bits) and whether the backend's stream was
    /// interrupted ([`ENTRY_INTERRUPTED`]). The receiver learns of it when it takes this
    /// message ([`Queue::take_missed`]).
    pub(crate) missed_after: u32,
}

/// The tasks waiting for a queue's next message: almost always one (its receiver), kept
/// without an allocation, so that taking them to wake them frees nothing and registering again
/// allocates nothing (a `Vec` would do both once per delivery).
#[derive(Default)]
struct Wakers {
    one: Option<Waker>,
    /// Any others (workers sharing a named channel); empty while `one` is.
    more: Vec<Waker>,
}

impl Wakers {
    /// Adds `waker` unless it, or one that wakes the same task, is here already.
    fn register(&mut self, waker: &Waker) {
        match &self.one {
            None => self.one = Some(waker.clone()),
            Some(w) if w.will_wake(waker) => {}
            Some(_) => {
                if !self.more.iter().any(|w| w.will_wake(waker)) {
                    self.more.push(waker.clone());
                }
            }
        }
    }

    fn wake(self) {
        if let Some(w) = self.one {
            w.wake();
        }
        for w in self.more {
            w.wake();
        }
    }
}

/// The room an empty queue may keep (entries): past it, a receiver that drained its queue
/// frees it before it sleeps.
const SMALL_QUEUE: usize = 8;

/// [`Entry::missed_after`]'s flag: the backend's stream was interrupted after this message.
const ENTRY_INTERRUPTED: u32 = 1 << 31;
/// [`Queue::missed`]'s flag: the backend's stream was interrupted at the receiver's place.
const INTERRUPTED: u64 = 1 << 63;

/// One more message dropped after an entry (its count saturates below the flag).
fn add_dropped(missed_after: &mut u32) {
    if *missed_after & !ENTRY_INTERRUPTED < !ENTRY_INTERRUPTED {
        *missed_after += 1;
    }
}

/// An entry's gap as `Queue::missed` counts it.
fn gap_of(missed_after: u32) -> u64 {
    let interrupted = if missed_after & ENTRY_INTERRUPTED != 0 {
        INTERRUPTED
    } else {
        0
    };
    u64::from(missed_after & !ENTRY_INTERRUPTED) | interrupted
}

/// What a receiver missed right after the last message it received
/// ([`Subscription::take_missed`](crate::Subscription::take_missed)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Missed {
    /// Messages dropped for this receiver: its channel was full (it fell behind its group for
    /// longer than the senders' back-pressure wait), or they expired unread.
    pub dropped: u64,
    /// The layer's connection to where messages come from was interrupted and made again (a
    /// pub/sub subscription lost, Redis restarted empty): some messages may be missing, how
    /// many is not known.
    pub interrupted: bool,
    /// Every group the subscription is in keeps history and was read again from the last
    /// position it received ([`Subscription::recover`](crate::Subscription::recover)): what
    /// was missed comes next, in order, once. Set by
    /// [`Subscription::take_missed_and_recover`](crate::Subscription::take_missed_and_recover)
    /// (the WebSocket runtime calls it before it tells the consumer); never by a receiver.
    pub recovered: bool,
}

impl Missed {
    /// Whether nothing was missed.
    pub fn is_empty(&self) -> bool {
        self.dropped == 0 && !self.interrupted
    }

    fn from_bits(bits: u64) -> Missed {
        Missed {
            dropped: bits & !INTERRUPTED,
            interrupted: bits & INTERRUPTED != 0,
            recovered: false,
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) messages: VecDeque<Entry>,
    /// The groups this channel is in (the back-index), so expiry and discard can take it out.
    pub(crate) groups: Vec<GroupName>,
    /// Receivers waiting for a message. A push wakes them all: usually there is one (a
    /// consumer); with several (workers on one channel) the losers wait again, and a receiver
    /// that was woken and dropped cannot strand a message.
    waiters: Wakers,
    /// Group senders waiting for this queue to drain below half its capacity (back-pressure).
    drain_waiters: Vec<Waker>,
}

impl State {
    /// Drops expired messages from the front, counting them (and the gaps they carried) in
    /// `missed`. If any expired, the channel leaves its groups: returns how many expired and
    /// the groups to leave.
    pub(crate) fn drop_expired(
        &mut self,
        now: Instant,
        missed: &AtomicU64,
    ) -> (usize, Vec<GroupName>) {
        let mut n = 0;
        let mut lost = 0u64;
        let mut interrupted = 0u64;
        while self.messages.front().is_some_and(|e| e.expires <= now) {
            if let Some(e) = self.messages.pop_front() {
                let gap = gap_of(e.missed_after);
                lost += 1 + (gap & !INTERRUPTED);
                interrupted |= gap & INTERRUPTED;
            }
            n += 1;
        }
        if lost > 0 {
            missed.fetch_add(lost, Ordering::Relaxed);
            missed.fetch_or(interrupted, Ordering::Relaxed);
        }
        if n > 0 {
            (n, std::mem::take(&mut self.groups))
        } else {
            (0, Vec::new())
        }
    }
}

/// What a push must check besides capacity and expiry.
#[derive(Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// A message sent to the channel.
    Direct,
    /// A group message: not queued on a channel that leaves its groups now.
    Group,
    /// A named channel's message fetched for waiting receivers: queued only while more
    /// receivers wait than the channel holds messages.
    Wanted(&'a Demand),
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; the queue now holds this many messages.
    Queued(usize),
    /// The queue was full; nothing was queued.
    Full,
    /// A group message for a channel whose earlier messages just expired: it left its groups
    /// instead, as Channels cleans expired members out of a group before fanning out.
    Left,
    /// Not queued: the channel already holds a message for every waiting receiver. It belongs
    /// back where it came from (another process may be waiting for it).
    Unwanted,
}

/// One channel's bounded, expiring queue.
pub struct Queue {
    pub(crate) name: ChannelName,
    pub(crate) capacity: usize,
    /// The backend's feed of this queue, if it fetches only on demand.
    pub(crate) demand: Option<Arc<Demand>>,
    pub(crate) state: Mutex<State>,
    /// Group messages this queue could not take (it was full), ever.
    dropped: AtomicU64,
    /// Messages missed at a place the receiver has now reached, not yet taken.
    pub(crate) missed: AtomicU64,
    /// A group sender waited the whole back-pressure wait for this queue to drain, in vain:
    /// senders no longer wait for it until it drains below half (one stalled member must not
    /// hold its group at one message per wait).
    overrun: AtomicBool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(name: ChannelName, capacity: usize, demand: Option<Arc<Demand>>) -> Queue {
        Queue {
            name,
            capacity,
            demand,
            state: Mutex::new(State::default()),
            dropped: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            overrun: AtomicBool::new(false),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// How many messages it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages waiting (expired ones included until the queue is next touched).
    pub fn len(&self) -> usize {
        self.state.lock().messages.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The demand this queue is fed by, if any.
    pub fn demand(&self) -> Option<&Arc<Demand>> {
        self.demand.as_ref()
    }

    /// Half the capacity: above it a member is lagging and a group sender waits for it.
    pub(crate) fn high_water(&self) -> usize {
        (self.capacity / 2).max(1)
    }

    /// Whether a queue that holds `len` messages is lagging: over half full, but not full
    /// (waiting for a full one is pointless: it is skipped), and not already waited for in
    /// vain (overrun).
    pub(crate) fn lags_at(&self, len: usize) -> bool {
        len >= self.high_water() && len < self.capacity && !self.overrun.load(Ordering::Relaxed)
    }

    /// Marks the queue overrun: a sender waited for it to drain and it did not.
    pub(crate) fn set_overrun(&self) {
        self.overrun.store(true, Ordering::Relaxed);
    }

    /// Group messages this queue could not take because it was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ready with [`dropped`](Queue::dropped) once it is past `seen`; else registers `cx` to
    /// be woken by the next drop (or message), without taking anything: for a receiver that is
    /// not receiving for now and must know when it starts losing messages.
    pub fn poll_dropped(&self, cx: &mut Context<'_>, seen: u64) -> Poll<u64> {
        let mut st = self.state.lock();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > seen {
            return Poll::Ready(dropped);
        }
        st.waiters.register(cx.waker());
        Poll::Pending
    }

    /// What was missed at the place the receiver has reached (after the last message it
    /// took), and forgets it. A message dropped because the queue was full is counted here
    /// once the receiver has taken the messages queued before it, so a consumer learns of a
    /// gap exactly where it is.
    pub fn take_missed(&self) -> Missed {
        if self.missed.load(Ordering::Relaxed) == 0 {
            return Missed::default();
        }
        Missed::from_bits(self.missed.swap(0, Ordering::Relaxed))
    }

    /// Records that the backend's stream of messages for this queue was interrupted after
    /// what it holds now — a backend that lost its connection to the messages' source (a
    /// pub/sub subscription made again) calls it for every member it feeds: the receiver
    /// gets [`Missed::interrupted`] there.
    pub fn mark_gap(&self) {
        let mut st = self.state.lock();
        match st.messages.back_mut() {
            Some(last) => last.missed_after |= ENTRY_INTERRUPTED,
            None => {
                self.missed.fetch_or(INTERRUPTED, Ordering::Relaxed);
            }
        }
        let waiters = std::mem::take(&mut st.waiters);
        drop(st);
        waiters.wake();
    }

    /// Queues `message`, which expires at `expires`. Returns what happened, and what expired
    /// on the way (how many messages, and the groups the channel must now leave).
    pub(crate) fn push(
        &self,
        message: Message,
        now: Instant,
        expires: Instant,
        mode: Mode<'_>,
    ) -> (Pushed, usize, Vec<GroupName>) {
        let mut st = self.state.lock();
        let (expired, leave) = st.drop_expired(now, &self.missed);
        if matches!(mode, Mode::Group) && expired > 0 {
            return (Pushed::Left, expired, leave);
        }
        if let Mode::Wanted(d) = mode
            && d.waiting() <= st.messages.len()
        {
            return (Pushed::Unwanted, expired, leave);
        }
        if st.messages.len() >= self.capacity {
            if matches!(mode, Mode::Group) {
                // Dropped: the receiver is told where, when it gets there; one that watches
                // for drops (`poll_dropped`) is woken.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                match st.messages.back_mut() {
                    Some(last) => add_dropped(&mut last.missed_after),
                    None => {
                        self.missed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let waiters = std::mem::take(&mut st.waiters);
                drop(st);
                waiters.wake();
            }
            return (Pushed::Full, expired, leave);
        }
        st.messages.push_back(Entry {
            expires,
            message,
            missed_after: 0,
        });
        let len = st.messages.len();
        let waiters = std::mem::take(&mut st.waiters);
        drop(st);
        waiters.wake();
        (Pushed::Queued(len), expired, leave)
    }

    /// Takes the next unexpired message, or registers `cx` to be woken by the next push.
    fn poll_pop(&self, cx: &mut Context<'_>) -> (Poll<Message>, usize, Vec<GroupName>) {
        let mut st = self.state.lock();
        let (expired, leave) = if st.messages.is_empty() {
            (0, Vec::new())
        } else {
            st.drop_expired(Instant::now(), &self.missed)
        };
        match st.messages.pop_front() {
            Some(e) => {
                if e.missed_after > 0 {
                    let gap = gap_of(e.missed_after);
                    self.missed.fetch_add(gap & !INTERRUPTED, Ordering::Relaxed);
                    self.missed.fetch_or(gap & INTERRUPTED, Ordering::Relaxed);
                }
                if st.messages.len() < self.high_water() {
                    self.overrun.store(false, Ordering::Relaxed);
                    if !st.drain_waiters.is_empty() {
                        for w in std::mem::take(&mut st.drain_waiters) {
                            w.wake();
                        }
                    }
                }
                (Poll::Ready(e.message), expired, leave)
            }
            None => {
                // Drained, and the receiver goes to sleep: give back what a burst grew the
                // queue to (a channel keeps no room for messages it does not hold; every idle
                // connection has one).
                if st.messages.capacity() > SMALL_QUEUE {
                    st.messages.shrink_to_fit();
                }
                st.waiters.register(cx.waker());
                (Poll::Pending, expired, leave)
            }
        }
    }

    /// Ready once the queue is below its high-water mark (or full: then waiting is pointless).
    pub(crate) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.state.lock();
        if !self.lags_at(st.messages.len()) {
            return Poll::Ready(());
        }
        if !st.drain_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.drain_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    pub(crate) fn wake_receivers(&self) {
        let waiters = std::mem::take(&mut self.state.lock().waiters);
        waiters.wake();
    }
}

/// Receives the messages of one channel, polled directly: no lookup, no allocation and no
/// future per message. Get one from [`Layer::receiver`](crate::Layer::receiver).
///
/// Cancel-safe: a message is taken only when `poll_recv` returns it. Several receivers may
/// share a channel (workers on a named channel); each message goes to one of them.
pub struct Receiver {
    engine: Engine,
    queue: Arc<Queue>,
    /// Counted in the queue's demand (it had to wait and has not received since).
    waiting: bool,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("channel", &self.queue.name)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    pub(crate) fn new(engine: Engine, queue: Arc<Queue>) -> Receiver {
        Receiver {
            engine,
            queue,
            waiting: false,
        }
    }

    /// The channel this receiver takes messages from.
    pub fn channel_name(&self) -> &ChannelName {
        &self.queue.name
    }

    /// Polls for the next message; fails once the layer is closed.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message>> {
        poll_queue(&self.engine, &self.queue, &mut self.waiting, cx)
    }

    /// Waits for the next message.
    pub async fn recv(&mut self) -> Result<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Whether messages were missed right after the last one received.
    pub fn has_missed(&self) -> bool {
        self.queue.missed.load(Ordering::Relaxed) > 0
    }

    /// What was missed right after the last message received (see [`Queue::take_missed`]).
    pub fn take_missed(&self) -> Missed {
        self.queue.take_missed()
    }

    /// Group messages the channel's queue could not take because it was full, ever.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// See [`Queue::poll_dropped`].
    pub fn poll_dropped(&self, cx: &mut Context<'_>, seen: u64) -> Poll<u64> {
        self.queue.poll_dropped(cx, seen)
    }
}

/// One receive attempt on `queue`: a message, `Closed` once the layer is closed, or pending
/// (counted in the queue's demand while `waiting`).
pub(crate) fn poll_queue(
    engine: &Engine,
    queue: &Arc<Queue>,
    waiting: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Message>> {
    if engine.is_closed() {
        stop_waiting(queue, waiting);
        return Poll::Ready(Err(crate::LayerError::Closed));
    }
    let (polled, expired, leave) = queue.poll_pop(cx);
    if expired > 0 {
        engine.after_expiry(queue, expired, leave);
    }
    match polled {
        Poll::Ready(m) => {
            stop_waiting(queue, waiting);
            Poll::Ready(Ok(m))
        }
        Poll::Pending => {
            if !*waiting && let Some(d) = &queue.demand {
                *waiting = true;
                d.start_waiting();
            }
            Poll::Pending
        }
    }
}

pub(crate) fn stop_waiting(queue: &Queue, waiting: &mut bool) {
    if std::mem::take(waiting)
        && let Some(d) = &queue.demand
    {
        d.stop_waiting();
    }
}

/// Takes a waiting receive out of its queue's demand when it ends, however it ends.
pub(crate) struct Waiting<'a> {
    pub(crate) queue: &'a Queue,
    pub(crate) waiting: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        stop_waiting(self.queue, &mut self.waiting);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        stop_waiting(&self.queue, &mut self.waiting);
    }
}
