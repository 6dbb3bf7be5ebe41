//! Upstreams: one per distinct search term, shared by its listeners through a group.
//!
//! The first listener of a term creates its upstream: a task that reads the source's stream and
//! `group_send`s each post to the term's group — the first at once, then at most one per
//! interval (posts arriving meanwhile replace each other, so the one sent is the newest).
//! Listeners join the group; the [`Listener`] each holds counts them. When the last
//! subscription is dropped — the listener stopped, searched for something else, or disconnected —
//! the task is aborted, which drops the source's stream and closes the upstream connection.
//!
//! Group names carry an instance id, so several processes on one Redis layer each serve their
//! own listeners and never deliver a post twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use switchboard::{GroupName, Layer};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::source::{Post, PostStream, Source, SourceEvent, Term};

/// The upstreams of one process.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("source", &self.inner.source.describe())
            .field("interval", &self.inner.interval)
            .field("max_terms", &self.inner.max_terms)
            .field("upstreams", &self.upstreams())
            .finish()
    }
}

struct Inner {
    layer: Layer,
    source: Arc<dyn Source>,
    interval: Duration,
    max_terms: usize,
    instance: String,
    next_id: AtomicU64,
    upstreams: Mutex<HashMap<String, Upstream>>,
    running: Arc<AtomicUsize>,
}

struct Upstream {
    id: u64,
    group: GroupName,
    term: Term,
    listeners: usize,
    task: Option<JoinHandle<()>>,
    last: Arc<Mutex<Option<Post>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One listener's share of an upstream. Dropping the last one ends the upstream.
pub struct Listener {
    inner: Arc<Inner>,
    key: String,
    id: u64,
    group: GroupName,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("term", &self.key)
            .field("group", &self.group)
            .finish()
    }
}

impl Listener {
    /// The group the upstream sends to: join it to get the posts.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The upstream's id, carried by each of its messages.
    pub fn upstream_id(&self) -> u64 {
        self.id
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut map = lock(&self.inner.upstreams);
        let Some(up) = map.get_mut(&self.key).filter(|u| u.id == self.id) else {
            return;
        };
        up.listeners -= 1;
        if up.listeners == 0
            && let Some(up) = map.remove(&self.key)
            && let Some(task) = up.task
        {
            tracing::debug!(term = %self.key, "last listener left; ending the upstream");
            task.abort();
        }
    }
}

/// Counts running upstream tasks; decremented when a task's future is dropped, however it ends.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Distinct search terms one process follows at most, by default.
pub const DEFAULT_MAX_TERMS: usize = 100;

impl Hub {
    /// Upstreams from `source`, sending on `layer`, at most one post per `interval`, for at most
    /// [`DEFAULT_MAX_TERMS`] terms at once.
    pub fn new(layer: Layer, source: Arc<dyn Source>, interval: Duration) -> Hub {
        Hub::with_max_terms(layer, source, interval, DEFAULT_MAX_TERMS)
    }

    /// As [`new`](Hub::new), for at most `max_terms` distinct terms at once: each is an upstream
    /// (a connection, a rule, a task), and anyone may open a socket and search.
    pub fn with_max_terms(
        layer: Layer,
        source: Arc<dyn Source>,
        interval: Duration,
        max_terms: usize,
    ) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                layer,
                source,
                interval,
                max_terms,
                instance: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
                next_id: AtomicU64::new(1),
                upstreams: Mutex::new(HashMap::new()),
                running: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// The source's description.
    pub fn describe(&self) -> String {
        self.inner.source.describe()
    }

    /// The pacing interval.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// Counts a new listener of `term`. Join [`Listener::group`], then call
    /// [`start`](Hub::start): joining first means the first post cannot be missed. `Err` (a
    /// message for the user) when the term is new and the hub already follows `max_terms`.
    pub fn subscribe(&self, term: &Term) -> Result<Listener, String> {
        let mut map = lock(&self.inner.upstreams);
        let max = self.inner.max_terms;
        if map.len() >= max && !map.contains_key(term.key()) {
            return Err(format!(
                "this server already follows {max} different searches, its limit \
                 (--max-terms): search for one of those, or try again later"
            ));
        }
        let up = match map.entry(term.key().to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                // The instance id is hex and the id a number: always a valid group name.
                let group = GroupName::new(format!("tweets.{}.{id}", self.inner.instance))
                    .map_err(|e| e.to_string())?;
                e.insert(Upstream {
                    id,
                    group,
                    term: term.clone(),
                    listeners: 0,
                    task: None,
                    last: Arc::new(Mutex::new(None)),
                })
            }
        };
        up.listeners += 1;
        Ok(Listener {
            inner: self.inner.clone(),
            key: term.key().to_owned(),
            id: up.id,
            group: up.group.clone(),
        })
    }

    /// Starts the subscription's upstream if it is not running. Returns the post it sent last,
    /// if any, so a listener joining a running upstream gets one at once; `Err` if the source
    /// cannot search for the term.
    pub fn start(&self, sub: &Listener) -> Result<Option<Post>, String> {
        let mut map = lock(&self.inner.upstreams);
        let up = map
            .get_mut(&sub.key)
            .filter(|u| u.id == sub.id)
            .ok_or("this search has ended")?;
        if up.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(lock(&up.last).clone());
        }
        let stream = self.inner.source.open(&up.term)?;
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.inner.running.clone());
        let task = Upstreaming {
            layer: self.inner.layer.clone(),
            group: up.group.clone(),
            id: up.id,
            interval: self.inner.interval,
            last: up.last.clone(),
        };
        up.task = Some(tokio::spawn(task.run(stream, running)));
        Ok(lock(&up.last).clone())
    }

    /// Terms with at least one listener.
    pub fn upstreams(&self) -> usize {
        lock(&self.inner.upstreams).len()
    }

    /// Upstream tasks alive. Equals [`upstreams`](Hub::upstreams) once tasks have settled:
    /// no task outlives its listeners.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// Listeners, over every term.
    pub fn listeners(&self) -> usize {
        lock(&self.inner.upstreams)
            .values()
            .map(|u| u.listeners)
            .sum()
    }

    /// This process's instance id, part of every group name it sends to.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }
}

/// What one upstream task needs.
struct Upstreaming {
    layer: Layer,
    group: GroupName,
    id: u64,
    interval: Duration,
    last: Arc<Mutex<Option<Post>>>,
}

impl Upstreaming {
    async fn run(self, mut stream: PostStream, _running: Running) {
        'idle: loop {
            // Nothing sent within the last interval: the next post goes out at once.
            let post = loop {
                match stream.next().await {
                    None => return self.ended().await,
                    Some(SourceEvent::Status(s)) => self.status(s).await,
                    Some(SourceEvent::Post(p)) if p.repost => {}
                    Some(SourceEvent::Post(p)) => break p,
                }
            };
            self.publish(post).await;
            let mut deadline = Instant::now() + self.interval;
            let mut pending: Option<Post> = None;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => match pending.take() {
                        Some(p) => {
                            self.publish(p).await;
                            deadline = Instant::now() + self.interval;
                        }
                        None => continue 'idle,
                    },
                    ev = stream.next() => match ev {
                        None => return self.ended().await,
                        Some(SourceEvent::Status(s)) => self.status(s).await,
                        Some(SourceEvent::Post(p)) if p.repost => {}
                        // Keep the newest: that is the one sent when the interval is up.
                        Some(SourceEvent::Post(p)) => pending = Some(p),
                    },
                }
            }
        }
    }

    async fn publish(&self, post: Post) {
        let msg = json!({"type": "tweets.post", "upstream": self.id, "post": post});
        *lock(&self.last) = Some(post);
        if let Err(e) = self.layer.group_send(&self.group, msg).await {
            tracing::warn!(group = %self.group, error = %e, "could not send a post to its listeners");
        }
    }

    async fn status(&self, message: String) {
        let msg = json!({"type": "tweets.status", "upstream": self.id, "message": message});
        if let Err(e) = self.layer.group_send(&self.group, msg).await {
            tracing::warn!(group = %self.group, error = %e, "could not send a status to listeners");
        }
    }

    async fn ended(&self) {
        self.status("the upstream stream ended; search again to restart it".into())
            .await;
    }
}
