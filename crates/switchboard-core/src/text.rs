//! [`Text`]: UTF-8 text in shared bytes.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// Immutable UTF-8 text held in [`Bytes`]: cloning it shares the bytes, and turning it into
/// `Bytes` (to write it to a socket) copies nothing.
///
/// A [`Message`](crate::Message) renders its JSON into one `Text` once, and every socket the
/// message is relayed to writes the same bytes.
///
/// ```
/// use switchboard_core::Text;
/// let t = Text::from("héllo");
/// assert_eq!(t.as_str(), "héllo");
/// assert_eq!(t.clone().into_bytes().len(), 6);
/// assert!(Text::try_from(bytes::Bytes::from_static(b"\xff")).is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(ByteString);

impl Text {
    /// Text from a static string, without copying it.
    pub const fn from_static(text: &'static str) -> Text {
        Text(ByteString::from_static(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The bytes, shared (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(ByteString::from(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(ByteString::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text(ByteString::from(s.as_str()))
    }
}

impl From<Text> for Bytes {
    fn from(t: Text) -> Bytes {
        t.into_bytes()
    }
}

impl TryFrom<Bytes> for Text {
    type Error = std::str::Utf8Error;
    /// Checks that the bytes are UTF-8 (once), then shares them.
    fn try_from(bytes: Bytes) -> Result<Text, std::str::Utf8Error> {
        ByteString::try_from(bytes).map(Text)
    }
}

impl TryFrom<Vec<u8>> for Text {
    type Error = std::string::FromUtf8Error;
    fn try_from(bytes: Vec<u8>) -> Result<Text, std::string::FromUtf8Error> {
        String::from_utf8(bytes).map(Text::from)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
