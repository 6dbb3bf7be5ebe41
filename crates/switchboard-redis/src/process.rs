//! This process among the processes sharing a layer: its client id, and the names of its
//! channels.

use switchboard_core::{ChannelName, Result};

/// The id in every channel name this layer instance hands out, as channels_redis's
/// `client_prefix`: 32 hex digits, and for the core layer `sb-` before them
/// ([`ClientId::marked`]). A name whose part before the `!` ends with it is one of this
/// process's own channels: only this process receives on it. The `sb-` tells other switchboard
/// processes that this process's queue takes group messages that name the group instead of its
/// channels ([`is_switchboard_queue`]); no channels_redis id has it (an `s` is not a hex digit).
#[derive(Debug, Clone)]
pub(crate) struct ClientId(String);

/// What starts a switchboard process's client id.
const MARK: &str = "sb-";

/// Whether `non_local` — a process queue's channel-name part, up to and with its `!` — is a
/// switchboard process's (its client id ends it: `sb-` and 32 hex digits).
pub(crate) fn is_switchboard_queue(non_local: &str) -> bool {
    let Some(id_end) = non_local.strip_suffix('!') else {
        return false;
    };
    let Some(split) = id_end.len().checked_sub(MARK.len() + 32) else {
        return false;
    };
    let Some((mark, hex)) = id_end
        .get(split..)
        .and_then(|id| id.split_at_checked(MARK.len()))
    else {
        return false;
    };
    mark == MARK
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ClientId {
    /// 32 hex digits, as channels_redis's (the pub/sub and cluster layers).
    pub(crate) fn new() -> ClientId {
        ClientId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// `sb-` and 32 hex digits: a core layer process's, which takes group messages that name
    /// the group.
    pub(crate) fn marked() -> ClientId {
        ClientId(format!("{MARK}{}", uuid::Uuid::new_v4().simple()))
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

    #[test]
    fn tells_a_switchboard_queue_from_a_django_one() -> Result<(), Box<dyn std::error::Error>> {
        let mine = ClientId::marked().new_name("specific.")?;
        let non_local = &mine.as_str()[..=mine.as_str().find('!').ok_or("no !")?];
        assert!(super::is_switchboard_queue(non_local), "{non_local}");
        // channels_redis: `specific.` + uuid4().hex + `!`.
        assert!(!super::is_switchboard_queue(
            "specific.6e5706f2d491421f9398739aef024fb7!"
        ));
        let plain = ClientId::new().new_name("specific.")?;
        let plain = &plain.as_str()[..=plain.as_str().find('!').ok_or("no !")?];
        assert!(!super::is_switchboard_queue(plain), "{plain}");
        for not in [
            "",
            "!",
            "sb-!",
            "worker.jobs",
            "specific.sb-6e5706f2d491421f9398739aef024fb7", // no `!`: a named channel
            "specific.sb-6e5706f2d491421f9398739aef024fbZ!",
            "specific.sb-6E5706F2D491421F9398739AEF024FB7!",
            "specific.sb-6e5706f2d491421f9398739aef024fb!",
            "specific.sbé6e5706f2d491421f9398739aef024fb7!",
        ] {
            assert!(!super::is_switchboard_queue(not), "{not}");
        }
        Ok(())
    }
}
