//! LiveKit access tokens: HS256 JWTs signed with the API secret, carrying a video grant. The
//! format is LiveKit's (`livekit/protocol` `auth`), so tokens minted for a LiveKit server work
//! here and ours work with every LiveKit client.
//!
//! Written on `hmac` + `sha2` rather than a JWT crate: one algorithm, a few dozen lines, and
//! no extra crypto backend to build.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Clock skew tolerated on `nbf` and `exp`, in seconds (LiveKit's verifier allows the same).
const LEEWAY_S: i64 = 60;

/// The claims of a LiveKit token.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The API key the token was signed for.
    pub iss: String,
    /// The participant's identity.
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default)]
    pub video: VideoGrant,
    /// Sparks' own claim: which Matrix user and room the token was issued for (clients ignore
    /// it; the homeserver uses it to remove a participant who leaves the Matrix room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparks: Option<MatrixClaim>,
}

/// What the participant may do. Absent `can_*` fields mean yes, as in LiveKit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    #[serde(default)]
    pub room_join: bool,
    #[serde(default)]
    pub room: String,
    #[serde(default)]
    pub room_create: bool,
    #[serde(default)]
    pub room_admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_update_own_metadata: Option<bool>,
    #[serde(default)]
    pub hidden: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MatrixClaim {
    pub user_id: String,
    pub room_id: String,
}

/// Why a token was refused. Every case is a 401 for LiveKit clients.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    /// Valid, but not for joining a room.
    NoRoomJoin,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "invalid token: malformed",
            Self::UnknownKey => "invalid token: unknown API key",
            Self::BadSignature => "invalid token: signature does not verify",
            Self::Expired => "invalid token: expired",
            Self::NotYetValid => "invalid token: not valid yet",
            Self::NoRoomJoin => "permissions denied: no roomJoin grant for a room",
        })
    }
}

impl std::error::Error for TokenError {}

/// Signs `claims` with `secret`.
pub fn sign(claims: &Claims, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(
        mac(secret, signing_input.as_bytes())
            .finalize()
            .into_bytes(),
    );
    format!("{signing_input}.{signature}")
}

/// Verifies a token for joining a room: signature by the key it names (`iss`), time window,
/// and a `roomJoin` grant for a named room. `now` is Unix seconds.
pub fn verify_join(
    token: &str,
    secret_of: impl Fn(&str) -> Option<String>,
    now: i64,
) -> Result<Claims, TokenError> {
    let claims = verify(token, secret_of, now)?;
    if !claims.video.room_join || claims.video.room.is_empty() || claims.sub.is_empty() {
        return Err(TokenError::NoRoomJoin);
    }
    Ok(claims)
}

/// Verifies signature and time window.
pub fn verify(
    token: &str,
    secret_of: impl Fn(&str) -> Option<String>,
    now: i64,
) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    if header["alg"] != "HS256" {
        return Err(TokenError::Malformed);
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(TokenError::Malformed)?;
    let secret = secret_of(&claims.iss).ok_or(TokenError::UnknownKey)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let signing_input = &token[..header_and_payload_len(token)];
    mac(&secret, signing_input.as_bytes())
        .verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    if claims.exp + LEEWAY_S < now {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_S > now) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn mac(secret: &str, data: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(data);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "key".into(),
            sub: "alice".into(),
            exp,
            video: VideoGrant {
                room_join: true,
                room: "r".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn secret(key: &str) -> Option<String> {
        (key == "key").then(|| "secret".to_owned())
    }

    #[test]
    fn round_trip_and_refusals() {
        let token = sign(&claims(1_000), "secret");
        assert_eq!(verify_join(&token, secret, 900), Ok(claims(1_000)));
        assert_eq!(verify_join(&token, secret, 2_000), Err(TokenError::Expired));
        let forged = sign(&claims(1_000), "other");
        assert_eq!(
            verify_join(&forged, secret, 900),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify_join("a.b", secret, 900), Err(TokenError::Malformed));
        let mut other_key = claims(1_000);
        other_key.iss = "nope".into();
        assert_eq!(
            verify_join(&sign(&other_key, "secret"), secret, 900),
            Err(TokenError::UnknownKey)
        );
        let mut no_join = claims(1_000);
        no_join.video.room_join = false;
        assert_eq!(
            verify_join(&sign(&no_join, "secret"), secret, 900),
            Err(TokenError::NoRoomJoin)
        );
    }

    #[test]
    fn a_known_livekit_shape_is_read() {
        // The JSON a LiveKit SDK puts in a token (camelCase grant, absent can* = allowed).
        let json = r#"{"iss":"key","sub":"bob","exp":5,"video":{"roomJoin":true,"room":"x","canPublish":false}}"#;
        let parsed: Claims = serde_json::from_str(json).expect("parses");
        assert_eq!(parsed.video.can_publish, Some(false));
        assert_eq!(parsed.video.can_subscribe, None);
    }
}
