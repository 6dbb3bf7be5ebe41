#![doc = include_str!("../docs/guide.md")]

pub use switchboard_core::*;
