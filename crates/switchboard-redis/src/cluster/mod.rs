//! [`RedisClusterLayer`]: a channel layer for Redis Cluster, on sharded pub/sub (Redis 7).
//!
//! channels_redis has no Cluster support (its group script touches keys of many slots, and
//! redis-py's cluster client has no sharded pub/sub), so this layer is switchboard's own: Django
//! processes cannot share it. It keeps the pub/sub layer's model — membership and fan-out in
//! each process, one publish per group send — on the cluster:
//!
//! - Every Redis name carries a hash tag, so each operation stays in one slot: a group is the
//!   shard channel `PREFIX:group:{<group>}`, a process's inbox `PREFIX:inbox:{<client id>}` (every
//!   channel of the process is reached through it: the message names its channel, as
//!   channels_redis's core layer does), a channel by name (`worker.jobs`)
//!   `PREFIX:channel:{<name>}`, and the Rust-member registry of a group (for
//!   [`group_channels`](ChannelLayer::group_channels)) the sorted set
//!   `PREFIX:cluster:group:{<group>}`.
//! - The tags are the names themselves, so CRC16 spreads them over all 16,384 slots and every
//!   shard takes its share of groups and processes (a fixed set of tags such as `{0}`…`{31}`
//!   collides under CRC16 and leaves shards idle). One group lives on one shard: a single very
//!   busy group does not spread, many groups do.
//! - `group_send` is one `SPUBLISH` to the shard that owns the group; each process subscribed
//!   (`SSUBSCRIBE`, one per group it has members in) fans it out to its local members. A send to
//!   another process's channel is one `SPUBLISH` to that process's inbox.
//! - redis-rs's cluster client follows `MOVED` / `ASK` and topology changes (a replica taking
//!   over a failed master) and subscribes again on the node that now owns each shard channel.
//!   What was published while a shard had no master is lost (pub/sub stores nothing); senders
//!   get an error while it has none.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use redis::Value as RValue;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ProtocolVersion, PushInfo, PushKind, RedisError};
use switchboard_core::engine::{Engine, Leave, Queue, Receiver};
use switchboard_core::message::MessageError;
use switchboard_core::{
    ChannelLayer, ChannelName, GroupName, LayerConfig, LayerError, LayerStats, Message,
    PresenceEntry, Result,
};
use tokio::sync::{mpsc, watch};

use crate::codec::{Codec, Route, RouteRef};
use crate::config::{RedisConfig, RedisHost};
use crate::conn::{self, Guard, timed, unix_now};
use crate::process::ClientId;

/// A channel layer for Redis Cluster: sharded pub/sub, hash-tagged names, the pub/sub layer's
/// semantics (membership and fan-out in each process). Not shared with Django.
///
/// `RedisConfig`'s hosts are the cluster's seed nodes (any of its nodes; the client learns the
/// rest), `redis://` or `rediss://` with the usual TLS settings and credentials.
///
/// ```no_run
/// use switchboard_core::Layer;
/// use switchboard_redis::{RedisClusterLayer, RedisConfig};
/// # async fn demo() -> switchboard_core::Result<()> {
/// let seeds = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000", "redis://10.0.0.3:7000"];
/// let layer = Layer::new(RedisClusterLayer::connect(RedisConfig::hosts(seeds)).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisClusterLayer {
    inner: Arc<Inner>,
    guard: Arc<Guard>,
}

struct Inner {
    cfg: RedisConfig,
    /// The seed nodes' URLs.
    seeds: Vec<String>,
    /// The TLS files' contents, read once at connect (a reconnect reuses them).
    certs: Option<redis::TlsCertificates>,
    /// Commands and shard subscriptions, over the cluster; replaced after a node was lost.
    conn: RwLock<ClusterConnection>,
    /// Counts replacements of `conn`: a push task of an older one stops.
    generation: std::sync::atomic::AtomicU64,
    codec: Codec,
    /// Local channels and this process's members of each group.
    engine: Engine,
    client: ClientId,
    /// The seeds as logs name them.
    name: String,
    /// Serializes subscription changes (a subscribe racing an unsubscribe of the same name).
    sub_lock: tokio::sync::Mutex<()>,
    /// Channels by name this process receives on (subscribed).
    named: Mutex<HashSet<String>>,
    /// A node connection dropped: connect and subscribe again.
    disconnected: AtomicBool,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for RedisClusterLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterLayer")
            .field("config", &self.inner.cfg)
            .field("client_id", &self.inner.client.as_str())
            .field("local_channels", &self.inner.engine.channel_count())
            .finish()
    }
}

impl RedisClusterLayer {
    /// Connects to the cluster through its seed nodes, subscribes this process's inbox and
    /// starts the background tasks on the current tokio runtime.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisClusterLayer> {
        crate::config::refuse_history(&cfg)?;
        let mut seeds = Vec::with_capacity(cfg.hosts.len());
        for h in &cfg.hosts {
            match h {
                RedisHost::Url(u) => seeds.push(u.clone()),
                RedisHost::Sentinel(_) => {
                    return Err(LayerError::Config(
                        "a Redis Cluster layer takes the cluster's node URLs, not a Sentinel host"
                            .into(),
                    ));
                }
            }
        }
        if seeds.is_empty() {
            return Err(LayerError::Config(
                "no Redis Cluster node configured: give at least one redis:// URL".into(),
            ));
        }
        let name = format!("cluster {}", cfg.host_names().join(","));
        let certs = conn::load_tls(&cfg.tls)?;
        if cfg.tls.insecure {
            tracing::warn!(host = %name, "TLS to redis without certificate checks");
        }
        let (conn, push_rx) = connect_cluster(&cfg, &seeds, certs.as_ref(), &name).await?;
        let codec = Codec::core(
            &cfg.symmetric_encryption_keys,
            RedisConfig::ttl_secs(cfg.layer.expiry),
        );
        let (engine, leaves) = Engine::with_leaves(cfg.layer.clone());
        let (tx, rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            cfg,
            seeds,
            certs,
            conn: RwLock::new(conn),
            codec,
            engine,
            client: ClientId::new(),
            name,
            sub_lock: tokio::sync::Mutex::new(()),
            named: Mutex::new(HashSet::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            disconnected: AtomicBool::new(false),
            shutdown: rx,
        });
        tokio::spawn(pushes(inner.clone(), push_rx, 0));
        let inbox = inner.inbox(inner.client.as_str());
        if let Err(e) = inner.timed(inner.subscription(&inbox, true)).await {
            let _ = tx.send(true);
            return Err(e);
        }
        tokio::spawn(janitor(inner.clone(), leaves));
        Ok(RedisClusterLayer {
            inner,
            guard: Arc::new(Guard(tx)),
        })
    }

    /// This process's client prefix: the 32 hex digits in every channel name it hands out.
    pub fn client_id(&self) -> &str {
        self.inner.client.as_str()
    }
}

/// A cluster connection through `seeds` with the configured timeouts, TLS and credentials,
/// whose shard messages arrive on the returned receiver; it has answered a `PING`.
async fn connect_cluster(
    cfg: &RedisConfig,
    seeds: &[String],
    certs: Option<&redis::TlsCertificates>,
    name: &str,
) -> Result<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>)> {
    let tls = seeds.iter().any(|u| u.starts_with("rediss://"));
    let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .connection_timeout(cfg.connect_timeout)
        .response_timeout(cfg.command_timeout)
        .retries(3);
    if let Some(certs) = certs {
        builder = builder.certs(certs.clone());
    }
    if cfg.tls.insecure {
        builder = builder.tls(redis::TlsMode::Insecure);
    }
    let client = builder
        .build()
        .map_err(|e| LayerError::Config(format!("bad Redis Cluster settings for {name}: {e}")))?;
    let limit = cfg.connect_timeout + cfg.command_timeout;
    let mut conn = timed(limit, client.get_async_connection())
        .await?
        .map_err(|e| conn::connect_error(name, &e, tls))?;
    timed(limit, redis::cmd("PING").query_async::<()>(&mut conn))
        .await?
        .map_err(|e| conn::connect_error(name, &e, tls))?;
    Ok((conn, push_rx))
}

/// The client id in a process-local channel name of this layer (`<prefix><32 hex>!<id>`).
fn owner(channel: &str) -> Option<&str> {
    let head = &channel[..channel.find('!')?];
    let id = head.get(head.len().checked_sub(32)?..)?;
    id.bytes().all(|b| b.is_ascii_hexdigit()).then_some(id)
}

impl Inner {
    fn inbox(&self, client: &str) -> String {
        format!("{}:inbox:{{{client}}}", self.cfg.prefix)
    }

    fn group_channel(&self, group: &str) -> String {
        format!("{}:group:{{{group}}}", self.cfg.prefix)
    }

    fn named_channel(&self, name: &str) -> String {
        format!("{}:channel:{{{name}}}", self.cfg.prefix)
    }

    fn registry_key(&self, group: &str) -> String {
        format!("{}:cluster:group:{{{group}}}", self.cfg.prefix)
    }

    fn conn(&self) -> ClusterConnection {
        self.conn.read().clone()
    }

    fn error(&self, e: RedisError) -> LayerError {
        LayerError::backend(format!("redis at {}", self.name), e)
    }

    async fn timed<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        timed(self.cfg.command_timeout, fut).await?
    }

    /// `SPUBLISH` of `message` (naming `route` inside) to the shard channel `channel`.
    async fn publish(&self, channel: &str, message: &Message, route: &RouteRef<'_>) -> Result<()> {
        let fields = Codec::fields(message).map_err(|e| MessageError::Serialize(e.0))?;
        let payload = self
            .codec
            .encode(&fields, route)
            .map_err(|e| MessageError::Serialize(e.0))?;
        let mut c = self.conn();
        self.timed(async {
            redis::cmd("SPUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| self.error(e))
        })
        .await
    }

    /// Subscribes (or unsubscribes) one shard channel.
    async fn subscription(&self, channel: &str, on: bool) -> Result<()> {
        let mut c = self.conn();
        let r = if on {
            c.ssubscribe(channel).await
        } else {
            c.sunsubscribe(channel).await
        };
        r.map_err(|e| self.error(e))
    }

    async fn group_send(
        &self,
        sender: Option<&ChannelName>,
        group: &GroupName,
        message: Message,
    ) -> Result<()> {
        self.engine.check_open()?;
        self.publish(
            &self.group_channel(group.as_str()),
            &message,
            &RouteRef::Unrouted,
        )
        .await?;
        let lagging = self.engine.lagging_members(group.as_str());
        self.engine.backpressure(lagging.without(sender)).await;
        Ok(())
    }

    /// After `channel` left `group` here: unsubscribes the group when that was its last local
    /// member, and takes the channel out of the registry.
    async fn left(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        {
            let _l = self.sub_lock.lock().await;
            if !self.engine.has_members(group.as_str())
                && let Err(e) = self
                    .timed(self.subscription(&self.group_channel(group.as_str()), false))
                    .await
            {
                tracing::debug!(%group, error = %e, "unsubscribe failed");
            }
        }
        let mut c = self.conn();
        self.timed(async {
            redis::cmd("ZREM")
                .arg(self.registry_key(group.as_str()))
                .arg(channel.as_str())
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| self.error(e))
        })
        .await
    }

    /// The shard channels this process is subscribed to: its inbox, its groups, its channels
    /// by name.
    fn shard_channels(&self) -> Vec<String> {
        let mut all = vec![self.inbox(self.client.as_str())];
        all.extend(
            self.engine
                .group_names()
                .iter()
                .map(|g| self.group_channel(g.as_str())),
        );
        all.extend(self.named.lock().iter().map(|n| self.named_channel(n)));
        all
    }

    /// After a node connection dropped: a new cluster connection, with a slot map fetched
    /// afresh, takes the old one's place, and every shard channel this process listens on is
    /// subscribed again through it. redis-rs's cluster client alone would keep reconnecting to
    /// a failed master's address (it learns a new topology only from a `MOVED`), leaving the
    /// subscriptions on its slots dead. The old connection is dropped first: a message between
    /// the two can be lost, never delivered twice. Fails (to be tried again) while a slot has no
    /// reachable node, as before a replica has taken over.
    async fn reconnect(self: &Arc<Self>) -> Result<()> {
        let (fresh, pushes_rx) =
            connect_cluster(&self.cfg, &self.seeds, self.certs.as_ref(), &self.name).await?;
        let _l = self.sub_lock.lock().await;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        drop(std::mem::replace(&mut *self.conn.write(), fresh));
        tokio::spawn(pushes(self.clone(), pushes_rx, generation));
        for channel in self.shard_channels() {
            self.timed(self.subscription(&channel, true)).await?;
        }
        Ok(())
    }

    /// Writes the registry entries of this process's members again (after a node's
    /// connection dropped: a failover to a replica that had not caught up may have lost them).
    async fn reassert_registry(&self) {
        let ttl = RedisConfig::ttl_secs(self.cfg.layer.group_expiry);
        let now = unix_now();
        for m in self.engine.memberships() {
            let key = self.registry_key(m.group.as_str());
            // Each key is its own slot: one small pipeline per membership (ZADD + EXPIRE).
            let r = redis::pipe()
                .cmd("ZADD")
                .arg(&key)
                .arg("NX")
                .arg(now - m.age.as_secs_f64())
                .arg(m.channel.as_str())
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore()
                .query_async::<()>(&mut self.conn())
                .await;
            if let Err(e) = r {
                tracing::warn!(host = %self.name, error = %e, "could not write group registry again");
                self.disconnected.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Hands a message from shard channel `channel` to the local channel(s) it is for.
    fn dispatch(&self, channel: &[u8], payload: &[u8]) {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let Some(rest) = channel.strip_prefix(self.cfg.prefix.as_str()) else {
            return;
        };
        let decode = || match self.codec.decode(payload) {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                self.engine.count_undecodable();
                tracing::warn!(channel, error = %e, "skipping a message that does not decode");
                None
            }
        };
        let tagged = |kind: &str| {
            rest.strip_prefix(kind)
                .and_then(|t| t.strip_prefix('{'))
                .and_then(|t| t.strip_suffix('}'))
        };
        if let Some(group) = tagged(":group:") {
            if !self.engine.has_members(group) {
                return;
            }
            let Some((message, _)) = decode() else { return };
            let _lagging = self.engine.group_send(group, &message);
            return;
        }
        let target = if tagged(":inbox:").is_some() {
            let Some((message, route)) = decode() else {
                return;
            };
            match route {
                Route::One(target) if self.client.owns(&target) => Some((target, message)),
                _ => None,
            }
        } else if let Some(name) = tagged(":channel:") {
            decode().map(|(m, _)| (name.to_owned(), m))
        } else {
            None
        };
        let Some((target, message)) = target else {
            return;
        };
        let queue = match self.engine.get(&target) {
            Some(q) => q,
            None if self.client.owns(&target) => match ChannelName::new(&target) {
                Ok(name) => self.engine.queue(&name),
                Err(_) => return,
            },
            None => return,
        };
        let at = self.engine.arrival(Duration::ZERO);
        self.engine.deliver(&queue, message, &at);
    }

    /// The cluster's masters, from `CLUSTER NODES`, as `(host, port)`.
    async fn masters(&self) -> Result<Vec<(String, u16)>> {
        let nodes: String = self
            .timed(async {
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut self.conn())
                    .await
                    .map_err(|e| self.error(e))
            })
            .await?;
        Ok(nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                let addr = fields.get(1)?.split('@').next()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect())
    }

    /// Deletes every key matching `pattern` on one master, with SCAN and UNLINK.
    async fn delete_on(&self, host: &str, port: u16, pattern: &str) -> Result<()> {
        let route = || {
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port,
            })
        };
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let reply = self
                .conn()
                .route_command(scan, route())
                .await
                .map_err(|e| self.error(e))?;
            let (next, keys): (u64, Vec<Vec<u8>>) =
                redis::FromRedisValue::from_redis_value(reply).map_err(|e| self.error(e.into()))?;
            // Keys of one node may be of many slots: one UNLINK each keeps it in one slot.
            for key in keys {
                redis::cmd("UNLINK")
                    .arg(key)
                    .query_async::<()>(&mut self.conn())
                    .await
                    .map_err(|e| self.error(e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

use std::future::Future;

/// Reads what the cluster pushes: shard messages go to their local channels; a dropped node
/// connection is noted (the client subscribes again by itself; the registry is written again).
async fn pushes(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<PushInfo>, generation: u64) {
    let mut shutdown = inner.shutdown.clone();
    loop {
        if inner.generation.load(Ordering::Relaxed) != generation {
            return;
        }
        let push = tokio::select! {
            _ = shutdown.changed() => return,
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        match push.kind {
            PushKind::SMessage => {
                if let [RValue::BulkString(channel), RValue::BulkString(payload)] = &push.data[..] {
                    inner.dispatch(channel, payload);
                }
            }
            PushKind::Disconnection if !inner.disconnected.swap(true, Ordering::Relaxed) => {
                tracing::warn!(host = %inner.name, "a cluster node connection dropped; reconnecting");
            }
            _ => {}
        }
    }
}

/// Memberships the engine ended leave the registry and, when last, the group's subscription;
/// untouched channels are swept; after a dropped node connection the layer connects and
/// subscribes again (every 250 ms until it works), then writes its registry entries again.
async fn janitor(inner: Arc<Inner>, mut leaves: mpsc::UnboundedReceiver<Leave>) {
    let mut shutdown = inner.shutdown.clone();
    let sweep_every =
        (inner.cfg.layer.expiry / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = tokio::time::interval(Duration::from_millis(250));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(leave) = leaves.recv() => {
                for group in leave.groups {
                    if let Err(e) = inner.left(&group, &leave.channel).await {
                        tracing::warn!(channel = %leave.channel, %group, error = %e, "could not end a membership");
                    }
                }
            }
            _ = sweep.tick() => inner.engine.sweep(),
            _ = health.tick() => {
                if inner.disconnected.swap(false, Ordering::Relaxed) {
                    match inner.reconnect().await {
                        Ok(()) => {
                            tracing::info!(host = %inner.name, "reconnected to the cluster and subscribed again");
                            crate::metrics::reconnected("cluster");
                            inner.reassert_registry().await;
                        }
                        Err(e) => {
                            tracing::debug!(host = %inner.name, error = %e, "the cluster is not whole yet");
                            inner.disconnected.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl ChannelLayer for RedisClusterLayer {
    fn config(&self) -> &LayerConfig {
        &self.inner.cfg.layer
    }

    async fn new_channel(&self, prefix: &str) -> Result<ChannelName> {
        self.inner.engine.check_open()?;
        let name = self.inner.client.new_name(prefix)?;
        self.inner.engine.queue(&name);
        Ok(name)
    }

    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        let name = channel.as_str();
        if inner.client.owns(name) {
            return inner.engine.send_to(channel, message);
        }
        if channel.is_process_local() {
            let Some(owner) = owner(name) else {
                return Err(LayerError::Unsupported(format!(
                    "channel {channel} was not made by a switchboard cluster layer"
                )));
            };
            return inner
                .publish(&inner.inbox(owner), &message, &RouteRef::One(name))
                .await;
        }
        inner
            .publish(&inner.named_channel(name), &message, &RouteRef::Unrouted)
            .await
    }

    async fn receive(&self, channel: &ChannelName) -> Result<Message> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        if inner.client.owns(channel.as_str()) {
            return inner.engine.receive(&inner.engine.queue(channel)).await;
        }
        self.receiver(channel).await?.recv().await
    }

    async fn receiver(&self, channel: &ChannelName) -> Result<Receiver> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        if inner.client.owns(channel.as_str()) {
            return Ok(inner.engine.receiver(inner.engine.queue(channel)));
        }
        if channel.is_process_local() {
            return Err(LayerError::Unsupported(format!(
                "channel {channel} belongs to another process; only the process that made it can receive on it"
            )));
        }
        let queue: Arc<Queue> = inner.engine.queue(channel);
        let added = inner.named.lock().insert(channel.as_str().to_owned());
        if added {
            let _l = inner.sub_lock.lock().await;
            let shard = inner.named_channel(channel.as_str());
            if let Err(e) = inner.timed(inner.subscription(&shard, true)).await {
                inner.named.lock().remove(channel.as_str());
                return Err(e);
            }
        }
        Ok(inner.engine.receiver(queue))
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        if !inner.client.owns(channel.as_str()) {
            return Err(LayerError::Unsupported(format!(
                "the cluster layer keeps group membership in the process that owns the channel: \
                 call group_add({group}, {channel}) in the process whose new_channel made it"
            )));
        }
        let queue = inner.engine.queue(channel);
        {
            let _l = inner.sub_lock.lock().await;
            let first = !inner.engine.has_members(group.as_str());
            inner.engine.group_add(group, &queue);
            if first
                && let Err(e) = inner
                    .timed(inner.subscription(&inner.group_channel(group.as_str()), true))
                    .await
            {
                inner.engine.group_discard(group, channel);
                return Err(e);
            }
        }
        let ttl = RedisConfig::ttl_secs(inner.cfg.layer.group_expiry);
        let key = inner.registry_key(group.as_str());
        let mut c = inner.conn();
        inner
            .timed(async {
                redis::pipe()
                    .cmd("ZADD")
                    .arg(&key)
                    .arg(unix_now())
                    .arg(channel.as_str())
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| inner.error(e))
            })
            .await
    }

    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        inner.engine.group_discard(group, channel);
        inner.left(group, channel).await
    }

    async fn group_send(&self, group: &GroupName, message: Message) -> Result<()> {
        self.inner.group_send(None, group, message).await
    }

    async fn group_send_from(
        &self,
        sender: &ChannelName,
        group: &GroupName,
        message: Message,
    ) -> Result<()> {
        self.inner.group_send(Some(sender), group, message).await
    }

    async fn group_channels(&self, group: &GroupName) -> Result<Vec<ChannelName>> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        let cutoff = unix_now() - inner.cfg.layer.group_expiry.as_secs_f64();
        let members: Vec<Vec<u8>> = inner
            .timed(async {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(inner.registry_key(group.as_str()))
                    .arg(format!("({cutoff}"))
                    .arg("+inf")
                    .query_async(&mut inner.conn())
                    .await
                    .map_err(|e| inner.error(e))
            })
            .await?;
        Ok(members
            .into_iter()
            .filter_map(|m| ChannelName::new(String::from_utf8(m).ok()?).ok())
            .collect())
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
        inner.engine.check_open()?;
        let groups = inner.engine.group_names();
        inner.engine.flush();
        {
            let _l = inner.sub_lock.lock().await;
            for group in groups {
                let shard = inner.group_channel(group.as_str());
                if let Err(e) = inner.timed(inner.subscription(&shard, false)).await {
                    tracing::debug!(%group, error = %e, "unsubscribe on flush failed");
                }
            }
        }
        let pattern = format!("{}:cluster:group:*", conn::glob_escape(&inner.cfg.prefix));
        let presence = crate::presence::pattern(&inner.cfg.prefix);
        for (host, port) in inner.masters().await? {
            inner.timed(inner.delete_on(&host, port, &pattern)).await?;
            inner.timed(inner.delete_on(&host, port, &presence)).await?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.engine.close();
        let _ = self.guard.0.send(true);
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        let mut c = inner.conn();
        inner
            .timed(async {
                redis::cmd("PING")
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| inner.error(e))
            })
            .await
    }

    fn stats(&self) -> LayerStats {
        self.inner.engine.stats()
    }

    // Presence: the core layer's keys with the group as the hash tag, so a group's two keys
    // are in one slot (see `crate::presence`).

    async fn presence_add(&self, group: &GroupName, entry: &PresenceEntry) -> Result<()> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        let keys = crate::presence::keys(&inner.cfg.prefix, group, true);
        let mut c = inner.conn();
        let ttl = inner.cfg.layer.presence_ttl;
        let add = async {
            crate::presence::add(&mut c, keys, entry, ttl)
                .await?
                .map_err(|e| inner.error(e))
        };
        inner.timed(add).await
    }

    async fn presence_remove(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        let keys = crate::presence::keys(&inner.cfg.prefix, group, true);
        let mut c = inner.conn();
        let remove = async {
            crate::presence::remove(&mut c, keys, channel)
                .await
                .map_err(|e| inner.error(e))
        };
        inner.timed(remove).await
    }

    async fn presence(&self, group: &GroupName) -> Result<Vec<PresenceEntry>> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        let keys = crate::presence::keys(&inner.cfg.prefix, group, true);
        let mut c = inner.conn();
        let list = async {
            crate::presence::list(&mut c, keys, group)
                .await
                .map_err(|e| inner.error(e))
        };
        inner.timed(list).await
    }

    async fn presence_count(&self, group: &GroupName) -> Result<usize> {
        let inner = &self.inner;
        inner.engine.check_open()?;
        let keys = crate::presence::keys(&inner.cfg.prefix, group, true);
        let mut c = inner.conn();
        let count = async {
            crate::presence::count(&mut c, keys)
                .await
                .map_err(|e| inner.error(e))
        };
        inner.timed(count).await
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn finds_the_process_of_a_channel() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(owner(&format!("specific.{id}!x")), Some(id));
        assert_eq!(owner(&format!("http.response.{id}!x")), Some(id));
        assert_eq!(owner("specific.short!x"), None);
        assert_eq!(
            owner("asgispecific.nothex0123456789abcdef0123456789ab!x"),
            None
        );
        assert_eq!(owner("worker.jobs"), None);
    }
}
