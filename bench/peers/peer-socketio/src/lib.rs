//! `peer-socketio`: switchboard's chat written with socketioxide (socket.io for Rust), as a
//! benchmark peer (`scripts/bench-peers`).
//!
//! - Socket.IO on `/socket.io/` (Engine.IO v4, WebSocket or polling), namespace `/`. A socket
//!   that connects with `?room=ROOM&nickname=NAME` in its URL joins room `ROOM` (`lobby`
//!   without one).
//! - Event `"message"` with `{"message": TEXT}` → every socket in the room, the sender
//!   included, gets event `"chat.message"` with
//!   `{"type":"chat.message","room":ROOM,"user":NAME,"message":TEXT}` (rendered once per
//!   message by socketioxide's broadcast).
//! - `GET /chat/rooms/{room}/` → `{"room":ROOM,"members":N}` (the sockets in the room).
//!
//! A socket whose outgoing buffer (`--buffer` packets) is full loses what is emitted to it;
//! the server counts and logs it and goes on.
//!
//! The binary (`src/main.rs`) serves [`app`]:
//!
//! ```text
//! cargo run --release -p peer-socketio -- --bind 127.0.0.1:8200
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef};

/// What a client sends with event `"message"`.
#[derive(Deserialize, Debug)]
struct Incoming {
    message: String,
}

/// What every socket in the room gets with event `"chat.message"`.
#[derive(Serialize, Debug)]
struct Outgoing<'a> {
    r#type: &'static str,
    room: &'a str,
    user: &'a str,
    message: &'a str,
}

/// The `room` and `nickname` of a connection URL's query.
fn login(query: Option<&str>) -> (String, String) {
    let (mut room, mut user) = (None, None);
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("room", v)) if !v.is_empty() => room = Some(v.to_owned()),
            Some(("nickname", v)) if !v.is_empty() => user = Some(v.to_owned()),
            _ => {}
        }
    }
    (
        room.unwrap_or_else(|| "lobby".to_owned()),
        user.unwrap_or_else(|| "anonymous".to_owned()),
    )
}

/// Messages that could not be emitted to some socket (its buffer was full, or it was gone).
static DROPPED: AtomicU64 = AtomicU64::new(0);

async fn on_connect(socket: SocketRef) {
    let (room, user) = login(socket.req_parts().uri.query());
    let room: Arc<str> = room.into();
    let user: Arc<str> = user.into();
    socket.join(Cow::<'static, str>::Owned(room.to_string()));
    socket.on(
        "message",
        move |socket: SocketRef, Data(incoming): Data<Incoming>| {
            let (room, user) = (room.clone(), user.clone());
            async move {
                let out = Outgoing {
                    r#type: "chat.message",
                    room: &room,
                    user: &user,
                    message: &incoming.message,
                };
                let to = Cow::<'static, str>::Owned(room.to_string());
                if let Err(e) = socket.within(to).emit("chat.message", &out).await {
                    let total = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(total, "broadcast to room {room}: {e}");
                }
            }
        },
    );
}

/// Messages that could not be emitted to some socket so far.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// How the socket.io side is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Packets a socket's outgoing buffer holds (socketioxide's `max_buffer_size`).
    pub buffer: usize,
    /// How often the server pings each client (socketioxide's default: 25 s).
    pub ping_interval: Duration,
    /// How long it waits for the pong before closing (socketioxide's default: 20 s).
    pub ping_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            buffer: 1024,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

/// The chat's routes: socket.io on `/socket.io/` and the members endpoint.
pub fn app(settings: &Settings) -> Router {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(settings.buffer.max(1))
        .ping_interval(settings.ping_interval)
        .ping_timeout(settings.ping_timeout)
        .build_layer();
    io.ns("/", on_connect);
    Router::new()
        .route("/chat/rooms/{room}/", get(members_route))
        .with_state(io)
        .layer(layer)
}

async fn members_route(Path(room): Path<String>, State(io): State<SocketIo>) -> Response {
    let members = io
        .within(Cow::<'static, str>::Owned(room.clone()))
        .sockets()
        .len();
    Json(serde_json::json!({"room": room, "members": members})).into_response()
}

#[cfg(test)]
mod tests {
    use super::login;

    #[test]
    fn reads_room_and_nickname() {
        assert_eq!(
            login(Some("EIO=4&transport=websocket&room=bench&nickname=c7")),
            ("bench".to_owned(), "c7".to_owned())
        );
        assert_eq!(login(None), ("lobby".to_owned(), "anonymous".to_owned()));
    }
}
