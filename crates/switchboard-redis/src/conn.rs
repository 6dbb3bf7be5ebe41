//! Connections: one multiplexed, self-reconnecting connection per host for commands, and
//! dedicated connections for blocking pops and subscriptions; TLS and credentials from the
//! configuration; a host behind Sentinel follows its master across failovers.
//!
//! redis-rs times a response out after 500 ms by default. Commands get the layer's
//! `command_timeout` instead; a blocking `BZPOPMIN` gets its own connection with no response
//! timeout (our own timer, a little longer than the pop's, catches a dead peer), so it never
//! stalls or fails the commands multiplexed on the shared connection.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::{Notify, watch};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisError, ServerErrorKind, TlsCertificates, TlsMode,
};
use switchboard_core::{ChannelName, LayerError, Result};

use crate::config::{RedisConfig, RedisHost, SentinelHost, TlsConfig};

/// The command connection of a host on the caller's runtime (see [`OnRuntime`]): redis-rs's
/// [`ConnectionManager`], which reconnects by itself — but hands the call that found its
/// connection dead its error (`broken pipe`) and reconnects afterwards. That happens when
/// Redis closed the connection (`CLIENT KILL`, an idle timeout, a proxy, a failover). This
/// sends such a call once more, on the new connection, so the caller sees an error only when
/// Redis is really away; the retry is inside the caller's `command_timeout`, so an error still
/// comes within it.
///
/// What is retried, once: a call answered `broken pipe`, i.e. its connection was closed, or
/// its driver gone, before the reply came. In the cases above the command was not run: it was
/// never written (the driver had seen the connection end), or written to a connection Redis
/// had already closed. Only a connection that dies with the command in flight — after Redis
/// ran it and before its reply arrived — makes the retry run it a second time. For the layers'
/// commands that is harmless but for `PUBLISH`: memberships (`ZADD`/`ZREM`/`EXPIRE`), flush
/// (`SCAN`/`UNLINK`), reads and `PING` are idempotent, and the send and group-send scripts add
/// the same member bytes (the message's random prefix is drawn before the call), so a second
/// run moves that member's score instead of queueing the message twice (at worst it answers
/// `ChannelFull` for the copy the first run queued). A `PUBLISH` run twice is delivered twice:
/// the layers choose the first publish after an idle connection died succeeding (common) over
/// at-most-once delivery in that window (rare: Redis must close the connection between running
/// the publish and answering it).
///
/// Not retried: a response timeout (the command may still run; the caller gets the timeout),
/// a refused or reset connection (Redis is away; the next call connects again) and errors
/// Redis answers (`OOM`, `READONLY`, `NOPERM`, …).
#[derive(Clone)]
pub(crate) struct Conn(ConnectionManager);

/// Whether `e` says the connection was found closed (`BrokenPipe`). redis-rs does not expose
/// the I/O error's kind, only that the connection dropped; of those, a closed connection is the
/// one whose text is the kind's own ("broken pipe").
pub(crate) fn found_closed(e: &RedisError) -> bool {
    e.is_connection_dropped() && e.to_string() == "broken pipe"
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(e) if found_closed(&e) => {
                    crate::metrics::reconnected("command");
                    self.0.req_packed_command(cmd).await
                }
                r => r,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(e) if found_closed(&e) => {
                    crate::metrics::reconnected("command");
                    self.0.req_packed_commands(pipeline, offset, count).await
                }
                r => r,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// One Redis host: a fixed server, or the master a set of sentinels names.
pub(crate) struct Host {
    /// How logs and errors name it (a URL with its password hidden, or `sentinel master X`).
    pub(crate) name: String,
    /// The server commands go to now; replaced when a sentinel names a new master.
    current: RwLock<Target>,
    /// Set for a host found through Sentinel.
    sentinel: Option<Sentinel>,
    /// Counts master changes; loops on dedicated connections reconnect when it moves.
    moved: watch::Sender<u64>,
    manager: ConnectionManagerConfig,
    /// How long connecting (and the first answer) may take.
    connect_limit: Duration,
}

struct Target {
    client: Client,
    /// Commands: pipelined over one connection per runtime that sends them, reconnected on
    /// failure. The first is the one made (and checked) at connect.
    home: ConnectionManager,
    /// The command connection of each runtime that sends commands, `home` among them.
    runtimes: RwLock<Vec<OnRuntime>>,
    /// `host:port`, for logs.
    addr: String,
}

impl Target {
    fn new(client: Client, home: ConnectionManager, addr: String) -> Target {
        let first = OnRuntime::here(home.clone());
        Target {
            client,
            home,
            runtimes: RwLock::new(first.into_iter().collect()),
            addr,
        }
    }
}

/// A command connection made on one tokio runtime, while that runtime runs.
///
/// redis-rs's [`ConnectionManager`] belongs to the runtime it is used on: its reconnect is a
/// shared future that whichever caller polls first drives, so the sockets and timers inside it
/// (the connect timeout, the back-off between attempts) are that caller's runtime's. Polled
/// from another runtime after that one ended — a layer used from short-lived runtimes, as
/// Django's `async_to_sync` does with event loops — such a timer panics ("A Tokio 1.x context
/// was found, but it is being shutdown"). So each runtime that sends commands gets a manager of
/// its own, made lazily on it (no round trip until its first command), and forgotten once that
/// runtime has ended.
struct OnRuntime {
    runtime: tokio::runtime::Id,
    conn: ConnectionManager,
    /// Cleared when the runtime shuts down (it drops the task that holds the [`Alive`]).
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Dropped with this entry: ends that task when the runtime outlives the connection.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OnRuntime {
    /// `conn`, as the current runtime's (`None` off a runtime).
    fn here(conn: ConnectionManager) -> Option<OnRuntime> {
        let runtime = tokio::runtime::Handle::try_current().ok()?.id();
        let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let guard = Alive(alive.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let _ = stopped.await;
        });
        Some(OnRuntime {
            runtime,
            conn,
            alive,
            _stop: stop,
        })
    }

    fn alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Acquire)
    }
}

struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    master_name: String,
    /// Woken when a command failed as it does while the master is away or demoted.
    suspect: Notify,
}

impl Host {
    /// The command connection to the current server, of the caller's runtime (see
    /// [`OnRuntime`]): one is made on the first call from a runtime.
    pub(crate) fn conn(&self) -> Conn {
        let target = self.current.read();
        let Ok(here) = tokio::runtime::Handle::try_current().map(|h| h.id()) else {
            return Conn(target.home.clone());
        };
        let mine = |r: &OnRuntime| r.runtime == here && r.alive();
        if let Some(r) = target.runtimes.read().iter().find(|r| mine(r)) {
            return Conn(r.conn.clone());
        }
        let mut runtimes = target.runtimes.write();
        if let Some(r) = runtimes.iter().find(|r| mine(r)) {
            return Conn(r.conn.clone());
        }
        let conn = match ConnectionManager::new_lazy_with_config(
            target.client.clone(),
            self.manager.clone(),
        ) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(host = %self.name, error = %e, "could not make a command connection for this runtime; using the first");
                return Conn(target.home.clone());
            }
        };
        runtimes.retain(OnRuntime::alive);
        runtimes.extend(OnRuntime::here(conn.clone()));
        Conn(conn)
    }

    /// A client for the current server, for connections of their own (blocking pops,
    /// subscriptions).
    pub(crate) fn client(&self) -> Client {
        self.current.read().client.clone()
    }

    /// A client for the current server speaking RESP3 (for push messages: client-side
    /// caching's invalidations), with the same address, credentials and TLS settings.
    pub(crate) fn resp3_client(&self) -> redis::RedisResult<Client> {
        let info = self.client().get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        Client::open(info.set_redis_settings(settings))
    }

    /// How long connecting (and the first answer) may take.
    pub(crate) fn connect_limit(&self) -> Duration {
        self.connect_limit
    }

    /// Whether the host is a master found through Sentinel (and needs following).
    pub(crate) fn behind_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// How many times the host moved to another server so far (see [`moved`](Host::moved)).
    pub(crate) fn moves(&self) -> u64 {
        *self.moved.borrow()
    }

    /// Changes when the host moved to another server (a Sentinel failover): connections made
    /// from an earlier [`client`](Host::client) point at the old one.
    pub(crate) fn moved(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// A command on this host failed. Behind Sentinel, an error that a failover explains
    /// (connection lost, `READONLY` from a demoted master) makes the host ask the sentinels
    /// again.
    pub(crate) fn error(&self, e: RedisError) -> LayerError {
        crate::metrics::command_failed();
        self.suspect(&e);
        LayerError::backend(format!("redis at {}", self.name), e)
    }

    /// Tells the sentinel follower that `e` may mean the master moved.
    pub(crate) fn suspect(&self, e: &RedisError) {
        if let Some(s) = &self.sentinel
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly))
        {
            s.suspect.notify_one();
        }
    }
}

/// Checks that `host` answers a `PING` within its connect limit (a readiness probe).
pub(crate) async fn ping(host: &Host) -> Result<()> {
    let mut conn = host.conn();
    let pong = timed(
        host.connect_limit,
        redis::cmd("PING").query_async::<()>(&mut conn),
    )
    .await?;
    pong.map_err(|e| host.error(e))
}

/// Connects to every host (the layer is not usable until each answers).
pub(crate) async fn connect_hosts(cfg: &RedisConfig) -> Result<Vec<Host>> {
    if cfg.hosts.is_empty() {
        return Err(LayerError::Config(
            "no Redis host configured: give at least one redis:// URL".into(),
        ));
    }
    let certs = load_tls(&cfg.tls)?;
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.command_timeout))
        // Fail calls fast while Redis is away; the next call tries again.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let connect_limit = cfg.connect_timeout + cfg.command_timeout;
    let mut hosts = Vec::with_capacity(cfg.hosts.len());
    for host in &cfg.hosts {
        let name = host.name();
        let (client, sentinel) = match host {
            RedisHost::Url(url) => (url_client(url, &name, &cfg.tls, certs.as_ref())?, None),
            RedisHost::Sentinel(s) => {
                let mut sc = sentinel_client(s, &cfg.tls, certs.as_ref())?;
                let client = timed(connect_limit, sc.async_get_client())
                    .await?
                    .map_err(|e| connect_error(&name, &e, s.tls))?;
                let sentinel = Sentinel {
                    client: tokio::sync::Mutex::new(sc),
                    master_name: s.master_name.clone(),
                    suspect: Notify::new(),
                };
                (client, Some(sentinel))
            }
        };
        let tls = matches!(
            client.get_connection_info().addr(),
            ConnectionAddr::TcpTls { .. }
        );
        let conn = timed(
            connect_limit,
            ConnectionManager::new_with_config(client.clone(), manager.clone()),
        )
        .await?
        .map_err(|e| connect_error(&name, &e, tls))?;
        // A server with a password accepts the connection and refuses the first command
        // (NOAUTH): ask one now, so that missing credentials fail here and say so.
        timed(
            connect_limit,
            redis::cmd("PING").query_async::<()>(&mut conn.clone()),
        )
        .await?
        .map_err(|e| connect_error(&name, &e, tls))?;
        let addr = address(client.get_connection_info());
        if sentinel.is_some() {
            tracing::info!(host = %name, master = %addr, "sentinels name this master");
        }
        hosts.push(Host {
            name,
            current: RwLock::new(Target::new(client, conn, addr)),
            sentinel,
            moved: watch::channel(0).0,
            manager: manager.clone(),
            connect_limit,
        });
    }
    Ok(hosts)
}

/// rustls needs one process-wide crypto provider; several can be compiled in (other crates
/// of an application may bring aws-lc-rs), so pick ring unless the application chose one.
fn crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// Reads the CA and client certificate files, if any are set.
pub(crate) fn load_tls(tls: &TlsConfig) -> Result<Option<TlsCertificates>> {
    crypto_provider();
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            LayerError::Config(format!(
                "could not read the Redis TLS {what} {}: {e}",
                path.display()
            ))
        })
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read("CA file", p))
        .transpose()?;
    let client_tls = match &tls.client_cert {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("client certificate", cert)?,
            client_key: read("client key", key)?,
        }),
        None => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn tls_settings_set(tls: &TlsConfig) -> bool {
    tls.ca_file.is_some() || tls.client_cert.is_some() || tls.insecure
}

/// A client for one `redis://` or `rediss://` URL with the configured TLS settings.
fn url_client(
    url: &str,
    name: &str,
    tls: &TlsConfig,
    certs: Option<&TlsCertificates>,
) -> Result<Client> {
    let bad = |e: RedisError| LayerError::Config(format!("bad Redis URL {name}: {e}"));
    let info: ConnectionInfo = url.into_connection_info().map_err(bad)?;
    let info = match info.addr().clone() {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if tls.insecure || insecure {
                tracing::warn!(
                    host = %name,
                    "TLS to redis without certificate checks: the connection is encrypted, \
                     but anyone on the path can pretend to be the server"
                );
            }
            info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: tls.insecure || insecure,
                tls_params: None,
            })
        }
        _ if tls_settings_set(tls) => {
            return Err(LayerError::Config(format!(
                "TLS settings are given, but {name} is not a rediss:// URL: use rediss:// to \
                 connect over TLS"
            )));
        }
        _ => info,
    };
    let tls_addr = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    match certs {
        Some(certs) if tls_addr => Client::build_with_tls(info, certs.clone()),
        _ => Client::open(info),
    }
    .map_err(bad)
}

/// A sentinel client for `s`, with credentials for the sentinels and for the master.
fn sentinel_client(
    s: &SentinelHost,
    tls: &TlsConfig,
    certs: Option<&TlsCertificates>,
) -> Result<SentinelClient> {
    let name = format!("sentinel master {}", s.master_name);
    if s.sentinels.is_empty() {
        return Err(LayerError::Config(format!(
            "{name}: no sentinel address given"
        )));
    }
    if s.master_name.is_empty() {
        return Err(LayerError::Config(
            "a sentinel host needs a master name".into(),
        ));
    }
    if !s.tls && tls_settings_set(tls) {
        return Err(LayerError::Config(format!(
            "TLS settings are given, but {name} does not use TLS (SentinelHost::tls)"
        )));
    }
    let mut addrs = Vec::with_capacity(s.sentinels.len());
    for a in &s.sentinels {
        let (host, port) = match a.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().map_err(|_| {
                    LayerError::Config(format!(
                        "{name}: bad sentinel address {a:?} (want host:port)"
                    ))
                })?,
            ),
            None => (a.as_str(), 26379),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(LayerError::Config(format!(
                "{name}: bad sentinel address {a:?} (want host:port)"
            )));
        }
        addrs.push(if s.tls {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: tls.insecure,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host, port)
        });
    }
    let mut b = SentinelClientBuilder::new(addrs, &s.master_name, SentinelServerType::Master)
        .map_err(|e| LayerError::Config(format!("{name}: {e}")))?
        .set_client_to_redis_db(s.db);
    if let Some(u) = &s.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &s.password {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(u) = &s.sentinel_username {
        b = b.set_client_to_sentinel_username(u);
    }
    if let Some(p) = &s.sentinel_password {
        b = b.set_client_to_sentinel_password(p);
    }
    if s.tls {
        let mode = if tls.insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        };
        if tls.insecure {
            tracing::warn!(host = %name, "TLS to redis without certificate checks");
        }
        b = b
            .set_client_to_redis_tls_mode(mode)
            .set_client_to_sentinel_tls_mode(mode);
        if let Some(c) = certs {
            b = b
                .set_client_to_redis_certificates(c.clone())
                .set_client_to_sentinel_certificates(c.clone());
        }
    }
    b.build()
        .map_err(|e| LayerError::Config(format!("{name}: {e}")))
}

/// `host:port` of a connection.
fn address(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        other => format!("{other:?}"),
    }
}

/// A failed first connection, said so that the fix is plain: wrong credentials, an untrusted
/// certificate, TLS spoken to a plain server or plain text to a TLS-only one.
pub(crate) fn connect_error(name: &str, e: &RedisError, tls: bool) -> LayerError {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    if e.kind() == ErrorKind::AuthenticationFailed
        || has("WRONGPASS")
        || has("NOAUTH")
        || has("invalid password")
        || has("invalid username-password")
    {
        return LayerError::Config(format!(
            "redis at {name} refused the credentials (check the user name and password): {e}"
        ));
    }
    if tls && has("CertificateRequired") {
        return LayerError::Config(format!(
            "TLS with redis at {name} failed: the server asks for a client certificate (set \
             one with its key): {e}"
        ));
    }
    if tls && has("received fatal alert") && (has("Certificate") || has("UnknownCA")) {
        return LayerError::Config(format!(
            "TLS with redis at {name} failed: the server refused this client's certificate: {e}"
        ));
    }
    if tls && (has("invalid peer certificate") || has("UnknownIssuer")) {
        return LayerError::Config(format!(
            "TLS with redis at {name} failed: its certificate is not trusted (is the CA file \
             right?): {e}"
        ));
    }
    if tls && (has("corrupt message") || has("InvalidContentType") || has("wrong version")) {
        return LayerError::Config(format!(
            "TLS with redis at {name} failed: the server does not speak TLS there (use \
             redis:// or its TLS port): {e}"
        ));
    }
    if !tls
        && (e.is_connection_dropped() || e.is_io_error() || e.is_timeout())
        && !e.is_connection_refusal()
    {
        return LayerError::backend(
            format!(
                "could not connect to redis at {name} (if the server only speaks TLS, use a \
                 rediss:// URL)"
            ),
            e.clone(),
        );
    }
    LayerError::backend(format!("could not connect to redis at {name}"), e.clone())
}

/// Follows the master of a Sentinel host: listens for `+switch-master` on a sentinel, asks
/// the sentinels again when a command failed as it does during a failover (and every few
/// seconds), and moves the host to the new master when it changed. While the sentinels name
/// no reachable master it asks every 100 ms (a `SENTINEL MASTERS` per sentinel: cheap, and
/// only during an outage). Returns at shutdown; a host not behind Sentinel returns at once
/// (the layers start it only for hosts [behind Sentinel](Host::behind_sentinel)).
pub(crate) async fn follow_master(host: &Host, mut shutdown: watch::Receiver<bool>) {
    const RETRY: Duration = Duration::from_millis(100);
    let Some(sentinel) = &host.sentinel else {
        return;
    };
    let mut events = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut recheck = tokio::time::interval(Duration::from_secs(5));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if events.is_none() {
            events = switch_events(sentinel, host.connect_limit).await;
        }
        let retry = retry_at.unwrap_or_else(|| tokio::time::Instant::now() + RETRY);
        let ask = tokio::select! {
            _ = shutdown.changed() => return,
            () = sentinel.suspect.notified(), if retry_at.is_none() => true,
            () = tokio::time::sleep_until(retry), if retry_at.is_some() => true,
            _ = recheck.tick() => true,
            event = next_event(&mut events) => match event {
                Some(master) => master == sentinel.master_name,
                None => {
                    events = None;
                    true
                }
            },
        };
        if !ask {
            continue;
        }
        match ask_master(host, sentinel).await {
            Ok(()) => retry_at = None,
            Err(e) => {
                if retry_at.is_none() {
                    tracing::debug!(host = %host.name, error = %e, "the sentinels name no reachable master yet");
                }
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

/// A subscription to `+switch-master` on the first sentinel that answers, or `None`.
async fn switch_events(sentinel: &Sentinel, limit: Duration) -> Option<redis::aio::PubSub> {
    let client = timed(limit, async {
        sentinel
            .client
            .lock()
            .await
            .async_get_sentinel_client()
            .await
    })
    .await
    .ok()?
    .ok()?;
    let mut pubsub = timed(limit, client.get_async_pubsub()).await.ok()?.ok()?;
    timed(limit, pubsub.subscribe("+switch-master"))
        .await
        .ok()?
        .ok()?;
    Some(pubsub)
}

/// The master name of the next `+switch-master` event (`<name> <old ip> <old port> <new ip>
/// <new port>`), or `None` when the subscription ended (or there is none).
async fn next_event(events: &mut Option<redis::aio::PubSub>) -> Option<String> {
    let Some(pubsub) = events else {
        return std::future::pending().await;
    };
    let msg = pubsub.on_message().next().await?;
    let payload: String = msg.get_payload().ok()?;
    payload.split_whitespace().next().map(str::to_owned)
}

/// Asks the sentinels for the master; moves the host there if it changed.
async fn ask_master(host: &Host, sentinel: &Sentinel) -> std::result::Result<(), String> {
    let client = timed(host.connect_limit, async {
        sentinel.client.lock().await.async_get_client().await
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let addr = address(client.get_connection_info());
    if addr == host.current.read().addr {
        return Ok(());
    }
    let conn = timed(
        host.connect_limit,
        ConnectionManager::new_with_config(client.clone(), host.manager.clone()),
    )
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let old = std::mem::replace(
        &mut *host.current.write(),
        Target::new(client, conn, addr.clone()),
    );
    host.moved.send_modify(|n| *n += 1);
    crate::metrics::reconnected("failover");
    tracing::warn!(host = %host.name, from = %old.addr, to = %addr, "redis master moved; following it");
    Ok(())
}

/// A connection of its own for blocking commands: no response timeout.
pub(crate) async fn blocking_connection(
    host: &Host,
    cfg: &RedisConfig,
) -> std::result::Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(None);
    host.client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Runs `fut` with a deadline; running out is [`LayerError::Timeout`].
pub(crate) async fn timed<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| LayerError::Timeout(limit))
}

/// Unix time in seconds, as Python's `time.time()`.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Exponential backoff between reconnection attempts, capped at one second.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(Duration::from_millis(50))
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        d
    }

    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
}

/// How a receive loop retries while Redis refuses it or is away: waits with [`Backoff`]
/// between tries, and warns at the first failure of a run, then at most once per
/// `warn_every`, with the number of failures since the last warning. A host that accepts
/// connections but refuses the commands (a replica's `READONLY` during a failover, an ACL's
/// `NOPERM`, `MISCONF`, `LOADING`, a key of the wrong type) is thus tried a few times a
/// second, not in a hot loop, and does not flood the log.
pub(crate) struct Retry {
    backoff: Backoff,
    warn_every: Duration,
    /// Failures since the last success.
    failures: u64,
    /// Failures since the last warning.
    unreported: u64,
    last_warning: Option<Instant>,
}

/// What to do after a failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Failed {
    /// How long to wait before trying again.
    pub(crate) wait: Duration,
    /// `Some(n)`: warn now, `n` failures since the last warning (this one included).
    pub(crate) warn: Option<u64>,
}

impl Retry {
    pub(crate) fn new() -> Retry {
        Retry::warning_every(Duration::from_secs(60))
    }

    pub(crate) fn warning_every(warn_every: Duration) -> Retry {
        Retry {
            backoff: Backoff::new(),
            warn_every,
            failures: 0,
            unreported: 0,
            last_warning: None,
        }
    }

    /// Records a failure at `now`.
    pub(crate) fn failed(&mut self, now: Instant) -> Failed {
        self.failures += 1;
        self.unreported += 1;
        let due = self.failures == 1
            || self
                .last_warning
                .is_none_or(|t| now.saturating_duration_since(t) >= self.warn_every);
        let warn = due.then(|| {
            self.last_warning = Some(now);
            std::mem::take(&mut self.unreported)
        });
        Failed {
            wait: self.backoff.next(),
            warn,
        }
    }

    /// Records a success: the backoff starts over. Returns the failures of the run it ends
    /// (0 if there was none).
    pub(crate) fn succeeded(&mut self) -> u64 {
        self.backoff.reset();
        self.unreported = 0;
        std::mem::take(&mut self.failures)
    }
}

/// A background task of a layer (a subscription loop, a janitor, a Sentinel follower) that
/// must run while the layer is open, on whichever runtime uses the layer now. A tokio runtime
/// drops its tasks when it shuts down, and the runtime a layer was made on can end while the
/// layer lives on, used from others: Django's `async_to_sync` runs each call on an event loop
/// of its own, and so does a program that makes a runtime per job. The layer calls
/// [`ensure`](Task::ensure) at each of its calls, which starts the task again, on the caller's
/// runtime, if it no longer runs.
pub(crate) struct Task(std::sync::Arc<std::sync::atomic::AtomicBool>);

/// Moved into the task's future: clears the flag when the future is dropped (the task ended,
/// or its runtime shut down), however that happens.
struct Alive(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Task {
    pub(crate) fn new() -> Task {
        Task(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            false,
        )))
    }

    /// Spawns `make()`'s future on the current runtime unless the task runs already; returns
    /// whether it did. A task that ended by itself (at shutdown) is started again too: call
    /// this only while the layer is open.
    pub(crate) fn ensure<F>(&self, make: impl FnOnce() -> F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.0.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return false;
        }
        let alive = Alive(self.0.clone());
        let fut = make();
        tokio::spawn(async move {
            let _alive = alive;
            fut.await;
        });
        true
    }
}

/// Held by every handle of a layer; stops the layer's background tasks when the last one goes.
pub(crate) struct Guard(pub(crate) watch::Sender<bool>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Runs a background loop, and runs it again if it panics (a bug: logged at `error`, then
/// retried after `pause`), so one bad message cannot stop the process receiving. Returns when
/// `run`'s future does, or on `shutdown`.
pub(crate) async fn supervised<F, Fut>(
    what: &str,
    mut shutdown: watch::Receiver<bool>,
    pause: Duration,
    run: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        match AssertUnwindSafe(run()).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(what, panic = why, "receive loop panicked; restarting it");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long ago a message scored `score` (its send time in Unix seconds, as read from Redis)
/// was sent, at Unix time `now`. Redis takes any float as a score, `-inf` and `inf` included:
/// a score in the future is age zero; one too far in the past for a [`Duration`] (or NaN)
/// is [`Duration::MAX`], older than any expiry.
pub(crate) fn age(score: f64, now: f64) -> Duration {
    let secs = now - score;
    if secs.is_nan() {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

/// Adds `channel` (joined at `joined`, Unix seconds) to the sorted set of members `key` (a
/// core-layer group, or the pub/sub layer's group registry) and sets the key's TTL.
pub(crate) async fn add_member(
    host: &Host,
    key: &str,
    channel: &str,
    joined: f64,
    ttl: u64,
) -> Result<()> {
    redis::pipe()
        .cmd("ZADD")
        .arg(key)
        .arg(joined)
        .arg(channel)
        .ignore()
        .cmd("EXPIRE")
        .arg(key)
        .arg(ttl)
        .ignore()
        .query_async::<()>(&mut host.conn())
        .await
        .map_err(|e| host.error(e))
}

/// Takes `channel` out of the sorted set of members `key`.
pub(crate) async fn remove_member(host: &Host, key: &str, channel: &str) -> Result<()> {
    redis::cmd("ZREM")
        .arg(key)
        .arg(channel)
        .query_async::<()>(&mut host.conn())
        .await
        .map_err(|e| host.error(e))
}

/// The members of the sorted set `key` that joined after `cutoff` (Unix seconds); names that
/// are not valid channel names are logged and skipped.
pub(crate) async fn members_since(host: &Host, key: &str, cutoff: f64) -> Result<Vec<ChannelName>> {
    let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg(format!("({cutoff}"))
        .arg("+inf")
        .query_async(&mut host.conn())
        .await
        .map_err(|e| host.error(e))?;
    Ok(members
        .into_iter()
        .filter_map(|m| {
            let name = String::from_utf8(m).ok()?;
            ChannelName::new(&name)
                .inspect_err(|e| tracing::warn!(key, error = %e, "invalid member name in group"))
                .ok()
        })
        .collect())
}

/// How long a process's [marker](lost_data) outlives the process (it is set again every
/// second while the process runs).
const MARKER_TTL_SECS: u64 = 60;

/// The key of a process's marker: `PREFIX:process:<client id>`. (No channel name has a `:`,
/// so no channel's queue has this name.)
pub(crate) fn marker_key(prefix: &str, client: &str) -> String {
    format!("{prefix}:process:{client}")
}

/// Whether Redis at `host` lost this process's data since the last call: its marker key, set
/// then, is gone (`FLUSHALL`, `FLUSHDB`, a restart without persistence, a failover to a replica
/// that had not got it, someone deleting keys). Sets the marker again; `was_set` carries
/// whether that worked (it does not at `maxmemory`), so that a marker never set is not taken
/// for a lost one. Each command is bounded by `limit`; a Redis that does not answer lost
/// nothing that this can tell.
pub(crate) async fn lost_data(host: &Host, key: &str, was_set: &mut bool, limit: Duration) -> bool {
    let mut c = host.conn();
    let exists = timed(
        limit,
        redis::cmd("EXISTS").arg(key).query_async::<bool>(&mut c),
    )
    .await;
    let Ok(Ok(exists)) = exists else {
        return false;
    };
    let lost = *was_set && !exists;
    let set = timed(
        limit,
        redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("EX")
            .arg(MARKER_TTL_SECS)
            .query_async::<()>(&mut c),
    )
    .await;
    *was_set = matches!(set, Ok(Ok(())));
    lost
}

/// Deletes this process's [marker](lost_data) on `host` when the layer closes, so that a
/// process that stopped cleanly leaves no key behind (the marker's TTL covers one that did
/// not). Best effort, bounded by `limit`.
pub(crate) async fn clear_marker(host: &Host, key: &str, limit: Duration) {
    let mut c = host.conn();
    let _ = timed(limit, redis::cmd("DEL").arg(key).query_async::<()>(&mut c)).await;
}

/// Glob-escapes `s` for `SCAN … MATCH` and `PSUBSCRIBE`.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Deletes every key matching `pattern` on one host, with SCAN (never the blocking KEYS).
pub(crate) async fn delete_matching(host: &Host, pattern: &str) -> Result<u64> {
    let mut conn = host.conn();
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| host.error(e))?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| host.error(e))?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::{Failed, Retry, age, glob_escape, supervised};

    #[test]
    fn retries_back_off_and_warn_once_a_minute() {
        let mut r = Retry::warning_every(Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(
            r.failed(t0),
            Failed {
                wait: ms(50),
                warn: Some(1)
            }
        );
        let waits: Vec<Duration> = (0..6).map(|_| r.failed(t0 + ms(10)).wait).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        // No warning until a minute after the last one; then it counts what it skipped.
        assert_eq!(r.failed(t0 + Duration::from_secs(59)).warn, None);
        assert_eq!(r.failed(t0 + Duration::from_secs(60)).warn, Some(8));
        assert_eq!(r.succeeded(), 9);
        assert_eq!(r.succeeded(), 0);
        // A new run warns at once and starts from the shortest wait.
        assert_eq!(
            r.failed(t0 + Duration::from_secs(61)),
            Failed {
                wait: ms(50),
                warn: Some(1)
            }
        );
    }

    #[test]
    fn any_score_redis_holds_has_an_age() {
        let now = 1_700_000_000.0;
        assert_eq!(age(now - 1.5, now), Duration::from_millis(1500));
        assert_eq!(age(now + 10.0, now), Duration::ZERO);
        assert_eq!(age(f64::INFINITY, now), Duration::ZERO);
        assert_eq!(age(f64::NEG_INFINITY, now), Duration::MAX);
        assert_eq!(age(-1e300, now), Duration::MAX);
        assert_eq!(age(f64::NAN, now), Duration::MAX);
    }

    #[tokio::test]
    async fn a_panicking_loop_is_started_again() {
        let runs = AtomicU32::new(0);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        supervised("test", rx, Duration::from_millis(1), || async {
            if runs.fetch_add(1, Ordering::Relaxed) < 2 {
                panic!("bad message");
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn shutdown_ends_the_restarts() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let _ = tx.send(true);
        let runs = AtomicU32::new(0);
        // The first run panics; the pause before the next one ends at once on shutdown.
        supervised("test", rx, Duration::from_secs(3600), || async {
            runs.fetch_add(1, Ordering::Relaxed);
            panic!("always");
        })
        .await;
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn only_a_closed_connection_is_retried() {
        use redis::RedisError;
        let closed = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(super::found_closed(&closed), "{closed:?}");
        for other in [
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        ] {
            assert!(!super::found_closed(&other), "{other:?}");
        }
    }

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("asgi"), "asgi");
    }
}
