//! This process among the processes sharing a layer: its client id, and the names of its
//! channels.

use switchboard_core::{ChannelName, Result};

/// The 32 hex digits in every channel name this layer instance hands out, as channels_redis's
/// `client_prefix`. A name whose part before the `!` ends with it is one of this process's own
/// channels: only this process receives on it.
#[derive(Debug, Clone)]
pub(crate) struct ClientId(String);

impl ClientId {
    pub(crate) fn new() -> ClientId {
        ClientId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` is one of this process's channels.
    pub(crate) fn owns(&self, name: &str) -> bool {
        name.find('!')
            .is_some_and(|i| name[..i].ends_with(self.0.as_str()))
    }

    /// A fresh channel name of this process: `<prefix><client>!<random>`.
    pub(crate) fn new_name(&self, prefix: &str) -> Result<ChannelName> {
        Ok(ChannelName::new(format!(
            "{prefix}{}!{}",
            self.0,
            uuid::Uuid::new_v4().simple()
        ))?)
    }
}

#[cfg(test)]
mod tests {
    use super::ClientId;

    #[test]
    fn knows_its_own_channels() -> Result<(), Box<dyn std::error::Error>> {
        let me = ClientId::new();
        let mine = me.new_name("specific.")?;
        assert!(me.owns(mine.as_str()));
        assert!(!ClientId::new().owns(mine.as_str()));
        assert!(!me.owns("worker.jobs"));
        Ok(())
    }
}
