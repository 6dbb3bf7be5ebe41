//! Serving consumers over WebSocket.
//!
//! An [`Endpoint`] is a consumer factory plus what guards it: allowed origins, an
//! authentication hook and per-connection limits. Mount it in an axum router
//! ([`Endpoint::into_route`], feature `axum`) or serve it with the standalone server
//! ([`Server`](standalone::Server), feature `standalone`). Both paths share one upgrade routine:
//!
//! 1. the request must be a WebSocket upgrade (else 400, or 426 for a wrong version);
//! 2. the `Origin` must be allowed (else 403);
//! 3. the authentication hook may set a user or refuse (its status, 403 by default);
//! 4. the consumer gets a fresh channel and its `connect` runs — before the HTTP answer, so a
//!    consumer that does not accept refuses the upgrade with 403;
//! 5. the answer is 101, and the consumer runtime takes the socket.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::consumer::{Consumer, Context};
use crate::layer::Layer;
use crate::runtime::{self, ConnectionConfig, Handshake};
use crate::scope::Scope;

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "standalone")]
pub mod standalone;

/// An authentication hook's refusal: the HTTP status and a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status of the answer (403 unless set).
    pub status: u16,
    /// Why (logged, and sent as the response body).
    pub reason: String,
}

impl Refusal {
    /// A 403 refusal.
    pub fn forbidden(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 403,
            reason: reason.into(),
        }
    }

    /// A 401 refusal.
    pub fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 401,
            reason: reason.into(),
        }
    }
}

/// Authenticates a connection during the handshake: set a user on the scope
/// ([`Scope::set_user`]) or data in its extensions, or refuse.
///
/// Plain closures `Fn(&mut Scope) -> Result<(), Refusal>` implement it; implement it yourself
/// when the check needs to await (a session store, a database).
#[async_trait]
pub trait Authenticate: Send + Sync + 'static {
    /// Checks the scope; `Err` refuses the connection.
    async fn authenticate(&self, scope: &mut Scope) -> Result<(), Refusal>;
}

#[async_trait]
impl<F> Authenticate for F
where
    F: Fn(&mut Scope) -> Result<(), Refusal> + Send + Sync + 'static,
{
    async fn authenticate(&self, scope: &mut Scope) -> Result<(), Refusal> {
        self(scope)
    }
}

/// Which `Origin` headers a WebSocket endpoint accepts, as Channels' `OriginValidator`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// The origin's host (and port) must equal the request's `Host` — same-origin pages only.
    SameHost,
    /// Any origin.
    Any,
    /// Origins matching one of these patterns: `"*"` (any), `"example.com"` (that host),
    /// `".example.com"` (it and every subdomain), `"https://example.com:8443"` (scheme, host and
    /// port as given).
    List(Vec<String>),
}

/// The origin check: a policy plus whether a request without `Origin` (a non-browser client)
/// is let in.
#[derive(Clone, Debug)]
pub(crate) struct OriginCheck {
    pub(crate) origins: Origins,
    pub(crate) allow_missing: bool,
}

impl Origins {
    /// Whether this policy allows the `Origin` header value `origin` on a request for `host`
    /// (the request's `Host` header, used by [`Origins::SameHost`]). The same rules the
    /// WebSocket handshake applies; HTTP endpoints use it for CORS.
    ///
    /// ```
    /// use switchboard_core::Origins;
    /// let o = Origins::List(vec![".example.com".into()]);
    /// assert!(o.allows("https://app.example.com", None));
    /// assert!(!o.allows("https://evil.com", None));
    /// assert!(Origins::SameHost.allows("http://127.0.0.1:8000", Some("127.0.0.1:8000")));
    /// ```
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let Some((scheme, o_host, o_port)) = parse_origin(origin) else {
            return *self == Origins::Any
                || matches!(self, Origins::List(l) if l.iter().any(|p| p == "*"));
        };
        match self {
            Origins::Any => true,
            Origins::SameHost => host.is_some_and(|h| {
                let (h_host, h_port) = split_host_port(h);
                h_host.eq_ignore_ascii_case(&o_host)
                    && h_port.or(default_port(&scheme)) == o_port.or(default_port(&scheme))
            }),
            Origins::List(patterns) => patterns
                .iter()
                .any(|p| origin_matches(p, &scheme, &o_host, o_port)),
        }
    }
}

impl OriginCheck {
    pub(crate) fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        match origin {
            None => self.allow_missing,
            Some(origin) => self.origins.allows(origin, host),
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn split_host_port(s: &str) -> (&str, Option<u16>) {
    // [v6]:port, host:port, host
    if let Some(rest) = s.strip_prefix('[')
        && let Some((h, after)) = rest.split_once(']')
    {
        return (h, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (s, None),
    }
}

fn parse_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let uri: http::Uri = origin.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    Some((scheme, host, uri.port_u16()))
}

fn origin_matches(pattern: &str, scheme: &str, host: &str, port: Option<u16>) -> bool {
    if pattern == "*" {
        return true;
    }
    if pattern.contains("://") {
        let Some((p_scheme, p_host, p_port)) = parse_origin(pattern) else {
            return false;
        };
        return p_scheme == scheme
            && host_matches(&p_host, host)
            && p_port.or(default_port(&p_scheme)) == port.or(default_port(scheme));
    }
    let (p_host, p_port) = split_host_port(pattern);
    host_matches(&p_host.to_ascii_lowercase(), host)
        && p_port.is_none_or(|p| Some(p) == port.or(default_port(scheme)))
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('.') {
        Some(domain) => host == domain || host.ends_with(pattern),
        None => host == pattern,
    }
}

/// A consumer factory with its guards and limits, ready to be mounted.
///
/// ```
/// use switchboard_core::{Consumer, Context, Endpoint, Frame, InMemoryLayer, Message, Result, Scope, async_trait};
///
/// struct Echo;
/// #[async_trait]
/// impl Consumer for Echo {
///     type Incoming = Frame;
///     type Event = Message;
///     async fn receive(&mut self, cx: &mut Context, frame: Frame) -> Result<()> {
///         cx.send_text(frame.text()?.to_owned()).await
///     }
/// }
///
/// let endpoint = Endpoint::new(InMemoryLayer::default(), |_scope: &Scope| Echo)
///     .allowed_origins([".example.com"])
///     .allow_missing_origin(true);
/// # let _ = endpoint;
/// ```
pub struct Endpoint<F> {
    layer: Layer,
    factory: F,
    origin: OriginCheck,
    auth: Option<Arc<dyn Authenticate>>,
    config: Arc<ConnectionConfig>,
}

impl<F> fmt::Debug for Endpoint<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("layer", &self.layer)
            .field("origin", &self.origin)
            .field("auth", &self.auth.is_some())
            .field("config", &self.config)
            .finish()
    }
}

impl<F, C> Endpoint<F>
where
    F: Fn(&Scope) -> C + Send + Sync + 'static,
    C: Consumer,
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
            auth: None,
            config: Arc::new(ConnectionConfig::default()),
        }
    }

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
    pub fn authenticate(mut self, auth: impl Authenticate) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Sets the per-connection limits and keep-alive.
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.config = Arc::new(config);
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
        let headers = req.headers();
        if let Some(resp) = check_upgrade_request(&req) {
            return resp;
        }
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if !self.origin.allows(origin, host) {
            tracing::info!(
                origin,
                host,
                path = req.uri().path(),
                "websocket origin refused"
            );
            return plain(StatusCode::FORBIDDEN, "origin not allowed");
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|k| derive_accept_key(k.as_bytes()));
        let Some(accept_key) = key else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let mut scope = Scope::from_parts(
            req.uri().path().to_owned(),
            req.uri().query().unwrap_or("").to_owned(),
            params,
            detach_headers(req.headers()),
            peer,
        );
        if let Some(auth) = &self.auth
            && let Err(refusal) = auth.authenticate(&mut scope).await
        {
            tracing::info!(path = scope.path(), status = refusal.status, reason = %refusal.reason, "websocket authentication refused");
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
            return plain(status, &refusal.reason);
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let channel = match self.layer.new_channel().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no channel for a new consumer");
                return plain(StatusCode::SERVICE_UNAVAILABLE, "channel layer unavailable");
            }
        };
        let factory = std::panic::AssertUnwindSafe(|| (self.factory)(&scope));
        let mut consumer = match std::panic::catch_unwind(factory) {
            Ok(c) => c,
            Err(_) => {
                tracing::error!(path = scope.path(), "consumer factory panicked");
                let _ = self.layer.backend().discard_channel(&channel).await;
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "consumer factory failed");
            }
        };
        let mut cx = Context::new(self.layer.clone(), channel, scope, self.config.out_limits());
        let subprotocol = match runtime::handshake(&mut consumer, &mut cx).await {
            Handshake::Accepted(p) => p,
            Handshake::Refused(status) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                return plain(status, "connection refused");
            }
        };
        let config = self.config.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config.websocket_config()),
                    )
                    .await;
                    runtime::run(consumer, cx, ws, config).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade did not complete");
                    runtime::cleanup(&mut cx).await;
                }
            }
        });
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

/// Copies headers into fresh allocations. hyper parses header values as slices of its read
/// buffer; a scope holding them for the life of a connection would pin that whole buffer
/// (8–16 KiB per connection, measured with massif) instead of the few hundred bytes it needs.
fn detach_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name = header::HeaderName::from_bytes(name.as_str().as_bytes())
            .unwrap_or_else(|_| name.clone());
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(
            value.is_sensitive() || matches!(name, header::AUTHORIZATION | header::COOKIE),
        );
        out.append(name, copy);
    }
    out
}

fn header_has_token(headers: &http::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn check_upgrade_request<B>(req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let h = req.headers();
    if req.method() != http::Method::GET
        || !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        return Some(plain(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; use 13",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Some(r);
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(origins: Origins, allow_missing: bool) -> OriginCheck {
        OriginCheck {
            origins,
            allow_missing,
        }
    }

    #[test]
    fn same_host() {
        let c = check(Origins::SameHost, false);
        assert!(c.allows(Some("http://127.0.0.1:8000"), Some("127.0.0.1:8000")));
        assert!(c.allows(Some("https://example.com"), Some("example.com")));
        assert!(c.allows(Some("http://example.com"), Some("example.com:80")));
        assert!(!c.allows(Some("http://evil.com:8000"), Some("127.0.0.1:8000")));
        assert!(!c.allows(Some("http://127.0.0.1:9000"), Some("127.0.0.1:8000")));
        assert!(!c.allows(None, Some("127.0.0.1:8000")));
        assert!(!c.allows(Some("null"), Some("127.0.0.1:8000")));
        assert!(check(Origins::SameHost, true).allows(None, Some("x")));
    }

    #[test]
    fn patterns() {
        let c = check(
            Origins::List(vec![
                ".example.com".into(),
                "chat.io".into(),
                "https://secure.org:8443".into(),
            ]),
            false,
        );
        assert!(c.allows(Some("https://example.com"), None));
        assert!(c.allows(Some("https://a.b.example.com"), None));
        assert!(!c.allows(Some("https://badexample.com"), None));
        assert!(c.allows(Some("http://chat.io:3000"), None));
        assert!(!c.allows(Some("http://sub.chat.io"), None));
        assert!(c.allows(Some("https://secure.org:8443"), None));
        assert!(!c.allows(Some("http://secure.org:8443"), None));
        assert!(!c.allows(Some("https://secure.org"), None));
        assert!(!c.allows(None, None));
        assert!(check(Origins::List(vec!["*".into()]), false).allows(Some("null"), None));
        assert!(
            check(Origins::List(vec!["localhost:8000".into()]), false)
                .allows(Some("http://localhost:8000"), None)
        );
        assert!(
            !check(Origins::List(vec!["localhost:8000".into()]), false)
                .allows(Some("http://localhost:9000"), None)
        );
    }
}
