//! The axum integration: a consumer endpoint as an axum route.
//!
//! ```
//! use axum::Router;
//! use switchboard::{Connection, Consumer, Frame, InMemoryLayer, Message, Result, Scope};
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
//! let layer = InMemoryLayer::default();
//! let app: Router = Router::new()
//!     .route("/ws/echo/{room}/", switchboard::axum::consumer(layer, |_: &Scope| Echo));
//! ```
//!
//! Serve the router with [`switchboard::serve`](crate::serve()) (it gives consumers the peer
//! address in [`Scope::peer_addr`](crate::Scope::peer_addr), and closes connections that never
//! send a whole request: see [`HttpLimits`](crate::HttpLimits)), or with `axum::serve` and
//! `into_make_service_with_connect_info::<SocketAddr>()`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawPathParams, Request};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};

use switchboard_core::Layer;

use crate::consumer::IntoConsumer;
use crate::endpoint::{Authenticate, Endpoint};
use crate::scope::Scope;

/// A route serving `factory`'s consumers with the default [`Endpoint`] settings (same-host
/// origins only). For other settings build an [`Endpoint`] and call [`Endpoint::into_route`].
pub fn consumer<F, R, S>(layer: impl Into<Layer>, factory: F) -> MethodRouter<S>
where
    F: Fn(&Scope) -> R + Send + Sync + 'static,
    R: IntoConsumer + 'static,
    S: Clone + Send + Sync + 'static,
{
    Endpoint::new(layer, factory).into_route()
}

impl<F, A, R> Endpoint<F, A>
where
    F: Fn(&Scope) -> R + Send + Sync + 'static,
    R: IntoConsumer + 'static,
    A: Authenticate,
{
    /// This endpoint as an axum `GET` route.
    pub fn into_route<S>(self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let endpoint = Arc::new(self);
        get(move |params: RawPathParams, req: Request| {
            let endpoint = endpoint.clone();
            async move {
                let params = params
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let peer = req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0);
                endpoint.upgrade(req, params, peer).await.into_response()
            }
        })
    }
}
