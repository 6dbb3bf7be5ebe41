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

/// Lua every history script starts with: the era checked (KEYS[3], made from ARGV[2] if
/// missing), and the history (KEYS[1] the hash, KEYS[2] the Stream) made anew from ARGV[1] if
/// it is missing or from another era. Sets `era`, `epoch`, `top` (the last offset given out)
/// and `made` (whether it was made now).
const HISTORY: &str = r"
local era = redis.call('GET', KEYS[3])
if not era then
    era = ARGV[2]
    redis.call('SET', KEYS[3], era)
end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'era', 'top')
local epoch, top, made = meta[1], tonumber(meta[3]), false
if not epoch or meta[2] ~= era then
    epoch, top, made = ARGV[1], 0, true
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'era', era, 'top', 0)
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
";

/// Lua the sending scripts add after [`HISTORY`]: msgpack headers (`mpstr`, `map`, `array`)
/// and the next offset taken (`top`, `position`).
const NUMBER: &str = r"
local function be(n, bytes)
    local out = {}
    for i = bytes - 1, 0, -1 do out[#out + 1] = string.char(math.floor(n / 256 ^ i) % 256) end
    return table.concat(out)
end
local function mpstr(s)
    local n = #s
    if n < 32 then return string.char(0xa0 + n) .. s end
    if n < 256 then return string.char(0xd9, n) .. s end
    if n < 65536 then return string.char(0xda) .. be(n, 2) .. s end
    return string.char(0xdb) .. be(n, 4) .. s
end
local function header(n, fix, c16, c32)
    if n < 16 then return string.char(fix + n) end
    if n < 65536 then return string.char(c16) .. be(n, 2) end
    return string.char(c32) .. be(n, 4)
end
local function map(n) return header(n, 0x80, 0xde, 0xdf) end
local function array(n) return header(n, 0x90, 0xdc, 0xdd) end
top = redis.call('HINCRBY', KEYS[1], 'top', 1)
local position = epoch .. ':' .. top
";

/// Numbers, keeps and publishes one message (the pub/sub layer). KEYS: meta, log, era. ARGV:
/// candidate epoch, candidate era, Redis channel, the message's head
/// (`Codec::encode_positioned_head`), size, ttl (ms). Returns {position, era}.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HISTORY}{NUMBER}{}",
        r"
local payload = ARGV[4] .. mpstr(position)
if tonumber(ARGV[5]) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], '0-' .. top, 't', now_ms, 'p', payload)
    redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[3], payload)
return {position, era}
"
    ))
});

/// Reads what followed a position. KEYS: meta, log, era. ARGV: candidate epoch, candidate era,
/// the position's epoch ('' for none, '*' for everything held), its offset, ttl (ms), size. Makes the history (offset 0
/// of a new epoch) if there is none. Returns {epoch, top, now (ms), era, then id, t, payload of
/// each entry after the offset when the epoch is the history's}.
static SINCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HISTORY}{}",
        r"
if made then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
local out = {epoch, top, now_ms, era}
if ARGV[3] == epoch or ARGV[3] == '*' then
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
"
    ))
});

/// `RedisLayer`'s group send for a group with history, on a layer with one host: numbers the
/// message, keeps it, and adds it to the queue of every process with a member (and every
/// named channel member), as channels_redis's group send does — in one script, so that a
/// member who joined before the history was read gets the message live, and every queue gets
/// the messages of one group in offset order (each is scored after the queue's last message).
/// Lua writes the msgpack around the encoded fields: map, string and array headers.
///
/// The copy for a switchboard process's queue names the group instead of listing its channels
/// (see `layer/fanout.rs`), when the sender's read of the members gave that queue as many
/// channels as the script finds in it now: the sender passes, per queue, its channel count and
/// the encoded route (the group, the count, the digest of the names, which Lua cannot compute).
/// The receiver checks the digest against its own index of the group, as for any group route.
/// Otherwise, and for every other queue, the copy lists the channels.
///
/// KEYS: meta, log, era, group. ARGV: candidate epoch, candidate era, key prefix, random
/// prefix bytes, field count, field bytes, size, ttl (ms), capacity, expiry (s), queue TTL
/// (s), group expiry (s), '1' to drop stalled members, the number of routes, then for each
/// the queue's name part (up to and with its `!`), its channel count and the encoded route.
/// Returns {position, era, channels skipped because full, channels dropped as stalled,
/// members}. It touches queue keys it computes from the members (a single Redis,
/// never a cluster).
static CORE_GROUP_SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HISTORY}{NUMBER}{}",
        r"
local tail = mpstr('__switchboard_position__') .. mpstr(position)
local nf = tonumber(ARGV[5])
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if tonumber(ARGV[7]) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '0-' .. top, 't', now_ms,
        'p', ARGV[4] .. map(nf + 1) .. ARGV[6] .. tail)
    redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%.6f', now - tonumber(ARGV[12])))
local queues, order, total = {}, {}, 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    total = total + 1
    local bang = string.find(m, '!', 1, true)
    local q = bang and string.sub(m, 1, bang) or m
    if not queues[q] then
        queues[q] = { routed = bang ~= nil, channels = {} }
        order[#order + 1] = q
    end
    table.insert(queues[q].channels, m)
end
local routes = {}
for i = 0, tonumber(ARGV[14]) - 1 do
    local at = 15 + 3 * i
    routes[ARGV[at]] = { tonumber(ARGV[at + 1]), ARGV[at + 2] }
end
local cut = string.format('%.6f', now - tonumber(ARGV[10]))
local capacity, check = tonumber(ARGV[9]), ARGV[13] == '1'
local full, stalled = 0, {}
for _, q in ipairs(order) do
    local key, e = ARGV[3] .. q, queues[q]
    local expired = redis.call('ZCOUNT', key, '-inf', cut)
    if check and expired > 0 then
        for _, c in ipairs(e.channels) do stalled[#stalled + 1] = c end
    elseif redis.call('ZCARD', key) - expired < capacity then
        local body
        local route = routes[q]
        if e.routed and route and route[1] == #e.channels then
            body = map(nf + 2) .. ARGV[6] .. mpstr('__asgi_channel__') .. route[2] .. tail
        elseif e.routed then
            local names = {}
            for i, c in ipairs(e.channels) do names[i] = mpstr(c) end
            body = map(nf + 2) .. ARGV[6] .. mpstr('__asgi_channel__') .. array(#e.channels)
                .. table.concat(names) .. tail
        else
            body = map(nf + 1) .. ARGV[6] .. tail
        end
        local score = now
        local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
        if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 0.000001 end
        redis.call('ZADD', key, string.format('%.6f', score), ARGV[4] .. body)
        redis.call('EXPIRE', key, ARGV[11])
    else
        full = full + #e.channels
    end
    if expired > 0 then
        redis.call('ZREMRANGEBYSCORE', key, '-inf', cut)
    end
end
for i = 1, #stalled, 1000 do
    redis.call('ZREM', KEYS[4], unpack(stalled, i, math.min(i + 999, #stalled)))
end
return {position, era, full, #stalled, total}
"
    ))
});

/// What [`Histories::core_group_send`] needs of the layer.
pub(crate) struct CoreSend<'a> {
    pub(crate) host: &'a Host,
    pub(crate) group_key: &'a str,
    pub(crate) key_prefix: &'a str,
    pub(crate) capacity: usize,
    pub(crate) expiry_secs: f64,
    pub(crate) queue_ttl: u64,
    pub(crate) group_expiry_secs: f64,
    pub(crate) drop_stalled: bool,
    /// The switchboard processes' queues whose copy may name the group.
    pub(crate) routes: &'a [QueueRoute],
}

/// What [`Histories::core_group_send`] did.
pub(crate) struct CoreSent {
    pub(crate) position: Position,
    /// Channels skipped because their queue was full.
    pub(crate) full: u64,
    /// Channels taken out of the group as stalled.
    pub(crate) stalled: u64,
    /// The group's members when the script ran.
    pub(crate) members: u64,
}

/// A switchboard process's queue as the sender's read of the group's members saw it.
#[derive(Debug)]
pub(crate) struct QueueRoute {
    /// The queue's channel-name part, up to and with its `!`.
    pub(crate) queue: String,
    /// How many of the group's members it holds.
    pub(crate) channels: usize,
    /// `__asgi_channel__`'s value naming the group ([`Codec::group_route`]).
    pub(crate) route: Vec<u8>,
}

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

/// What [`Histories::read`] reads.
enum Read<'a> {
    /// What followed a position (`None`: nothing, the position now).
    Since(Option<&'a Position>),
    /// Everything held.
    All,
}

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
            self.era_key(),
        ]
    }

    /// The host's era (one per host, see the module docs).
    fn era_key(&self) -> String {
        format!("{}:history-era", self.prefix)
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
            .arg(Position::new_epoch())
            .arg(Position::new_epoch())
            .arg(channel)
            .arg(head)
            .arg(cfg.size)
            .arg(ttl_ms(cfg))
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

    /// `RedisLayer`'s group send for `group` with history (see [`CORE_GROUP_SEND`]): the
    /// message's position, the member channels skipped because their queue was full, and those
    /// dropped from the group as stalled.
    pub(crate) async fn core_group_send(
        &self,
        send: CoreSend<'_>,
        codec: &Codec,
        group: &str,
        fields: &EncodedFields,
        cfg: HistoryConfig,
    ) -> Result<CoreSent> {
        let [meta, log, era] = self.keys(group);
        let mut c = send.host.conn();
        let mut invocation = CORE_GROUP_SEND.prepare_invoke();
        invocation
            .key(meta)
            .key(log)
            .key(era)
            .key(send.group_key)
            .arg(Position::new_epoch())
            .arg(Position::new_epoch())
            .arg(send.key_prefix)
            .arg(codec.random_prefix())
            .arg(fields.count())
            .arg(fields.bytes())
            .arg(cfg.size)
            .arg(ttl_ms(cfg))
            .arg(send.capacity)
            .arg(send.expiry_secs)
            .arg(send.queue_ttl)
            .arg(send.group_expiry_secs)
            .arg(if send.drop_stalled { "1" } else { "0" })
            .arg(send.routes.len());
        for r in send.routes {
            invocation.arg(&r.queue).arg(r.channels).arg(&r.route);
        }
        let r: Vec<RValue> = invocation
            .invoke_async(&mut c)
            .await
            .map_err(|e| send.host.error(e))?;
        if let Some(e) = r.get(1) {
            self.saw_era(0, e);
        }
        let position = r
            .first()
            .and_then(text)
            .and_then(|p| p.parse::<Position>().ok())
            .ok_or_else(|| LayerError::backend_msg("the history script answered no position"))?;
        let count = |i: usize| r.get(i).and_then(int).unwrap_or(0);
        Ok(CoreSent {
            position,
            full: count(2),
            stalled: count(3),
            members: count(4),
        })
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
        self.read(host, h, codec, group, Read::Since(since), cfg)
            .await
    }

    /// What `ChannelLayer::history` answers: what followed `since`, or everything the history
    /// holds (not expired), oldest first, for `None`.
    pub(crate) async fn history(
        &self,
        host: &Host,
        h: usize,
        codec: &Codec,
        group: &str,
        since: Option<&Position>,
        cfg: HistoryConfig,
    ) -> Result<Recovery> {
        let read = match since {
            Some(_) => Read::Since(since),
            None => Read::All,
        };
        self.read(host, h, codec, group, read, cfg).await
    }

    /// Forgets `group`'s history (its next message starts a new epoch).
    pub(crate) async fn clear(&self, host: &Host, group: &str) -> Result<()> {
        let [meta, log, _] = self.keys(group);
        let mut c = host.conn();
        redis::cmd("DEL")
            .arg(meta)
            .arg(log)
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| host.error(e))
    }

    async fn read(
        &self,
        host: &Host,
        h: usize,
        codec: &Codec,
        group: &str,
        read: Read<'_>,
        cfg: HistoryConfig,
    ) -> Result<Recovery> {
        let (since, all) = match read {
            Read::Since(since) => (since, false),
            Read::All => (None, true),
        };
        let [meta, log, era] = self.keys(group);
        let mut c = host.conn();
        let r: Vec<RValue> = SINCE
            .key(meta)
            .key(log)
            .key(era)
            .arg(Position::new_epoch())
            .arg(Position::new_epoch())
            .arg(if all {
                "*"
            } else {
                since.map_or("", Position::epoch)
            })
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
        let cutoff = now.saturating_sub(ttl_ms(cfg));
        if all {
            let mut messages = Vec::new();
            for entry in r.get(4..).unwrap_or_default().chunks_exact(3) {
                // Expired entries are the oldest: skipped.
                if int(&entry[1]).is_none_or(|t| t < cutoff) {
                    continue;
                }
                let RValue::BulkString(bytes) = &entry[2] else {
                    return Err(bad());
                };
                match codec.decode(bytes) {
                    Ok((m, _)) => messages.push(m),
                    Err(e) => {
                        tracing::warn!(group, error = %e, "skipping a history entry that does not decode")
                    }
                }
            }
            return Ok(Recovery::new(true, messages, position));
        }
        let Some(since) = since else {
            return Ok(Recovery::new(true, Vec::new(), position));
        };
        if since.epoch() != epoch || since.offset() > top {
            return Ok(Recovery::new(false, Vec::new(), position));
        }
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

    /// Replaces host `h`'s era each time its master moves (a task for each host behind
    /// Sentinel, while the layer keeps history), until `shutdown`.
    pub(crate) async fn follow_failovers(
        &self,
        host: &Host,
        h: usize,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut moved = host.moved();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                r = moved.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.failed_over(host, h).await;
                }
            }
        }
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
            .key(self.era_key())
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
