//! [`RedisPubSubLayer`]: channels_redis's `RedisPubSubChannelLayer`, on the same Redis channels
//! and bytes.
//!
//! # What goes over Redis (exactly as channels_redis does it)
//!
//! - `send(channel, m)` is `PUBLISH <channel> <msgpack(m)>`; `group_send(g, m)` is one
//!   `PUBLISH PREFIX__group__<g> <msgpack(m)>`, however many members the group has. No random
//!   prefix, no routing key; Fernet tokens instead of msgpack with encryption keys.
//! - A process subscribes to each group it has members in, once; membership lives in the
//!   process. Nothing is stored: a message published while nobody listens is gone.
//! - With several hosts, a channel or group channel is published and subscribed on the host
//!   its full name hashes to.
//!
//! # How this process uses it
//!
//! - Its channels are named `specific.<client>!<id>` (Django's are `asgispecific.<id>`; either
//!   kind of name works as a destination). One `PSUBSCRIBE *<client>!*` per host covers all of
//!   them, so making a channel costs no round trip.
//! - One subscription connection per host decodes each message once and fans it out into the
//!   local members' bounded queues; the multiplexed command connection publishes.
//! - After a reconnect the subscription task subscribes again to the pattern and to every group
//!   and channel the process listens on, from its own state.
//!
//! # Beyond channels_redis, same wire
//!
//! channels_redis's pub/sub layer has no capacity, no expiry and unbounded queues. Here local
//! queues are the local delivery engine's: they have the layer's capacity (a `send` to a full
//! local channel fails with `ChannelFull`; a group message for a full member is dropped and
//! counted), messages expire after `expiry`, memberships after `group_expiry`, a group send
//! waits for this process's lagging members (back-pressure), and [`group_channels`](ChannelLayer::group_channels)
//! answers across processes from a registry of Rust members (`PREFIX:pubsub:group:<g>`, a
//! sorted set Django neither reads nor writes; Django members are not in it).
//!
//! Group history ([`LayerConfig::group_history`]): a group send to such a group is one script
//! that numbers the message, keeps it (`PREFIX:history:NAME`, a hash, and `…:log`, a Stream)
//! and `PUBLISH`es it with the key `__switchboard_position__` added to its map, so offsets
//! follow the order of publication (`crate::history`). Presence: `PREFIX:presence:NAME` and
//! `…:exp` (`crate::presence`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::Value as RValue;
use redis::aio::PubSubSink;
use switchboard_core::engine::{Engine, Leave, Queue, Receiver};
use switchboard_core::message::MessageError;
use switchboard_core::{
    ChannelLayer, ChannelName, GroupName, LayerConfig, LayerError, LayerStats, Message, Position,
    PresenceEntry, Recovery, Result,
};
use tokio::sync::{mpsc, watch};

use crate::codec::{Codec, RouteRef};
use crate::config::RedisConfig;
use crate::conn::{self, Backoff, Guard, Host, Task, timed, unix_now};
use crate::hash::consistent_hash;
use crate::history::Histories;
use crate::process::ClientId;

/// A channel layer on Redis pub/sub that Django processes running channels_redis's
/// `RedisPubSubChannelLayer` share: one `PUBLISH` per group send, fan-out in each process.
///
/// ```no_run
/// use switchboard_core::Layer;
/// use switchboard_redis::{RedisConfig, RedisPubSubLayer};
/// # async fn demo() -> switchboard_core::Result<()> {
/// let layer = Layer::new(RedisPubSubLayer::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?);
/// # Ok(()) }
/// ```
///
/// Channel names from this layer can only be received on and added to groups by the process
/// that made them (membership lives in the process, as in channels_redis).
#[derive(Clone)]
pub struct RedisPubSubLayer {
    inner: Arc<Inner>,
    guard: Arc<Guard>,
}

/// One host's subscription connection.
struct Sub {
    /// Set while connected.
    sink: Mutex<Option<PubSubSink>>,
    /// Serializes subscription changes on this host (subscribe vs. unsubscribe races).
    lock: tokio::sync::Mutex<()>,
    /// Named channels this process receives on (subscribed by name).
    channels: Mutex<HashSet<String>>,
    /// The host's subscription loop.
    task: Task,
}

struct Inner {
    cfg: RedisConfig,
    hosts: Vec<Host>,
    subs: Vec<Sub>,
    codec: Codec,
    /// Local channels and this process's members of each group.
    engine: Engine,
    client: ClientId,
    /// `PREFIX__group__`: the start of every group's Redis channel.
    group_prefix: String,
    shutdown: watch::Receiver<bool>,
    /// The janitor, and the memberships the engine ended, which it takes out of Redis (kept
    /// here, so that a janitor started again finds them).
    janitor: Task,
    leaves: tokio::sync::Mutex<mpsc::UnboundedReceiver<Leave>>,
    /// Per host: the follower of its Sentinel master (started only for hosts behind Sentinel).
    followers: Vec<Task>,
    /// The group histories' keys ([`LayerConfig::group_history`]).
    histories: Histories,
    /// Per host behind Sentinel: starts new history epochs when its master moves.
    era_watch: Vec<Task>,
}

impl std::fmt::Debug for RedisPubSubLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSubLayer")
            .field("config", &self.inner.cfg)
            .field("client_id", &self.inner.client.as_str())
            .field("local_channels", &self.inner.engine.channel_count())
            .finish()
    }
}

impl RedisPubSubLayer {
    /// Connects to every host, subscribes this process's channel pattern and starts the
    /// background tasks on the current tokio runtime.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisPubSubLayer> {
        crate::config::refuse_encrypted_history(&cfg)?;
        let hosts = conn::connect_hosts(&cfg).await?;
        let codec = Codec::pubsub(&cfg.symmetric_encryption_keys);
        let (engine, leaves) = Engine::with_leaves(cfg.layer.clone());
        let (tx, rx) = watch::channel(false);
        let subs = hosts
            .iter()
            .map(|_| Sub {
                sink: Mutex::new(None),
                lock: tokio::sync::Mutex::new(()),
                channels: Mutex::new(HashSet::new()),
                task: Task::new(),
            })
            .collect();
        let followers = hosts.iter().map(|_| Task::new()).collect();
        let group_prefix = format!("{}__group__", cfg.prefix);
        let (cfg_prefix, n_hosts) = (cfg.prefix.clone(), hosts.len());
        let inner = Arc::new(Inner {
            cfg,
            hosts,
            subs,
            codec,
            engine,
            client: ClientId::new(),
            group_prefix,
            shutdown: rx,
            janitor: Task::new(),
            leaves: tokio::sync::Mutex::new(leaves),
            followers,
            histories: Histories::new(&cfg_prefix, n_hosts),
            era_watch: (0..n_hosts).map(|_| Task::new()).collect(),
        });
        let mut ready = Vec::new();
        for h in 0..inner.hosts.len() {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            inner.subs[h]
                .task
                .ensure(|| subscription_loop(inner.clone(), h, Some(ready_tx)));
            ready.push(ready_rx);
        }
        let limit = inner.cfg.connect_timeout + inner.cfg.command_timeout;
        for (h, r) in ready.into_iter().enumerate() {
            match timed(limit, r).await {
                Ok(Ok(())) => {}
                _ => {
                    let _ = tx.send(true);
                    return Err(LayerError::backend_msg(format!(
                        "could not subscribe at redis {}",
                        inner.hosts[h].name
                    )));
                }
            }
        }
        inner.ensure_tasks();
        Ok(RedisPubSubLayer {
            inner,
            guard: Arc::new(Guard(tx)),
        })
    }

    /// This process's client prefix: the 32 hex digits in every channel name it hands out.
    pub fn client_id(&self) -> &str {
        self.inner.client.as_str()
    }
}

impl Inner {
    /// Starts the background tasks that do not run (at connect; and again on the caller's
    /// runtime after the runtime they ran on ended, see [`Task`]), and checks the layer is
    /// open.
    fn open(self: &Arc<Self>) -> Result<()> {
        self.engine.check_open()?;
        self.ensure_tasks();
        Ok(())
    }

    fn ensure_tasks(self: &Arc<Self>) {
        let mut restarted = false;
        for h in 0..self.hosts.len() {
            restarted |= self.subs[h]
                .task
                .ensure(|| subscription_loop(self.clone(), h, None));
            if self.hosts[h].behind_sentinel() {
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
        }
        let first = self.janitor.ensure(|| janitor(self.clone()));
        if restarted && !first {
            let told = self.engine.mark_gap_everywhere();
            tracing::warn!(
                told,
                "the pub/sub layer's background tasks had stopped (the runtime they ran on \
                 ended); started again on the current runtime, and the subscribers told they \
                 may have missed messages"
            );
        }
    }

    fn host_index(&self, name: &str) -> usize {
        consistent_hash(name, self.hosts.len())
    }

    /// The host that keeps `group`'s presence: its Redis channel's (and registry's).
    fn presence_host(&self, group: &GroupName) -> &Host {
        &self.hosts[self.host_index(&self.group_channel(group.as_str()))]
    }

    fn group_channel(&self, group: &str) -> String {
        format!("{}{group}", self.group_prefix)
    }

    fn registry_key(&self, group: &str) -> String {
        format!("{}:pubsub:group:{group}", self.cfg.prefix)
    }

    fn pattern(&self) -> String {
        format!("*{}!*", self.client.as_str())
    }

    async fn timed<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        timed(self.cfg.command_timeout, fut).await?
    }

    /// One `PUBLISH` to the group's channel (numbered and kept by the history script for a
    /// group with history); then, since the fan-out runs in the subscription, a wait for the
    /// local members it left lagging (but `sender`).
    async fn group_send(
        self: &Arc<Self>,
        sender: Option<&ChannelName>,
        group: &GroupName,
        message: Message,
    ) -> Result<Option<Position>> {
        self.open()?;
        let gchan = self.group_channel(group.as_str());
        let position = match self.cfg.layer.history_for(group.as_str()) {
            Some(history) if switchboard_core::history::kept_in_history(&message) => {
                let fields = Codec::fields(&message).map_err(|e| MessageError::Serialize(e.0))?;
                let h = self.host_index(&gchan);
                let publish = self.histories.publish(
                    &self.hosts[h],
                    h,
                    &self.codec,
                    group.as_str(),
                    &gchan,
                    &fields,
                    history,
                );
                Some(self.timed(publish).await?)
            }
            _ => {
                self.publish(&gchan, &message).await?;
                None
            }
        };
        let lagging = self.engine.lagging_members(group.as_str());
        self.engine.backpressure(lagging.without(sender)).await;
        Ok(position)
    }

    async fn publish(&self, channel: &str, message: &Message) -> Result<()> {
        let fields = Codec::fields(message).map_err(|e| MessageError::Serialize(e.0))?;
        let payload = self
            .codec
            .encode(&fields, &RouteRef::Unrouted)
            .map_err(|e| MessageError::Serialize(e.0))?;
        let host = &self.hosts[self.host_index(channel)];
        let mut c = host.conn();
        self.timed(async {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| host.error(e))
        })
        .await
    }

    /// Subscribes (or unsubscribes) one Redis channel on its host. Called with the host's
    /// subscription lock held. While the subscription connection is down (the loop noticed, or
    /// this call finds it closed), there is nothing to do: when the loop connects again it
    /// subscribes, under the same lock, to every group and channel this process then listens
    /// on — so a change made now is carried out then.
    async fn subscription(&self, h: usize, channel: &str, on: bool) -> Result<()> {
        let sink = self.subs[h].sink.lock().clone();
        let Some(mut sink) = sink else {
            tracing::debug!(host = %self.hosts[h].name, channel, "pub/sub reconnecting; it subscribes from this process's state");
            return Ok(());
        };
        let r = if on {
            sink.subscribe(channel).await
        } else {
            sink.unsubscribe(channel).await
        };
        match r {
            Err(e) if conn::found_closed(&e) => {
                tracing::debug!(host = %self.hosts[h].name, channel, "pub/sub connection closed; it subscribes from this process's state when it is back");
                Ok(())
            }
            r => r.map_err(|e| self.hosts[h].error(e)),
        }
    }

    /// After `channel` left `group` here: unsubscribes the group when that was its last local
    /// member, and takes the channel out of the registry.
    async fn left(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let gchan = self.group_channel(group.as_str());
        let h = self.host_index(&gchan);
        {
            let _l = self.subs[h].lock.lock().await;
            if !self.engine.has_members(group.as_str())
                && let Err(e) = self.timed(self.subscription(h, &gchan, false)).await
            {
                tracing::debug!(%group, error = %e, "unsubscribe failed (a reconnect drops it anyway)");
            }
        }
        self.timed(conn::remove_member(
            &self.hosts[h],
            &self.registry_key(group.as_str()),
            channel.as_str(),
        ))
        .await
    }

    /// Writes the registry entries of this process's members again (after Redis lost them).
    async fn reassert_registry(&self, host: usize) {
        let ttl = RedisConfig::ttl_secs(self.cfg.layer.group_expiry);
        let now = unix_now();
        let mut pipe = redis::pipe();
        let mut any = false;
        for m in self.engine.memberships() {
            let gchan = self.group_channel(m.group.as_str());
            if self.host_index(&gchan) != host {
                continue;
            }
            let key = self.registry_key(m.group.as_str());
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("NX")
                .arg(now - m.age.as_secs_f64())
                .arg(m.channel.as_str())
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore();
            any = true;
        }
        if any {
            let mut c = self.hosts[host].conn();
            if let Err(e) = pipe.query_async::<()>(&mut c).await {
                tracing::warn!(host = %self.hosts[host].name, error = %e, "could not write group registry again");
            }
        }
    }

    /// The queue of one of this process's channels (made if needed).
    fn own_queue(&self, channel: &ChannelName) -> Arc<Queue> {
        self.engine.queue(channel)
    }

    /// Hands a received message to the local channel(s) it is for.
    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let decode = || match self.codec.decode(payload) {
            Ok((m, _)) => Some(m),
            Err(e) => {
                self.engine.count_undecodable();
                tracing::warn!(channel, error = %e, "skipping a message that does not decode");
                None
            }
        };
        if let Some(group) = channel.strip_prefix(&self.group_prefix) {
            if !self.engine.has_members(group) {
                return;
            }
            let Some(message) = decode() else { return };
            // The sender's group_send looks for lagging members itself.
            let _lagging = self.engine.group_send(group, &message);
            return;
        }
        // The queue where it is; one of this process's channels gets one if it has none.
        let queue = match self.engine.get(channel) {
            Some(q) => q,
            None if self.client.owns(channel) => match ChannelName::new(channel) {
                Ok(name) => self.own_queue(&name),
                Err(_) => return,
            },
            None => return,
        };
        let Some(message) = decode() else { return };
        let at = self.engine.arrival(Duration::ZERO);
        self.engine.deliver(&queue, message, &at);
    }
}

use std::future::Future;

/// Forgets the subscription connection's sink when the loop ends, however it ends (its runtime
/// can drop it anywhere): a sink whose connection is gone must not be used.
struct ClearSink<'a>(&'a Sub);

impl Drop for ClearSink<'_> {
    fn drop(&mut self) {
        *self.0.sink.lock() = None;
    }
}

/// One host's subscription: connects, subscribes to everything this process listens to,
/// dispatches messages, and starts over after a disconnect. `ready` hears of the first
/// subscription (at connect).
async fn subscription_loop(
    inner: Arc<Inner>,
    h: usize,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let host = &inner.hosts[h];
    let sub = &inner.subs[h];
    let _clear = ClearSink(sub);
    let mut shutdown = inner.shutdown.clone();
    let mut backoff = Backoff::new();
    let mut was_down = false;
    let mut moved = host.moved();
    loop {
        moved.mark_unchanged();
        let client = host.client();
        let connected = tokio::select! {
            _ = shutdown.changed() => return,
            c = timed(inner.cfg.connect_timeout, client.get_async_pubsub()) => c,
        };
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            other => {
                if !was_down {
                    let e = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".into(),
                    };
                    tracing::warn!(host = %host.name, error = %e, "pub/sub connection lost; retrying");
                    was_down = true;
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep(backoff.next()) => continue,
                    _ = moved.changed() => continue,
                }
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let subscribed = {
            let _l = sub.lock.lock().await;
            let mut names: Vec<String> = inner
                .engine
                .group_names()
                .iter()
                .map(|g| inner.group_channel(g.as_str()))
                .filter(|c| inner.host_index(c) == h)
                .collect();
            names.extend(sub.channels.lock().iter().cloned());
            // The groups and named channels first, this process's pattern last: once the
            // pattern is on the server (`PUBSUB NUMPAT`), so is everything else.
            let r = async {
                if !names.is_empty() {
                    sink.subscribe(&names).await?;
                }
                sink.psubscribe(inner.pattern()).await?;
                Ok::<_, redis::RedisError>(())
            };
            match timed(inner.cfg.command_timeout, r).await {
                Ok(Ok(())) => {
                    *sub.sink.lock() = Some(sink.clone());
                    true
                }
                _ => false,
            }
        };
        if !subscribed {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(backoff.next()) => continue,
            }
        }
        backoff.reset();
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        if was_down {
            // What was published to this host meanwhile is gone: its subscribers are told.
            let groups: Vec<_> = inner
                .engine
                .group_names()
                .into_iter()
                .filter(|g| inner.host_index(&inner.group_channel(g.as_str())) == h)
                .collect();
            let channels: Vec<String> = sub.channels.lock().iter().cloned().collect();
            let told = inner.engine.mark_gaps(
                groups.iter().map(|g| g.as_str()),
                channels.iter().map(String::as_str),
            );
            tracing::info!(host = %host.name, told, "pub/sub reconnected and resubscribed; subscribers told they may have missed messages");
            crate::metrics::reconnected("subscription");
            inner.reassert_registry(h).await;
        }
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        ping.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    *sub.sink.lock() = None;
                    return;
                }
                msg = stream.next() => match msg {
                    Some(msg) => inner.dispatch(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => break,
                },
                // The master moved (Sentinel): subscribe there.
                _ = moved.changed() => break,
                _ = ping.tick() => {
                    let alive = timed(inner.cfg.command_timeout, sink.ping::<RValue>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        *sub.sink.lock() = None;
        tracing::warn!(host = %host.name, "pub/sub connection lost; reconnecting");
        was_down = true;
    }
}

/// Memberships the engine ended (expired messages, expired memberships) leave the registry and,
/// when last, the group's subscription; untouched channels are swept; a host that lost this
/// process's keys (`FLUSHALL`) gets its registry entries back.
async fn janitor(inner: Arc<Inner>) {
    let Ok(mut leaves) = inner.leaves.try_lock() else {
        return; // another janitor runs
    };
    let mut shutdown = inner.shutdown.clone();
    let sweep_every =
        (inner.cfg.layer.expiry / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = tokio::time::interval(Duration::from_secs(1));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let marker = conn::marker_key(&inner.cfg.prefix, inner.client.as_str());
    let mut marked = vec![false; inner.hosts.len()];
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = health.tick() => {
                for (h, host) in inner.hosts.iter().enumerate() {
                    if conn::lost_data(host, &marker, &mut marked[h], inner.cfg.command_timeout).await {
                        tracing::warn!(host = %host.name, "redis lost this process's keys (FLUSHALL, a restart without persistence?): writing its group registry again");
                        inner.reassert_registry(h).await;
                    }
                }
            }
            Some(leave) = leaves.recv() => {
                for group in leave.groups {
                    if let Err(e) = inner.left(&group, &leave.channel).await {
                        tracing::warn!(channel = %leave.channel, %group, error = %e, "could not end a membership");
                    }
                }
            }
            _ = sweep.tick() => inner.engine.sweep(),
        }
    }
}

#[async_trait]
impl ChannelLayer for RedisPubSubLayer {
    fn config(&self) -> &LayerConfig {
        &self.inner.cfg.layer
    }

    async fn new_channel(&self, prefix: &str) -> Result<ChannelName> {
        self.inner.open()?;
        let name = self.inner.client.new_name(prefix)?;
        self.inner.own_queue(&name);
        Ok(name)
    }

    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        if inner.client.owns(channel.as_str()) {
            return inner.engine.send_to(channel, message);
        }
        inner.publish(channel.as_str(), &message).await
    }

    async fn receive(&self, channel: &ChannelName) -> Result<Message> {
        let inner = &self.inner;
        inner.open()?;
        if inner.client.owns(channel.as_str()) {
            return inner.engine.receive(&inner.own_queue(channel)).await;
        }
        self.receiver(channel).await?.recv().await
    }

    async fn receiver(&self, channel: &ChannelName) -> Result<Receiver> {
        let inner = &self.inner;
        inner.open()?;
        if inner.client.owns(channel.as_str()) {
            return Ok(inner.engine.receiver(inner.own_queue(channel)));
        }
        if channel.is_process_local() {
            return Err(LayerError::Unsupported(format!(
                "channel {channel} belongs to another process; only the process that made it can receive on it"
            )));
        }
        // A channel by name (`worker.jobs`): subscribe to it, once.
        let queue = inner.engine.queue(channel);
        let h = inner.host_index(channel.as_str());
        let added = inner.subs[h]
            .channels
            .lock()
            .insert(channel.as_str().to_owned());
        if added {
            let _l = inner.subs[h].lock.lock().await;
            if let Err(e) = inner
                .timed(inner.subscription(h, channel.as_str(), true))
                .await
            {
                inner.subs[h].channels.lock().remove(channel.as_str());
                return Err(e);
            }
        }
        Ok(inner.engine.receiver(queue))
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        if !inner.client.owns(channel.as_str()) {
            return Err(LayerError::Unsupported(format!(
                "the pub/sub layer keeps group membership in the process that owns the channel: \
                 call group_add({group}, {channel}) in the process whose new_channel made it"
            )));
        }
        let queue = inner.own_queue(channel);
        let gchan = inner.group_channel(group.as_str());
        let h = inner.host_index(&gchan);
        {
            let _l = inner.subs[h].lock.lock().await;
            let first = !inner.engine.has_members(group.as_str());
            inner.engine.group_add(group, &queue);
            if first && let Err(e) = inner.timed(inner.subscription(h, &gchan, true)).await {
                inner.engine.group_discard(group, channel);
                return Err(e);
            }
        }
        let ttl = RedisConfig::ttl_secs(inner.cfg.layer.group_expiry);
        let added = inner
            .timed(conn::add_member(
                &inner.hosts[h],
                &inner.registry_key(group.as_str()),
                channel.as_str(),
                unix_now(),
                ttl,
            ))
            .await;
        if added.is_err() {
            // Not a member after all: a reconnect must not subscribe it.
            inner.engine.group_discard(group, channel);
            let _ = inner.left(group, channel).await;
        }
        added
    }

    async fn group_add_since(
        &self,
        group: &GroupName,
        channel: &ChannelName,
        since: Option<&Position>,
    ) -> Result<Recovery> {
        let inner = &self.inner;
        let history = inner.cfg.layer.history_of(group)?;
        // Subscribed first: what is published from now on arrives live; what was before is in
        // the history read next (the subscription drops what is in both, by position).
        self.group_add(group, channel).await?;
        let h = inner.host_index(&inner.group_channel(group.as_str()));
        let read = inner.histories.since(
            &inner.hosts[h],
            h,
            &inner.codec,
            group.as_str(),
            since,
            history,
        );
        inner.timed(read).await
    }

    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        inner.engine.group_discard(group, channel);
        inner.left(group, channel).await
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
        let h = inner.host_index(&inner.group_channel(group.as_str()));
        let (host, codec, g) = (&inner.hosts[h], &inner.codec, group.as_str());
        let read = inner.histories.history(host, h, codec, g, since, history);
        inner.timed(read).await
    }

    async fn history_clear(&self, group: &GroupName) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        inner.cfg.layer.history_of(group)?;
        let h = inner.host_index(&inner.group_channel(group.as_str()));
        inner
            .timed(inner.histories.clear(&inner.hosts[h], group.as_str()))
            .await
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
        let h = inner.host_index(&inner.group_channel(group.as_str()));
        let cutoff = unix_now() - inner.cfg.layer.group_expiry.as_secs_f64();
        inner
            .timed(conn::members_since(
                &inner.hosts[h],
                &inner.registry_key(group.as_str()),
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
            if let Err(e) = inner.left(&group, channel).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        inner.open()?;
        let groups = inner.engine.group_names();
        inner.engine.flush();
        for group in groups {
            let gchan = inner.group_channel(group.as_str());
            let h = inner.host_index(&gchan);
            let _l = inner.subs[h].lock.lock().await;
            if let Err(e) = inner.timed(inner.subscription(h, &gchan, false)).await {
                tracing::debug!(%group, error = %e, "unsubscribe on flush failed");
            }
        }
        let pattern = format!("{}:pubsub:group:*", conn::glob_escape(&inner.cfg.prefix));
        let histories = inner.histories.pattern();
        let presence = crate::presence::pattern(&inner.cfg.prefix);
        for host in &inner.hosts {
            for p in [&pattern, &histories, &presence] {
                inner.timed(conn::delete_matching(host, p)).await?;
            }
        }
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
