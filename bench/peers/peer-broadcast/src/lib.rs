//! `peer-broadcast`: the chat a Rust team would write by hand — axum's WebSocket and one
//! `tokio::sync::broadcast` channel per room — speaking switchboard's chat protocol, as a
//! benchmark peer (`scripts/bench-peers`).
//!
//! - WebSocket `/ws/chat/{room}/?nickname=NAME`: joins room `room` (created on first join,
//!   removed when its last member leaves).
//! - `{"message": TEXT}` in → every member, the sender included, gets
//!   `{"type":"chat.message","room":ROOM,"user":NAME,"message":TEXT}`, rendered once per message
//!   and shared by all receivers (`Utf8Bytes`).
//! - `GET /chat/rooms/{room}/` → `{"room":ROOM,"members":N}`.
//!
//! A receiver that falls more than `--capacity` messages behind loses the oldest ones
//! (`broadcast`'s lag); the server counts and logs them and goes on.
//!
//! The binary (`src/main.rs`) serves [`app`]:
//!
//! ```text
//! cargo run --release -p peer-broadcast -- --bind 127.0.0.1:8100
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// The rooms: one broadcast channel each.
#[derive(Debug)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>,
    capacity: usize,
    read_buffer: usize,
    /// Messages receivers lost to lag, over all rooms.
    lagged: AtomicU64,
}

impl Rooms {
    /// No rooms yet; each room's channel will hold `capacity` messages, each connection reads
    /// its socket `read_buffer` bytes at a time (tungstenite's default is 128 KiB, which every
    /// idle connection then holds).
    pub fn new(capacity: usize, read_buffer: usize) -> Rooms {
        Rooms {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            read_buffer: read_buffer.max(256),
            lagged: AtomicU64::new(0),
        }
    }

    /// Messages receivers lost to lag so far, over all rooms.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Utf8Bytes>>> {
        // A panic while holding the lock leaves a consistent map (every operation is one
        // insert, remove or lookup), so a poisoned lock is still usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins `room`, creating it: its sender (to publish) and a receiver.
    fn join(&self, room: &str) -> (broadcast::Sender<Utf8Bytes>, broadcast::Receiver<Utf8Bytes>) {
        let mut rooms = self.lock();
        let tx = rooms
            .entry(room.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0);
        (tx.clone(), tx.subscribe())
    }

    /// After a member dropped its receiver: removes `room` if that was the last one. Joining
    /// subscribes under the same lock, so a room is never removed while someone is in it.
    fn leave(&self, room: &str) {
        let mut rooms = self.lock();
        if rooms.get(room).is_some_and(|tx| tx.receiver_count() == 0) {
            rooms.remove(room);
        }
    }

    /// The members of `room` now.
    pub fn members(&self, room: &str) -> usize {
        self.lock().get(room).map_or(0, |tx| tx.receiver_count())
    }
}

/// `?nickname=NAME`.
#[derive(Deserialize, Debug)]
struct Login {
    nickname: Option<String>,
}

/// What a client sends.
#[derive(Deserialize, Debug)]
struct Incoming {
    message: String,
}

/// What every member gets.
#[derive(Serialize, Debug)]
struct Outgoing<'a> {
    r#type: &'static str,
    room: &'a str,
    user: &'a str,
    message: &'a str,
}

async fn ws_route(
    ws: WebSocketUpgrade,
    Path(room): Path<String>,
    Query(login): Query<Login>,
    State(rooms): State<Arc<Rooms>>,
) -> Response {
    let user = login.nickname.unwrap_or_else(|| "anonymous".to_owned());
    ws.read_buffer_size(rooms.read_buffer)
        .on_upgrade(move |socket| member(socket, rooms, room, user))
}

/// One member: relays the room to the socket and the socket's messages to the room.
async fn member(socket: WebSocket, rooms: Arc<Rooms>, room: String, user: String) {
    let (tx, mut rx) = rooms.join(&room);
    let (mut sink, mut stream) = socket.split();
    let forward = async {
        loop {
            match rx.recv().await {
                Ok(frame) => {
                    if sink.send(Message::Text(frame)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let total = rooms.lagged.fetch_add(n, Ordering::Relaxed) + n;
                    tracing::warn!(lost = n, total, "a receiver lagged");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    let receive = async {
        while let Some(Ok(frame)) = stream.next().await {
            let text = match frame {
                Message::Text(text) => text,
                Message::Close(_) => break,
                _ => continue,
            };
            let Ok(incoming) = serde_json::from_str::<Incoming>(text.as_str()) else {
                tracing::debug!("not a chat message");
                continue;
            };
            let out = Outgoing {
                r#type: "chat.message",
                room: &room,
                user: &user,
                message: &incoming.message,
            };
            match serde_json::to_string(&out) {
                // Sending fails only without receivers, and this member is one.
                Ok(json) => drop(tx.send(Utf8Bytes::from(json))),
                Err(e) => tracing::warn!("rendering a message: {e}"),
            }
        }
    };
    // Whichever ends first (the client left, or its socket failed) ends the member; the
    // forwarder's receiver is dropped with it, before leaving.
    tokio::select! {
        () = forward => {}
        () = receive => {}
    }
    drop(rx);
    rooms.leave(&room);
}

async fn members_route(Path(room): Path<String>, State(rooms): State<Arc<Rooms>>) -> Response {
    let members = rooms.members(&room);
    Json(serde_json::json!({"room": room, "members": members})).into_response()
}

/// The chat's routes on `rooms`.
pub fn app(rooms: Arc<Rooms>) -> Router {
    Router::new()
        .route("/ws/chat/{room}/", get(ws_route))
        .route("/chat/rooms/{room}/", get(members_route))
        .with_state(rooms)
}
