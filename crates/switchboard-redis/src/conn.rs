//! Connections: one multiplexed, self-reconnecting connection per host for commands, and
//! dedicated connections for blocking pops and subscriptions.
//!
//! redis-rs times a response out after 500 ms by default. Commands get the layer's
//! `command_timeout` instead; a blocking `BZPOPMIN` gets its own connection with no response
//! timeout (our own timer, a little longer than the pop's, catches a dead peer), so it never
//! stalls or fails the commands multiplexed on the shared connection.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use tokio::sync::watch;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError};
use switchboard_core::{ChannelName, LayerError, Result};

use crate::config::{RedisConfig, redact};

/// One Redis host.
pub(crate) struct Host {
    /// The URL with its password hidden.
    pub(crate) name: String,
    pub(crate) client: Client,
    /// Commands: pipelined over one connection, reconnected on failure.
    pub(crate) conn: ConnectionManager,
}

impl Host {
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A command on this host failed.
    pub(crate) fn error(&self, e: RedisError) -> LayerError {
        LayerError::backend(format!("redis at {}", self.name), e)
    }
}

/// Connects to every host (the layer is not usable until each answers).
pub(crate) async fn connect_hosts(cfg: &RedisConfig) -> Result<Vec<Host>> {
    if cfg.hosts.is_empty() {
        return Err(LayerError::Config(
            "no Redis host configured: give at least one redis:// URL".into(),
        ));
    }
    let mut hosts = Vec::with_capacity(cfg.hosts.len());
    for url in &cfg.hosts {
        let name = redact(url);
        let client = Client::open(url.as_str())
            .map_err(|e| LayerError::Config(format!("bad Redis URL {name}: {e}")))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout))
            // Fail calls fast while Redis is away; the next call tries again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = timed(
            cfg.connect_timeout + cfg.command_timeout,
            ConnectionManager::new_with_config(client.clone(), manager),
        )
        .await?
        .map_err(|e| LayerError::backend(format!("could not connect to redis at {name}"), e))?;
        hosts.push(Host { name, client, conn });
    }
    Ok(hosts)
}

/// A connection of its own for blocking commands: no response timeout.
pub(crate) async fn blocking_connection(
    host: &Host,
    cfg: &RedisConfig,
) -> std::result::Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(None);
    host.client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Runs `fut` with a deadline; running out is [`LayerError::Timeout`].
pub(crate) async fn timed<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| LayerError::Timeout(limit))
}

/// Unix time in seconds, as Python's `time.time()`.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Exponential backoff between reconnection attempts, capped at one second.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(Duration::from_millis(50))
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        d
    }

    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
}

/// How a receive loop retries while Redis refuses it or is away: waits with [`Backoff`]
/// between tries, and warns at the first failure of a run, then at most once per
/// `warn_every`, with the number of failures since the last warning. A host that accepts
/// connections but refuses the commands (a replica's `READONLY` during a failover, an ACL's
/// `NOPERM`, `MISCONF`, `LOADING`, a key of the wrong type) is thus tried a few times a
/// second, not in a hot loop, and does not flood the log.
pub(crate) struct Retry {
    backoff: Backoff,
    warn_every: Duration,
    /// Failures since the last success.
    failures: u64,
    /// Failures since the last warning.
    unreported: u64,
    last_warning: Option<Instant>,
}

/// What to do after a failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Failed {
    /// How long to wait before trying again.
    pub(crate) wait: Duration,
    /// `Some(n)`: warn now, `n` failures since the last warning (this one included).
    pub(crate) warn: Option<u64>,
}

impl Retry {
    pub(crate) fn new() -> Retry {
        Retry::warning_every(Duration::from_secs(60))
    }

    pub(crate) fn warning_every(warn_every: Duration) -> Retry {
        Retry {
            backoff: Backoff::new(),
            warn_every,
            failures: 0,
            unreported: 0,
            last_warning: None,
        }
    }

    /// Records a failure at `now`.
    pub(crate) fn failed(&mut self, now: Instant) -> Failed {
        self.failures += 1;
        self.unreported += 1;
        let due = self.failures == 1
            || self
                .last_warning
                .is_none_or(|t| now.saturating_duration_since(t) >= self.warn_every);
        let warn = due.then(|| {
            self.last_warning = Some(now);
            std::mem::take(&mut self.unreported)
        });
        Failed {
            wait: self.backoff.next(),
            warn,
        }
    }

    /// Records a success: the backoff starts over. Returns the failures of the run it ends
    /// (0 if there was none).
    pub(crate) fn succeeded(&mut self) -> u64 {
        self.backoff.reset();
        self.unreported = 0;
        std::mem::take(&mut self.failures)
    }
}

/// Held by every handle of a layer; stops the layer's background tasks when the last one goes.
pub(crate) struct Guard(pub(crate) watch::Sender<bool>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Runs a background loop, and runs it again if it panics (a bug: logged at `error`, then
/// retried after `pause`), so one bad message cannot stop the process receiving. Returns when
/// `run`'s future does, or on `shutdown`.
pub(crate) async fn supervised<F, Fut>(
    what: &str,
    mut shutdown: watch::Receiver<bool>,
    pause: Duration,
    run: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        match AssertUnwindSafe(run()).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(what, panic = why, "receive loop panicked; restarting it");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long ago a message scored `score` (its send time in Unix seconds, as read from Redis)
/// was sent, at Unix time `now`. Redis takes any float as a score, `-inf` and `inf` included:
/// a score in the future is age zero; one too far in the past for a [`Duration`] (or NaN)
/// is [`Duration::MAX`], older than any expiry.
pub(crate) fn age(score: f64, now: f64) -> Duration {
    let secs = now - score;
    if secs.is_nan() {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

/// Adds `channel` (joined at `joined`, Unix seconds) to the sorted set of members `key` (a
/// core-layer group, or the pub/sub layer's group registry) and sets the key's TTL.
pub(crate) async fn add_member(
    host: &Host,
    key: &str,
    channel: &str,
    joined: f64,
    ttl: u64,
) -> Result<()> {
    redis::pipe()
        .cmd("ZADD")
        .arg(key)
        .arg(joined)
        .arg(channel)
        .ignore()
        .cmd("EXPIRE")
        .arg(key)
        .arg(ttl)
        .ignore()
        .query_async::<()>(&mut host.conn())
        .await
        .map_err(|e| host.error(e))
}

/// Takes `channel` out of the sorted set of members `key`.
pub(crate) async fn remove_member(host: &Host, key: &str, channel: &str) -> Result<()> {
    redis::cmd("ZREM")
        .arg(key)
        .arg(channel)
        .query_async::<()>(&mut host.conn())
        .await
        .map_err(|e| host.error(e))
}

/// The members of the sorted set `key` that joined after `cutoff` (Unix seconds); names that
/// are not valid channel names are logged and skipped.
pub(crate) async fn members_since(host: &Host, key: &str, cutoff: f64) -> Result<Vec<ChannelName>> {
    let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg(format!("({cutoff}"))
        .arg("+inf")
        .query_async(&mut host.conn())
        .await
        .map_err(|e| host.error(e))?;
    Ok(members
        .into_iter()
        .filter_map(|m| {
            let name = String::from_utf8(m).ok()?;
            ChannelName::new(&name)
                .inspect_err(|e| tracing::warn!(key, error = %e, "invalid member name in group"))
                .ok()
        })
        .collect())
}

/// Glob-escapes `s` for `SCAN … MATCH` and `PSUBSCRIBE`.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Deletes every key matching `pattern` on one host, with SCAN (never the blocking KEYS).
pub(crate) async fn delete_matching(host: &Host, pattern: &str) -> Result<u64> {
    let mut conn = host.conn();
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| host.error(e))?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| host.error(e))?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::{Failed, Retry, age, glob_escape, supervised};

    #[test]
    fn retries_back_off_and_warn_once_a_minute() {
        let mut r = Retry::warning_every(Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(
            r.failed(t0),
            Failed {
                wait: ms(50),
                warn: Some(1)
            }
        );
        let waits: Vec<Duration> = (0..6).map(|_| r.failed(t0 + ms(10)).wait).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        // No warning until a minute after the last one; then it counts what it skipped.
        assert_eq!(r.failed(t0 + Duration::from_secs(59)).warn, None);
        assert_eq!(r.failed(t0 + Duration::from_secs(60)).warn, Some(8));
        assert_eq!(r.succeeded(), 9);
        assert_eq!(r.succeeded(), 0);
        // A new run warns at once and starts from the shortest wait.
        assert_eq!(
            r.failed(t0 + Duration::from_secs(61)),
            Failed {
                wait: ms(50),
                warn: Some(1)
            }
        );
    }

    #[test]
    fn any_score_redis_holds_has_an_age() {
        let now = 1_700_000_000.0;
        assert_eq!(age(now - 1.5, now), Duration::from_millis(1500));
        assert_eq!(age(now + 10.0, now), Duration::ZERO);
        assert_eq!(age(f64::INFINITY, now), Duration::ZERO);
        assert_eq!(age(f64::NEG_INFINITY, now), Duration::MAX);
        assert_eq!(age(-1e300, now), Duration::MAX);
        assert_eq!(age(f64::NAN, now), Duration::MAX);
    }

    #[tokio::test]
    async fn a_panicking_loop_is_started_again() {
        let runs = AtomicU32::new(0);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        supervised("test", rx, Duration::from_millis(1), || async {
            if runs.fetch_add(1, Ordering::Relaxed) < 2 {
                panic!("bad message");
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn shutdown_ends_the_restarts() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let _ = tx.send(true);
        let runs = AtomicU32::new(0);
        // The first run panics; the pause before the next one ends at once on shutdown.
        supervised("test", rx, Duration::from_secs(3600), || async {
            runs.fetch_add(1, Ordering::Relaxed);
            panic!("always");
        })
        .await;
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("asgi"), "asgi");
    }
}
