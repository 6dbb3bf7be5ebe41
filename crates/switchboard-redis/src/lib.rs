//! Redis channel layers for [switchboard](https://docs.rs/switchboard), speaking the wire format
//! of Django Channels' `channels_redis` 4.x, so Rust and Django processes share channels and
//! groups through one Redis.
//!
//! - [`RedisLayer`] is `channels_redis.core.RedisChannelLayer`: sorted-set queues with capacity
//!   and expiry, groups stored in Redis, one queue per process for its consumers.
//! - [`RedisPubSubLayer`] is `channels_redis.pubsub.RedisPubSubChannelLayer`: one `PUBLISH` per
//!   group send, membership and fan-out in each process — the fastest choice for big groups.
//! - [`RedisClusterLayer`] is switchboard's own, for Redis Cluster (channels_redis has none): the
//!   pub/sub layer's model on sharded pub/sub, every name hash-tagged into one slot. Django
//!   processes cannot share it.
//!
//! Both take a [`RedisConfig`] and implement [`ChannelLayer`](switchboard_core::ChannelLayer);
//! wrap them in a [`Layer`](switchboard_core::Layer) handle to use them:
//!
//! ```no_run
//! use switchboard_core::{Layer, LayerConfig};
//! use switchboard_redis::{RedisConfig, RedisLayer};
//!
//! # async fn demo() -> switchboard_core::Result<()> {
//! // The same settings as Django's CHANNEL_LAYERS["default"]["CONFIG"].
//! let config = RedisConfig::new("redis://127.0.0.1:6379")
//!     .prefix("asgi")
//!     .layer(LayerConfig::default().capacity(100));
//! let layer = Layer::new(RedisLayer::connect(config).await?);
//! layer
//!     .group_send("chat_lobby", serde_json::json!({"type": "chat.message", "message": "hello Django"}))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Connections: one multiplexed connection per host carries every command of the process,
//! reconnecting by itself; the core layer adds one connection per host for its blocking receive
//! loop, the pub/sub layer one for its subscriptions. A process with a thousand consumers opens
//! two or three connections, not a thousand.
//!
//! When Redis goes away, calls fail with
//! [`LayerError::Backend`](switchboard_core::LayerError::Backend) or
//! [`LayerError::Timeout`](switchboard_core::LayerError::Timeout) within `command_timeout` (5 s by
//! default);
//! pending receives wait; the receive loop and the subscriptions reconnect with backoff and pick
//! up where they were, and the memberships this process added are written again if Redis lost
//! them.
//!
//! Managed and replicated Redis: `rediss://` URLs speak TLS (system roots, a CA file, a client
//! certificate, or an explicit opt-out: see [`TlsConfig`]), credentials go in the URL and are
//! checked at connect, and a [`SentinelHost`] is the master a set of Sentinels names, followed
//! across failovers.
//!
//! The deployment and Django interop guide is `docs/redis.md` in the repository.

mod cluster;
mod codec;
mod config;
mod conn;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod history;
mod layer;
pub mod metrics;
mod presence;
mod process;
mod pubsub;

pub use cluster::RedisClusterLayer;
pub use config::{RedisConfig, RedisHost, SentinelHost, TlsConfig};
pub use layer::RedisLayer;
pub use pubsub::RedisPubSubLayer;
