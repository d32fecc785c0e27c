//! Helpers for the rooms/membership/power/redaction/history/sync suites (kept out of `common`).
//! Included with `#[path = "room_suite_helpers/mod.rs"] mod helpers;`.

#![allow(dead_code)]

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{TestServer, User, enc};

pub const V3: &str = "/_matrix/client/v3";

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn txn() -> String {
    format!(
        "h{}-{}",
        std::process::id(),
        TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A JSON value as a percent-encoded query parameter.
pub fn q(value: &Value) -> String {
    enc(&value.to_string())
}

pub fn room_path(room: &str, rest: &str) -> String {
    format!("{V3}/rooms/{}{rest}", enc(room))
}

pub async fn get_state(
    s: &TestServer,
    u: &User,
    room: &str,
    kind: &str,
    key: &str,
) -> (StatusCode, Value) {
    s.get(
        &room_path(room, &format!("/state/{}/{}", enc(kind), enc(key))),
        &u.token,
    )
    .await
}

/// Content of a state event; panics if absent.
pub async fn state_content(s: &TestServer, u: &User, room: &str, kind: &str, key: &str) -> Value {
    let (status, body) = get_state(s, u, room, kind, key).await;
    assert_eq!(status, StatusCode::OK, "GET state {kind}/{key}: {body}");
    body
}

/// The full state event (`format=event`).
pub async fn state_event(s: &TestServer, u: &User, room: &str, kind: &str, key: &str) -> Value {
    let (status, body) = s
        .get(
            &room_path(
                room,
                &format!("/state/{}/{}?format=event", enc(kind), enc(key)),
            ),
            &u.token,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "GET state {kind}/{key}?format=event: {body}"
    );
    body
}

pub async fn put_state(
    s: &TestServer,
    u: &User,
    room: &str,
    kind: &str,
    key: &str,
    content: Value,
) -> (StatusCode, Value) {
    s.put(
        &room_path(room, &format!("/state/{}/{}", enc(kind), enc(key))),
        &u.token,
        content,
    )
    .await
}

pub async fn try_send(s: &TestServer, u: &User, room: &str, text: &str) -> (StatusCode, Value) {
    s.put(
        &room_path(room, &format!("/send/m.room.message/{}", txn())),
        &u.token,
        json!({ "msgtype": "m.text", "body": text }),
    )
    .await
}

pub async fn send_event(
    s: &TestServer,
    u: &User,
    room: &str,
    kind: &str,
    content: Value,
) -> (StatusCode, Value) {
    s.put(
        &room_path(room, &format!("/send/{}/{}", enc(kind), txn())),
        &u.token,
        content,
    )
    .await
}

pub async fn redact(
    s: &TestServer,
    u: &User,
    room: &str,
    event_id: &str,
    reason: Option<&str>,
) -> (StatusCode, Value) {
    let body = match reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    s.put(
        &room_path(room, &format!("/redact/{}/{}", enc(event_id), txn())),
        &u.token,
        body,
    )
    .await
}

pub async fn get_event(
    s: &TestServer,
    u: &User,
    room: &str,
    event_id: &str,
) -> (StatusCode, Value) {
    s.get(
        &room_path(room, &format!("/event/{}", enc(event_id))),
        &u.token,
    )
    .await
}

pub async fn messages(s: &TestServer, u: &User, room: &str, query: &str) -> (StatusCode, Value) {
    s.get(&room_path(room, &format!("/messages?{query}")), &u.token)
        .await
}

pub async fn messages_ok(s: &TestServer, u: &User, room: &str, query: &str) -> Value {
    let (status, body) = messages(s, u, room, query).await;
    assert_eq!(status, StatusCode::OK, "/messages?{query}: {body}");
    body
}

pub async fn context(
    s: &TestServer,
    u: &User,
    room: &str,
    event_id: &str,
    query: &str,
) -> (StatusCode, Value) {
    s.get(
        &room_path(room, &format!("/context/{}?{query}", enc(event_id))),
        &u.token,
    )
    .await
}

pub async fn ts_to_event(
    s: &TestServer,
    u: &User,
    room: &str,
    ts: u64,
    dir: &str,
) -> (StatusCode, Value) {
    s.get(
        &format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
            enc(room)
        ),
        &u.token,
    )
    .await
}

pub async fn leave(s: &TestServer, u: &User, room: &str) -> (StatusCode, Value) {
    s.post(&room_path(room, "/leave"), &u.token, json!({}))
        .await
}

pub async fn kick(
    s: &TestServer,
    u: &User,
    room: &str,
    target: &str,
    reason: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = json!({ "user_id": target });
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    s.post(&room_path(room, "/kick"), &u.token, body).await
}

pub async fn ban(s: &TestServer, u: &User, room: &str, target: &str) -> (StatusCode, Value) {
    s.post(
        &room_path(room, "/ban"),
        &u.token,
        json!({ "user_id": target, "reason": "spam" }),
    )
    .await
}

pub async fn unban(s: &TestServer, u: &User, room: &str, target: &str) -> (StatusCode, Value) {
    s.post(
        &room_path(room, "/unban"),
        &u.token,
        json!({ "user_id": target }),
    )
    .await
}

#[track_caller]
pub fn ok(result: &(StatusCode, Value), what: &str) {
    assert_eq!(result.0, StatusCode::OK, "{what}: {}", result.1);
}

/// Sets `target`'s power level (read-modify-write of `m.room.power_levels`).
pub async fn set_power(
    s: &TestServer,
    admin: &User,
    room: &str,
    target: &str,
    level: i64,
) -> (StatusCode, Value) {
    let mut levels = state_content(s, admin, room, "m.room.power_levels", "").await;
    if !levels["users"].is_object() {
        levels["users"] = json!({});
    }
    levels["users"][target] = json!(level);
    put_state(s, admin, room, "m.room.power_levels", "", levels).await
}

/// `/sync` with an inline filter (`Value::Null` for none), optional `since` and extra query.
pub async fn sync_with(
    s: &TestServer,
    u: &User,
    filter: &Value,
    since: Option<&str>,
    extra: &str,
) -> Value {
    let mut query = Vec::new();
    if !extra.contains("timeout=") {
        query.push("timeout=0".to_owned());
    }
    if !filter.is_null() {
        query.push(format!("filter={}", q(filter)));
    }
    if let Some(since) = since {
        query.push(format!("since={}", enc(since)));
    }
    if !extra.is_empty() {
        query.push(extra.to_owned());
    }
    s.sync(u, &query.join("&")).await
}

pub fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Bodies of `m.room.message` events, in the given order.
pub fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

pub fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

pub fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// Timeline events of `room` in a section (`join`/`leave`) of a sync response.
pub fn section_timeline(sync: &Value, section: &str, room: &str) -> Vec<Value> {
    arr(&sync["rooms"][section][room]["timeline"]["events"])
}

/// State events of `room` in a section of a sync response.
pub fn section_state(sync: &Value, section: &str, room: &str) -> Vec<Value> {
    arr(&sync["rooms"][section][room]["state"]["events"])
}

pub fn find<'a>(events: &'a [Value], kind: &str, state_key: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == state_key)
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Logs in again as `localpart` (a second device).
pub async fn login(s: &TestServer, localpart: &str) -> User {
    let (status, body) = s
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": localpart }, "password": "correct horse" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "login: {body}");
    User {
        user_id: body["user_id"].as_str().expect("user_id").to_owned(),
        token: body["access_token"].as_str().expect("token").to_owned(),
        device_id: body["device_id"].as_str().expect("device").to_owned(),
    }
}

pub async fn origin_ts(s: &TestServer, u: &User, room: &str, event_id: &str) -> u64 {
    let (status, body) = get_event(s, u, room, event_id).await;
    assert_eq!(status, StatusCode::OK, "GET event: {body}");
    body["origin_server_ts"].as_u64().expect("origin_server_ts")
}
