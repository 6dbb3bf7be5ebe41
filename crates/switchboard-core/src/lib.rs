//! The model of [switchboard](https://docs.rs/switchboard) — Django Channels for Rust — and
//! what every channel layer shares.
//!
//! - [`Message`]s (maps with a string `"type"`, carrying the ASGI [`Value`] types), and the
//!   [`Text`] their JSON is rendered into once;
//! - [`ChannelName`]s and [`GroupName`]s, validated once at the edge as Channels validates them;
//! - the [`ChannelLayer`] trait, the [`Layer`] handle, [`LayerConfig`] and [`LayerStats`], and
//!   [`LayerError`];
//! - the local delivery [`engine`] every layer delivers through, and [`InMemoryLayer`], which is
//!   that engine alone;
//! - [`Subscription`]: a channel and the groups joined through it, refreshed while it lives and
//!   left when it goes, joined "since" a [`Position`] to get what it missed from a group's
//!   [`history`];
//! - the layer conformance suite (feature `testing`), which holds every layer to the semantics
//!   in [`layer`].
//!
//! No HTTP, no WebSocket: a layer backend (`switchboard-redis`) depends on this crate alone.
//! Applications use the `switchboard` crate, which adds consumers and serving.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod engine;
pub mod error;
pub mod history;
pub mod layer;
pub mod message;
pub mod metrics;
pub mod name;
pub mod presence;
pub mod subscription;
pub mod text;
pub mod value;

pub use engine::{Missed, Receiver};
pub use error::{LayerError, Result};
pub use history::{HistoryConfig, Position, Recovery, Resumed};
pub use layer::memory::InMemoryLayer;
pub use layer::{ChannelLayer, Layer, LayerConfig, LayerStats};
pub use message::{Decoded, FromMessage, IntoMessage, Message, MessageBuilder, MessageError};
pub use name::{ChannelName, GroupName, IntoChannelName, IntoGroupName, NameError};
pub use presence::{PresenceEntry, PresenceInfo};
pub use subscription::Subscription;
pub use text::Text;
pub use value::{DecodeError, Map, Value};

/// Re-exported for layer backends: [`ChannelLayer`] is an `#[async_trait]` trait (it is used
/// as `dyn ChannelLayer`).
#[doc(no_inline)]
pub use async_trait::async_trait;
