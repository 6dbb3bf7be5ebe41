//! Background upkeep: memberships the engine ended leave their Redis groups too; expired
//! messages of untouched channels are swept; a host that reconnected (it may have restarted
//! empty) or lost this process's keys (`FLUSHALL`) gets this process's memberships back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::engine::{Hasher, Leave};

use super::Inner;
use crate::config::RedisConfig;
use crate::conn::{self, unix_now};

/// Background upkeep: channels whose messages expired leave their groups; expired messages
/// of untouched channels are swept; a host that reconnected gets this process's memberships
/// back.
pub(super) async fn janitor(inner: Arc<Inner>) {
    let Ok(mut leave_rx) = inner.leaves.try_lock() else {
        return; // another janitor runs
    };
    let mut shutdown = inner.shutdown.clone();
    let sweep_every =
        (inner.cfg.layer.expiry / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = tokio::time::interval(Duration::from_secs(1));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client_ids: Vec<Option<i64>> = vec![None; inner.hosts.len()];
    let marker = conn::marker_key(&inner.cfg.prefix, inner.client.as_str());
    let mut marked = vec![false; inner.hosts.len()];
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(leave) = leave_rx.recv() => leave_groups(&inner, leave).await,
            _ = sweep.tick() => inner.engine.sweep(),
            _ = health.tick() => {
                for (i, host) in inner.hosts.iter().enumerate() {
                    let mut c = host.conn();
                    let id = tokio::time::timeout(
                        inner.cfg.command_timeout,
                        redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut c),
                    )
                    .await;
                    match id {
                        Ok(Ok(id)) => {
                            // A new connection: Redis may have restarted empty.
                            let reconnected = client_ids[i].is_some_and(|old| old != id);
                            client_ids[i] = Some(id);
                            let lost = conn::lost_data(host, &marker, &mut marked[i], inner.cfg.command_timeout).await;
                            if lost {
                                let told = inner.engine.mark_gap_everywhere();
                                tracing::warn!(host = %host.name, told, "redis lost this process's keys (FLUSHALL, a restart without persistence?): writing its group memberships again; messages queued there are gone, and this process's receivers are told");
                            }
                            if reconnected || lost {
                                reassert_memberships(&inner, Some(i)).await;
                            }
                        }
                        _ => {
                            if client_ids[i].is_some() {
                                tracing::warn!(host = %host.name, "redis does not answer");
                            }
                            // Keep the last id: a changed id after the outage triggers the rewrite.
                        }
                    }
                }
            }
        }
    }
}

/// Writes again, with their original join times, the memberships this process added that
/// Redis lost (a restart without persistence, a failover to a lagging replica).
pub(super) async fn reassert_memberships(inner: &Inner, host_index: Option<usize>) {
    let cutoff = unix_now() - inner.cfg.layer.group_expiry.as_secs_f64();
    let ttl = RedisConfig::ttl_secs(inner.cfg.layer.group_expiry);
    let now = unix_now();
    let mut per_host: HashMap<usize, redis::Pipeline, Hasher> = HashMap::default();
    for m in inner.engine.memberships() {
        let h = inner.host_index(m.group.as_str());
        let joined = now - m.age.as_secs_f64();
        if joined <= cutoff || host_index.is_some_and(|i| i != h) {
            continue;
        }
        let key = inner.group_key(m.group.as_str());
        per_host
            .entry(h)
            .or_insert_with(redis::pipe)
            .cmd("ZADD")
            .arg(&key)
            .arg("NX")
            .arg(joined)
            .arg(m.channel.as_str())
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl)
            .ignore();
    }
    for (h, pipe) in per_host {
        let host = &inner.hosts[h];
        let mut c = host.conn();
        match pipe.query_async::<()>(&mut c).await {
            Ok(()) => {
                tracing::info!(host = %host.name, "group memberships of this process written again")
            }
            Err(e) => {
                tracing::warn!(host = %host.name, error = %e, "could not write group memberships again")
            }
        }
    }
}

async fn leave_groups(inner: &Inner, leave: Leave) {
    for group in leave.groups {
        if let Err(e) = inner.leave_group(&group, &leave.channel).await {
            tracing::warn!(channel = %leave.channel, %group, error = %e, "could not take a channel out of its group");
        }
    }
}
