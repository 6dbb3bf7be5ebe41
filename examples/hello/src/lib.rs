//! The guide's app: a chat room where every message a client sends reaches every client in the
//! same room. `main.rs` serves it; `tests/communicator.rs` tests it with no network.
//!
//! WebSocket `/ws/chat/{room}/`: send `{"message": TEXT}`; every member of the room (the sender
//! too) gets `{"type":"chat.message","message":TEXT}`.

use serde::Deserialize;
use switchboard::{
    Connection, Consumer, Decoded, Endpoint, GroupName, Layer, Refusal, Result, Scope,
};

/// What clients send (the JSON flavour: frames arrive decoded).
#[derive(Deserialize, Debug)]
pub struct ClientMessage {
    /// The text.
    pub message: String,
}

/// What the room's group carries, picked by its "type".
#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
pub enum RoomEvent {
    /// A member's message.
    #[serde(rename = "chat.message")]
    ChatMessage {
        /// The text.
        message: String,
    },
}

/// One client in one room.
#[derive(Debug)]
pub struct ChatConsumer {
    room: GroupName,
}

impl ChatConsumer {
    /// Builds the consumer from the request, or refuses it: a room name that cannot name a
    /// group is a 404 at the handshake, before anything is allocated.
    pub fn new(scope: &Scope) -> std::result::Result<ChatConsumer, Refusal> {
        let room = scope.param("room").unwrap_or_default();
        let room = GroupName::new(format!("chat_{room}"))
            .map_err(|e| Refusal::not_found(format!("no such room: {e}")))?;
        Ok(ChatConsumer { room })
    }
}

impl Consumer for ChatConsumer {
    type Incoming = ClientMessage;
    type Event = Decoded<RoomEvent>;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        conn.group_add(&self.room).await?; // left automatically when the connection ends
        conn.accept().await
    }

    async fn receive(&mut self, conn: &mut Connection, msg: ClientMessage) -> Result<()> {
        let event = serde_json::json!({"type": "chat.message", "message": msg.message});
        conn.group_send(&self.room, event).await
    }

    async fn event(&mut self, conn: &mut Connection, event: Decoded<RoomEvent>) -> Result<()> {
        match &*event {
            // Relayed as it came: rendered to JSON once for every member of the room.
            RoomEvent::ChatMessage { .. } => conn.send_message(event.message()).await,
        }
    }
}

/// The app: the chat room's WebSocket route on `layer`.
pub fn router(layer: Layer) -> axum::Router {
    axum::Router::new().route(
        "/ws/chat/{room}/",
        Endpoint::new(layer, ChatConsumer::new).into_route(),
    )
}
