//! The chat application: consumer, HTTP routes and page. `main.rs` parses flags and serves it;
//! the tests mount it in-process.
//!
//! Protocol (the whole of it in `README.md`):
//! - WebSocket `/ws/chat/{room}/?nickname=NAME`; or send `{"type":"login","nickname":NAME}` first.
//! - `{"message": TEXT}` → every member of the room, sender included, gets
//!   `{"type":"chat.message","room":ROOM,"user":NICK,"message":TEXT}`.
//! - `{"type":"private","to":NICK,"message":TEXT}` → only NICK's connections (any room) get
//!   `{"type":"chat.private","from":…,"to":…,"message":…}`; an unknown NICK gets an error frame.
//! - `POST /chat/rooms/{room}/user/{username}/` with `{"message": TEXT}` publishes into the room.
//! - Rooms whose layer keeps history ([`with_history`]): each room message carries
//!   `"position":"EPOCH:OFFSET"`; a client that reconnects with `&since=POSITION` gets what it
//!   missed first. A client that sends `since` (empty: from now) gets, right after the
//!   handshake, `{"type":"chat.joined","room":…,"top":POSITION,"recovered":BOOL,"replayed":N}`
//!   — `recovered: false` when the room could not give everything after its position (too long
//!   away, a restarted server, a layer without history); `top` is the room's position now.
//! - Presence: a logged-in connection is in its room's presence
//!   as its nickname (`&client=ID` names the browser tab; else a random id). A client that
//!   sends `since` also gets `"present":[{"client_id","user","since_ms"}…]` in `chat.joined`,
//!   the room's `presence.join` / `presence.leave` events as they happen (and `presence.sync`
//!   when some were throttled), and `{"type":"chat.presence","room":…,"present":[…]}` in
//!   answer to `{"type":"who"}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use switchboard::{
    Connection, ConnectionConfig, Consumer, Decoded, Endpoint, Error, GroupName, Layer, LayerError,
    Origins, Position, PresenceInfo, Refusal, Result, Scope, Shutdown,
};

/// The page: plain HTML and JavaScript, no build step.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// How the app is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which browser origins may open the WebSocket.
    pub origins: Origins,
    /// Whether clients that send no `Origin` (scripts, load tools) may connect.
    pub allow_missing_origin: bool,
    /// Per-connection limits.
    pub connection: ConnectionConfig,
    /// Drains the WebSocket connections on shutdown (see `example_support::serve`).
    pub shutdown: Shutdown,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            origins: Origins::SameHost,
            allow_missing_origin: true,
            connection: ConnectionConfig::default(),
            shutdown: Shutdown::new(),
        }
    }
}

/// The group of a room. The same name as the Channels tutorial's (`chat_<room>`), so a Django
/// tutorial chat on the same Redis shares its rooms with this one. `None` for a room name a
/// group name cannot hold.
pub fn room_group(room: &str) -> Option<GroupName> {
    GroupName::new(format!("chat_{room}")).ok()
}

/// `config` with the rooms' presence events (`chat_*` groups): `presence.join` and
/// `presence.leave` as members come and go.
pub fn with_presence_events(
    config: switchboard::LayerConfig,
) -> switchboard::Result<switchboard::LayerConfig> {
    Ok(config.presence_events("chat_*")?)
}

/// `config` with the rooms' history: the last `size` messages of every room, each kept for
/// `ttl`, for clients that reconnect (`chat_*` groups).
pub fn with_history(
    config: switchboard::LayerConfig,
    size: usize,
    ttl: std::time::Duration,
) -> switchboard::Result<switchboard::LayerConfig> {
    Ok(config.group_history("chat_*", size, ttl)?)
}

/// The group every connection of one nickname joins, for private messages (`nick` is valid:
/// see [`valid_nickname`], whose characters every group name allows).
fn user_group(nick: &str) -> Result<GroupName> {
    Ok(GroupName::new(format!("user.{nick}"))?)
}

/// Nicknames: 1–32 ASCII letters, digits, `-`, `_` or `.` (they become part of a group name).
fn valid_nickname(nick: &str) -> bool {
    (1..=32).contains(&nick.len())
        && nick
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What a client sends. `type` is optional: a bare `{"message": …}` is a room message, as in the
/// Channels tutorial.
#[derive(Deserialize, Debug)]
pub struct ClientFrame {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
    to: Option<String>,
    nickname: Option<String>,
}

/// A presence event of a room (`presence.join`, `presence.leave`, `presence.sync`), relayed
/// as it came to the clients that asked for them.
#[derive(Deserialize, Debug)]
pub struct PresenceEvent {}

/// What a room's group carries: a room message or a private one. Each consumer relays it as
/// it came (decoded once per message, rendered once per message, however many members).
#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
pub enum ChatEvent {
    /// `{"type":"chat.message","room":…,"user":…,"message":…}`
    #[serde(rename = "chat.message")]
    Message {
        /// The room.
        room: String,
        /// Who wrote it.
        user: String,
        /// The text.
        message: String,
    },
    /// `{"type":"chat.private","from":…,"to":…,"message":…}`
    #[serde(rename = "chat.private")]
    Private {
        /// Who wrote it.
        from: String,
        /// To whom.
        to: String,
        /// The text.
        message: String,
    },
    /// `{"type":"presence.join","client_id":…,"user":…,…}`
    #[serde(rename = "presence.join")]
    PresenceJoin(PresenceEvent),
    /// `{"type":"presence.leave",…}`
    #[serde(rename = "presence.leave")]
    PresenceLeave(PresenceEvent),
    /// `{"type":"presence.sync","missed_events":N}`: ask again (`{"type":"who"}`).
    #[serde(rename = "presence.sync")]
    PresenceSync(PresenceEvent),
}

/// A client id from the page (`&client=`): 1–64 letters, digits, `-` or `_`.
fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// One chat connection.
#[derive(Debug)]
pub struct ChatConsumer {
    room: String,
    group: GroupName,
    nickname: Option<String>,
    /// `since`: the position of the last room message the client saw (it reconnects).
    since: Option<String>,
    /// The id in the room's presence.
    client_id: String,
}

impl ChatConsumer {
    /// A consumer for the connection described by `scope`; a room name that cannot name a
    /// group is refused at the handshake (404).
    pub fn new(scope: &Scope) -> std::result::Result<ChatConsumer, Refusal> {
        let room = scope.param("room").unwrap_or_default().to_owned();
        let group = room_group(&room).ok_or_else(|| {
            Refusal::not_found(format!(
                "no room {room:?}: a room name has letters, digits, '-', '_' or '.'"
            ))
        })?;
        let client_id = scope
            .query("client")
            .filter(|c| valid_client_id(c))
            .unwrap_or_else(|| {
                use std::hash::BuildHasher;
                let random = std::collections::hash_map::RandomState::new();
                format!(
                    "anon-{:016x}",
                    random.hash_one(std::time::SystemTime::now())
                )
            });
        Ok(ChatConsumer {
            group,
            room,
            nickname: scope.query("nickname"),
            since: scope.query("since"),
            client_id,
        })
    }

    /// Whether the client asked for the protocol beyond the Channels tutorial's (it sent
    /// `since`, even empty).
    fn extended(&self) -> bool {
        self.since.is_some()
    }

    /// Who is in the room: `[{"client_id","user","since_ms"}…]`, oldest first (empty where the
    /// layer keeps no presence).
    async fn present(&self, conn: &Connection) -> serde_json::Value {
        match conn.layer().presence(&self.group).await {
            Ok(mut all) => {
                all.sort_by_key(|e| e.since_ms);
                all.into_iter()
                    .map(|e| json!({"client_id": e.client_id, "user": e.user, "since_ms": e.since_ms}))
                    .collect()
            }
            Err(e) => {
                tracing::debug!(room = %self.room, error = %e, "no presence to list");
                json!([])
            }
        }
    }

    async fn login(&mut self, conn: &mut Connection, nick: String) -> Result<()> {
        if !valid_nickname(&nick) {
            return Err(Error::protocol(format!(
                "nickname {nick:?} is invalid: use 1 to 32 letters, digits, '-', '_' or '.'"
            )));
        }
        if let Some(old) = self.nickname.take() {
            conn.group_discard(user_group(&old)?).await?;
        }
        conn.group_add(user_group(&nick)?).await?;
        let me = PresenceInfo::new(self.client_id.clone()).user(nick.clone());
        match conn.presence_join(&self.group, me).await {
            Ok(()) => {}
            // A layer of the app's own that keeps no presence: the chat works without it.
            Err(Error::Layer(LayerError::Unsupported(_))) => {}
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "could not join the room's presence")
            }
        }
        self.nickname = Some(nick);
        Ok(())
    }

    fn me(&self) -> Result<&str> {
        self.nickname.as_deref().ok_or_else(|| {
            Error::protocol("log in first: send {\"type\":\"login\",\"nickname\":NAME}")
        })
    }
}

impl Consumer for ChatConsumer {
    type Incoming = ClientFrame;
    type Event = Decoded<ChatEvent>;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        // `since=` (empty): from now. A position the client cannot have been given (garbled)
        // is one the room cannot continue from: not recovered.
        let since = self
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::parse::<Position>);
        let mut joined = if conn
            .layer()
            .config()
            .history_for(self.group.as_str())
            .is_some()
        {
            let from = since.as_ref().and_then(|s| s.as_ref().ok());
            let r = conn.group_add_since(&self.group, from).await?;
            let recovered = r.recovered && !matches!(since, Some(Err(_)));
            json!({"type": "chat.joined", "room": self.room, "top": r.position.to_string(),
                   "recovered": recovered, "replayed": r.replayed})
        } else {
            conn.group_add(&self.group).await?;
            json!({"type": "chat.joined", "room": self.room, "recovered": since.is_none(), "replayed": 0})
        };
        conn.accept().await?;
        let login = match self.nickname.take() {
            Some(nick) => self.login(conn, nick).await,
            None => Ok(()),
        };
        // Only for a client that asked (`since`, even empty): the protocol without it is
        // the Channels tutorial's.
        if self.extended() {
            joined["present"] = self.present(conn).await;
            conn.send_json(&joined).await?;
        }
        if let Err(e) = login {
            // A bad nickname in the URL is not fatal: the client can still log in by frame.
            conn.send_error(e).await?;
        }
        Ok(())
    }

    async fn receive(&mut self, conn: &mut Connection, frame: ClientFrame) -> Result<()> {
        match frame.kind.as_deref() {
            Some("login") => {
                let nick = frame
                    .nickname
                    .ok_or_else(|| Error::protocol("login needs a \"nickname\""))?;
                self.login(conn, nick).await
            }
            Some("who") => {
                let present = self.present(conn).await;
                conn.send_json(
                    &json!({"type": "chat.presence", "room": self.room, "present": present}),
                )
                .await
            }
            None | Some("message") => {
                let text = frame
                    .message
                    .ok_or_else(|| Error::protocol("a chat message needs a \"message\""))?;
                let msg = json!({"type": "chat.message", "room": self.room, "user": self.me()?, "message": text});
                conn.group_send(&self.group, msg).await
            }
            Some("private") => {
                let me = self.me()?.to_owned();
                let (to, text) = match (frame.to, frame.message) {
                    (Some(to), Some(text)) => (to, text),
                    _ => {
                        return Err(Error::protocol(
                            "a private message needs \"to\" and \"message\"",
                        ));
                    }
                };
                let nobody = || Error::protocol(format!("no user named {to:?} is connected"));
                if !valid_nickname(&to) {
                    return Err(nobody());
                }
                let group = user_group(&to)?;
                if conn.layer().group_channels(&group).await?.is_empty() {
                    return Err(nobody());
                }
                conn.group_send(
                    &group,
                    json!({"type": "chat.private", "from": me, "to": to, "message": text}),
                )
                .await
            }
            Some(other) => Err(Error::protocol(format!(
                "unknown message type {other:?}: use \"message\", \"private\", \"login\" or \"who\""
            ))),
        }
    }

    async fn event(&mut self, conn: &mut Connection, event: Decoded<ChatEvent>) -> Result<()> {
        match &*event {
            // Relayed as it came: the JSON text is rendered once per message, not per member.
            ChatEvent::Message { .. } | ChatEvent::Private { .. } => {
                conn.send_message(event.message()).await
            }
            ChatEvent::PresenceJoin(_)
            | ChatEvent::PresenceLeave(_)
            | ChatEvent::PresenceSync(_) => {
                if self.extended() {
                    conn.send_message(event.message()).await?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Deserialize)]
struct PostBody {
    message: String,
}

fn json_error(status: StatusCode, error: impl std::fmt::Display) -> axum::response::Response {
    (status, Json(json!({"error": error.to_string()}))).into_response()
}

/// A layer call of an HTTP handler failed: the client is told a reference, the log the rest.
fn layer_error(what: &str, e: LayerError) -> axum::response::Response {
    match e {
        e if !e.is_internal() => json_error(StatusCode::BAD_REQUEST, e),
        e => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            switchboard::error::report(what, &e),
        ),
    }
}

/// `POST /chat/rooms/{room}/user/{username}/` with `{"message": TEXT}`: publish from outside a
/// consumer, as a Django view would with `async_to_sync(layer.group_send)`.
async fn publish(
    State(layer): State<Layer>,
    Path((room, username)): Path<(String, String)>,
    body: Bytes,
) -> axum::response::Response {
    let body: PostBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format_args!("expected a JSON body {{\"message\": TEXT}}: {e}"),
            );
        }
    };
    if !valid_nickname(&username) {
        return json_error(
            StatusCode::BAD_REQUEST,
            format_args!("invalid username {username:?}"),
        );
    }
    let Some(group) = room_group(&room) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format_args!("invalid room {room:?}"),
        );
    };
    let msg =
        json!({"type": "chat.message", "room": room, "user": username, "message": body.message});
    match layer.group_send(&group, msg).await {
        Ok(()) => Json(json!({"username": username, "roomId": room})).into_response(),
        Err(e) => layer_error("publishing", e),
    }
}

/// `GET /chat/rooms/{room}/`: how many connections are in the room (across every process
/// sharing the layer).
async fn room_info(
    State(layer): State<Layer>,
    Path(room): Path<String>,
) -> axum::response::Response {
    let Some(group) = room_group(&room) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format_args!("invalid room {room:?}"),
        );
    };
    let members = match layer.group_channels(&group).await {
        Ok(members) => members.len(),
        Err(e) => return layer_error("counting the room's members", e),
    };
    // Logged-in connections (a count, not a listing); absent where the layer keeps no presence.
    match layer.presence_count(&group).await {
        Ok(present) => {
            Json(json!({"room": room, "members": members, "present": present})).into_response()
        }
        Err(LayerError::Unsupported(_)) => {
            Json(json!({"room": room, "members": members})).into_response()
        }
        Err(e) => layer_error("counting the room's presence", e),
    }
}

/// The whole app on one layer.
pub fn router(layer: Layer, settings: Settings) -> Router {
    let ws = Endpoint::new(layer.clone(), ChatConsumer::new)
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
        .route("/ws/chat/{room}/", ws.into_route())
        .route("/chat/rooms/{room}/", get(room_info))
        .route("/chat/rooms/{room}/user/{username}/", post(publish))
        .with_state(layer)
}
