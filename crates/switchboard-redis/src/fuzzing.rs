//! Entry points for the fuzz targets (`fuzz/` in the repository), behind the `fuzzing` feature:
//! the channels_redis codec, which is otherwise private. Not a stable API.

use switchboard_core::Message;

use crate::codec::{self, RouteRef};

/// Where a decoded message goes: `__asgi_channel__` as the codec read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No `__asgi_channel__`.
    Unrouted,
    /// One process-local channel.
    One(String),
    /// The channels of one process that a group send reaches.
    Many(Vec<String>),
    /// A group send between switchboard processes: the group, and how many of the receiver's
    /// channels were members, with their digest.
    Group {
        /// The group.
        group: String,
        /// How many members.
        members: u64,
        /// Their digest.
        digest: u64,
    },
}

/// The codec of a Redis layer.
#[derive(Debug)]
pub struct Codec(codec::Codec);

impl Codec {
    /// The core layer's codec: a 12-byte random prefix, Fernet tokens valid for `expiry + 10` s.
    pub fn core(keys: &[Vec<u8>], expiry_secs: u64) -> Codec {
        Codec(codec::Codec::core(keys, expiry_secs))
    }

    /// The pub/sub layer's codec: no prefix, tokens without a lifetime.
    pub fn pubsub(keys: &[Vec<u8>]) -> Codec {
        Codec(codec::Codec::pubsub(keys))
    }

    /// Stored bytes into a message and its routing.
    pub fn decode(&self, stored: &[u8]) -> Result<(Message, Route), String> {
        let (message, route) = self.0.decode(stored).map_err(|e| e.0)?;
        let route = match route {
            codec::Route::Unrouted => Route::Unrouted,
            codec::Route::One(c) => Route::One(c),
            codec::Route::Many(cs) => Route::Many(cs),
            codec::Route::Group {
                group,
                members,
                digest,
            } => Route::Group {
                group,
                members,
                digest,
            },
        };
        Ok((message, route))
    }

    /// A message with its routing into the bytes the layer stores.
    pub fn encode(&self, message: &Message, route: &Route) -> Result<Vec<u8>, String> {
        let fields = codec::Codec::fields(message).map_err(|e| e.0)?;
        let many: Vec<&str>;
        let route = match route {
            Route::Unrouted => RouteRef::Unrouted,
            Route::One(c) => RouteRef::One(c),
            Route::Many(cs) => {
                many = cs.iter().map(String::as_str).collect();
                RouteRef::Many(&many)
            }
            Route::Group {
                group,
                members,
                digest,
            } => RouteRef::Group {
                group,
                members: *members,
                digest: *digest,
            },
        };
        self.0.encode(&fields, &route).map_err(|e| e.0)
    }
}
