//! A push gateway in the manner of nginx-push-stream-module, on switchboard's channel layer:
//! any application POSTs a message to a channel, browsers subscribe over WebSocket,
//! EventSource, long-polling or HTTP streaming.
//!
//! Shows: HTTP handlers and non-WebSocket transports fed from layer groups, a consumer per
//! WebSocket on switchboard's runtime, the layer's group history (positions, backtrack,
//! lossless resume) in memory or in Redis, limits, CORS and stats. The protocol is in this crate's README.md.
//!
//! Run it (in-memory layer and history, no Redis needed), then open <http://127.0.0.1:8000/>:
//!
//! ```text
//! cargo run --release -p push
//! ```
//!
//! Publish and subscribe from a shell:
//!
//! ```text
//! curl -N http://127.0.0.1:8000/ev/news                     # EventSource
//! curl -d 'hello' http://127.0.0.1:8000/pub/news            # publish (loopback only by default)
//! curl http://127.0.0.1:8000/lp/news.b10                    # long-poll: the last 10
//! curl http://127.0.0.1:8000/stats
//! ```
//!
//! Several gateways behind a load balancer share fan-out and history through Redis:
//!
//! ```text
//! cargo run --release -p push -- --addr 127.0.0.1:8001 --redis redis://127.0.0.1:6379
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use example_support::LayerArgs;

/// Flags.
#[derive(Parser, Debug)]
#[command(
    about = "switchboard push gateway: publish by HTTP, subscribe by WebSocket, EventSource, long-polling or stream"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    #[command(flatten)]
    layer: LayerArgs,
    #[command(flatten)]
    ops: example_support::OpsArgs,
    /// Messages the layer keeps per channel for backtrack (`CH.b5`) and resume (0: none).
    #[arg(long, default_value_t = 10)]
    store_messages: usize,
    /// Seconds a stored message is kept.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    message_ttl: u64,
    /// Seconds a channel with no publish and no subscriber stays known (stats, --max-channels).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    channel_ttl: u64,
    /// Send subscribers this instead of JSON: ~id~ ~position~ ~channel~ ~text~ ~time~
    /// ~event-type~.
    #[arg(long, value_name = "TEMPLATE")]
    message_template: Option<String>,
    /// Seconds between keep-alives (WebSocket ping, SSE comment, stream ping message); 0: off.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    ping_interval: u64,
    /// Seconds after which a WebSocket, EventSource or stream subscription is ended (the
    /// client reconnects and resumes); 0: never.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    subscriber_ttl: u64,
    /// Seconds a long-poll waits for a message before answering 304.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    longpoll_timeout: u64,
    /// Subscribers one channel may have on this gateway; 0: no limit.
    #[arg(long, default_value_t = 0)]
    max_subscribers_per_channel: usize,
    /// Channels that may exist at once; 0: no limit.
    #[arg(long, default_value_t = 0)]
    max_channels: u64,
    /// Longest channel id (at most 94).
    #[arg(long, default_value_t = 64)]
    max_channel_id_length: usize,
    /// Channels one request may name.
    #[arg(long, default_value_t = 16)]
    max_channels_per_request: usize,
    /// Largest message a publisher may POST, in bytes.
    #[arg(long, default_value_t = 65536, value_name = "BYTES")]
    max_message_size: usize,
    /// A browser origin allowed cross-origin (CORS and WebSocket), e.g. https://example.com or
    /// .example.com for every subdomain; repeat for several. Same-host pages are always allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Lets any address publish, delete and read /stats with `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "SWITCHBOARD_PUSH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    publisher_token: Option<String>,
    /// A network allowed to publish without a token (CIDR); repeat for several. Default: loopback.
    #[arg(long, value_name = "CIDR")]
    publish_allow: Vec<IpNet>,
    /// Redis key prefix of the channel registry (with --redis).
    #[arg(long, default_value = push::redis_registry::DEFAULT_PREFIX)]
    registry_prefix: String,
}

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

impl Args {
    fn settings(&self) -> push::Settings {
        push::Settings {
            store_messages: self.store_messages,
            message_ttl: Duration::from_secs(self.message_ttl.max(1)),
            channel_ttl: Duration::from_secs(self.channel_ttl.max(1)),
            message_template: self.message_template.clone(),
            ping_interval: secs(self.ping_interval),
            subscriber_ttl: secs(self.subscriber_ttl),
            longpoll_timeout: Duration::from_secs(self.longpoll_timeout.max(1)),
            max_subscribers_per_channel: (self.max_subscribers_per_channel > 0)
                .then_some(self.max_subscribers_per_channel),
            max_channels: (self.max_channels > 0).then_some(self.max_channels),
            max_channel_id_length: self.max_channel_id_length,
            max_channels_per_request: self.max_channels_per_request.max(1),
            max_message_size: self.max_message_size,
            allowed_origins: self.allowed_origins.clone(),
            publisher_token: self.publisher_token.clone().filter(|t| !t.is_empty()),
            publish_allow: if self.publish_allow.is_empty() {
                push::loopback_nets()
            } else {
                self.publish_allow.clone()
            },
            shutdown: switchboard::Shutdown::new(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    example_support::init_tracing();
    let args = Args::parse();
    // One descriptor per subscriber: take what the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let ops = example_support::Ops::install(&args.ops)?;
    let settings = push::Settings {
        shutdown: ops.shutdown.clone(),
        ..args.settings()
    };
    if settings.store_messages > 0 && !args.layer.keeps_history() {
        return Err("this layer keeps no group history: run with --store-messages 0".into());
    }
    let layer = args
        .layer
        .build_with(|config, _| settings.layer_config(config))
        .await?;
    let registry: Arc<dyn push::registry::Registry> = match &args.layer.redis {
        Some(url) => Arc::new(
            push::redis_registry::RedisRegistry::connect(
                url,
                &args.registry_prefix,
                settings.registry_config(),
            )
            .await?,
        ),
        None => push::memory_registry(&settings),
    };
    let registry_at = match &args.layer.redis {
        Some(url) => format!(
            "channel registry in redis at {} (prefix {:?})",
            // The URL with its password hidden.
            switchboard::redis::RedisConfig::new(url.as_str())
                .host_names()
                .join(", "),
            args.registry_prefix
        ),
        None => "channel registry in memory".to_owned(),
    };
    let history = match settings.store_messages {
        0 => "no history".to_owned(),
        n => format!("the layer keeps {n} messages per channel"),
    };
    let app = push::router(layer.clone(), registry, settings).merge(ops.routes(layer));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!(
        "push gateway on http://{} ({}, {history}, {registry_at})",
        listener.local_addr()?,
        args.layer.describe()
    );
    example_support::serve(listener, app, ops).await?;
    Ok(())
}
