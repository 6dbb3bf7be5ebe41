//! The Lua scripts of the Redis layer, each one round trip.

use std::sync::LazyLock;

use redis::Script;

/// `send`: drop expired messages, refuse when full, add, refresh the key's TTL.
/// KEYS: queue. ARGV: score, message, capacity, expiry cutoff, TTL. Returns 1 if queued.
pub(super) static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// `group_send` for the process queues on one host: channels_redis's script, plus the
/// expired-message check. KEYS: queues. ARGV: one message per queue, one capacity per queue,
/// score, expiry cutoff, TTL, whether to report stalled queues. Returns {full indexes, stalled
/// indexes}; stalled queues get nothing.
pub(super) static GROUP_SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = #KEYS
local score, cutoff, ttl = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local check_stalled = ARGV[2 * n + 4] == '1'
local full, stalled = {}, {}
for i = 1, n do
    local removed = redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', cutoff)
    if check_stalled and removed > 0 then
        stalled[#stalled + 1] = i
    elseif redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], score, ARGV[i])
        redis.call('EXPIRE', KEYS[i], ttl)
    else
        full[#full + 1] = i
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
