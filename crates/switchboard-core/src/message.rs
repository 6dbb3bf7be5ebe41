//! Messages: maps with a string `"type"`.
//!
//! A [`Message`] is what layers carry and consumers react to. Its `"type"` (`"chat.message"`)
//! picks the consumer's handler. A message is checked once, when it is built: it must be a map,
//! have a non-empty string `"type"`, and must not use the key `__asgi_channel__`, which the Redis
//! layers reserve for routing (as Channels does).
//!
//! A message is immutable and cheap to clone: clones share one allocation. A `group_send` to a
//! thousand members hands each member the same allocation, and the JSON text of the message is
//! rendered at most once, however many sockets it is written to ([`Message::to_json_text`]).

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::history::Position;
use crate::text::Text;
use crate::value::{DecodeError, Map, Value};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

/// The key the Redis layers use to route process-local messages; user messages may not carry it.
pub const RESERVED_KEY: &str = "__asgi_channel__";

/// Why a value could not become a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The value was not a map / JSON object.
    #[error("a message must be a map (JSON object), got {0}")]
    NotAMap(&'static str),
    /// The map had no `"type"` key.
    #[error("a message must have a \"type\" key naming its type, e.g. \"chat.message\"")]
    MissingType,
    /// `"type"` was there but not a non-empty string.
    #[error("a message's \"type\" must be a non-empty string, got {0}")]
    BadType(String),
    /// The message used the reserved key `__asgi_channel__`.
    #[error("the key \"__asgi_channel__\" is reserved for the channel layer's routing")]
    ReservedKey,
    /// Serializing a Rust value into a message failed.
    #[error("could not serialize the message: {0}")]
    Serialize(String),
    /// The bytes were not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
}

struct Inner {
    fields: Map,
    /// Where `"type"` is in `fields` (checked at construction), for a lookup without hashing.
    type_index: usize,
    /// The JSON text of `fields`, rendered on first use and shared by every clone.
    json: OnceLock<Text>,
    /// The first typed value a [`Decoded<T>`] decoded, shared by every clone.
    decoded: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Where the layer placed it in its group's history, if the group keeps one.
    position: Option<Position>,
}

/// A validated message: a map of [`Value`]s with a non-empty string `"type"`.
///
/// ```
/// use switchboard_core::Message;
/// let m = Message::from_json(serde_json::json!({"type": "chat.message", "text": "hi"}))?;
/// assert_eq!(m.message_type(), "chat.message");
/// assert_eq!(m.get("text").and_then(|v| v.as_str()), Some("hi"));
/// # Ok::<(), switchboard_core::MessageError>(())
/// ```
#[derive(Clone)]
pub struct Message(Arc<Inner>);

impl Message {
    /// Builds a message from a map, checking its `"type"` and reserved keys.
    pub fn from_map(fields: Map) -> Result<Message, MessageError> {
        let type_index = match fields.get_full("type") {
            None => return Err(MessageError::MissingType),
            Some((i, _, Value::String(s))) if !s.is_empty() => i,
            Some((_, _, other)) => return Err(MessageError::BadType(describe(other).to_owned())),
        };
        if fields.contains_key(RESERVED_KEY) {
            return Err(MessageError::ReservedKey);
        }
        Ok(Message(Arc::new(Inner {
            fields,
            type_index,
            json: OnceLock::new(),
            decoded: OnceLock::new(),
            position: None,
        })))
    }

    /// Where the layer placed this message in its group's history: set on a message sent to a
    /// group that keeps history
    /// ([`LayerConfig::group_history`](crate::LayerConfig::group_history)), `None` otherwise. Keep the last one a client saw to resume from it
    /// ([`Subscription::group_add_since`](crate::Subscription::group_add_since)). It is not one
    /// of the message's fields.
    pub fn position(&self) -> Option<&Position> {
        self.0.position.as_ref()
    }

    /// This message with `position` (what a layer does when it keeps it in history). Copies
    /// the fields only if the message is shared.
    pub fn with_position(mut self, position: Position) -> Message {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.position = Some(position);
            inner.json = OnceLock::new(); // its JSON text carries the position
            return self;
        }
        Message(Arc::new(Inner {
            fields: self.0.fields.clone(),
            type_index: self.0.type_index,
            json: OnceLock::new(),
            decoded: OnceLock::new(),
            position: Some(position),
        }))
    }

    /// Builds a message from a [`Value`], which must be a map.
    pub fn from_value(value: Value) -> Result<Message, MessageError> {
        match value {
            Value::Map(m) => Message::from_map(m),
            other => Err(MessageError::NotAMap(describe(&other))),
        }
    }

    /// Builds a message from a JSON value, which must be an object with a string `"type"`.
    pub fn from_json(value: serde_json::Value) -> Result<Message, MessageError> {
        Message::from_value(Value::from(value))
    }

    /// Parses JSON text into a message.
    pub fn from_json_str(text: &str) -> Result<Message, MessageError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| MessageError::Json(e.to_string()))?;
        Message::from_value(value)
    }

    /// Serializes any `Serialize` type (a struct or a `#[serde(tag = "type")]` enum) into a message.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Message, MessageError> {
        let json =
            serde_json::to_value(value).map_err(|e| MessageError::Serialize(e.to_string()))?;
        Message::from_json(json)
    }

    /// Starts a message of the given type; add fields with [`MessageBuilder::field`].
    pub fn builder(message_type: impl Into<String>) -> MessageBuilder {
        let mut fields = Map::default();
        fields.insert("type".into(), Value::String(message_type.into()));
        MessageBuilder { fields }
    }

    /// The message's `"type"`.
    pub fn message_type(&self) -> &str {
        // Checked at construction; the fallback is unreachable.
        self.0
            .fields
            .get_index(self.0.type_index)
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// One field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.fields.get(key)
    }

    /// All fields, `"type"` included, in insertion order.
    pub fn fields(&self) -> &Map {
        &self.0.fields
    }

    /// Decodes the message into a type of yours (usually a `#[serde(tag = "type")]` enum).
    /// Decoding borrows from the message; only the fields you keep are copied.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        T::deserialize(crate::value::MapDe(&self.0.fields))
    }

    /// Decodes the message into `T` and keeps the value in the message (shared by every clone),
    /// unless a value of another type is kept already. Returns whether a `T` is kept now.
    fn decode_into_cache<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
    ) -> Result<bool, DecodeError> {
        if let Some(kept) = self.0.decoded.get() {
            return Ok(kept.is::<T>());
        }
        let t: T = self.decode()?;
        // Another thread may have been first, with this type or another.
        let kept = self.0.decoded.get_or_init(|| Box::new(t));
        Ok(kept.is::<T>())
    }

    /// The typed value a [`Decoded<T>`] kept in the message, if it is a `T`.
    fn cached<T: 'static>(&self) -> Option<&T> {
        self.0.decoded.get()?.downcast_ref::<T>()
    }

    /// The message as JSON text. Rendered once and shared by every clone of this message, so a
    /// group message written to a thousand sockets is serialized once.
    ///
    /// A message with a [`position`](Message::position) gets it as one more key, last:
    /// `"position":"EPOCH:OFFSET"` (unless it has a field of that name), so that a client keeps
    /// it to resume from (as `switchboard.js` does).
    ///
    /// ```
    /// use switchboard_core::{Message, Position};
    /// let m = Message::builder("chat").field("n", 1).build()?;
    /// assert_eq!(m.to_json_text(), r#"{"type":"chat","n":1}"#);
    /// let m = m.with_position(Position::new("e1", 7)?);
    /// assert_eq!(m.to_json_text(), r#"{"type":"chat","n":1,"position":"e1:7"}"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_json_text(&self) -> Text {
        self.0
            .json
            .get_or_init(|| {
                // Serializing a Value map into a String cannot fail: keys are strings, no I/O.
                let mut json = serde_json::to_string(&self.0.fields).unwrap_or_default(); // ok: infallible
                if let Some(p) = &self.0.position
                    && !self.0.fields.contains_key("position")
                    && json.ends_with('}')
                {
                    // An epoch is letters, digits, '-' and '_': nothing to escape.
                    json.pop();
                    json.push_str(&format!(",\"position\":\"{p}\"}}"));
                }
                Text::from(json)
            })
            .clone()
    }

    /// The message as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }

    /// Takes the fields out (copying only if the message is shared).
    pub fn into_map(self) -> Map {
        match Arc::try_unwrap(self.0) {
            Ok(inner) => inner.fields,
            Err(shared) => shared.fields.clone(),
        }
    }

    /// Whether two handles share one allocation (a fan-out delivers the same allocation).
    pub fn ptr_eq(a: &Message, b: &Message) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.fields == other.0.fields
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Message").field(&self.0.fields).finish()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.fields.serialize(s)
    }
}

impl TryFrom<serde_json::Value> for Message {
    type Error = MessageError;
    fn try_from(v: serde_json::Value) -> Result<Self, MessageError> {
        Message::from_json(v)
    }
}

impl TryFrom<Map> for Message {
    type Error = MessageError;
    fn try_from(m: Map) -> Result<Self, MessageError> {
        Message::from_map(m)
    }
}

impl TryFrom<Value> for Message {
    type Error = MessageError;
    fn try_from(v: Value) -> Result<Self, MessageError> {
        Message::from_value(v)
    }
}

/// Builds a [`Message`] field by field; see [`Message::builder`].
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    fields: Map,
}

impl MessageBuilder {
    /// Adds (or replaces) a field.
    pub fn field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Checks the fields and builds the message.
    pub fn build(self) -> Result<Message, MessageError> {
        Message::from_map(self.fields)
    }
}

/// Anything that can become a [`Message`]: a `Message`, a JSON value, a [`Map`] or a [`Value`].
pub trait IntoMessage {
    /// Converts, checking the `"type"`.
    fn into_message(self) -> Result<Message, MessageError>;
}

impl IntoMessage for Message {
    fn into_message(self) -> Result<Message, MessageError> {
        Ok(self)
    }
}
impl IntoMessage for &Message {
    fn into_message(self) -> Result<Message, MessageError> {
        Ok(self.clone())
    }
}
impl IntoMessage for serde_json::Value {
    fn into_message(self) -> Result<Message, MessageError> {
        Message::from_json(self)
    }
}
impl IntoMessage for Map {
    fn into_message(self) -> Result<Message, MessageError> {
        Message::from_map(self)
    }
}
impl IntoMessage for Value {
    fn into_message(self) -> Result<Message, MessageError> {
        Message::from_value(self)
    }
}
impl IntoMessage for MessageBuilder {
    fn into_message(self) -> Result<Message, MessageError> {
        self.build()
    }
}
impl IntoMessage for Result<Message, MessageError> {
    fn into_message(self) -> Result<Message, MessageError> {
        self
    }
}

/// What a layer message is turned into before a consumer (or any receiver) handles it.
///
/// - [`Message`] itself: the raw message, untouched.
/// - Any `Deserialize` type, decoded from the message's fields — usually an enum with
///   `#[serde(tag = "type")]`, one variant per message type. Decoding borrows from the message;
///   only what the type keeps is copied.
/// - [`Decoded<T>`]: both — the decoded value to match on, and the message itself to relay
///   without rendering it again. Decoded once per message (the value is kept in the message) and
///   rendered once per message ([`Message::to_json_text`]): a group message that a thousand
///   consumers match on and relay costs one decode and one serialization.
///
/// ```
/// use serde::Deserialize;
/// use switchboard_core::{Decoded, FromMessage, Message};
///
/// #[derive(Deserialize, Debug, PartialEq)]
/// #[serde(tag = "type")]
/// enum RoomEvent {
///     #[serde(rename = "chat.message")]
///     ChatMessage { text: String },
/// }
///
/// let m = Message::from_json(serde_json::json!({"type": "chat.message", "text": "hi"}))?;
/// let event = Decoded::<RoomEvent>::from_message(m.clone())?;
/// assert_eq!(*event, RoomEvent::ChatMessage { text: "hi".into() });
/// assert!(Message::ptr_eq(event.message(), &m));
/// // Another member's copy of the same message shares the decoded value.
/// let again = Decoded::<RoomEvent>::from_message(m)?;
/// assert!(std::ptr::eq(&*event, &*again));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait FromMessage: Sized + Send + 'static {
    /// Converts a message; a message that does not fit is a [`DecodeError`].
    fn from_message(message: Message) -> Result<Self, DecodeError>;
}

impl FromMessage for Message {
    fn from_message(message: Message) -> Result<Self, DecodeError> {
        Ok(message)
    }
}

impl<T: DeserializeOwned + Send + 'static> FromMessage for T {
    fn from_message(message: Message) -> Result<Self, DecodeError> {
        message.decode().map_err(|e| e.of_message(&message))
    }
}

/// A message decoded into `T`, with the message itself: match on the value (it derefs to `T`),
/// relay the message ([`message`](Decoded::message)). See [`FromMessage`].
///
/// The value is decoded once per message and kept in it: every receiver of the same group
/// message reads the same `T`, at no cost of its own (no copy, no reference count). (A message
/// that already keeps a value of another type is decoded for each receiver.)
#[derive(Debug, Clone)]
pub struct Decoded<T> {
    message: Message,
    /// The value, when the message keeps a value of another type.
    own: Option<T>,
}

impl<T: 'static> Decoded<T> {
    /// The decoded value.
    pub fn value(&self) -> &T {
        match &self.own {
            Some(t) => t,
            // ok: `own` is None only when the message was found to keep a `T` (from_message),
            // and what a message keeps never changes.
            None => self.message.cached::<T>().unwrap_or_else(|| unreachable!()),
        }
    }

    /// The message it was decoded from: relay it as it came.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, without the value.
    pub fn into_message(self) -> Message {
        self.message
    }
}

impl<T: 'static> std::ops::Deref for Decoded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> FromMessage for Decoded<T> {
    fn from_message(message: Message) -> Result<Self, DecodeError> {
        let decoded = match message.decode_into_cache::<T>() {
            Ok(true) => Ok(None),
            Ok(false) => message.decode().map(Some),
            Err(e) => Err(e),
        };
        let own = decoded.map_err(|e| e.of_message(&message))?;
        Ok(Decoded { message, own })
    }
}

pub(crate) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Int(_) | Value::UInt(_) => "an integer",
        Value::Float(_) => "a float",
        Value::String(_) => "an empty string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn needs_a_map_with_a_string_type() {
        assert_eq!(
            Message::from_json(json!([1])).err(),
            Some(MessageError::NotAMap("a list"))
        );
        assert_eq!(
            Message::from_json(json!({"a": 1})).err(),
            Some(MessageError::MissingType)
        );
        assert_eq!(
            Message::from_json(json!({"type": 3})).err(),
            Some(MessageError::BadType("an integer".into()))
        );
        assert_eq!(
            Message::from_json(json!({"type": ""})).err(),
            Some(MessageError::BadType("an empty string".into()))
        );
        assert_eq!(
            Message::from_json(json!({"type": "x", "__asgi_channel__": "c"})).err(),
            Some(MessageError::ReservedKey)
        );
        assert!(Message::from_json_str("{nope").is_err());
    }

    #[test]
    fn clones_share_one_allocation_and_one_json_rendering() -> Result<(), MessageError> {
        let m = Message::builder("chat.message")
            .field("text", "hi")
            .build()?;
        let c = m.clone();
        assert!(Message::ptr_eq(&m, &c));
        let a = m.to_json_text();
        let b = c.to_json_text();
        assert_eq!(a.as_str(), r#"{"type":"chat.message","text":"hi"}"#);
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        Ok(())
    }

    #[test]
    fn decodes_into_typed_enum() -> Result<(), MessageError> {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(tag = "type")]
        enum E {
            #[serde(rename = "a.b")]
            Ab { n: i32 },
        }
        let m = Message::from_json(json!({"type": "a.b", "n": 4}))?;
        assert_eq!(m.decode::<E>(), Ok(E::Ab { n: 4 }));
        let m = Message::from_json(json!({"type": "c.d"}))?;
        assert!(m.decode::<E>().is_err());
        Ok(())
    }
}
