//! Flag value parsers the examples share.

/// A count of 1 or more (`--max-terms`, `--max-password-checks`).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("use 1 or more".into()),
        Err(e) => Err(format!("{s:?} is not a count: {e}")),
    }
}
