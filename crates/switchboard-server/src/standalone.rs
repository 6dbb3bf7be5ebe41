//! A standalone WebSocket server for apps without axum: hyper for the HTTP upgrade,
//! tokio-tungstenite for the WebSocket, and a small path router (`/ws/chat/{room}/`).
//!
//! ```no_run
//! use switchboard::standalone::Server;
//! use switchboard::{Connection, Consumer, Endpoint, Frame, InMemoryLayer, Message, Result, Scope};
//!
//! struct Echo;
//! impl Consumer for Echo {
//!     type Incoming = Frame;
//!     type Event = Message;
//!     async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
//!         conn.send_text(frame.text()?).await
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = InMemoryLayer::default();
//! let server = Server::new()
//!     .route("/ws/echo/{room}/", Endpoint::new(layer, |_: &Scope| Echo).allow_missing_origin(true))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! server.serve(listener).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::consumer::IntoConsumer;
use crate::direct::RequestBody;
use crate::endpoint::{Authenticate, Endpoint, plain};
use crate::scope::Scope;
use crate::serve::{HttpLimits, accept_loop};
use crate::shutdown::Shutdown;

type Handler = Arc<
    dyn Fn(
            Request<RequestBody>,
            Vec<(String, String)>,
            Option<SocketAddr>,
        ) -> BoxFuture<'static, Response<Full<Bytes>>>
        + Send
        + Sync,
>;

/// A route pattern that could not be added.
#[derive(Debug, thiserror::Error)]
#[error("bad route {path:?}: {reason}")]
pub struct RouteError {
    /// The pattern.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The standalone server: routes WebSocket upgrades to endpoints by path.
#[derive(Default)]
pub struct Server {
    router: matchit::Router<Handler>,
    shutdown: Option<Shutdown>,
    limits: HttpLimits,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// A server with no routes.
    pub fn new() -> Server {
        Server::default()
    }

    /// Serves `endpoint` at `path`; `{name}` segments become route parameters
    /// ([`Scope::param`]), `{*rest}` matches the rest of the path.
    pub fn route<F, A, R>(
        mut self,
        path: &str,
        endpoint: Endpoint<F, A>,
    ) -> Result<Server, RouteError>
    where
        F: Fn(&Scope) -> R + Send + Sync + 'static,
        R: IntoConsumer + 'static,
        A: Authenticate,
    {
        let endpoint = Arc::new(endpoint);
        let handler: Handler = Arc::new(move |req, params, peer| {
            let endpoint = endpoint.clone();
            Box::pin(async move { endpoint.upgrade(req, params, peer).await })
        });
        self.router.insert(path, handler).map_err(|e| RouteError {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(self)
    }

    /// Stops accepting when `shutdown` begins to drain (give it to the endpoints too, with
    /// [`Endpoint::shutdown`], so that the drain closes their connections).
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Server {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// Sets the limits on HTTP connections (header timeout, connections waiting for their
    /// request): see [`HttpLimits`].
    pub fn limits(mut self, limits: HttpLimits) -> Server {
        self.limits = limits;
        self
    }

    /// Accepts connections until the listener fails (or the [`Shutdown`] drains).
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Accepts connections until `shutdown` completes (or the [`Shutdown`] drains).
    /// Connections already upgraded keep running until they end, or until the drain closes
    /// them; plain HTTP requests in flight are answered first.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let router = Arc::new(self.router);
        let draining = self.shutdown;
        let shutdown = async move {
            match &draining {
                Some(d) => tokio::select! {
                    () = shutdown => {}
                    () = d.draining() => {}
                },
                None => shutdown.await,
            }
        };
        accept_loop(listener, self.limits, shutdown, move |peer: SocketAddr| {
            let router = router.clone();
            move |req: Request<RequestBody>| {
                let router = router.clone();
                async move { dispatch(&router, req, peer).await }
            }
        })
        .await
    }
}

/// For the fuzz targets (`fuzz/` in the repository), behind the `fuzzing` feature: a server's
/// routes, served on any stream. Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[derive(Clone)]
pub struct Routes(Arc<matchit::Router<Handler>>);

#[cfg(feature = "fuzzing")]
impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

#[cfg(feature = "fuzzing")]
impl Routes {
    /// Serves one connection as [`Server::serve`] serves each accepted one (without the
    /// accept loop's [`HttpLimits`] watchdog: the fuzz targets' input is all there): its first
    /// request head read here, an event-stream request answered outside hyper, the rest by
    /// hyper.
    pub async fn serve_connection<I>(&self, io: I, peer: SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use crate::direct::{self, Head};
        use crate::serve::ConnIo;
        use hyper_util::rt::TokioIo;
        let mut io = io;
        let prefix = match direct::read_head(&mut io).await {
            Head::Closed => return,
            Head::Stream(req) => {
                let response = dispatch(&self.0, *req, peer).await;
                direct::answer(
                    TokioIo::new(ConnIo::new(TokioIo::new(io), Vec::new(), None)),
                    response,
                )
                .await;
                return;
            }
            Head::Other(prefix) => prefix,
        };
        let router = self.0.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            let req = req.map(RequestBody::Hyper);
            async move { Ok::<_, std::convert::Infallible>(dispatch(&router, req, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(ConnIo::new(TokioIo::new(io), prefix, None), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, %peer, "http connection error");
        }
    }
}

#[cfg(feature = "fuzzing")]
impl Server {
    /// The routes, to serve connections over any stream (the fuzz targets' in-memory pipes).
    #[doc(hidden)]
    pub fn into_routes(self) -> Routes {
        Routes(Arc::new(self.router))
    }
}

async fn dispatch(
    router: &matchit::Router<Handler>,
    req: Request<RequestBody>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match router.at(&path) {
        Ok(m) => {
            let params = m
                .params
                .iter()
                .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                .collect();
            let handler = m.value.clone();
            handler(req, params, Some(peer)).await
        }
        Err(_) => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
