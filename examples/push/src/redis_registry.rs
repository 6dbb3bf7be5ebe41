//! The channel registry in Redis, shared by every gateway on that Redis.
//!
//! Keys (all under one prefix, `switchboard-push:` by default; nothing else touches them):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}channels` | sorted set | member = channel, score = when it is forgotten (ms) |
//! | `{prefix}counts` | hash | channel → messages published to it since it became known |
//! | `{prefix}published` | string | messages published through this Redis, ever |
//!
//! Each change is one Lua script, so two gateways never count one message twice nor revive a
//! forgotten channel's count. The channel's messages and ids are not here: they are the
//! layer's group history.
//!
//! This registry talks to Redis with the `redis` crate directly (one multiplexed
//! `ConnectionManager`, which reconnects with backoff): it works whichever layer the gateway
//! runs on. A call made while Redis is away fails, and the request that needed it gets a 503.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use switchboard::{Error, Result};

use super::registry::{Known, Registry, RegistryConfig, ms, now_ms};

/// The key prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "switchboard-push:";

/// The channel registry in Redis.
pub struct RedisRegistry {
    config: RegistryConfig,
    conn: ConnectionManager,
    prefix: String,
    publish: Script,
    touch: Script,
    delete: Script,
    purge: Script,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("config", &self.config)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_err(e: redis::RedisError) -> Error {
    Error::other(format!("channel registry (redis): {e}"))
}

/// Registers `ch` until `until_ms`; a channel whose time was up starts counting again.
const REGISTER: &str = r#"
local function register(registry, counts, ch, now, until_ms)
  local cur = tonumber(redis.call('ZSCORE', registry, ch) or '0')
  if cur <= now then redis.call('HDEL', counts, ch) end
  if cur < until_ms then redis.call('ZADD', registry, until_ms, ch) end
end
"#;

/// KEYS: registry, counts, total. ARGV: channel, now_ms, lifetime_ms. Returns the count.
const PUBLISH: &str = r#"
local now = tonumber(ARGV[2])
register(KEYS[1], KEYS[2], ARGV[1], now, now + tonumber(ARGV[3]))
redis.call('INCR', KEYS[3])
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"#;

/// KEYS: registry, counts. ARGV: now_ms, channel_ttl_ms, channels…
const TOUCH: &str = r#"
local now = tonumber(ARGV[1])
for i = 3, #ARGV do register(KEYS[1], KEYS[2], ARGV[i], now, now + tonumber(ARGV[2])) end
return 0
"#;

/// KEYS: registry, counts. ARGV: channel, now_ms. Returns 1 if the channel was known.
const DELETE: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 1 end
return 0
"#;

/// KEYS: registry, counts. ARGV: now_ms. Forgets the channels whose time is up; how many.
const PURGE: &str = r#"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, ch in ipairs(gone) do redis.call('HDEL', KEYS[2], ch) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return #gone
"#;

/// How many channels one `HMGET` covers.
const BATCH: usize = 256;

impl RedisRegistry {
    /// Connects to Redis at `url`; keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str, config: RegistryConfig) -> Result<Self> {
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
        Ok(RedisRegistry {
            config,
            conn,
            prefix: prefix.to_owned(),
            publish: Script::new(&format!("{REGISTER}{PUBLISH}")),
            touch: Script::new(&format!("{REGISTER}{TOUCH}")),
            delete: Script::new(DELETE),
            purge: Script::new(PURGE),
        })
    }

    fn registry_key(&self) -> String {
        format!("{}channels", self.prefix)
    }

    fn counts_key(&self) -> String {
        format!("{}counts", self.prefix)
    }

    fn total_key(&self) -> String {
        format!("{}published", self.prefix)
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
}

#[async_trait]
impl Registry for RedisRegistry {
    fn config(&self) -> &RegistryConfig {
        &self.config
    }

    async fn published(&self, channel: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        self.publish
            .key(self.registry_key())
            .key(self.counts_key())
            .key(self.total_key())
            .arg(channel)
            .arg(now_ms())
            .arg(ms(self.config.publish_lifetime).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)
    }

    async fn touch(&self, channels: &[String]) -> Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut call = self.touch.prepare_invoke();
        call.key(self.registry_key()).key(self.counts_key());
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
            .key(self.registry_key())
            .key(self.counts_key())
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
        self.purge().await?;
        let mut conn = self.conn.clone();
        conn.zcard(self.registry_key()).await.map_err(redis_err)
    }

    async fn channels(&self, prefix: &str) -> Result<Vec<Known>> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = conn
            .zrangebyscore(self.registry_key(), format!("({}", now_ms()), "+inf")
            .await
            .map_err(redis_err)?;
        names.retain(|n| n.starts_with(prefix));
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for batch in names.chunks(BATCH) {
            let counts: Vec<Option<u64>> = redis::cmd("HMGET")
                .arg(self.counts_key())
                .arg(batch)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            out.extend(batch.iter().zip(counts).map(|(ch, n)| Known {
                channel: ch.clone(),
                published: n.unwrap_or(0),
            }));
        }
        Ok(out)
    }

    async fn info(&self, channel: &str) -> Result<Option<Known>> {
        let mut conn = self.conn.clone();
        let (score, count): (Option<f64>, Option<u64>) = redis::pipe()
            .zscore(self.registry_key(), channel)
            .hget(self.counts_key(), channel)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(score.filter(|s| *s > now_ms() as f64).map(|_| Known {
            channel: channel.to_owned(),
            published: count.unwrap_or(0),
        }))
    }

    async fn published_total(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = conn.get(self.total_key()).await.map_err(redis_err)?;
        Ok(n.unwrap_or(0))
    }

    async fn purge(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        self.purge
            .key(self.registry_key())
            .key(self.counts_key())
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)
    }
}
