//! The meeting service: starts the SFU (`sparks-sfu`) next to the homeserver and keeps what
//! the endpoints need to issue and check its tokens.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{Arc, OnceLock},
};

use sparks_sfu::driver::SfuHandle;

use crate::server::Server;

pub mod delegation;
pub mod tokens;

pub struct Rtc {
    /// The running SFU (unset when `[rtc] enabled = false` or its port could not be bound).
    handle: OnceLock<SfuHandle>,
    /// The API secret in force: the configured one, or a random one for this run.
    secret: String,
    /// Delayed leave events members handed over (sent when they leave the meeting).
    pub delegations: Arc<delegation::Delegations>,
}

impl Rtc {
    pub fn new(config: &crate::config::RtcConfig) -> Self {
        let secret = if config.api_secret.is_empty() {
            crate::server::rand_alnum(48)
        } else {
            config.api_secret.clone()
        };
        Self {
            handle: OnceLock::new(),
            secret,
            delegations: Default::default(),
        }
    }

    pub fn handle(&self) -> Option<&SfuHandle> {
        self.handle.get()
    }

    /// A Matrix user is no longer joined to a room: their call participants go at once.
    pub fn member_left(&self, room_id: &ruma::RoomId, user_id: &ruma::UserId) {
        if let Some(handle) = self.handle.get() {
            handle.remove_matrix_member(room_id.as_str(), user_id.as_str());
        }
    }

    /// The secret for an API key, if it is ours.
    pub fn secret_of(&self, server: &Server, key: &str) -> Option<String> {
        (key == server.config.rtc.api_key).then(|| self.secret.clone())
    }
}

/// TURN servers for a participant, with coturn REST API credentials (`username` =
/// `<expiry>:<identity>`, `credential` = base64 HMAC-SHA1 of it with the shared secret),
/// valid a day.
pub fn ice_servers(server: &Server, identity: &str) -> Vec<livekit_protocol::IceServer> {
    use base64::Engine;
    use hmac::Mac;
    let config = &server.config.rtc;
    if config.turn_uris.is_empty() {
        return Vec::new();
    }
    let expiry = crate::users::now_ms() / 1000 + 24 * 60 * 60;
    let username = format!("{expiry}:{identity}");
    let Ok(mut mac) =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(config.turn_shared_secret.as_bytes())
    else {
        return Vec::new();
    };
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![livekit_protocol::IceServer {
        urls: config.turn_uris.clone(),
        username,
        credential,
    }]
}

/// Binds the SFU's UDP port and starts it. A port that cannot be bound disables meetings
/// (logged) rather than stopping the homeserver.
pub async fn start(server: &Arc<Server>) {
    let config = &server.config.rtc;
    if !config.enabled {
        return;
    }
    let ip = server.config.listen.client.ip();
    let bind = SocketAddr::new(ip, config.udp_port);
    let advertised = config.public_ip.unwrap_or_else(|| advertised_ip(ip));
    let (events, presence) = tokio::sync::mpsc::unbounded_channel();
    let tuning = sparks_sfu::driver::Tuning {
        resume_window: std::time::Duration::from_secs(config.resume_window_secs),
        estimate_bandwidth: config.bandwidth_estimation,
        allow_pause: config.allow_pause,
        send_threads: config.send_threads,
    };
    let advertise = vec![SocketAddr::new(advertised, 0)];
    match sparks_sfu::driver::start(bind, advertise, tuning, Some(events)).await {
        Ok(handle) => {
            tracing::info!(udp = %handle.local_addr(), advertised = %advertised, "SFU ready");
            let _ = server.rtc.handle.set(handle);
            tokio::spawn(server.rtc.delegations.clone().run(server.clone(), presence));
        }
        Err(error) => tracing::error!(%bind, %error, "cannot start the SFU: meetings are off"),
    }
}

/// The address to give clients for a socket bound to `ip`: itself, or for 0.0.0.0 the
/// address of the default route (found without sending anything).
fn advertised_ip(ip: IpAddr) -> IpAddr {
    if !ip.is_unspecified() {
        return ip;
    }
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}
