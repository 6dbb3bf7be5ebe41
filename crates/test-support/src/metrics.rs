//! What the library recorded through the `metrics` facade, read back in a test: a debugging
//! recorder installed for the test binary, and counter totals kept across snapshots (each
//! snapshot hands out what was counted since the last one).

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The recorder of this test binary and the counter totals read so far.
pub struct Recorded {
    snapshotter: Snapshotter,
    totals: HashMap<(String, Vec<(String, String)>), u64>,
}

impl Recorded {
    /// Installs a debugging recorder as the global recorder (once per test binary: call it
    /// before the code under test takes its metric handles).
    pub fn install() -> Recorded {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap(); // ok: test harness, a panic fails the calling test
        Recorded {
            snapshotter,
            totals: HashMap::new(),
        }
    }

    /// The total of counter `name` over the label sets that have every label of `labels`.
    pub fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> u64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(n) = value {
                let key = key.key();
                let mut set: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                set.sort();
                *self.totals.entry((key.name().to_owned(), set)).or_default() += n;
            }
        }
        self.totals
            .iter()
            .filter(|((n, set), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| set.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }
}
