//! Builders for the LiveKit signalling messages we send.

use livekit_protocol::{
    self as proto, ParticipantInfo, ServerInfo, SessionDescription, SignalResponse,
    signal_response::Message,
};

/// The LiveKit server version we present. Clients require a non-empty one; an established
/// release keeps them from assuming features we do not have.
pub const SERVER_VERSION: &str = "1.9.0";
/// LiveKit signalling protocol version we speak.
pub const PROTOCOL: i32 = 16;
/// Seconds between the client's pings, and until a silent client counts as gone.
pub const PING_INTERVAL_S: i32 = 5;
pub const PING_TIMEOUT_S: i32 = 15;

pub fn response(message: Message) -> SignalResponse {
    SignalResponse {
        message: Some(message),
    }
}

pub fn server_info() -> ServerInfo {
    ServerInfo {
        edition: proto::server_info::Edition::Standard as i32,
        version: SERVER_VERSION.to_owned(),
        protocol: PROTOCOL,
        node_id: "sparks".to_owned(),
        ..Default::default()
    }
}

pub fn offer(sdp: String, id: u32) -> SignalResponse {
    response(Message::Offer(SessionDescription {
        r#type: "offer".to_owned(),
        sdp,
        id,
        ..Default::default()
    }))
}

pub fn answer(sdp: String, id: u32) -> SignalResponse {
    response(Message::Answer(SessionDescription {
        r#type: "answer".to_owned(),
        sdp,
        id,
        ..Default::default()
    }))
}

pub fn update(participants: Vec<ParticipantInfo>) -> SignalResponse {
    response(Message::Update(proto::ParticipantUpdate { participants }))
}

pub fn leave(reason: proto::DisconnectReason) -> SignalResponse {
    response(Message::Leave(proto::LeaveRequest {
        can_reconnect: false,
        reason: reason as i32,
        action: proto::leave_request::Action::Disconnect as i32,
        ..Default::default()
    }))
}
