//! Testing helpers: drive a consumer with no network, as Channels' `WebsocketCommunicator`.
//!
//! The [`Communicator`] runs the real consumer runtime — the same code that serves sockets —
//! over an in-process transport, against a real layer.
//!
//! ```
//! use switchboard::testing::Communicator;
//! use switchboard::{CloseCode, Connection, Consumer, Frame, InMemoryLayer, Message, Result, Scope};
//!
//! struct Echo;
//! impl Consumer for Echo {
//!     type Incoming = Frame;
//!     type Event = Message;
//!     async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
//!         conn.send_text(format!("echo: {}", frame.text()?)).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard::testing::TestError> {
//! let mut comm = Communicator::new(InMemoryLayer::default(), Scope::new("/ws/echo/"), Echo);
//! assert!(comm.connect().await.is_accepted());
//! comm.send_text("hi").await?;
//! assert_eq!(comm.receive_text().await?, "echo: hi");
//! assert!(comm.receive_nothing().await);
//! comm.disconnect(CloseCode::NORMAL).await;
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};
use std::time::Duration;

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures_util::{Sink, Stream, StreamExt};
use http::StatusCode;
use serde::Serialize;
use switchboard_core::{ChannelName, Layer};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::config::ConnectionConfig;
use crate::consumer::{CloseCode, Consumer, IntoConsumer};
use crate::endpoint::Refusal;
use crate::runtime;
use crate::scope::Scope;

/// How a `connect` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshaken {
    /// Accepted, with the chosen subprotocol.
    Accepted {
        /// The subprotocol the consumer chose.
        subprotocol: Option<String>,
    },
    /// Refused; a server would have answered with this HTTP status and body.
    Refused {
        /// 403 when the consumer refused, 500 when `connect` failed, 503 without a channel.
        status: StatusCode,
        /// The response body: why.
        reason: String,
    },
}

impl Handshaken {
    /// Whether the connection was accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Handshaken::Accepted { .. })
    }

    /// The refusal's status, if it was refused.
    pub fn refused_with(&self) -> Option<StatusCode> {
        match self {
            Handshaken::Refused { status, .. } => Some(*status),
            Handshaken::Accepted { .. } => None,
        }
    }
}

/// What the consumer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame.
    Close(CloseCode, String),
}

/// Why a communicator call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestError {
    /// Nothing arrived in time.
    #[error("nothing received within {0:?}")]
    Timeout(Duration),
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// Call `connect` first (and it must have been accepted).
    #[error("not connected")]
    NotConnected,
    /// A frame of another kind arrived.
    #[error("unexpected frame: {0:?}")]
    Unexpected(Received),
    /// The text was not JSON.
    #[error("invalid JSON {text:?}: {error}")]
    Json {
        /// The text received.
        text: String,
        /// Why it did not parse.
        error: String,
    },
}

/// Drives one consumer through connect, frames, events and disconnect, with no network.
pub struct Communicator<C: Consumer> {
    layer: Layer,
    scope: Option<Scope>,
    consumer: Option<C>,
    config: Arc<ConnectionConfig>,
    to_consumer: Option<UnboundedSender<WsMessage>>,
    from_consumer: Option<UnboundedReceiver<WsMessage>>,
    task: Option<JoinHandle<()>>,
    channel: Option<ChannelName>,
    timeout: Duration,
}

impl<C: Consumer> std::fmt::Debug for Communicator<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("channel", &self.channel)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C: Consumer> Communicator<C> {
    /// A communicator for `consumer`, with this scope, on this layer.
    pub fn new(layer: impl Into<Layer>, scope: Scope, consumer: C) -> Self {
        Communicator {
            layer: layer.into(),
            scope: Some(scope),
            consumer: Some(consumer),
            config: Arc::new(ConnectionConfig::default()),
            to_consumer: None,
            from_consumer: None,
            task: None,
            channel: None,
            timeout: Duration::from_secs(1),
        }
    }

    /// A communicator for the consumer `factory` builds from `scope`, as an endpoint builds
    /// it; `Err` is the refusal the client would get.
    pub fn from_factory<R>(
        layer: impl Into<Layer>,
        scope: Scope,
        factory: impl FnOnce(&Scope) -> R,
    ) -> Result<Self, Refusal>
    where
        R: IntoConsumer<Consumer = C>,
    {
        let consumer = factory(&scope).into_consumer()?;
        Ok(Communicator::new(layer, scope, consumer))
    }

    /// Uses these connection settings: the outbound limits, keep-alive and bad-input policy.
    /// The inbound limits (`max_message_size`, buffer sizes) belong to the WebSocket codec,
    /// which the in-memory transport has not: they apply on a real socket only.
    pub fn with_config(mut self, config: ConnectionConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// Sets how long `receive_*` waits (default 1 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the handshake: the consumer's `connect`.
    pub async fn connect(&mut self) -> Handshaken {
        let (Some(scope), Some(mut consumer)) = (self.scope.take(), self.consumer.take()) else {
            return Handshaken::Refused {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                reason: "connect was already called".into(),
            };
        };
        let opened =
            runtime::open(&self.layer, scope, &mut consumer, self.config.out_limits()).await;
        match opened {
            Ok((conn, subprotocol)) => {
                self.channel = Some(conn.channel_name().clone());
                let (to_consumer, incoming) = unbounded();
                let (outgoing, from_consumer) = unbounded();
                let transport = MemoryTransport { incoming, outgoing };
                self.task = Some(tokio::spawn(runtime::run(
                    consumer,
                    conn,
                    std::future::ready(Some(transport)),
                    self.config.clone(),
                    None,
                )));
                self.to_consumer = Some(to_consumer);
                self.from_consumer = Some(from_consumer);
                Handshaken::Accepted { subprotocol }
            }
            Err((status, reason)) => Handshaken::Refused { status, reason },
        }
    }

    /// The consumer's channel name (after `connect`).
    pub fn channel_name(&self) -> Option<&ChannelName> {
        self.channel.as_ref()
    }

    fn send(&mut self, msg: WsMessage) -> Result<(), TestError> {
        let tx = self.to_consumer.as_ref().ok_or(TestError::NotConnected)?;
        tx.unbounded_send(msg).map_err(|_| TestError::Closed)
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), TestError> {
        self.send(WsMessage::text(text.into()))
    }

    /// Sends a binary frame.
    pub async fn send_bytes(&mut self, bytes: impl Into<Vec<u8>>) -> Result<(), TestError> {
        self.send(WsMessage::binary(bytes.into()))
    }

    /// Sends a value as a JSON text frame.
    pub async fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TestError> {
        let text = serde_json::to_string(value).map_err(|e| TestError::Json {
            text: String::new(),
            error: e.to_string(),
        })?;
        self.send(WsMessage::text(text))
    }

    /// The next frame the consumer sent (pings skipped), waiting up to the timeout.
    pub async fn receive(&mut self) -> Result<Received, TestError> {
        self.receive_within(self.timeout).await
    }

    /// The next frame, waiting up to `wait`.
    pub async fn receive_within(&mut self, wait: Duration) -> Result<Received, TestError> {
        let rx = self.from_consumer.as_mut().ok_or(TestError::NotConnected)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, rx.next())
                .await
                .map_err(|_| TestError::Timeout(wait))?;
            match next {
                None => return Err(TestError::Closed),
                Some(WsMessage::Text(t)) => return Ok(Received::Text(t.as_str().to_owned())),
                Some(WsMessage::Frame(f)) => {
                    // The runtime writes text as raw frames (see `runtime::to_websocket`).
                    let text = String::from_utf8_lossy(f.payload()).into_owned();
                    return Ok(Received::Text(text));
                }
                Some(WsMessage::Binary(b)) => return Ok(Received::Binary(b.to_vec())),
                Some(WsMessage::Close(f)) => {
                    // Reply by ending our side, as a client's close reply would.
                    self.to_consumer = None;
                    let (code, reason) = f.map_or((1005, String::new()), |f: CloseFrame| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    });
                    return Ok(Received::Close(CloseCode(code), reason));
                }
                Some(_) => continue,
            }
        }
    }

    /// The next text frame.
    pub async fn receive_text(&mut self) -> Result<String, TestError> {
        match self.receive().await? {
            Received::Text(t) => Ok(t),
            other => Err(TestError::Unexpected(other)),
        }
    }

    /// The next text frame, parsed as JSON.
    pub async fn receive_json(&mut self) -> Result<serde_json::Value, TestError> {
        let text = self.receive_text().await?;
        serde_json::from_str(&text).map_err(|e| TestError::Json {
            text,
            error: e.to_string(),
        })
    }

    /// The close frame the consumer sent.
    pub async fn receive_close(&mut self) -> Result<(CloseCode, String), TestError> {
        match self.receive().await? {
            Received::Close(code, reason) => Ok((code, reason)),
            other => Err(TestError::Unexpected(other)),
        }
    }

    /// Whether nothing arrives within 100 ms.
    pub async fn receive_nothing(&mut self) -> bool {
        self.receive_nothing_within(Duration::from_millis(100))
            .await
    }

    /// Whether nothing arrives within `wait`.
    pub async fn receive_nothing_within(&mut self, wait: Duration) -> bool {
        matches!(self.receive_within(wait).await, Err(TestError::Timeout(_)))
    }

    /// Closes from the client side with `code` and waits until the consumer's `disconnect` has
    /// run and its groups are left.
    pub async fn disconnect(&mut self, code: CloseCode) {
        let _ = self.send(WsMessage::Close(Some(CloseFrame {
            code: code.0.into(),
            reason: "".into(),
        })));
        self.to_consumer = None;
        self.wait().await;
    }

    /// Waits (up to 5 s) for the connection task to end.
    pub async fn wait(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// An in-process WebSocket transport: what the [`Communicator`](crate::testing::Communicator)
/// plugs into the runtime in place of a socket.
struct MemoryTransport {
    incoming: futures_channel::mpsc::UnboundedReceiver<WsMessage>,
    outgoing: futures_channel::mpsc::UnboundedSender<WsMessage>,
}

impl crate::runtime::Transport for MemoryTransport {
    fn poll_discard(&mut self, _: &mut task::Context<'_>) -> Poll<std::io::Result<usize>> {
        // No bytes under these frames: nothing is left unread.
        Poll::Ready(Ok(0))
    }
}

impl Stream for MemoryTransport {
    type Item = Result<WsMessage, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_next_unpin(cx).map(|m| m.map(Ok))
    }
}

impl Sink<WsMessage> for MemoryTransport {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Result<(), WsError>> {
        self.outgoing
            .poll_ready(cx)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), WsError> {
        self.outgoing
            .start_send(item)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut task::Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut task::Context<'_>) -> Poll<Result<(), WsError>> {
        self.outgoing.close_channel();
        Poll::Ready(Ok(()))
    }
}
