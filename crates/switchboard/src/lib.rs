#![doc = include_str!("../docs/guide.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// What a typical app names: its consumer and connection, the endpoint that serves them, the
// layer and its messages and names, and the errors.
pub use switchboard_core::{
    ChannelName, Decoded, GroupName, InMemoryLayer, Layer, LayerConfig, LayerError, Message,
    Subscription,
};
pub use switchboard_server::{
    CloseCode, Connection, ConnectionConfig, Consumer, Endpoint, Error, Frame, Origins, Refusal,
    Result, Scope, Worker, WorkerContext,
};

// The rest, by concept.
pub use switchboard_core::{engine, layer, message, name, subscription, text, value};
pub use switchboard_server::{
    config, connection, consumer, endpoint, error, http, origin, scope, worker,
};

#[cfg(feature = "axum")]
pub use switchboard_server::axum;
#[cfg(feature = "standalone")]
pub use switchboard_server::standalone;

/// Test helpers (feature `testing`): [`Communicator`](testing::Communicator) drives a consumer
/// with no network; [`conformance`](testing::conformance) holds a channel layer to the
/// semantics every layer shares.
#[cfg(feature = "testing")]
pub mod testing {
    pub use switchboard_core::layer::conformance;
    pub use switchboard_core::layer_conformance_tests;
    pub use switchboard_server::testing::*;
}

/// Redis channel layers (feature `redis`): [`RedisLayer`](redis::RedisLayer) and
/// [`RedisPubSubLayer`](redis::RedisPubSubLayer), wire-compatible with Django Channels'
/// `channels_redis`, configured by [`RedisConfig`](redis::RedisConfig).
#[cfg(feature = "redis")]
pub mod redis {
    pub use switchboard_redis::{
        RedisClusterLayer, RedisConfig, RedisHost, RedisLayer, RedisPubSubLayer, SentinelHost,
        TlsConfig,
    };
}
