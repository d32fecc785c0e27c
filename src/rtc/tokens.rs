//! Call tokens for Matrix users: who asks (an OpenID token, checked here for our users and
//! with the user's homeserver for others), whether they are in the Matrix room (lk-jwt-service
//! does not check this; we do), the LiveKit identity and room name exactly as lk-jwt-service
//! and matrix-js-sdk derive them (so E2EE keys, which are keyed by identity, match), and the
//! grants their power level allows.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{OwnedUserId, RoomId, ServerName, UserId, events::TimelineEventType};
use sha2::{Digest, Sha256};
use sparks_sfu::token::{self, Claims, MatrixClaim, VideoGrant};

use crate::{
    error::{Error, Result},
    rooms::power::PowerLevels,
    server::Server,
};

/// How long a call token is valid (clients refresh by asking again).
const TOKEN_TTL_S: i64 = 60 * 60;
/// The state event a member sends to be in a call: whoever may send it may publish.
const CALL_MEMBER_EVENT: &str = "org.matrix.msc3401.call.member";

/// `401 M_UNAUTHORIZED`, lk-jwt-service's answer for an identity it cannot confirm.
pub fn unauthorized(message: impl Into<String>) -> Error {
    Error::new(
        http::StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        message.into(),
    )
}

/// unpadded-base64(SHA-256(JSON array of `parts`)), as lk-jwt-service and matrix-js-sdk
/// compute identities and room names.
pub fn hashed(parts: &[&str]) -> String {
    let json = serde_json::to_string(parts).unwrap_or_default();
    STANDARD_NO_PAD.encode(Sha256::digest(json.as_bytes()))
}

/// The user an OpenID token (issued by `issuer`) belongs to.
pub async fn openid_user(server: &Server, access_token: &str, issuer: &str) -> Result<OwnedUserId> {
    let issuer = <&ServerName>::try_from(issuer)
        .map_err(|_| Error::bad_json("openid_token.matrix_server_name is not a server name"))?;
    if server.is_local(issuer) {
        return server
            .users
            .openid_user(&server.maps, access_token)?
            .ok_or_else(|| unauthorized("The OpenID token is unknown or expired"));
    }
    let path = format!(
        "/_matrix/federation/v1/openid/userinfo?access_token={}",
        crate::federation::encode(access_token)
    );
    let answer = server
        .federation
        .client
        .get_unsigned(issuer, &path)
        .await
        .map_err(|e| {
            unauthorized(format!(
                "{issuer} did not confirm the OpenID token: {}",
                e.message
            ))
        })?;
    let user = answer["sub"]
        .as_str()
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .ok_or_else(|| unauthorized("The OpenID answer names no user"))?;
    // A server vouches only for its own users.
    if user.server_name() != issuer {
        return Err(unauthorized(
            "The OpenID answer names a user of another server",
        ));
    }
    Ok(user)
}

/// A call token for `user` in the LiveKit room `livekit_room`, after checking that the user
/// is joined to the Matrix room.
pub fn issue(
    server: &Server,
    user: &UserId,
    room_id: &RoomId,
    identity: String,
    livekit_room: String,
) -> Result<String> {
    if !server.rooms.is_joined(&server.maps, room_id, user)? {
        return Err(Error::forbidden(format!(
            "{user} is not joined to {room_id}"
        )));
    }
    let levels = PowerLevels::current(server, room_id)?;
    let kind = TimelineEventType::from(CALL_MEMBER_EVENT);
    let may_publish = levels.has(user, levels.for_event(&kind, true));
    let now = unix_now();
    let claims = Claims {
        iss: server.config.rtc.api_key.clone(),
        sub: identity,
        nbf: Some(now - 10),
        exp: now + TOKEN_TTL_S,
        name: user.to_string(),
        video: VideoGrant {
            room_join: true,
            room: livekit_room,
            can_publish: Some(may_publish),
            can_subscribe: Some(true),
            can_publish_data: Some(may_publish),
            can_update_own_metadata: Some(true),
            ..Default::default()
        },
        sparks: Some(MatrixClaim {
            user_id: user.to_string(),
            room_id: room_id.to_string(),
        }),
        ..Default::default()
    };
    let secret = server
        .rtc
        .secret_of(server, &server.config.rtc.api_key)
        .ok_or_else(|| Error::internal("no API secret"))?;
    Ok(token::sign(&claims, &secret))
}

/// The WebSocket URL of the built-in SFU, as clients reach it.
pub fn sfu_url(server: &Server) -> String {
    let base = server.config.client_base_url();
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base
    };
    format!("{ws}/livekit/sfu")
}

/// Where clients ask for call tokens (lk-jwt-service's API, served by us).
pub fn service_url(server: &Server) -> String {
    format!("{}/livekit/jwt", server.config.client_base_url())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_lk_jwt_service() {
        // Vectors computed independently (Python: sha256 of the JSON text, unpadded base64).
        assert_eq!(
            hashed(&["!room:example.org", "m.call#ROOM"]),
            "TK4o8wNCXi5t5936bOvIzE/X3XFc7cgp3jGRDqK0j5E"
        );
        assert_eq!(
            hashed(&["@alice:example.org", "DEVICE", "member-1"]),
            "ZhlrG5pVejj+OlqePjLQQjuMl0gaU5rmJ4LCmZOam2U"
        );
    }
}
