//! The axum integration: a consumer endpoint as an axum route.
//!
//! ```
//! use axum::Router;
//! use switchboard_core::{Consumer, Context, Frame, InMemoryLayer, Message, Result, Scope, async_trait};
//!
//! struct Echo;
//! #[async_trait]
//! impl Consumer for Echo {
//!     type Incoming = Frame;
//!     type Event = Message;
//!     async fn receive(&mut self, cx: &mut Context, frame: Frame) -> Result<()> {
//!         cx.send_text(frame.text()?.to_owned()).await
//!     }
//! }
//!
//! let layer = InMemoryLayer::default();
//! let app: Router = Router::new()
//!     .route("/ws/echo/{room}/", switchboard_core::axum::consumer(layer, |_: &Scope| Echo));
//! ```
//!
//! Serve the router with `into_make_service_with_connect_info::<SocketAddr>()` to give
//! consumers the peer address in [`Scope::peer_addr`](crate::Scope::peer_addr).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawPathParams, Request};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};

use crate::consumer::Consumer;
use crate::layer::Layer;
use crate::scope::Scope;
use crate::serve::Endpoint;

/// A route serving `factory`'s consumers with the default [`Endpoint`] settings (same-host
/// origins only). For other settings build an [`Endpoint`] and call [`Endpoint::into_route`].
pub fn consumer<F, C, S>(layer: impl Into<Layer>, factory: F) -> MethodRouter<S>
where
    F: Fn(&Scope) -> C + Send + Sync + 'static,
    C: Consumer,
    S: Clone + Send + Sync + 'static,
{
    Endpoint::new(layer, factory).into_route()
}

impl<F, C> Endpoint<F>
where
    F: Fn(&Scope) -> C + Send + Sync + 'static,
    C: Consumer,
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
