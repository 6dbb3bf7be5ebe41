//! The channel registry: which channels exist, and how many messages each was sent — what
//! `/stats` and `--max-channels` need. Ids and stored messages are not here: they are the
//! channel layer's group history (see `history.rs`), one store for the live path and the past.
//!
//! A channel is known from its first publish or subscription until `channel_ttl` after the
//! last of them (subscribed channels are touched again while their subscribers stay), and at
//! least as long as it may hold stored messages (`message_ttl` after a publish, when messages
//! are kept). A channel's count starts again at 0 when it is forgotten or deleted.
//! [`MemoryRegistry`] serves one process; `RedisRegistry` (`redis_registry.rs`) keeps the same
//! in Redis, so that every gateway on that Redis counts the same channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use switchboard::Result;

/// The attribute [`Registry`] implementations need (it is a `dyn` trait).
pub use async_trait::async_trait;

/// How long channels stay known.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// How long a channel nobody publishes to or subscribes to stays known.
    pub channel_ttl: Duration,
    /// How long a channel stays known after a publish: `channel_ttl`, or longer when messages
    /// are kept for longer (a channel outlives what it stores).
    pub publish_lifetime: Duration,
}

/// A channel's entry: its id and the messages published to it since it became known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// The channel id.
    pub channel: String,
    /// Messages published to it since it became known.
    pub published: u64,
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

/// Where the channel registry lives.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The registry's settings.
    fn config(&self) -> &RegistryConfig;

    /// Counts a message published to the channel and keeps it known for
    /// [`publish_lifetime`](RegistryConfig::publish_lifetime); the channel's count after it.
    async fn published(&self, channel: &str) -> Result<u64>;

    /// Registers the channels (or keeps them registered) for `channel_ttl`: they have
    /// subscribers.
    async fn touch(&self, channels: &[String]) -> Result<()>;

    /// Forgets the channel. Whether it was known.
    async fn delete(&self, channel: &str) -> Result<bool>;

    /// Whether the channel is known.
    async fn exists(&self, channel: &str) -> Result<bool>;

    /// How many channels are known.
    async fn channel_count(&self) -> Result<u64>;

    /// The known channels whose id starts with `prefix` ("" for all), sorted by id.
    async fn channels(&self, prefix: &str) -> Result<Vec<Known>>;

    /// One channel's entry, if it is known.
    async fn info(&self, channel: &str) -> Result<Option<Known>>;

    /// Messages published since the registry began (for Redis: by every gateway on it).
    async fn published_total(&self) -> Result<u64>;

    /// Forgets every channel whose time is up; how many it forgot. The gateway calls it on each
    /// keeper tick, so the names anonymous subscribers make up do not pile up, whether or not
    /// anyone reads `/stats`.
    async fn purge(&self) -> Result<u64>;
}

/// The registry in this process's memory.
#[derive(Debug)]
pub struct MemoryRegistry {
    config: RegistryConfig,
    channels: Mutex<HashMap<String, Entry>>,
    published: AtomicU64,
}

#[derive(Debug, Default)]
struct Entry {
    published: u64,
    /// When the channel is forgotten, ms since the epoch.
    expires_ms: u64,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> MemoryRegistry {
        MemoryRegistry {
            config,
            channels: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
        }
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
        let entry = map.entry(channel.to_owned()).or_default();
        if entry.expires_ms <= now {
            *entry = Entry::default();
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

fn known(channel: &str, e: &Entry) -> Known {
    Known {
        channel: channel.to_owned(),
        published: e.published,
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn config(&self) -> &RegistryConfig {
        &self.config
    }

    async fn published(&self, channel: &str) -> Result<u64> {
        let now = now_ms();
        let mut map = self.channels.lock();
        let entry = Self::fresh(&mut map, channel, now);
        entry.published += 1;
        entry.expires_ms = entry
            .expires_ms
            .max(now.saturating_add(ms(self.config.publish_lifetime)));
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(entry.published)
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

    async fn channels(&self, prefix: &str) -> Result<Vec<Known>> {
        let mut map = self.channels.lock();
        Self::purge_expired(&mut map, now_ms());
        let mut out: Vec<Known> = map
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, e)| known(name, e))
            .collect();
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        Ok(out)
    }

    async fn info(&self, channel: &str) -> Result<Option<Known>> {
        let now = now_ms();
        let mut map = self.channels.lock();
        Ok(Self::live(&mut map, channel, now).map(|e| known(channel, e)))
    }

    async fn published_total(&self) -> Result<u64> {
        Ok(self.published.load(Ordering::Relaxed))
    }

    async fn purge(&self) -> Result<u64> {
        let mut map = self.channels.lock();
        Ok(Self::purge_expired(&mut map, now_ms()))
    }
}
