//! Consumers and WebSocket serving for [switchboard](https://docs.rs/switchboard): the server
//! half of Django Channels for Rust.
//!
//! - [`Consumer`]: one per connection, with native `async fn` handlers for its client's frames
//!   ([`FromFrame`]) and its layer events ([`FromMessage`](switchboard_core::FromMessage));
//! - [`Connection`]: a consumer's handle on its client and on the layer, built on a
//!   [`Subscription`](switchboard_core::Subscription);
//! - the per-connection runtime: handlers one at a time, frames batched into few writes, a
//!   bounded outbound queue, keep-alive, cleanup whatever the ending ([`ConnectionConfig`]);
//! - [`Endpoint`]: a consumer factory with its origin check ([`Origins`]), authentication hook
//!   ([`Authenticate`]) and limits, served by axum ([`axum`], feature `axum`) or by the
//!   standalone server ([`standalone`], feature `standalone`);
//! - [`sse::EventStream`] and [`longpoll::LongPoll`] (feature `axum`): a group's messages as
//!   server-sent events or long-poll answers, resumable from its history ([`feed::Since`]
//!   reads `Last-Event-ID` / `?since=`);
//! - [`Shutdown`]: graceful shutdown, closing connections with 1001 in batches;
//! - [`metrics`]: what the server reports through the `metrics` facade;
//! - [`Worker`]: background workers on named channels, as Channels' `runworker`;
//! - [`testing::Communicator`] (feature `testing`): a consumer driven with no network.
//!
//! It depends on the channel layer *trait* only (`switchboard-core`): any layer serves it.
//! Applications use the `switchboard` crate, which re-exports this one.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
pub mod axum;
pub mod config;
pub mod connection;
pub mod consumer;
#[cfg(any(feature = "axum", feature = "standalone"))]
mod direct;
pub mod endpoint;
pub mod error;
#[cfg(feature = "axum")]
pub mod feed;
#[cfg(feature = "axum")]
pub mod longpoll;
pub mod metrics;
pub mod origin;
mod runtime;
pub mod scope;
pub mod serve;
pub mod shutdown;
#[cfg(feature = "axum")]
pub mod sse;
#[cfg(feature = "standalone")]
pub mod standalone;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use config::{BadInput, ConnectionConfig};
pub use connection::{Connection, ConnectionHandle};
pub use consumer::{CloseCode, Consumer, Frame, FromFrame, IntoConsumer};
pub use endpoint::{Authenticate, Endpoint, Refusal};
pub use error::{Error, Result};
pub use origin::Origins;
pub use scope::Scope;
pub use serve::HttpLimits;
#[cfg(feature = "axum")]
pub use serve::serve;
pub use shutdown::{DrainConfig, DrainReport, Shutdown};
pub use worker::{StopHandle, Worker, WorkerContext, WorkerStats};

/// The `http` crate, whose types (`StatusCode`, `HeaderMap`) the API uses.
#[doc(no_inline)]
pub use http;
