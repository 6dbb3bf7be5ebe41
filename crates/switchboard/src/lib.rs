#![doc = include_str!("../docs/guide.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// What a typical app names: its consumer and connection, the endpoint that serves them, the
// layer and its messages and names, and the errors.
pub use switchboard_core::{
    ChannelName, Decoded, GroupName, InMemoryLayer, Layer, LayerConfig, LayerError, Message,
    Position, PresenceEntry, PresenceInfo, Resumed, Subscription,
};
pub use switchboard_server::{
    CloseCode, Connection, ConnectionConfig, ConnectionHandle, Consumer, DrainConfig, DrainReport,
    Endpoint, Error, Frame, HttpLimits, Origins, Refusal, Result, Scope, Shutdown, Worker,
    WorkerContext,
};

// The rest, by concept (`serve` is both the module and, with `axum`, the function that serves
// a router under `HttpLimits`).
pub use switchboard_core::{
    engine, history, layer, message, name, presence, subscription, text, value,
};
pub use switchboard_server::{
    config, connection, consumer, endpoint, error, http, origin, scope, serve, shutdown, worker,
};

/// What switchboard reports through the [`metrics`](https://docs.rs/metrics) facade: the names,
/// their meanings ([`server`](metrics::server), [`layer`](metrics::layer),
/// [`redis`](metrics::redis)), and [`describe`](metrics::describe) for the exporter's help
/// texts. The application installs the exporter (`metrics-exporter-prometheus`, say) before it
/// serves, calls [`enable`](metrics::enable), and calls
/// [`record_layer_stats`](metrics::record_layer_stats) before each scrape.
pub mod metrics {
    pub use switchboard_core::metrics as layer;
    pub use switchboard_core::metrics::record_stats as record_layer_stats;
    #[cfg(feature = "redis")]
    pub use switchboard_redis::metrics as redis;
    pub use switchboard_server::metrics as server;

    /// Describes every switchboard metric (help text, units) to the installed exporter.
    pub fn describe() {
        switchboard_core::metrics::describe();
        switchboard_server::metrics::describe();
        #[cfg(feature = "redis")]
        switchboard_redis::metrics::describe();
    }

    /// What an application calls once, after installing its exporter and before serving:
    /// [`describe`], and the timing of layer operations turned on
    /// ([`layer::enable_timing`]: two clock reads per operation, off until then).
    pub fn enable() {
        describe();
        switchboard_core::metrics::enable_timing(true);
    }
}

pub mod js;

#[cfg(feature = "standalone")]
pub use switchboard_server::standalone;
#[cfg(feature = "axum")]
pub use switchboard_server::{axum, feed, longpoll, sse};

/// Test helpers (feature `testing`): [`Communicator`](testing::Communicator) drives a consumer
/// with no network; [`conformance`](testing::conformance) holds a channel layer to the
/// semantics every layer shares.
#[cfg(feature = "testing")]
pub mod testing {
    pub use switchboard_core::layer::conformance;
    pub use switchboard_core::{
        history_conformance_tests, layer_conformance_tests, presence_conformance_tests,
    };
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
