//! `/sync`: the stream, long-poll wake-ups, filters and the response builder.

pub mod filter;
pub mod format;
pub mod stream;
pub mod typing;
pub mod v3;

use crate::error::{Error, Result};

/// Stream tokens are `s<position>`; bare numbers are accepted too.
pub fn parse_token(token: &str) -> Result<u64> {
    token
        .strip_prefix('s')
        .unwrap_or(token)
        .parse()
        .map_err(|_| Error::invalid_param(format!("Invalid stream token {token:?}")))
}

pub fn token(position: u64) -> String {
    format!("s{position}")
}
