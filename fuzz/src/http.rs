//! The HTTP upgrade path: the fuzzer's bytes are what a client sends to a real standalone
//! server (its first-head reader and event-stream path, its router, `Endpoint::upgrade`,
//! hyper, and after a `101` the WebSocket connection), over an in-memory pipe, on one runtime
//! kept for the whole run.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::pin::Pin;
use std::task::Poll;
use switchboard_core::InMemoryLayer;
use switchboard_server::standalone::{Routes, Server};
use switchboard_server::{Connection, Consumer, Endpoint, Frame, Origins, Refusal, Scope};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

/// How long a connection may take to end once its client has sent everything and hung up.
const HANG: Duration = Duration::from_secs(5);

/// Scheduler rounds without news from the server after which a client hangs up.
const IDLE_ROUNDS: usize = 8;

/// Reads what the server has written so far, without waiting: `Some(0)` at its end (or an
/// error), `None` when nothing is there yet.
fn read_now(client: &mut tokio::io::DuplexStream, out: &mut Vec<u8>) -> Option<usize> {
    let mut buf = [0; 8192];
    let mut read = ReadBuf::new(&mut buf);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match Pin::new(client).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => {
            out.extend_from_slice(read.filled());
            Some(read.filled().len())
        }
        Poll::Ready(Err(_)) => Some(0),
        Poll::Pending => None,
    }
}

/// Set by the panic hook: a panic in a spawned task (tokio catches it) fails the input too.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Sends every text frame back.
struct Echo;

impl Consumer for Echo {
    type Incoming = Frame;
    type Event = switchboard_core::Message;
    async fn receive(
        &mut self,
        conn: &mut Connection,
        frame: Frame,
    ) -> switchboard_server::Result<()> {
        let text = frame.text()?.to_owned();
        conn.send_text(text).await
    }
}

/// What a recording endpoint saw of one handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Seen {
    params: Vec<(String, String)>,
    query: Option<String>,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    routes: Routes,
    seen: Arc<Mutex<Option<Seen>>>,
}

fn recorder(seen: &Arc<Mutex<Option<Seen>>>) -> impl Fn(&Scope) -> Result<Echo, Refusal> + use<> {
    let seen = seen.clone();
    move |scope: &Scope| {
        let got = Seen {
            params: scope.params().to_vec(),
            query: scope.query("q"),
        };
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
        Err(Refusal::forbidden("recorded"))
    }
}

impl Harness {
    fn new() -> Harness {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICKED.store(true, Ordering::SeqCst);
                previous(info);
            }));
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime: {e}"));
        let layer = InMemoryLayer::default();
        let seen = Arc::new(Mutex::new(None));
        let auth = |scope: &mut Scope| match scope.cookie("session").as_deref() {
            Some("bad") => Err(Refusal::unauthorized("bad session")),
            Some(user) => {
                scope.set_user(user);
                Ok(())
            }
            None => match scope.query("token").as_deref() {
                Some("bad") => Err(Refusal::forbidden("bad token")),
                _ => Ok(()),
            },
        };
        let server = Server::new()
            .route(
                "/ws/echo/{room}/",
                Endpoint::new(layer.clone(), |_: &Scope| Echo).allow_missing_origin(true),
            )
            .and_then(|s| {
                s.route(
                    "/ws/list/{*rest}",
                    Endpoint::new(layer.clone(), |_: &Scope| Echo)
                        .allowed_origins([".example.com", "https://app.test:8443"])
                        .authenticate(auth),
                )
            })
            .and_then(|s| {
                s.route(
                    "/ws/route/{room}/",
                    Endpoint::new(layer.clone(), recorder(&seen))
                        .origins(Origins::Any)
                        .allow_missing_origin(true),
                )
            })
            .and_then(|s| {
                s.route(
                    "/ws/files/{*rest}",
                    Endpoint::new(layer.clone(), recorder(&seen))
                        .origins(Origins::Any)
                        .allow_missing_origin(true),
                )
            })
            .unwrap_or_else(|e| panic!("the fuzz routes: {e}"));
        Harness {
            rt,
            routes: server.into_routes(),
            seen,
        }
    }

    /// Sends `request`, hangs up, and returns all the server answered. Panics if the server
    /// did not end the connection within [`HANG`], if a connection task outlived it, or if a
    /// task panicked.
    fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let out = self.rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 17);
            let served = tokio::spawn({
                let routes = self.routes.clone();
                async move { routes.serve_connection(server, peer).await }
            });
            let talk = async {
                client.write_all(request).await?;
                // The server closes as soon as it reads the end of the stream, before it
                // answers (hyper's default, no half-close): read what it answers until it
                // has been idle for a few scheduler rounds, then hang up.
                let mut out = Vec::new();
                let mut idle = 0;
                while idle < IDLE_ROUNDS {
                    tokio::task::yield_now().await;
                    match read_now(&mut client, &mut out) {
                        Some(0) => return Ok(out),
                        Some(_) => idle = 0,
                        None => idle += 1,
                    }
                }
                client.shutdown().await?;
                client.read_to_end(&mut out).await?;
                Ok::<_, std::io::Error>(out)
            };
            let out = tokio::time::timeout(HANG, talk)
                .await
                .unwrap_or_else(|_| panic!("the connection did not end within {HANG:?}"))
                .unwrap_or_default();
            drop(client);
            if let Err(e) = served.await {
                panic!("the connection task failed: {e}");
            }
            // Upgraded connections run in tasks of their own: all of them end with the pipe.
            let metrics = tokio::runtime::Handle::current().metrics();
            let deadline = tokio::time::Instant::now() + HANG;
            let mut rounds = 0u32;
            while metrics.num_alive_tasks() > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} connection tasks outlived their client",
                    metrics.num_alive_tasks()
                );
                // Scheduler rounds first (a timer's millisecond is long), then sleeps.
                rounds += 1;
                if rounds < 1000 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            out
        });
        assert!(
            !PANICKED.swap(false, Ordering::SeqCst),
            "a task panicked (see above)"
        );
        out
    }

    fn take_seen(&self) -> Option<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fn with_harness<T>(f: impl FnOnce(&Harness) -> T) -> T {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        f(h.get_or_insert_with(Harness::new))
    })
}

/// A WebSocket handshake that the echo route accepts.
pub const UPGRADE: &[u8] = b"GET /ws/echo/lobby/ HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\
    Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// The status line's code, if `response` starts with one.
fn status(response: &[u8]) -> Option<u16> {
    let rest = response.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The bytes as a client's side of a connection. If the first byte is `0xFF`, the rest
/// follows the accepted handshake [`UPGRADE`] (WebSocket frames, straight away). The server
/// answers with HTTP/1 responses or nothing, a `101` carries its `Sec-WebSocket-Accept`, and
/// the connection and every task it started end once the client hangs up.
pub fn http_upgrade(data: &[u8]) {
    let data = &data[..data.len().min(64 * 1024)];
    let request = match data.split_first() {
        Some((0xFF, frames)) => [UPGRADE, frames].concat(),
        _ => data.to_vec(),
    };
    let response = with_harness(|h| h.exchange(&request));
    if response.is_empty() {
        return;
    }
    let code = status(&response).unwrap_or_else(|| {
        panic!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&response)
        )
    });
    if code == 101 {
        let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
        assert!(head.contains("\r\nsec-websocket-accept: "), "{head}");
        assert!(request.starts_with(b"GET "), "an upgrade without GET");
    }
    if data.first() == Some(&0xFF) {
        assert_eq!(code, 101, "the accepted handshake was refused");
    }
}

/// Path characters left as they are in a catch-all parameter: `/` separates its segments.
const REST: &AsciiSet = &NON_ALPHANUMERIC.remove(b'/');

/// The bytes (as UTF-8, lossily) are a route parameter, then after a NUL a query value. A
/// valid handshake for `/ws/route/{room}/?q=…` (or `/ws/files/{*rest}` when the parameter has
/// a `/`), percent-encoded, reaches the consumer factory with the parameter and the query
/// value percent-decoded to what was sent.
pub fn route_params(data: &[u8]) {
    let text = String::from_utf8_lossy(&data[..data.len().min(8 * 1024)]);
    let (param, query) = text.split_once('\0').unwrap_or((&text, ""));
    if param.is_empty() {
        return;
    }
    let (name, path) = if param.contains('/') {
        (
            "rest",
            format!("/ws/files/{}", utf8_percent_encode(param, REST)),
        )
    } else {
        (
            "room",
            format!(
                "/ws/route/{}/",
                utf8_percent_encode(param, NON_ALPHANUMERIC)
            ),
        )
    };
    let request = format!(
        "GET {path}?q={} HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        utf8_percent_encode(query, NON_ALPHANUMERIC)
    );
    let (response, seen) = with_harness(|h| {
        let response = h.exchange(request.as_bytes());
        (response, h.take_seen())
    });
    let expected = Seen {
        params: vec![(name.to_owned(), param.to_owned())],
        query: Some(query.to_owned()),
    };
    assert_eq!(
        status(&response),
        Some(403),
        "{request:?}: {:?}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(seen, Some(expected), "{request:?}");
}
