//! Settings of the Redis layers, named as channels_redis names them.

use std::fmt;
use std::time::Duration;

use switchboard_core::LayerConfig;

/// Settings for [`RedisLayer`](crate::RedisLayer) and [`RedisPubSubLayer`](crate::RedisPubSubLayer).
///
/// The fields a Django process on the same Redis must agree on are those of channels_redis's
/// `CONFIG`: `hosts` (same URLs, **same order** — the order picks the host of every key),
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
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Redis URLs (`redis://[:password@]host:port[/db]`, `rediss://…` is not built in). Several
    /// hosts shard channels and groups with channels_redis's consistent hash.
    pub hosts: Vec<String>,
    /// Prepended to every key (`asgi`, as in channels_redis).
    pub prefix: String,
    /// Capacity, expiry and group expiry.
    pub layer: LayerConfig,
    /// Fernet keys; the first encrypts, all are tried when decrypting.
    pub(crate) symmetric_encryption_keys: Vec<Vec<u8>>,
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
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field(
                "hosts",
                &self.hosts.iter().map(|h| redact(h)).collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("layer", &self.layer)
            .field(
                "symmetric_encryption_keys",
                &format_args!("[{} hidden]", self.symmetric_encryption_keys.len()),
            )
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("blocking_timeout", &self.blocking_timeout)
            .field("drop_stalled_members", &self.drop_stalled_members)
            .finish()
    }
}

impl RedisConfig {
    /// One Redis host, channels_redis's defaults otherwise.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig::hosts([url])
    }

    /// Several hosts. Their order must be the same in every process sharing the layer.
    pub fn hosts<I, S>(urls: I) -> RedisConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConfig {
            hosts: urls.into_iter().map(Into::into).collect(),
            prefix: "asgi".into(),
            layer: LayerConfig::default(),
            symmetric_encryption_keys: Vec::new(),
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            blocking_timeout: Duration::from_secs(5),
            drop_stalled_members: true,
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

    /// The hosts' URLs with their passwords hidden, for logs.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| redact(h)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:pw@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact("redis://host:1"), "redis://host:1");
        let dbg = format!(
            "{:?}",
            RedisConfig::new("redis://u:secret@h").symmetric_encryption_keys(["k"])
        );
        assert!(!dbg.contains("secret") && dbg.contains("1 hidden"), "{dbg}");
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(RedisConfig::ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(RedisConfig::ttl_secs(Duration::from_secs(60)), 60);
    }
}
