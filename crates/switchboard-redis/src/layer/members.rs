//! Group members, cached per host and kept true by Redis: server-assisted client-side caching
//! (`CLIENT TRACKING`, RESP3).
//!
//! A `group_send` needs the group's members. Reading the whole sorted set for every send costs
//! a round trip that carries every member's name (40 KB for 1,000 members) and the work of
//! parsing it; the members change far more rarely than messages are sent. So each process keeps
//! one RESP3 connection per host with tracking on, reads members over it, and keeps what it
//! read. Redis remembers which keys the connection read and, when any client changes one — a
//! `group_add` or `group_discard` of this process or of another, a Django process's included,
//! an expiry, a flush — pushes an invalidation on that same connection, and the entry is
//! dropped. The wire format is unchanged: this is how the members are read, not what is
//! written.
//!
//! **No stale read.** Every `group_send` first sends a `PING` on the tracking connection and
//! consults the cache only when it answers: Redis writes a connection's invalidations before
//! its later replies, and redis-rs hands pushes to [`Cache::invalidated`] as it reads them, in
//! order — so a change made before the `PING` has been applied when the cache is read, as a
//! change made before channels_redis's `ZRANGE` is in what that reads. A read whose
//! answer may have crossed an invalidation (the generation moved while it was in flight) is used
//! but not kept.
//!
//! **Expired members** (a score older than `group_expiry`) are filtered out of what the cache
//! holds at each send, and taken out of Redis (`ZREMRANGEBYSCORE`, which invalidates the entry)
//! when one is seen — where channels_redis trims before every read.
//!
//! **Falling back.** Where tracking is not available (a Redis before 6, an ACL without
//! `CLIENT`), or the tracking connection is lost, members are read as channels_redis reads them,
//! every send, and the cache is empty until a new tracking connection is up (tried again at
//! most every few seconds). When a Sentinel master moves, the connection is made again to the
//! new one and the cache emptied. [`RedisConfig::cache_groups`](crate::RedisConfig::cache_groups)
//! turns it off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::{Host, timed};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value as RValue};

/// A group's members as read, shared by the sends that use it until Redis says it changed.
pub(super) type Read = Arc<Group>;

/// A group's members as read: channel names and their scores (when each joined or last
/// refreshed its membership, Redis time in seconds), and the fan-out worked out from them
/// once, for every send while the read stays valid.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) members: Vec<(Box<str>, f64)>,
    pub(super) plan: std::sync::OnceLock<super::fanout::Plan>,
}

impl Group {
    pub(super) fn new(members: Vec<(Box<str>, f64)>) -> Read {
        Arc::new(Group {
            members,
            plan: std::sync::OnceLock::new(),
        })
    }
}

/// How long to wait before trying to make a tracking connection again.
const RETRY: Duration = Duration::from_secs(5);

/// The caches of a layer's hosts, one each.
pub(super) struct Members {
    hosts: Vec<HostCache>,
    enabled: bool,
}

struct HostCache {
    cache: Arc<Cache>,
    /// The tracking connection (when up) and the Sentinel move it was made after: read on
    /// every send, so behind a plain lock.
    conn: Mutex<Option<(MultiplexedConnection, u64)>>,
    /// Held while a tracking connection is being made (one attempt at a time), and when the
    /// last attempt failed.
    connecting: tokio::sync::Mutex<Option<Instant>>,
}

/// What one host's tracking connection has read and not seen invalidated.
#[derive(Default)]
struct Cache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Group key → its members.
    groups: HashMap<String, Read>,
    /// Moves with every invalidation (and every new or lost connection).
    generation: u64,
    /// Whether the connection the entries came through is up.
    tracking: bool,
}

impl State {
    /// Forgets every entry: the connection is new (`tracking`) or gone.
    fn reset(&mut self, tracking: bool) {
        self.groups.clear();
        self.generation += 1;
        self.tracking = tracking;
    }
}

impl Cache {
    /// A push on the tracking connection: drops what it invalidates.
    fn invalidated(&self, info: PushInfo) {
        let mut st = self.state.lock();
        match info.kind {
            PushKind::Invalidate => {
                // `[keys]`, or null when everything is invalidated (a flush).
                match info.data.first() {
                    Some(RValue::Array(keys)) => {
                        st.generation += 1;
                        for key in keys {
                            if let RValue::BulkString(k) = key
                                && let Ok(k) = std::str::from_utf8(k)
                            {
                                st.groups.remove(k);
                            }
                        }
                    }
                    _ => {
                        let tracking = st.tracking;
                        st.reset(tracking);
                    }
                }
            }
            PushKind::Disconnection => st.reset(false),
            _ => {}
        }
    }
}

impl Members {
    /// Caches for `hosts` hosts (none when `enabled` is false).
    pub(super) fn new(hosts: usize, enabled: bool) -> Members {
        Members {
            hosts: (0..hosts)
                .map(|_| HostCache {
                    cache: Arc::new(Cache::default()),
                    conn: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(None),
                })
                .collect(),
            enabled,
        }
    }

    /// The members of the group at `key` on host `h`: from the cache when the tracking
    /// connection vouches for it, else read over that connection (and kept when it may be).
    /// `None` when there is no tracking connection: the caller reads as channels_redis does.
    pub(super) async fn get(
        &self,
        h: usize,
        host: &Host,
        key: &str,
        timeout: Duration,
    ) -> Option<Read> {
        if !self.enabled {
            return None;
        }
        let hc = &self.hosts[h];
        let mut conn = hc.connection(host, timeout).await?;
        // The barrier: invalidations of writes made before it are applied once it answers.
        let ping = redis::cmd("PING");
        if let Err(e) = answered(timed(timeout, ping.query_async::<()>(&mut conn)).await) {
            hc.lost(host, &e);
            return None;
        }
        let generation = {
            let st = hc.cache.state.lock();
            if st.tracking
                && let Some(read) = st.groups.get(key)
            {
                crate::metrics::group_cache(true);
                return Some(read.clone());
            }
            st.generation
        };
        crate::metrics::group_cache(false);
        let mut zrange = redis::cmd("ZRANGE");
        zrange.arg(key).arg(0).arg(-1).arg("WITHSCORES");
        let value = match answered(timed(timeout, zrange.query_async::<RValue>(&mut conn)).await) {
            Ok(v) => v,
            Err(e) => {
                hc.lost(host, &e);
                return None;
            }
        };
        let read: Read = Group::new(parse(value));
        let mut st = hc.cache.state.lock();
        if st.tracking && st.generation == generation {
            st.groups.insert(key.to_owned(), read.clone());
        }
        Some(read)
    }
}

impl HostCache {
    /// The tracking connection, made when there is none (or the Sentinel master moved); `None`
    /// when it cannot be had now.
    async fn connection(&self, host: &Host, timeout: Duration) -> Option<MultiplexedConnection> {
        let moves = host.moves();
        let current = || {
            let conn = self.conn.lock();
            match &*conn {
                Some((c, made_after))
                    if *made_after == moves && self.cache.state.lock().tracking =>
                {
                    Some(c.clone())
                }
                _ => None,
            }
        };
        if let Some(c) = current() {
            return Some(c);
        }
        let mut failed_at = self.connecting.lock().await;
        if let Some(c) = current() {
            return Some(c); // made while this one waited
        }
        if failed_at.is_some_and(|at| at.elapsed() < RETRY) {
            return None;
        }
        *self.conn.lock() = None;
        match self.connect(host, timeout).await {
            Ok(conn) => {
                *self.conn.lock() = Some((conn.clone(), moves));
                *failed_at = None;
                Some(conn)
            }
            Err(e) => {
                if failed_at.is_none() {
                    tracing::info!(host = %host.name, error = %e, "group members are read on every group_send: no client tracking on this host (Redis 6 or later, and the CLIENT command, are needed to cache them)");
                }
                *failed_at = Some(Instant::now());
                None
            }
        }
    }

    async fn connect(
        &self,
        host: &Host,
        timeout: Duration,
    ) -> std::result::Result<MultiplexedConnection, redis::RedisError> {
        self.cache.state.lock().reset(false);
        let client = host.resp3_client()?;
        let sink = self.cache.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(host.connect_limit()))
            .set_response_timeout(Some(timeout))
            .set_push_sender(move |info: PushInfo| {
                sink.invalidated(info);
                Ok::<(), std::convert::Infallible>(())
            });
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async::<()>(&mut conn)
            .await?;
        self.cache.state.lock().reset(true);
        Ok(conn)
    }

    /// The tracking connection failed: empty the cache, make a new one on a later send.
    fn lost(&self, host: &Host, e: &dyn std::fmt::Display) {
        tracing::debug!(host = %host.name, error = %e, "the group members' tracking connection failed; reading members directly");
        *self.conn.lock() = None;
        self.cache.state.lock().reset(false);
    }
}

/// A command's answer within [`timed`]'s limit, or what went wrong (a timeout, a Redis error).
fn answered<T>(
    r: switchboard_core::Result<redis::RedisResult<T>>,
) -> std::result::Result<T, Box<dyn std::fmt::Display + Send>> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(e)),
        Err(e) => Err(Box::new(e)),
    }
}

/// `ZRANGE … WITHSCORES`: pairs in RESP3 (`[[member, score], …]`), a flat list in RESP2.
fn parse(value: RValue) -> Vec<(Box<str>, f64)> {
    let RValue::Array(items) = value else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    let mut pending: Option<Box<str>> = None;
    for item in items {
        match item {
            RValue::Array(pair) => {
                if let [member, score] = &pair[..]
                    && let (Some(m), Some(s)) = (text(member), number(score))
                {
                    out.push((m, s));
                }
            }
            other => match pending.take() {
                None => pending = text(&other),
                Some(m) => {
                    if let Some(s) = number(&other) {
                        out.push((m, s));
                    }
                }
            },
        }
    }
    out
}

fn text(v: &RValue) -> Option<Box<str>> {
    match v {
        RValue::BulkString(b) => std::str::from_utf8(b).ok().map(Into::into),
        RValue::SimpleString(s) => Some(s.as_str().into()),
        _ => None,
    }
}

fn number(v: &RValue) -> Option<f64> {
    match v {
        RValue::Double(d) => Some(*d),
        RValue::Int(i) => Some(*i as f64),
        RValue::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_parse_in_both_protocols() {
        let b = |s: &str| RValue::BulkString(s.as_bytes().to_vec());
        let resp3 = RValue::Array(vec![
            RValue::Array(vec![b("a!1"), RValue::Double(10.5)]),
            RValue::Array(vec![b("a!2"), RValue::Double(11.0)]),
        ]);
        let resp2 = RValue::Array(vec![b("a!1"), b("10.5"), b("a!2"), b("11")]);
        let want: Vec<(Box<str>, f64)> = vec![("a!1".into(), 10.5), ("a!2".into(), 11.0)];
        assert_eq!(parse(resp3), want);
        assert_eq!(parse(resp2), want);
        assert!(parse(RValue::Nil).is_empty());
    }

    #[test]
    fn invalidations_drop_what_they_name_and_a_null_drops_all() {
        let cache = Cache::default();
        {
            let mut st = cache.state.lock();
            st.tracking = true;
            st.groups.insert("g:a".into(), Group::new(Vec::new()));
            st.groups.insert("g:b".into(), Group::new(Vec::new()));
        }
        cache.invalidated(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![RValue::Array(vec![RValue::BulkString(b"g:a".to_vec())])],
        });
        {
            let st = cache.state.lock();
            assert!(!st.groups.contains_key("g:a") && st.groups.contains_key("g:b"));
            assert_eq!(st.generation, 1);
        }
        cache.invalidated(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![RValue::Nil],
        });
        assert!(cache.state.lock().groups.is_empty());
        cache.invalidated(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        assert!(!cache.state.lock().tracking);
    }
}
