use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[listen]`: the sockets the server binds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Client-server API (plain HTTP; put a TLS proxy in front for public use).
    pub client: SocketAddr,
    /// Federation (server-server API, over TLS; see `[federation]`). Unset: no federation.
    /// Other servers reach this server at the port in its server name (default 8448), or
    /// wherever `/.well-known/matrix/server` on the server name's host delegates to.
    pub federation: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([127, 0, 0, 1], 8008)),
            federation: None,
        }
    }
}
