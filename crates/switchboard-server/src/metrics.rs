//! What the server reports through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The library records; the application installs an exporter. Handles are looked up at the
//! first connection: install the exporter before serving. The layer's metrics are in
//! `switchboard_core::metrics`, the Redis layers' in `switchboard_redis::metrics`.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `switchboard_connections_open` | gauge | | WebSocket connections open now |
//! | `switchboard_connections_total` | counter | | WebSocket connections accepted (answered 101) |
//! | `switchboard_connections_closed_total` | counter | `reason` | connections ended: `client` (the client closed or went away), `server` (the consumer closed), `shutdown` (a drain, or the layer closed), `idle` (idle timeout), `slow_client` (outbound queue full, or the client fell behind its group while its backlog was full, 1008), `missed` (the consumer's `missed` handler closed it, by default with 1013), `too_big` (1009), `bad_input` (1007, 1002 or the consumer's bad-input code), `handler_panic` (1011) |
//! | `switchboard_handshakes_refused_total` | counter | `reason` | upgrades refused: `bad_request`, `origin`, `auth`, `consumer` (the factory or `connect` refused), `unavailable` (no channel from the layer), `shutting_down`, `limit` (an `EndpointLimits` limit), `internal` (a panic) |
//! | `switchboard_frames_received_total` | counter | | data frames from clients |
//! | `switchboard_bytes_received_total` | counter | | payload bytes of those frames |
//! | `switchboard_frames_sent_total` | counter | | data frames written to clients |
//! | `switchboard_bytes_sent_total` | counter | | payload bytes of those frames |
//! | `switchboard_messages_missed_total` | counter | | layer messages dropped for connections (full channel, expired), each connection told (`Consumer::missed`); event streams and long polls count theirs here too |
//! | `switchboard_stream_interruptions_total` | counter | | connections (and event streams, long polls) told the layer's stream was interrupted (a pub/sub subscription made again, Redis restarted empty): messages may be missing |
//! | `switchboard_handler_errors_total` | counter | `handler`, `kind` | consumer handlers (`connect`, `receive`, `event`, `missed`, `disconnect`, `task`) that returned an error (`kind="error"`) or panicked (`kind="panic"`) |
//! | `switchboard_http_streams_open` | gauge | | event streams ([`sse::EventStream`](crate::sse::EventStream)) open now |
//! | `switchboard_http_streams_total` | counter | | event streams answered (200) |
//! | `switchboard_http_streams_closed_total` | counter | `reason` | event streams ended: `client` (the client went away), `shutdown` (a drain, or the layer closed), `gap` (messages were dropped or the layer's stream interrupted: the client resumes from history), `max_duration` (`EventStream::max_duration` passed), `server` (the renderer's last event) |
//! | `switchboard_http_polls_total` | counter | `outcome` | long polls ([`longpoll::LongPoll`](crate::longpoll::LongPoll)) answered: `messages`, `empty` (the timeout, a drain, or a hole before any message), `not_recovered` |
//! | `switchboard_http_refused_total` | counter | `reason` | event streams and long polls refused: `bad_request` (a bad `Last-Event-ID`/`since`, a bad group name), `shutting_down`, `unavailable` (the layer failed), `no_history` (a long poll on a group without history) |
//! | `switchboard_worker_messages_total` | counter | `outcome` | messages [`Worker`](crate::Worker)s took (`received`) and how each ended: `handled`, `failed` (the handler's error), `panicked`, `skipped` (its handler does not take its type), `abandoned` (still running at the stop timeout) |

use std::sync::OnceLock;

use metrics::{Counter, Gauge};

/// Gauge of open connections.
pub const CONNECTIONS_OPEN: &str = "switchboard_connections_open";
/// Counter of accepted connections.
pub const CONNECTIONS_TOTAL: &str = "switchboard_connections_total";
/// Counter of ended connections; label `reason`.
pub const CONNECTIONS_CLOSED: &str = "switchboard_connections_closed_total";
/// Counter of refused handshakes; label `reason`.
pub const HANDSHAKES_REFUSED: &str = "switchboard_handshakes_refused_total";
/// Counter of data frames received.
pub const FRAMES_RECEIVED: &str = "switchboard_frames_received_total";
/// Counter of payload bytes received.
pub const BYTES_RECEIVED: &str = "switchboard_bytes_received_total";
/// Counter of data frames sent.
pub const FRAMES_SENT: &str = "switchboard_frames_sent_total";
/// Counter of payload bytes sent.
pub const BYTES_SENT: &str = "switchboard_bytes_sent_total";
/// Counter of layer messages connections were told they missed.
pub const MESSAGES_MISSED: &str = "switchboard_messages_missed_total";
/// Counter of interruptions of the layer's stream connections were told of.
pub const STREAM_INTERRUPTIONS: &str = "switchboard_stream_interruptions_total";
/// Counter of handler errors and panics; labels `handler`, `kind`.
pub const HANDLER_ERRORS: &str = "switchboard_handler_errors_total";

/// Gauge of open event streams.
pub const HTTP_STREAMS_OPEN: &str = "switchboard_http_streams_open";
/// Counter of event streams answered.
pub const HTTP_STREAMS_TOTAL: &str = "switchboard_http_streams_total";
/// Counter of ended event streams; label `reason`.
pub const HTTP_STREAMS_CLOSED: &str = "switchboard_http_streams_closed_total";
/// Counter of long polls answered; label `outcome`.
pub const HTTP_POLLS: &str = "switchboard_http_polls_total";
/// Counter of refused event streams and long polls; label `reason`.
pub const HTTP_REFUSED: &str = "switchboard_http_refused_total";

/// Counter of worker messages; label `outcome`.
pub const WORKER_MESSAGES: &str = "switchboard_worker_messages_total";

/// The handles every connection updates, looked up once.
pub(crate) struct Handles {
    pub(crate) open: Gauge,
    pub(crate) total: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) bytes_out: Counter,
}

pub(crate) fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(|| Handles {
        open: metrics::gauge!(CONNECTIONS_OPEN),
        total: metrics::counter!(CONNECTIONS_TOTAL),
        frames_in: metrics::counter!(FRAMES_RECEIVED),
        bytes_in: metrics::counter!(BYTES_RECEIVED),
        frames_out: metrics::counter!(FRAMES_SENT),
        bytes_out: metrics::counter!(BYTES_SENT),
    })
}

/// Counts a refused handshake.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!(HANDSHAKES_REFUSED, "reason" => reason).increment(1);
}

/// Counts an ended connection.
pub(crate) fn closed(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// Counts what a connection was told it missed.
pub(crate) fn missed(missed: switchboard_core::Missed) {
    if missed.dropped > 0 {
        metrics::counter!(MESSAGES_MISSED).increment(missed.dropped);
    }
    if missed.interrupted {
        metrics::counter!(STREAM_INTERRUPTIONS).increment(1);
    }
}

/// Counts an event stream answered: the gauge goes up until [`http_stream_closed`].
#[cfg(feature = "axum")]
pub(crate) fn http_stream_opened() {
    metrics::gauge!(HTTP_STREAMS_OPEN).increment(1.0);
    metrics::counter!(HTTP_STREAMS_TOTAL).increment(1);
}

/// Counts an ended event stream.
#[cfg(feature = "axum")]
pub(crate) fn http_stream_closed(reason: &'static str) {
    metrics::gauge!(HTTP_STREAMS_OPEN).decrement(1.0);
    metrics::counter!(HTTP_STREAMS_CLOSED, "reason" => reason).increment(1);
}

/// Counts a long poll answered.
#[cfg(feature = "axum")]
pub(crate) fn http_poll(outcome: &'static str) {
    metrics::counter!(HTTP_POLLS, "outcome" => outcome).increment(1);
}

/// Counts a refused event stream or long poll.
#[cfg(feature = "axum")]
pub(crate) fn http_refused(reason: &'static str) {
    metrics::counter!(HTTP_REFUSED, "reason" => reason).increment(1);
}

/// Counts a handler's error or panic.
pub(crate) fn handler_error(handler: &'static str, panicked: bool) {
    let kind = if panicked { "panic" } else { "error" };
    metrics::counter!(HANDLER_ERRORS, "handler" => handler, "kind" => kind).increment(1);
}

/// Counts a worker message's outcome.
pub(crate) fn worker_message(outcome: &'static str) {
    metrics::counter!(WORKER_MESSAGES, "outcome" => outcome).increment(1);
}

/// Describes the server metrics (help text and units) to the installed exporter.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(CONNECTIONS_OPEN, "WebSocket connections open now");
    describe_counter!(CONNECTIONS_TOTAL, "WebSocket connections accepted");
    describe_counter!(CONNECTIONS_CLOSED, "WebSocket connections ended, by reason");
    describe_counter!(HANDSHAKES_REFUSED, "WebSocket upgrades refused, by reason");
    describe_counter!(FRAMES_RECEIVED, "Data frames received from clients");
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Payload bytes received from clients"
    );
    describe_counter!(FRAMES_SENT, "Data frames written to clients");
    describe_counter!(BYTES_SENT, Unit::Bytes, "Payload bytes written to clients");
    describe_counter!(
        MESSAGES_MISSED,
        "Layer messages dropped for connections, each told"
    );
    describe_counter!(
        STREAM_INTERRUPTIONS,
        "Connections told the layer's stream was interrupted"
    );
    describe_gauge!(HTTP_STREAMS_OPEN, "Event streams open now");
    describe_counter!(HTTP_STREAMS_TOTAL, "Event streams answered");
    describe_counter!(HTTP_STREAMS_CLOSED, "Event streams ended, by reason");
    describe_counter!(HTTP_POLLS, "Long polls answered, by outcome");
    describe_counter!(
        HTTP_REFUSED,
        "Event streams and long polls refused, by reason"
    );
    describe_counter!(
        HANDLER_ERRORS,
        "Consumer handlers that failed, by handler and kind"
    );
}
