//! The channel-layer flags every example shares: in-memory by default, Redis with `--redis`.
//!
//! ```text
//! --redis redis://127.0.0.1:6379            RedisLayer (channels_redis.core), shared with Django
//! --redis redis://… --layer pubsub          RedisPubSubLayer (channels_redis.pubsub)
//! --redis-prefix asgi                       key prefix, as channels_redis's "prefix"
//! ```

use switchboard::{InMemoryLayer, Layer, LayerConfig};

/// Which Redis layer `--redis` uses.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RedisKind {
    /// `RedisLayer`: sorted-set queues, groups in Redis (channels_redis.core.RedisChannelLayer).
    #[default]
    Core,
    /// `RedisPubSubLayer`: publish/subscribe (channels_redis.pubsub.RedisPubSubChannelLayer).
    Pubsub,
}

/// Which channel layer to run on.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct LayerArgs {
    /// Redis URL for a layer shared by several processes (e.g. redis://127.0.0.1:6379).
    /// Without it the layer is in-memory: one process, no Redis needed.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Which Redis layer, with --redis.
    #[arg(long, value_enum, default_value_t = RedisKind::Core, requires = "redis")]
    pub(crate) layer: RedisKind,
    /// Key prefix in Redis (channels_redis's "prefix"), with --redis.
    #[arg(long, default_value = "asgi", requires = "redis")]
    pub(crate) redis_prefix: String,
    /// Channel capacity (messages waiting per channel).
    #[arg(long, default_value_t = 100)]
    pub(crate) capacity: usize,
}

impl LayerArgs {
    /// Builds the layer the flags describe.
    pub(crate) async fn build(&self) -> Result<Layer, Box<dyn std::error::Error + Send + Sync>> {
        let config = LayerConfig::default().capacity(self.capacity);
        let Some(url) = &self.redis else {
            return Ok(Layer::new(InMemoryLayer::new(config)));
        };
        #[cfg(feature = "redis")]
        {
            use switchboard::redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
            let redis = RedisConfig::new(url.as_str())
                .prefix(self.redis_prefix.as_str())
                .layer(config);
            Ok(match self.layer {
                RedisKind::Core => Layer::new(RedisLayer::connect(redis).await?),
                RedisKind::Pubsub => Layer::new(RedisPubSubLayer::connect(redis).await?),
            })
        }
        #[cfg(not(feature = "redis"))]
        {
            Err(format!(
                "--redis {url}: this build has no Redis layers; build it with `--features redis`"
            )
            .into())
        }
    }

    /// A short description for the start-up log line.
    pub(crate) fn describe(&self) -> String {
        match (&self.redis, self.layer) {
            (None, _) => "in-memory layer".to_owned(),
            (Some(url), RedisKind::Core) => format!(
                "redis layer at {} (prefix {:?})",
                redact(url),
                self.redis_prefix
            ),
            (Some(url), RedisKind::Pubsub) => format!(
                "redis pub/sub layer at {} (prefix {:?})",
                redact(url),
                self.redis_prefix
            ),
        }
    }
}

/// The URL with any password (and user name) hidden, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
