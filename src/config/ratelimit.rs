use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[ratelimit]`: token buckets per client address (and per account for logins).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Failed login attempts, per address and per account.
    pub failed_login: RateLimitRule,
    /// Registration attempts per address.
    pub registration: RateLimitRule,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failed_login: RateLimitRule {
                per_second: 0.17,
                burst: 3,
            },
            registration: RateLimitRule {
                per_second: 0.17,
                burst: 3,
            },
        }
    }
}

impl RateLimitConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, rule) in [
            ("failed_login", self.failed_login),
            ("registration", self.registration),
        ] {
            if !(rule.per_second.is_finite() && rule.per_second > 0.0) || rule.burst == 0 {
                return Err(ConfigError(format!(
                    "ratelimit.{name}: per_second must be > 0 and burst >= 1"
                )));
            }
        }
        Ok(())
    }
}
