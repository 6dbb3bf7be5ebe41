//! The Lua scripts of the Redis layer, each one round trip.

use std::sync::LazyLock;

use redis::Script;

/// `send`: drop expired messages, refuse when full, add, refresh the key's TTL.
/// KEYS: queue. ARGV: score, message, capacity, expiry cutoff, TTL. Returns 1 if queued.
///
/// It reads before it writes, and its first write is the `ZADD`: Redis refuses a script's
/// write at `maxmemory` (with `noeviction`) only when it is the script's first, so removing
/// the expired messages first would let every send grow Redis past its limit.
pub(super) static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local expired = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[1]) - expired >= tonumber(ARGV[3]) then
    if expired > 0 then
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
    end
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if expired > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
end
return 1
",
    )
});

/// `group_send` for the process queues on one host: channels_redis's script, plus the
/// expired-message check. KEYS: queues. ARGV: one message per queue, one capacity per queue,
/// score, expiry cutoff, TTL, whether to report stalled queues. Returns {full indexes, stalled
/// indexes}; stalled queues get nothing.
///
/// All reads first, then the `ZADD`s, then the removal of expired messages: Redis refuses a
/// script's write at `maxmemory` (with `noeviction`) only when it is the script's first (see
/// [`SEND`]).
pub(super) static GROUP_SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = #KEYS
local score, cutoff, ttl = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local check_stalled = ARGV[2 * n + 4] == '1'
local full, stalled, add, expired = {}, {}, {}, {}
for i = 1, n do
    expired[i] = redis.call('ZCOUNT', KEYS[i], '-inf', cutoff)
    if check_stalled and expired[i] > 0 then
        stalled[#stalled + 1] = i
    elseif redis.call('ZCARD', KEYS[i]) - expired[i] < tonumber(ARGV[n + i]) then
        add[#add + 1] = i
    else
        full[#full + 1] = i
    end
end
for _, i in ipairs(add) do
    redis.call('ZADD', KEYS[i], score, ARGV[i])
    redis.call('EXPIRE', KEYS[i], ttl)
end
for i = 1, n do
    if expired[i] > 0 then
        redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', cutoff)
    end
end
return {full, stalled}
",
    )
});

/// channels_redis's in-flight backup: put messages a crashed receiver had popped back in the
/// queue. KEYS: queue, backup.
pub(super) static RESTORE_INFLIGHT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
",
    )
});
