//! History in Redis, shared by every gateway on that Redis.
//!
//! Keys (all under one prefix, `switchboard-push:` by default, nothing else touches them):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}ch:{channel}` | hash | `id`: the channel's last id (`HINCRBY`); `epoch`: when id 1 was given; expires with the channel |
//! | `{prefix}msgs:{channel}` | sorted set | stored messages, score = id, member = `id:time_ms:json`; expires `message_ttl` after the last publish |
//! | `{prefix}channels` | sorted set | the registry: member = channel, score = when it is forgotten (ms) |
//! | `{prefix}published` | string | messages published through this Redis, ever |
//!
//! A publish is one Lua script (take the next id, store, trim to N and drop expired messages,
//! extend the registry entry), so two gateways publishing to one channel never hand out one id
//! twice nor store out of order. Reads filter expired messages on the way out; the scripts drop
//! them from the head of the set as they pass.
//!
//! This store talks to Redis with the `redis` crate directly (one multiplexed
//! `ConnectionManager`, which reconnects with backoff): it does not depend on the channel layer,
//! so it works whichever layer the gateway runs on. A call made while Redis is away fails, and
//! the request that needed it gets a 503.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use switchboard::{Error, Result};

use super::store::{
    ChannelInfo, Draft, History, HistoryStore, Published, PushMessage, Read, StoreConfig, ms,
    now_ms,
};

/// The key prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "switchboard-push:";

/// History in Redis.
pub struct RedisStore {
    config: StoreConfig,
    conn: ConnectionManager,
    prefix: String,
    publish: Script,
    touch: Script,
    delete: Script,
    info: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_err(e: redis::RedisError) -> Error {
    Error::other(format!("history store (redis): {e}"))
}

/// Drops expired messages from the head of the set `KEYS[k]`; `cutoff` is the newest publish
/// time that counts as expired.
const TRIM_EXPIRED: &str = r#"
local function trim_expired(key, cutoff)
  while true do
    local head = redis.call('ZRANGE', key, 0, 0)
    if #head == 0 then return end
    local t = tonumber(string.match(head[1], '^%d+:(%d+):'))
    if t == nil or t > cutoff then return end
    redis.call('ZREMRANGEBYRANK', key, 0, 0)
  end
end
"#;

/// KEYS: channel hash, msgs, registry, total. ARGV: channel, now_ms, keep, message_ttl_ms,
/// lifetime_ms, json. Returns {id, stored, epoch}.
const PUBLISH: &str = r#"
local now = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local lifetime = tonumber(ARGV[5])
local id = redis.call('HINCRBY', KEYS[1], 'id', 1)
if id == 1 then redis.call('HSET', KEYS[1], 'epoch', ARGV[2]) end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if redis.call('PTTL', KEYS[1]) < lifetime then redis.call('PEXPIRE', KEYS[1], lifetime) end
redis.call('INCR', KEYS[4])
local stored = 0
if keep > 0 then
  redis.call('ZADD', KEYS[2], id, id .. ':' .. ARGV[2] .. ':' .. ARGV[6])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -keep - 1)
  trim_expired(KEYS[2], now - ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  stored = redis.call('ZCARD', KEYS[2])
end
local until_ms = now + lifetime
local cur = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1]) or '0')
if cur < until_ms then redis.call('ZADD', KEYS[3], until_ms, ARGV[1]) end
return {id, stored, epoch}
"#;

/// KEYS: registry, then one channel hash per channel. ARGV: now_ms, channel_ttl_ms, channels…
const TOUCH: &str = r#"
local ttl = tonumber(ARGV[2])
local until_ms = tonumber(ARGV[1]) + ttl
for i = 3, #ARGV do
  local cur = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0')
  if cur < until_ms then redis.call('ZADD', KEYS[1], until_ms, ARGV[i]) end
  local pttl = redis.call('PTTL', KEYS[i - 1])
  if pttl >= 0 and pttl < ttl then redis.call('PEXPIRE', KEYS[i - 1], ttl) end
end
return 0
"#;

/// KEYS: channel hash, msgs, registry. ARGV: channel, now_ms. Returns 1 if the channel was known.
const DELETE: &str = r#"
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if (score and tonumber(score) > tonumber(ARGV[2])) or n > 0 then return 1 end
return 0
"#;

/// KEYS: (channel hash, msgs) pairs. ARGV: cutoff_ms. Returns {last_id, stored, …} per pair.
const INFO: &str = r#"
local cutoff = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[i], 'id') or '0')
  trim_expired(KEYS[i + 1], cutoff)
  out[#out + 1] = redis.call('ZCARD', KEYS[i + 1])
end
return out
"#;

/// How many channels one `INFO` script call covers.
const INFO_BATCH: usize = 256;

/// The stored form of a message, after `id:time_ms:`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Body<'a> {
    text: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<std::borrow::Cow<'a, str>>,
}

impl RedisStore {
    /// Connects to Redis at `url`; keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str, config: StoreConfig) -> Result<Self> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(redis_err)?;
        Ok(RedisStore {
            config,
            conn,
            prefix: prefix.to_owned(),
            publish: Script::new(&format!("{TRIM_EXPIRED}{PUBLISH}")),
            touch: Script::new(TOUCH),
            delete: Script::new(DELETE),
            info: Script::new(&format!("{TRIM_EXPIRED}{INFO}")),
        })
    }

    fn channel_key(&self, channel: &str) -> String {
        format!("{}ch:{channel}", self.prefix)
    }

    fn msgs_key(&self, channel: &str) -> String {
        format!("{}msgs:{channel}", self.prefix)
    }

    fn registry_key(&self) -> String {
        format!("{}channels", self.prefix)
    }

    fn total_key(&self) -> String {
        format!("{}published", self.prefix)
    }

    fn cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(ms(self.config.message_ttl))
    }

    /// Deletes every key under the prefix (tests use it to clean up).
    pub async fn flush(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = {
            let mut iter = conn
                .scan_match::<_, String>(&pattern)
                .await
                .map_err(redis_err)?;
            let mut keys = Vec::new();
            while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                keys.push(k.map_err(redis_err)?);
            }
            keys
        };
        for chunk in keys.chunks(500) {
            let _: () = conn.del(chunk).await.map_err(redis_err)?;
        }
        Ok(())
    }

    fn decode(&self, channel: &str, epoch: u64, member: &str, cutoff: u64) -> Option<PushMessage> {
        let mut parts = member.splitn(3, ':');
        let id = parts.next()?.parse().ok()?;
        let time_ms: u64 = parts.next()?.parse().ok()?;
        if time_ms <= cutoff {
            return None;
        }
        let body: Body<'_> = match serde_json::from_str(parts.next()?) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%channel, id, error = %e, "unreadable stored message skipped");
                return None;
            }
        };
        Some(PushMessage {
            id,
            channel: channel.to_owned(),
            text: body.text.into_owned(),
            time_ms,
            event_type: body.event_type.map(|e| e.into_owned()),
            epoch,
        })
    }

    async fn infos(&self, channels: &[String]) -> Result<Vec<ChannelInfo>> {
        let mut out = Vec::with_capacity(channels.len());
        let cutoff = self.cutoff(now_ms());
        let mut conn = self.conn.clone();
        for batch in channels.chunks(INFO_BATCH) {
            let mut call = self.info.prepare_invoke();
            for ch in batch {
                call.key(self.channel_key(ch)).key(self.msgs_key(ch));
            }
            call.arg(cutoff);
            let figures: Vec<u64> = call.invoke_async(&mut conn).await.map_err(redis_err)?;
            for (ch, pair) in batch.iter().zip(figures.chunks(2)) {
                if let [published, stored] = *pair {
                    out.push(ChannelInfo {
                        channel: ch.clone(),
                        published_messages: published,
                        stored_messages: stored,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl HistoryStore for RedisStore {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    async fn publish(&self, channel: &str, draft: Draft<'_>) -> Result<Published> {
        let body = serde_json::to_string(&Body {
            text: draft.text.into(),
            event_type: draft.event_type.map(Into::into),
        })
        .map_err(Error::other)?;
        let mut conn = self.conn.clone();
        let (id, stored, epoch): (u64, u64, u64) = self
            .publish
            .key(self.channel_key(channel))
            .key(self.msgs_key(channel))
            .key(self.registry_key())
            .key(self.total_key())
            .arg(channel)
            .arg(draft.time_ms)
            .arg(self.config.keep)
            .arg(ms(self.config.message_ttl).max(1))
            .arg(ms(self.config.publish_lifetime()).max(1))
            .arg(body)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(Published { id, stored, epoch })
    }

    async fn read(&self, channel: &str, read: Read) -> Result<History> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.channel_key(channel))
            .arg("id")
            .arg("epoch");
        let msgs = self.msgs_key(channel);
        match read {
            Read::Since(after) => {
                pipe.zrangebyscore(&msgs, format!("({after}"), "+inf");
            }
            Read::Last(n) if n > 0 => {
                pipe.zrange(&msgs, -(n.min(isize::MAX as usize) as isize), -1);
            }
            Read::Last(_) | Read::Nothing => {
                pipe.zrange(&msgs, 1, 0); // always empty: keeps the reply's shape
            }
        }
        let ((last_id, epoch), members): ((Option<u64>, Option<u64>), Vec<String>) =
            pipe.query_async(&mut conn).await.map_err(redis_err)?;
        let cutoff = self.cutoff(now_ms());
        let epoch = epoch.unwrap_or(0);
        Ok(History {
            last_id: last_id.unwrap_or(0),
            epoch,
            messages: members
                .iter()
                .filter_map(|m| self.decode(channel, epoch, m, cutoff))
                .collect(),
        })
    }

    async fn touch(&self, channels: &[String]) -> Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut call = self.touch.prepare_invoke();
        call.key(self.registry_key());
        for ch in channels {
            call.key(self.channel_key(ch));
        }
        call.arg(now_ms()).arg(ms(self.config.channel_ttl).max(1));
        for ch in channels {
            call.arg(ch);
        }
        let _: i64 = call.invoke_async(&mut conn).await.map_err(redis_err)?;
        Ok(())
    }

    async fn delete(&self, channel: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let known: i64 = self
            .delete
            .key(self.channel_key(channel))
            .key(self.msgs_key(channel))
            .key(self.registry_key())
            .arg(channel)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(known == 1)
    }

    async fn exists(&self, channel: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let score: Option<f64> = conn
            .zscore(self.registry_key(), channel)
            .await
            .map_err(redis_err)?;
        Ok(score.is_some_and(|s| s > now_ms() as f64))
    }

    async fn channel_count(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let registry = self.registry_key();
        let (_, n): (i64, u64) = redis::pipe()
            .atomic()
            .zrembyscore(&registry, "-inf", now_ms())
            .zcard(&registry)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(n)
    }

    async fn channels(&self, prefix: &str) -> Result<Vec<ChannelInfo>> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = conn
            .zrangebyscore(self.registry_key(), format!("({}", now_ms()), "+inf")
            .await
            .map_err(redis_err)?;
        names.retain(|n| n.starts_with(prefix));
        names.sort();
        self.infos(&names).await
    }

    async fn info(&self, channel: &str) -> Result<Option<ChannelInfo>> {
        if !self.exists(channel).await? {
            return Ok(None);
        }
        Ok(self.infos(&[channel.to_owned()]).await?.into_iter().next())
    }

    async fn published_total(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = conn.get(self.total_key()).await.map_err(redis_err)?;
        Ok(n.unwrap_or(0))
    }

    /// Trims the registry; the channels' own keys expire by themselves in Redis.
    async fn purge(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        conn.zrembyscore(self.registry_key(), "-inf", now_ms())
            .await
            .map_err(redis_err)
    }
}
