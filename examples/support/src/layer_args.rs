//! The channel-layer flags every example shares: in-memory by default, Redis with `--redis`.
//!
//! ```text
//! --redis redis://127.0.0.1:6379            RedisLayer (channels_redis.core), shared with Django
//! --redis redis://… --layer pubsub          RedisPubSubLayer (channels_redis.pubsub)
//! --redis-prefix asgi                       key prefix, as channels_redis's "prefix"
//! ```

use switchboard::redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
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
#[derive(clap::Args, Debug, Clone)]
pub struct LayerArgs {
    /// Redis URL for a layer shared by several processes (e.g. redis://127.0.0.1:6379).
    /// Without it the layer is in-memory: one process, no Redis needed.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Which Redis layer, with --redis.
    #[arg(long, value_enum, default_value_t = RedisKind::Core, requires = "redis")]
    pub layer: RedisKind,
    /// Key prefix in Redis (channels_redis's "prefix"), with --redis.
    #[arg(long, default_value = "asgi", requires = "redis")]
    pub redis_prefix: String,
    /// Channel capacity (messages waiting per channel).
    #[arg(long, default_value_t = 100)]
    pub capacity: usize,
}

impl LayerArgs {
    /// Builds the layer the flags describe.
    pub async fn build(&self) -> Result<Layer, Box<dyn std::error::Error + Send + Sync>> {
        let config = LayerConfig::default().capacity(self.capacity);
        let Some(redis) = self.redis_config(config.clone()) else {
            return Ok(Layer::new(InMemoryLayer::new(config)));
        };
        Ok(match self.layer {
            RedisKind::Core => Layer::new(RedisLayer::connect(redis).await?),
            RedisKind::Pubsub => Layer::new(RedisPubSubLayer::connect(redis).await?),
        })
    }

    fn redis_config(&self, layer: LayerConfig) -> Option<RedisConfig> {
        let url = self.redis.as_deref()?;
        Some(
            RedisConfig::new(url)
                .prefix(self.redis_prefix.as_str())
                .layer(layer),
        )
    }

    /// A short description for the start-up log line (passwords hidden).
    pub fn describe(&self) -> String {
        let Some(redis) = self.redis_config(LayerConfig::default()) else {
            return "in-memory layer".to_owned();
        };
        let kind = match self.layer {
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
