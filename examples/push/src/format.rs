//! What subscribers receive: each message as JSON, or through a template.
//!
//! A published message travels through the layer as
//! `{"type":"push.message","channel":"news","text":"…","time":"2026-11-22T07:09:00.123Z","event_type":"…"}`
//! (`event_type` only when the publisher sent an `Event-Type` header), and the layer gives it
//! its position in the channel's history (`history.rs`). By default subscribers receive that
//! JSON with the position as one more key, `"position":"EPOCH:OFFSET"` — rendered once per
//! message and shared by every WebSocket that gets it. With `--message-template`, they receive
//! the template with `~id~` (the offset), `~position~`, `~channel~`, `~text~`, `~time~` and
//! `~event-type~` replaced.
//!
//! Two notices share the format: a keep-alive ping on `/sub/` streams
//! (`{"type":"push.ping","time":…}`; through a template: id `-1`, event type `ping`) and the
//! notice that a channel was deleted (`{"type":"push.deleted","channel":…,"time":…}`; through a
//! template: id `-2`, text `channel deleted`, event type `deleted`).

use switchboard::Message;
use switchboard::text::Text;
use switchboard::value::Value;
use time::OffsetDateTime;

/// The layer message type of a published message.
pub const MESSAGE: &str = "push.message";
/// The layer message type that tells subscribers a channel was deleted.
pub const DELETE: &str = "push.delete";
/// The layer message type a WebSocket subscriber sends itself when its TTL is up.
pub const TTL: &str = "push.ttl";

/// `time_ms` as RFC 3339 in UTC with milliseconds: `2026-11-22T07:09:00.120Z`.
pub fn rfc3339(time_ms: u64) -> String {
    let nanos = i128::from(time_ms) * 1_000_000;
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The layer message carrying a published message (the layer adds its position).
pub fn layer_message(channel: &str, text: &str, time_ms: u64, event_type: Option<&str>) -> Message {
    let mut b = Message::builder(MESSAGE)
        .field("channel", channel)
        .field("text", text)
        .field("time", rfc3339(time_ms));
    if let Some(e) = event_type {
        b = b.field("event_type", e);
    }
    b.build().expect("valid message") // ok: a fixed non-empty type and no reserved key
}

/// A string field of a message ("" when absent).
pub fn field<'a>(m: &'a Message, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Id,
    Position,
    Channel,
    Text,
    Time,
    EventType,
}

/// A parsed `--message-template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses a template. Unknown `~words~` stay as they are.
    pub fn parse(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('~') {
            let after = &rest[start + 1..];
            let token = after.find('~').map(|end| (&after[..end], end));
            let part = match token {
                Some(("id", _)) => Some(Part::Id),
                Some(("position", _)) => Some(Part::Position),
                Some(("channel", _)) => Some(Part::Channel),
                Some(("text", _)) => Some(Part::Text),
                Some(("time", _)) => Some(Part::Time),
                Some(("event-type", _)) => Some(Part::EventType),
                _ => None,
            };
            match (part, token) {
                (Some(p), Some((_, end))) => {
                    lit.push_str(&rest[..start]);
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(p);
                    rest = &after[end + 1..];
                }
                _ => {
                    lit.push_str(&rest[..=start]);
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Template(parts)
    }

    fn render(
        &self,
        id: &str,
        position: &str,
        m: &Message,
        text: &str,
        event_type: &str,
    ) -> String {
        let mut out = String::with_capacity(text.len() + 64);
        for p in &self.0 {
            out.push_str(match p {
                Part::Lit(s) => s,
                Part::Id => id,
                Part::Position => position,
                Part::Channel => field(m, "channel"),
                Part::Text => text,
                Part::Time => field(m, "time"),
                Part::EventType => event_type,
            });
        }
        out
    }
}

/// How messages are written for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The layer message's JSON.
    Json,
    /// A template.
    Template(Template),
}

impl Format {
    /// From the `--message-template` flag.
    pub fn new(template: Option<&str>) -> Format {
        match template {
            Some(t) => Format::Template(Template::parse(t)),
            None => Format::Json,
        }
    }

    /// A published message (`push.message`) or a notice, as the subscriber gets it.
    pub fn render(&self, m: &Message) -> Text {
        match self {
            Format::Json => m.to_json_text(),
            Format::Template(t) => {
                let position = m.position().filter(|_| m.message_type() == MESSAGE);
                let id = position.map(|p| p.offset().to_string());
                let id = id.as_deref().unwrap_or(match m.message_type() {
                    PING => "-1",
                    DELETED => "-2",
                    _ => "0",
                });
                let position = position.map(ToString::to_string).unwrap_or_default();
                let (text, event_type) = match m.message_type() {
                    PING => ("", "ping"),
                    DELETED => ("channel deleted", "deleted"),
                    _ => (field(m, "text"), field(m, "event_type")),
                };
                t.render(id, &position, m, text, event_type).into()
            }
        }
    }
}

/// The type of the ping notice on streams.
pub const PING: &str = "push.ping";
/// The type of the notice a subscriber gets when a channel it follows is deleted.
pub const DELETED: &str = "push.deleted";

/// A ping notice, now.
pub fn ping(time_ms: u64) -> Message {
    Message::builder(PING)
        .field("time", rfc3339(time_ms))
        .build()
        .expect("valid message") // ok: a fixed non-empty type and no reserved key
}

/// The notice that `channel` was deleted.
pub fn deleted(channel: &str, time_ms: u64) -> Message {
    Message::builder(DELETED)
        .field("channel", channel)
        .field("time", rfc3339(time_ms))
        .build()
        .expect("valid message") // ok: a fixed non-empty type and no reserved key
}
