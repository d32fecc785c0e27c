//! `/sync`: the stream, long-poll wake-ups, filters and the response builder.

pub mod filter;
pub mod format;
pub mod sliding;
pub mod stream;
pub mod typing;
pub mod v3;

use crate::error::{Error, Result};

/// Stream tokens are `s<position>`, optionally with `_t<position>` when a `/sync` response
/// delivered only part of the device's to-device backlog; bare numbers are accepted too.
/// This returns the stream position (what `/messages`, `/members?at=` ... need).
pub fn parse_token(token: &str) -> Result<u64> {
    Ok(parse_sync_token(token)?.position)
}

/// A `/sync` token: the stream position, and how far to-device messages were delivered when
/// that is behind the position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    pub position: u64,
    pub to_device: Option<u64>,
}

pub fn parse_sync_token(token: &str) -> Result<SyncToken> {
    let invalid = || Error::invalid_param(format!("Invalid stream token {token:?}"));
    let body = token.strip_prefix('s').unwrap_or(token);
    let (position, to_device) = match body.split_once("_t") {
        Some((position, to_device)) => (position, Some(to_device.parse().map_err(|_| invalid())?)),
        None => (body, None),
    };
    Ok(SyncToken {
        position: position.parse().map_err(|_| invalid())?,
        to_device,
    })
}

pub fn sync_token(position: u64, to_device: Option<u64>) -> String {
    match to_device {
        Some(to_device) if to_device < position => format!("s{position}_t{to_device}"),
        _ => format!("s{position}"),
    }
}

pub fn token(position: u64) -> String {
    format!("s{position}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_tokens_round_trip() {
        assert_eq!(
            parse_sync_token("s12").ok(),
            Some(SyncToken {
                position: 12,
                to_device: None
            })
        );
        assert_eq!(
            parse_sync_token(&sync_token(12, Some(7))).ok(),
            Some(SyncToken {
                position: 12,
                to_device: Some(7)
            })
        );
        assert_eq!(sync_token(12, Some(12)), "s12");
        assert_eq!(parse_token("s12_t7").ok(), Some(12));
        assert!(parse_sync_token("s12_tx").is_err());
        assert!(parse_sync_token("garbage").is_err());
    }
}
