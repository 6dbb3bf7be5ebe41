//! What the examples share around their apps: the channel-layer flags (in-memory by default,
//! Redis with `--redis`), logging filtered by `RUST_LOG`, `/metrics`, `/healthz` and `/readyz`,
//! serving with a graceful shutdown (drain) on SIGTERM or Ctrl-C, and flag parsers.
//!
//! A copy of one example folder needs this folder too (or the twenty lines it uses from it).

pub mod flags;
pub mod layer_args;
pub mod serve;

pub use layer_args::LayerArgs;
pub use serve::{Ops, OpsArgs, init_tracing, serve, stop_signal};
