//! History: message ids, stored messages and the channel registry, behind one trait.
//!
//! Every published message gets the next id of its channel from the store — 1, 2, 3 …, with no
//! gaps — and, with `--store-messages N`, stays as one of the channel's last N messages until
//! `--message-ttl` has passed. Subscribers read the store to backtrack (`CH.b5`) and to resume
//! (`Last-Event-ID`, long-poll ids). [`MemoryStore`] serves one process; `RedisStore`
//! (`redis_store.rs`) keeps the same data in Redis, so every gateway on that Redis hands out ids
//! from one counter and backtracks from one history.
//!
//! The store also keeps the channel registry behind `/stats` and `--max-channels`: a channel is
//! known from its first publish or subscription until `channel_ttl` after the last of them
//! (subscribed channels are touched again while their subscribers stay), and at least as long
//! as it holds stored messages. A channel's id counter lives exactly as long as its registry
//! entry; once a quiet channel is forgotten (or deleted), its ids start again at 1 — a cursor
//! newer than a channel's last id is therefore read as "this channel was reset" (see
//! `subscribe.rs`).
//!
//! Each incarnation of a channel has an *epoch*: the time its first message was published, in
//! ms. Messages carry it, so a subscriber still connected when its channel starts again at id 1
//! (Redis lost its data, say) sees a new epoch and does not mistake the new messages for ones
//! it already has.
//!
//! Ids are assigned and the message stored in one atomic step, before the message is fanned
//! out. So when a subscriber sees message 7 live while it holds 5, message 6 is already in the
//! store, and the subscriber fetches it from there (it may still be on its way through the
//! layer from a slower publisher). That is what makes resume lossless.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard::Result;

/// The attribute [`HistoryStore`] implementations need (it is a `dyn` trait).
pub use async_trait::async_trait;

/// How much history is kept, and for how long.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Messages kept per channel (0: none, ids only).
    pub keep: usize,
    /// How long a stored message is kept.
    pub message_ttl: Duration,
    /// How long a channel nobody publishes to or subscribes to stays known.
    pub channel_ttl: Duration,
}

impl StoreConfig {
    /// How long a channel stays known after a publish: long enough to outlive what it stores.
    pub fn publish_lifetime(&self) -> Duration {
        if self.keep > 0 {
            self.channel_ttl.max(self.message_ttl)
        } else {
            self.channel_ttl
        }
    }
}

/// One published message as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushMessage {
    /// Per-channel id: 1, 2, 3 …
    pub id: u64,
    /// The channel it was published to.
    pub channel: String,
    /// The body of the POST.
    pub text: String,
    /// When it was published, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The `Event-Type` header of the POST, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The channel's epoch when it was published.
    pub epoch: u64,
}

/// What a publisher hands the store: the message before it has an id.
#[derive(Clone, Copy, Debug)]
pub struct Draft<'a> {
    /// The message text.
    pub text: &'a str,
    /// Its `Event-Type`, if the publisher gave one.
    pub event_type: Option<&'a str>,
    /// When it was published, in Unix milliseconds.
    pub time_ms: u64,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The id the message got.
    pub id: u64,
    /// The channel's epoch.
    pub epoch: u64,
    /// Messages the channel now stores.
    pub stored: u64,
}

/// Which stored messages a subscriber wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Every stored message with an id above this one.
    Since(u64),
    /// The last n stored messages.
    Last(usize),
    /// None: only the channel's last id.
    Nothing,
}

/// A channel's last id and the stored messages asked for, oldest first. Expired messages are
/// never returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The channel's last id (0 if nothing was published since it became known).
    pub last_id: u64,
    /// The channel's epoch (0 if nothing was published since it became known).
    pub epoch: u64,
    /// The stored messages asked for, oldest first.
    pub messages: Vec<PushMessage>,
}

/// A channel's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelInfo {
    /// The channel id.
    pub channel: String,
    /// Messages published to the channel (its last id).
    pub published_messages: u64,
    /// Messages it stores now.
    pub stored_messages: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A duration in whole milliseconds.
pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Where ids, history and the channel registry live.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// The store's settings.
    fn config(&self) -> &StoreConfig;

    /// Gives the message the channel's next id, stores it (when history is kept) and registers
    /// the channel, in one atomic step.
    async fn publish(&self, channel: &str, draft: Draft<'_>) -> Result<Published>;

    /// The channel's last id and the stored messages `read` asks for.
    async fn read(&self, channel: &str, read: Read) -> Result<History>;

    /// Registers the channels (or keeps them registered) for `channel_ttl`: they have
    /// subscribers.
    async fn touch(&self, channels: &[String]) -> Result<()>;

    /// Forgets the channel: its id counter, its messages, its registry entry. Whether it was
    /// known.
    async fn delete(&self, channel: &str) -> Result<bool>;

    /// Whether the channel is known.
    async fn exists(&self, channel: &str) -> Result<bool>;

    /// How many channels are known.
    async fn channel_count(&self) -> Result<u64>;

    /// The known channels whose id starts with `prefix` ("" for all), sorted by id.
    async fn channels(&self, prefix: &str) -> Result<Vec<ChannelInfo>>;

    /// One channel's figures, if it is known.
    async fn info(&self, channel: &str) -> Result<Option<ChannelInfo>>;

    /// Messages published since the store began (for Redis: by every gateway on it).
    async fn published_total(&self) -> Result<u64>;

    /// Forgets every channel whose time is up; how many it forgot. The gateway calls it on each
    /// keeper tick, so the names anonymous subscribers make up do not pile up, whether or not
    /// anyone reads `/stats`.
    async fn purge(&self) -> Result<u64>;
}

/// History in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    config: StoreConfig,
    channels: Mutex<HashMap<String, Entry>>,
    published: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    last_id: u64,
    epoch: u64,
    /// When the channel is forgotten, ms since the epoch.
    expires_ms: u64,
    messages: VecDeque<PushMessage>,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            last_id: 0,
            epoch: 0,
            expires_ms: 0,
            messages: VecDeque::new(),
        }
    }

    fn drop_expired(&mut self, now: u64, ttl: u64) {
        while self
            .messages
            .front()
            .is_some_and(|m| m.time_ms.saturating_add(ttl) <= now)
        {
            self.messages.pop_front();
        }
    }

    fn info(&mut self, channel: &str, now: u64, ttl: u64) -> ChannelInfo {
        self.drop_expired(now, ttl);
        ChannelInfo {
            channel: channel.to_owned(),
            published_messages: self.last_id,
            stored_messages: self.messages.len() as u64,
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> MemoryStore {
        MemoryStore {
            config,
            channels: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
        }
    }

    fn ttl(&self) -> u64 {
        ms(self.config.message_ttl)
    }

    /// The live entry of a channel; an expired one is dropped first.
    fn live<'a>(
        map: &'a mut HashMap<String, Entry>,
        channel: &str,
        now: u64,
    ) -> Option<&'a mut Entry> {
        if map.get(channel).is_some_and(|e| e.expires_ms <= now) {
            map.remove(channel);
        }
        map.get_mut(channel)
    }

    /// The live entry of a channel, created (or started afresh, if it expired) when needed.
    fn fresh<'a>(map: &'a mut HashMap<String, Entry>, channel: &str, now: u64) -> &'a mut Entry {
        let entry = map.entry(channel.to_owned()).or_insert_with(Entry::new);
        if entry.expires_ms <= now {
            *entry = Entry::new();
        }
        entry
    }

    /// Drops the expired entries; how many.
    fn purge_expired(map: &mut HashMap<String, Entry>, now: u64) -> u64 {
        let before = map.len();
        map.retain(|_, e| e.expires_ms > now);
        (before - map.len()) as u64
    }

    /// Entries held, expired ones not purged yet included (the tests watch the purge with it).
    pub fn entries(&self) -> usize {
        self.channels.lock().len()
    }
}

#[async_trait]
impl HistoryStore for MemoryStore {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    async fn publish(&self, channel: &str, draft: Draft<'_>) -> Result<Published> {
        let now = now_ms();
        let ttl = self.ttl();
        let keep = self.config.keep;
        let mut map = self.channels.lock();
        let entry = Self::fresh(&mut map, channel, now);
        if entry.last_id == 0 {
            entry.epoch = draft.time_ms.max(1);
        }
        entry.last_id += 1;
        if keep > 0 {
            entry.messages.push_back(PushMessage {
                id: entry.last_id,
                channel: channel.to_owned(),
                text: draft.text.to_owned(),
                time_ms: draft.time_ms,
                event_type: draft.event_type.map(str::to_owned),
                epoch: entry.epoch,
            });
            while entry.messages.len() > keep {
                entry.messages.pop_front();
            }
            entry.drop_expired(now, ttl);
        }
        entry.expires_ms = entry
            .expires_ms
            .max(now.saturating_add(ms(self.config.publish_lifetime())));
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(Published {
            id: entry.last_id,
            epoch: entry.epoch,
            stored: entry.messages.len() as u64,
        })
    }

    async fn read(&self, channel: &str, read: Read) -> Result<History> {
        let now = now_ms();
        let ttl = self.ttl();
        let mut map = self.channels.lock();
        let Some(entry) = Self::live(&mut map, channel, now) else {
            return Ok(History::default());
        };
        entry.drop_expired(now, ttl);
        let messages = match read {
            Read::Since(after) => entry
                .messages
                .iter()
                .filter(|m| m.id > after)
                .cloned()
                .collect(),
            Read::Last(n) => {
                let skip = entry.messages.len().saturating_sub(n);
                entry.messages.iter().skip(skip).cloned().collect()
            }
            Read::Nothing => Vec::new(),
        };
        Ok(History {
            last_id: entry.last_id,
            epoch: entry.epoch,
            messages,
        })
    }

    async fn touch(&self, channels: &[String]) -> Result<()> {
        let now = now_ms();
        let until = now.saturating_add(ms(self.config.channel_ttl));
        let mut map = self.channels.lock();
        for channel in channels {
            let e = Self::fresh(&mut map, channel, now);
            e.expires_ms = e.expires_ms.max(until);
        }
        Ok(())
    }

    async fn delete(&self, channel: &str) -> Result<bool> {
        let now = now_ms();
        let mut map = self.channels.lock();
        Ok(map.remove(channel).is_some_and(|e| e.expires_ms > now))
    }

    async fn exists(&self, channel: &str) -> Result<bool> {
        let now = now_ms();
        let mut map = self.channels.lock();
        Ok(Self::live(&mut map, channel, now).is_some())
    }

    async fn channel_count(&self) -> Result<u64> {
        let mut map = self.channels.lock();
        Self::purge_expired(&mut map, now_ms());
        Ok(map.len() as u64)
    }

    async fn channels(&self, prefix: &str) -> Result<Vec<ChannelInfo>> {
        let now = now_ms();
        let ttl = self.ttl();
        let mut map = self.channels.lock();
        Self::purge_expired(&mut map, now);
        let mut out: Vec<ChannelInfo> = map
            .iter_mut()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, e)| e.info(name, now, ttl))
            .collect();
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        Ok(out)
    }

    async fn info(&self, channel: &str) -> Result<Option<ChannelInfo>> {
        let now = now_ms();
        let ttl = self.ttl();
        let mut map = self.channels.lock();
        Ok(Self::live(&mut map, channel, now).map(|e| e.info(channel, now, ttl)))
    }

    async fn published_total(&self) -> Result<u64> {
        Ok(self.published.load(Ordering::Relaxed))
    }

    async fn purge(&self) -> Result<u64> {
        let mut map = self.channels.lock();
        Ok(Self::purge_expired(&mut map, now_ms()))
    }
}
