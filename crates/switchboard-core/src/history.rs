//! Group history: [`Position`]s, what a resume gets back ([`Recovery`], [`Resumed`]), and the
//! ring the in-memory engine keeps per group. The semantics are in [`crate::layer`] ("Group
//! history and resume").

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::clock::Instant;

use crate::error::LayerError;
use crate::message::Message;

/// Where a message stands in its group's history: an `offset` that grows by one per message
/// sent to the group, in an `epoch` that changes whenever the history may have been lost (the
/// layer restarted or was flushed, the group's history expired as a whole). Two positions of
/// one group compare by offset only within one epoch.
///
/// Its text form, `EPOCH:OFFSET`, is what a client keeps and sends back (an EventSource's
/// `Last-Event-ID`, a `since` query parameter).
///
/// ```
/// use switchboard_core::Position;
/// let p: Position = "k3x9:42".parse()?;
/// assert_eq!((p.epoch(), p.offset()), ("k3x9", 42));
/// assert_eq!(p.to_string(), "k3x9:42");
/// assert!("42".parse::<Position>().is_err());
/// # Ok::<(), switchboard_core::LayerError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    epoch: Arc<str>,
    offset: u64,
}

impl Position {
    /// The longest epoch a position may carry.
    pub const MAX_EPOCH_LEN: usize = 64;

    /// A position; the epoch must be 1–64 ASCII letters, digits, `-` or `_`.
    pub fn new(epoch: &str, offset: u64) -> Result<Position, LayerError> {
        if epoch.is_empty()
            || epoch.len() > Position::MAX_EPOCH_LEN
            || !epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(LayerError::Config(format!(
                "bad history epoch {:?}: want 1 to {} ASCII letters, digits, '-' or '_'",
                epoch.chars().take(80).collect::<String>(),
                Position::MAX_EPOCH_LEN
            )));
        }
        Ok(Position {
            epoch: epoch.into(),
            offset,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The offset: 1 for a group's first message; 0 is "before the first".
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A fresh random epoch (12 characters), for a history that starts now.
    pub fn new_epoch() -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        id[..12].to_owned()
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl FromStr for Position {
    type Err = LayerError;

    fn from_str(s: &str) -> Result<Position, LayerError> {
        let bad = || {
            LayerError::Config(format!(
                "bad history position {:?}: want EPOCH:OFFSET",
                s.chars().take(80).collect::<String>()
            ))
        };
        let (epoch, offset) = s.rsplit_once(':').ok_or_else(bad)?;
        let offset = offset.parse::<u64>().map_err(|_| bad())?;
        Position::new(epoch, offset).map_err(|_| bad())
    }
}

/// Whether a message sent to a group with history is numbered and kept: every message but the
/// presence events (`presence.*`, see [`crate::presence`]), which describe who is here now —
/// state that [`Layer::presence`](crate::Layer::presence) lists — rather than what happened;
/// they reach the members live, without a position.
pub fn kept_in_history(message: &Message) -> bool {
    !message.message_type().starts_with("presence.")
}

/// The error of `group_add_since` on a group that keeps no history
/// ([`LayerError::Unsupported`]).
pub fn no_history(group: &crate::GroupName) -> LayerError {
    LayerError::Unsupported(format!(
        "group {group} keeps no history (see LayerConfig::group_history)"
    ))
}

/// How much of a group's history a layer keeps: the last `size` messages, each for at most
/// `ttl`. Set per group pattern with
/// [`LayerConfig::group_history`](crate::LayerConfig::group_history).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept.
    pub size: usize,
    /// How long each is kept.
    pub ttl: Duration,
}

/// What joining a group "since" a position found
/// ([`Subscription::group_add_since`](crate::Subscription::group_add_since)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Recovery {
    /// Whether everything after the position given is replayed: `false` when the position is
    /// from another epoch, older than the history holds, or ahead of it. The app then reloads
    /// (its state, the page) instead of showing a hole.
    pub recovered: bool,
    /// The messages after the position, oldest first (empty when not recovered).
    pub messages: Vec<Message>,
    /// The group's position now — the last message's, or offset 0 of a new history: where to
    /// resume from next time if nothing else arrives.
    pub position: Position,
}

impl Recovery {
    /// What a layer's [`group_add_since`](crate::ChannelLayer::group_add_since) found.
    pub fn new(recovered: bool, messages: Vec<Message>, position: Position) -> Recovery {
        Recovery {
            recovered,
            messages,
            position,
        }
    }
}

/// What [`Subscription::group_add_since`](crate::Subscription::group_add_since) did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resumed {
    /// Whether everything after the position given is received (see [`Recovery::recovered`]).
    pub recovered: bool,
    /// How many messages came from history: the subscription's next receives.
    pub replayed: usize,
    /// The group's position at the join.
    pub position: Position,
}

/// The history the engine keeps in memory for one group: a ring of the last messages, with
/// the last offset given out and the epoch. Times are the engine's coarse clock's.
#[derive(Debug)]
pub(crate) struct Ring {
    epoch: Arc<str>,
    /// The last offset given out (0: none yet).
    top: u64,
    entries: VecDeque<(Instant, Message)>,
    config: HistoryConfig,
}

impl Ring {
    /// An empty history with a fresh epoch.
    pub(crate) fn new(config: HistoryConfig) -> Ring {
        Ring {
            epoch: Position::new_epoch().into(),
            top: 0,
            entries: VecDeque::with_capacity(config.size.min(64)),
            config,
        }
    }

    /// The position of the last message (offset 0 if none was sent).
    pub(crate) fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.top,
        }
    }

    /// Gives `message` the next position, keeps it, and returns it with its position.
    pub(crate) fn push(&mut self, message: Message, now: Instant) -> Message {
        self.top += 1;
        let stamped = message.with_position(self.position());
        self.expire(now);
        if self.config.size > 0 {
            if self.entries.len() == self.config.size {
                self.entries.pop_front();
            }
            self.entries.push_back((now, stamped.clone()));
        }
        stamped
    }

    /// Drops what is older than the ttl.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.entries.front() {
            if now.duration_since(*at) < self.config.ttl {
                break;
            }
            self.entries.pop_front();
        }
    }

    /// What a subscriber that has seen up to `since` needs: see [`Recovery`].
    pub(crate) fn since(&mut self, since: Option<&Position>, now: Instant) -> Recovery {
        self.expire(now);
        let position = self.position();
        let Some(since) = since else {
            return Recovery {
                recovered: true,
                messages: Vec::new(),
                position,
            };
        };
        // The offset of the oldest message held, or of the next one if none is.
        let first = (self.top + 1).saturating_sub(self.entries.len() as u64);
        let recovered = *since.epoch == *self.epoch
            && since.offset <= self.top
            && since.offset.saturating_add(1) >= first;
        let messages = if recovered {
            let skip = (since.offset.saturating_add(1) - first) as usize;
            self.entries
                .iter()
                .skip(skip)
                .map(|(_, m)| m.clone())
                .collect()
        } else {
            Vec::new()
        };
        Recovery {
            recovered,
            messages,
            position,
        }
    }

    /// Everything it holds, oldest first (recovered).
    pub(crate) fn all(&mut self, now: Instant) -> Recovery {
        self.expire(now);
        Recovery {
            recovered: true,
            messages: self.entries.iter().map(|(_, m)| m.clone()).collect(),
            position: self.position(),
        }
    }

    /// Whether everything it held has expired (it can be forgotten: a new one starts a new
    /// epoch).
    pub(crate) fn is_idle(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: i64) -> Message {
        Message::builder("t")
            .field("n", n)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn n(msg: &Message) -> i64 {
        msg.get("n").and_then(|v| v.as_i64()).unwrap_or(-1)
    }

    fn cfg(size: usize, ttl_s: u64) -> HistoryConfig {
        HistoryConfig {
            size,
            ttl: Duration::from_secs(ttl_s),
        }
    }

    #[test]
    fn offsets_grow_by_one_and_resume_replays_what_follows() {
        let now = Instant::now();
        let mut r = Ring::new(cfg(10, 60));
        let start = r.since(None, now);
        assert!(start.recovered && start.messages.is_empty());
        assert_eq!(start.position.offset(), 0);
        let sent: Vec<Message> = (1..=5).map(|i| r.push(m(i), now)).collect();
        let offsets: Vec<u64> = sent
            .iter()
            .filter_map(|s| s.position().map(Position::offset))
            .collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5]);
        let since2 = r.since(sent[1].position(), now);
        assert!(since2.recovered);
        assert_eq!(since2.messages.iter().map(n).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(since2.position.offset(), 5);
        let from_zero = r.since(Some(&start.position), now);
        assert_eq!(from_zero.messages.len(), 5);
        let at_top = r.since(sent[4].position(), now);
        assert!(at_top.recovered && at_top.messages.is_empty());
    }

    #[test]
    fn too_old_another_epoch_or_ahead_is_not_recovered() {
        let now = Instant::now();
        let mut r = Ring::new(cfg(3, 60));
        let sent: Vec<Message> = (1..=6).map(|i| r.push(m(i), now)).collect();
        // Holds 4, 5, 6: after 3 is recoverable, after 2 is not.
        let after3 = r.since(sent[2].position(), now);
        assert!(after3.recovered);
        assert_eq!(after3.messages.iter().map(n).collect::<Vec<_>>(), [4, 5, 6]);
        assert!(!r.since(sent[1].position(), now).recovered);
        let e = r.position().epoch().to_owned();
        let other = Position::new("another", 5).unwrap_or_else(|e| panic!("{e}"));
        assert!(!r.since(Some(&other), now).recovered);
        let ahead = Position::new(&e, 7).unwrap_or_else(|e| panic!("{e}"));
        let got = r.since(Some(&ahead), now);
        assert!(!got.recovered && got.messages.is_empty());
    }

    #[test]
    fn expired_messages_are_not_replayed() {
        let t0 = Instant::now();
        let mut r = Ring::new(cfg(10, 5));
        let first = r.push(m(1), t0);
        r.push(m(2), t0 + Duration::from_secs(3));
        let later = t0 + Duration::from_secs(6);
        // 1 expired: after 1 is still whole (2 is held), from 0 is not.
        assert!(r.since(first.position(), later).recovered);
        let zero = Position::new(r.position().epoch(), 0).unwrap_or_else(|e| panic!("{e}"));
        assert!(!r.since(Some(&zero), later).recovered);
        assert!(r.is_idle(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn positions_round_trip_as_text_and_bad_ones_are_refused() {
        let p = Position::new("ab_C-9", 7).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.to_string().parse::<Position>().ok(), Some(p));
        for bad in [
            "",
            ":1",
            "a:",
            "a:-1",
            "a b:1",
            "a:1x",
            &format!("{}:1", "e".repeat(65)),
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
    }
}
