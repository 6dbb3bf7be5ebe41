//! Message decoding: JSON text (what a consumer receives from a browser and what a JSON
//! consumer parses) and msgpack (what the Redis layers read).

use serde::Deserialize;
use switchboard_core::{Message, Value};

use crate::{close, same, same_message};

/// A consumer's typed message, decoded from a message through `Message::decode`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
#[allow(dead_code)] // ok: only decoded, to drive the borrowing deserializer
enum Typed {
    #[serde(rename = "chat.message")]
    Chat {
        text: String,
        #[serde(default)]
        tags: Vec<String>,
        room: Option<u32>,
    },
    #[serde(rename = "chat.join")]
    Join {
        user: (String, i64),
        extra: serde_json::Map<String, serde_json::Value>,
    },
    #[serde(rename = "blob")]
    Blob {
        #[serde(with = "serde_bytes_like")]
        data: Vec<u8>,
        score: f64,
        flag: Option<bool>,
    },
}

mod serde_bytes_like {
    use serde::{Deserialize, Deserializer};
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Vec::<u8>::deserialize(d)
    }
}

/// JSON text into a message: `Message::from_json_str` agrees exactly with serde_json's own
/// `Value` followed by `Message::from_json`; an accepted message renders to JSON text that
/// parses back to the same message (floats within an ulp), and to a JSON value that builds the
/// same message; decoding it into `serde_json::Value` through the borrowing deserializer gives
/// that JSON value.
pub fn json_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Message::from_json_str(text);
    let via_serde_json = serde_json::from_str::<serde_json::Value>(text)
        .map_err(|_| ())
        .and_then(|v| Message::from_json(v).map_err(|_| ()));
    match (&parsed, &via_serde_json) {
        (Ok(a), Ok(b)) => assert!(same_message(a, b), "{a:?} != {b:?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("from_json_str {parsed:?} disagrees with serde_json {via_serde_json:?}"),
    }
    let Ok(message) = parsed else {
        return;
    };
    assert!(!message.message_type().is_empty());
    assert_eq!(
        message.get("type").and_then(Value::as_str),
        Some(message.message_type())
    );
    let rendered = message.to_json_text();
    let again = Message::from_json_str(rendered.as_str())
        .unwrap_or_else(|e| panic!("rendered {rendered:?} does not parse back: {e}"));
    assert!(
        close(
            &Value::Map(message.fields().clone()),
            &Value::Map(again.fields().clone())
        ),
        "{message:?} rendered as {rendered:?} came back as {again:?}"
    );
    let json = message.to_json();
    let rebuilt = Message::from_json(json.clone()).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert!(same_message(&message, &rebuilt));
    let decoded: serde_json::Value = message
        .decode()
        .unwrap_or_else(|e| panic!("{message:?} does not decode into serde_json::Value: {e}"));
    assert_eq!(decoded, json);
    let _ = message.decode::<Typed>();
}

/// Msgpack bytes into a `Value` (rmp-serde, as the Redis layers decode): what decodes encodes
/// to bytes that decode to the same value and encode to the same bytes again; a map that is a
/// valid message renders to JSON that parses as a message, the same as its JSON value builds.
pub fn msgpack_value(data: &[u8]) {
    let Ok(value) = rmp_serde::from_slice::<Value>(data) else {
        return;
    };
    let bytes = rmp_serde::to_vec(&value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
    let back: Value = rmp_serde::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{value:?} encoded as {bytes:02x?} does not decode: {e}"));
    assert!(same(&value, &back), "{value:?} came back as {back:?}");
    let bytes_again = rmp_serde::to_vec(&back).unwrap_or_else(|e| panic!("{back:?}: {e}"));
    assert_eq!(bytes, bytes_again, "msgpack encoding is not canonical");
    let deep = depth(&value) > JSON_DEPTH;
    let Ok(message) = Message::from_value(value) else {
        return;
    };
    let _ = message.decode::<Typed>();
    let _ = message.decode::<serde_json::Value>();
    if deep {
        // rmp-serde reads nesting to 1024 levels, serde_json to 128: such a message renders
        // to JSON (a browser reads it) that serde_json refuses.
        return;
    }
    let rendered = message.to_json_text();
    let from_text = Message::from_json_str(rendered.as_str())
        .unwrap_or_else(|e| panic!("rendered {rendered:?} does not parse back: {e}"));
    let from_json = Message::from_json(message.to_json())
        .unwrap_or_else(|e| panic!("{message:?} to JSON does not build a message: {e}"));
    assert!(
        close(
            &Value::Map(from_text.fields().clone()),
            &Value::Map(from_json.fields().clone())
        ),
        "to_json_text {from_text:?} and to_json {from_json:?} disagree"
    );
}

/// Nesting below which serde_json parses (its recursion limit is 128), with a margin.
const JSON_DEPTH: usize = 120;

/// How deeply lists and maps nest in `value` (a scalar is 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::List(l) => 1 + l.iter().map(depth).max().unwrap_or(0),
        Value::Map(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
