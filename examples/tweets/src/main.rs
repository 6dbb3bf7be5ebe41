//! A live stream of posts matching a search: type `#RustLang`, and a carousel shows the matching
//! posts as they come, one at a time — the Django Channels tweet streamer, rebuilt on switchboard.
//!
//! Shows: a JSON-flavour consumer with a typed `{"type": …}` protocol; one upstream task per
//! distinct search term, shared by every listener of that term through a group, ending when its
//! last listener leaves; upstream sources behind one trait: a bundled synthetic corpus replayed
//! in a loop (the default, offline), the X API v2 filtered stream, and a Mastodon hashtag stream.
//!
//! Run it (bundled corpus, in-memory layer; no credentials, no Redis), then open
//! <http://127.0.0.1:8000/>:
//!
//! ```text
//! cargo run --release -p tweets
//! ```
//!
//! With real posts:
//!
//! ```text
//! TWITTER_BEARER_TOKEN=… cargo run --release -p tweets -- --source x
//! cargo run --release -p tweets -- --source mastodon --mastodon https://mastodon.social
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use example_support::LayerArgs;
use example_support::flags;
use tweets::corpus::Corpus;
use tweets::mastodon::{MastodonConfig, MastodonSource};
use tweets::source::Source;
use tweets::x::{XConfig, XSource};

/// Where posts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    /// The bundled synthetic corpus (or `--corpus FILE`), replayed in a loop. Offline.
    Corpus,
    /// The X API v2 filtered stream; the bearer token comes from TWITTER_BEARER_TOKEN.
    X,
    /// A Mastodon instance's hashtag stream (`--mastodon URL`; token from MASTODON_TOKEN, optional).
    Mastodon,
}

/// Flags.
#[derive(Parser, Debug)]
#[command(about = "switchboard tweets example: a live stream of posts matching a search")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Seconds between two posts sent to a listener (the first match is sent at once).
    #[arg(long, default_value_t = 10.0, value_parser = positive_secs)]
    interval: f64,
    /// Where posts come from.
    #[arg(long, value_enum, default_value_t = SourceKind::Corpus)]
    source: SourceKind,
    /// A corpus file (JSON lines, see examples/tweets/data/README.md) instead of the bundled one.
    #[arg(long, value_name = "FILE")]
    corpus: Option<std::path::PathBuf>,
    /// How fast the corpus is replayed, in corpus posts per second.
    #[arg(long, default_value_t = 40.0, value_parser = positive_secs)]
    replay_rate: f64,
    /// The X API base URL.
    #[arg(long, default_value = "https://api.x.com", value_name = "URL")]
    x_api: String,
    /// The Mastodon instance for `--source mastodon`.
    #[arg(long, value_name = "URL")]
    mastodon: Option<String>,
    /// Distinct search terms followed at once (each is an upstream); a search for one more is
    /// refused with an error frame.
    #[arg(long, default_value_t = tweets::hub::DEFAULT_MAX_TERMS, value_parser = flags::at_least_one)]
    max_terms: usize,
    #[command(flatten)]
    layer: LayerArgs,
    #[command(flatten)]
    ops: example_support::OpsArgs,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!(
            "{v} is out of range: use a number above 0 and at most 86400"
        ))
    }
}

fn build_source(args: &Args) -> Result<(Arc<dyn Source>, Option<Corpus>), String> {
    Ok(match args.source {
        SourceKind::Corpus => {
            let corpus = match &args.corpus {
                None => Corpus::bundled(args.replay_rate)?,
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    Corpus::parse(&text, args.replay_rate, &path.display().to_string())?
                }
            };
            (Arc::new(corpus.clone()), Some(corpus))
        }
        SourceKind::X => {
            let token = std::env::var("TWITTER_BEARER_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty())
                .ok_or("--source x needs the app's bearer token in TWITTER_BEARER_TOKEN")?;
            let mut cfg = XConfig::new(token);
            cfg.api = args.x_api.clone();
            (Arc::new(XSource::new(cfg)?), None)
        }
        SourceKind::Mastodon => {
            let instance = args
                .mastodon
                .clone()
                .ok_or("--source mastodon needs --mastodon URL (e.g. https://mastodon.social)")?;
            let token = std::env::var("MASTODON_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty());
            (
                Arc::new(MastodonSource::new(MastodonConfig::new(instance, token))?),
                None,
            )
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    example_support::init_tracing();
    let args = Args::parse();
    let (source, corpus) = build_source(&args)?;
    let ops = example_support::Ops::install(&args.ops)?;
    let layer = args.layer.build().await?;
    let hub = tweets::hub::Hub::with_max_terms(
        layer.clone(),
        source,
        Duration::from_secs_f64(args.interval),
        args.max_terms,
    );
    let settings = tweets::Settings {
        corpus,
        shutdown: ops.shutdown.clone(),
        ..tweets::Settings::default()
    };
    let router = tweets::router(hub.clone(), layer.clone(), settings).merge(ops.routes(layer));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!(
        "tweets on http://{} ({}; {}; one post per {} s)",
        listener.local_addr()?,
        hub.describe(),
        args.layer.describe(),
        args.interval
    );
    example_support::serve(listener, router, ops).await?;
    Ok(())
}
