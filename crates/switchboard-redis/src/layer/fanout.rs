//! Sends: one round trip per `send` to another process, two per `group_send` (the members —
//! a `PING` when they are cached, see `members.rs` — then one script per host), and this
//! process's own members served without Redis.

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value as RValue;
use switchboard_core::engine::{Hasher, Lagging};
use switchboard_core::message::MessageError;
use switchboard_core::{ChannelName, GroupName, LayerError, Message, Result};

use super::Inner;
use super::members::Read;
use super::scripts::{GROUP_SEND, SEND};
use crate::codec::{Codec, RouteRef};

/// `send` to a channel of another process, or to a named channel: into its Redis queue.
pub(super) async fn send_remote(
    inner: &Inner,
    channel: &ChannelName,
    message: Message,
) -> Result<()> {
    let fields = Codec::fields(&message).map_err(|e| MessageError::Serialize(e.0))?;
    let (key, host, route) = if channel.is_process_local() {
        let nl = channel.non_local_part();
        (
            format!("{}{nl}", inner.cfg.prefix),
            inner.host_for(nl),
            RouteRef::One(channel.as_str()),
        )
    } else {
        (
            format!("{}{channel}", inner.cfg.prefix),
            inner.host_for(channel.as_str()),
            RouteRef::Unrouted,
        )
    };
    let payload = inner
        .codec
        .encode(&fields, &route)
        .map_err(|e| MessageError::Serialize(e.0))?;
    let capacity = inner.cfg.layer.capacity_for(channel.as_str());
    let score = inner.clock.next();
    let mut c = host.conn();
    let queued: i64 = SEND
        .key(&key)
        .arg(score)
        .arg(payload)
        .arg(capacity)
        .arg(score - inner.expiry_secs())
        .arg(inner.queue_ttl())
        .invoke_async(&mut c)
        .await
        .map_err(|e| host.error(e))?;
    if queued == 1 {
        Ok(())
    } else {
        Err(LayerError::ChannelFull {
            channel: channel.clone(),
            capacity,
        })
    }
}

/// A group send's fan-out, worked out from a read of the group's members: this process's own
/// members, and the other processes' queues with theirs. Kept with a cached read
/// ([`Group::plan`](super::members::Group)), so sends to a group whose members did not change
/// do not go through the member names again.
#[derive(Debug)]
pub(super) struct Plan {
    /// The earliest score (join time) among the members planned for: the plan holds while it
    /// is later than the group expiry cutoff.
    earliest: f64,
    /// This process's own member channels (indexes into the read).
    own: Vec<usize>,
    /// Their count and digest, to compare with this process's index of the group.
    own_digest: (usize, u64),
    /// The other processes' queues.
    queues: Vec<ProcessQueue>,
    /// The routes naming the group for a send with history ([`Plan::history_routes`]), made
    /// at its first such send.
    history_routes: std::sync::OnceLock<Vec<crate::history::QueueRoute>>,
}

/// One process queue a group send reaches, and the members it holds.
#[derive(Debug)]
struct ProcessQueue {
    /// Its Redis key.
    key: String,
    /// Its host's index.
    host: usize,
    /// The capacity of its (first) member channel.
    capacity: usize,
    /// The member channels it holds (indexes into the read).
    channels: Vec<usize>,
    /// A switchboard process's queue: the message names the group, the count of `channels`
    /// and `digest`, instead of the channels (see [`group_send`]).
    by_group: bool,
    /// The XOR of `channels`' member digests (when `by_group`).
    digest: u64,
}

impl Plan {
    /// The fan-out to the members joined after `cutoff`.
    fn new(inner: &Inner, members: &[(Box<str>, f64)], cutoff: f64) -> Plan {
        let mut plan = Plan {
            earliest: f64::INFINITY,
            own: Vec::new(),
            own_digest: (0, 0),
            queues: Vec::new(),
            history_routes: std::sync::OnceLock::new(),
        };
        let mut index: HashMap<&str, usize, Hasher> = HashMap::default();
        for (at, (name, joined)) in members.iter().enumerate() {
            if *joined <= cutoff {
                continue; // expired
            }
            plan.earliest = plan.earliest.min(*joined);
            let name: &str = name;
            // Only this process's own channels skip Redis. A named channel (`worker.jobs`) this
            // process receives on has a local queue too, but other processes read it as well:
            // its message goes to its Redis queue.
            if inner.client.owns(name) {
                plan.own.push(at);
                plan.own_digest.0 += 1;
                plan.own_digest.1 ^= switchboard_core::engine::member_digest(name);
                continue;
            }
            let non_local = match name.find('!') {
                Some(i) => &name[..=i],
                None => name,
            };
            let i = *index.entry(non_local).or_insert_with(|| {
                plan.queues.push(ProcessQueue {
                    key: format!("{}{non_local}", inner.cfg.prefix),
                    host: inner.host_index(non_local),
                    capacity: inner.cfg.layer.capacity_for(name),
                    channels: Vec::new(),
                    by_group: crate::process::is_switchboard_queue(non_local),
                    digest: 0,
                });
                plan.queues.len() - 1
            });
            let q = &mut plan.queues[i];
            q.channels.push(at);
            if q.by_group {
                q.digest ^= switchboard_core::engine::member_digest(name);
            }
        }
        plan
    }

    /// The routes naming `group` for the switchboard process queues of this plan (this
    /// process's own too), made once per plan: each queue's name part, its channel count and
    /// the encoded route. `read` is the member read the plan was made from.
    fn history_routes(
        &self,
        group: &GroupName,
        read: &super::members::Group,
    ) -> &[crate::history::QueueRoute] {
        self.history_routes.get_or_init(|| {
            let route = |queue: &str, (channels, digest): (usize, u64)| {
                let route = Codec::group_route(group.as_str(), channels as u64, digest).ok()?;
                Some(crate::history::QueueRoute {
                    queue: queue.to_owned(),
                    channels,
                    route,
                })
            };
            let name_part = |i: usize| {
                let name: &str = &read.members[i].0;
                name.find('!').map(|bang| &name[..=bang])
            };
            let own = self
                .own
                .first()
                .and_then(|&i| name_part(i))
                .filter(|q| crate::process::is_switchboard_queue(q))
                .and_then(|q| route(q, self.own_digest));
            let others = self.queues.iter().filter(|q| q.by_group).filter_map(|q| {
                let queue = q.channels.first().and_then(|&i| name_part(i))?;
                route(queue, (q.channels.len(), q.digest))
            });
            own.into_iter().chain(others).collect()
        })
    }
}

/// The members of `group`: from the members cache when it vouches for them, else read as
/// channels_redis reads them (with no scores: `INFINITY`). Members that joined at or before
/// `cutoff` have expired: they are taken out of Redis (which tells the cache), where
/// channels_redis trims before every read, and the caller skips them.
pub(super) async fn read_members(inner: &Inner, group: &str, cutoff: f64) -> Result<Read> {
    let gkey = inner.group_key(group);
    let gh = inner.host_index(group);
    let ghost = &inner.hosts[gh];
    let mut c = ghost.conn();
    match inner
        .members
        .get(gh, ghost, &gkey, inner.cfg.command_timeout)
        .await
    {
        Some(read) => {
            if read.members.iter().any(|(_, s)| *s <= cutoff) {
                let _: () = redis::cmd("ZREMRANGEBYSCORE")
                    .arg(&gkey)
                    .arg("-inf")
                    .arg(cutoff)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| ghost.error(e))?;
            }
            Ok(read)
        }
        None => {
            let (names,): (Vec<Vec<u8>>,) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&gkey)
                .arg("-inf")
                .arg(cutoff)
                .ignore()
                .cmd("ZRANGE")
                .arg(&gkey)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .map_err(|e| ghost.error(e))?;
            Ok(super::members::Group::new(
                names
                    .iter()
                    .filter_map(|n| std::str::from_utf8(n).ok())
                    .map(|n| (Box::<str>::from(n), f64::INFINITY))
                    .collect(),
            ))
        }
    }
}

/// The fan-out of `read`: the plan kept with it, which holds while none of its members
/// expired; else one made for now, in `fresh` (and kept with the read when it covers every
/// member).
fn plan_of<'r>(
    inner: &Inner,
    read: &'r super::members::Group,
    cutoff: f64,
    fresh: &'r mut Option<Plan>,
) -> &'r Plan {
    match read.plan.get() {
        Some(plan) if plan.earliest > cutoff => plan,
        _ => {
            let plan = Plan::new(inner, &read.members, cutoff);
            if plan.own.len() + plan.queues.iter().map(|q| q.channels.len()).sum::<usize>()
                == read.members.len()
            {
                read.plan.get_or_init(|| plan)
            } else {
                fresh.insert(plan)
            }
        }
    }
}

/// `group_send`: this process's members get the message at once; the others are grouped by the
/// process queue they share, and each queue gets one copy. Returns the local members left
/// lagging, for back-pressure.
///
/// The copy for a channels_redis process (or any queue not known as a switchboard process's)
/// names its member channels in `__asgi_channel__`, as channels_redis does. The copy for
/// another switchboard process (its client id says so, [`crate::process::is_switchboard_queue`])
/// names the group instead, with how many of that process's channels are members and the
/// digest of their names: 60 bytes of routing where 1,000 members take 76 KB, and no names for
/// the receiver to parse and look up. The receiver serves it from its own index of the group
/// when its count and digest agree, which is the same member set; when they differ (a member
/// joined or left while the message was on its way, or another process added one of the
/// receiver's channels, which the receiver's index does not hold), it reads the group's
/// members from Redis when the message arrives and serves its own channels among them
/// (`receive.rs`). This process's own members are served the same way: from the engine's
/// index of the group when it holds the members read, else one by one.
pub(super) async fn group_send(
    inner: &Arc<Inner>,
    group: &GroupName,
    message: Message,
) -> Result<Lagging> {
    let score = inner.clock.next();
    let group_cutoff = score - inner.cfg.layer.group_expiry.as_secs_f64();
    let read = read_members(inner, group.as_str(), group_cutoff).await?;
    let mut lagging = Lagging::default();
    if read.members.is_empty() {
        return Ok(lagging);
    }
    let members = &read.members;
    let mut fresh = None;
    let plan = plan_of(inner, &read, group_cutoff, &mut fresh);

    let mut gone: Vec<&str> = Vec::new();
    if !plan.own.is_empty() {
        let at = inner.engine.arrival(std::time::Duration::ZERO);
        if inner.engine.group_digest(group.as_str()) == plan.own_digest {
            lagging = inner.engine.group_deliver(group.as_str(), &message, &at);
        } else {
            for &i in &plan.own {
                let name: &str = &members[i].0;
                match inner.engine.get(name) {
                    Some(q) => {
                        inner
                            .engine
                            .deliver_to_member(&q, message.clone(), &at, &mut lagging);
                    }
                    None => gone.push(name),
                }
            }
        }
    }
    let queues = &plan.queues;

    if !queues.is_empty() {
        let fields = Codec::fields(&message).map_err(|e| MessageError::Serialize(e.0))?;
        let cutoff = score - inner.expiry_secs();
        let ttl = inner.queue_ttl();
        let mut per_host: HashMap<usize, Vec<usize>, Hasher> = HashMap::default();
        for (i, q) in queues.iter().enumerate() {
            per_host.entry(q.host).or_default().push(i);
        }
        let mut calls = Vec::with_capacity(per_host.len());
        for (h, idxs) in per_host {
            let mut inv = GROUP_SEND.prepare_invoke();
            for &i in &idxs {
                inv.key(&queues[i].key);
            }
            for &i in &idxs {
                let q = &queues[i];
                let names: Vec<&str>;
                let route = if q.by_group {
                    RouteRef::Group {
                        group: group.as_str(),
                        members: q.channels.len() as u64,
                        digest: q.digest,
                    }
                } else if q.key.ends_with('!') {
                    names = q.channels.iter().map(|&c| &*members[c].0).collect();
                    RouteRef::Many(&names)
                } else {
                    RouteRef::Unrouted
                };
                let payload = inner
                    .codec
                    .encode(&fields, &route)
                    .map_err(|e| MessageError::Serialize(e.0))?;
                inv.arg(payload);
            }
            for &i in &idxs {
                inv.arg(queues[i].capacity);
            }
            inv.arg(score)
                .arg(cutoff)
                .arg(ttl)
                .arg(if inner.cfg.drop_stalled_members {
                    "1"
                } else {
                    "0"
                });
            let host = &inner.hosts[h];
            calls.push(async move {
                let mut c = host.conn();
                let r: RValue = inv.invoke_async(&mut c).await.map_err(|e| host.error(e))?;
                Ok::<_, LayerError>((idxs, r))
            });
        }
        let mut full_channels = 0u64;
        for r in futures_util::future::join_all(calls).await {
            let (idxs, value) = r?;
            let RValue::Array(parts) = value else {
                continue;
            };
            for i in indexes(parts.first()) {
                if let Some(&q) = idxs.get(i) {
                    full_channels += queues[q].channels.len() as u64;
                }
            }
            for i in indexes(parts.get(1)) {
                if let Some(&q) = idxs.get(i) {
                    tracing::info!(group = %group, queue = %queues[q].key, "group member's queue holds expired messages; its channels leave the group");
                    gone.extend(queues[q].channels.iter().map(|&c| &*members[c].0));
                }
            }
        }
        if full_channels > 0 {
            inner.engine.count_group_full_drops(full_channels);
            tracing::debug!(group = %group, skipped = full_channels, "group_send skipped full channels");
        }
    }

    if !gone.is_empty() {
        let ghost = inner.host_for(group.as_str());
        let _: () = redis::cmd("ZREM")
            .arg(inner.group_key(group.as_str()))
            .arg(&gone)
            .query_async(&mut ghost.conn())
            .await
            .map_err(|e| ghost.error(e))?;
    }
    Ok(lagging)
}

/// The members from which a group send with history names the group in the copies for
/// switchboard processes (see [`group_send_history`]).
const NAMED_FROM: usize = 32;

/// The groups whose size [`group_send_history`] remembers.
pub(super) const HISTORY_SIZES: usize = 4096;

/// `group_send` to a group with history: one script numbers the message, keeps it and queues
/// it for every member's process (this one's too, through its receive loop), so members get a
/// group's messages in offset order whichever process sends them. This process's members are
/// not served without Redis, nor waited for (back-pressure).
///
/// The script reads the members itself (a member that joined before it ran gets the message
/// live), but cannot compute the digests that let a copy name the group: those come from the
/// members cache (as [`group_send`] reads it: a `PING`, then the cached read), per switchboard
/// process queue, and the script uses one where it finds that queue holding as many channels as
/// the read said — else it lists the channels. A receiver whose index disagrees with the digest
/// reads the members from Redis (`receive.rs`). Only for a group that had [`NAMED_FROM`]
/// members or more at its last send from this process (the script says how many): for a
/// smaller one the read's round trip costs more than the names.
pub(super) async fn group_send_history(
    inner: &Arc<Inner>,
    group: &GroupName,
    message: Message,
    history: switchboard_core::HistoryConfig,
) -> Result<switchboard_core::Position> {
    let fields = Codec::fields(&message).map_err(|e| MessageError::Serialize(e.0))?;
    // Routes for a group that had at least `NAMED_FROM` members at its last send from here:
    // for a small one, the read (a `PING` on the members cache's connection) costs more than
    // listing its few channels. Only from the members cache: without it (off, or no tracking
    // connection) a read would carry every member's name for routes the script can do without.
    let large = inner
        .history_sizes
        .lock()
        .get(group.as_str())
        .is_some_and(|&n| n >= NAMED_FROM);
    let gh = inner.host_index(group.as_str());
    let cached = if large {
        let key = inner.group_key(group.as_str());
        let timeout = inner.cfg.command_timeout;
        inner.members.get(gh, &inner.hosts[gh], &key, timeout).await
    } else {
        None
    };
    let cutoff = crate::conn::unix_now() - inner.cfg.layer.group_expiry.as_secs_f64();
    let mut fresh = None;
    let routes = match &cached {
        Some(read) => plan_of(inner, read, cutoff, &mut fresh).history_routes(group, read),
        None => &[],
    };
    let send = crate::history::CoreSend {
        host: inner.host_for(group.as_str()),
        group_key: &inner.group_key(group.as_str()),
        key_prefix: &inner.cfg.prefix,
        capacity: inner.cfg.layer.capacity,
        expiry_secs: inner.expiry_secs(),
        queue_ttl: inner.queue_ttl(),
        group_expiry_secs: inner.cfg.layer.group_expiry.as_secs_f64(),
        drop_stalled: inner.cfg.drop_stalled_members,
        routes,
    };
    let crate::history::CoreSent {
        position,
        full,
        stalled,
        members,
    } = inner
        .histories
        .core_group_send(send, &inner.codec, group.as_str(), &fields, history)
        .await?;
    {
        let members = usize::try_from(members).unwrap_or(usize::MAX);
        let mut sizes = inner.history_sizes.lock();
        match sizes.get_mut(group.as_str()) {
            Some(n) => *n = members,
            None => {
                if sizes.len() >= HISTORY_SIZES {
                    sizes.clear();
                }
                sizes.insert(group.as_str().to_owned(), members);
            }
        }
    }
    if full > 0 {
        inner.engine.count_group_full_drops(full);
        tracing::debug!(group = %group, skipped = full, "group_send skipped full channels");
    }
    if stalled > 0 {
        tracing::info!(group = %group, stalled, "group members whose queues hold expired messages left the group");
    }
    Ok(position)
}

fn indexes(value: Option<&RValue>) -> Vec<usize> {
    match value {
        Some(RValue::Array(items)) => items
            .iter()
            .filter_map(|v| match v {
                RValue::Int(i) => usize::try_from(*i).ok().and_then(|i| i.checked_sub(1)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
