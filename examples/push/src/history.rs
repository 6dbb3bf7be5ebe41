//! Ids, stored messages and resume: the channel layer's group history, nothing of the
//! gateway's own.
//!
//! With `--store-messages N` (10 by default) the layer keeps the last N messages of every
//! `push.*` group for `--message-ttl` ([`with_history`]). Each message a publisher sends gets
//! its channel's next **position** from the layer, `EPOCH:OFFSET`: the offset counts the
//! channel's messages 1, 2, 3 …, the epoch names the history they belong to and changes when it
//! may have been lost — the channel was deleted (`DELETE` clears its history), the layer
//! restarted, Redis was flushed or failed over, nothing was published for `--message-ttl`. The
//! layer numbers and stores in one step (one Lua script on Redis), before any subscriber gets
//! the message, so every gateway on one Redis hands out one sequence per channel.
//!
//! A subscriber starts on each channel in one of three ways ([`Start`]):
//!
//! - **after a position** (its cursor): the layer joins it to the group and replays what
//!   followed the position, then live messages, with no gap and no duplicate across the switch
//!   ([`Subscription::group_add_since`](switchboard::Subscription::group_add_since)). A
//!   position the history cannot continue from (another epoch, older than what is kept) is not
//!   recovered: the subscriber gets what the history holds now instead, oldest first;
//! - **with a backtrack** (`CH.bN`): the last N held messages, then live;
//! - **live**: from now.
//!
//! While it runs, a subscriber that misses messages (its queue was full, the layer's
//! connection was interrupted) reads them again from the history (`Subscription::recover`),
//! so they come next, in order, once. Without history (`--store-messages 0`) messages carry no
//! position and nothing is replayed.

use std::future::Future;

use switchboard::{
    Connection, GroupName, Layer, LayerConfig, LayerError, Message, Position, Resumed, Subscription,
};

use super::format;

/// The layer group pattern of push channels.
pub const GROUPS: &str = "push.*";

/// `config` with the history the settings ask for on every push channel (none for
/// `--store-messages 0`).
pub fn with_history(
    config: LayerConfig,
    store_messages: usize,
    message_ttl: std::time::Duration,
) -> switchboard::Result<LayerConfig> {
    if store_messages == 0 {
        return Ok(config);
    }
    Ok(config.group_history(GROUPS, store_messages, message_ttl)?)
}

/// Whether the layer keeps history for push channels.
pub fn kept(layer: &Layer) -> bool {
    layer.config().history_for("push.x").is_some()
}

/// How a subscriber starts on one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// After this position (the client's cursor).
    After(Position),
    /// With the last n held messages (`CH.bN`).
    Last(usize),
    /// From now.
    Live,
}

impl Start {
    /// The start for a channel: the cursor wins over a backtrack.
    pub fn of(cursor: Option<Position>, backtrack: Option<usize>) -> Start {
        match (cursor, backtrack) {
            (Some(p), _) => Start::After(p),
            (None, Some(n)) => Start::Last(n),
            (None, None) => Start::Live,
        }
    }
}

/// What subscribes: a layer [`Subscription`] (the HTTP transports) or a WebSocket
/// [`Connection`].
pub trait Joins: Send {
    /// `group_add_since`.
    fn join_since(
        &mut self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> impl Future<Output = switchboard::Result<Resumed>> + Send;

    /// `group_add`.
    fn join(&mut self, group: &GroupName) -> impl Future<Output = switchboard::Result<()>> + Send;
}

impl Joins for Subscription {
    async fn join_since(
        &mut self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> switchboard::Result<Resumed> {
        Ok(self.group_add_since(group.clone(), since).await?)
    }

    async fn join(&mut self, group: &GroupName) -> switchboard::Result<()> {
        Ok(self.group_add(group.clone()).await?)
    }
}

impl Joins for Connection {
    async fn join_since(
        &mut self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> switchboard::Result<Resumed> {
        self.group_add_since(group.clone(), since).await
    }

    async fn join(&mut self, group: &GroupName) -> switchboard::Result<()> {
        self.group_add(group.clone()).await
    }
}

/// A subscriber joined to one channel: where it stands, and what to deliver before what the
/// subscription receives.
#[derive(Debug)]
pub struct Joined {
    /// The position of the last message the client has (or is given in `backlog`, which
    /// moves it on); `None` without history.
    pub position: Option<Position>,
    /// Held messages to deliver first, oldest first (for a backtrack, or a position that
    /// was not recovered). The subscription's own replay (a recovered position) comes
    /// through it, after these.
    pub backlog: Vec<Message>,
}

/// Joins `group` on `joins` as `start` says (see the module docs). `history`: whether the layer
/// keeps it ([`kept`]).
pub async fn join(
    joins: &mut impl Joins,
    layer: &Layer,
    history: bool,
    group: &GroupName,
    start: Start,
) -> switchboard::Result<Joined> {
    if !history {
        joins.join(group).await?;
        return Ok(Joined {
            position: None,
            backlog: Vec::new(),
        });
    }
    let since = match &start {
        Start::After(p) => Some(p),
        _ => None,
    };
    let resumed = joins.join_since(group, since).await?;
    let want = match start {
        Start::After(p) if resumed.recovered => {
            return Ok(Joined {
                position: Some(p),
                backlog: Vec::new(),
            });
        }
        Start::Live | Start::Last(0) => 0,
        Start::After(_) => usize::MAX,
        Start::Last(n) => n,
    };
    let backlog = if want == 0 {
        Vec::new()
    } else {
        held(layer, group, &resumed.position, want).await?
    };
    // Before the backlog's first message, which moves it on as it is delivered.
    let position = match backlog.first().and_then(Message::position) {
        Some(first) => Position::new(first.epoch(), first.offset().saturating_sub(1))?,
        None => resumed.position,
    };
    Ok(Joined {
        position: Some(position),
        backlog,
    })
}

/// The last `n` published messages the group's history holds up to `at` (a join's position:
/// what follows it reaches the subscriber live), oldest first.
async fn held(
    layer: &Layer,
    group: &GroupName,
    at: &Position,
    n: usize,
) -> Result<Vec<Message>, LayerError> {
    let all = layer.history(group.clone(), None).await?;
    let mut out: Vec<Message> = all
        .messages
        .into_iter()
        .filter(|m| {
            m.message_type() == format::MESSAGE
                && m.position()
                    .is_some_and(|p| p.epoch() == at.epoch() && p.offset() <= at.offset())
        })
        .collect();
    let skip = out.len().saturating_sub(n);
    out.drain(..skip);
    Ok(out)
}

/// Moves `cursor` on to a delivered message's position: forward within an epoch, or to the
/// message's epoch when it is another's (the channel's history started again).
pub fn advance(cursor: &mut Option<Position>, message: &Message) {
    let Some(p) = message.position() else {
        return;
    };
    let newer = cursor
        .as_ref()
        .is_none_or(|c| c.epoch() != p.epoch() || c.offset() < p.offset());
    if newer {
        *cursor = Some(p.clone());
    }
}

/// A channel's history now: its position (`None` when nothing is held and no history exists)
/// and how many published messages it holds. `(None, 0)` without history.
pub async fn figures(
    layer: &Layer,
    group: &GroupName,
) -> switchboard::Result<(Option<Position>, u64)> {
    match layer.history(group.clone(), None).await {
        Ok(r) => {
            let stored = r
                .messages
                .iter()
                .filter(|m| m.message_type() == format::MESSAGE)
                .count() as u64;
            Ok((Some(r.position), stored))
        }
        Err(LayerError::Unsupported(_)) => Ok((None, 0)),
        Err(e) => Err(e.into()),
    }
}
