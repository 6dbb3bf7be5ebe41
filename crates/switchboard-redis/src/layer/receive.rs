//! The receive loops: one per process queue, one per host for each named channel this process
//! receives on. Each pops only while receivers wait, decodes each message once and hands it to
//! the engine's local queues.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value as RValue;
use redis::aio::MultiplexedConnection;
use switchboard_core::engine::{Arrival, Demand, Pushed, Queue};
use switchboard_core::{ChannelName, Message};
use tokio::sync::watch;

use super::Inner;
use super::scripts::RESTORE_INFLIGHT;
use crate::codec::Route;
use crate::conn::{self, Host, Retry, unix_now};

/// Messages taken per `ZPOPMIN` when draining a burst.
const DRAIN_BATCH: usize = 512;

/// The receive loop of one process queue: pops into this process's channels while receivers
/// wait.
pub(super) async fn process_loop(inner: Arc<Inner>, non_local: String, demand: Arc<Demand>) {
    let key = format!("{}{non_local}", inner.cfg.prefix);
    let host = inner.host_for(&non_local);
    receive_loop(&inner, &key, host, &demand, None).await;
}

/// Receives on a named channel (shared with other processes), from one host, while receivers
/// wait.
pub(super) async fn named_loop(
    inner: Arc<Inner>,
    channel: ChannelName,
    host_index: usize,
    demand: Arc<Demand>,
) {
    let key = format!("{}{channel}", inner.cfg.prefix);
    let queue = inner.engine.queue_fed_by(&channel, &demand);
    receive_loop(
        &inner,
        &key,
        &inner.hosts[host_index],
        &demand,
        Some(&queue),
    )
    .await;
}

/// Decodes a popped message; `None` when it does not decode or is older than `expiry` (counted
/// and logged: it is dropped).
fn decode_fresh(
    inner: &Inner,
    queue_key: &str,
    member: &[u8],
    score: f64,
) -> Option<(Message, Route, Arrival)> {
    let (message, route) = match inner.codec.decode(member) {
        Ok(d) => d,
        Err(e) => {
            inner.engine.count_undecodable();
            tracing::warn!(key = queue_key, error = %e, "skipping a message that does not decode");
            return None;
        }
    };
    let age = conn::age(score, unix_now());
    if age >= inner.cfg.layer.expiry {
        inner.engine.count_expired(1);
        tracing::debug!(
            key = queue_key,
            ?age,
            "dropping a message older than expiry"
        );
        return None;
    }
    Some((message, route, inner.engine.arrival(age)))
}

/// Hands a message popped from `queue`, a named channel's local queue, to it — queued only
/// while more receivers wait than the channel holds: returns `false` if it was not, and it
/// belongs back in Redis.
fn deliver_named(
    inner: &Inner,
    queue_key: &str,
    member: &[u8],
    score: f64,
    queue: &Arc<Queue>,
    demand: &Demand,
) -> bool {
    match decode_fresh(inner, queue_key, member, score) {
        Some((message, _, at)) => {
            inner.engine.deliver_wanted(queue, message, &at, demand) != Pushed::Unwanted
        }
        None => true,
    }
}

/// Hands a message popped from this process's queue to the local channel(s) it names, or, for
/// a group message from another switchboard process, to the group's members here.
async fn deliver(inner: &Arc<Inner>, queue_key: &str, member: &[u8], score: f64) {
    let Some((message, route, at)) = decode_fresh(inner, queue_key, member, score) else {
        return;
    };
    // A process queue's message names channels of this process; a name that is not one (a
    // named channel this process also receives on) must not be fed from here.
    match route {
        Route::One(channel) if inner.client.owns(&channel) => {
            // The queue where it is; a channel of this process gets one if it has none.
            let queue = match inner.engine.get(&channel) {
                Some(q) => q,
                None => match ChannelName::new(&channel) {
                    Ok(name) => inner.own_queue(&name),
                    Err(e) => {
                        tracing::debug!(error = %e, "process-queue message for a bad channel name skipped");
                        return;
                    }
                },
            };
            inner.engine.deliver(&queue, message, &at);
        }
        Route::One(channel) => {
            tracing::debug!(%channel, "process-queue message for a channel not of this process skipped");
        }
        Route::Many(channels) => {
            let mut lagging = Default::default();
            for channel in channels {
                if inner.client.owns(&channel)
                    && let Some(q) = inner.engine.get(&channel)
                {
                    inner
                        .engine
                        .deliver_to_member(&q, message.clone(), &at, &mut lagging);
                }
            }
        }
        Route::Group {
            group,
            members,
            digest,
        } => {
            let (here, here_digest) = inner.engine.group_digest(&group);
            if here as u64 == members && here_digest == digest {
                crate::metrics::group_route(true);
                inner.engine.group_deliver(&group, &message, &at);
            } else {
                crate::metrics::group_route(false);
                deliver_to_members_in_redis(inner, &group, &message, &at).await;
            }
        }
        Route::Unrouted => {
            tracing::debug!(
                key = queue_key,
                "process-queue message without __asgi_channel__ skipped"
            );
        }
    }
}

/// A group message whose member count or digest differ from this process's index of the
/// group (a member joined or left while it was on its way, or another process added one of
/// this process's channels to the group): delivered to this process's channels among the
/// group's members in Redis now. If Redis cannot say, to the members in the index.
async fn deliver_to_members_in_redis(
    inner: &Arc<Inner>,
    group: &str,
    message: &Message,
    at: &Arrival,
) {
    let cutoff = unix_now() - inner.cfg.layer.group_expiry.as_secs_f64();
    let read = super::fanout::read_members(inner, group, cutoff);
    let read = match conn::timed(inner.cfg.command_timeout, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) | Err(e) => {
            tracing::warn!(group, error = %e, "could not read a group's members for a group message; it goes to the members this process knows of");
            inner.engine.group_deliver(group, message, at);
            return;
        }
    };
    let mut lagging = Default::default();
    for (name, joined) in &read.members {
        if *joined > cutoff
            && inner.client.owns(name)
            && let Some(q) = inner.engine.get(name)
        {
            inner
                .engine
                .deliver_to_member(&q, message.clone(), at, &mut lagging);
        }
    }
}

/// Connects to `host` and pops from `key` (with [`pop_forever`]) until shutdown, reconnecting
/// after every failure. Every way an attempt can fail ends in one place and waits before the
/// next try: a host that accepts connections but refuses the commands must not be retried in a
/// hot loop. `named` is the local queue of a named channel; without it, `key` is this process's
/// queue, and after an outage the process writes its memberships again.
async fn receive_loop(
    inner: &Arc<Inner>,
    key: &str,
    host: &Host,
    demand: &Demand,
    named: Option<&Arc<Queue>>,
) {
    let backup = format!("{key}$inflight");
    let mut state = LoopState {
        shutdown: inner.shutdown.clone(),
        moved: host.moved(),
        retry: Retry::new(),
    };
    let mut was_down = false;
    loop {
        state.moved.mark_unchanged();
        let failure = 'attempt: {
            let conn = tokio::select! {
                _ = state.shutdown.changed() => return,
                c = conn::blocking_connection(host, &inner.cfg) => c,
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => break 'attempt format!("connecting: {e}"),
            };
            let r: redis::RedisResult<()> = RESTORE_INFLIGHT
                .key(key)
                .key(&backup)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = r {
                break 'attempt format!("restoring the in-flight backup: {e}");
            }
            if was_down {
                tracing::info!(host = %host.name, key, "receive loop reconnected to redis");
                crate::metrics::reconnected("receive");
                if named.is_none() {
                    super::upkeep::reassert_memberships(inner, None).await;
                }
            }
            match pop_forever(inner, host, key, &mut conn, &mut state, demand, named).await {
                Ok(()) | Err(PopEnd::Shutdown) => return,
                Err(PopEnd::Redis(e)) => e,
            }
        };
        was_down = true;
        let failed = state.retry.failed(Instant::now());
        if let Some(failures) = failed.warn {
            tracing::warn!(host = %host.name, key, error = %failure, failures, retry_in = ?failed.wait, "receive loop: redis failed; retrying");
        }
        tokio::select! {
            _ = state.shutdown.changed() => return,
            () = tokio::time::sleep(failed.wait) => {}
            // A new master (Sentinel): no need to wait out the backoff.
            _ = state.moved.changed() => {}
        }
    }
}

/// A receive loop's state across attempts: what ends an attempt besides Redis (shutdown, and
/// behind Sentinel a new master), and the retry schedule.
struct LoopState {
    shutdown: watch::Receiver<bool>,
    moved: watch::Receiver<u64>,
    retry: Retry,
}

enum PopEnd {
    Shutdown,
    Redis(String),
}

/// Pops from `key` while receives wait, until an error or shutdown. A process queue is drained
/// in bursts; a named channel (shared with other processes) gets one message per waiting
/// receiver, and what it pops beyond that goes back to Redis. Each answered pop counts as a
/// success for `retry`.
async fn pop_forever(
    inner: &Arc<Inner>,
    host: &Host,
    key: &str,
    conn: &mut MultiplexedConnection,
    state: &mut LoopState,
    demand: &Demand,
    named: Option<&Arc<Queue>>,
) -> std::result::Result<(), PopEnd> {
    let bzmpop = server_major_version(conn).await >= 7;
    let block = inner.cfg.blocking_timeout.as_secs().max(1);
    // Our own limit on a blocking pop: a little longer than the pop's own timeout, so a dead
    // TCP peer is noticed.
    let limit = inner.cfg.blocking_timeout + Duration::from_secs(5);
    loop {
        loop {
            let wake = demand.notified();
            // A named channel pops only for receivers not served yet, so other processes
            // reading the same channel get their share.
            if demand.waiting() > named.map_or(0, |q| q.len()) {
                break;
            }
            tokio::select! {
                _ = state.shutdown.changed() => return Err(PopEnd::Shutdown),
                () = wake => {}
            }
        }
        // Redis 7 pops a burst in one blocking call; older servers pop one, then drain.
        let pop = if bzmpop {
            let count = match named {
                Some(q) => demand.waiting().saturating_sub(q.len()).max(1),
                None => DRAIN_BATCH,
            };
            let mut c = redis::cmd("BZMPOP");
            c.arg(block)
                .arg(1)
                .arg(key)
                .arg("MIN")
                .arg("COUNT")
                .arg(count);
            c
        } else {
            let mut c = redis::cmd("BZPOPMIN");
            c.arg(key).arg(block);
            c
        };
        let popped = tokio::select! {
            _ = state.shutdown.changed() => return Err(PopEnd::Shutdown),
            // Sentinel named a new master: pop there.
            _ = state.moved.changed() => return Err(PopEnd::Redis("the master moved".into())),
            r = tokio::time::timeout(limit, pop.query_async::<RValue>(conn)) => r,
        };
        let value = match popped {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                host.suspect(&e);
                return Err(PopEnd::Redis(e.to_string()));
            }
            Err(_) => {
                return Err(PopEnd::Redis(format!(
                    "no answer to a blocking pop within {limit:?}"
                )));
            }
        };
        let failures = state.retry.succeeded();
        if failures > 0 {
            tracing::info!(key, failures, "receive loop pops again");
        }
        let RValue::Array(items) = value else {
            continue; // timed out: nothing arrived
        };
        if let Some(queue) = named {
            // [key, [[member, score], ...]] (BZMPOP) or [key, member, score] (BZPOPMIN)
            let pairs: Vec<(&[u8], f64)> = match &items[..] {
                [_, RValue::Array(popped)] => popped
                    .iter()
                    .filter_map(|pair| match pair {
                        RValue::Array(pair) => match &pair[..] {
                            [member, score] => popped_pair(member, score),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect(),
                [_, member, score] => popped_pair(member, score).into_iter().collect(),
                _ => Vec::new(),
            };
            let unwanted: Vec<(&[u8], f64)> = pairs
                .into_iter()
                .filter(|&(member, score)| !deliver_named(inner, key, member, score, queue, demand))
                .collect();
            give_back(inner, key, conn, queue, &unwanted).await?;
            continue;
        }
        if bzmpop {
            if let Some(RValue::Array(popped)) = items.get(1) {
                for pair in popped {
                    if let RValue::Array(pair) = pair
                        && let [member, score] = &pair[..]
                        && let Some((member, score)) = popped_pair(member, score)
                    {
                        deliver(inner, key, member, score).await;
                    }
                }
            }
            continue;
        }
        if let [_, member, score] = &items[..]
            && let Some((member, score)) = popped_pair(member, score)
        {
            deliver(inner, key, member, score).await;
        }
        // Drain a burst without blocking.
        loop {
            let batch: RValue = redis::cmd("ZPOPMIN")
                .arg(key)
                .arg(DRAIN_BATCH)
                .query_async(conn)
                .await
                .map_err(|e| PopEnd::Redis(e.to_string()))?;
            let RValue::Array(items) = batch else { break };
            let n = items.len() / 2;
            for pair in items.chunks_exact(2) {
                if let Some((member, score)) = popped_pair(&pair[0], &pair[1]) {
                    deliver(inner, key, member, score).await;
                }
            }
            if n < DRAIN_BATCH {
                break;
            }
        }
    }
}

/// Puts messages a named channel's loop popped beyond its waiting receives back in Redis,
/// with their scores, for the other processes reading the channel. If Redis does not take
/// them, they are queued here after all (nothing is lost) and the loop reconnects.
async fn give_back(
    inner: &Arc<Inner>,
    key: &str,
    conn: &mut MultiplexedConnection,
    queue: &Arc<Queue>,
    unwanted: &[(&[u8], f64)],
) -> std::result::Result<(), PopEnd> {
    if unwanted.is_empty() {
        return Ok(());
    }
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(key);
    for &(member, score) in unwanted {
        zadd.arg(score).arg(member);
    }
    let r: redis::RedisResult<()> = redis::pipe()
        .add_command(zadd)
        .ignore()
        .cmd("EXPIRE")
        .arg(key)
        .arg(inner.queue_ttl())
        .ignore()
        .query_async(conn)
        .await;
    if let Err(e) = r {
        for &(member, score) in unwanted {
            // Queued here after all (nothing is lost), whatever the receivers waiting.
            let pushed = inner.codec.decode(member).map(|(m, _)| {
                let at = inner.engine.arrival(conn::age(score, unix_now()));
                inner.engine.deliver(queue, m, &at)
            });
            if pushed.is_err() {
                inner.engine.count_undecodable();
            }
        }
        return Err(PopEnd::Redis(format!(
            "putting back messages nobody here waits for: {e}"
        )));
    }
    tracing::trace!(
        key,
        n = unwanted.len(),
        "put back messages nobody here waits for"
    );
    Ok(())
}

/// The server's major version (0 if unknown).
async fn server_major_version(conn: &mut MultiplexedConnection) -> u32 {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A popped member and its score (send time, Unix seconds; now if unreadable).
fn popped_pair<'a>(member: &'a RValue, score: &RValue) -> Option<(&'a [u8], f64)> {
    let member = match member {
        RValue::BulkString(b) => &b[..],
        _ => return None,
    };
    let score = match score {
        RValue::BulkString(s) => std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(unix_now),
        RValue::Double(d) => *d,
        RValue::Int(i) => *i as f64,
        _ => unix_now(),
    };
    Some((member, score))
}
