//! The core of [switchboard](https://docs.rs/switchboard): Django Channels' model for Rust.
//!
//! This crate holds the concepts — messages, channel and group names, the [`ChannelLayer`]
//! trait and its in-memory implementation, [`Consumer`]s and their runtime, WebSocket serving
//! and testing helpers. Applications depend on the `switchboard` facade crate, which re-exports
//! all of this; layer backends (`switchboard-redis`) depend on this crate only.
//!
//! See the `switchboard` crate for the guide.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod consumer;
pub mod error;
pub mod layer;
pub mod message;
pub mod name;
pub mod runtime;
pub mod scope;
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod value;

pub use async_trait::async_trait;
pub use consumer::{CloseCode, Consumer, Context, Event, Frame, Incoming};
pub use error::{Error, Result};
pub use layer::memory::InMemoryLayer;
pub use layer::{ChannelLayer, ChannelReceiver, Layer, LayerConfig, LayerStats};
pub use message::{IntoMessage, Message, MessageBuilder, MessageError};
pub use name::{ChannelName, GroupName, IntoChannelName, IntoGroupName, NameError};
pub use runtime::{BadInput, ConnectionConfig};
pub use scope::Scope;
#[cfg(feature = "axum")]
pub use serve::axum;
#[cfg(feature = "standalone")]
pub use serve::standalone;
pub use serve::{Authenticate, Endpoint, Origins, Refusal};
pub use tokio_tungstenite::tungstenite::Utf8Bytes;
pub use value::{DecodeError, Map, Value};
