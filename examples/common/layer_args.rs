//! The channel-layer flags every example shares: in-memory by default, Redis with `--redis`.

use switchboard::{InMemoryLayer, Layer, LayerConfig};

/// Which channel layer to run on.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct LayerArgs {
    /// Redis URL for a layer shared by several processes (e.g. redis://127.0.0.1:6379).
    /// Without it the layer is in-memory: one process, no Redis needed.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Channel capacity (messages waiting per channel).
    #[arg(long, default_value_t = 100)]
    pub(crate) capacity: usize,
}

impl LayerArgs {
    /// Builds the layer the flags describe.
    pub(crate) async fn build(&self) -> Result<Layer, Box<dyn std::error::Error + Send + Sync>> {
        let config = LayerConfig::default().capacity(self.capacity);
        match &self.redis {
            None => Ok(Layer::new(InMemoryLayer::new(config))),
            Some(url) => Err(format!("--redis {url}: this build has no Redis layer yet").into()),
        }
    }

    /// A short description for the start-up log line.
    pub(crate) fn describe(&self) -> String {
        match &self.redis {
            None => "in-memory layer".to_owned(),
            Some(url) => format!("redis layer at {url}"),
        }
    }
}
