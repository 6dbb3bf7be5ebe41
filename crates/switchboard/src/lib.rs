#![doc = include_str!("../docs/guide.md")]

pub use switchboard_core::*;

/// Redis channel layers (feature `redis`): [`RedisLayer`](redis::RedisLayer) and
/// [`RedisPubSubLayer`](redis::RedisPubSubLayer), wire-compatible with Django Channels'
/// `channels_redis`, configured by [`RedisConfig`](redis::RedisConfig).
#[cfg(feature = "redis")]
pub mod redis {
    pub use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
}
