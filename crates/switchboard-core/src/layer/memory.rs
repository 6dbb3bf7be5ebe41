//! The in-memory channel layer: channels and groups for one process.
//!
//! This is switchboard's embedded default and, unlike Channels' `InMemoryChannelLayer`, it is
//! meant for production use inside one process. It is the local delivery
//! [`Engine`] with no transport around it: no global lock, a fan-out that shares one message
//! allocation among its members, back-pressure on fast senders, lazy expiry (a channel's expired
//! messages are dropped when it is touched, memberships when their group is sent to, and what
//! nobody touches is swept at most once per `expiry`, when a channel is made), and the group
//! histories of [`LayerConfig::group_history`] as rings in memory (a new layer is a new
//! epoch).
//!
//! The semantics are those of [`crate::layer`].

use async_trait::async_trait;

use crate::engine::{Engine, Receiver};
use crate::error::Result;
use crate::history::{Position, Recovery};
use crate::layer::{ChannelLayer, LayerConfig, LayerStats};
use crate::message::Message;
use crate::name::{ChannelName, GroupName, validate_channel_name};
use crate::presence::{PresenceEntry, Presences};

/// The in-memory layer. Cheap to clone: clones share the same channels and groups.
#[derive(Clone, Debug)]
pub struct InMemoryLayer {
    engine: Engine,
    presence: Presences,
}

impl Default for InMemoryLayer {
    fn default() -> Self {
        InMemoryLayer::new(LayerConfig::default())
    }
}

impl InMemoryLayer {
    /// A new, empty layer.
    pub fn new(config: LayerConfig) -> InMemoryLayer {
        InMemoryLayer {
            engine: Engine::new(config),
            presence: Presences::default(),
        }
    }

    async fn fan_out(
        &self,
        sender: Option<&ChannelName>,
        group: &GroupName,
        message: Message,
    ) -> Result<Option<Position>> {
        self.engine.check_open()?;
        let (lagging, position) = self.engine.group_send_message(group, message);
        self.engine.backpressure(lagging.without(sender)).await;
        Ok(position)
    }
}

#[async_trait]
impl ChannelLayer for InMemoryLayer {
    fn config(&self) -> &LayerConfig {
        self.engine.config()
    }

    async fn new_channel(&self, prefix: &str) -> Result<ChannelName> {
        self.engine.check_open()?;
        if prefix.contains('!') {
            validate_channel_name("!")?; // produces the channel-name error for a misplaced '!'
        }
        let name = ChannelName::new(format!(
            "{prefix}inmemory!{}",
            uuid::Uuid::new_v4().simple()
        ))?;
        self.engine.sweep_if_due();
        Ok(name)
    }

    async fn send(&self, channel: &ChannelName, message: Message) -> Result<()> {
        self.engine.check_open()?;
        self.engine.send_to(channel, message)
    }

    async fn receive(&self, channel: &ChannelName) -> Result<Message> {
        self.engine.check_open()?;
        self.engine.receive(&self.engine.queue(channel)).await
    }

    async fn receiver(&self, channel: &ChannelName) -> Result<Receiver> {
        self.engine.check_open()?;
        Ok(self.engine.receiver(self.engine.queue(channel)))
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        self.engine.check_open()?;
        self.engine.group_add(group, &self.engine.queue(channel));
        Ok(())
    }

    async fn group_add_since(
        &self,
        group: &GroupName,
        channel: &ChannelName,
        since: Option<&Position>,
    ) -> Result<Recovery> {
        self.engine.check_open()?;
        let h = self.engine.config().history_of(group)?;
        let queue = self.engine.queue(channel);
        Ok(self.engine.group_add_since(group, &queue, since, h))
    }

    async fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        self.engine.check_open()?;
        self.engine.group_discard(group, channel);
        Ok(())
    }

    async fn group_send(&self, group: &GroupName, message: Message) -> Result<()> {
        self.fan_out(None, group, message).await.map(drop)
    }

    async fn group_send_positioned(
        &self,
        group: &GroupName,
        message: Message,
    ) -> Result<Option<Position>> {
        self.fan_out(None, group, message).await
    }

    async fn history(&self, group: &GroupName, since: Option<&Position>) -> Result<Recovery> {
        self.engine.check_open()?;
        let h = self.engine.config().history_of(group)?;
        Ok(self.engine.history(group, since, h))
    }

    async fn history_clear(&self, group: &GroupName) -> Result<()> {
        self.engine.check_open()?;
        self.engine.config().history_of(group)?;
        self.engine.history_clear(group);
        Ok(())
    }

    async fn group_send_from(
        &self,
        sender: &ChannelName,
        group: &GroupName,
        message: Message,
    ) -> Result<()> {
        self.fan_out(Some(sender), group, message).await.map(drop)
    }

    async fn group_channels(&self, group: &GroupName) -> Result<Vec<ChannelName>> {
        self.engine.check_open()?;
        Ok(self.engine.group_members(group.as_str()))
    }

    async fn discard_channel(&self, channel: &ChannelName) -> Result<()> {
        self.engine.discard(channel);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.engine.flush();
        self.presence.clear();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.engine.close();
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        self.engine.check_open()
    }

    fn stats(&self) -> LayerStats {
        self.engine.stats()
    }

    async fn presence_add(&self, group: &GroupName, entry: &PresenceEntry) -> Result<()> {
        self.engine.check_open()?;
        let ttl = self.engine.config().presence_ttl;
        self.presence.add(group, entry.clone(), ttl);
        Ok(())
    }

    async fn presence_remove(&self, group: &GroupName, channel: &ChannelName) -> Result<()> {
        self.engine.check_open()?;
        self.presence.remove(group, channel);
        Ok(())
    }

    async fn presence(&self, group: &GroupName) -> Result<Vec<PresenceEntry>> {
        self.engine.check_open()?;
        Ok(self.presence.list(group.as_str()))
    }

    async fn presence_count(&self, group: &GroupName) -> Result<usize> {
        self.engine.check_open()?;
        Ok(self.presence.count(group.as_str()))
    }
}
