//! Settings of the Redis layers, named as channels_redis names them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use switchboard_core::LayerConfig;

/// Settings for [`RedisLayer`](crate::RedisLayer) and [`RedisPubSubLayer`](crate::RedisPubSubLayer).
///
/// The fields a Django process on the same Redis must agree on are those of channels_redis's
/// `CONFIG`: `hosts` (same servers, **same order** — the order picks the host of every key),
/// `prefix`, `symmetric_encryption_keys`, and for the core layer `expiry`, `group_expiry` and
/// `capacity` / `channel_capacity` (in [`LayerConfig`]).
///
/// ```
/// use std::time::Duration;
/// use switchboard_core::LayerConfig;
/// use switchboard_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379")
///     .prefix("asgi")
///     .layer(LayerConfig::default().capacity(1_000).expiry(Duration::from_secs(60)))
///     .symmetric_encryption_keys(["the same secret as in Django's CHANNEL_LAYERS"]);
/// assert_eq!(config.hosts.len(), 1);
/// ```
///
/// On managed Redis that only speaks TLS, and behind Sentinel:
///
/// ```
/// use switchboard_redis::{RedisConfig, SentinelHost};
///
/// // rediss:// with a private CA and a client certificate (mutual TLS).
/// let tls = RedisConfig::new("rediss://default:secret@redis.internal:6380/0")
///     .tls_ca_file("/etc/redis/ca.pem")
///     .tls_client_cert("/etc/redis/client.pem", "/etc/redis/client.key");
///
/// // channels_redis's {"sentinels": [...], "master_name": "mymaster", "sentinel_kwargs": {...}}
/// let sentinel = RedisConfig::new(
///     SentinelHost::new(["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"], "mymaster")
///         .sentinel_password("sentinel secret")
///         .password("master secret"),
/// );
/// assert!(!format!("{tls:?}{sentinel:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The Redis servers. Several hosts shard channels and groups with channels_redis's
    /// consistent hash.
    pub hosts: Vec<RedisHost>,
    /// Prepended to every key (`asgi`, as in channels_redis).
    pub prefix: String,
    /// Capacity, expiry and group expiry.
    pub layer: LayerConfig,
    /// Fernet keys; the first encrypts, all are tried when decrypting.
    pub(crate) symmetric_encryption_keys: Vec<Vec<u8>>,
    /// Certificates for `rediss://` hosts (and Sentinel masters with
    /// [`SentinelHost::tls`]).
    pub tls: TlsConfig,
    /// How long a layer call may take before it fails with
    /// [`LayerError::Timeout`](switchboard_core::LayerError::Timeout).
    /// Default 5 s.
    pub command_timeout: Duration,
    /// How long connecting to a host may take. Default 1 s.
    pub connect_timeout: Duration,
    /// How long one blocking pop (`BZPOPMIN`) waits before it is issued again. Default 5 s,
    /// channels_redis's `brpop_timeout`.
    pub blocking_timeout: Duration,
    /// Core layer: when a `group_send` finds messages older than `expiry` in a member's queue
    /// (its process stopped reading or died), take that queue's channels out of the group.
    /// Default on. Off keeps channels_redis's behaviour: dead members stay for `group_expiry`.
    pub drop_stalled_members: bool,
    /// Core layer: keep the groups' members in this process and let Redis tell when they
    /// change (client tracking over RESP3), instead of reading them for every `group_send`.
    /// Default on; without tracking on the server (Redis 6 or later) members are read as
    /// channels_redis reads them. What goes over the wire to Django is the same either way.
    pub cache_groups: bool,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("hosts", &self.hosts)
            .field("prefix", &self.prefix)
            .field("layer", &self.layer)
            .field(
                "symmetric_encryption_keys",
                &format_args!("[{} hidden]", self.symmetric_encryption_keys.len()),
            )
            .field("tls", &self.tls)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("blocking_timeout", &self.blocking_timeout)
            .field("drop_stalled_members", &self.drop_stalled_members)
            .field("cache_groups", &self.cache_groups)
            .finish()
    }
}

/// One Redis server of a layer: a URL, or a master found through Sentinel.
///
/// Strings convert: `"redis://…"` is [`RedisHost::Url`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisHost {
    /// `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS. A password is
    /// hidden wherever the URL is printed.
    Url(String),
    /// The master that a set of Sentinels names; followed across failovers.
    Sentinel(SentinelHost),
}

impl RedisHost {
    /// The URL, for a [`RedisHost::Url`].
    pub fn url(&self) -> Option<&str> {
        match self {
            RedisHost::Url(u) => Some(u),
            RedisHost::Sentinel(_) => None,
        }
    }

    /// How this host is named in logs and errors: the URL with its password hidden, or
    /// `sentinel master NAME`.
    pub fn name(&self) -> String {
        match self {
            RedisHost::Url(u) => redact(u),
            RedisHost::Sentinel(s) => format!("sentinel master {}", s.master_name),
        }
    }
}

impl fmt::Debug for RedisHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisHost::Url(u) => f.debug_tuple("Url").field(&redact(u)).finish(),
            RedisHost::Sentinel(s) => f.debug_tuple("Sentinel").field(s).finish(),
        }
    }
}

impl From<&str> for RedisHost {
    fn from(url: &str) -> RedisHost {
        RedisHost::Url(url.to_owned())
    }
}

impl From<String> for RedisHost {
    fn from(url: String) -> RedisHost {
        RedisHost::Url(url)
    }
}

impl From<&String> for RedisHost {
    fn from(url: &String) -> RedisHost {
        RedisHost::Url(url.clone())
    }
}

impl From<SentinelHost> for RedisHost {
    fn from(s: SentinelHost) -> RedisHost {
        RedisHost::Sentinel(s)
    }
}

/// A master found through Redis Sentinel, configured as channels_redis takes it: the
/// sentinels' addresses, the master's name, credentials for the sentinels
/// (`sentinel_kwargs`) and for the master.
///
/// The layer asks the sentinels for the master, checks that it answers `ROLE` as a master,
/// and follows a failover: it listens for `+switch-master` on a sentinel and asks again when
/// a command fails with a connection error or `READONLY`, then moves every connection to the
/// new master.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelHost {
    /// The sentinels, as `host:port` (port 26379 if left out).
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under (`sentinel monitor NAME …`).
    pub master_name: String,
    pub(crate) sentinel_username: Option<String>,
    pub(crate) sentinel_password: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// The database number on the master.
    pub db: i64,
    /// Speak TLS to the sentinels and the master, with [`RedisConfig::tls`].
    pub tls: bool,
}

impl SentinelHost {
    /// The master `master_name` that these sentinels monitor.
    pub fn new<I, S>(sentinels: I, master_name: impl Into<String>) -> SentinelHost
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SentinelHost {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: master_name.into(),
            sentinel_username: None,
            sentinel_password: None,
            username: None,
            password: None,
            db: 0,
            tls: false,
        }
    }

    /// The password of the sentinels (`requirepass` on the sentinels; channels_redis's
    /// `sentinel_kwargs={"password": …}`).
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into());
        self
    }

    /// An ACL user on the sentinels.
    pub fn sentinel_username(mut self, username: impl Into<String>) -> Self {
        self.sentinel_username = Some(username.into());
        self
    }

    /// The password of the master (and of the replica that takes over).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// An ACL user on the master.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The database number on the master.
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Whether the sentinels and the master speak TLS.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
}

impl fmt::Debug for SentinelHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "***");
        f.debug_struct("SentinelHost")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &hidden(&self.sentinel_password))
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS settings for `rediss://` hosts.
///
/// By default the server's certificate is checked against the system's roots (and
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`, where set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the server's certificate, instead of the system roots
    /// (channels_redis's `ssl_ca_certs`).
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate (chain) and its private key, for servers that ask
    /// for one (`tls-auth-clients yes`; channels_redis's `ssl_certfile` / `ssl_keyfile`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any certificate, unchecked (channels_redis's `ssl_cert_reqs=None`). The
    /// connection is encrypted but not authenticated; the layer logs a warning at connect.
    pub insecure: bool,
}

impl RedisConfig {
    /// One Redis host, channels_redis's defaults otherwise.
    pub fn new(host: impl Into<RedisHost>) -> RedisConfig {
        RedisConfig::hosts([host])
    }

    /// Several hosts. Their order must be the same in every process sharing the layer.
    pub fn hosts<I, S>(hosts: I) -> RedisConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<RedisHost>,
    {
        RedisConfig {
            hosts: hosts.into_iter().map(Into::into).collect(),
            prefix: "asgi".into(),
            layer: LayerConfig::default(),
            symmetric_encryption_keys: Vec::new(),
            tls: TlsConfig::default(),
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            blocking_timeout: Duration::from_secs(5),
            drop_stalled_members: true,
            cache_groups: true,
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets capacity, expiry and group expiry.
    pub fn layer(mut self, layer: LayerConfig) -> Self {
        self.layer = layer;
        self
    }

    /// Encrypts messages with Fernet, deriving the keys as channels_redis does. The first key
    /// encrypts; every key is tried when decrypting.
    pub fn symmetric_encryption_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        self.symmetric_encryption_keys = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        self
    }

    /// Checks `rediss://` servers' certificates against the CA(s) in this PEM file instead of
    /// the system roots.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM, chain first) with its private key (PEM) to
    /// `rediss://` servers: mutual TLS.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Accepts `rediss://` servers' certificates unchecked (logged as a warning at connect).
    pub fn tls_insecure(mut self, insecure: bool) -> Self {
        self.tls.insecure = insecure;
        self
    }

    /// Sets the per-call timeout.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long one blocking pop waits.
    pub fn blocking_timeout(mut self, timeout: Duration) -> Self {
        self.blocking_timeout = timeout;
        self
    }

    /// Whether a group send takes members whose queue holds expired messages out of the group.
    pub fn drop_stalled_members(mut self, on: bool) -> Self {
        self.drop_stalled_members = on;
        self
    }

    /// Whether the core layer caches the groups' members, kept true by Redis's client
    /// tracking ([`cache_groups`](RedisConfig::cache_groups)). Default on.
    pub fn cache_groups(mut self, on: bool) -> Self {
        self.cache_groups = on;
        self
    }

    /// The hosts as logs name them: URLs with their passwords hidden, or
    /// `sentinel master NAME`.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(RedisHost::name).collect()
    }

    /// Whole seconds, at least one (Redis `EXPIRE` takes seconds).
    pub(crate) fn ttl_secs(d: Duration) -> u64 {
        (d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))).max(1)
    }
}

/// A URL with its password hidden, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Group history ([`LayerConfig::group_history`]) is not kept by `RedisClusterLayer` yet: given
/// one it refuses to connect rather than send messages without positions.
pub(crate) fn refuse_history(cfg: &RedisConfig) -> switchboard_core::Result<()> {
    if cfg.layer.has_history() {
        return Err(switchboard_core::LayerError::Config(
            "group history (LayerConfig::group_history) is kept by the in-memory layer, \
             RedisLayer and RedisPubSubLayer; RedisClusterLayer does not keep it yet"
                .into(),
        ));
    }
    Ok(())
}

/// Group history numbers messages inside Redis, which cannot write into a Fernet token.
pub(crate) fn refuse_encrypted_history(cfg: &RedisConfig) -> switchboard_core::Result<()> {
    if cfg.layer.has_history() && !cfg.symmetric_encryption_keys.is_empty() {
        return Err(switchboard_core::LayerError::Config(
            "group history (LayerConfig::group_history) cannot be kept with \
             symmetric_encryption_keys: Redis numbers each message and cannot write into an \
             encrypted one"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:pw@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact("redis://host:1"), "redis://host:1");
        assert_eq!(redact("rediss://user:pw@host:1"), "rediss://***@host:1");
        let dbg = format!(
            "{:?}",
            RedisConfig::hosts([
                RedisHost::from("redis://u:secret@h"),
                SentinelHost::new(["127.0.0.1:26379"], "m")
                    .sentinel_password("secret-s")
                    .username("bob")
                    .password("secret-m")
                    .into(),
            ])
            .symmetric_encryption_keys(["k"])
        );
        assert!(!dbg.contains("secret") && dbg.contains("1 hidden"), "{dbg}");
        assert!(dbg.contains("bob") && dbg.contains("***"), "{dbg}");
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(RedisConfig::ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(RedisConfig::ttl_secs(Duration::from_secs(60)), 60);
    }
}
