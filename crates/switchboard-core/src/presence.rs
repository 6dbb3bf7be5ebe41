//! Presence: who is in a group, across every process of the layer. The semantics are in
//! [`crate::layer`] ("Presence").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{LayerError, Result};
use crate::name::{ChannelName, GroupName};
use crate::value::{Map, Value};

/// What a subscriber says about itself when it joins a group's presence
/// ([`Subscription::presence_join`](crate::Subscription::presence_join)).
///
/// ```
/// use switchboard_core::PresenceInfo;
/// let me = PresenceInfo::new("tab-7f3a").user("ann").meta("device", "phone")?;
/// assert_eq!(me.user.as_deref(), Some("ann"));
/// # Ok::<(), switchboard_core::LayerError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct PresenceInfo {
    /// The client (a browser tab, a device): the app's own id, not the channel name.
    pub client_id: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// A small map the app chooses (status, device…): at most
    /// [`PresenceInfo::MAX_META_BYTES`] as JSON.
    pub meta: Map,
}

impl PresenceInfo {
    /// The longest `client_id` and `user`, in bytes.
    pub const MAX_ID_LEN: usize = 200;
    /// The largest `meta`, as JSON text.
    pub const MAX_META_BYTES: usize = 1024;

    /// A client's presence, without a user or metadata.
    pub fn new(client_id: impl Into<String>) -> PresenceInfo {
        PresenceInfo {
            client_id: client_id.into(),
            user: None,
            meta: Map::default(),
        }
    }

    /// Sets the user.
    pub fn user(mut self, user: impl Into<String>) -> PresenceInfo {
        self.user = Some(user.into());
        self
    }

    /// Adds one metadata entry; fails if the metadata grows past
    /// [`PresenceInfo::MAX_META_BYTES`].
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<PresenceInfo> {
        self.meta.insert(key.into(), value.into());
        self.check()?;
        Ok(self)
    }

    /// Checks the sizes: ids of 1 to [`MAX_ID_LEN`](PresenceInfo::MAX_ID_LEN) bytes, metadata
    /// within [`MAX_META_BYTES`](PresenceInfo::MAX_META_BYTES).
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(LayerError::Config(format!("bad presence: {what}")));
        if self.client_id.is_empty() || self.client_id.len() > PresenceInfo::MAX_ID_LEN {
            return bad(format!(
                "the client id must be 1 to {} bytes, got {}",
                PresenceInfo::MAX_ID_LEN,
                self.client_id.len()
            ));
        }
        if let Some(u) = &self.user
            && u.len() > PresenceInfo::MAX_ID_LEN
        {
            return bad(format!(
                "the user must be at most {} bytes, got {}",
                PresenceInfo::MAX_ID_LEN,
                u.len()
            ));
        }
        let meta = serde_json::to_string(&self.meta).map_err(|e| {
            LayerError::Config(format!("bad presence: metadata does not serialize: {e}"))
        })?;
        if meta.len() > PresenceInfo::MAX_META_BYTES {
            return bad(format!(
                "the metadata must be at most {} bytes of JSON, got {}",
                PresenceInfo::MAX_META_BYTES,
                meta.len()
            ));
        }
        Ok(())
    }
}

/// One subscriber present in a group, as [`Layer::presence`](crate::Layer::presence) lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PresenceEntry {
    /// The subscriber's channel (one entry per channel and group).
    pub channel: ChannelName,
    /// The client id it gave.
    pub client_id: String,
    /// The user it gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When it joined, in milliseconds since the Unix epoch (its process's clock).
    pub since_ms: u64,
    /// The metadata it gave.
    #[serde(default)]
    pub meta: Map,
}

impl PresenceEntry {
    /// The entry for `channel` joining now with `info`.
    pub fn new(channel: ChannelName, info: &PresenceInfo) -> PresenceEntry {
        PresenceEntry {
            channel,
            client_id: info.client_id.clone(),
            user: info.user.clone(),
            since_ms: unix_ms(),
            meta: info.meta.clone(),
        }
    }

    /// An entry from its JSON text ([`to_json`](PresenceEntry::to_json)).
    pub fn from_json(json: &[u8]) -> Result<PresenceEntry> {
        serde_json::from_slice(json)
            .map_err(|e| LayerError::backend_msg(format!("a presence entry does not decode: {e}")))
    }

    /// Its JSON text, as the Redis layers keep it.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| LayerError::Config(format!("presence entry does not serialize: {e}")))
    }
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The presence of every group of an in-memory layer: entries with the time they expire.
#[derive(Debug, Default, Clone)]
pub(crate) struct Presences {
    groups: Arc<Mutex<HashMap<GroupName, Members>>>,
    /// Adds since the last sweep of every group: one sweep per 1,024 adds forgets the groups
    /// nobody lists any more.
    adds: Arc<std::sync::atomic::AtomicU32>,
}

/// One group's entries, and no later than when the first of them expires: until then a count
/// is the map's length, with no scan.
#[derive(Debug)]
struct Members {
    entries: HashMap<ChannelName, Held>,
    next_expiry: std::time::Instant,
}

impl Members {
    /// Drops the expired entries if one may have expired by `now`.
    fn expire(&mut self, now: std::time::Instant) {
        if now < self.next_expiry {
            return;
        }
        self.entries.retain(|_, h| h.expires > now);
        self.next_expiry = self
            .entries
            .values()
            .map(|h| h.expires)
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
    }
}

#[derive(Debug, Clone)]
struct Held {
    entry: PresenceEntry,
    expires: std::time::Instant,
}

impl Presences {
    /// Adds or refreshes `entry` in `group` for `ttl`; a refresh keeps the first `since`.
    pub(crate) fn add(&self, group: &GroupName, entry: PresenceEntry, ttl: Duration) {
        if self.adds.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024 == 1023 {
            self.sweep();
        }
        let expires = std::time::Instant::now() + ttl;
        let mut all = self.groups.lock();
        let members = all.entry(group.clone()).or_insert_with(|| Members {
            entries: HashMap::new(),
            next_expiry: expires,
        });
        members.next_expiry = members.next_expiry.min(expires);
        match members.entries.get_mut(&entry.channel) {
            Some(held) => {
                let since_ms = held.entry.since_ms;
                held.entry = PresenceEntry { since_ms, ..entry };
                held.expires = expires;
            }
            None => {
                members
                    .entries
                    .insert(entry.channel.clone(), Held { entry, expires });
            }
        }
    }

    pub(crate) fn remove(&self, group: &GroupName, channel: &ChannelName) {
        let mut all = self.groups.lock();
        if let Some(members) = all.get_mut(group) {
            members.entries.remove(channel);
            if members.entries.is_empty() {
                all.remove(group);
            }
        }
    }

    /// Drops `group`'s expired entries, then calls `f` on what is left.
    fn live<T>(&self, group: &str, f: impl FnOnce(&HashMap<ChannelName, Held>) -> T) -> T {
        let now = std::time::Instant::now();
        let mut all = self.groups.lock();
        let empty = HashMap::new();
        let Some(members) = all.get_mut(group) else {
            return f(&empty);
        };
        members.expire(now);
        if members.entries.is_empty() {
            all.remove(group);
            return f(&empty);
        }
        f(&members.entries)
    }

    pub(crate) fn list(&self, group: &str) -> Vec<PresenceEntry> {
        self.live(group, |m| m.values().map(|h| h.entry.clone()).collect())
    }

    pub(crate) fn count(&self, group: &str) -> usize {
        self.live(group, HashMap::len)
    }

    pub(crate) fn clear(&self) {
        self.groups.lock().clear();
    }

    /// Forgets every expired entry (the layer's sweep).
    pub(crate) fn sweep(&self) {
        let now = std::time::Instant::now();
        self.groups.lock().retain(|_, members| {
            members.expire(now);
            !members.entries.is_empty()
        });
    }
}

/// The presence events of one group from one process, at most `rate` a second: past that they
/// are not sent, and once the second is over one `presence.sync` tells members how many they
/// did not get (they list the presence again).
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    windows: Mutex<HashMap<GroupName, Window>>,
}

#[derive(Debug)]
struct Window {
    start: std::time::Instant,
    sent: u32,
    suppressed: u32,
}

/// What the throttle says about one event.
pub(crate) enum Verdict {
    /// Send it.
    Send,
    /// Do not; the first suppressed event of its window also schedules a `presence.sync` at
    /// the window's end (the duration from now).
    Suppress { first: Option<Duration> },
}

impl Throttle {
    pub(crate) fn check(&self, group: &GroupName, rate: u32) -> Verdict {
        let now = std::time::Instant::now();
        let mut windows = self.windows.lock();
        if windows.len() > 10_000 {
            windows.retain(|_, w| now.duration_since(w.start) < Duration::from_secs(1));
        }
        let w = windows.entry(group.clone()).or_insert(Window {
            start: now,
            sent: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            *w = Window {
                start: now,
                sent: 0,
                suppressed: 0,
            };
        }
        if w.sent < rate {
            w.sent += 1;
            return Verdict::Send;
        }
        w.suppressed += 1;
        let first = (w.suppressed == 1)
            .then(|| Duration::from_secs(1).saturating_sub(now.duration_since(w.start)));
        Verdict::Suppress { first }
    }

    /// How many events of `group`'s last window were not sent (and forgets them).
    pub(crate) fn take_suppressed(&self, group: &GroupName) -> u32 {
        self.windows
            .lock()
            .get_mut(group)
            .map_or(0, |w| std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn group(s: &str) -> GroupName {
        GroupName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn entries_expire_and_a_refresh_keeps_since() {
        let p = Presences::default();
        let g = group("room");
        let mut e = PresenceEntry::new(name("specific.a"), &PresenceInfo::new("a"));
        e.since_ms = 5;
        p.add(&g, e.clone(), Duration::from_secs(60));
        e.since_ms = 9;
        p.add(&g, e, Duration::from_secs(60));
        assert_eq!(p.list("room")[0].since_ms, 5);
        let b = PresenceEntry::new(name("specific.b"), &PresenceInfo::new("b"));
        p.add(&g, b, Duration::ZERO);
        assert_eq!(p.count("room"), 1, "an expired entry is not counted");
        p.remove(&g, &name("specific.a"));
        assert_eq!(p.count("room"), 0);
    }

    #[test]
    fn info_sizes_are_checked() {
        assert!(PresenceInfo::new("").check().is_err());
        assert!(PresenceInfo::new("x".repeat(201)).check().is_err());
        assert!(PresenceInfo::new("a").meta("k", "v".repeat(2000)).is_err());
        assert!(PresenceInfo::new("a").user("ann").meta("k", 1).is_ok());
    }

    #[test]
    fn the_throttle_lets_rate_through_then_schedules_one_sync() {
        let t = Throttle::default();
        let g = group("room");
        for _ in 0..3 {
            assert!(matches!(t.check(&g, 3), Verdict::Send));
        }
        assert!(matches!(
            t.check(&g, 3),
            Verdict::Suppress { first: Some(_) }
        ));
        assert!(matches!(t.check(&g, 3), Verdict::Suppress { first: None }));
        assert_eq!(t.take_suppressed(&g), 2);
        assert_eq!(t.take_suppressed(&g), 0);
    }
}
