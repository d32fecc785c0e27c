use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[listen]`: the sockets the server binds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Client-server API (plain HTTP; put a TLS proxy in front for public use).
    pub client: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([127, 0, 0, 1], 8008)),
        }
    }
}
