//! [`RedisLayer`]: channels_redis's `RedisChannelLayer`, on the same keys and bytes.
//!
//! # What is in Redis (exactly as channels_redis keeps it)
//!
//! - A channel's queue is the sorted set `PREFIX + channel` (`asgiworker.jobs`) scored by send
//!   time (Unix seconds, float). Process-local channels `specific.<client>!<id>` share one queue
//!   per process, keyed by the part up to the `!`: `asgispecific.<client>!`. Members are 12 random
//!   bytes followed by the msgpack message; a process-local message carries
//!   `__asgi_channel__` naming its channel (or, from a group send, the list of the group's
//!   channels in that process).
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
//!   local queue (only the group's member list is read from Redis). Nobody else could receive
//!   them, so nothing on the wire changes; what a Django process sends still arrives through
//!   Redis. Named channels always go through Redis: other processes read them too.
//! - **One round trip per send** (a Lua script run by `EVALSHA`: expire, count, add, set the key's
//!   TTL) and two per group send (read the members; one script per host writes one message per
//!   process queue, skipping full queues, as channels_redis's script does).
//!
//! # Better than channels_redis, same wire
//!
//! - Messages older than `expiry` are dropped on receive (channels_redis delivers them).
//! - A group send that finds expired messages in a member's queue — its process stopped reading
//!   or died — takes that queue's channels out of the group (channels_redis keeps them for a day
//!   and writes every group message to them). See [`RedisConfig::drop_stalled_members`].
//! - A channel whose messages expire here leaves the groups this process added it to.
//! - Several hosts: `send` and `receive` pick a process queue's host by the same hash
//!   (channels_redis hashes the full name on send and the non-local name on receive, so its
//!   sends can land where nobody reads: django/channels_redis#221).
//! - After Redis comes back (a restart, a failover), the memberships this process added are
//!   written again, with their original join times.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{Script, Value as RValue};
use switchboard_core::message::MessageError;
use switchboard_core::{
    ChannelLayer, ChannelName, Error, GroupName, LayerConfig, LayerStats, Message, Result,
};
use tokio::sync::{mpsc, watch};

use crate::codec::{Codec, Route, RouteRef};
use crate::config::RedisConfig;
use crate::conn::{self, Guard, Host, Retry, supervised, timed, unix_now};
use crate::hash::consistent_hash;
use crate::local::{Demand, Leave, Local, Pushed, Queue, Running, Waiting};

/// `send`: drop expired messages, refuse when full, add, refresh the key's TTL.
/// KEYS: queue. ARGV: score, message, capacity, expiry cutoff, TTL. Returns 1 if queued.
static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// `group_send` for the process queues on one host: channels_redis's script, plus the
/// expired-message check. KEYS: queues. ARGV: one message per queue, one capacity per queue,
/// score, expiry cutoff, TTL, whether to report stalled queues. Returns {full indexes, stalled
/// indexes}; stalled queues get nothing.
static GROUP_SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = #KEYS
local score, cutoff, ttl = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local check_stalled = ARGV[2 * n + 4] == '1'
local full, stalled = {}, {}
for i = 1, n do
    local removed = redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', cutoff)
    if check_stalled and removed > 0 then
        stalled[#stalled + 1] = i
    elseif redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], score, ARGV[i])
        redis.call('EXPIRE', KEYS[i], ttl)
    else
        full[#full + 1] = i
    end
end
return {full, stalled}
",
    )
});

/// channels_redis's in-flight backup: put messages a crashed receiver had popped back in the
/// queue. KEYS: queue, backup.
static RESTORE_INFLIGHT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
",
    )
});

/// Messages taken per `ZPOPMIN` when draining a burst.
const DRAIN_BATCH: usize = 512;

/// How long a receive loop that panicked (a bug) waits before it runs again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

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
/// loop, expiry sweeps, health checks) stop when the last clone is dropped or on
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
    local: Local,
    clock: ScoreClock,
    /// Process queues (by non-local name) whose receive loop was started, and how many
    /// receives wait on their channels.
    loops: Mutex<HashMap<String, Arc<Demand>>>,
    /// Receivers on channels that are not process-local (`worker.jobs`), and their loops.
    normal: DashMap<ChannelName, Arc<Demand>>,
    shutdown: watch::Receiver<bool>,
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
            .field("client_id", &self.inner.local.client_id())
            .field("local_channels", &self.inner.local.len())
            .finish()
    }
}

impl RedisLayer {
    /// Connects to every host and starts the layer's background tasks on the current tokio
    /// runtime. Fails if a host cannot be reached within the timeouts.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisLayer> {
        let hosts = conn::connect_hosts(&cfg).await?;
        let codec = Codec::core(
            &cfg.symmetric_encryption_keys,
            RedisConfig::ttl_secs(cfg.layer.expiry),
        );
        let (local, leave_rx) = Local::new(cfg.layer.clone());
        let (tx, rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            cfg,
            hosts,
            codec,
            local,
            clock: ScoreClock(AtomicU64::new(0)),
            loops: Mutex::new(Default::default()),
            normal: DashMap::new(),
            shutdown: rx,
        });
        tokio::spawn(janitor(inner.clone(), leave_rx));
        Ok(RedisLayer {
            inner,
            guard: Arc::new(Guard(tx)),
        })
    }

    /// The layer's Redis settings.
    pub fn redis_config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// This process's client prefix: the 32 hex digits in every channel name it hands out.
    pub fn client_id(&self) -> &str {
        self.inner.local.client_id()
    }
}

impl Inner {
    fn host_for(&self, name: &str) -> &Host {
        &self.hosts[consistent_hash(name, self.hosts.len())]
    }

    fn host_index(&self, name: &str) -> usize {
        consistent_hash(name, self.hosts.len())
    }

    fn group_key(&self, group: &str) -> String {
        format!("{}:group:{group}", self.cfg.prefix)
    }

    /// Takes `channel` out of `group` in Redis.
    async fn leave_group(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let host = self.host_for(group.as_str());
        conn::remove_member(host, &self.group_key(group.as_str()), channel.as_str()).await
    }

    fn expiry_secs(&self) -> f64 {
        self.cfg.layer.expiry.as_secs_f64()
    }

    fn timed<T>(&self, fut: impl Future<Output = Result<T>>) -> impl Future<Output = Result<T>> {
        let limit = self.cfg.command_timeout;
        async move { timed(limit, fut).await? }
    }

    /// The demand of the process queue `non_local`, with its receive loop running: started on
    /// first use, and started again if its task ended for any reason (its runtime went away;
    /// a panic is already caught and restarted by [`supervised`]).
    fn ensure_loop(self: &Arc<Self>, non_local: &str) -> Arc<Demand> {
        let mut loops = self.loops.lock();
        let demand = match loops.get(non_local) {
            Some(d) if d.is_running() => return d.clone(),
            Some(d) => {
                tracing::warn!(
                    queue = non_local,
                    "the receive loop had stopped; starting it again"
                );
                d.clone()
            }
            None => {
                // A loop pops only while receives wait (as channels_redis pops only inside
                // `receive`): a process that stopped receiving leaves its messages in Redis,
                // where senders see its queue fill up and its messages expire.
                let d = Arc::new(Demand::default());
                loops.insert(non_local.to_owned(), d.clone());
                d
            }
        };
        let running = Running::new(&demand);
        let (inner, non_local, d) = (self.clone(), non_local.to_owned(), demand.clone());
        tokio::spawn(async move {
            let _running = running;
            let shutdown = inner.shutdown.clone();
            supervised(&non_local, shutdown, RESTART_PAUSE, || {
                process_loop(inner.clone(), non_local.clone(), d.clone())
            })
            .await;
        });
        demand
    }

    /// Starts the receive loops of a named channel: one per host (channels_redis spreads a
    /// named channel's messages over its hosts in turn), all in one task.
    fn start_normal(self: &Arc<Self>, channel: &ChannelName, demand: &Arc<Demand>) {
        let running = Running::new(demand);
        let (inner, channel, demand) = (self.clone(), channel.clone(), demand.clone());
        tokio::spawn(async move {
            let _running = running;
            let shutdown = inner.shutdown.clone();
            supervised(channel.as_str(), shutdown, RESTART_PAUSE, || {
                let loops: Vec<_> = (0..inner.hosts.len())
                    .map(|h| normal_loop(inner.clone(), channel.clone(), h, demand.clone()))
                    .collect();
                async move {
                    futures_util::future::join_all(loops).await;
                }
            })
            .await;
        });
    }

    /// TTL of a queue key: twice `expiry`. A message still lives only `expiry` (every write
    /// trims older ones and receivers drop them), but the key outlives it, so a group send can
    /// see that a member's process stopped reading.
    fn queue_ttl(&self) -> u64 {
        2 * RedisConfig::ttl_secs(self.cfg.layer.expiry)
    }

    /// Hands a popped message to the local channel(s) it names, or to `normal`, the named
    /// channel it was popped from. With `wanted_by`, a named channel's message is queued only
    /// while more receives wait than the channel holds: returns `false` if it was not (it
    /// belongs back in Redis).
    fn deliver(
        &self,
        queue_key: &str,
        member: &[u8],
        score: f64,
        normal: Option<&Queue>,
        wanted_by: Option<&Demand>,
    ) -> bool {
        let (message, route) = match self.codec.decode(member) {
            Ok(d) => d,
            Err(e) => {
                self.local
                    .counters
                    .undecodable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = queue_key, error = %e, "skipping a message that does not decode");
                return true;
            }
        };
        let age = conn::age(score, unix_now());
        if age >= self.cfg.layer.expiry {
            self.local.counters.expired.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                key = queue_key,
                ?age,
                "dropping a message older than expiry"
            );
            return true;
        }
        let now = Instant::now();
        let deadline = self.local.deadline(now, age);
        if let Some(queue) = normal {
            let pushed = match wanted_by {
                Some(demand) => self
                    .local
                    .push_wanted(queue, message, now, deadline, demand),
                None => self.local.push(queue, message, now, deadline, false),
            };
            match pushed {
                Pushed::Full => {
                    self.local
                        .counters
                        .direct_full_drops
                        .fetch_add(1, Ordering::Relaxed);
                }
                Pushed::Unwanted => return false,
                Pushed::Queued | Pushed::Left | Pushed::NotMember => {}
            }
            return true;
        }
        // A process queue's message names channels of this process; a name that is not one
        // (a named channel this process also receives on) must not be fed from here.
        let own = |channel: &str| {
            self.local
                .is_own(channel)
                .then(|| self.local.get(channel))?
        };
        match route {
            Route::One(channel) => match own(&channel) {
                Some(q) => {
                    if self.local.push(&q, message, now, deadline, false) == Pushed::Full {
                        self.local
                            .counters
                            .direct_full_drops
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%channel, "local queue full; message from another process dropped");
                    }
                }
                None => {
                    tracing::debug!(%channel, "message for a channel this process no longer has")
                }
            },
            Route::Many(channels) => {
                for channel in channels {
                    if let Some(q) = own(&channel) {
                        self.local.push(&q, message.clone(), now, deadline, true);
                    }
                }
            }
            Route::Unrouted => {
                tracing::debug!(
                    key = queue_key,
                    "process-queue message without __asgi_channel__ skipped"
                );
            }
        }
        true
    }

    /// Writes again, with their original join times, the memberships this process added that
    /// Redis lost (a restart without persistence, a failover to a lagging replica).
    async fn reassert_memberships(&self, host_index: Option<usize>) {
        let cutoff = unix_now() - self.cfg.layer.group_expiry.as_secs_f64();
        let ttl = RedisConfig::ttl_secs(self.cfg.layer.group_expiry);
        let mut per_host: HashMap<usize, redis::Pipeline> = HashMap::new();
        for (channel, m) in self.local.all_memberships() {
            let h = self.host_index(m.group.as_str());
            if m.joined <= cutoff || host_index.is_some_and(|i| i != h) {
                continue;
            }
            let key = self.group_key(m.group.as_str());
            per_host
                .entry(h)
                .or_insert_with(redis::pipe)
                .cmd("ZADD")
                .arg(&key)
                .arg("NX")
                .arg(m.joined)
                .arg(channel.as_str())
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore();
        }
        for (h, pipe) in per_host {
            let host = &self.hosts[h];
            let mut c = host.conn();
            match pipe.query_async::<()>(&mut c).await {
                Ok(()) => {
                    tracing::info!(host = %host.name, "group memberships of this process written again")
                }
                Err(e) => {
                    tracing::warn!(host = %host.name, error = %e, "could not write group memberships again")
                }
            }
        }
    }

    async fn leave_groups(&self, leave: Leave) {
        for m in leave.groups {
            if let Err(e) = self.leave_group(&m.group, &leave.channel).await {
                tracing::warn!(channel = %leave.channel, group = %m.group, error = %e, "could not take an expired channel out of its group");
            }
        }
    }

    async fn send_remote(&self, channel: &ChannelName, message: Message) -> Result<()> {
        let fields = Codec::fields(&message).map_err(|e| MessageError::Serialize(e.0))?;
        let (key, host, route) = if channel.is_process_local() {
            let nl = channel.non_local_part();
            (
                format!("{}{nl}", self.cfg.prefix),
                self.host_for(nl),
                RouteRef::One(channel.as_str()),
            )
        } else {
            (
                format!("{}{channel}", self.cfg.prefix),
                self.host_for(channel.as_str()),
                RouteRef::Unrouted,
            )
        };
        let payload = self
            .codec
            .encode(&fields, &route)
            .map_err(|e| MessageError::Serialize(e.0))?;
        let capacity = self.cfg.layer.capacity_for(channel.as_str());
        let score = self.clock.next();
        let mut c = host.conn();
        let queued: i64 = SEND
            .key(&key)
            .arg(score)
            .arg(payload)
            .arg(capacity)
            .arg(score - self.expiry_secs())
            .arg(self.queue_ttl())
            .invoke_async(&mut c)
            .await
            .map_err(|e| host.error(e))?;
        if queued == 1 {
            Ok(())
        } else {
            Err(Error::ChannelFull {
                channel: channel.to_string(),
                capacity,
            })
        }
    }

    async fn receive_normal(self: &Arc<Self>, channel: &ChannelName) -> Result<Message> {
        let queue = self.local.register(channel, None);
        let demand = {
            // Held across the check, so concurrent receives start the loops once.
            let entry = self.normal.entry(channel.clone()).or_default();
            if !entry.is_running() {
                self.start_normal(channel, &entry);
            }
            entry.clone()
        };
        let _waiting = Waiting::new(&demand);
        // This loop pops one message per waiting receive, so every new receive must wake it.
        demand.wake.notify_waiters();
        self.local.receive(&queue).await
    }
}

/// The receive loop of one process queue: pops into the local channels while receives wait.
async fn process_loop(inner: Arc<Inner>, non_local: String, demand: Arc<Demand>) {
    let key = format!("{}{non_local}", inner.cfg.prefix);
    let host = inner.host_for(&non_local);
    receive_loop(&inner, &key, host, &demand, None).await;
}

/// Connects to `host` and pops from `key` (with [`pop_forever`]) until shutdown, reconnecting
/// after every failure. Every way an attempt can fail ends in one place and waits before the
/// next try: a host that accepts connections but refuses the commands must not be retried in a
/// hot loop. `named` is the local queue of a named channel; without it, `key` is this process's
/// queue, and after an outage the process writes its memberships again.
async fn receive_loop(
    inner: &Arc<Inner>,
    key: &str,
    host: &Host,
    demand: &Demand,
    named: Option<&Queue>,
) {
    let backup = format!("{key}$inflight");
    let mut shutdown = inner.shutdown.clone();
    let mut retry = Retry::new();
    let mut was_down = false;
    loop {
        let failure = 'attempt: {
            let conn = tokio::select! {
                _ = shutdown.changed() => return,
                c = conn::blocking_connection(host, &inner.cfg) => c,
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => break 'attempt format!("connecting: {e}"),
            };
            let r: redis::RedisResult<()> = RESTORE_INFLIGHT
                .key(key)
                .key(&backup)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = r {
                break 'attempt format!("restoring the in-flight backup: {e}");
            }
            if was_down {
                tracing::info!(host = %host.name, key, "receive loop reconnected to redis");
                if named.is_none() {
                    inner.reassert_memberships(None).await;
                }
            }
            match pop_forever(
                inner,
                key,
                &mut conn,
                &mut shutdown,
                demand,
                named,
                &mut retry,
            )
            .await
            {
                Ok(()) | Err(PopEnd::Shutdown) => return,
                Err(PopEnd::Redis(e)) => e,
            }
        };
        was_down = true;
        let failed = retry.failed(Instant::now());
        if let Some(failures) = failed.warn {
            tracing::warn!(host = %host.name, key, error = %failure, failures, retry_in = ?failed.wait, "receive loop: redis failed; retrying");
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(failed.wait) => {}
        }
    }
}

enum PopEnd {
    Shutdown,
    Redis(String),
}

/// Pops from `key` while receives wait, until an error or shutdown. A process queue is drained
/// in bursts; a `normal` channel (shared with other processes) gets one message per waiting
/// receiver, and what it pops beyond that goes back to Redis. Each answered pop counts as a
/// success for `retry`.
async fn pop_forever(
    inner: &Inner,
    key: &str,
    conn: &mut MultiplexedConnection,
    shutdown: &mut watch::Receiver<bool>,
    demand: &Demand,
    normal: Option<&Queue>,
    retry: &mut Retry,
) -> std::result::Result<(), PopEnd> {
    let bzmpop = server_major_version(conn).await >= 7;
    let block = inner.cfg.blocking_timeout.as_secs().max(1);
    // Our own limit on a blocking pop: a little longer than the pop's own timeout, so a dead
    // TCP peer is noticed.
    let limit = inner.cfg.blocking_timeout + Duration::from_secs(5);
    loop {
        loop {
            let wake = demand.wake.notified();
            let waiting = demand.waiters.load(Ordering::Relaxed);
            // A normal channel pops only for receivers not served yet, so other processes
            // reading the same channel get their share.
            if waiting > normal.map_or(0, Queue::len) {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => return Err(PopEnd::Shutdown),
                () = wake => {}
            }
        }
        // Redis 7 pops a burst in one blocking call; older servers pop one, then drain.
        let pop = if bzmpop {
            let count = match normal {
                Some(q) => demand
                    .waiters
                    .load(Ordering::Relaxed)
                    .saturating_sub(q.len())
                    .max(1),
                None => DRAIN_BATCH,
            };
            let mut c = redis::cmd("BZMPOP");
            c.arg(block)
                .arg(1)
                .arg(key)
                .arg("MIN")
                .arg("COUNT")
                .arg(count);
            c
        } else {
            let mut c = redis::cmd("BZPOPMIN");
            c.arg(key).arg(block);
            c
        };
        let popped = tokio::select! {
            _ = shutdown.changed() => return Err(PopEnd::Shutdown),
            r = tokio::time::timeout(limit, pop.query_async::<RValue>(conn)) => r,
        };
        let value = match popped {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(PopEnd::Redis(e.to_string())),
            Err(_) => {
                return Err(PopEnd::Redis(format!(
                    "no answer to a blocking pop within {limit:?}"
                )));
            }
        };
        let failures = retry.succeeded();
        if failures > 0 {
            tracing::info!(key, failures, "receive loop pops again");
        }
        let RValue::Array(items) = value else {
            continue; // timed out: nothing arrived
        };
        if let Some(queue) = normal {
            // [key, [[member, score], ...]] (BZMPOP) or [key, member, score] (BZPOPMIN)
            let pairs: Vec<(&[u8], f64)> = match &items[..] {
                [_, RValue::Array(popped)] => popped
                    .iter()
                    .filter_map(|pair| match pair {
                        RValue::Array(pair) => match &pair[..] {
                            [member, score] => popped_pair(member, score),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect(),
                [_, member, score] => popped_pair(member, score).into_iter().collect(),
                _ => Vec::new(),
            };
            let unwanted: Vec<(&[u8], f64)> = pairs
                .into_iter()
                .filter(|&(member, score)| {
                    !inner.deliver(key, member, score, Some(queue), Some(demand))
                })
                .collect();
            give_back(inner, key, conn, queue, &unwanted).await?;
            continue;
        }
        if bzmpop {
            if let Some(RValue::Array(popped)) = items.get(1) {
                for pair in popped {
                    if let RValue::Array(pair) = pair
                        && let [member, score] = &pair[..]
                        && let Some((member, score)) = popped_pair(member, score)
                    {
                        inner.deliver(key, member, score, None, None);
                    }
                }
            }
            continue;
        }
        if let [_, member, score] = &items[..]
            && let Some((member, score)) = popped_pair(member, score)
        {
            inner.deliver(key, member, score, None, None);
        }
        // Drain a burst without blocking.
        loop {
            let batch: RValue = redis::cmd("ZPOPMIN")
                .arg(key)
                .arg(DRAIN_BATCH)
                .query_async(conn)
                .await
                .map_err(|e| PopEnd::Redis(e.to_string()))?;
            let RValue::Array(items) = batch else { break };
            let n = items.len() / 2;
            for pair in items.chunks_exact(2) {
                if let Some((member, score)) = popped_pair(&pair[0], &pair[1]) {
                    inner.deliver(key, member, score, None, None);
                }
            }
            if n < DRAIN_BATCH {
                break;
            }
        }
    }
}

/// Puts messages a named channel's loop popped beyond its waiting receives back in Redis,
/// with their scores, for the other processes reading the channel. If Redis does not take
/// them, they are queued here after all (nothing is lost) and the loop reconnects.
async fn give_back(
    inner: &Inner,
    key: &str,
    conn: &mut MultiplexedConnection,
    queue: &Queue,
    unwanted: &[(&[u8], f64)],
) -> std::result::Result<(), PopEnd> {
    if unwanted.is_empty() {
        return Ok(());
    }
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(key);
    for &(member, score) in unwanted {
        zadd.arg(score).arg(member);
    }
    let r: redis::RedisResult<()> = redis::pipe()
        .add_command(zadd)
        .ignore()
        .cmd("EXPIRE")
        .arg(key)
        .arg(inner.queue_ttl())
        .ignore()
        .query_async(conn)
        .await;
    if let Err(e) = r {
        for &(member, score) in unwanted {
            inner.deliver(key, member, score, Some(queue), None);
        }
        return Err(PopEnd::Redis(format!(
            "putting back messages nobody here waits for: {e}"
        )));
    }
    tracing::trace!(
        key,
        n = unwanted.len(),
        "put back messages nobody here waits for"
    );
    Ok(())
}

/// The server's major version (0 if unknown).
async fn server_major_version(conn: &mut MultiplexedConnection) -> u32 {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A popped member and its score (send time, Unix seconds; now if unreadable).
fn popped_pair<'a>(member: &'a RValue, score: &RValue) -> Option<(&'a [u8], f64)> {
    let member = match member {
        RValue::BulkString(b) => &b[..],
        _ => return None,
    };
    let score = match score {
        RValue::BulkString(s) => std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(unix_now),
        RValue::Double(d) => *d,
        RValue::Int(i) => *i as f64,
        _ => unix_now(),
    };
    Some((member, score))
}

/// Receives on a channel that is not process-local, from one host, while receivers wait.
async fn normal_loop(
    inner: Arc<Inner>,
    channel: ChannelName,
    host_index: usize,
    demand: Arc<Demand>,
) {
    let key = format!("{}{channel}", inner.cfg.prefix);
    let queue = inner.local.register(&channel, None);
    receive_loop(
        &inner,
        &key,
        &inner.hosts[host_index],
        &demand,
        Some(&queue),
    )
    .await;
}

/// Background upkeep: channels whose messages expired leave their groups; expired messages
/// of untouched channels are swept; a host that reconnected gets this process's memberships
/// back.
async fn janitor(inner: Arc<Inner>, mut leave_rx: mpsc::UnboundedReceiver<Leave>) {
    let mut shutdown = inner.shutdown.clone();
    let sweep_every =
        (inner.cfg.layer.expiry / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = tokio::time::interval(Duration::from_millis(10));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut health = tokio::time::interval(Duration::from_secs(1));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client_ids: Vec<Option<i64>> = vec![None; inner.hosts.len()];
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(leave) = leave_rx.recv() => inner.leave_groups(leave).await,
            _ = sweep.tick() => inner.local.sweep(),
            t = clock.tick() => inner.local.tick(t.into_std()),
            _ = health.tick() => {
                for (i, host) in inner.hosts.iter().enumerate() {
                    let mut c = host.conn();
                    let id = tokio::time::timeout(
                        inner.cfg.command_timeout,
                        redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut c),
                    )
                    .await;
                    match id {
                        Ok(Ok(id)) => {
                            if client_ids[i].is_some_and(|old| old != id) {
                                // A new connection: Redis may have restarted empty.
                                inner.reassert_memberships(Some(i)).await;
                            }
                            client_ids[i] = Some(id);
                        }
                        _ => {
                            if client_ids[i].is_some() {
                                tracing::warn!(host = %host.name, "redis does not answer");
                            }
                            // Keep the last id: a changed id after the outage triggers the rewrite.
                        }
                    }
                }
            }
        }
    }
}

fn indexes(value: Option<&RValue>) -> Vec<usize> {
    match value {
        Some(RValue::Array(items)) => items
            .iter()
            .filter_map(|v| match v {
                RValue::Int(i) => usize::try_from(*i).ok().and_then(|i| i.checked_sub(1)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[async_trait]
impl ChannelLayer for RedisLayer {
    fn config(&self) -> &LayerConfig {
        &self.inner.cfg.layer
    }

    async fn new_channel(&self, prefix: &str) -> Result<ChannelName> {
        self.inner.local.check_open()?;
        let name = self.inner.local.new_name(prefix)?;
        let demand = self.inner.ensure_loop(name.non_local_part());
        self.inner.local.register(&name, Some(&demand));
        Ok(name)
    }

    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()> {
        let inner = &self.inner;
        inner.local.check_open()?;
        if inner.local.is_own(channel.as_str()) {
            return inner.local.send_own(channel, message);
        }
        inner.timed(inner.send_remote(channel, message)).await
    }

    async fn receive(&self, channel: &ChannelName) -> Result<Message> {
        let inner = &self.inner;
        inner.local.check_open()?;
        if inner.local.is_own(channel.as_str()) {
            let queue = match inner.local.get(channel.as_str()) {
                Some(q) if q.demand.as_ref().is_some_and(|d| d.is_running()) => q,
                _ => {
                    let demand = inner.ensure_loop(channel.non_local_part());
                    inner.local.register(channel, Some(&demand))
                }
            };
            return inner.local.receive(&queue).await;
        }
        if channel.is_process_local() {
            return Err(Error::Protocol(format!(
                "channel {channel} belongs to another process; only the process that made it can receive on it"
            )));
        }
        inner.receive_normal(channel).await
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.local.check_open()?;
        let joined = unix_now();
        let ttl = RedisConfig::ttl_secs(inner.cfg.layer.group_expiry);
        inner
            .timed(conn::add_member(
                inner.host_for(group.as_str()),
                &inner.group_key(group.as_str()),
                channel.as_str(),
                joined,
                ttl,
            ))
            .await?;
        if inner.local.is_own(channel.as_str())
            && let Some(q) = inner.local.get(channel.as_str())
        {
            inner.local.track(&q, group, joined);
        }
        Ok(())
    }

    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.local.check_open()?;
        inner.timed(inner.leave_group(group, channel)).await?;
        if let Some(q) = inner.local.get(channel.as_str()) {
            inner.local.untrack(&q, group);
        }
        Ok(())
    }

    async fn group_send(&self, group: &GroupName, message: Message) -> Result<()> {
        let inner = &self.inner;
        inner.local.check_open()?;
        inner.timed(group_send(inner, group, message)).await
    }

    async fn group_channels(&self, group: &GroupName) -> Result<Vec<ChannelName>> {
        let inner = &self.inner;
        inner.local.check_open()?;
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
        if !inner.local.is_own(channel.as_str()) {
            return Ok(());
        }
        let groups = inner.local.remove(channel);
        let mut first_error = None;
        for m in groups {
            if let Err(e) = inner.timed(inner.leave_group(&m.group, channel)).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        inner.local.check_open()?;
        let pattern = format!("{}*", conn::glob_escape(&inner.cfg.prefix));
        for host in &inner.hosts {
            inner.timed(conn::delete_matching(host, &pattern)).await?;
        }
        inner.local.clear();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.local.close();
        let _ = self.guard.0.send(true);
        Ok(())
    }

    fn stats(&self) -> LayerStats {
        let local = &self.inner.local;
        local.stats(local.group_count())
    }
}

async fn group_send(inner: &Inner, group: &GroupName, message: Message) -> Result<()> {
    let gkey = inner.group_key(group.as_str());
    let ghost = inner.host_for(group.as_str());
    let score = inner.clock.next();
    let group_cutoff = score - inner.cfg.layer.group_expiry.as_secs_f64();
    let mut c = ghost.conn();
    let (members,): (Vec<Vec<u8>>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&gkey)
        .arg("-inf")
        .arg(group_cutoff)
        .ignore()
        .cmd("ZRANGE")
        .arg(&gkey)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .map_err(|e| ghost.error(e))?;
    if members.is_empty() {
        return Ok(());
    }

    // Members in this process get the message directly; the others are grouped by the process
    // queue they share, and each queue gets one copy naming its channels.
    let now = Instant::now();
    let deadline = inner.local.deadline(now, Duration::ZERO);
    let mut gone: Vec<&str> = Vec::new();
    let mut queues: Vec<(String, usize, usize, Vec<&str>)> = Vec::new(); // key, host, capacity, channels
    let mut index: HashMap<&str, usize> = HashMap::new();
    for m in &members {
        let Ok(name) = std::str::from_utf8(m) else {
            continue;
        };
        // Only this process's own channels skip Redis. A named channel (`worker.jobs`) this
        // process received on is also in `local`, but other processes read it too: its
        // message goes to its Redis queue.
        if inner.local.is_own(name) {
            match inner.local.get(name) {
                Some(q) => {
                    inner.local.push(&q, message.clone(), now, deadline, true);
                }
                None => gone.push(name),
            }
            continue;
        }
        let non_local = match name.find('!') {
            Some(i) => &name[..=i],
            None => name,
        };
        match index.get(non_local) {
            Some(&i) => queues[i].3.push(name),
            None => {
                index.insert(non_local, queues.len());
                queues.push((
                    format!("{}{non_local}", inner.cfg.prefix),
                    inner.host_index(non_local),
                    inner.cfg.layer.capacity_for(name),
                    vec![name],
                ));
            }
        }
    }

    if !queues.is_empty() {
        let fields = Codec::fields(&message).map_err(|e| MessageError::Serialize(e.0))?;
        let cutoff = score - inner.expiry_secs();
        let ttl = inner.queue_ttl();
        let mut per_host: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, q) in queues.iter().enumerate() {
            per_host.entry(q.1).or_default().push(i);
        }
        let mut calls = Vec::with_capacity(per_host.len());
        for (h, idxs) in per_host {
            let mut inv = GROUP_SEND.prepare_invoke();
            for &i in &idxs {
                inv.key(&queues[i].0);
            }
            for &i in &idxs {
                let channels = &queues[i].3;
                let route = if queues[i].0.ends_with('!') {
                    RouteRef::Many(channels)
                } else {
                    RouteRef::Unrouted
                };
                let payload = inner
                    .codec
                    .encode(&fields, &route)
                    .map_err(|e| MessageError::Serialize(e.0))?;
                inv.arg(payload);
            }
            for &i in &idxs {
                inv.arg(queues[i].2);
            }
            inv.arg(score)
                .arg(cutoff)
                .arg(ttl)
                .arg(if inner.cfg.drop_stalled_members {
                    "1"
                } else {
                    "0"
                });
            let host = &inner.hosts[h];
            calls.push(async move {
                let mut c = host.conn();
                let r: RValue = inv.invoke_async(&mut c).await.map_err(|e| host.error(e))?;
                Ok::<_, Error>((idxs, r))
            });
        }
        let mut full_channels = 0u64;
        for r in futures_util::future::join_all(calls).await {
            let (idxs, value) = r?;
            let RValue::Array(parts) = value else {
                continue;
            };
            for i in indexes(parts.first()) {
                if let Some(&q) = idxs.get(i) {
                    full_channels += queues[q].3.len() as u64;
                }
            }
            for i in indexes(parts.get(1)) {
                if let Some(&q) = idxs.get(i) {
                    tracing::info!(group = %group, queue = %queues[q].0, "group member's queue holds expired messages; its channels leave the group");
                    gone.extend(queues[q].3.iter().copied());
                }
            }
        }
        if full_channels > 0 {
            inner
                .local
                .counters
                .group_full_drops
                .fetch_add(full_channels, Ordering::Relaxed);
            tracing::debug!(group = %group, skipped = full_channels, "group_send skipped full channels");
        }
    }

    if !gone.is_empty() {
        let _: () = redis::cmd("ZREM")
            .arg(&gkey)
            .arg(&gone)
            .query_async(&mut c)
            .await
            .map_err(|e| ghost.error(e))?;
    }
    Ok(())
}
