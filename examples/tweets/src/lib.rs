//! The tweets application: the consumer, the HTTP routes and the page. `main.rs` parses flags
//! and serves it; the tests mount it in-process.
//!
//! Protocol (the whole of it in `README.md`), WebSocket `/ws/map/`:
//! - client → `{"type":"listen","message":TEXT}`: stream posts containing TEXT (replaces any
//!   earlier listen); server → `{"type":"listening","message":TEXT}`, then
//!   `{"type":"tweet","url","id","author","text","created_at"}` — the first match at once, then
//!   at most one per interval.
//! - client → `{"type":"stop"}`: no more posts; server → `{"type":"stopped"}`.
//! - server → `{"type":"status","message":…}` when the upstream has trouble (reconnecting…),
//!   `{"type":"error","error":…}` for a bad request (or a new term past `--max-terms`).
//! - A post's `url` is `http(s)://…` or a path on this site, or `""` (no link).
//!
//! `GET /stats.json`: this process's upstreams, `{"instance","upstreams","running","listeners"}`.

pub mod corpus;
pub mod hub;
pub mod mastodon;
pub mod source;
pub mod x;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use switchboard::{
    CloseCode, Connection, ConnectionConfig, Consumer, Endpoint, Error, Layer, Origins, Result,
    Scope,
};

use self::corpus::Corpus;
use self::hub::{Hub, Listener};
use self::source::{Post, Term};

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

/// How the app is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which browser origins may open the WebSocket.
    pub origins: Origins,
    /// Whether clients that send no `Origin` (scripts) may connect.
    pub allow_missing_origin: bool,
    /// Per-connection limits.
    pub connection: ConnectionConfig,
    /// The corpus whose posts `/posts/{id}` shows (the corpus source's links point there).
    pub corpus: Option<Corpus>,
    /// Drains the WebSocket connections on shutdown (see `example_support::serve`).
    pub shutdown: switchboard::Shutdown,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            origins: Origins::SameHost,
            allow_missing_origin: true,
            connection: ConnectionConfig::default(),
            corpus: None,
            shutdown: switchboard::Shutdown::new(),
        }
    }
}

/// What a client sends.
#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    /// Stream posts containing `message`.
    Listen {
        /// The search term.
        message: String,
    },
    /// Stop streaming.
    Stop,
}

/// What the hub's upstream tasks send through the layer.
#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
pub enum HubEvent {
    /// A post matching the upstream's term.
    #[serde(rename = "tweets.post")]
    Post {
        /// The upstream that sent it.
        upstream: u64,
        /// The post.
        post: Post,
    },
    /// The upstream's trouble (reconnecting…), for the page's status line.
    #[serde(rename = "tweets.status")]
    Status {
        /// The upstream that sent it.
        upstream: u64,
        /// What to show.
        message: String,
    },
}

/// One page's connection: at most one search at a time.
#[derive(Debug)]
pub struct TweetsConsumer {
    hub: Hub,
    listening: Option<Listener>,
    /// The post sent directly on joining a running upstream: if the upstream was publishing it
    /// at that moment, it also comes through the group, and that copy is skipped.
    sent_on_join: Option<String>,
}

impl TweetsConsumer {
    /// A consumer listening through `hub`.
    pub fn new(hub: Hub) -> TweetsConsumer {
        TweetsConsumer {
            hub,
            listening: None,
            sent_on_join: None,
        }
    }

    async fn stop(&mut self, conn: &mut Connection) -> Result<()> {
        if let Some(listening) = self.listening.take() {
            conn.group_discard(listening.group()).await?;
            // Dropping the listener ends the upstream if it was the last one.
        }
        Ok(())
    }

    fn current(&self, upstream: u64) -> bool {
        self.listening
            .as_ref()
            .is_some_and(|s| s.upstream_id() == upstream)
    }
}

/// The link of a post if the page may use it as one: `http(s)://…` or a path on this site
/// (the corpus source's `/posts/{id}`); anything else — `javascript:`, `data:`, or a URL with
/// control characters or whitespace, which browsers strip before they read the scheme — is
/// dropped (`""`: the page shows no link). Posts come from the network and from corpus files.
pub fn safe_url(url: &str) -> &str {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let web = lower.starts_with("https://") || lower.starts_with("http://");
    let path = url.starts_with('/') && !url.starts_with("//");
    if (web || path)
        && !url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        url
    } else {
        ""
    }
}

fn tweet(post: &Post) -> serde_json::Value {
    json!({
        "type": "tweet",
        "url": safe_url(&post.url),
        "id": post.id,
        "author": post.author,
        "text": post.text,
        "created_at": post.created_at,
    })
}

impl Consumer for TweetsConsumer {
    type Incoming = ClientMessage;
    type Event = HubEvent;

    async fn receive(&mut self, conn: &mut Connection, msg: ClientMessage) -> Result<()> {
        match msg {
            ClientMessage::Listen { message } => {
                let term = Term::parse(&message).map_err(Error::protocol)?;
                self.stop(conn).await?;
                let listening = self.hub.subscribe(&term).map_err(Error::protocol)?;
                // Join before the upstream starts, so its first post reaches this page.
                conn.group_add(listening.group()).await?;
                let started = self.hub.start(&listening);
                self.listening = Some(listening);
                match started {
                    Err(e) => {
                        self.stop(conn).await?;
                        Err(Error::protocol(e))
                    }
                    Ok(last) => {
                        conn.send_json(&json!({"type": "listening", "message": term.text()}))
                            .await?;
                        // A running upstream sent its latest post before this page joined.
                        self.sent_on_join = None;
                        if let Some(post) = last {
                            conn.send_json(&tweet(&post)).await?;
                            self.sent_on_join = Some(post.id);
                        }
                        Ok(())
                    }
                }
            }
            ClientMessage::Stop => {
                self.stop(conn).await?;
                conn.send_json(&json!({"type": "stopped"})).await
            }
        }
    }

    async fn event(&mut self, conn: &mut Connection, event: HubEvent) -> Result<()> {
        match event {
            // Messages of an earlier search may still be queued: drop them.
            HubEvent::Post { upstream, post } if self.current(upstream) => {
                if self.sent_on_join.take().is_some_and(|id| id == post.id) {
                    return Ok(());
                }
                conn.send_json(&tweet(&post)).await
            }
            HubEvent::Status { upstream, message } if self.current(upstream) => {
                conn.send_json(&json!({"type": "status", "message": message}))
                    .await
            }
            _ => Ok(()),
        }
    }

    async fn disconnect(&mut self, _conn: &mut Connection, _code: CloseCode) -> Result<()> {
        // The runtime leaves the group; dropping the listener ends a now unused upstream.
        self.listening = None;
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    hub: Hub,
    corpus: Option<Corpus>,
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /config.json`: what the page shows under the search box.
async fn config(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "source": st.hub.describe(),
        "interval_ms": st.hub.interval().as_millis() as u64,
    }))
}

/// `GET /stats.json`: this process's upstreams — terms with listeners, upstream tasks alive
/// (equal once settled: no task outlives its listeners), and listeners.
async fn stats(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "instance": st.hub.instance(),
        "upstreams": st.hub.upstreams(),
        "running": st.hub.running(),
        "listeners": st.hub.listeners(),
    }))
}

/// `GET /posts/{id}`: a corpus post on its own page (the corpus source's links).
async fn permalink(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(post) = st.corpus.as_ref().and_then(|c| c.get(&id)) else {
        return (StatusCode::NOT_FOUND, Html("<h1>No such post</h1>")).into_response();
    };
    let esc = |s: &str| html_escape::encode_text(s).into_owned();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Post by {a}</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body class=\"permalink\">\
         <main><article class=\"card\"><header><span class=\"author\">{a}</span>\
         <time>{t}</time></header><p class=\"text\">{x}</p>\
         <footer>From the bundled synthetic corpus — not a real post. <a href=\"/\">Back to the stream</a></footer>\
         </article></main></body></html>",
        a = esc(&post.author),
        t = esc(&post.created_at),
        x = esc(&post.text),
    ))
    .into_response()
}

/// The whole app.
pub fn router(hub: Hub, layer: Layer, settings: Settings) -> Router {
    let ws_hub = hub.clone();
    let ws = Endpoint::new(layer, move |_: &Scope| TweetsConsumer::new(ws_hub.clone()))
        .origins(settings.origins)
        .allow_missing_origin(settings.allow_missing_origin)
        .config(settings.connection)
        .shutdown(&settings.shutdown);
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/switchboard.js",
            get(|| async { switchboard::js::response() }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/static/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/config.json", get(config))
        .route("/stats.json", get(stats))
        .route("/posts/{id}", get(permalink))
        .route("/ws/map/", ws.into_route())
        .with_state(AppState {
            hub,
            corpus: settings.corpus,
        })
}
