//! What the Redis layers report through the `metrics` facade, beside the layer metrics of
//! `switchboard_core::metrics`.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `switchboard_redis_reconnects_total` | counter | `kind` | connections made again after Redis dropped them: `command` (a call found its connection closed and was sent again), `receive` (a receive loop), `subscription` (pub/sub, resubscribed), `failover` (Sentinel named a new master), `cluster` (a new cluster connection and slot map) |
//! | `switchboard_redis_command_failures_total` | counter | | Redis commands of a layer operation that failed (the operation returned an error) |
//! | `switchboard_redis_group_cache_total` | counter | `result` | core layer: a `group_send`'s members `hit` in the members cache (client tracking) or read (`miss`) |
//! | `switchboard_redis_group_routes_total` | counter | `served` | core layer: group messages from another switchboard process, which name the group, served from this process's `index` of the group, or from the group's members read from `redis` on arrival (the index differed from what the sender saw) |

/// Counter of reconnections; label `kind`.
pub const RECONNECTS: &str = "switchboard_redis_reconnects_total";
/// Counter of failed commands.
pub const COMMAND_FAILURES: &str = "switchboard_redis_command_failures_total";

/// Counter of group member reads; label `result` (`hit`, `miss`).
pub const GROUP_CACHE: &str = "switchboard_redis_group_cache_total";

/// Counter of group messages naming the group; label `served` (`index`, `redis`).
pub const GROUP_ROUTES: &str = "switchboard_redis_group_routes_total";

/// Counts a group message naming the group, served from this process's index of the group or
/// from its members in Redis.
pub(crate) fn group_route(from_index: bool) {
    metrics::counter!(GROUP_ROUTES, "served" => if from_index { "index" } else { "redis" })
        .increment(1);
}

/// Counts a group member read from the cache (`hit`) or from Redis.
pub(crate) fn group_cache(hit: bool) {
    metrics::counter!(GROUP_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// Counts a reconnection of this kind.
pub(crate) fn reconnected(kind: &'static str) {
    metrics::counter!(RECONNECTS, "kind" => kind).increment(1);
}

/// Counts a failed command.
pub(crate) fn command_failed() {
    metrics::counter!(COMMAND_FAILURES).increment(1);
}

/// Describes the Redis metrics (help text) to the installed exporter.
pub fn describe() {
    metrics::describe_counter!(
        RECONNECTS,
        "Redis connections made again after Redis dropped them, by kind"
    );
    metrics::describe_counter!(
        COMMAND_FAILURES,
        "Redis commands of a layer operation that failed"
    );
    metrics::describe_counter!(
        GROUP_CACHE,
        "Core layer group sends whose members came from the members cache (hit) or Redis (miss)"
    );
    metrics::describe_counter!(
        GROUP_ROUTES,
        "Core layer group messages naming the group, served from this process's index of the group or from its members in Redis"
    );
}
