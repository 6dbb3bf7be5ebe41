//! Channel and group names, validated once at the edge exactly as Django Channels does.
//!
//! - A **group** name is one or more ASCII letters, digits, `-`, `_` or `.`.
//! - A **channel** name is the same, optionally followed by one `!` and a process-local part of
//!   letters, digits, `-`, `_` or `.` (`specific.3f2a…!9c1d…`). The part up to and including the
//!   `!` is the channel's *non-local* part: the Redis layer stores every such channel of one
//!   process under that key.
//! - Both must be shorter than 100 characters.
//!
//! Channels checks `^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$` with Python's Unicode-aware `\d` and
//! `\w`. We accept the same ASCII names and, after the `!`, any Unicode letter or digit as
//! Python does; we do not copy Python's quirk of accepting one trailing newline (`$` matches
//! before it), since such a name can't be typed into a Redis key by a Rust peer anyway.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Names must be shorter than this many characters.
pub const MAX_NAME_LENGTH: usize = 100;

/// What kind of name failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A channel name.
    Channel,
    /// A group name.
    Group,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Channel => "channel",
            NameKind::Group => "group",
        })
    }
}

/// A name that breaks the rules; the message names the bad name and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} name {name:?} is invalid: {rule}")]
pub struct NameError {
    /// Channel or group.
    pub kind: NameKind,
    /// The offending name (cut to 120 characters).
    pub name: String,
    /// The rule it broke.
    pub rule: &'static str,
}

const RULE_EMPTY: &str = "it must not be empty";
const RULE_LENGTH: &str = "it must be shorter than 100 characters";
const RULE_CHARS_GROUP: &str = "only ASCII letters, digits, '-', '_' and '.' are allowed";
const RULE_CHARS_CHANNEL: &str = "only ASCII letters, digits, '-', '_' and '.' are allowed, \
     with at most one '!' before a process-local part";
const RULE_BANG_START: &str = "a '!' must follow at least one character";

fn base_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn local_char(c: char) -> bool {
    // Python's `[\d\w\-_.]` on str: Unicode letters and digits, '_', '-', '.'.
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn error(kind: NameKind, name: &str, rule: &'static str) -> NameError {
    NameError {
        kind,
        name: name.chars().take(120).collect(),
        rule,
    }
}

fn check_length(kind: NameKind, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(error(kind, name, RULE_EMPTY));
    }
    // Python's len() counts code points; ASCII names are the common case and cost nothing more.
    if name.len() >= MAX_NAME_LENGTH && name.chars().count() >= MAX_NAME_LENGTH {
        return Err(error(kind, name, RULE_LENGTH));
    }
    Ok(())
}

/// Validates a channel name as Channels does.
pub fn validate_channel_name(name: &str) -> Result<(), NameError> {
    check_length(NameKind::Channel, name)?;
    let (base, local) = match name.find('!') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    if base.is_empty() {
        return Err(error(NameKind::Channel, name, RULE_BANG_START));
    }
    if !base.chars().all(base_char) || !local.is_none_or(|l| l.chars().all(local_char)) {
        return Err(error(NameKind::Channel, name, RULE_CHARS_CHANNEL));
    }
    Ok(())
}

/// Validates a group name as Channels does.
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    check_length(NameKind::Group, name)?;
    if !name.chars().all(base_char) {
        return Err(error(NameKind::Group, name, RULE_CHARS_GROUP));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $validate:ident, $into:ident, $into_fn:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates and wraps a name.
            pub fn new(name: impl AsRef<str>) -> Result<Self, NameError> {
                let name = name.as_ref();
                $validate(name)?;
                Ok($ty(Arc::from(name)))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $ty::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                $ty::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $ty::new(s)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $ty::new(&*s).map_err(serde::de::Error::custom)
            }
        }

        #[doc = concat!("Anything that names a [`", stringify!($ty), "`]: the type itself or a string to validate.")]
        pub trait $into {
            /// Converts, validating if needed.
            fn $into_fn(self) -> Result<$ty, NameError>;
        }
        impl $into for $ty {
            fn $into_fn(self) -> Result<$ty, NameError> {
                Ok(self)
            }
        }
        impl $into for &$ty {
            fn $into_fn(self) -> Result<$ty, NameError> {
                Ok(self.clone())
            }
        }
        impl $into for &str {
            fn $into_fn(self) -> Result<$ty, NameError> {
                $ty::new(self)
            }
        }
        impl $into for String {
            fn $into_fn(self) -> Result<$ty, NameError> {
                $ty::new(self)
            }
        }
        impl $into for &String {
            fn $into_fn(self) -> Result<$ty, NameError> {
                $ty::new(self)
            }
        }
    };
}

name_type!(
    /// A validated channel name: a mailbox anyone holding the name can send to.
    ChannelName,
    validate_channel_name,
    IntoChannelName,
    into_channel_name
);
name_type!(
    /// A validated group name: a named set of channels.
    GroupName,
    validate_group_name,
    IntoGroupName,
    into_group_name
);

impl ChannelName {
    /// Whether this is a process-local name (`prefix!local`).
    pub fn is_process_local(&self) -> bool {
        self.0.contains('!')
    }

    /// The non-local part: up to and including the `!` for process-local names, else the whole
    /// name. Channels' Redis layer keys its queues by this part.
    pub fn non_local_part(&self) -> &str {
        match self.0.find('!') {
            Some(i) => &self.0[..=i],
            None => &self.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_channels_accepts() {
        for ok in [
            "a",
            "chat_lobby",
            "specific.6e5706f2d491421f9398739aef024fb7!213f83abed73453dbfd177e5f5f46cec",
            "worker.jobs",
            "x-y_z.0",
            "abc!",
            "abc!é9_",
        ] {
            assert!(validate_channel_name(ok).is_ok(), "{ok}");
        }
        for ok in ["room", "chat_lobby", "a.b-c_d", &"g".repeat(99)] {
            assert!(validate_group_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_with_the_rule() {
        let e = GroupName::new("x y").unwrap_err();
        assert_eq!(e.rule, RULE_CHARS_GROUP);
        assert_eq!(
            e.to_string(),
            "group name \"x y\" is invalid: only ASCII letters, digits, '-', '_' and '.' are allowed"
        );
        assert_eq!(GroupName::new("a!b").unwrap_err().rule, RULE_CHARS_GROUP);
        assert_eq!(
            GroupName::new("g".repeat(100)).unwrap_err().rule,
            RULE_LENGTH
        );
        assert_eq!(GroupName::new("").unwrap_err().rule, RULE_EMPTY);
        assert_eq!(
            ChannelName::new("a!b!c").unwrap_err().rule,
            RULE_CHARS_CHANNEL
        );
        assert_eq!(ChannelName::new("!abc").unwrap_err().rule, RULE_BANG_START);
        assert_eq!(
            ChannelName::new("caf\u{e9}").unwrap_err().rule,
            RULE_CHARS_CHANNEL
        );
        assert_eq!(
            ChannelName::new("a\n").unwrap_err().rule,
            RULE_CHARS_CHANNEL
        );
        assert_eq!(
            ChannelName::new("c".repeat(100)).unwrap_err().rule,
            RULE_LENGTH
        );
        assert!(ChannelName::new("c".repeat(99)).is_ok());
        // 99 code points but more bytes: still valid, as Python counts code points
        assert!(ChannelName::new(format!("a!{}", "é".repeat(97))).is_ok());
    }

    #[test]
    fn non_local_part() -> Result<(), NameError> {
        let c = ChannelName::new("specific.abc!def")?;
        assert!(c.is_process_local());
        assert_eq!(c.non_local_part(), "specific.abc!");
        let c = ChannelName::new("worker")?;
        assert_eq!(c.non_local_part(), "worker");
        Ok(())
    }
}
