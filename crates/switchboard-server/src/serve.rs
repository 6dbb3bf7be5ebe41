//! Serving HTTP/1 connections with the limits a public endpoint needs before any WebSocket
//! exists: the accept loop both servers share, and [`serve`] for an axum router.
//!
//! `axum::serve` keeps a connection for as long as its client likes: a client that sends
//! half a request head and then nothing (slowloris), or nothing at all, or that keeps an
//! idle connection open after its response, holds a socket and a file descriptor forever
//! (hyper's own header timeout needs a timer configured, and starts only at the first byte).
//! A few thousand of them take the process's descriptors, and the server refuses everyone.
//! Here ([`HttpLimits`]):
//!
//! - a connection must deliver a whole request head within
//!   [`header_timeout`](HttpLimits::header_timeout) of opening, and again within it of each
//!   response ending (keep-alive), or it is closed. A request being answered — a streaming
//!   response, a long poll — is not timed; an upgraded WebSocket has its own
//!   [`idle_timeout`](crate::ConnectionConfig::idle_timeout);
//! - at most [`max_pending`](HttpLimits::max_pending) connections may be waiting for their
//!   first request head at once: past it the server stops accepting until one of them sends
//!   its request or times out, so the kernel's listen backlog holds the rest instead of the
//!   process's descriptor table;
//! - with [`write_timeout`](HttpLimits::write_timeout) set, a connection whose writes make no
//!   progress for that long — its client stopped reading, and the socket's buffers are full —
//!   is closed: an event stream ([`sse`](crate::sse)) to a client that reads nothing would
//!   otherwise hold its socket and its subscription until TCP gives up. (It applies to
//!   upgraded WebSocket connections too; their runtime has limits of its own that usually
//!   act first.)
//!
//! An event-stream request as a browser's `EventSource` sends it (`GET`, HTTP/1.1,
//! `Accept: text/event-stream`, no body, no `Upgrade`) is answered outside hyper, for memory:
//! an idle [`sse`](crate::sse) stream then holds no HTTP buffers (5.7 KiB per subscriber in
//! the push gateway's benchmark, against 14.9 KiB through hyper). The handler is the same;
//! the response goes out as HTTP/1.1 with `Connection: close` (chunked unless it has a
//! length), and a client that goes away ends it at once. Every other request is hyper's.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::Router;
//! use switchboard::{HttpLimits, InMemoryLayer, Scope};
//! # use switchboard::{Connection, Consumer, Frame, Message, Result};
//! # struct Echo;
//! # impl Consumer for Echo {
//! #     type Incoming = Frame;
//! #     type Event = Message;
//! #     async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
//! #         conn.send_text(frame.text()?).await
//! #     }
//! # }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new()
//!     .route("/ws/echo/", switchboard::axum::consumer(InMemoryLayer::default(), |_: &Scope| Echo));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! switchboard::serve(listener, app)
//!     .limits(HttpLimits::default().header_timeout(Duration::from_secs(5)))
//!     .await
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::direct::{self, Head, RequestBody};

/// Limits on the HTTP connections a server accepts (see the [module](self) docs).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpLimits {
    /// Time a connection has to deliver a whole request head, counted from its opening and
    /// again from the end of each response; past it the connection is closed. Default 10 s.
    pub header_timeout: Duration,
    /// Connections waiting for their first request head at most; past it the server stops
    /// accepting until one sends its request or times out. Default 1,024.
    pub max_pending: usize,
    /// How long a write may wait for the socket to take any of it before the connection is
    /// closed (`None`: as long as it takes). Default `None`.
    pub write_timeout: Option<Duration>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_pending: 1024,
            write_timeout: None,
        }
    }
}

impl HttpLimits {
    /// Sets [`header_timeout`](HttpLimits::header_timeout).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets [`max_pending`](HttpLimits::max_pending) (at least 1).
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// Sets [`write_timeout`](HttpLimits::write_timeout) (`None`, or zero: none).
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout.filter(|t| !t.is_zero());
        self
    }
}

/// A connection's I/O: the bytes already read from it (the first request head, read by
/// [`direct::read_head`]) come first, and a write the socket has taken nothing of for
/// `timeout` fails (see [`HttpLimits::write_timeout`]). The timer exists only while a write is
/// waiting.
pub(crate) struct ConnIo<T> {
    io: T,
    prefix: Vec<u8>,
    at: usize,
    timeout: Option<Duration>,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> ConnIo<T> {
    pub(crate) fn new(io: T, prefix: Vec<u8>, timeout: Option<Duration>) -> ConnIo<T> {
        ConnIo {
            io,
            prefix,
            at: 0,
            timeout,
            stalled: None,
        }
    }

    /// After the socket took nothing: pending until the timeout, then an error.
    fn stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        let timer = self.stalled.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(
                Instant::now()
                    .checked_add(timeout)
                    .unwrap_or_else(far_future),
            ))
        });
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(
        &mut self,
        p: Poll<std::io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<R>> {
        match p {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

/// A year from now: "no deadline" for a timeout too long to add to the clock.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 86_400)
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for ConnIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                // Given back: an upgraded connection keeps this I/O for its life.
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for ConnIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(p, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(p, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What a connection is doing, for its watchdog: requests being answered (from the call of
/// the service to the end of the response's body), and when the last one ended.
struct Activity {
    busy: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last response (0: none yet).
    idle_since_ms: AtomicU64,
    opened: Instant,
    /// Held until the first request head arrives (see [`HttpLimits::max_pending`]).
    pending: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        drop(self.pending.lock().take());
        Busy(self.clone())
    }

    /// Completes when the connection has waited `timeout` for a request head.
    async fn expired(&self, timeout: Duration) {
        loop {
            if self.busy.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let since = self.idle_since_ms.load(Ordering::Acquire);
            let deadline = self.opened + Duration::from_millis(since) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One request being answered; dropped with its response's body.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms.max(1), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that marks its request answered when it ends (or is dropped).
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Accepts connections from `listener` and serves each with the service `make(peer)` gives,
/// under `limits`, until `stop` completes; then tells the connections to finish their
/// requests and close, and waits for them. Upgraded connections (WebSockets) are no longer
/// this loop's: their tasks run on.
pub(crate) async fn accept_loop<M, S, B, F>(
    listener: TcpListener,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
    make: M,
) -> std::io::Result<()>
where
    M: Fn(SocketAddr) -> S,
    S: Fn(Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let pending = Arc::new(Semaphore::new(limits.max_pending.max(1)));
    let (closing, closing_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            () = &mut stop => break,
        };
        // WebSocket frames are small and latency-sensitive: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
            pending: Mutex::new(Some(permit)),
        });
        let handler = make(peer);
        let mut closing = closing_rx.clone();
        let timeout = limits.header_timeout;
        let write_timeout = limits.write_timeout;
        tokio::spawn(async move {
            let mut stream = stream;
            // The first request head is read here: an event stream is answered outside hyper
            // (see `direct`), everything else goes to hyper with the bytes read.
            let head = tokio::select! {
                head = direct::read_head(&mut stream) => head,
                () = activity.expired(timeout) => {
                    tracing::debug!(%peer, "no request head within the header timeout; closing");
                    return;
                }
                _ = closing.changed() => return,
            };
            let prefix = match head {
                Head::Closed => return,
                Head::Stream(req) => {
                    let busy = activity.begin();
                    let response = handler(*req).await;
                    let io = ConnIo::new(TokioIo::new(stream), Vec::new(), write_timeout);
                    direct::answer(TokioIo::new(io), response).await;
                    drop(busy);
                    return;
                }
                Head::Other(prefix) => prefix,
            };
            let on_request = activity.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let busy = on_request.begin();
                let response = handler(req.map(RequestBody::Hyper));
                async move {
                    let response = response.await;
                    Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
                }
            });
            let io = ConnIo::new(TokioIo::new(stream), prefix, write_timeout);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = activity.expired(timeout) => {
                    tracing::debug!(%peer, "no request head within the header timeout; closing");
                    return;
                }
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        () = activity.expired(timeout) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "http connection error");
            }
        });
    }
    drop(closing_rx);
    let _ = closing.send(true);
    closing.closed().await;
    Ok(())
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // EMFILE/ENFILE (too many open files) and aborted handshakes must not stop the server.
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 23 || c == 24)
}

#[cfg(feature = "axum")]
pub use self::axum_serve::{Serve, serve};

#[cfg(feature = "axum")]
mod axum_serve {
    use std::future::{Future, IntoFuture};
    use std::net::SocketAddr;

    use axum::Router;
    use axum::extract::ConnectInfo;
    use futures_util::future::BoxFuture;
    use tokio::net::TcpListener;
    use tower_service::Service;

    use super::{HttpLimits, accept_loop};
    use crate::shutdown::Shutdown;

    /// Serves an axum router, as `axum::serve` does, under [`HttpLimits`]: see the
    /// [module](super) docs. Requests carry the peer's address (`ConnectInfo<SocketAddr>`), so
    /// consumers see it in [`Scope::peer_addr`](crate::Scope::peer_addr).
    pub fn serve(listener: TcpListener, router: Router) -> Serve {
        Serve {
            listener,
            router,
            limits: HttpLimits::default(),
            stop: Box::pin(std::future::pending()),
        }
    }

    /// A server being set up by [`serve`]; await it to run it.
    #[must_use = "a server does nothing until awaited"]
    pub struct Serve {
        listener: TcpListener,
        router: Router,
        limits: HttpLimits,
        stop: BoxFuture<'static, ()>,
    }

    impl std::fmt::Debug for Serve {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Serve")
                .field("limits", &self.limits)
                .finish_non_exhaustive()
        }
    }

    impl Serve {
        /// Sets the limits (default [`HttpLimits::default`]).
        pub fn limits(mut self, limits: HttpLimits) -> Serve {
            self.limits = limits;
            self
        }

        /// Stops accepting when `signal` completes; then in-flight requests finish (bounded by
        /// the header timeout once they have) and the server returns.
        pub fn with_graceful_shutdown(
            mut self,
            signal: impl Future<Output = ()> + Send + 'static,
        ) -> Serve {
            self.stop = Box::pin(signal);
            self
        }

        /// Stops accepting when `shutdown` begins to drain (give it to the endpoints too, with
        /// [`Endpoint::shutdown`](crate::Endpoint::shutdown), so that the drain closes their
        /// connections).
        pub fn shutdown(self, shutdown: &Shutdown) -> Serve {
            let shutdown = shutdown.clone();
            self.with_graceful_shutdown(async move { shutdown.draining().await })
        }
    }

    impl IntoFuture for Serve {
        type Output = std::io::Result<()>;
        type IntoFuture = BoxFuture<'static, std::io::Result<()>>;

        fn into_future(self) -> Self::IntoFuture {
            let Serve {
                listener,
                router,
                limits,
                stop,
            } = self;
            Box::pin(accept_loop(
                listener,
                limits,
                stop,
                move |peer: SocketAddr| {
                    let router = router.clone();
                    move |mut req: http::Request<crate::direct::RequestBody>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        let mut router = router.clone();
                        let call = router.call(req.map(axum::body::Body::new));
                        async move {
                            match call.await {
                                Ok(response) => response,
                                Err(never) => match never {},
                            }
                        }
                    }
                },
            ))
        }
    }
}
