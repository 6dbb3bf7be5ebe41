//! Channel and group names, as validated at the edge.

use std::str::FromStr;

use switchboard_core::name::{MAX_NAME_LENGTH, validate_channel_name, validate_group_name};
use switchboard_core::{ChannelName, GroupName, IntoChannelName, IntoGroupName};

fn base_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Channels' rule written out again: `^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$`, fewer than 100
/// code points. Exact for ASCII names; after the `!`, a non-ASCII character must be a Unicode
/// letter or digit.
fn channel_rule(name: &str) -> bool {
    let n = name.chars().count();
    if n == 0 || n >= MAX_NAME_LENGTH {
        return false;
    }
    let (base, local) = match name.split_once('!') {
        Some((b, l)) => (b, Some(l)),
        None => (name, None),
    };
    !base.is_empty()
        && base.chars().all(base_char)
        && local.is_none_or(|l| {
            l.chars()
                .all(|c| base_char(c) || !c.is_ascii() && c.is_alphanumeric())
        })
}

fn group_rule(name: &str) -> bool {
    let n = name.chars().count();
    n > 0 && n < MAX_NAME_LENGTH && name.chars().all(base_char)
}

/// Every way to validate a name agrees (`validate_*`, `new`, `FromStr`, `TryFrom`, the
/// `Into*Name` conversions) and with the rule written out again; a group name is a channel
/// name; a channel's non-local part is itself a valid channel name ending at the `!`; a
/// refusal quotes at most 120 characters of the name; names serialize as the string.
pub fn names(data: &[u8]) {
    let name = String::from_utf8_lossy(data);
    let name: &str = &name;

    let channel = validate_channel_name(name).is_ok();
    assert_eq!(channel, channel_rule(name), "channel rule on {name:?}");
    assert_eq!(channel, ChannelName::new(name).is_ok());
    assert_eq!(channel, ChannelName::from_str(name).is_ok());
    assert_eq!(channel, ChannelName::try_from(name.to_owned()).is_ok());
    assert_eq!(channel, name.into_channel_name().is_ok());

    let group = validate_group_name(name).is_ok();
    assert_eq!(group, group_rule(name), "group rule on {name:?}");
    assert_eq!(group, GroupName::new(name).is_ok());
    assert_eq!(group, GroupName::try_from(name).is_ok());
    assert_eq!(group, name.to_owned().into_group_name().is_ok());
    assert!(!group || channel, "group {name:?} is not a channel name");

    match ChannelName::new(name) {
        Ok(c) => {
            assert_eq!(c.as_str(), name);
            assert_eq!(c.to_string(), name);
            let local = c.non_local_part();
            assert!(name.starts_with(local));
            assert_eq!(c.is_process_local(), name.contains('!'));
            assert_eq!(c.is_process_local(), local.ends_with('!'));
            assert!(!local[..local.len() - usize::from(c.is_process_local())].contains('!'));
            assert!(
                ChannelName::new(local).is_ok(),
                "the non-local part {local:?} of {name:?} is not a channel name"
            );
            assert_eq!(
                serde_json::to_string(&c).ok(),
                serde_json::to_string(name).ok()
            );
        }
        Err(e) => {
            assert_eq!(e.kind, switchboard_core::name::NameKind::Channel);
            assert!(e.name.chars().count() <= 120);
            assert!(name.starts_with(&e.name));
            assert!(!e.rule.is_empty());
        }
    }
    if let Err(e) = GroupName::new(name) {
        assert_eq!(e.kind, switchboard_core::name::NameKind::Group);
        assert!(name.starts_with(&e.name));
    }
}
