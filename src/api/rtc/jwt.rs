//! lk-jwt-service's API, served by the homeserver under `/livekit/jwt` (the
//! `livekit_service_url` clients discover): Element Call asks here for a token for the SFU.
//!
//! - `POST /sfu/get` (legacy): `{room, openid_token, device_id}`; identity
//!   `"<user>:<device>"`, LiveKit room = hash of `[room, "m.call#ROOM"]`.
//! - `POST /get_token`: `{room_id, slot_id, openid_token, member: {id, claimed_user_id,
//!   claimed_device_id}}`; identity = hash of `[user, device, member id]`, LiveKit room = hash
//!   of `[room_id, slot_id]`.
//!
//! Both answer `{url, jwt}`. Unlike lk-jwt-service, the user must be joined to the Matrix
//! room (else `403 M_FORBIDDEN`); errors are Matrix-style `{errcode, error}`.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::json;

use crate::{
    error::{Error, Result},
    rtc::tokens,
    server::Server,
};

pub fn routes(r: Router<Arc<Server>>) -> Router<Arc<Server>> {
    r.route("/livekit/jwt/sfu/get", post(sfu_get))
        .route("/livekit/jwt/get_token", post(get_token))
        .route("/livekit/jwt/healthz", get(|| async { "OK" }))
        .route(
            "/livekit/jwt/delegate_delayed_leave",
            post(delegate_delayed_leave),
        )
        .route(
            "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token",
            post(homeserver_get_token),
        )
}

/// MSC4195's draft: the homeserver issues the token to its own authenticated user (no OpenID
/// round trip). Body `{room_id, slot_id, member: {id, claimed_device_id}}` (the MSC text) or
/// `{room_id, slot_id, member_id}` (ruma's); answers `{jwt}` (and `url`).
async fn homeserver_get_token(
    State(server): State<Arc<Server>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        enabled(&server)?;
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Error::missing_token("Missing access token"))?;
        let session = server.users.authenticate(&server, token.trim())?;
        let request: serde_json::Value = parse(&body)?;
        let room_id: OwnedRoomId = serde_json::from_value(request["room_id"].clone())
            .map_err(|e| Error::bad_json(format!("room_id: {e}")))?;
        let slot_id = request["slot_id"]
            .as_str()
            .ok_or_else(|| Error::bad_json("slot_id missing"))?;
        let member_id = request["member"]["id"]
            .as_str()
            .or_else(|| request["member_id"].as_str())
            .ok_or_else(|| Error::bad_json("member.id missing"))?;
        let device = session.device_id.to_string();
        if let Some(claimed) = request["member"]["claimed_device_id"].as_str()
            && claimed != device
        {
            return Err(tokens::unauthorized(
                "member.claimed_device_id is not your device",
            ));
        }
        let identity = tokens::hashed(&[session.user_id.as_str(), &device, member_id]);
        let room = tokens::hashed(&[room_id.as_str(), slot_id]);
        tokens::issue(&server, &session.user_id, &room_id, identity, room)
    }
    .await;
    match result {
        Ok(jwt) => answer(&server, jwt),
        Err(error) => error.into_response(),
    }
}

#[derive(Deserialize)]
struct OpenIdToken {
    access_token: String,
    matrix_server_name: String,
}

#[derive(Deserialize)]
struct SfuGet {
    room: OwnedRoomId,
    openid_token: OpenIdToken,
    device_id: String,
    #[serde(default)]
    delay_id: Option<String>,
    #[serde(default)]
    delay_timeout: Option<u64>,
}

#[derive(Deserialize)]
struct Member {
    id: String,
    claimed_user_id: String,
    claimed_device_id: String,
}

#[derive(Deserialize)]
struct GetToken {
    room_id: OwnedRoomId,
    slot_id: String,
    openid_token: OpenIdToken,
    member: Member,
    /// A delayed "left the call" event to hand over (see [`crate::rtc::delegation`]).
    #[serde(default)]
    delay_id: Option<String>,
    #[serde(default)]
    delay_timeout: Option<u64>,
}

/// The body as `T`: `400 M_NOT_JSON` when it is not JSON, `400 M_BAD_JSON` when fields are
/// missing or wrongly typed.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "Body is not JSON",
        )
    })?;
    serde_json::from_value(value).map_err(|e| Error::bad_json(e.to_string()))
}

fn answer(server: &Server, jwt: String) -> Response {
    Json(json!({ "url": tokens::sfu_url(server), "jwt": jwt })).into_response()
}

fn enabled(server: &Server) -> Result<()> {
    match server.rtc.handle() {
        Some(_) => Ok(()),
        None => Err(Error::not_found("Meetings are not enabled on this server")),
    }
}

async fn sfu_get(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let result: Result<String> = async {
        enabled(&server)?;
        let request: SfuGet = parse(&body)?;
        let token = &request.openid_token;
        let user =
            tokens::openid_user(&server, &token.access_token, &token.matrix_server_name).await?;
        let identity = format!("{user}:{}", request.device_id);
        let room = tokens::hashed(&[request.room.as_str(), "m.call#ROOM"]);
        let jwt = tokens::issue(&server, &user, &request.room, identity.clone(), room)?;
        delegate(
            &server,
            &user,
            identity,
            request.delay_id,
            request.delay_timeout,
        )?;
        Ok(jwt)
    }
    .await;
    match result {
        Ok(jwt) => answer(&server, jwt),
        Err(error) => error.into_response(),
    }
}

async fn get_token(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let result: Result<String> = async {
        enabled(&server)?;
        let request: GetToken = parse(&body)?;
        let (user, identity) =
            member_identity(&server, &request.openid_token, &request.member).await?;
        let room = tokens::hashed(&[request.room_id.as_str(), &request.slot_id]);
        let jwt = tokens::issue(&server, &user, &request.room_id, identity.clone(), room)?;
        delegate(
            &server,
            &user,
            identity,
            request.delay_id,
            request.delay_timeout,
        )?;
        Ok(jwt)
    }
    .await;
    match result {
        Ok(jwt) => answer(&server, jwt),
        Err(error) => error.into_response(),
    }
}

/// The user an OpenID token belongs to, who must be the member's claimed user, and the
/// member's LiveKit identity (hash of user, device and member id, as matrix-js-sdk has it).
async fn member_identity(
    server: &Server,
    token: &OpenIdToken,
    member: &Member,
) -> Result<(ruma::OwnedUserId, String)> {
    let user = tokens::openid_user(server, &token.access_token, &token.matrix_server_name).await?;
    if member.claimed_user_id != user.as_str() {
        return Err(tokens::unauthorized(
            "member.claimed_user_id is not the OpenID token's user",
        ));
    }
    let identity = tokens::hashed(&[user.as_str(), &member.claimed_device_id, &member.id]);
    Ok((user, identity))
}

/// Hands a delayed leave event over, when the request names one (our users only: the event
/// lives on their homeserver).
fn delegate(
    server: &Arc<Server>,
    user: &ruma::UserId,
    identity: String,
    delay_id: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<()> {
    let Some(delay_id) = delay_id else {
        return Ok(());
    };
    if !server.is_local(user.server_name()) {
        return Err(Error::forbidden(
            "Delayed leave can be handed over only by users of this server",
        ));
    }
    let timeout = timeout_ms.unwrap_or(10_000);
    server
        .rtc
        .delegations
        .delegate(server, user, identity, delay_id, timeout)
}

#[derive(Deserialize)]
struct DelegateDelayedLeave {
    room_id: OwnedRoomId,
    openid_token: OpenIdToken,
    member: Member,
    delay_id: String,
    delay_timeout: u64,
}

/// `POST /delegate_delayed_leave`: the member's delayed leave event is restarted by the
/// server while they are in the meeting and sent when the SFU sees them go.
async fn delegate_delayed_leave(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let result = async {
        enabled(&server)?;
        let request: DelegateDelayedLeave = parse(&body)?;
        let (user, identity) =
            member_identity(&server, &request.openid_token, &request.member).await?;
        if !server
            .rooms
            .is_joined(&server.maps, &request.room_id, &user)?
        {
            return Err(Error::forbidden(format!(
                "{user} is not joined to {}",
                request.room_id
            )));
        }
        delegate(
            &server,
            &user,
            identity,
            Some(request.delay_id),
            Some(request.delay_timeout),
        )
    }
    .await;
    match result {
        Ok(()) => Json(json!({})).into_response(),
        Err(error) => error.into_response(),
    }
}
