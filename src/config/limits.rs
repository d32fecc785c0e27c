use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[limits]`: sizes and timeouts that protect the server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted on JSON endpoints, in bytes. Larger: `413 M_TOO_LARGE`,
    /// answered from the `Content-Length` header without reading the body.
    pub max_request_body: usize,
    /// Longest `/sync` long-poll a client may ask for, in milliseconds.
    pub max_sync_timeout_ms: u64,
    /// Lifetime of an access token issued to a client that supports refresh tokens, in ms.
    pub refreshable_access_token_lifetime_ms: u64,
    /// Longest delay a client may schedule an event with (MSC4140 delayed events), in ms.
    pub max_event_delay_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body: 1024 * 1024,
            max_sync_timeout_ms: 60_000,
            refreshable_access_token_lifetime_ms: 5 * 60 * 1000,
            max_event_delay_ms: 24 * 60 * 60 * 1000,
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_body < 70 * 1024 {
            return Err(ConfigError(
                "limits.max_request_body: must be at least 71680 bytes (an event may be 64 KiB)"
                    .into(),
            ));
        }
        if self.refreshable_access_token_lifetime_ms < 10_000 {
            return Err(ConfigError(
                "limits.refreshable_access_token_lifetime_ms: must be at least 10000".into(),
            ));
        }
        Ok(())
    }
}
