//! What the layers report through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The library records; the application installs an exporter (Prometheus, StatsD, …) —
//! without one, recording costs a call into a no-op. Handles are looked up once, at the first
//! operation: install the exporter before the first layer is used. Timing layer operations
//! costs two clock reads each (a point-to-point send in memory is a few hundred nanoseconds),
//! so it is off until [`enable_timing`] turns it on; the errors are counted either way.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `switchboard_layer_operation_seconds` | histogram | `op` | time a layer operation took (`send`, `group_add`, `group_discard`, `group_send`, `flush`), as the caller waited for it; recorded once [`enable_timing`] is on |
//! | `switchboard_layer_operation_errors_total` | counter | `op` | layer operations that failed |
//! | `switchboard_messages_dropped_total` | counter | `reason` | messages the layer dropped: `channel_full` (a group member's or a remote sender's queue was full), `expired` (not received within `expiry`), `undecodable` (from Redis) |
//! | `switchboard_group_deliveries_total` | counter | | group messages queued for a member of this process |
//! | `switchboard_layer_channels` | gauge | | channels the layer holds (this process's view) |
//! | `switchboard_layer_groups` | gauge | | groups the layer holds (this process's view) |
//!
//! The last four come from [`LayerStats`]: [`record_stats`] writes them (the counters as
//! absolute values), so call it before each scrape, or on a timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{Counter, Histogram};
use std::time::Instant;

use crate::error::Result;
use crate::layer::{Layer, LayerStats};

/// Histogram of layer operation times, in seconds; label `op`.
pub const LAYER_OPERATION_SECONDS: &str = "switchboard_layer_operation_seconds";
/// Counter of failed layer operations; label `op`.
pub const LAYER_OPERATION_ERRORS: &str = "switchboard_layer_operation_errors_total";
/// Counter of dropped messages; label `reason`.
pub const MESSAGES_DROPPED: &str = "switchboard_messages_dropped_total";
/// Counter of group messages queued for this process's members.
pub const GROUP_DELIVERIES: &str = "switchboard_group_deliveries_total";
/// Gauge of channels held.
pub const LAYER_CHANNELS: &str = "switchboard_layer_channels";
/// Gauge of groups held.
pub const LAYER_GROUPS: &str = "switchboard_layer_groups";

/// A timed layer operation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Send,
    GroupAdd,
    GroupDiscard,
    GroupSend,
    Flush,
}

const OPS: [&str; 5] = ["send", "group_add", "group_discard", "group_send", "flush"];

struct Handles {
    seconds: [Histogram; 5],
    errors: [Counter; 5],
}

fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(|| Handles {
        seconds: OPS.map(|op| metrics::histogram!(LAYER_OPERATION_SECONDS, "op" => op)),
        errors: OPS.map(|op| metrics::counter!(LAYER_OPERATION_ERRORS, "op" => op)),
    })
}

static TIMING: AtomicBool = AtomicBool::new(false);

/// Turns the timing of layer operations (`switchboard_layer_operation_seconds`) on or off for
/// the process. Off by default; turn it on after installing the exporter.
pub fn enable_timing(on: bool) {
    TIMING.store(on, Ordering::Relaxed);
}

/// Whether layer operations are timed.
#[inline]
pub(crate) fn timing() -> bool {
    TIMING.load(Ordering::Relaxed)
}

/// Runs `fut` timed (the caller checked [`timing`]), recording how long it took and whether
/// it failed. It takes the backend's boxed future (every `ChannelLayer` method returns one), not
/// a generic one, so that the timed path adds little to the caller's future.
pub(crate) async fn timed<T>(
    op: Op,
    fut: Pin<Box<dyn Future<Output = Result<T>> + Send + '_>>,
) -> Result<T> {
    let start = Instant::now();
    let r = fut.await;
    handles().seconds[op as usize].record(start.elapsed());
    failed(op, &r);
    r
}

/// Counts `r` if it is an error.
#[inline]
pub(crate) fn failed<T>(op: Op, r: &Result<T>) {
    if r.is_err() {
        count_error(op);
    }
}

#[cold]
fn count_error(op: Op) {
    handles().errors[op as usize].increment(1);
}

/// A layer operation: timed when timing is on, its failure counted either way. The untimed
/// path awaits the operation itself, with no wrapper future around it.
macro_rules! layer_op {
    ($op:expr, $fut:expr) => {
        if $crate::metrics::timing() {
            $crate::metrics::timed($op, $fut).await
        } else {
            let r = $fut.await;
            $crate::metrics::failed($op, &r);
            r
        }
    };
}
pub(crate) use layer_op;

/// Writes `layer`'s [`LayerStats`] to the facade: drops by reason and group deliveries as
/// absolute counter values, channels and groups as gauges. With several layers in one process,
/// call it for one of them (the names carry no layer label).
pub fn record_stats(layer: &Layer) {
    record(&layer.stats());
}

fn record(s: &LayerStats) {
    metrics::counter!(MESSAGES_DROPPED, "reason" => "channel_full")
        .absolute(s.group_full_drops + s.remote_full_drops);
    metrics::counter!(MESSAGES_DROPPED, "reason" => "expired").absolute(s.expired_messages);
    metrics::counter!(MESSAGES_DROPPED, "reason" => "undecodable").absolute(s.undecodable);
    metrics::counter!(GROUP_DELIVERIES).absolute(s.group_deliveries);
    metrics::gauge!(LAYER_CHANNELS).set(s.channels as f64);
    metrics::gauge!(LAYER_GROUPS).set(s.groups as f64);
}

/// Describes the layer metrics (help text and units) to the installed exporter.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        LAYER_OPERATION_SECONDS,
        Unit::Seconds,
        "Time a channel layer operation took, by op"
    );
    describe_counter!(
        LAYER_OPERATION_ERRORS,
        "Channel layer operations that failed, by op"
    );
    describe_counter!(
        MESSAGES_DROPPED,
        "Messages the channel layer dropped, by reason (channel_full, expired, undecodable)"
    );
    describe_counter!(
        GROUP_DELIVERIES,
        "Group messages queued for a member in this process"
    );
    describe_gauge!(LAYER_CHANNELS, "Channels the layer holds in this process");
    describe_gauge!(LAYER_GROUPS, "Groups the layer holds in this process");
}
