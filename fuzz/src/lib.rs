//! Fuzz targets for switchboard, one function per area, each taking the fuzzer's bytes.
//!
//! Each target checks properties, not only the absence of panics: what decodes encodes and
//! decodes back to the same value, two ways to validate a name agree, an encrypted message
//! comes back through a rotated key set, a route parameter arrives as it was sent, and every
//! HTTP connection ends when its peer hangs up.
//!
//! `tests/targets.rs` runs them with bolero: `cargo test -p switchboard-fuzz` on their seeds
//! ([`seeds`]) and random inputs, `scripts/fuzz` under libFuzzer through cargo-bolero.

pub mod codec;
pub mod http;
pub mod message;
pub mod names;
pub mod origin;
pub mod seeds;

use switchboard_core::{Map, Message, Value};

/// Every target, by the name of its test in `tests/targets.rs`.
pub const TARGETS: &[&str] = &[
    "json_message",
    "msgpack_value",
    "names",
    "redis_codec",
    "origin",
    "route_params",
    "http_upgrade",
];

/// Whether two values are the same, with every NaN equal to every other (msgpack carries
/// NaNs; `Value`'s `PartialEq` follows `f64` and never finds a NaN equal).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan()
        }
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => same_map(x, y),
        _ => a == b,
    }
}

/// [`same`] on two maps: the same keys in the same order, with the same values.
pub fn same_map(x: &Map, y: &Map) -> bool {
    x.len() == y.len()
        && x.iter()
            .zip(y)
            .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
}

/// Like [`same`], with floats equal within a relative 1e-12 (JSON text's floats go through
/// serde_json's fast parser, which may land one ulp away).
pub fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()) || x.is_nan() && y.is_nan()
        }
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && close(va, vb))
        }
        _ => a == b,
    }
}

/// [`same`] on two messages' fields.
pub fn same_message(a: &Message, b: &Message) -> bool {
    same_map(a.fields(), b.fields())
}

#[cfg(test)]
mod tests {
    /// Links bolero's engine into this crate's own test binary: cargo-bolero builds it too, and
    /// with libFuzzer's instrumentation a binary without libFuzzer does not link.
    #[test]
    fn links_the_engine() {
        bolero::check!().with_iterations(1).for_each(|_: &[u8]| {});
    }
}
