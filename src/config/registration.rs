use serde::{Deserialize, Serialize};

use super::{ConfigError, ListenConfig};

/// `[registration]`: who may create accounts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Whether `/register` creates accounts at all. The embedded default is `true`: safe only
    /// because the default listener is loopback.
    pub enabled: bool,
    /// When set, registering needs this token (`m.login.registration_token`).
    pub token: Option<String>,
    /// Must be set to `true` to allow registration without a token on a non-loopback listener.
    pub allow_open_registration_on_public_address: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
            allow_open_registration_on_public_address: false,
        }
    }
}

impl RegistrationConfig {
    pub(super) fn validate(&self, listen: &ListenConfig) -> Result<(), ConfigError> {
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError(
                "registration.token: must not be empty (remove the key instead)".into(),
            ));
        }
        let open = self.enabled && self.token.is_none();
        if open
            && !listen.client.ip().is_loopback()
            && !self.allow_open_registration_on_public_address
        {
            return Err(ConfigError(format!(
                "registration.enabled: open registration without registration.token on the \
                 non-loopback address {} lets anyone on the network create accounts; set \
                 registration.token, disable registration, or confirm with \
                 registration.allow_open_registration_on_public_address = true",
                listen.client
            )));
        }
        Ok(())
    }
}
