//! Presence on Redis, beside channels_redis's keys (Django neither reads nor writes them), on
//! the host of the group:
//!
//! - `PREFIX:presence:<group>`: a hash, channel name → the entry's JSON;
//! - `PREFIX:presence:<group>:exp`: a sorted set, channel name → when the entry expires (ms,
//!   Redis's clock).
//!
//! An add writes both and pushes both keys' expiry to `presence_ttl` from now, so a group whose
//! every process crashed vanishes whole; a listing drops the expired entries first; a count is
//! one `ZCOUNT` of the entries not expired.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;
use switchboard_core::{ChannelName, GroupName, PresenceEntry, Result};

use crate::conn::Host;

/// KEYS: hash, zset. ARGV: channel, entry JSON, ttl (ms). A refresh keeps the entry's first
/// `since_ms` (the JSON is the refresher's; Redis cannot parse it cheaply, so the caller's
/// subscription keeps `since_ms` the same across refreshes).
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
",
    )
});

/// KEYS: hash, zset. ARGV: channel.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
",
    )
});

/// KEYS: hash, zset. Drops expired entries (1,000 at a time), returns the hash's values.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
while true do
    local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
    if #gone == 0 then break end
    redis.call('HDEL', KEYS[1], unpack(gone))
    redis.call('ZREM', KEYS[2], unpack(gone))
end
return redis.call('HVALS', KEYS[1])
",
    )
});

/// KEYS: zset. The entries not expired.
static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
",
    )
});

/// A group's presence keys: `PREFIX:presence:<group>` and `…:exp`; with `tagged`, the group in
/// braces (`PREFIX:presence:{<group>}`), so that on a Redis Cluster both are in one slot.
pub(crate) fn keys(prefix: &str, group: &GroupName, tagged: bool) -> (String, String) {
    let g = if tagged {
        format!("{{{group}}}")
    } else {
        group.to_string()
    };
    (
        format!("{prefix}:presence:{g}"),
        format!("{prefix}:presence:{g}:exp"),
    )
}

/// The pattern of every presence key under `prefix` (for `flush`).
pub(crate) fn pattern(prefix: &str) -> String {
    format!("{}:presence:*", crate::conn::glob_escape(prefix))
}

fn ttl_ms(ttl: std::time::Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Adds or refreshes `entry` (on any connection: a host's, or a cluster's).
pub(crate) async fn add<C: ConnectionLike + Send>(
    c: &mut C,
    (hash, zset): (String, String),
    entry: &PresenceEntry,
    ttl: std::time::Duration,
) -> Result<redis::RedisResult<()>> {
    let json = entry.to_json()?;
    Ok(ADD
        .key(hash)
        .key(zset)
        .arg(entry.channel.as_str())
        .arg(json)
        .arg(ttl_ms(ttl))
        .invoke_async::<()>(c)
        .await)
}

pub(crate) async fn remove<C: ConnectionLike + Send>(
    c: &mut C,
    (hash, zset): (String, String),
    channel: &ChannelName,
) -> redis::RedisResult<()> {
    REMOVE
        .key(hash)
        .key(zset)
        .arg(channel.as_str())
        .invoke_async::<()>(c)
        .await
}

/// The entries; one that does not decode is skipped and logged.
pub(crate) async fn list<C: ConnectionLike + Send>(
    c: &mut C,
    (hash, zset): (String, String),
    group: &GroupName,
) -> redis::RedisResult<Vec<PresenceEntry>> {
    let values: Vec<Vec<u8>> = LIST.key(hash).key(zset).invoke_async(c).await?;
    let mut entries = Vec::with_capacity(values.len());
    for v in values {
        match PresenceEntry::from_json(&v) {
            Ok(e) => entries.push(e),
            Err(e) => {
                tracing::warn!(%group, error = %e, "skipping a presence entry that does not decode")
            }
        }
    }
    Ok(entries)
}

pub(crate) async fn count<C: ConnectionLike + Send>(
    c: &mut C,
    (_, zset): (String, String),
) -> redis::RedisResult<usize> {
    let n: i64 = COUNT.key(zset).invoke_async(c).await?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The presence operations of a layer on `Host`s (the core and pub/sub layers): on the host
/// that keeps `group`'s presence, within the layer's `command_timeout`.
pub(crate) mod on_host {
    use super::*;
    use crate::config::RedisConfig;
    use crate::conn::timed;

    pub(crate) async fn add(
        host: &Host,
        cfg: &RedisConfig,
        group: &GroupName,
        entry: &PresenceEntry,
    ) -> Result<()> {
        let mut c = host.conn();
        let keys = keys(&cfg.prefix, group, false);
        let add = super::add(&mut c, keys, entry, cfg.layer.presence_ttl);
        timed(cfg.command_timeout, add)
            .await??
            .map_err(|e| host.error(e))
    }

    pub(crate) async fn remove(
        host: &Host,
        cfg: &RedisConfig,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<()> {
        let mut c = host.conn();
        let remove = super::remove(&mut c, keys(&cfg.prefix, group, false), channel);
        timed(cfg.command_timeout, remove)
            .await?
            .map_err(|e| host.error(e))
    }

    pub(crate) async fn list(
        host: &Host,
        cfg: &RedisConfig,
        group: &GroupName,
    ) -> Result<Vec<PresenceEntry>> {
        let mut c = host.conn();
        let list = super::list(&mut c, keys(&cfg.prefix, group, false), group);
        timed(cfg.command_timeout, list)
            .await?
            .map_err(|e| host.error(e))
    }

    pub(crate) async fn count(host: &Host, cfg: &RedisConfig, group: &GroupName) -> Result<usize> {
        let mut c = host.conn();
        let count = super::count(&mut c, keys(&cfg.prefix, group, false));
        timed(cfg.command_timeout, count)
            .await?
            .map_err(|e| host.error(e))
    }
}
