//! LiveKit-compatible signalling for the built-in SFU, under `/livekit/sfu`:
//!
//! - `GET /rtc` (WebSocket): a participant's session, binary protobuf `SignalRequest` in,
//!   `SignalResponse` out (protocol v0: a publisher and a subscriber peer connection);
//! - `GET /rtc/validate`: checks a token the way `/rtc` would, for clients that want a
//!   readable error after a failed WebSocket;
//! - `/rtc/v1` and `/rtc/v1/validate` (single peer connection) answer 404 so clients fall
//!   back to v0.
//!
//! The token comes as `Authorization: Bearer` (LiveKit's Rust/Python SDKs) or the
//! `access_token` query parameter (browsers); a bad one is a 401 with a plain-text reason, as
//! LiveKit answers.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    extract::{
        Query, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sparks_sfu::{JoinParams, driver::SfuHandle, token};

use crate::server::Server;

pub mod jwt;

pub fn routes(r: Router<Arc<Server>>) -> Router<Arc<Server>> {
    r.route("/livekit/sfu/rtc", get(rtc))
        .route("/livekit/sfu/rtc/validate", get(validate))
        .route("/livekit/sfu/rtc/v1", get(not_v1))
        .route("/livekit/sfu/rtc/v1/validate", get(not_v1))
}

/// Single-peer-connection signalling is not served: clients fall back to v0 on this 404.
async fn not_v1() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn token_of<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| query.get("access_token").map(String::as_str))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The verified claims, or the status and plain-text reason LiveKit gives for a refused
/// token.
fn check(
    server: &Server,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(token::Claims, SfuHandle), (StatusCode, String)> {
    let Some(handle) = server.rtc.handle().cloned() else {
        let reason = "meetings are not enabled on this server".to_owned();
        return Err((StatusCode::NOT_FOUND, reason));
    };
    let Some(raw) = token_of(headers, query) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "no authorization token".to_owned(),
        ));
    };
    token::verify_join(raw, |key| server.rtc.secret_of(server, key), unix_now())
        .map(|claims| (claims, handle))
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))
}

async fn validate(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match check(&server, &headers, &query) {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn rtc(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (claims, handle) = match check(&server, &headers, &query) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let auto_subscribe = query
        .get("auto_subscribe")
        .is_none_or(|v| v == "1" || v == "true");
    let allow_pause = query
        .get("subscriber_allow_pause")
        .map(|v| v == "1" || v == "true");
    // A client resuming its session after its WebSocket broke names the participant.
    let resume = query
        .get("reconnect")
        .filter(|v| *v == "1" || *v == "true")
        .and(query.get("sid"))
        .cloned();
    let ice_servers = crate::rtc::ice_servers(&server, &claims.sub);
    let refresh = Refresh {
        claims: claims.clone(),
        secret: server
            .rtc
            .secret_of(&server, &claims.iss)
            .unwrap_or_default(),
    };
    upgrade.on_upgrade(move |socket| {
        session(
            socket,
            handle,
            JoinParams {
                claims,
                auto_subscribe,
                allow_pause,
                ice_servers,
            },
            refresh,
            resume,
        )
    })
}

/// What renewing a participant's token takes (LiveKit clients reconnect with the newest one).
struct Refresh {
    claims: token::Claims,
    secret: String,
}

/// Longest a session goes without a fresh token.
const REFRESH_EVERY_S: i64 = 5 * 60;
/// How long a renewed token is valid.
const REFRESHED_TTL_S: i64 = 60 * 60;

impl Refresh {
    /// When to send the next token: halfway to the current one's expiry, at most 5 minutes.
    fn due_in(&self) -> std::time::Duration {
        let left = (self.claims.exp - unix_now()).max(2);
        std::time::Duration::from_secs((left / 2).clamp(1, REFRESH_EVERY_S) as u64)
    }

    /// A `RefreshToken` message with a renewed token (same grants, later expiry).
    fn next(&mut self) -> Vec<u8> {
        use prost::Message as _;
        let now = unix_now();
        self.claims.exp = now + REFRESHED_TTL_S;
        self.claims.nbf = Some(now - 10);
        let renewed = token::sign(&self.claims, &self.secret);
        livekit_protocol::SignalResponse {
            message: Some(livekit_protocol::signal_response::Message::RefreshToken(
                renewed,
            )),
        }
        .encode_to_vec()
    }
}

/// A `Leave` telling a client whose session cannot be resumed to join afresh, as LiveKit
/// answers a resume it cannot serve.
fn rejoin_instead() -> Vec<u8> {
    use prost::Message as _;
    livekit_protocol::SignalResponse {
        message: Some(livekit_protocol::signal_response::Message::Leave(
            livekit_protocol::LeaveRequest {
                can_reconnect: true,
                reason: livekit_protocol::DisconnectReason::StateMismatch as i32,
                action: livekit_protocol::leave_request::Action::Reconnect as i32,
                ..Default::default()
            },
        )),
    }
    .encode_to_vec()
}

/// Relays one participant's signalling between its WebSocket and the SFU until either ends,
/// renewing the participant's token before it expires. `resume`: the participant whose
/// session this WebSocket resumes.
async fn session(
    mut socket: WebSocket,
    handle: SfuHandle,
    params: JoinParams,
    mut refresh: Refresh,
    resume: Option<String>,
) {
    let attached = match &resume {
        Some(sid) => handle.resume(params, sid).await,
        None => handle.join(params).await,
    };
    let Some(mut session) = attached else {
        if resume.is_some() {
            let _ = socket.send(Message::Binary(rejoin_instead().into())).await;
            let _ = socket.send(Message::Close(None)).await;
        }
        return;
    };
    let conn = session.conn;
    let mut renew_at = tokio::time::Instant::now() + refresh.due_in();
    // A message whose write failed: the client may resume the session and get it then.
    let mut unwritten = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(renew_at) => {
                if socket.send(Message::Binary(refresh.next().into())).await.is_err() {
                    break;
                }
                renew_at = tokio::time::Instant::now() + refresh.due_in();
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(bytes))) => handle.signal(conn, &bytes),
                Some(Ok(Message::Text(_))) => {
                    // JSON signalling (a non-default mode of the JS client) is not spoken.
                    let _ = socket.send(Message::Close(Some(CloseFrame {
                        code: 1003,
                        reason: "binary protobuf signalling only".into(),
                    }))).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            outgoing = session.messages.recv() => match outgoing {
                Some(bytes) => {
                    // (`Bytes` clones share the buffer.)
                    let bytes = axum::body::Bytes::from(bytes);
                    if let Err(error) = socket.send(Message::Binary(bytes.clone())).await {
                        tracing::debug!(conn, %error, "signalling write failed");
                        unwritten = Some(bytes.to_vec());
                        break;
                    }
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            },
        }
    }
    // What was queued for this socket and not written goes back with the news.
    session.messages.close();
    let mut undelivered: Vec<Vec<u8>> = unwritten.into_iter().collect();
    while let Ok(bytes) = session.messages.try_recv() {
        undelivered.push(bytes);
    }
    handle.closed(&session, undelivered);
}
