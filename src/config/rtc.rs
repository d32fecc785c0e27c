use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[rtc]`: the built-in SFU for video meetings (LiveKit-compatible, for Element Call and the
/// LiveKit SDKs) and the MatrixRTC endpoints that hand out its tokens.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    pub enabled: bool,
    /// The UDP port all media goes through (bound on the client listener's address).
    /// 0: any free port.
    pub udp_port: u16,
    /// The address clients send media to when the server is behind 1:1 NAT. Unset: the
    /// bound address (or, when that is 0.0.0.0, the address of the default route).
    pub public_ip: Option<IpAddr>,
    /// LiveKit API key and secret: tokens are signed with them. An empty secret gets a
    /// random one at every start (enough when only this server issues tokens).
    pub api_key: String,
    pub api_secret: String,
    /// TURN servers handed to clients (`turn:host:port?transport=udp` ...), with credentials
    /// derived from `turn_shared_secret` (coturn's REST API scheme).
    pub turn_uris: Vec<String>,
    pub turn_shared_secret: String,
    /// How long a participant whose signalling connection broke stays in the meeting for its
    /// client to resume the session (0: it leaves at once).
    pub resume_window_secs: u64,
    /// Estimate each receiver's bandwidth (TWCC) and send it the simulcast layer that fits.
    pub bandwidth_estimation: bool,
    /// Pause a receiver's video when not even its lowest layer fits its bandwidth (clients
    /// that send `subscriber_allow_pause` decide for themselves). Off, as in LiveKit.
    pub allow_pause: bool,
    /// Threads that make receivers' packets besides the SFU's own, when a batch of input has
    /// many receivers. Unset: one per further core (at most 7); 0: all on the SFU's thread.
    pub send_threads: Option<usize>,
}

/// More sending threads than this only wait on each other (and on the one socket).
const MAX_SEND_THREADS: usize = 64;

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_port: 7882,
            public_ip: None,
            api_key: "sparks".to_owned(),
            api_secret: String::new(),
            turn_uris: Vec::new(),
            turn_shared_secret: String::new(),
            resume_window_secs: 20,
            bandwidth_estimation: true,
            allow_pause: false,
            send_threads: None,
        }
    }
}

impl RtcConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_key.is_empty() {
            return Err(ConfigError("rtc.api_key: must not be empty".into()));
        }
        if !self.api_secret.is_empty() && self.api_secret.len() < 32 {
            return Err(ConfigError(
                "rtc.api_secret: at least 32 characters (it signs every call token)".into(),
            ));
        }
        if self.send_threads.is_some_and(|n| n > MAX_SEND_THREADS) {
            return Err(ConfigError(format!(
                "rtc.send_threads: at most {MAX_SEND_THREADS}"
            )));
        }
        if !self.turn_uris.is_empty() && self.turn_shared_secret.is_empty() {
            return Err(ConfigError(
                "rtc.turn_uris needs rtc.turn_shared_secret for the credentials".into(),
            ));
        }
        Ok(())
    }
}
