//! Discovery: `/versions`, `.well-known`, `/capabilities`, login flows.

use std::sync::Arc;

use ruma::api::client::{
    discovery::{get_capabilities, get_supported_versions},
    session::get_login_types,
};
use serde_json::{Value, json};

use crate::{api::ruma::Ruma, error::Result, rooms::version, server::Server};

/// Spec versions whose client-server features this server implements.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
    "v1.9", "v1.10", "v1.11",
];

pub async fn versions(
    server: Arc<Server>,
    _request: Ruma<get_supported_versions::Request>,
) -> Result<Value> {
    let meetings = server.rtc.handle().is_some();
    Ok(json!({
        "versions": SPEC_VERSIONS,
        "unstable_features": {
            "org.matrix.msc2432": true,
            // Simplified sliding sync (MSC4186): Element X checks this flag before using it.
            "org.matrix.simplified_msc3575": true,
            "org.matrix.msc3827": true,
            "org.matrix.msc3827.stable": true,
            "fi.mau.msc2815": false,
            // MatrixRTC transports (the built-in SFU), when meetings are on.
            "org.matrix.msc4143": meetings,
            // Delayed events (MatrixRTC clients schedule their leave with them).
            "org.matrix.msc4140": true,
        },
    }))
}

pub fn well_known_client(server: &Server) -> Value {
    let mut found = json!({ "m.homeserver": { "base_url": server.config.client_base_url() } });
    // Older MatrixRTC clients find the SFU here (newer ones ask `rtc/transports`).
    if server.rtc.handle().is_some() {
        found["org.matrix.msc4143.rtc_foci"] = json!([livekit_transport(server)]);
    }
    found
}

/// The built-in SFU as a MatrixRTC transport.
fn livekit_transport(server: &Server) -> Value {
    json!({
        "type": "livekit",
        "livekit_service_url": crate::rtc::tokens::service_url(server),
    })
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports` (MSC4143): the RTC
/// transports this homeserver offers, the built-in SFU.
pub async fn rtc_transports(
    server: Arc<Server>,
    _request: Ruma<ruma::api::client::rtc::transports::v1::Request>,
) -> Result<Value> {
    let transports = match server.rtc.handle() {
        Some(_) => vec![livekit_transport(&server)],
        None => Vec::new(),
    };
    Ok(json!({ "rtc_transports": transports }))
}

pub fn well_known_server(server: &Server) -> Value {
    json!({ "m.server": format!("{}:8448", server.server_name().host()) })
}

pub async fn capabilities(
    server: Arc<Server>,
    _request: Ruma<get_capabilities::v3::Request>,
) -> Result<Value> {
    let available: serde_json::Map<String, Value> = version::SUPPORTED
        .iter()
        .map(|v| (v.to_string(), json!("stable")))
        .collect();
    Ok(json!({
        "capabilities": {
            "m.room_versions": { "default": server.config.default_room_version.as_str(), "available": available },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
            "m.profile_fields": { "enabled": true },
        }
    }))
}

pub async fn login_types(
    _server: Arc<Server>,
    _request: Ruma<get_login_types::v3::Request>,
) -> Result<Value> {
    Ok(json!({ "flows": [{ "type": "m.login.password" }] }))
}
