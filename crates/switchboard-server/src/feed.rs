//! What the HTTP transports ([`sse`](crate::sse), [`longpoll`](crate::longpoll)) share: the
//! [`Since`] extractor, which reads where a client got to, and the plain-text refusals.
//!
//! A client says how far it got with a history [`Position`] in its text form `EPOCH:OFFSET`:
//! an EventSource sends the `id:` of the last event it received back as the `Last-Event-ID`
//! header when it reconnects; a long-poll loop (or a page opening an EventSource for the first
//! time with a position it kept) sends it as the `since` query parameter.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use switchboard_core::Position;

/// Where the client got to: the `Last-Event-ID` header, else the `since` query parameter,
/// parsed as a [`Position`]; `None` when the request carries neither (or an empty one).
///
/// As an axum extractor it refuses a request whose value is not a position (`EPOCH:OFFSET`,
/// the epoch 1–64 ASCII letters, digits, `-` or `_`) with `400 Bad Request` and a plain-text
/// body saying which parameter was wrong — never the value itself, nor anything internal.
/// (Ignoring it instead would quietly restart the client from now, skipping what it missed.)
///
/// ```
/// use axum::{Router, routing::get};
/// use switchboard::feed::Since;
///
/// async fn handler(Since(since): Since) -> String {
///     since.map_or("from now".to_owned(), |p| format!("after {p}"))
/// }
/// let app: Router = Router::new().route("/feed", get(handler));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Since(pub Option<Position>);

impl Since {
    /// Reads it from a request's head (see the [type docs](Since)).
    pub fn from_parts(parts: &Parts) -> Result<Since, BadSince> {
        if let Some(v) = parts.headers.get("last-event-id") {
            let text = v.to_str().map_err(|_| BadSince::Header)?.trim();
            if !text.is_empty() {
                return text
                    .parse()
                    .map(|p| Since(Some(p)))
                    .map_err(|_| BadSince::Header);
            }
        }
        let query = parts.uri.query().unwrap_or("");
        match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "since") {
            Some((_, v)) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map(|p| Since(Some(p)))
                .map_err(|_| BadSince::Query),
            _ => Ok(Since(None)),
        }
    }
}

/// A request whose `Last-Event-ID` or `since` is not a history position: answered `400` with
/// a plain-text reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadSince {
    /// The `Last-Event-ID` header.
    Header,
    /// The `since` query parameter.
    Query,
}

impl std::fmt::Display for BadSince {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            BadSince::Header => "Last-Event-ID",
            BadSince::Query => "since",
        };
        write!(f, "bad {what}: want a position EPOCH:OFFSET")
    }
}

impl std::error::Error for BadSince {}

impl IntoResponse for BadSince {
    fn into_response(self) -> Response {
        crate::metrics::http_refused("bad_request");
        plain(StatusCode::BAD_REQUEST, &self.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Since {
    type Rejection = BadSince;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Since, BadSince> {
        Since::from_parts(parts)
    }
}

/// A plain-text answer (what every refusal of the HTTP transports is).
pub(crate) fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = (status, text.to_owned()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The answer when the layer fails (logged with its error; the client learns nothing of it).
pub(crate) fn unavailable(what: &str, error: &switchboard_core::LayerError) -> Response {
    tracing::warn!(error = %error, "{what}: the channel layer failed");
    crate::metrics::http_refused("unavailable");
    plain(StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
}

/// The answer to a layer error while subscribing: a bad group name is the request's fault
/// (400), a closed layer is a server going away (503 `server shutting down`), the rest is the
/// server's (503 `service unavailable`, logged).
pub(crate) fn refuse(what: &str, e: &switchboard_core::LayerError) -> Response {
    match e {
        switchboard_core::LayerError::Name(_) => {
            crate::metrics::http_refused("bad_request");
            plain(StatusCode::BAD_REQUEST, "bad group name")
        }
        switchboard_core::LayerError::Closed => shutting_down(),
        other => unavailable(what, other),
    }
}

/// The answer once a drain has begun.
pub(crate) fn shutting_down() -> Response {
    crate::metrics::http_refused("shutting_down");
    plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down")
}

/// What a stream or poll starts with: its drain guard (refused once the drain has begun) and
/// a subscription (refused when the layer fails); `what` names it in the log.
pub(crate) async fn start(
    layer: &switchboard_core::Layer,
    shutdown: Option<&crate::shutdown::Shutdown>,
    what: &str,
) -> Result<
    (
        Option<crate::shutdown::Guard>,
        switchboard_core::Subscription,
    ),
    Response,
> {
    let guard = guard(shutdown).map_err(|Draining| shutting_down())?;
    let sub = layer.subscribe().await.map_err(|e| refuse(what, &e))?;
    Ok((guard, sub))
}

/// The drain has begun: a new stream or poll is refused ([`shutting_down`]).
pub(crate) struct Draining;

/// A stream's or poll's drain guard, refused once the drain has begun.
pub(crate) fn guard(
    shutdown: Option<&crate::shutdown::Shutdown>,
) -> Result<Option<crate::shutdown::Guard>, Draining> {
    match shutdown {
        Some(s) => s.guard().map(Some).ok_or(Draining),
        None => Ok(None),
    }
}
