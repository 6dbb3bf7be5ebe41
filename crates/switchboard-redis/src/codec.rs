//! The bytes channels_redis stores: msgpack maps, a random prefix, optional Fernet encryption.
//!
//! A message is serialized as a msgpack map with string keys (`msgpack.packb(dict)`): strings as
//! `str`, byte strings as `bin`, integers in their most compact form, floats as float 64, `None`
//! as `nil`. The core layer routes process-local messages with an extra key,
//! `__asgi_channel__`: the full channel name (a string) for `send`, the list of member channels
//! sharing one process queue for `group_send`. Between two switchboard processes a
//! `group_send` names the group instead, with how many of the receiver's channels were members
//! and their digest: a map `{"group": <name>, "members": <count>, "digest": <u64>}` (see
//! `layer/fanout.rs`). No channels_redis process reads such a queue.
//!
//! With `symmetric_encryption_keys` the msgpack bytes are replaced by a Fernet token made with
//! the first key (`base64url(sha256(key))` as the Fernet key, as channels_redis derives it);
//! every key is tried when decrypting, so keys can be rotated.
//!
//! The core layer then puts 12 random bytes in front, which keeps identical messages distinct
//! members of the sorted set. The pub/sub layer publishes the bytes as they are.

use base64::Engine as _;
use rand::Rng as _;
use sha2::Digest as _;
use switchboard_core::message::RESERVED_KEY;
use switchboard_core::{Map, Message, Position, Value};

/// Why stored bytes could not be turned into a message (or a message into bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CodecError(pub(crate) String);

/// The key under which a message of a group with history carries its position
/// (`"EPOCH:OFFSET"`) over Redis. A Django process receives it as one more key of the event.
pub(crate) const POSITION_KEY: &str = "__switchboard_position__";

/// Where a decoded core-layer message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// No `__asgi_channel__`: the message belongs to the channel it was read from.
    Unrouted,
    /// `send` to one process-local channel.
    One(String),
    /// `group_send` to these channels of one process.
    Many(Vec<String>),
    /// `group_send` to the members of `group` of this (switchboard) process, which were
    /// `members` channels with this digest of their names when it was sent
    /// ([`switchboard_core::engine::member_digest`]).
    Group {
        /// The group.
        group: String,
        /// How many of the receiving process's channels were members.
        members: u64,
        /// The XOR of their names' digests.
        digest: u64,
    },
}

/// The keys of a [`Route::Group`] map.
const GROUP: &str = "group";
const MEMBERS: &str = "members";
const DIGEST: &str = "digest";

/// A message's fields, msgpack-encoded once and reused for every process queue of a group send.
#[derive(Debug)]
pub(crate) struct EncodedFields {
    count: usize,
    bytes: Vec<u8>,
}

impl EncodedFields {
    /// How many fields.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The fields, msgpack key then value each, without a map header.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Serializer settings: random prefix, encryption, and the token lifetime checked on decryption.
pub(crate) struct Codec {
    random_prefix: usize,
    fernets: Vec<fernet::Fernet>,
    ttl: Option<u64>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("random_prefix", &self.random_prefix)
            .field("encrypted", &!self.fernets.is_empty())
            .finish()
    }
}

/// The Fernet key channels_redis derives from a configured key: base64url of its SHA-256.
pub(crate) fn derive_fernet_key(key: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(sha2::Sha256::digest(key))
}

impl Codec {
    /// The codec of `RedisChannelLayer`: 12 random bytes, tokens valid for `expiry + 10` s.
    pub(crate) fn core(keys: &[Vec<u8>], expiry_secs: u64) -> Codec {
        Codec::new(keys, 12, Some(expiry_secs + 10))
    }

    /// The codec of `RedisPubSubChannelLayer`: no prefix, tokens without a lifetime.
    pub(crate) fn pubsub(keys: &[Vec<u8>]) -> Codec {
        Codec::new(keys, 0, None)
    }

    fn new(keys: &[Vec<u8>], random_prefix: usize, ttl: Option<u64>) -> Codec {
        let fernets = keys
            .iter()
            // A 32-byte digest always makes a valid Fernet key; nothing is dropped here.
            .filter_map(|k| fernet::Fernet::new(&derive_fernet_key(k)))
            .collect();
        Codec {
            random_prefix,
            fernets,
            ttl,
        }
    }

    /// Encodes a message's fields once.
    pub(crate) fn fields(message: &Message) -> Result<EncodedFields, CodecError> {
        let mut bytes = Vec::with_capacity(64);
        for (k, v) in message.fields() {
            rmp::encode::write_str(&mut bytes, k).map_err(write_error)?;
            write_value(&mut bytes, v)?;
        }
        Ok(EncodedFields {
            count: message.fields().len(),
            bytes,
        })
    }

    /// The stored bytes for a message with the given routing.
    pub(crate) fn encode(
        &self,
        fields: &EncodedFields,
        route: &RouteRef<'_>,
    ) -> Result<Vec<u8>, CodecError> {
        let route_len = match route {
            RouteRef::Unrouted => 0,
            RouteRef::One(c) => c.len() + 24,
            RouteRef::Many(cs) => cs.iter().map(|c| c.len() + 2).sum::<usize>() + 24,
            RouteRef::Group { group, .. } => group.len() + 64,
        };
        let mut packed =
            Vec::with_capacity(self.random_prefix + 6 + fields.bytes.len() + route_len);
        if self.fernets.is_empty() {
            packed.resize(self.random_prefix, 0);
            rand::rng().fill_bytes(&mut packed);
        }
        let count = fields.count + usize::from(!matches!(route, RouteRef::Unrouted));
        let count =
            u32::try_from(count).map_err(|_| CodecError("message has too many fields".into()))?;
        rmp::encode::write_map_len(&mut packed, count).map_err(write_error)?;
        packed.extend_from_slice(&fields.bytes);
        match route {
            RouteRef::Unrouted => {}
            RouteRef::One(channel) => {
                rmp::encode::write_str(&mut packed, RESERVED_KEY).map_err(write_error)?;
                rmp::encode::write_str(&mut packed, channel).map_err(write_error)?;
            }
            RouteRef::Many(channels) => {
                rmp::encode::write_str(&mut packed, RESERVED_KEY).map_err(write_error)?;
                let n = u32::try_from(channels.len())
                    .map_err(|_| CodecError("too many channels in one group send".into()))?;
                rmp::encode::write_array_len(&mut packed, n).map_err(write_error)?;
                for c in *channels {
                    rmp::encode::write_str(&mut packed, c).map_err(write_error)?;
                }
            }
            RouteRef::Group {
                group,
                members,
                digest,
            } => {
                rmp::encode::write_str(&mut packed, RESERVED_KEY).map_err(write_error)?;
                write_group_route(&mut packed, group, *members, *digest)?;
            }
        }
        let Some(first) = self.fernets.first() else {
            return Ok(packed);
        };
        let token = first.encrypt(&packed);
        let mut out = vec![0; self.random_prefix];
        rand::rng().fill_bytes(&mut out);
        out.extend_from_slice(token.as_bytes());
        Ok(out)
    }

    /// The value of `__asgi_channel__` that names `group` (see [`RouteRef::Group`]), for the
    /// history script to put in a copy it writes.
    pub(crate) fn group_route(
        group: &str,
        members: u64,
        digest: u64,
    ) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(group.len() + 40);
        write_group_route(&mut out, group, members, digest)?;
        Ok(out)
    }

    /// The start of a message of a group that keeps history: the map header counts one more
    /// entry, and the fields end with the key [`POSITION_KEY`]; the history script appends
    /// the position's text (a msgpack string) once it has numbered the message. Unencrypted
    /// codecs only (the script cannot append inside a Fernet token).
    pub(crate) fn encode_positioned_head(
        &self,
        fields: &EncodedFields,
    ) -> Result<Vec<u8>, CodecError> {
        if !self.fernets.is_empty() {
            return Err(CodecError(
                "group history cannot number encrypted messages".into(),
            ));
        }
        let mut packed = vec![0; self.random_prefix];
        rand::rng().fill_bytes(&mut packed);
        let count = u32::try_from(fields.count + 1)
            .map_err(|_| CodecError("message has too many fields".into()))?;
        rmp::encode::write_map_len(&mut packed, count).map_err(write_error)?;
        packed.extend_from_slice(&fields.bytes);
        rmp::encode::write_str(&mut packed, POSITION_KEY).map_err(write_error)?;
        Ok(packed)
    }

    /// Fresh random bytes to start a stored message with (none on the pub/sub wire).
    pub(crate) fn random_prefix(&self) -> Vec<u8> {
        let mut bytes = vec![0; self.random_prefix];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    }

    /// Decodes stored bytes into a message and its routing. Never panics on bad input.
    pub(crate) fn decode(&self, stored: &[u8]) -> Result<(Message, Route), CodecError> {
        let body = stored.get(self.random_prefix..).ok_or_else(|| {
            CodecError(format!(
                "{} bytes are shorter than the {}-byte random prefix",
                stored.len(),
                self.random_prefix
            ))
        })?;
        let decrypted;
        let packed = if self.fernets.is_empty() {
            body
        } else {
            decrypted = self.decrypt(body)?;
            &decrypted[..]
        };
        let value: Value = rmp_serde::from_slice(packed)
            .map_err(|e| CodecError(format!("not a msgpack message: {e}")))?;
        let Value::Map(mut map) = value else {
            return Err(CodecError("a message must be a msgpack map".into()));
        };
        let route = match map.shift_remove(RESERVED_KEY) {
            None => Route::Unrouted,
            Some(Value::String(c)) => Route::One(c),
            Some(Value::List(cs)) => Route::Many(
                cs.into_iter()
                    .map(|c| match c {
                        Value::String(s) => Ok(s),
                        _ => Err(CodecError(
                            "__asgi_channel__ lists channel names as strings".into(),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(Value::Map(m)) => {
                let number = |key: &str| match m.get(key) {
                    Some(Value::UInt(n)) => Ok(*n),
                    Some(Value::Int(n)) => u64::try_from(*n)
                        .map_err(|_| CodecError(format!("__asgi_channel__.{key} is negative"))),
                    _ => Err(CodecError(format!(
                        "__asgi_channel__.{key} must be an unsigned integer"
                    ))),
                };
                match m.get(GROUP) {
                    Some(Value::String(group)) => Route::Group {
                        group: group.clone(),
                        members: number(MEMBERS)?,
                        digest: number(DIGEST)?,
                    },
                    _ => {
                        return Err(CodecError(
                            "__asgi_channel__.group must be a group name".into(),
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(CodecError(
                    "__asgi_channel__ must be a channel name, a list of them or a group".into(),
                ));
            }
        };
        // A group with history numbers its messages (`encode_positioned_head`); a value that
        // is not a position stays a field.
        let position = match map.get(POSITION_KEY) {
            Some(Value::String(p)) => p.parse::<Position>().ok(),
            _ => None,
        };
        if position.is_some() {
            map.shift_remove(POSITION_KEY);
        }
        let message = Message::from_map(map).map_err(|e| CodecError(e.to_string()))?;
        let message = match position {
            Some(p) => message.with_position(p),
            None => message,
        };
        Ok((message, route))
    }

    fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CodecError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| CodecError("an encrypted message must be a Fernet token".into()))?;
        for f in &self.fernets {
            let plain = match self.ttl {
                Some(ttl) => f.decrypt_with_ttl(token, ttl),
                None => f.decrypt(token),
            };
            if let Ok(p) = plain {
                return Ok(p);
            }
        }
        Err(CodecError(
            "could not decrypt the message with any of the symmetric_encryption_keys (wrong key, or older than expiry + 10 s)".into(),
        ))
    }
}

/// Routing to add when encoding (borrowed names).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RouteRef<'a> {
    /// No routing key.
    Unrouted,
    /// `__asgi_channel__: "<channel>"`.
    One(&'a str),
    /// `__asgi_channel__: ["<channel>", ...]`.
    Many(&'a [&'a str]),
    /// `__asgi_channel__: {"group": "<group>", "members": n, "digest": d}`.
    Group {
        /// The group.
        group: &'a str,
        /// How many of the receiving process's channels are members.
        members: u64,
        /// The XOR of their names' digests.
        digest: u64,
    },
}

/// `{"group": group, "members": members, "digest": digest}`.
fn write_group_route(
    out: &mut Vec<u8>,
    group: &str,
    members: u64,
    digest: u64,
) -> Result<(), CodecError> {
    rmp::encode::write_map_len(out, 3).map_err(write_error)?;
    rmp::encode::write_str(out, GROUP).map_err(write_error)?;
    rmp::encode::write_str(out, group).map_err(write_error)?;
    rmp::encode::write_str(out, MEMBERS).map_err(write_error)?;
    rmp::encode::write_uint(out, members).map_err(write_error)?;
    rmp::encode::write_str(out, DIGEST).map_err(write_error)?;
    rmp::encode::write_uint(out, digest).map_err(write_error)?;
    Ok(())
}

fn write_error(e: impl std::fmt::Display) -> CodecError {
    CodecError(format!("msgpack encoding failed: {e}"))
}

fn len32(n: usize) -> Result<u32, CodecError> {
    u32::try_from(n).map_err(|_| CodecError(format!("{n} elements are too many for msgpack")))
}

fn write_value(buf: &mut Vec<u8>, v: &Value) -> Result<(), CodecError> {
    match v {
        Value::Null => rmp::encode::write_nil(buf).map_err(write_error)?,
        Value::Bool(b) => rmp::encode::write_bool(buf, *b).map_err(write_error)?,
        Value::Int(i) => {
            rmp::encode::write_sint(buf, *i).map_err(write_error)?;
        }
        Value::UInt(u) => {
            rmp::encode::write_uint(buf, *u).map_err(write_error)?;
        }
        Value::Float(f) => rmp::encode::write_f64(buf, *f).map_err(write_error)?,
        Value::String(s) => rmp::encode::write_str(buf, s).map_err(write_error)?,
        Value::Bytes(b) => rmp::encode::write_bin(buf, b).map_err(write_error)?,
        Value::List(l) => {
            rmp::encode::write_array_len(buf, len32(l.len())?).map_err(write_error)?;
            for item in l {
                write_value(buf, item)?;
            }
        }
        Value::Map(m) => write_map(buf, m)?,
    }
    Ok(())
}

fn write_map(buf: &mut Vec<u8>, m: &Map) -> Result<(), CodecError> {
    rmp::encode::write_map_len(buf, len32(m.len())?).map_err(write_error)?;
    for (k, v) in m {
        rmp::encode::write_str(buf, k).map_err(write_error)?;
        write_value(buf, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn all_types() -> Result<Message, Box<dyn std::error::Error>> {
        let mut inner = Map::default();
        inner.insert("k".into(), Value::String("v".into()));
        let mut m = Map::default();
        m.insert("type".into(), "all".into());
        m.insert("i".into(), Value::Int(-42));
        m.insert("u".into(), Value::UInt(u64::MAX));
        m.insert("f".into(), Value::Float(1.5));
        m.insert("b".into(), Value::Bytes(vec![0, 1]));
        m.insert("n".into(), Value::Null);
        m.insert("t".into(), Value::Bool(true));
        m.insert("l".into(), Value::List(vec![Value::Int(1), "two".into()]));
        m.insert("m".into(), Value::Map(inner));
        Ok(Message::from_map(m)?)
    }

    /// `msgpack.packb(...)` of the same dict in Python 3 with msgpack 1.x.
    const PYTHON_PACKED: &str = "89a474797065a3616c6ca169d0d6a175cfffffffffffffffffa166cb3ff8000000000000a162c4020001a16ec0a174c3a16c9201a374776fa16d81a16ba176";

    #[test]
    fn encodes_as_python_msgpack_does() -> TestResult {
        let codec = Codec::pubsub(&[]);
        let bytes = codec.encode(&Codec::fields(&all_types()?)?, &RouteRef::Unrouted)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PYTHON_PACKED);
        Ok(())
    }

    #[test]
    fn round_trips_with_prefix_and_routes() -> TestResult {
        let codec = Codec::core(&[], 60);
        let fields = Codec::fields(&all_types()?)?;
        let one = codec.encode(&fields, &RouteRef::One("specific.a!b"))?;
        let again = codec.encode(&fields, &RouteRef::One("specific.a!b"))?;
        assert_ne!(
            one[..12],
            again[..12],
            "the random prefix keeps members distinct"
        );
        assert_eq!(
            codec.decode(&one)?,
            (all_types()?, Route::One("specific.a!b".into()))
        );
        let many = codec.encode(&fields, &RouteRef::Many(&["specific.a!b", "specific.a!c"]))?;
        assert_eq!(
            codec.decode(&many)?.1,
            Route::Many(vec!["specific.a!b".into(), "specific.a!c".into()])
        );
        let group = RouteRef::Group {
            group: "room",
            members: 1000,
            digest: u64::MAX,
        };
        let group = codec.encode(&fields, &group)?;
        assert_eq!(
            codec.decode(&group)?,
            (
                all_types()?,
                Route::Group {
                    group: "room".into(),
                    members: 1000,
                    digest: u64::MAX
                }
            )
        );
        Ok(())
    }

    #[test]
    fn a_bad_group_route_is_an_error() -> TestResult {
        let codec = Codec::core(&[], 60);
        for (route, why) in [
            (serde_json::json!({"members": 1, "digest": 2}), "group"),
            (
                serde_json::json!({"group": 7, "members": 1, "digest": 2}),
                "group",
            ),
            (serde_json::json!({"group": "g", "digest": 2}), "members"),
            (
                serde_json::json!({"group": "g", "members": -1, "digest": 2}),
                "members",
            ),
            (
                serde_json::json!({"group": "g", "members": 1, "digest": "x"}),
                "digest",
            ),
        ] {
            let mut bytes = vec![0; 12];
            let body = serde_json::json!({"type": "m", "__asgi_channel__": route});
            rmp_serde::encode::write_named(&mut bytes, &body)?;
            let err = codec.decode(&bytes).err().ok_or("decoded")?;
            assert!(err.0.contains(why), "{route}: {err}");
        }
        Ok(())
    }

    #[test]
    fn encryption_round_trips_and_rotates_keys() -> TestResult {
        let old = Codec::core(&[b"old-key".to_vec()], 60);
        let rotated = Codec::core(&[b"new-key".to_vec(), b"old-key".to_vec()], 60);
        let fields = Codec::fields(&all_types()?)?;
        let sealed = old.encode(&fields, &RouteRef::Unrouted)?;
        assert!(
            !sealed.windows(3).any(|w| w == b"all"),
            "the payload must be encrypted"
        );
        assert_eq!(rotated.decode(&sealed)?.0, all_types()?);
        let plain = Codec::core(&[], 60);
        assert!(plain.decode(&sealed).is_err());
        let other = Codec::core(&[b"other".to_vec()], 60);
        assert!(other.decode(&sealed).is_err());
        Ok(())
    }

    #[test]
    fn key_derivation_matches_channels_redis() {
        // base64.urlsafe_b64encode(hashlib.sha256(b"secret-key").digest())
        assert_eq!(
            derive_fernet_key(b"secret-key"),
            "hdvhXXXvkwjHrg8zx6MkzG9L9Rmi7S8wJ70zwUCk-ao="
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codec = Codec::core(&[], 60);
        for bad in [
            &b""[..],
            &b"short"[..],
            &[0u8; 12][..],
            &[1u8; 40][..],
            b"123456789012\x93\x01\x02\x03",
            b"123456789012\x81\xa4type\x01",
            b"123456789012\x82\xa4type\xa1x\xb0__asgi_channel__\x01",
            b"123456789012\xdf\xff\xff\xff\xff",
        ] {
            assert!(codec.decode(bad).is_err(), "{bad:?}");
        }
    }
}
