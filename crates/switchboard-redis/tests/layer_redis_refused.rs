//! `RedisLayer`'s receive loops against a Redis that accepts connections but refuses their
//! commands (an ACL user without permission, a queue key of the wrong type): they must wait
//! between tries (50 ms doubling to 1 s), not reconnect in a hot loop, and work again once
//! Redis lets them.
//!
//! Each test connects as an ACL user of its own and counts that user's refused commands in
//! `ACL LOG`, so tests running side by side do not see each other's refusals.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use switchboard_core::{Layer, LayerConfig};
use switchboard_redis::{RedisConfig, RedisLayer};
use test_support::layers::{msg, raw, recv};
use test_support::redis::{AclUser, fresh_prefix};

/// How long each test lets a refused loop retry.
const WINDOW: Duration = Duration::from_millis(1500);

/// Tries a backoff of 50 ms doubling to 1 s allows in `WINDOW` (t = 0, 0.05, 0.15, 0.35, 0.75,
/// 1.55 s), with room for a slow machine. A loop that does not wait makes hundreds.
const MAX_TRIES: u64 = 10;

/// Commands Redis refused `user` so far (`ACL LOG` merges repeats into a count).
async fn refusals(user: &AclUser) -> u64 {
    let entries: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .arg(1000)
        .query_async(&mut raw(&user.server).await)
        .await
        .unwrap();
    entries
        .iter()
        .filter(|e| {
            e.get("username")
                .is_some_and(|u| redis::from_redis_value_ref::<String>(u).unwrap() == user.name)
        })
        .map(|e| redis::from_redis_value_ref::<u64>(&e["count"]).unwrap())
        .sum()
}

async fn layer_as(user: &AclUser, prefix: &str) -> Layer {
    let cfg = RedisConfig::new(user.url())
        .prefix(prefix)
        .layer(LayerConfig::default());
    Layer::new(RedisLayer::connect(cfg).await.unwrap())
}

async fn layer(server: &str, prefix: &str) -> Layer {
    let cfg = RedisConfig::new(server)
        .prefix(prefix)
        .layer(LayerConfig::default());
    Layer::new(RedisLayer::connect(cfg).await.unwrap())
}

#[tokio::test]
async fn a_refused_pop_is_retried_with_backoff() {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let user = AclUser::new(&url, &["bzmpop", "bzpopmin"]).await;
    let prefix = fresh_prefix();
    let b = layer_as(&user, &prefix).await;
    let ch = b.new_channel().await.unwrap();
    let waiting = {
        let (b, ch) = (b.clone(), ch.clone());
        tokio::spawn(async move { b.receive(&ch).await })
    };
    tokio::time::sleep(WINDOW).await;
    let tries = refusals(&user).await;
    assert!(
        (1..=MAX_TRIES).contains(&tries),
        "{tries} refused pops in {WINDOW:?}: the receive loop must back off"
    );
    // Once Redis lets it pop, the waiting receive gets what another process sends.
    user.allow(&["bzmpop", "bzpopmin"]).await;
    let a = layer(&url, &prefix).await;
    a.send(&ch, msg("after", 1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the receive loop must pop again once allowed")
        .unwrap()
        .unwrap();
    assert_eq!(got, msg("after", 1));
}

#[tokio::test]
async fn a_refused_in_flight_restore_is_retried_with_backoff() {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let user = AclUser::new(&url, &["evalsha", "eval"]).await;
    let prefix = fresh_prefix();
    let b = layer_as(&user, &prefix).await;
    // Making a channel starts the process's receive loop, which restores the in-flight backup
    // (a script) first.
    let ch = b.new_channel().await.unwrap();
    tokio::time::sleep(WINDOW).await;
    let tries = refusals(&user).await;
    assert!(
        (1..=MAX_TRIES).contains(&tries),
        "{tries} refused restores in {WINDOW:?}: the receive loop must back off"
    );
    user.allow(&["evalsha", "eval"]).await;
    let a = layer(&url, &prefix).await;
    a.send(&ch, msg("after", 1)).await.unwrap();
    assert_eq!(recv(&b, &ch).await, msg("after", 1));
}

#[tokio::test]
async fn a_refused_pop_on_a_named_channel_is_retried_with_backoff() {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let user = AclUser::new(&url, &["bzmpop", "bzpopmin"]).await;
    let prefix = fresh_prefix();
    let b = layer_as(&user, &prefix).await;
    let jobs: switchboard_core::ChannelName = "worker.jobs".parse().unwrap();
    let waiting = {
        let (b, jobs) = (b.clone(), jobs.clone());
        tokio::spawn(async move { b.receive(&jobs).await })
    };
    tokio::time::sleep(WINDOW).await;
    let tries = refusals(&user).await;
    assert!(
        (1..=MAX_TRIES).contains(&tries),
        "{tries} refused pops in {WINDOW:?}: the named channel's loop must back off"
    );
    user.allow(&["bzmpop", "bzpopmin"]).await;
    let a = layer(&url, &prefix).await;
    a.send(&jobs, msg("job", 1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the named channel's loop must pop again once allowed")
        .unwrap()
        .unwrap();
    assert_eq!(got, msg("job", 1));
}

/// A queue key someone overwrote with a string: every pop fails with `WRONGTYPE`. The count
/// is the server's (`INFO errorstats`); no other test in this binary provokes `WRONGTYPE`.
#[tokio::test]
async fn a_queue_key_of_the_wrong_type_is_retried_with_backoff() {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = fresh_prefix();
    let b = layer(&url, &prefix).await;
    let jobs: switchboard_core::ChannelName = "worker.jobs".parse().unwrap();
    let mut r = raw(&url).await;
    let key = format!("{prefix}worker.jobs");
    let _: () = r.set(&key, "not a sorted set").await.unwrap();
    let before = wrongtype_errors(&mut r).await;
    let waiting = {
        let (b, jobs) = (b.clone(), jobs.clone());
        tokio::spawn(async move { b.receive(&jobs).await })
    };
    tokio::time::sleep(WINDOW).await;
    let tries = wrongtype_errors(&mut r).await - before;
    assert!(
        (1..=MAX_TRIES).contains(&tries),
        "{tries} WRONGTYPE pops in {WINDOW:?}: the named channel's loop must back off"
    );
    let _: () = r.del(&key).await.unwrap();
    let a = layer(&url, &prefix).await;
    a.send(&jobs, msg("job", 1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the named channel's loop must pop again once the key is a queue again")
        .unwrap()
        .unwrap();
    assert_eq!(got, msg("job", 1));
}

async fn wrongtype_errors(r: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("errorstats")
        .query_async(r)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("errorstat_WRONGTYPE:count="))
        .map_or(0, |n| n.trim().parse().unwrap())
}
