//! The channel-layer flags every example shares: in-memory by default, Redis with `--redis`.
//!
//! ```text
//! --redis redis://127.0.0.1:6379            RedisLayer (channels_redis.core), shared with Django
//! --redis redis://… --layer pubsub          RedisPubSubLayer (channels_redis.pubsub)
//! --redis-prefix asgi                       key prefix, as channels_redis's "prefix"
//! --redis rediss://… [--redis-ca FILE] [--redis-cert FILE --redis-key FILE] [--redis-tls-insecure]
//!                                           TLS: a private CA, mutual TLS, or no verification
//! --redis-sentinel h:p,h:p,… --redis-master NAME
//!                                           the master that these sentinels name, followed
//!                                           across failovers (passwords: REDIS_PASSWORD,
//!                                           REDIS_SENTINEL_PASSWORD in the environment)
//! --redis-cluster h:p,h:p,…                 RedisClusterLayer on Redis Cluster (switchboard only:
//!                                           Django cannot share it)
//! ```

use std::path::PathBuf;

use switchboard::redis::{
    RedisClusterLayer, RedisConfig, RedisLayer, RedisPubSubLayer, SentinelHost,
};
use switchboard::{InMemoryLayer, Layer, LayerConfig};

/// Which Redis layer `--redis` uses.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisKind {
    /// `RedisLayer`: sorted-set queues, groups in Redis (channels_redis.core.RedisChannelLayer).
    #[default]
    Core,
    /// `RedisPubSubLayer`: publish/subscribe (channels_redis.pubsub.RedisPubSubChannelLayer).
    Pubsub,
}

/// Which channel layer to run on.
#[derive(clap::Args, Clone)]
#[command(group = clap::ArgGroup::new("redis_server").args(["redis", "redis_sentinel", "redis_cluster"]))]
pub struct LayerArgs {
    /// Redis URL for a layer shared by several processes (e.g. redis://127.0.0.1:6379,
    /// rediss://… for TLS, redis://user:password@… for an ACL user).
    /// Without it (or --redis-sentinel) the layer is in-memory: one process, no Redis needed.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Sentinels to ask for the Redis master, instead of --redis (host:port,host:port,…).
    #[arg(
        long,
        value_name = "HOST:PORT,…",
        value_delimiter = ',',
        requires = "redis_master"
    )]
    pub redis_sentinel: Option<Vec<String>>,
    /// Redis Cluster seed nodes, instead of --redis (host:port,… or redis:// or rediss://
    /// URLs): the cluster layer (sharded pub/sub; not shared with Django).
    #[arg(long, value_name = "HOST:PORT,…", value_delimiter = ',')]
    pub redis_cluster: Option<Vec<String>>,
    /// The master's name at the sentinels, with --redis-sentinel.
    #[arg(long, value_name = "NAME")]
    pub redis_master: Option<String>,
    /// The master's password, with --redis-sentinel (with --redis, put it in the URL).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// The sentinels' password, with --redis-sentinel.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,
    /// Speak TLS to the sentinels and the master, with --redis-sentinel.
    #[arg(long)]
    pub redis_sentinel_tls: bool,
    /// PEM file of the CA that signed the Redis server's certificate (instead of the system
    /// roots), for rediss:// or --redis-sentinel-tls.
    #[arg(long, value_name = "FILE", requires = "redis_server")]
    pub redis_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS, with --redis-key.
    #[arg(long, value_name = "FILE", requires_all = ["redis_key", "redis_server"])]
    pub redis_cert: Option<PathBuf>,
    /// PEM private key of --redis-cert.
    #[arg(long, value_name = "FILE", requires = "redis_cert")]
    pub redis_key: Option<PathBuf>,
    /// Accept the Redis server's certificate unchecked (encrypted, not authenticated).
    #[arg(long, requires = "redis_server")]
    pub redis_tls_insecure: bool,
    /// Which Redis layer, with --redis or --redis-sentinel.
    #[arg(long, value_enum, default_value_t = RedisKind::Core, requires = "redis_server", conflicts_with = "redis_cluster")]
    pub layer: RedisKind,
    /// Key prefix in Redis (channels_redis's "prefix"), with --redis or --redis-sentinel.
    #[arg(long, default_value = "asgi", requires = "redis_server")]
    pub redis_prefix: String,
    /// Channel capacity (messages waiting per channel).
    #[arg(long, default_value_t = 100)]
    pub capacity: usize,
}

impl LayerArgs {
    /// Builds the layer the flags describe.
    pub async fn build(&self) -> Result<Layer, Box<dyn std::error::Error + Send + Sync>> {
        self.build_with(|c, _| Ok(c)).await
    }

    /// Whether the flags ask for the in-memory layer (no Redis).
    pub fn in_memory(&self) -> bool {
        self.redis.is_none() && self.redis_sentinel.is_none() && self.redis_cluster.is_none()
    }

    /// Whether the layer the flags describe keeps group history: every layer but the
    /// cluster's does so far.
    pub fn keeps_history(&self) -> bool {
        self.redis_cluster.is_none()
    }

    /// [`build`](LayerArgs::build), the configuration passed through `configure` first with
    /// whether the layer keeps group history ([`keeps_history`](LayerArgs::keeps_history)).
    pub async fn build_with(
        &self,
        configure: impl FnOnce(LayerConfig, bool) -> switchboard::Result<LayerConfig>,
    ) -> Result<Layer, Box<dyn std::error::Error + Send + Sync>> {
        self.check().map_err(FlagError)?;
        let config = configure(
            LayerConfig::default().capacity(self.capacity),
            self.keeps_history(),
        )?;
        let Some(redis) = self.redis_config(config.clone()) else {
            return Ok(Layer::new(InMemoryLayer::new(config)));
        };
        if self.redis_cluster.is_some() {
            return Ok(Layer::new(RedisClusterLayer::connect(redis).await?));
        }
        Ok(match self.layer {
            RedisKind::Core => Layer::new(RedisLayer::connect(redis).await?),
            RedisKind::Pubsub => Layer::new(RedisPubSubLayer::connect(redis).await?),
        })
    }

    fn redis_config(&self, layer: LayerConfig) -> Option<RedisConfig> {
        let mut cfg = match (&self.redis, &self.redis_sentinel) {
            (Some(url), _) => RedisConfig::new(url.as_str()),
            (None, None) if self.redis_cluster.is_some() => {
                RedisConfig::hosts(self.redis_cluster.iter().flatten().map(|n| {
                    let n = n.trim();
                    if n.starts_with("redis://") || n.starts_with("rediss://") {
                        n.to_owned()
                    } else {
                        format!("redis://{n}")
                    }
                }))
            }
            (None, Some(sentinels)) => {
                let mut host = SentinelHost::new(
                    sentinels.iter().map(|s| s.trim()),
                    self.redis_master.clone().unwrap_or_default(),
                )
                .tls(self.redis_sentinel_tls);
                if let Some(p) = &self.redis_password {
                    host = host.password(p);
                }
                if let Some(p) = &self.redis_sentinel_password {
                    host = host.sentinel_password(p);
                }
                RedisConfig::new(host)
            }
            (None, None) => return None,
        };
        if let Some(ca) = &self.redis_ca {
            cfg = cfg.tls_ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&self.redis_cert, &self.redis_key) {
            cfg = cfg.tls_client_cert(cert, key);
        }
        Some(
            cfg.tls_insecure(self.redis_tls_insecure)
                .prefix(self.redis_prefix.as_str())
                .layer(layer),
        )
    }

    /// Checks what the flags name before connecting, so that a mistake names its flag.
    fn check(&self) -> Result<(), String> {
        for (flag, file) in [
            ("--redis-ca", &self.redis_ca),
            ("--redis-cert", &self.redis_cert),
            ("--redis-key", &self.redis_key),
        ] {
            if let Some(f) = file {
                std::fs::metadata(f).map_err(|e| format!("{flag} {}: {e}", f.display()))?;
            }
        }
        let tls = self.redis_ca.is_some() || self.redis_cert.is_some() || self.redis_tls_insecure;
        if let Some(url) = &self.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "--redis {}: not a redis:// or rediss:// URL",
                    RedisConfig::new(url.as_str()).host_names().join("")
                ));
            }
            if tls && !url.starts_with("rediss://") {
                return Err(
                    "--redis-ca, --redis-cert and --redis-tls-insecure are for TLS: give a \
                     rediss:// URL to --redis"
                        .into(),
                );
            }
        }
        if let Some(nodes) = &self.redis_cluster {
            for n in nodes {
                let n = n.trim();
                let addr = n
                    .strip_prefix("redis://")
                    .or_else(|| n.strip_prefix("rediss://"))
                    .unwrap_or(n);
                let port = addr.rsplit_once(':').map(|(_, p)| p.trim_end_matches('/'));
                if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                    return Err(format!("--redis-cluster {n:?}: want host:port"));
                }
                if tls && !n.starts_with("rediss://") {
                    return Err(
                        "--redis-ca, --redis-cert and --redis-tls-insecure are for TLS: give \
                         rediss:// URLs to --redis-cluster"
                            .into(),
                    );
                }
            }
        }
        if self.redis_sentinel.is_none() {
            for (flag, given) in [
                ("--redis-master", self.redis_master.is_some()),
                ("--redis-sentinel-tls", self.redis_sentinel_tls),
            ] {
                if given {
                    return Err(format!("{flag} is for --redis-sentinel"));
                }
            }
        }
        if let Some(sentinels) = &self.redis_sentinel {
            for s in sentinels {
                let port = s.trim().rsplit_once(':').map(|(_, p)| p);
                if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                    return Err(format!("--redis-sentinel {s:?}: want host:port"));
                }
            }
            if tls && !self.redis_sentinel_tls {
                return Err(
                    "--redis-ca, --redis-cert and --redis-tls-insecure are for TLS: add \
                     --redis-sentinel-tls"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// A short description for the start-up log line (passwords hidden).
    pub fn describe(&self) -> String {
        let Some(redis) = self.redis_config(LayerConfig::default()) else {
            return "in-memory layer".to_owned();
        };
        let kind = match self.layer {
            _ if self.redis_cluster.is_some() => "redis cluster layer",
            RedisKind::Core => "redis layer",
            RedisKind::Pubsub => "redis pub/sub layer",
        };
        format!(
            "{kind} at {} (prefix {:?})",
            redis.host_names().join(", "),
            self.redis_prefix
        )
    }
}

impl std::fmt::Debug for LayerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerArgs")
            .field("layer", &self.describe())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A flag that names something unusable; printed as it reads.
struct FlagError(String);

impl std::fmt::Debug for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlagError {}
