//! The push gateway: publish by HTTP POST, subscribe by WebSocket, EventSource, long-polling or
//! HTTP streaming — nginx-push-stream-module's model on switchboard's channel layer. `main.rs`
//! parses flags and serves it; the tests mount it in-process.
//!
//! Every push channel `CH` is the layer group `push.CH`, which keeps history (`history.rs`). A
//! POST `group_send`s the message, and the layer gives it the channel's next position and keeps
//! it; every subscriber — whatever its transport — owns a layer channel that joined the groups
//! of its push channels (after its cursor, when it resumes), and writes what arrives to its
//! client. So with a Redis layer a POST to one gateway reaches the subscribers of all of them,
//! and every gateway numbers and replays from the one history in Redis. The channel registry
//! behind `/stats` and `--max-channels` is the gateway's (`registry.rs`). The whole protocol is
//! in this crate's README.md.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;
use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use switchboard::{ConnectionConfig, Endpoint, Layer, LayerConfig, Origins};

pub mod channel;
pub mod format;
pub mod history;
pub mod redis_registry;
pub mod registry;
pub mod subscribe;

use channel::{BadRequest, ChannelSpec, parse_channels};
use format::Format;
use registry::{Known, MemoryRegistry, Registry, RegistryConfig, now_ms};

/// The demo page: plain HTML and JavaScript, no build step.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// How the gateway is set up (every field has a command-line flag; see `main.rs`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Messages the layer keeps per channel for backtrack and resume (0: none); the layer is
    /// built with it ([`Settings::layer_config`]).
    pub store_messages: usize,
    /// How long a stored message is kept.
    pub message_ttl: Duration,
    /// How long a channel without publishes or subscribers stays known.
    pub channel_ttl: Duration,
    /// Subscribers get this instead of JSON (`~id~ ~channel~ ~text~ ~time~ ~event-type~`).
    pub message_template: Option<String>,
    /// Keep-alive: WebSocket pings, SSE comments, ping messages on streams. `None`: off.
    pub ping_interval: Option<Duration>,
    /// Streaming subscriptions (WebSocket, EventSource, stream) end after this long.
    pub subscriber_ttl: Option<Duration>,
    /// A long-poll with nothing to deliver answers 304 after this long.
    pub longpoll_timeout: Duration,
    /// Subscribers one channel may have on this gateway.
    pub max_subscribers_per_channel: Option<usize>,
    /// Channels the registry may know at once.
    pub max_channels: Option<u64>,
    /// Longest channel id (at most 94, what layer group names allow).
    pub max_channel_id_length: usize,
    /// Channels one request may name.
    pub max_channels_per_request: usize,
    /// Largest message body a publisher may POST, in bytes.
    pub max_message_size: usize,
    /// Browser origins allowed cross-origin (CORS, and WebSocket `Origin`); same-host pages are
    /// always allowed. Patterns as `switchboard::Origins::List`.
    pub allowed_origins: Vec<String>,
    /// A bearer token that lets any address publish, delete and read stats.
    pub publisher_token: Option<String>,
    /// Addresses that may publish without a token (default: loopback).
    pub publish_allow: Vec<IpNet>,
    /// Ends subscriptions (WebSocket, streams, long polls) on shutdown; see
    /// `example_support::serve`.
    pub shutdown: switchboard::Shutdown,
}

/// The loopback networks: who may publish when nothing else is configured.
pub fn loopback_nets() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::new_assert(
            std::net::Ipv4Addr::new(127, 0, 0, 0),
            8,
        )),
        IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            store_messages: 10,
            message_ttl: Duration::from_secs(1800),
            channel_ttl: Duration::from_secs(300),
            message_template: None,
            ping_interval: Some(Duration::from_secs(30)),
            subscriber_ttl: None,
            longpoll_timeout: Duration::from_secs(30),
            max_subscribers_per_channel: None,
            max_channels: None,
            max_channel_id_length: 64,
            max_channels_per_request: 16,
            max_message_size: 64 * 1024,
            allowed_origins: Vec::new(),
            publisher_token: None,
            publish_allow: loopback_nets(),
            shutdown: switchboard::Shutdown::new(),
        }
    }
}

impl Settings {
    /// The channels a request's path names (`a/b.b5/c`), checked against the id and count
    /// limits. `allow_backtrack` is false for publishing.
    pub fn channels(
        &self,
        tail: &str,
        allow_backtrack: bool,
    ) -> Result<Vec<ChannelSpec>, BadRequest> {
        parse_channels(
            tail,
            self.max_channel_id_length,
            self.max_channels_per_request,
            allow_backtrack,
        )
    }

    /// The registry's part of the settings: a channel outlives what it stores.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig {
            channel_ttl: self.channel_ttl,
            publish_lifetime: if self.store_messages > 0 {
                self.channel_ttl.max(self.message_ttl)
            } else {
                self.channel_ttl
            },
        }
    }

    /// `config` with the history these settings ask for on push channels.
    pub fn layer_config(&self, config: LayerConfig) -> switchboard::Result<LayerConfig> {
        history::with_history(config, self.store_messages, self.message_ttl)
    }
}

/// An in-memory channel registry for these settings.
pub fn memory_registry(settings: &Settings) -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new(settings.registry_config()))
}

/// An HTTP error with a message for the client: `{"error": "…"}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What the client is told.
    pub message: String,
}

impl ApiError {
    /// An error with this status and text.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// The registry or the layer failed: the client is told what failed and a reference, the
    /// log the error itself (it can name hosts).
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            switchboard::error::report(what, &e),
        )
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({"error": self.message}))).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// The gateway's shared state.
pub struct Gateway {
    /// The channel layer the subscribers are on.
    pub layer: Layer,
    /// The channel registry (stats, `--max-channels`).
    pub registry: Arc<dyn Registry>,
    /// Whether the layer keeps history for push channels ([`history::kept`]).
    pub history: bool,
    /// The settings.
    pub settings: Settings,
    /// How messages are rendered for subscribers.
    pub format: Format,
    /// `--allow-origin`, built once (`None` when no origin is listed).
    allowed_origins: Option<Origins>,
    /// Subscribers on this gateway, per channel.
    subscribers: Mutex<HashMap<String, usize>>,
    started: Instant,
    hostname: String,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Subscribers of `channel` on this gateway.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.subscribers.lock().get(channel).copied().unwrap_or(0)
    }

    fn all_subscribers(&self) -> usize {
        self.subscribers.lock().values().sum()
    }

    fn subscribed_channels(&self) -> Vec<String> {
        self.subscribers.lock().keys().cloned().collect()
    }

    /// Takes one subscriber slot on each channel, or none if one is full.
    pub fn reserve(
        self: &Arc<Self>,
        channels: &[String],
    ) -> Result<(subscribe::Slots, Vec<bool>), ApiError> {
        let mut map = self.subscribers.lock();
        if let Some(max) = self.settings.max_subscribers_per_channel {
            for ch in channels {
                let n = map.get(ch).copied().unwrap_or(0);
                if n >= max {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "channel {ch:?} has {n} subscribers on this gateway; the limit is {max}"
                        ),
                    ));
                }
            }
        }
        let mut fresh = Vec::with_capacity(channels.len());
        for ch in channels {
            let n = map.entry(ch.clone()).or_insert(0);
            fresh.push(*n == 0);
            *n += 1;
        }
        drop(map);
        Ok((
            subscribe::Slots::new(self.clone(), channels.to_vec()),
            fresh,
        ))
    }

    /// Gives the slots back.
    pub fn release(&self, channels: &[String]) {
        let mut map = self.subscribers.lock();
        for ch in channels {
            if let Some(n) = map.get_mut(ch) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(ch);
                }
            }
        }
    }

    /// Refuses when creating these channels (those not known yet) would pass `--max-channels`.
    /// `maybe_new` says which channels could be new (for subscribers: those nobody here
    /// subscribed to before).
    pub async fn check_channel_limit(
        &self,
        channels: &[String],
        maybe_new: &[bool],
    ) -> Result<(), ApiError> {
        let Some(max) = self.settings.max_channels else {
            return Ok(());
        };
        let mut new = 0u64;
        for (ch, maybe) in channels.iter().zip(maybe_new) {
            if *maybe
                && !self
                    .registry
                    .exists(ch)
                    .await
                    .map_err(|e| ApiError::unavailable("the channel registry", e))?
            {
                new += 1;
            }
        }
        if new == 0 {
            return Ok(());
        }
        let known = self
            .registry
            .channel_count()
            .await
            .map_err(|e| ApiError::unavailable("the channel registry", e))?;
        if known.saturating_add(new) > max {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{known} channels exist; the limit is {max}: no new channel can be made"),
            ));
        }
        Ok(())
    }

    /// A channel's figures: the registry's count, the history's position and what it holds,
    /// this gateway's subscribers.
    async fn channel_json(&self, known: &Known) -> Result<Json, ApiError> {
        let (position, stored) = match channel::group_of(&known.channel) {
            Some(group) => history::figures(&self.layer, &group)
                .await
                .map_err(|e| ApiError::unavailable("the channel layer", e))?,
            None => (None, 0),
        };
        Ok(json!({
            "channel": known.channel,
            "published_messages": known.published,
            "stored_messages": stored,
            "position": position.map(|p| p.to_string()),
            "subscribers": self.subscribers(&known.channel),
        }))
    }

    /// Keeps the channels subscribed here registered, so a quiet channel with subscribers is
    /// not counted out; and purges the channels whose time is up, so names nobody uses any more
    /// do not pile up in the registry.
    fn spawn_keeper(self: &Arc<Self>) {
        let every = (self.settings.channel_ttl / 3).max(Duration::from_millis(100));
        let weak: Weak<Gateway> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(gw) = weak.upgrade() else { return };
                let channels = gw.subscribed_channels();
                for batch in channels.chunks(256) {
                    if let Err(e) = gw.registry.touch(batch).await {
                        tracing::warn!(error = %e, "refreshing subscribed channels failed");
                        break;
                    }
                }
                match gw.registry.purge().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(channels = n, "forgot idle channels"),
                    Err(e) => tracing::warn!(error = %e, "purging idle channels failed"),
                }
            }
        });
    }
}

/// Builds the gateway on a layer (whose push channels keep history when its configuration was
/// made with [`Settings::layer_config`]) and a channel registry. Must run inside a tokio runtime
/// (it starts the task that keeps subscribed channels registered).
pub fn router(layer: Layer, registry: Arc<dyn Registry>, settings: Settings) -> Router {
    let history = history::kept(&layer);
    if !history && settings.store_messages > 0 {
        tracing::warn!(
            "the layer keeps no history for push channels: no ids, no backtrack, no resume \
             (build its configuration with Settings::layer_config)"
        );
    }
    let gw = Arc::new(Gateway {
        format: Format::new(settings.message_template.as_deref()),
        allowed_origins: (!settings.allowed_origins.is_empty())
            .then(|| Origins::List(settings.allowed_origins.clone())),
        layer: layer.clone(),
        registry,
        history,
        subscribers: Mutex::new(HashMap::new()),
        started: Instant::now(),
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        settings,
    });
    gw.spawn_keeper();
    let mut connection = ConnectionConfig::default();
    connection.ping_interval = gw.settings.ping_interval;
    connection.idle_timeout = gw
        .settings
        .ping_interval
        .map_or(Duration::from_secs(365 * 86_400), |p| p * 3);
    // Subscribers only listen: small frames in, small buffers.
    connection.max_message_size = 4 * 1024;
    connection.read_buffer_size = 256; // grows for a bigger frame, up to max_message_size
    connection.write_buffer_size = 4 * 1024;
    let ws = Endpoint::new(layer, subscribe::ws_factory(gw.clone()))
        .origins(Origins::Any) // checked in `admit`: same host or --allow-origin
        .allow_missing_origin(true)
        .authenticate(subscribe::WsAdmission(gw.clone()))
        .config(connection)
        .shutdown(&gw.settings.shutdown);
    let app = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/ws/{*channels}", ws.into_route())
        .route("/ev/{*channels}", get(subscribe::eventsource))
        .route("/sub/{*channels}", get(subscribe::stream))
        .route("/lp/{*channels}", get(subscribe::long_poll))
        .route(
            "/pub/{*channels}",
            get(channel_info).post(publish).delete(delete),
        )
        .route("/stats", get(stats))
        .with_state(gw.clone());
    match gw.allowed_origins.clone() {
        Some(origins) => app.layer(cors(origins)),
        None => app,
    }
}

/// CORS for `--allow-origin`: subscribers' `Last-Event-ID`/`If-None-Match` and the `Etag` of
/// long-poll answers must cross origins too.
fn cors(origins: Origins) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| origins.allows(o, None))
        }))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("event-type"),
        ])
        .expose_headers([header::ETAG])
        .max_age(Duration::from_secs(3600))
}

impl Gateway {
    /// Whether a browser `Origin` may subscribe: same host, or one of `--allow-origin`.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return true; // not a browser
        };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        Origins::SameHost.allows(origin, host)
            || self
                .allowed_origins
                .as_ref()
                .is_some_and(|o| o.allows(origin, host))
    }
}

/// Compares without leaking the position of the first difference through timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Publishing, deleting and stats: from `--publish-allow` addresses (loopback by default), or
/// from anywhere with `Authorization: Bearer <--publisher-token>` — and never for a browser page
/// of a foreign origin.
///
/// Browsers send `Origin` with every cross-origin POST, even the "simple" ones a page may send
/// without a CORS preflight (`fetch(url, {method: "POST", mode: "no-cors"})`). Without this check
/// any web page open in a browser on the gateway's host could publish, since its requests come
/// from loopback. Publishers that are not browsers (curl, application servers) send no `Origin`;
/// one that is not even readable is refused too.
fn check_publisher(
    gw: &Gateway,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN)
        && (origin.to_str().is_err() || !gw.origin_allowed(headers))
    {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a page from origin {origin:?} may not publish, delete or read stats: only pages \
                 on the gateway's own host and --allow-origin origins may"
            ),
        ));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = &gw.settings.publisher_token
        && let Some(given) = bearer
    {
        return if same_secret(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the bearer token is wrong",
            ))
        };
    }
    let ip = peer.map(|p| p.ip().to_canonical());
    if ip.is_some_and(|ip| gw.settings.publish_allow.iter().any(|n| n.contains(&ip))) {
        return Ok(());
    }
    let how = if gw.settings.publisher_token.is_some() {
        "send Authorization: Bearer <token>"
    } else {
        "start the gateway with --publisher-token and send Authorization: Bearer <token>, or \
         allow the address with --publish-allow"
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} may not publish: publishing is allowed from {} only; {how}",
            ip.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string()),
            gw.settings
                .publish_allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn peer_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Reads the body, refusing one over the limit or not UTF-8.
async fn read_text(body: Body, limit: usize) -> Result<String, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the message is over the {limit}-byte limit (--max-message-size)"),
        )
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the message must be UTF-8 text; byte {} is not",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn event_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("event-type") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "Event-Type must be visible ASCII"))?;
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > 64 || v.chars().any(|c| c.is_ascii_control()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Event-Type must be at most 64 visible characters",
        ));
    }
    Ok(Some(v.to_owned()))
}

/// `POST /pub/CH[/CH2…]`: the body is the message, for every channel named.
async fn publish(
    State(gw): State<Arc<Gateway>>,
    Path(tail): Path<String>,
    req: Request,
) -> Response {
    publish_inner(&gw, &tail, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn publish_inner(gw: &Arc<Gateway>, tail: &str, req: Request) -> Result<Response, ApiError> {
    check_publisher(gw, peer_of(&req), req.headers())?;
    let channels = gw.settings.channels(tail, false)?;
    let event_type = event_type(req.headers())?;
    let text = read_text(req.into_body(), gw.settings.max_message_size).await?;
    let ids: Vec<String> = channels.iter().map(|c| c.id.clone()).collect();
    let maybe_new: Vec<bool> = ids.iter().map(|c| gw.subscribers(c) == 0).collect();
    gw.check_channel_limit(&ids, &maybe_new).await?;
    let time_ms = now_ms();
    let mut infos = Vec::with_capacity(ids.len());
    for (ch, spec) in ids.iter().zip(&channels) {
        let message = format::layer_message(ch, &text, time_ms, event_type.as_deref());
        // The layer numbers it, keeps it and fans it out, in one step.
        let position = gw
            .layer
            .group_send_positioned(&spec.group, message)
            .await
            .map_err(|e| ApiError::unavailable("sending the message", e))?;
        let published = gw.registry.published(ch).await.map_err(|e| {
            ApiError::unavailable(&format!("counting the message on {ch:?} (it was sent)"), e)
        })?;
        let stored = match position {
            Some(_) => {
                history::figures(&gw.layer, &spec.group)
                    .await
                    .map_err(|e| {
                        ApiError::unavailable("the channel layer (the message was sent)", e)
                    })?
                    .1
            }
            None => 0,
        };
        infos.push(json!({
            "channel": ch,
            "id": position.as_ref().map(switchboard::Position::offset),
            "position": position.as_ref().map(ToString::to_string),
            "published_messages": published,
            "stored_messages": stored,
            "subscribers": gw.subscribers(ch),
        }));
    }
    Ok(many_or_one(gw, infos).into_response())
}

/// One channel: its object. Several: `{"hostname", "time", "channels": n, "infos": [...]}`.
fn many_or_one(gw: &Gateway, mut infos: Vec<Json>) -> axum::Json<Json> {
    if infos.len() == 1 {
        return axum::Json(infos.remove(0));
    }
    axum::Json(listing(gw, infos))
}

/// `{"hostname", "time", "channels": n, "infos": [...]}`: several channels' objects.
fn listing(gw: &Gateway, infos: Vec<Json>) -> Json {
    json!({
        "hostname": gw.hostname,
        "time": format::rfc3339(now_ms()),
        "channels": infos.len(),
        "infos": infos,
    })
}

/// `DELETE /pub/CH[/CH2…]`: forgets the channels and ends their subscribers.
async fn delete(
    State(gw): State<Arc<Gateway>>,
    Path(tail): Path<String>,
    req: Request,
) -> Response {
    let peer = peer_of(&req);
    let (parts, _) = req.into_parts();
    delete_inner(&gw, &tail, peer, &parts.headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn delete_inner(
    gw: &Arc<Gateway>,
    tail: &str,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_publisher(gw, peer, headers)?;
    let channels = gw.settings.channels(tail, false)?;
    let mut infos = Vec::new();
    for spec in &channels {
        let ch = &spec.id;
        let subscribers = gw.subscribers(ch);
        let known = gw
            .registry
            .delete(ch)
            .await
            .map_err(|e| ApiError::unavailable("the channel registry", e))?;
        let notice = switchboard::Message::builder(format::DELETE)
            .field("channel", ch.as_str())
            .build()
            .map_err(|e| ApiError::unavailable("building the notice", e))?;
        gw.layer
            .group_send(&spec.group, notice)
            .await
            .map_err(|e| ApiError::unavailable("telling the subscribers", e))?;
        // After the notice (which the old history takes with it): the channel's next message
        // starts a new history, at offset 1.
        if gw.history {
            gw.layer
                .history_clear(&spec.group)
                .await
                .map_err(|e| ApiError::unavailable("clearing the channel's history", e))?;
        }
        if channels.len() == 1 && !known && subscribers == 0 {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no channel {ch:?}"),
            ));
        }
        infos.push(
            json!({"channel": ch, "deleted": known || subscribers > 0, "subscribers": subscribers}),
        );
    }
    Ok(many_or_one(gw, infos).into_response())
}

/// `GET /pub/CH`: the channel's figures, as `/stats?id=CH`.
async fn channel_info(
    State(gw): State<Arc<Gateway>>,
    Path(tail): Path<String>,
    req: Request,
) -> Response {
    let peer = peer_of(&req);
    let (parts, _) = req.into_parts();
    let result = async {
        check_publisher(&gw, peer, &parts.headers)?;
        let channels = gw.settings.channels(&tail, false)?;
        let mut infos = Vec::new();
        for spec in channels {
            infos.push(one_channel(&gw, &spec.id).await?);
        }
        Ok::<_, ApiError>(many_or_one(&gw, infos).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn one_channel(gw: &Gateway, ch: &str) -> Result<Json, ApiError> {
    let info = gw
        .registry
        .info(ch)
        .await
        .map_err(|e| ApiError::unavailable("the channel registry", e))?;
    match info {
        Some(known) => gw.channel_json(&known).await,
        None if gw.subscribers(ch) > 0 => {
            gw.channel_json(&Known {
                channel: ch.to_owned(),
                published: 0,
            })
            .await
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no channel {ch:?}"),
        )),
    }
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    id: Option<String>,
}

/// `GET /stats[?id=CH|ALL|prefix*]`: JSON, or plain text when `Accept` prefers `text/plain`.
async fn stats(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<StatsQuery>,
    req: Request,
) -> Response {
    let peer = peer_of(&req);
    let (parts, _) = req.into_parts();
    let headers = parts.headers;
    let result = async {
        check_publisher(&gw, peer, &headers)?;
        let body = match q.id.as_deref() {
            None => summary(&gw).await?,
            Some(id) => {
                let prefix = match id {
                    "ALL" => Some(""),
                    _ => id.strip_suffix('*'),
                };
                match prefix {
                    Some(prefix) => {
                        let known = gw
                            .registry
                            .channels(prefix)
                            .await
                            .map_err(|e| ApiError::unavailable("the channel registry", e))?;
                        let mut infos = Vec::with_capacity(known.len());
                        for k in &known {
                            infos.push(gw.channel_json(k).await?);
                        }
                        listing(&gw, infos)
                    }
                    None => one_channel(&gw, id).await?,
                }
            }
        };
        Ok::<_, ApiError>(if wants_text(&headers) {
            let mut r = plain_text(&body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        } else {
            axum::Json(body).into_response()
        })
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn summary(gw: &Gateway) -> Result<Json, ApiError> {
    let unavailable = |e| ApiError::unavailable("the channel registry", e);
    let published = gw.registry.published_total().await.map_err(unavailable)?;
    // Every known channel: the count is their number, the stored messages their sum.
    let channels = gw.registry.channels("").await.map_err(unavailable)?;
    let mut stored = 0u64;
    for known in &channels {
        if let Some(group) = channel::group_of(&known.channel) {
            stored += history::figures(&gw.layer, &group)
                .await
                .map_err(|e| ApiError::unavailable("the channel layer", e))?
                .1;
        }
    }
    Ok(json!({
        "hostname": gw.hostname,
        "time": format::rfc3339(now_ms()),
        "channels": channels.len(),
        "published_messages": published,
        "stored_messages": stored,
        "subscribers": gw.all_subscribers(),
        "uptime": gw.started.elapsed().as_secs(),
    }))
}

/// Whether `Accept` asks for text/plain rather than JSON.
fn wants_text(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let pos = |t: &str| accept.find(t);
    match (pos("text/plain"), pos("application/json")) {
        (Some(_), None) => true,
        (Some(t), Some(j)) => t < j,
        _ => false,
    }
}

/// `key: value` lines; channel lists as one line per channel.
fn plain_text(body: &Json) -> String {
    let mut out = String::new();
    let Some(map) = body.as_object() else {
        return out;
    };
    for (k, v) in map {
        match v {
            Json::Array(items) => {
                for item in items {
                    let line: Vec<String> = item
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| format!("{k}={}", scalar(v)))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push_str(&format!("{k}: {}\n", line.join(" ")));
                }
            }
            v => out.push_str(&format!("{k}: {}\n", scalar(v))),
        }
    }
    out
}

fn scalar(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}
