//! Connections: one multiplexed, self-reconnecting connection per host for commands, and
//! dedicated connections for blocking pops and subscriptions.
//!
//! redis-rs times a response out after 500 ms by default. Commands get the layer's
//! `command_timeout` instead; a blocking `BZPOPMIN` gets its own connection with no response
//! timeout (our own timer, a little longer than the pop's, catches a dead peer), so it never
//! stalls or fails the commands multiplexed on the shared connection.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError};
use switchboard_core::{Error, Result};

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

    pub(crate) fn error(&self, e: RedisError) -> Error {
        Error::Backend(format!("redis at {}: {e}", self.name))
    }
}

/// Connects to every host (the layer is not usable until each answers).
pub(crate) async fn connect_hosts(cfg: &RedisConfig) -> Result<Vec<Host>> {
    if cfg.hosts.is_empty() {
        return Err(Error::Backend(
            "no Redis host configured: give at least one redis:// URL".into(),
        ));
    }
    let mut hosts = Vec::with_capacity(cfg.hosts.len());
    for url in &cfg.hosts {
        let name = redact(url);
        let client = Client::open(url.as_str())
            .map_err(|e| Error::Backend(format!("bad Redis URL {name}: {e}")))?;
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
        .map_err(|e| Error::Backend(format!("could not connect to redis at {name}: {e}")))?;
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

/// Runs `fut` with a deadline; running out is [`Error::Timeout`].
pub(crate) async fn timed<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Timeout(limit))
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
    use super::glob_escape;

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("asgi"), "asgi");
    }
}
