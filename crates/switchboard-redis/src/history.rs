//! Group history on Redis ([`LayerConfig::group_history`](switchboard_core::LayerConfig::group_history)),
//! beside channels_redis's keys, on the host of the group's channel:
//!
//! - `PREFIX:history:<group>`: a hash with the history's `epoch`, the last offset given out
//!   (`top`) and the `era` it was made in;
//! - `PREFIX:history:<group>:log`: a Stream of the last `size` messages, entry IDs `0-<offset>`,
//!   fields `t` (Redis's clock, in ms) and `p` (the bytes that were published);
//! - `PREFIX:history-era`: one value per host; a history made in another era is forgotten
//!   (new epoch). A process that sees its host's master move (a Sentinel failover, where the
//!   new master may lack the last writes) replaces the era it knew, so every history on that
//!   host starts a new epoch.
//!
//! A send numbers, stores and publishes the message in one script, so offsets follow the order
//! of publication whichever process sends. Both keys expire `ttl` after the group's last send:
//! a history nobody sent to for that long is forgotten, and its next message starts a new
//! epoch, as in memory.

use std::sync::LazyLock;

use parking_lot::Mutex;
use redis::Script;
use redis::Value as RValue;
use switchboard_core::message::MessageError;
use switchboard_core::{HistoryConfig, LayerError, Position, Recovery, Result};

use crate::codec::{Codec, EncodedFields};
use crate::conn::Host;

/// Numbers, keeps and publishes one message. KEYS: meta, log, era. ARGV: Redis channel, the
/// message's head (`Codec::encode_positioned_head`), candidate epoch, size, ttl (ms),
/// candidate era. Returns {position, era}.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local function mpstr(s)
    if #s < 32 then return string.char(0xa0 + #s) .. s end
    return string.char(0xd9, #s) .. s
end
local era = redis.call('GET', KEYS[3])
if not era then
    era = ARGV[6]
    redis.call('SET', KEYS[3], era)
end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'era')
local epoch = meta[1]
if not epoch or meta[2] ~= era then
    epoch = ARGV[3]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'era', era, 'top', 0)
end
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
local pos = epoch .. ':' .. top
local payload = ARGV[2] .. mpstr(pos)
if tonumber(ARGV[4]) > 0 then
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. top, 't', now, 'p', payload)
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], payload)
return {pos, era}
",
    )
});

/// Reads what followed a position. KEYS: meta, log, era. ARGV: candidate epoch, candidate era,
/// the position's epoch ('' for none), its offset, ttl (ms), size. Makes the history (offset 0
/// of a new epoch) if there is none. Returns {epoch, top, now (ms), era, then id, t, payload of
/// each entry after the offset when the epoch is the history's}.
static SINCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local era = redis.call('GET', KEYS[3])
if not era then
    era = ARGV[2]
    redis.call('SET', KEYS[3], era)
end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'era', 'top')
local epoch, top = meta[1], tonumber(meta[3])
if not epoch or meta[2] ~= era then
    epoch, top = ARGV[1], 0
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'era', era, 'top', 0)
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local t = redis.call('TIME')
local out = {epoch, top, t[1] * 1000 + math.floor(t[2] / 1000), era}
if ARGV[3] == epoch then
    local since = tonumber(ARGV[4])
    if since < top then
        local entries = redis.call('XRANGE', KEYS[2], '0-' .. (since + 1), '+', 'COUNT', ARGV[6])
        for _, e in ipairs(entries) do
            local f = e[2]
            out[#out + 1] = e[1]
            out[#out + 1] = f[2]
            out[#out + 1] = f[4]
        end
    end
end
return out
",
    )
});

/// Replaces a host's era if it is still the one this process knew. KEYS: era. ARGV: old, new.
static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2])
    return 1
end
return 0
",
    )
});

/// A layer's history keys and the era it last saw on each host.
#[derive(Debug)]
pub(crate) struct Histories {
    prefix: String,
    eras: Vec<Mutex<Option<String>>>,
}

impl Histories {
    pub(crate) fn new(prefix: &str, hosts: usize) -> Histories {
        Histories {
            prefix: prefix.to_owned(),
            eras: (0..hosts).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn keys(&self, group: &str) -> [String; 3] {
        [
            format!("{}:history:{group}", self.prefix),
            format!("{}:history:{group}:log", self.prefix),
            format!("{}:history-era", self.prefix),
        ]
    }

    /// The pattern of every history key of the layer (for `flush`).
    pub(crate) fn pattern(&self) -> String {
        format!("{}:history*", crate::conn::glob_escape(&self.prefix))
    }

    fn saw_era(&self, h: usize, era: &RValue) {
        if let Some(era) = text(era)
            && let Some(slot) = self.eras.get(h)
        {
            *slot.lock() = Some(era);
        }
    }

    /// Numbers `fields` in `group`'s history, keeps them and publishes them on `channel`, on
    /// host `h`. Returns the message's position.
    #[allow(clippy::too_many_arguments)] // ok: one call site per layer, each argument named there
    pub(crate) async fn publish(
        &self,
        host: &Host,
        h: usize,
        codec: &Codec,
        group: &str,
        channel: &str,
        fields: &EncodedFields,
        cfg: HistoryConfig,
    ) -> Result<Position> {
        let head = codec
            .encode_positioned_head(fields)
            .map_err(|e| MessageError::Serialize(e.0))?;
        let [meta, log, era] = self.keys(group);
        let mut c = host.conn();
        let r: Vec<RValue> = PUBLISH
            .key(meta)
            .key(log)
            .key(era)
            .arg(channel)
            .arg(head)
            .arg(Position::new_epoch())
            .arg(cfg.size)
            .arg(ttl_ms(cfg))
            .arg(Position::new_epoch())
            .invoke_async(&mut c)
            .await
            .map_err(|e| host.error(e))?;
        if let Some(e) = r.get(1) {
            self.saw_era(h, e);
        }
        r.first()
            .and_then(text)
            .and_then(|p| p.parse::<Position>().ok())
            .ok_or_else(|| LayerError::backend_msg("the history script answered no position"))
    }

    /// What `group`'s history holds after `since` (see [`Recovery`]); makes the history if there
    /// is none.
    pub(crate) async fn since(
        &self,
        host: &Host,
        h: usize,
        codec: &Codec,
        group: &str,
        since: Option<&Position>,
        cfg: HistoryConfig,
    ) -> Result<Recovery> {
        let [meta, log, era] = self.keys(group);
        let mut c = host.conn();
        let r: Vec<RValue> = SINCE
            .key(meta)
            .key(log)
            .key(era)
            .arg(Position::new_epoch())
            .arg(Position::new_epoch())
            .arg(since.map_or("", Position::epoch))
            .arg(since.map_or(0, Position::offset))
            .arg(ttl_ms(cfg))
            .arg(cfg.size.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(|e| host.error(e))?;
        let bad = || LayerError::backend_msg("the history script answered in an unknown shape");
        let (Some(epoch), Some(top), Some(now)) = (
            r.first().and_then(text),
            r.get(1).and_then(int),
            r.get(2).and_then(int),
        ) else {
            return Err(bad());
        };
        if let Some(e) = r.get(3) {
            self.saw_era(h, e);
        }
        let position = Position::new(&epoch, top).map_err(|_| bad())?;
        let Some(since) = since else {
            return Ok(Recovery::new(true, Vec::new(), position));
        };
        if since.epoch() != epoch || since.offset() > top {
            return Ok(Recovery::new(false, Vec::new(), position));
        }
        let cutoff = now.saturating_sub(ttl_ms(cfg));
        let mut messages = Vec::new();
        let mut expected = since.offset() + 1;
        for entry in r.get(4..).unwrap_or_default().chunks_exact(3) {
            let offset = entry[0]
                .as_str_like()
                .and_then(|id| id.strip_prefix("0-")?.parse::<u64>().ok());
            let at = int(&entry[1]);
            if offset != Some(expected) || at.is_none_or(|t| t < cutoff) {
                // Trimmed or expired: what followed `since` is not all there.
                return Ok(Recovery::new(false, Vec::new(), position));
            }
            let RValue::BulkString(bytes) = &entry[2] else {
                return Err(bad());
            };
            match codec.decode(bytes) {
                Ok((m, _)) => messages.push(m),
                Err(e) => {
                    tracing::warn!(group, offset = expected, error = %e, "a history entry does not decode; not recovered");
                    return Ok(Recovery::new(false, Vec::new(), position));
                }
            }
            expected += 1;
        }
        let recovered = expected == top + 1;
        if !recovered {
            messages.clear();
        }
        Ok(Recovery::new(recovered, messages, position))
    }

    /// After host `h`'s master moved: a new era there, so every history on it starts a new
    /// epoch (the new master may lack the last messages; their offsets would be given out
    /// again). Only the first process to notice replaces the era; the others find it replaced.
    pub(crate) async fn failed_over(&self, host: &Host, h: usize) {
        let Some(old) = self.eras.get(h).and_then(|e| e.lock().clone()) else {
            return; // this process never used a history there
        };
        let mut c = host.conn();
        let r: redis::RedisResult<i64> = ROTATE
            .key(format!("{}:history-era", self.prefix))
            .arg(&old)
            .arg(Position::new_epoch())
            .invoke_async(&mut c)
            .await;
        match r {
            Ok(1) => {
                tracing::info!(host = %host.name, "redis failed over: group histories there start new epochs")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(host = %host.name, error = %e, "could not start new history epochs after a failover")
            }
        }
    }
}

fn ttl_ms(cfg: HistoryConfig) -> u64 {
    u64::try_from(cfg.ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn text(v: &RValue) -> Option<String> {
    v.as_str_like().map(str::to_owned)
}

fn int(v: &RValue) -> Option<u64> {
    match v {
        RValue::Int(i) => u64::try_from(*i).ok(),
        other => other.as_str_like()?.parse().ok(),
    }
}

/// Reading a Redis reply as text.
trait StrLike {
    fn as_str_like(&self) -> Option<&str>;
}

impl StrLike for RValue {
    fn as_str_like(&self) -> Option<&str> {
        match self {
            RValue::BulkString(b) => std::str::from_utf8(b).ok(),
            RValue::SimpleString(s) => Some(s),
            _ => None,
        }
    }
}
