//! [`RedisLayer`]: channels_redis's `RedisChannelLayer`, on the same keys and bytes.
//!
//! # What is in Redis (exactly as channels_redis keeps it)
//!
//! - A channel's queue is the sorted set `PREFIX + channel` (`asgiworker.jobs`) scored by send
//!   time (Unix seconds, float). Process-local channels `specific.<client>!<id>` share one queue
//!   per process, keyed by the part up to the `!`: `asgispecific.<client>!`. Members are 12 random
//!   bytes followed by the msgpack message; a process-local message carries
//!   `__asgi_channel__` naming its channel (or, from a group send, the list of the group's
//!   channels in that process). This layer's client ids are `sb-` and channels_redis's 32 hex
//!   digits.
//! - A group is the sorted set `PREFIX:group:NAME` of channel names scored by join time.
//! - With several hosts, a process queue lives on host `crc32(non-local name) & 0xFFF / (4096/n)`,
//!   a group on the host of its name.
//!
//! # How this process uses it
//!
//! - **One receive loop per process queue**, on a connection of its own, pops with `BZPOPMIN`
//!   and drains bursts with `ZPOPMIN … COUNT`, decodes each message once and hands it to the local
//!   channel(s) named in `__asgi_channel__`. A thousand consumers share one loop and one
//!   connection; every other command shares one multiplexed connection per host.
//! - **A named channel** (`worker.jobs`) this process receives on gets one loop per host (on a
//!   connection each, for the layer's life): channels_redis sends its messages to the hosts in
//!   turn. It takes one message per waiting receive; what a pop brings beyond that goes back.
//! - Every receive loop waits between tries (50 ms doubling to 1 s) while Redis is away or
//!   refuses its commands, and is run again if it ever panics.
//! - **Deliveries within the process skip Redis.** A `send` to one of this process's channels, and
//!   the part of a group send whose members are this process's channels, go straight into the
//!   local queue (only the group's member list is read from Redis), with the back-pressure of the
//!   local delivery engine: a group send that leaves local members lagging waits for them. Nobody else could receive
//!   them, so nothing on the wire changes; what a Django process sends still arrives through
//!   Redis. Named channels always go through Redis: other processes read them too.
//! - **One round trip per send** (a Lua script run by `EVALSHA`: expire, count, add, set the key's
//!   TTL) and two per group send (read the members; one script per host writes one message per
//!   process queue, skipping full queues, as channels_redis's script does).
//!
//! # Better than channels_redis, same wire
//!
//! - **A group send to another switchboard process names the group**, not its channels: the
//!   copy for a queue whose client id starts with `sb-` carries `__asgi_channel__:
//!   {"group": NAME, "members": N, "digest": D}` — how many of that process's channels were
//!   members and an order-free digest of their names
//!   ([`member_digest`](switchboard_core::engine::member_digest)). The receiver serves it from
//!   its own index of the group when count and digest match (the same member set); otherwise (a
//!   member joined or left while it travelled, or another process added one of its channels)
//!   it reads the group's members when the message arrives and serves its channels among them.
//!   1,000 members cost 60 bytes of routing instead of 76 KB, and no names to parse and look
//!   up. No channels_redis process reads such a queue; the copies for its queues list their
//!   channels as before.
//!
//! - Messages older than `expiry` are dropped on receive (channels_redis delivers them).
//! - A group send that finds expired messages in a member's queue — its process stopped reading
//!   or died — takes that queue's channels out of the group (channels_redis keeps them for a day
//!   and writes every group message to them). See [`RedisConfig::drop_stalled_members`].
//! - A channel whose messages expire here leaves the groups this process added it to.
//! - Consumers receive through the engine's polled receivers: no future per message.
//! - Several hosts: `send` and `receive` pick a process queue's host by the same hash
//!   (channels_redis hashes the full name on send and the non-local name on receive, so its
//!   sends can land where nobody reads: django/channels_redis#221).
//! - After Redis comes back (a restart, a failover) or lost this process's keys (`FLUSHALL`:
//!   a marker key `PREFIX:process:<client>` that the janitor sets every second is gone), the
//!   memberships this process added are written again, with their original join times.
//!
//! # Beside channels_redis's keys
//!
//! - **Group history** ([`LayerConfig::group_history`], one host): a group send to such a group
//!   is one script that numbers the message, keeps it (`PREFIX:history:NAME`, a hash, and
//!   `…:log`, a Stream) and writes channels_redis's entry, plus the key
//!   `__switchboard_position__`, into each member process's queue — this process's too, so
//!   every member gets a group's messages in offset order (`crate::history`). In a switchboard
//!   process's queue the entry names the group, as above, once the group has 32 members or
//!   more.
//! - **Presence**: `PREFIX:presence:NAME` and `…:exp` (`crate::presence`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use switchboard_core::engine::{Demand, Engine, Hasher, Leave, Queue, Receiver};
use switchboard_core::{
    ChannelLayer, ChannelName, GroupName, LayerConfig, LayerError, LayerStats, Message, Position,
    PresenceEntry, Recovery, Result,
};
use tokio::sync::{mpsc, watch};

use crate::codec::Codec;
use crate::config::RedisConfig;
use crate::conn::{self, Guard, Host, Task, supervised, timed, unix_now};
use crate::hash::consistent_hash;
use crate::history::Histories;
use crate::process::ClientId;

mod fanout;
mod members;
mod receive;
mod scripts;
mod upkeep;

/// How long a receive loop that panicked (a bug) waits before it runs again.
const RESTART_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// A channel layer on Redis that Django processes running channels_redis's
/// `RedisChannelLayer` share: same keys, same message bytes, same groups.
///
/// ```no_run
/// use switchboard_core::Layer;
/// use switchboard_redis::{RedisConfig, RedisLayer};
/// # async fn demo() -> switchboard_core::Result<()> {
/// let layer = Layer::new(RedisLayer::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?);
/// layer.group_send("chat_lobby", serde_json::json!({"type": "chat.message", "message": "hi"})).await?;
/// # Ok(()) }
/// ```
///
/// Cheap to clone; clones share connections and local channels. Background tasks (the receive
/// loops, expiry sweeps, health checks) stop when the last clone is dropped or on
/// [`close`](ChannelLayer::close).
#[derive(Clone)]
pub struct RedisLayer {
    inner: Arc<Inner>,
    guard: Arc<Guard>,
}

struct Inner {
    cfg: RedisConfig,
    hosts: Vec<Host>,
    codec: Codec,
    engine: Engine,
    client: ClientId,
    clock: ScoreClock,
    /// Process queues (by non-local name) and their receive loops.
    loops: Mutex<HashMap<String, Arc<Loop>, Hasher>>,
    /// Named channels (`worker.jobs`) this process receives on, and their receive loops.
    named: DashMap<ChannelName, Arc<Loop>, Hasher>,
    shutdown: watch::Receiver<bool>,
    /// The janitor, and the memberships the engine ended, which it takes out of Redis (kept
    /// here, so that a janitor started again finds them).
    janitor: Task,
    leaves: tokio::sync::Mutex<mpsc::UnboundedReceiver<Leave>>,
    /// Per host: the follower of its Sentinel master (started only for hosts behind Sentinel).
    followers: Vec<Task>,
    /// The group histories' keys ([`LayerConfig::group_history`]; one host only).
    histories: Histories,
    /// Per host behind Sentinel: starts new history epochs when its master moves.
    era_watch: Vec<Task>,
    /// Group members, cached per host and kept true by client tracking.
    members: members::Members,
    /// How many members each group with history had at its last send from here (see
    /// `fanout::group_send_history`); at most `fanout::HISTORY_SIZES` groups, emptied when full.
    history_sizes: Mutex<HashMap<String, usize, Hasher>>,
}

/// A receive loop: the receivers it feeds, and whether its task runs.
#[derive(Debug)]
struct Loop {
    demand: Arc<Demand>,
    running: AtomicBool,
}

impl Loop {
    fn new(demand: Demand) -> Arc<Loop> {
        Arc::new(Loop {
            demand: Arc::new(demand),
            running: AtomicBool::new(false),
        })
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

/// Marks a loop as running while it lives: moved into the loop's task, it is dropped when the
/// task ends, panics, is aborted or its runtime shuts down.
struct Running(Arc<Loop>);

impl Running {
    fn new(l: &Arc<Loop>) -> Running {
        l.running.store(true, Ordering::Release);
        Running(l.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// Strictly increasing send times (Unix seconds) for this process, so one sender's messages
/// keep their order in a sorted set even when the wall clock stalls or steps back.
struct ScoreClock(AtomicU64);

impl ScoreClock {
    fn next(&self) -> f64 {
        let now = unix_now();
        let mut last = self.0.load(Ordering::Relaxed);
        loop {
            let score = now.max(f64::from_bits(last) + 1e-6);
            match self.0.compare_exchange_weak(
                last,
                score.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return score,
                Err(seen) => last = seen,
            }
        }
    }
}

impl std::fmt::Debug for RedisLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLayer")
            .field("config", &self.inner.cfg)
            .field("client_id", &self.inner.client.as_str())
            .field("local_channels", &self.inner.engine.channel_count())
            .finish()
    }
}

impl RedisLayer {
    /// Connects to every host and starts the layer's background tasks on the current tokio
    /// runtime. Fails if a host cannot be reached within the timeouts.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisLayer> {
        crate::config::refuse_encrypted_history(&cfg)?;
        if cfg.layer.has_history() && cfg.hosts.len() > 1 {
            return Err(LayerError::Config(
                "group history (LayerConfig::group_history) on RedisLayer needs one host (or \
                 one Sentinel master): a group send with history is one script on one Redis"
                    .into(),
            ));
        }
        let hosts = conn::connect_hosts(&cfg).await?;
        let codec = Codec::core(
            &cfg.symmetric_encryption_keys,
            RedisConfig::ttl_secs(cfg.layer.expiry),
        );
        let (engine, leaves) = Engine::with_leaves(cfg.layer.clone());
        let (tx, rx) = watch::channel(false);
        let followers = hosts.iter().map(|_| Task::new()).collect();
        let era_watch = hosts.iter().map(|_| Task::new()).collect();
        let histories = Histories::new(&cfg.prefix, hosts.len());
        let members = members::Members::new(hosts.len(), cfg.cache_groups);
        let inner = Arc::new(Inner {
            cfg,
            hosts,
            codec,
            engine,
            client: ClientId::marked(),
            clock: ScoreClock(AtomicU64::new(0)),
            loops: Mutex::new(HashMap::default()),
            named: DashMap::default(),
            shutdown: rx,
            janitor: Task::new(),
            leaves: tokio::sync::Mutex::new(leaves),
            followers,
            histories,
            era_watch,
            members,
            history_sizes: Mutex::new(HashMap::default()),
        });
        inner.ensure_tasks();
        Ok(RedisLayer {
            inner,
            guard: Arc::new(Guard(tx)),
        })
    }

    /// The layer's Redis settings.
    pub fn redis_config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// This process's client prefix, in every channel name it hands out: `sb-` and 32 hex
    /// digits (channels_redis's are the 32 hex digits alone). The `sb-` tells other
    /// switchboard processes that this one takes group messages that name the group.
    pub fn client_id(&self) -> &str {
        self.inner.client.as_str()
    }
}

impl Inner {
    /// Checks the layer is open, and starts the background tasks that do not run (at connect;
    /// and again on the caller's runtime after the runtime they ran on ended, see [`Task`]).
    /// Receive loops are started where they are needed ([`ensure_loop`](Inner::ensure_loop)).
    fn open(self: &Arc<Self>) -> Result<()> {
        self.engine.check_open()?;
        self.ensure_tasks();
        Ok(())
    }

    fn ensure_tasks(self: &Arc<Self>) {
        for h in (0..self.hosts.len()).filter(|&h| self.hosts[h].behind_sentinel()) {
            let inner = self.clone();
            self.followers[h].ensure(|| async move {
                conn::follow_master(&inner.hosts[h], inner.shutdown.clone()).await;
            });
            if self.cfg.layer.has_history() {
                let inner = self.clone();
                self.era_watch[h].ensure(|| async move {
                    let shutdown = inner.shutdown.clone();
                    (inner.histories)
                        .follow_failovers(&inner.hosts[h], h, shutdown)
                        .await;
                });
            }
        }
        self.janitor.ensure(|| upkeep::janitor(self.clone()));
    }

    fn host_for(&self, name: &str) -> &Host {
        &self.hosts[consistent_hash(name, self.hosts.len())]
    }

    fn host_index(&self, name: &str) -> usize {
        consistent_hash(name, self.hosts.len())
    }

    /// The host that keeps `group`'s presence: the group's.
    fn presence_host(&self, group: &GroupName) -> &Host {
        self.host_for(group.as_str())
    }

    fn group_key(&self, group: &str) -> String {
        format!("{}:group:{group}", self.cfg.prefix)
    }

    /// Takes `channel` out of `group` in Redis.
    async fn leave_group(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let host = self.host_for(group.as_str());
        conn::remove_member(host, &self.group_key(group.as_str()), channel.as_str()).await
    }

    /// The fan-out, then the back-pressure wait for the local members it left lagging (but
    /// `sender`).
    async fn group_send(
        self: &Arc<Self>,
        sender: Option<&ChannelName>,
        group: &GroupName,
        message: Message,
    ) -> Result<Option<Position>> {
        self.open()?;
        if let Some(history) = self.cfg.layer.history_for(group.as_str())
            && switchboard_core::history::kept_in_history(&message)
        {
            // Every member, this process's too, through Redis: one order for all.
            let send = fanout::group_send_history(self, group, message, history);
            return self.timed(send).await.map(Some);
        }
        let lagging = self.timed(fanout::group_send(self, group, message)).await?;
        self.engine.backpressure(lagging.without(sender)).await;
        Ok(None)
    }

    fn expiry_secs(&self) -> f64 {
        self.cfg.layer.expiry.as_secs_f64()
    }

    fn timed<T>(&self, fut: impl Future<Output = Result<T>>) -> impl Future<Output = Result<T>> {
        let limit = self.cfg.command_timeout;
        async move { timed(limit, fut).await? }
    }

    /// TTL of a queue key: twice `expiry`. A message still lives only `expiry` (every write
    /// trims older ones and receivers drop them), but the key outlives it, so a group send can
    /// see that a member's process stopped reading.
    fn queue_ttl(&self) -> u64 {
        RedisConfig::ttl_secs(self.cfg.layer.expiry).saturating_mul(2)
    }

    /// The queue of one of this process's channels, fed by its process queue's receive loop
    /// (made, and the loop started, if needed).
    fn own_queue(self: &Arc<Self>, channel: &ChannelName) -> Arc<Queue> {
        match self.engine.get(channel.as_str()) {
            Some(q) => q,
            None => {
                let l = self.ensure_loop(channel.non_local_part());
                self.engine.queue_fed_by(channel, &l.demand)
            }
        }
    }

    /// The queue a receive on one of this process's channels takes from, with its process
    /// queue's receive loop running (started, or started again, here).
    fn receive_queue(self: &Arc<Self>, channel: &ChannelName) -> Arc<Queue> {
        let l = self.ensure_loop(channel.non_local_part());
        self.engine.queue_fed_by(channel, &l.demand)
    }

    /// The receive loop of the process queue `non_local`, running: started on first use, and
    /// started again if its task ended for any reason (its runtime went away; a panic is
    /// already caught and restarted by [`supervised`]).
    fn ensure_loop(self: &Arc<Self>, non_local: &str) -> Arc<Loop> {
        let mut loops = self.loops.lock();
        let l = match loops.get(non_local) {
            Some(l) if l.is_running() => return l.clone(),
            Some(l) => {
                tracing::warn!(
                    queue = non_local,
                    "the receive loop had stopped; starting it again"
                );
                l.clone()
            }
            None => {
                // A loop pops only while receivers wait (as channels_redis pops only inside
                // `receive`): a process that stopped receiving leaves its messages in Redis,
                // where senders see its queue fill up and its messages expire.
                let l = Loop::new(Demand::new());
                loops.insert(non_local.to_owned(), l.clone());
                l
            }
        };
        let running = Running::new(&l);
        let (inner, non_local, demand) = (self.clone(), non_local.to_owned(), l.demand.clone());
        tokio::spawn(async move {
            let _running = running;
            let shutdown = inner.shutdown.clone();
            supervised(&non_local, shutdown, RESTART_PAUSE, || {
                receive::process_loop(inner.clone(), non_local.clone(), demand.clone())
            })
            .await;
        });
        l
    }

    /// A receiver on a named channel, with its receive loops running (one per host:
    /// channels_redis spreads a named channel's messages over its hosts in turn).
    fn named_receiver(self: &Arc<Self>, channel: &ChannelName) -> Receiver {
        let l = {
            // Held across the check, so concurrent receivers start the loops once.
            let entry = self
                .named
                .entry(channel.clone())
                .or_insert_with(|| Loop::new(Demand::per_receiver()));
            if !entry.is_running() {
                self.start_named(channel, &entry);
            }
            entry.clone()
        };
        let queue = self.engine.queue_fed_by(channel, &l.demand);
        self.engine.receiver(queue)
    }

    fn start_named(self: &Arc<Self>, channel: &ChannelName, l: &Arc<Loop>) {
        let running = Running::new(l);
        let (inner, channel, demand) = (self.clone(), channel.clone(), l.demand.clone());
        tokio::spawn(async move {
            let _running = running;
            let shutdown = inner.shutdown.clone();
            supervised(channel.as_str(), shutdown, RESTART_PAUSE, || {
                let loops: Vec<_> = (0..inner.hosts.len())
                    .map(|h| receive::named_loop(inner.clone(), channel.clone(), h, demand.clone()))
                    .collect();
                async move {
                    futures_util::future::join_all(loops).await;
                }
            })
            .await;
        });
    }
}

#[async_trait]
impl ChannelLayer for RedisLayer {
    fn config(&self) -> &LayerConfig {
        &self.inner.cfg.layer
    }

    async fn new_channel(&self, prefix: &str) -> Result<ChannelName> {
        let inner = &self.inner;
        inner.open()?;
        let name = inner.client.new_name(prefix)?;
        inner.own_queue(&name);
        Ok(name)
    }

    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        if inner.client.owns(channel.as_str()) {
            return inner.engine.send(&inner.own_queue(channel), message);
        }
        inner
            .timed(fanout::send_remote(inner, channel, message))
            .await
    }

    async fn receive(&self, channel: &ChannelName) -> Result<Message> {
        let inner = &self.inner;
        inner.open()?;
        if inner.client.owns(channel.as_str()) {
            return inner.engine.receive(&inner.receive_queue(channel)).await;
        }
        self.receiver(channel).await?.recv().await
    }

    async fn receiver(&self, channel: &ChannelName) -> Result<Receiver> {
        let inner = &self.inner;
        inner.open()?;
        if inner.client.owns(channel.as_str()) {
            return Ok(inner.engine.receiver(inner.receive_queue(channel)));
        }
        if channel.is_process_local() {
            return Err(LayerError::Unsupported(format!(
                "channel {channel} belongs to another process; only the process that made it can receive on it"
            )));
        }
        Ok(inner.named_receiver(channel))
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        let ttl = RedisConfig::ttl_secs(inner.cfg.layer.group_expiry);
        inner
            .timed(conn::add_member(
                inner.host_for(group.as_str()),
                &inner.group_key(group.as_str()),
                channel.as_str(),
                unix_now(),
                ttl,
            ))
            .await?;
        if inner.client.owns(channel.as_str()) {
            inner.engine.group_add(group, &inner.own_queue(channel));
        }
        Ok(())
    }

    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        inner.timed(inner.leave_group(group, channel)).await?;
        inner.engine.group_discard(group, channel);
        Ok(())
    }

    async fn group_send(&self, group: &GroupName, message: Message) -> Result<()> {
        self.inner.group_send(None, group, message).await.map(drop)
    }

    async fn group_send_positioned(
        &self,
        group: &GroupName,
        message: Message,
    ) -> Result<Option<Position>> {
        self.inner.group_send(None, group, message).await
    }

    async fn history(&self, group: &GroupName, since: Option<&Position>) -> Result<Recovery> {
        let inner = &self.inner;
        inner.open()?;
        let history = inner.cfg.layer.history_of(group)?;
        let (host, codec, g) = (inner.host_for(group.as_str()), &inner.codec, group.as_str());
        let read = inner.histories.history(host, 0, codec, g, since, history);
        inner.timed(read).await
    }

    async fn history_clear(&self, group: &GroupName) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        inner.cfg.layer.history_of(group)?;
        let host = inner.host_for(group.as_str());
        inner
            .timed(inner.histories.clear(host, group.as_str()))
            .await
    }

    async fn group_add_since(
        &self,
        group: &GroupName,
        channel: &ChannelName,
        since: Option<&Position>,
    ) -> Result<Recovery> {
        let inner = &self.inner;
        let history = inner.cfg.layer.history_of(group)?;
        // A member first: the group send's script, which reads the members, reaches it from
        // now on; what came before is in the history read next.
        self.group_add(group, channel).await?;
        let read = inner.histories.since(
            inner.host_for(group.as_str()),
            0,
            &inner.codec,
            group.as_str(),
            since,
            history,
        );
        inner.timed(read).await
    }

    async fn group_send_from(
        &self,
        sender: &ChannelName,
        group: &GroupName,
        message: Message,
    ) -> Result<()> {
        self.inner
            .group_send(Some(sender), group, message)
            .await
            .map(drop)
    }

    async fn group_channels(&self, group: &GroupName) -> Result<Vec<ChannelName>> {
        let inner = &self.inner;
        inner.open()?;
        let cutoff = unix_now() - inner.cfg.layer.group_expiry.as_secs_f64();
        inner
            .timed(conn::members_since(
                inner.host_for(group.as_str()),
                &inner.group_key(group.as_str()),
                cutoff,
            ))
            .await
    }

    async fn discard_channel(&self, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        if !inner.client.owns(channel.as_str()) {
            return Ok(());
        }
        let mut first_error = None;
        for group in inner.engine.discard(channel) {
            if let Err(e) = inner.timed(inner.leave_group(&group, channel)).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        let pattern = format!("{}*", conn::glob_escape(&inner.cfg.prefix));
        for host in &inner.hosts {
            inner.timed(conn::delete_matching(host, &pattern)).await?;
        }
        inner.engine.flush();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.engine.close();
        let _ = self.guard.0.send(true);
        let inner = &self.inner;
        let marker = conn::marker_key(&inner.cfg.prefix, inner.client.as_str());
        for host in &inner.hosts {
            conn::clear_marker(host, &marker, inner.cfg.command_timeout).await;
        }
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        self.inner.open()?;
        for host in &self.inner.hosts {
            conn::ping(host).await?;
        }
        Ok(())
    }

    fn stats(&self) -> LayerStats {
        self.inner.engine.stats()
    }

    async fn presence_add(&self, group: &GroupName, entry: &PresenceEntry) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        crate::presence::on_host::add(inner.presence_host(group), &inner.cfg, group, entry).await
    }

    async fn presence_remove(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        let host = inner.presence_host(group);
        crate::presence::on_host::remove(host, &inner.cfg, group, channel).await
    }

    async fn presence(&self, group: &GroupName) -> Result<Vec<PresenceEntry>> {
        let inner = &self.inner;
        inner.open()?;
        crate::presence::on_host::list(inner.presence_host(group), &inner.cfg, group).await
    }

    async fn presence_count(&self, group: &GroupName) -> Result<usize> {
        let inner = &self.inner;
        inner.open()?;
        crate::presence::on_host::count(inner.presence_host(group), &inner.cfg, group).await
    }
}
