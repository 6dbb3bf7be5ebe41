//! `peer-floor`: the least work a WebSocket chat server can do per delivery, speaking
//! switchboard's chat protocol, as the floor row of `scripts/bench-peers`.
//!
//! Each message is rendered to JSON and framed once; then those bytes are written to every
//! member's socket, one `write` each, by the sender's own task and (so that both cores write)
//! one more task per further worker thread, each taking its share of the members in turn.
//! There is no queue per member, no task per member woken for it, no per-member framing or
//! copy: what is left per delivery is the
//! `write` system call and the kernel's loopback TCP under it. A server that does anything per
//! member (a queue, a wake-up, framing) spends more; so its server CPU per delivery bounds what
//! any server can reach on the machine, under the same load tool.
//!
//! - WebSocket `/ws/chat/{room}/?nickname=NAME`: joins room `room` (created on first join,
//!   removed when its last member leaves).
//! - `{"message": TEXT}` in → every member, the sender included, gets
//!   `{"type":"chat.message","room":ROOM,"user":NAME,"message":TEXT}`.
//! - `GET /chat/rooms/{room}/` → `{"room":ROOM,"members":N}`.
//!
//! The WebSocket handshake and the client's frames are tokio-tungstenite's, over a `Shared`
//! handle of the socket; broadcasts write to the same socket through another.
//!
//! Not a server to deploy: a member whose socket is full stalls the broadcast until it drains
//! (every member after it waits; nothing is dropped), and a control frame tungstenite answers
//! (a pong, the close reply) can land inside a broadcast frame that was only partly written.
//! Neither happens in the benchmark's runs (no pings; clients close after the last message).
//!
//! The binary (`src/main.rs`) serves [`serve`]:
//!
//! ```text
//! cargo run --release -p peer-floor -- --bind 127.0.0.1:8303
//! ```

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// The rooms, and what the server counts.
#[derive(Debug)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    read_buffer: usize,
    /// Writes that found a member's socket full and waited for it.
    stalls: Arc<AtomicU64>,
    /// How many shares a broadcast's writes are split into: the runtime's worker threads.
    shares: usize,
}

/// One room: its members' sockets (copied on join and leave, so a broadcast takes them with
/// one `Arc` clone), and a lock that keeps two broadcasts from interleaving on a socket.
#[derive(Debug, Default)]
struct Room {
    members: Mutex<Arc<Vec<Arc<TcpStream>>>>,
    sending: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every operation under these locks is one insert, remove or clone: a panic while one is
    // held leaves the value consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Rooms {
    /// No rooms yet; each connection will read its socket `read_buffer` bytes at a time.
    pub fn new(read_buffer: usize) -> Rooms {
        Rooms {
            rooms: Mutex::new(HashMap::new()),
            read_buffer: read_buffer.max(256),
            stalls: Arc::new(AtomicU64::new(0)),
            shares: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// Writes so far that found a member's socket full (and waited for it to drain).
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// The members of `room` now.
    pub fn members(&self, room: &str) -> usize {
        lock(&self.rooms)
            .get(room)
            .map_or(0, |r| lock(&r.members).len())
    }

    fn join(&self, room: &str, socket: Arc<TcpStream>) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        let r = rooms.entry(room.to_owned()).or_default().clone();
        let mut members = lock(&r.members);
        let mut next = Vec::with_capacity(members.len() + 1);
        next.extend(members.iter().cloned());
        next.push(socket);
        *members = Arc::new(next);
        drop(members);
        r
    }

    /// Removes `socket` from `room`, and the room if it was the last member. Joining holds the
    /// rooms' lock too, so a room is never removed while someone joins it.
    fn leave(&self, room: &str, socket: &Arc<TcpStream>) {
        let mut rooms = lock(&self.rooms);
        let Some(r) = rooms.get(room) else { return };
        let left = {
            let mut members = lock(&r.members);
            let next: Vec<_> = members
                .iter()
                .filter(|m| !Arc::ptr_eq(m, socket))
                .cloned()
                .collect();
            let left = next.len();
            *members = Arc::new(next);
            left
        };
        if left == 0 {
            rooms.remove(room);
        }
    }
}

impl Room {
    /// Writes `frame` to every member: the members split into one share per worker thread,
    /// each share written in turn (one `write` per member) by a task of its own, the last by
    /// the caller's.
    async fn broadcast(&self, frame: Bytes, shares: usize, stalls: &Arc<AtomicU64>) {
        let _one_at_a_time = self.sending.lock().await;
        let members = lock(&self.members).clone();
        let share = members.len().div_ceil(shares.max(1)).max(1);
        let mut others = Vec::new();
        for start in (share..members.len()).step_by(share) {
            let (members, frame, stalls) = (members.clone(), frame.clone(), stalls.clone());
            others.push(tokio::spawn(async move {
                let end = (start + share).min(members.len());
                write_each(&members[start..end], &frame, &stalls).await;
            }));
        }
        write_each(&members[..share.min(members.len())], &frame, stalls).await;
        for task in others {
            let _ = task.await;
        }
    }
}

/// Writes `frame` to each of `sockets`, one after the other.
async fn write_each(sockets: &[Arc<TcpStream>], frame: &[u8], stalls: &AtomicU64) {
    for socket in sockets {
        let mut written = 0;
        while written < frame.len() {
            match socket.try_write(&frame[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    stalls.fetch_add(1, Ordering::Relaxed);
                    if socket.writable().await.is_err() {
                        break;
                    }
                }
                // The member is going; its reader will see it and leave.
                Err(_) => break,
            }
        }
    }
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

/// A handle of a socket that others write to as well: tungstenite reads and writes through it
/// (tokio's `TcpStream` implements the I/O traits only for one owner).
#[derive(Debug)]
struct Shared(Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when its last handle goes.
        Poll::Ready(Ok(()))
    }
}

/// Serves the chat on `listener` until it fails.
pub async fn serve(listener: TcpListener, rooms: Arc<Rooms>) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, rooms).await {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

/// The request's path and query, once its head has arrived (peeked, not read: tungstenite
/// reads it again for the handshake).
async fn request_target(stream: &TcpStream) -> io::Result<String> {
    let mut buf = [0u8; 4096];
    // A head not complete within a second (or over 4 KiB) is refused.
    for _ in 0..1000 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => return Ok(req.path.unwrap_or("/").to_owned()),
            Ok(httparse::Status::Partial) if n < buf.len() => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => break,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "bad request head",
    ))
}

/// Reads the request head (already known to be complete) and answers `status` with `body`.
async fn answer(mut stream: TcpStream, status: &str, body: &str) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await?;
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The value of `key` in a query string (no percent-decoding: nicknames are plain).
fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

async fn connection(stream: TcpStream, rooms: Arc<Rooms>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let target = request_target(&stream).await?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let room = match segments[..] {
        ["ws", "chat", room] => room.to_owned(),
        ["chat", "rooms", room] => {
            let body = serde_json::json!({"room": room, "members": rooms.members(room)});
            return answer(stream, "200 OK", &body.to_string()).await;
        }
        _ => return answer(stream, "404 Not Found", r#"{"error":"not found"}"#).await,
    };
    let user = query_value(query, "nickname")
        .unwrap_or("anonymous")
        .to_owned();
    let socket = Arc::new(stream);
    let config = WebSocketConfig::default().read_buffer_size(rooms.read_buffer);
    let mut ws = tokio_tungstenite::accept_async_with_config(Shared(socket.clone()), Some(config))
        .await
        .map_err(io::Error::other)?;
    let joined = rooms.join(&room, socket.clone());
    while let Some(Ok(m)) = ws.next().await {
        let text = match m {
            Message::Text(t) => t,
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
        let json = serde_json::to_vec(&out).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(json.len() + 10);
        Frame::message(json, OpCode::Data(Data::Text), true)
            .format(&mut frame)
            .map_err(io::Error::other)?;
        // `Bytes` takes the buffer as it is: the frame is not copied again for the shares.
        joined
            .broadcast(Bytes::from(frame), rooms.shares, &rooms.stalls)
            .await;
    }
    rooms.leave(&room, &socket);
    Ok(())
}
