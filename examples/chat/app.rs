//! The chat application: consumer, HTTP routes and page. `main.rs` parses flags and serves it;
//! the tests mount it in-process.
//!
//! Protocol (also in `docs/chat-protocol.md`):
//! - WebSocket `/ws/chat/{room}/?nickname=NAME`; or send `{"type":"login","nickname":NAME}` first.
//! - `{"message": TEXT}` → every member of the room, sender included, gets
//!   `{"type":"chat.message","room":ROOM,"user":NICK,"message":TEXT}`.
//! - `{"type":"private","to":NICK,"message":TEXT}` → only NICK's connections (any room) get
//!   `{"type":"chat.private","from":…,"to":…,"message":…}`; an unknown NICK gets an error frame.
//! - `POST /chat/rooms/{room}/user/{username}/` with `{"message": TEXT}` publishes into the room.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use switchboard::{
    ConnectionConfig, Consumer, Context, Endpoint, Error, GroupName, Layer, Message, Origins,
    Result, Scope, async_trait,
};

/// The page: plain HTML and JavaScript, no build step.
const INDEX_HTML: &str = include_str!("static/index.html");

/// How the app is set up.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Which browser origins may open the WebSocket.
    pub(crate) origins: Origins,
    /// Whether clients that send no `Origin` (scripts, load tools) may connect.
    pub(crate) allow_missing_origin: bool,
    /// Per-connection limits.
    pub(crate) connection: ConnectionConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            origins: Origins::SameHost,
            allow_missing_origin: true,
            connection: ConnectionConfig::default(),
        }
    }
}

/// The group of a room. The same name as the Channels tutorial's (`chat_<room>`), so a Django
/// tutorial chat on the same Redis shares its rooms with this one.
pub(crate) fn room_group(room: &str) -> String {
    format!("chat_{room}")
}

/// The group every connection of one nickname joins, for private messages.
fn user_group(nick: &str) -> String {
    format!("user.{nick}")
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
pub(crate) struct ClientFrame {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
    to: Option<String>,
    nickname: Option<String>,
}

/// One chat connection.
pub(crate) struct ChatConsumer {
    room: String,
    group: String,
    nickname: Option<String>,
}

impl ChatConsumer {
    /// A consumer for the connection described by `scope`.
    pub(crate) fn new(scope: &Scope) -> ChatConsumer {
        let room = scope.param("room").unwrap_or_default().to_owned();
        ChatConsumer {
            group: room_group(&room),
            room,
            nickname: scope.query("nickname"),
        }
    }

    async fn login(&mut self, cx: &mut Context, nick: String) -> Result<()> {
        if !valid_nickname(&nick) {
            return Err(Error::protocol(format!(
                "nickname {nick:?} is invalid: use 1 to 32 letters, digits, '-', '_' or '.'"
            )));
        }
        if let Some(old) = self.nickname.take() {
            cx.group_discard(user_group(&old)).await?;
        }
        cx.group_add(user_group(&nick)).await?;
        self.nickname = Some(nick);
        Ok(())
    }

    fn me(&self) -> Result<&str> {
        self.nickname.as_deref().ok_or_else(|| {
            Error::protocol("log in first: send {\"type\":\"login\",\"nickname\":NAME}")
        })
    }
}

#[async_trait]
impl Consumer for ChatConsumer {
    type Incoming = ClientFrame;
    type Event = Message;

    async fn connect(&mut self, cx: &mut Context) -> Result<()> {
        if GroupName::new(&self.group).is_err() {
            // Not a room name we can serve: refuse the handshake (HTTP 403).
            return cx
                .close(switchboard::CloseCode(4404), "invalid room name")
                .await;
        }
        cx.group_add(&self.group).await?;
        cx.accept().await?;
        if let Some(nick) = self.nickname.take()
            && let Err(e) = self.login(cx, nick).await
        {
            // A bad nickname in the URL is not fatal: the client can still log in by frame.
            cx.send_error(e).await?;
        }
        Ok(())
    }

    async fn receive(&mut self, cx: &mut Context, frame: ClientFrame) -> Result<()> {
        match frame.kind.as_deref() {
            Some("login") => {
                let nick = frame
                    .nickname
                    .ok_or_else(|| Error::protocol("login needs a \"nickname\""))?;
                self.login(cx, nick).await
            }
            None | Some("message") => {
                let text = frame
                    .message
                    .ok_or_else(|| Error::protocol("a chat message needs a \"message\""))?;
                let msg = json!({"type": "chat.message", "room": self.room, "user": self.me()?, "message": text});
                cx.group_send(&self.group, msg).await
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
                let group = user_group(&to);
                if !valid_nickname(&to) || cx.layer().group_channels(&group).await?.is_empty() {
                    return Err(Error::protocol(format!(
                        "no user named {to:?} is connected"
                    )));
                }
                cx.group_send(
                    &group,
                    json!({"type": "chat.private", "from": me, "to": to, "message": text}),
                )
                .await
            }
            Some(other) => Err(Error::protocol(format!(
                "unknown message type {other:?}: use \"message\", \"private\" or \"login\""
            ))),
        }
    }

    async fn event(&mut self, cx: &mut Context, msg: Message) -> Result<()> {
        match msg.message_type() {
            // Relayed verbatim: the JSON text is rendered once per message, not once per member.
            "chat.message" | "chat.private" => cx.send_message(&msg).await,
            other => Err(Error::protocol(format!("unexpected event type {other:?}"))),
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
    let group = room_group(&room);
    if let Err(e) = GroupName::new(&group) {
        return json_error(
            StatusCode::BAD_REQUEST,
            format_args!("invalid room {room:?}: {e}"),
        );
    }
    let msg =
        json!({"type": "chat.message", "room": room, "user": username, "message": body.message});
    match layer.group_send(&group, msg).await {
        Ok(()) => Json(json!({"username": username, "roomId": room})).into_response(),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /chat/rooms/{room}/`: how many connections are in the room (across every process
/// sharing the layer).
async fn room_info(
    State(layer): State<Layer>,
    Path(room): Path<String>,
) -> axum::response::Response {
    match layer.group_channels(room_group(&room)).await {
        Ok(members) => Json(json!({"room": room, "members": members.len()})).into_response(),
        Err(Error::Name(e)) => json_error(
            StatusCode::BAD_REQUEST,
            format_args!("invalid room {room:?}: {e}"),
        ),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The whole app on one layer.
pub(crate) fn router(layer: Layer, settings: Settings) -> Router {
    let ws = Endpoint::new(layer.clone(), ChatConsumer::new)
        .origins(settings.origins)
        .allow_missing_origin(settings.allow_missing_origin)
        .config(settings.connection);
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/ws/chat/{room}/", ws.into_route())
        .route("/chat/rooms/{room}/", get(room_info))
        .route("/chat/rooms/{room}/user/{username}/", post(publish))
        .with_state(layer)
}
