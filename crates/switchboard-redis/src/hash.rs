//! channels_redis's consistent hash: which of several Redis hosts holds a name.

/// Maps `value` to a host index in `0..ring_size`, exactly as channels_redis's
/// `_consistent_hash`: the low 12 bits of the CRC-32 of the UTF-8 bytes, scaled down to the ring.
pub(crate) fn consistent_hash(value: &str, ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    let bigval = crc32fast::hash(value.as_bytes()) & 0xFFF;
    let ring_divisor = 4096.0 / ring_size as f64;
    // Python's int() truncates; the result is below ring_size since bigval < 4096.
    ((f64::from(bigval) / ring_divisor) as usize).min(ring_size - 1)
}

#[cfg(test)]
mod tests {
    use super::consistent_hash;

    /// Expected values computed with channels_redis's `_consistent_hash` in Python.
    #[test]
    fn matches_channels_redis() {
        let cases: [(&str, [usize; 5]); 5] = [
            (
                "specific.6e5706f2d491421f9398739aef024fb7!",
                [0, 1, 2, 4, 6],
            ),
            ("room", [0, 0, 0, 0, 0]),
            ("asgi__group__room", [0, 1, 2, 3, 5]),
            ("worker.jobs", [0, 0, 0, 0, 1]),
            ("chat_lobby", [0, 1, 1, 2, 3]),
        ];
        for (value, expected) in cases {
            let got: Vec<usize> = [1, 2, 3, 5, 7]
                .iter()
                .map(|&n| consistent_hash(value, n))
                .collect();
            assert_eq!(got, expected, "{value}");
        }
    }
}
