//! Channel ids in paths, backtrack suffixes and resume cursors.
//!
//! - A channel id is 1 to `max_channel_id_length` ASCII letters, digits, `-`, `_` or `.`; its
//!   layer group is `push.<id>`. An id may not end in `.b<digits>`, which is the backtrack
//!   suffix: `/ev/news.b5` subscribes to `news` and first delivers its last 5 stored messages.
//! - Paths carry several channels separated by `/`: `/ws/user-7/project-3/global`.
//! - A cursor says how far a subscriber got: the history position (`EPOCH:OFFSET`, see
//!   `history.rs`) of the last message it saw. For one channel it is that position
//!   (`k3x9ab12cd34:42`); for several it names each (`user-7=k3x9ab12cd34:42,global=p0q1:1093`).
//!   It is what SSE events carry in `id:`, what long-poll answers carry in `Etag`, and what
//!   `Last-Event-ID`, `If-None-Match` and `?last_id=` give back.

use std::fmt::Write as _;

use switchboard::{GroupName, Position};

/// The layer group of a push channel; `None` for an id that is no channel's (see
/// [`check_channel_id`]: every valid id makes a valid group name).
pub fn group_of(channel: &str) -> Option<GroupName> {
    GroupName::new(format!("push.{channel}")).ok()
}

/// Longest channel id the layer's group names allow (`push.` + id must stay under 100).
pub const LONGEST_CHANNEL_ID: usize = 94;

/// Why a path or cursor was refused; becomes a 400 (or 403 for limits) with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

fn backtrack_suffix(segment: &str) -> Option<(&str, usize)> {
    let (name, n) = segment.rsplit_once(".b")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, n.parse().unwrap_or(usize::MAX)))
}

/// Checks one channel id.
pub fn check_channel_id(id: &str, max_len: usize) -> Result<(), BadRequest> {
    if id.is_empty() {
        return Err(BadRequest("empty channel id".into()));
    }
    let max_len = max_len.min(LONGEST_CHANNEL_ID);
    if id.len() > max_len {
        return Err(BadRequest(format!(
            "channel id {:?}… is {} characters long; the limit is {max_len}",
            id.chars().take(20).collect::<String>(),
            id.len()
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(BadRequest(format!(
            "channel id {id:?} has {bad:?}: use ASCII letters, digits, '-', '_' and '.'"
        )));
    }
    if backtrack_suffix(id).is_some() {
        return Err(BadRequest(format!(
            "channel id {id:?} ends like a backtrack suffix (.b<N>); pick another id"
        )));
    }
    Ok(())
}

/// One channel of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The channel id.
    pub id: String,
    /// Its layer group, `push.<id>`, validated once.
    pub group: GroupName,
    /// `CH.b5`: deliver the last 5 stored messages first.
    pub backtrack: Option<usize>,
}

/// Splits a path tail (`a/b.b5/c`) into channel ids, checking each and their number.
/// `allow_backtrack` is false for publishing.
pub fn parse_channels(
    tail: &str,
    max_len: usize,
    max_count: usize,
    allow_backtrack: bool,
) -> Result<Vec<ChannelSpec>, BadRequest> {
    let mut out: Vec<ChannelSpec> = Vec::new();
    for segment in tail.split('/').filter(|s| !s.is_empty()) {
        let (id, backtrack) = match backtrack_suffix(segment) {
            Some((id, n)) if allow_backtrack => (id, Some(n)),
            Some(_) => {
                return Err(BadRequest(format!(
                    "{segment:?}: a backtrack suffix (.b<N>) only makes sense when subscribing"
                )));
            }
            None => (segment, None),
        };
        check_channel_id(id, max_len)?;
        if let Some(prev) = out.iter_mut().find(|c| c.id == id) {
            // The same channel twice: once is enough; keep the larger backtrack.
            prev.backtrack = prev.backtrack.max(backtrack);
            continue;
        }
        let group = group_of(id)
            .ok_or_else(|| BadRequest(format!("channel id {id:?} cannot name a group")))?;
        out.push(ChannelSpec {
            id: id.to_owned(),
            group,
            backtrack,
        });
        if out.len() > max_count {
            return Err(BadRequest(format!(
                "too many channels in one request; the limit is {max_count}"
            )));
        }
    }
    if out.is_empty() {
        return Err(BadRequest(
            "no channel given: put channel ids in the path, e.g. /ev/news or /pub/a/b".into(),
        ));
    }
    Ok(out)
}

/// Reads a cursor against the subscription's channels: for each, the history position of the
/// last message the client saw, if the cursor names it. Quotes and a weak `W/` prefix (from
/// `Etag`) are ignored.
pub fn parse_cursor(
    text: &str,
    channels: &[ChannelSpec],
) -> Result<Vec<Option<Position>>, BadRequest> {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    let mut out = vec![None; channels.len()];
    if text.is_empty() {
        return Ok(out);
    }
    let bad = || {
        BadRequest(format!(
            "bad event id {:?}: expected a position EPOCH:OFFSET (k3x9ab:42) or, for several \
             channels, CHANNEL=EPOCH:OFFSET pairs separated by commas (a=k3x9ab:42,b=p0q1rs:7)",
            text.chars().take(80).collect::<String>()
        ))
    };
    if !text.contains('=') {
        let position: Position = text.parse().map_err(|_| bad())?;
        if channels.len() != 1 {
            return Err(BadRequest(format!(
                "event id {:?} names no channel, but this subscription has {}: use \
                 CHANNEL=EPOCH:OFFSET pairs (a=k3x9ab:42,b=p0q1rs:7)",
                text.chars().take(80).collect::<String>(),
                channels.len()
            )));
        }
        out[0] = Some(position);
        return Ok(out);
    }
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, position) = pair.split_once('=').ok_or_else(bad)?;
        let position: Position = position.parse().map_err(|_| bad())?;
        if let Some(i) = channels.iter().position(|c| c.id == name) {
            out[i] = Some(position);
        }
    }
    Ok(out)
}

/// Writes a cursor: the bare position for one channel, `a=E:1,b=E:2` for several (channels
/// without a position yet are left out).
pub fn format_cursor<'a>(
    positions: impl Iterator<Item = (&'a str, Option<&'a Position>)>,
) -> String {
    let positions: Vec<(&str, Option<&Position>)> = positions.collect();
    if let [(_, p)] = positions[..] {
        return p.map(Position::to_string).unwrap_or_default();
    }
    let mut s = String::new();
    for (name, p) in positions {
        let Some(p) = p else { continue };
        if !s.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "{name}={p}");
    }
    s
}
