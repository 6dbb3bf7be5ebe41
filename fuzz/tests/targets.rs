//! The fuzz targets as bolero tests. `cargo test -p switchboard-fuzz` runs each on its seeds,
//! then on random inputs for a second (`BOLERO_RANDOM_ITERATIONS`, `BOLERO_RANDOM_TEST_TIME_MS`
//! set other limits); `scripts/fuzz` runs them under libFuzzer with `cargo bolero test`.

use switchboard_fuzz::{codec, http, message, names, origin, seeds};

/// Runs a target on its seeds, and writes them where scripts/fuzz asks
/// (`SWITCHBOARD_FUZZ_SEEDS`: the corpus libFuzzer is about to read).
fn seed(name: &str, target: fn(&[u8])) {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir);
        for (i, seed) in seeds::seeds(name).iter().enumerate() {
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(dir.join(format!("seed-{i}")), seed));
            if let Err(e) = written {
                panic!("writing the seeds into {}: {e}", dir.display());
            }
        }
    }
    for seed in seeds::seeds(name) {
        target(&seed);
    }
}

/// One test per target; bolero names the target after the test function, so `check!` is
/// called in it.
macro_rules! target {
    ($name:ident, $target:path) => {
        #[test]
        fn $name() {
            seed(stringify!($name), $target);
            bolero::check!().for_each($target);
        }
    };
}

target!(json_message, message::json_message);
target!(msgpack_value, message::msgpack_value);
target!(names, names::names);
target!(redis_codec, codec::redis_codec);
target!(origin, origin::origin);
target!(route_params, http::route_params);
target!(http_upgrade, http::http_upgrade);

#[test]
fn every_target_has_a_test_and_seeds() {
    let source = include_str!("targets.rs");
    for name in switchboard_fuzz::TARGETS {
        assert!(
            source.contains(&format!("target!({name}, ")),
            "{name} has no test"
        );
        assert!(!seeds::seeds(name).is_empty(), "{name} has no seeds");
    }
}
