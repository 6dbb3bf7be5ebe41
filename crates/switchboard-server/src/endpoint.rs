//! Serving consumers over WebSocket.
//!
//! An [`Endpoint`] is a consumer factory plus what guards it: allowed origins, an
//! authentication hook and per-connection limits. Mount it in an axum router
//! ([`Endpoint::into_route`], feature `axum`) or serve it with the standalone server
//! ([`Server`](crate::standalone::Server), feature `standalone`). Both paths share one upgrade
//! routine:
//!
//! 1. the request must be a WebSocket upgrade (else 400, or 426 for a wrong version);
//! 2. the `Origin` must be allowed (else 403);
//! 3. the authentication hook may set a user or refuse (its status, 403 by default);
//! 4. the factory builds the consumer from the scope — or refuses (a bad path parameter: 404,
//!    say) before anything is allocated;
//! 5. the consumer gets a fresh channel and its `connect` runs — before the HTTP answer, so a
//!    consumer that does not accept refuses the upgrade with 403;
//! 6. the answer is 101, and the consumer runtime takes the socket.
//!
//! Every refusal is answered with its reason as a plain-text body and logged at `warn`, with
//! the path and the reason: a client that cannot connect learns why, and so does whoever reads
//! the server's log. Nothing internal (a backend's address) is ever in the body.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use switchboard_core::Layer;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument;

use crate::config::ConnectionConfig;
use crate::consumer::IntoConsumer;
use crate::error::reference;
use crate::metrics;
use crate::origin::{OriginCheck, Origins};
use crate::runtime;
use crate::scope::Scope;
use crate::shutdown::Shutdown;

/// A refused handshake: the HTTP status, and the reason, which is the response's body and is
/// logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    /// A refusal with this status.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(reason: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, reason)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::UNAUTHORIZED, reason)
    }

    /// 403 Forbidden.
    pub fn forbidden(reason: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::FORBIDDEN, reason)
    }

    /// 404 Not Found.
    pub fn not_found(reason: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, reason)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for Refusal {}

/// Authenticates a connection during the handshake: set a user on the scope
/// ([`Scope::set_user`]) or data in its extensions, or refuse.
///
/// Plain closures `Fn(&mut Scope) -> Result<(), Refusal>` implement it; implement it yourself
/// (an `async fn`) when the check needs to await a session store or a database. `()` lets
/// everybody in.
pub trait Authenticate: Send + Sync + 'static {
    /// Checks the scope; `Err` refuses the connection.
    fn authenticate(&self, scope: &mut Scope) -> impl Future<Output = Result<(), Refusal>> + Send;
}

impl<F> Authenticate for F
where
    F: Fn(&mut Scope) -> Result<(), Refusal> + Send + Sync + 'static,
{
    fn authenticate(&self, scope: &mut Scope) -> impl Future<Output = Result<(), Refusal>> + Send {
        std::future::ready(self(scope))
    }
}

impl Authenticate for () {
    fn authenticate(&self, _scope: &mut Scope) -> impl Future<Output = Result<(), Refusal>> + Send {
        std::future::ready(Ok(()))
    }
}

/// What an endpoint lets in at once: handshakes in progress, and open connections per client
/// address and per user. Past a limit an upgrade is refused — 503 with `Retry-After: 1` for
/// handshakes, 429 for connections — with a body that says which limit, and the refusal is
/// logged and counted (`switchboard_handshakes_refused_total{reason="limit"}`).
///
/// ```
/// use switchboard::endpoint::EndpointLimits;
///
/// let limits = EndpointLimits::default()
///     .max_connections_per_address(Some(50))
///     .max_connections_per_user(Some(10));
/// assert_eq!(limits.max_handshakes, 1024);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointLimits {
    /// Upgrades being handled at once (from the request to the 101: authentication, the
    /// consumer's `connect`). Default 1,024.
    pub max_handshakes: usize,
    /// Open connections from one client IP address. Default none: behind a reverse proxy
    /// every client has the proxy's address (set it where clients connect directly).
    pub max_connections_per_address: Option<usize>,
    /// Open connections of one user ([`Scope::user`], as the authentication hook set it);
    /// anonymous connections are not counted. Default none.
    pub max_connections_per_user: Option<usize>,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            max_handshakes: 1024,
            max_connections_per_address: None,
            max_connections_per_user: None,
        }
    }
}

impl EndpointLimits {
    /// Sets [`max_handshakes`](EndpointLimits::max_handshakes) (at least 1).
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n.max(1);
        self
    }

    /// Sets [`max_connections_per_address`](EndpointLimits::max_connections_per_address).
    pub fn max_connections_per_address(mut self, n: Option<usize>) -> Self {
        self.max_connections_per_address = n;
        self
    }

    /// Sets [`max_connections_per_user`](EndpointLimits::max_connections_per_user).
    pub fn max_connections_per_user(mut self, n: Option<usize>) -> Self {
        self.max_connections_per_user = n;
        self
    }
}

/// The counts behind [`EndpointLimits`], shared by an endpoint's upgrades and connections.
#[derive(Debug, Default)]
struct Counts {
    handshakes: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    per_user: Mutex<HashMap<String, usize>>,
}

/// A handshake in progress; counted until dropped.
struct Handshaking<'a>(&'a Counts);

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's places in the per-address and per-user counts, given back when it ends.
struct Slot {
    counts: Arc<Counts>,
    address: Option<IpAddr>,
    user: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        fn release<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: &K) {
            let mut map = map.lock();
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        if let Some(a) = &self.address {
            release(&self.counts.per_address, a);
        }
        if let Some(u) = &self.user {
            release(&self.counts.per_user, u);
        }
    }
}

/// Takes a place for `key` in `map` if it holds fewer than `max`.
fn take_place<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: K, max: usize) -> bool {
    let mut map = map.lock();
    match map.get_mut(&key) {
        Some(n) if *n >= max => false,
        Some(n) => {
            *n += 1;
            true
        }
        // A refused key leaves no entry behind.
        None if max == 0 => false,
        None => {
            map.insert(key, 1);
            true
        }
    }
}

/// A consumer factory with its guards and limits, ready to be mounted.
///
/// The factory gets the connection's [`Scope`] and returns a consumer, or a
/// `Result<consumer, Refusal>` to refuse the handshake (validate path parameters here, once:
/// the consumer then holds typed values).
///
/// ```
/// use std::time::Duration;
/// use switchboard::{
///     ConnectionConfig, Connection, Consumer, Endpoint, Frame, GroupName, InMemoryLayer,
///     Refusal, Result, Scope,
/// };
///
/// struct Room { group: GroupName }
///
/// impl Consumer for Room {
///     type Incoming = Frame;
///     type Event = switchboard::Message;
///     async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
///         conn.group_send(&self.group, serde_json::json!({"type": "room.text", "text": frame.text()?})).await
///     }
/// }
///
/// fn room(scope: &Scope) -> std::result::Result<Room, Refusal> {
///     let name = scope.param("room").unwrap_or_default();
///     let group = GroupName::new(format!("room_{name}"))
///         .map_err(|e| Refusal::not_found(format!("no such room: {e}")))?;
///     Ok(Room { group })
/// }
///
/// let endpoint = Endpoint::new(InMemoryLayer::default(), room)
///     .allowed_origins([".example.com"])
///     .allow_missing_origin(true)
///     .config(ConnectionConfig::default().max_message_size(1 << 20).idle_timeout(Duration::from_secs(120)));
/// # let _ = endpoint;
/// ```
pub struct Endpoint<F, A = ()> {
    layer: Layer,
    factory: F,
    origin: OriginCheck,
    auth: A,
    config: Arc<ConnectionConfig>,
    shutdown: Option<Shutdown>,
    limits: EndpointLimits,
    counts: Arc<Counts>,
}

impl<F, A> fmt::Debug for Endpoint<F, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("layer", &self.layer)
            .field("origin", &self.origin)
            .field("auth", &std::any::type_name::<A>())
            .field("config", &self.config)
            .field("shutdown", &self.shutdown)
            .field("limits", &self.limits)
            .finish()
    }
}

impl<F, R> Endpoint<F>
where
    F: Fn(&Scope) -> R + Send + Sync + 'static,
    R: IntoConsumer,
{
    /// An endpoint that builds one consumer per connection with `factory`. By default only
    /// same-host origins are allowed, a missing `Origin` is refused, nobody is authenticated,
    /// and the [`ConnectionConfig`] defaults apply.
    pub fn new(layer: impl Into<Layer>, factory: F) -> Self {
        Endpoint {
            layer: layer.into(),
            factory,
            origin: OriginCheck {
                origins: Origins::SameHost,
                allow_missing: false,
            },
            auth: (),
            config: Arc::new(ConnectionConfig::default()),
            shutdown: None,
            limits: EndpointLimits::default(),
            counts: Arc::default(),
        }
    }
}

impl<F, A, R> Endpoint<F, A>
where
    F: Fn(&Scope) -> R + Send + Sync + 'static,
    R: IntoConsumer,
    A: Authenticate,
{
    /// Sets the origin policy.
    pub fn origins(mut self, origins: Origins) -> Self {
        self.origin.origins = origins;
        self
    }

    /// Allows origins matching these patterns (see [`Origins::List`]).
    pub fn allowed_origins<I: IntoIterator<Item = S>, S: Into<String>>(self, patterns: I) -> Self {
        self.origins(Origins::List(
            patterns.into_iter().map(Into::into).collect(),
        ))
    }

    /// Whether a request without an `Origin` header (a non-browser client) is accepted.
    pub fn allow_missing_origin(mut self, allow: bool) -> Self {
        self.origin.allow_missing = allow;
        self
    }

    /// Sets the authentication hook.
    pub fn authenticate<A2: Authenticate>(self, auth: A2) -> Endpoint<F, A2> {
        Endpoint {
            layer: self.layer,
            factory: self.factory,
            origin: self.origin,
            auth,
            config: self.config,
            shutdown: self.shutdown,
            limits: self.limits,
            counts: self.counts,
        }
    }

    /// Sets the limits on handshakes and on connections per address and per user.
    pub fn limits(mut self, limits: EndpointLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the per-connection limits and keep-alive.
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// Puts the endpoint under `shutdown`: while it drains, new connections are refused with
    /// 503 and the open ones are closed with 1001; the endpoint's layer is closed after them.
    /// See [`Shutdown`].
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        shutdown.close_layer(&self.layer);
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// The layer the endpoint's consumers use.
    pub fn layer(&self) -> &Layer {
        &self.layer
    }

    /// Handles one HTTP request that should be a WebSocket upgrade. `params` are the route
    /// parameters, `peer` the client address if known. Answers 101 and spawns the connection,
    /// or answers the refusal.
    pub async fn upgrade<B>(
        &self,
        mut req: Request<B>,
        params: Vec<(String, String)>,
        peer: Option<SocketAddr>,
    ) -> Response<Full<Bytes>> {
        if let Err((status, reason)) = check_upgrade_request(&req) {
            let mut resp = refuse(req.uri().path(), peer, status, reason, "bad_request");
            if status == StatusCode::UPGRADE_REQUIRED {
                resp.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return resp;
        }
        let headers = req.headers();
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        // Held from here to the connection's end: a drain waits for it, and tells it to close.
        let guard = match self.shutdown.as_ref().map(Shutdown::guard) {
            None => None,
            Some(Some(g)) => Some(g),
            Some(None) => {
                let why = "server shutting down";
                let unavailable = StatusCode::SERVICE_UNAVAILABLE;
                return refuse(req.uri().path(), peer, unavailable, why, "shutting_down");
            }
        };
        let counts = &*self.counts;
        if counts.handshakes.fetch_add(1, Ordering::AcqRel) >= self.limits.max_handshakes {
            counts.handshakes.fetch_sub(1, Ordering::AcqRel);
            let why = "too many connections are being opened; try again";
            let mut resp = refuse(
                req.uri().path(),
                peer,
                StatusCode::SERVICE_UNAVAILABLE,
                why,
                "limit",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
        let _handshaking = Handshaking(counts);
        if !self.origin.allows(origin, host) {
            let reason = match origin {
                None => "the request has no Origin header, and this endpoint accepts only \
                         browsers from allowed origins"
                    .to_owned(),
                Some(o) => format!("origin {o:?} is not allowed"),
            };
            return refuse(
                req.uri().path(),
                peer,
                StatusCode::FORBIDDEN,
                &reason,
                "origin",
            );
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|k| derive_accept_key(k.as_bytes()));
        let Some(accept_key) = key else {
            let reason = "missing Sec-WebSocket-Key";
            return refuse(
                req.uri().path(),
                peer,
                StatusCode::BAD_REQUEST,
                reason,
                "bad_request",
            );
        };
        let mut scope = Scope::from_parts(
            req.uri().path().to_owned(),
            req.uri().query().unwrap_or("").to_owned(),
            params,
            req.headers(),
            peer,
        );
        if let Err(refusal) = self.auth.authenticate(&mut scope).await {
            return refuse(scope.path(), peer, refusal.status, &refusal.reason, "auth");
        }
        let slot = match self.take_slot(&scope) {
            Ok(slot) => slot,
            Err(why) => {
                let status = StatusCode::TOO_MANY_REQUESTS;
                return refuse(scope.path(), peer, status, why, "limit");
            }
        };
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (self.factory)(&scope).into_consumer()
        }));
        let mut consumer = match made {
            Ok(Ok(c)) => c,
            Ok(Err(refusal)) => {
                return refuse(
                    scope.path(),
                    peer,
                    refusal.status,
                    &refusal.reason,
                    "consumer",
                );
            }
            Err(_) => {
                metrics::refused("internal");
                let r = reference();
                tracing::error!(path = scope.path(), reference = %r, "consumer factory panicked");
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("internal server error (reference {r})"),
                );
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let path = scope.path().to_owned();
        let opened =
            runtime::open(&self.layer, scope, &mut consumer, self.config.out_limits()).await;
        let (conn, subprotocol) = match opened {
            Ok(o) => o,
            Err((status, reason)) => {
                // `open` logged why.
                metrics::refused(match status {
                    StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                    StatusCode::INTERNAL_SERVER_ERROR => "internal",
                    _ => "consumer",
                });
                return plain(status, &reason);
            }
        };
        let config = self.config.clone();
        let span = tracing::debug_span!(
            "connection",
            path,
            channel = %conn.channel_name(),
            peer = peer.map(tracing::field::display),
        );
        let ws_config = config.websocket_config();
        let transport = async move {
            match on_upgrade.await {
                Ok(upgraded) => Some(
                    WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(ws_config),
                    )
                    .await,
                ),
                Err(e) => {
                    // `connect` ran: `disconnect` runs too (in `run`), whatever the reason the
                    // connection ends, as for a client that vanished.
                    tracing::debug!(error = %e, "websocket upgrade did not complete");
                    None
                }
            }
        };
        let task = runtime::run(consumer, conn, transport, config, guard);
        match slot {
            // Its places are given back when the connection ends.
            Some(slot) => tokio::spawn(
                async move {
                    task.await;
                    drop(slot);
                }
                .instrument(span),
            ),
            None => tokio::spawn(task.instrument(span)),
        };
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept_key) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = subprotocol
            && let Ok(v) = HeaderValue::from_str(&p)
        {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
        resp
    }
}

impl<F, A> Endpoint<F, A> {
    /// Takes the connection's places in the per-address and per-user counts (none when
    /// neither limit is set), or says which limit it is over.
    fn take_slot(&self, scope: &Scope) -> Result<Option<Box<Slot>>, &'static str> {
        let (by_address, by_user) = (
            self.limits.max_connections_per_address,
            self.limits.max_connections_per_user,
        );
        if by_address.is_none() && by_user.is_none() {
            return Ok(None);
        }
        let mut slot = Box::new(Slot {
            counts: self.counts.clone(),
            address: None,
            user: None,
        });
        if let (Some(max), Some(ip)) = (by_address, scope.peer_addr().map(|p| p.ip())) {
            if !take_place(&self.counts.per_address, ip, max) {
                return Err("too many connections from your address");
            }
            slot.address = Some(ip);
        }
        if let (Some(max), Some(user)) = (by_user, scope.user()) {
            if !take_place(&self.counts.per_user, user.to_owned(), max) {
                // Dropping `slot` gives back the address's place.
                return Err("too many connections for this user");
            }
            slot.user = Some(user.to_owned());
        }
        Ok(Some(slot))
    }
}

/// Answers a refused handshake with its reason, and logs it.
fn refuse(
    path: &str,
    peer: Option<SocketAddr>,
    status: StatusCode,
    reason: &str,
    kind: &'static str,
) -> Response<Full<Bytes>> {
    metrics::refused(kind);
    tracing::warn!(
        path,
        ?peer,
        status = status.as_u16(),
        reason,
        "websocket handshake refused"
    );
    plain(status, reason)
}

/// Copies headers into fresh allocations. hyper parses header values as slices of its read
/// buffer; a scope holding them for the life of a connection would pin that whole buffer
/// (8–16 KiB per connection, measured with massif) instead of the few hundred bytes it needs.
fn header_has_token(headers: &http::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn check_upgrade_request<B>(req: &Request<B>) -> Result<(), (StatusCode, &'static str)> {
    let h = req.headers();
    if req.method() != http::Method::GET
        || !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; use 13",
        ));
    }
    Ok(())
}

pub(crate) fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
