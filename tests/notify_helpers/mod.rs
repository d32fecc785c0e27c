//! Helpers for the relations / receipts / push / presence suites (kept out of `common`).
//! Included with `#[path = "notify_helpers/mod.rs"] mod nh;`.

#![allow(dead_code)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, User, enc};

pub const V1: &str = "/_matrix/client/v1";
pub const V3: &str = "/_matrix/client/v3";

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn txn() -> String {
    format!(
        "n{}-{}",
        std::process::id(),
        TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

pub fn room_path(room: &str, rest: &str) -> String {
    format!("{V3}/rooms/{}{rest}", enc(room))
}

/// A JSON value as a percent-encoded query parameter.
pub fn q(value: &Value) -> String {
    enc(&value.to_string())
}

#[track_caller]
pub fn ok(result: &(StatusCode, Value), what: &str) {
    assert_eq!(result.0, StatusCode::OK, "{what}: {}", result.1);
}

// ---------------------------------------------------------------------------------------------
// Sending events

pub async fn try_send(
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

/// Sends an event; panics unless 200. Returns the event id.
pub async fn send(s: &TestServer, u: &User, room: &str, kind: &str, content: Value) -> String {
    let (status, body) = try_send(s, u, room, kind, content).await;
    assert_eq!(status, StatusCode::OK, "send {kind}: {body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

pub async fn send_msg(s: &TestServer, u: &User, room: &str, content: Value) -> String {
    send(s, u, room, "m.room.message", content).await
}

pub fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

/// An `m.replace` edit of `target` with new body `body`.
pub fn edit(target: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": { "msgtype": "m.text", "body": body },
        "m.relates_to": { "rel_type": "m.replace", "event_id": target },
    })
}

/// An `m.annotation` relation (reaction content).
pub fn reaction(target: &str, key: &str) -> Value {
    json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": key } })
}

pub fn reference(target: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": { "rel_type": "m.reference", "event_id": target },
    })
}

/// A thread reply to `root`, with the reply fallback clients send.
pub fn thread_reply(root: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": true,
            "m.in_reply_to": { "event_id": root },
        },
    })
}

pub async fn redact(s: &TestServer, u: &User, room: &str, event_id: &str) -> String {
    let (status, body) = s
        .put(
            &room_path(room, &format!("/redact/{}/{}", enc(event_id), txn())),
            &u.token,
            json!({ "reason": "test" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "redact: {body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Reading events

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

pub async fn event_ok(s: &TestServer, u: &User, room: &str, event_id: &str) -> Value {
    let (status, body) = get_event(s, u, room, event_id).await;
    assert_eq!(status, StatusCode::OK, "GET /event: {body}");
    body
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

pub async fn context_ok(s: &TestServer, u: &User, room: &str, event_id: &str) -> Value {
    let (status, body) = s
        .get(
            &room_path(room, &format!("/context/{}?limit=3", enc(event_id))),
            &u.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "/context: {body}");
    body
}

/// `GET /v1/rooms/{room}/relations/{event}{suffix}?{query}` (suffix like `/m.replace`).
pub async fn relations(
    s: &TestServer,
    u: &User,
    room: &str,
    event_id: &str,
    suffix: &str,
    query: &str,
) -> (StatusCode, Value) {
    s.get(
        &format!(
            "{V1}/rooms/{}/relations/{}{suffix}?{query}",
            enc(room),
            enc(event_id)
        ),
        &u.token,
    )
    .await
}

pub async fn relations_ok(
    s: &TestServer,
    u: &User,
    room: &str,
    event_id: &str,
    suffix: &str,
    query: &str,
) -> Value {
    let (status, body) = relations(s, u, room, event_id, suffix, query).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "/relations/{event_id}{suffix}?{query}: {body}"
    );
    body
}

pub async fn threads(s: &TestServer, u: &User, room: &str, query: &str) -> (StatusCode, Value) {
    s.get(
        &format!("{V1}/rooms/{}/threads?{query}", enc(room)),
        &u.token,
    )
    .await
}

pub fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

pub fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

pub fn chunk_ids(body: &Value) -> Vec<String> {
    ids(&arr(&body["chunk"]))
}

/// The event with `event_id` in a list; panics if absent.
#[track_caller]
pub fn find_event<'a>(events: &'a [Value], event_id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event_id"] == event_id)
        .unwrap_or_else(|| panic!("{event_id} not in {events:?}"))
}

/// `unsigned.m.relations` of an event (`Null` if absent).
pub fn bundle(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]
}

// ---------------------------------------------------------------------------------------------
// Sync

/// `/sync` with an inline filter (`Value::Null` for none) and an optional `since`; timeout 0.
pub async fn sync(s: &TestServer, u: &User, filter: &Value, since: Option<&str>) -> Value {
    let mut query = vec!["timeout=0".to_owned()];
    if !filter.is_null() {
        query.push(format!("filter={}", q(filter)));
    }
    if let Some(since) = since {
        query.push(format!("since={}", enc(since)));
    }
    s.sync(u, &query.join("&")).await
}

pub fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

pub fn joined<'a>(sync: &'a Value, room: &str) -> &'a Value {
    &sync["rooms"]["join"][room]
}

pub fn timeline_of(sync: &Value, room: &str) -> Vec<Value> {
    arr(&joined(sync, room)["timeline"]["events"])
}

pub fn ephemeral_of(sync: &Value, room: &str) -> Vec<Value> {
    arr(&joined(sync, room)["ephemeral"]["events"])
}

pub fn room_account_data_of(sync: &Value, room: &str) -> Vec<Value> {
    arr(&joined(sync, room)["account_data"]["events"])
}

/// The content of the first event of `kind` in a list of events.
pub fn content_of<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["type"] == kind)
        .map(|e| &e["content"])
}

/// (notification_count, highlight_count) of a joined room in an initial sync.
pub async fn counts(s: &TestServer, u: &User, room: &str) -> (u64, u64) {
    let sync = sync(
        s,
        u,
        &json!({ "room": { "timeline": { "limit": 1 } } }),
        None,
    )
    .await;
    counts_in(&sync, room)
}

#[track_caller]
pub fn counts_in(sync: &Value, room: &str) -> (u64, u64) {
    let unread = &joined(sync, room)["unread_notifications"];
    assert!(
        unread.is_object(),
        "unread_notifications missing for {room}: {sync}"
    );
    (
        unread["notification_count"].as_u64().unwrap_or(0),
        unread["highlight_count"].as_u64().unwrap_or(0),
    )
}

/// Per-thread counts with `unread_thread_notifications` enabled: (main counts, sync body).
pub async fn thread_counts(s: &TestServer, u: &User, room: &str) -> ((u64, u64), Value) {
    let filter =
        json!({ "room": { "timeline": { "limit": 1, "unread_thread_notifications": true } } });
    let sync = sync(s, u, &filter, None).await;
    let main = counts_in(&sync, room);
    let threads = joined(&sync, room)["unread_thread_notifications"].clone();
    (main, threads)
}

/// (notification_count, highlight_count) of one thread in `unread_thread_notifications`;
/// an omitted thread counts as (0, 0), as the spec allows.
pub fn thread_entry(threads: &Value, root: &str) -> (u64, u64) {
    let entry = &threads[root];
    (
        entry["notification_count"].as_u64().unwrap_or(0),
        entry["highlight_count"].as_u64().unwrap_or(0),
    )
}

// ---------------------------------------------------------------------------------------------
// Rooms and users

/// A public room created by `owner` that every user in `others` joins.
pub async fn public_room(s: &TestServer, owner: &User, others: &[&User]) -> String {
    let room = s
        .create_room(
            owner,
            json!({ "preset": "public_chat", "name": "Test room" }),
        )
        .await;
    for user in others {
        ok(&s.join(user, &room).await, "join");
    }
    room
}

pub async fn set_displayname(s: &TestServer, u: &User, name: &str) {
    ok(
        &s.put(
            &format!("{V3}/profile/{}/displayname", enc(&u.user_id)),
            &u.token,
            json!({ "displayname": name }),
        )
        .await,
        "set displayname",
    );
}

pub async fn put_account_data(s: &TestServer, u: &User, kind: &str, content: Value) {
    ok(
        &s.put(
            &format!("{V3}/user/{}/account_data/{}", enc(&u.user_id), enc(kind)),
            &u.token,
            content,
        )
        .await,
        "account data",
    );
}

pub async fn room_account_data(
    s: &TestServer,
    u: &User,
    room: &str,
    kind: &str,
) -> (StatusCode, Value) {
    s.get(
        &format!(
            "{V3}/user/{}/rooms/{}/account_data/{}",
            enc(&u.user_id),
            enc(room),
            enc(kind)
        ),
        &u.token,
    )
    .await
}

pub async fn receipt(
    s: &TestServer,
    u: &User,
    room: &str,
    receipt_type: &str,
    event_id: &str,
    body: Value,
) -> (StatusCode, Value) {
    s.post(
        &room_path(
            room,
            &format!("/receipt/{}/{}", enc(receipt_type), enc(event_id)),
        ),
        &u.token,
        body,
    )
    .await
}

pub async fn read(s: &TestServer, u: &User, room: &str, event_id: &str) {
    ok(
        &receipt(s, u, room, "m.read", event_id, json!({})).await,
        "m.read receipt",
    );
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---------------------------------------------------------------------------------------------
// Push rules and pushers

pub fn pushrule_path(kind: &str, rule_id: &str, rest: &str) -> String {
    format!("{V3}/pushrules/global/{kind}/{}{rest}", enc(rule_id))
}

/// The rule ids of one kind, in priority order, from `GET /pushrules/`.
pub async fn rule_ids(s: &TestServer, u: &User, kind: &str) -> Vec<String> {
    let (status, body) = s.get(&format!("{V3}/pushrules/"), &u.token).await;
    assert_eq!(status, StatusCode::OK, "GET /pushrules/: {body}");
    arr(&body["global"][kind])
        .iter()
        .filter_map(|r| r["rule_id"].as_str().map(str::to_owned))
        .collect()
}

/// A pusher body for `/pushers/set`.
pub fn pusher(pushkey: &str, url: &str, extra_data: Value) -> Value {
    let mut data = json!({ "url": url });
    if let (Some(data), Some(extra)) = (data.as_object_mut(), extra_data.as_object()) {
        for (k, v) in extra {
            data.insert(k.clone(), v.clone());
        }
    }
    json!({
        "kind": "http",
        "app_id": "org.example.sparks.test",
        "pushkey": pushkey,
        "app_display_name": "Sparks tests",
        "device_display_name": "Test device",
        "profile_tag": "tag1",
        "lang": "en",
        "data": data,
    })
}

pub async fn set_pusher(s: &TestServer, u: &User, body: Value) -> (StatusCode, Value) {
    s.post(&format!("{V3}/pushers/set"), &u.token, body).await
}

pub async fn pushers(s: &TestServer, u: &User) -> Vec<Value> {
    let (status, body) = s.get(&format!("{V3}/pushers"), &u.token).await;
    assert_eq!(status, StatusCode::OK, "GET /pushers: {body}");
    arr(&body["pushers"])
}

// ---------------------------------------------------------------------------------------------
// A local push gateway: a real HTTP server on 127.0.0.1 that records what it receives.

/// One request the gateway received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub body: Value,
}

/// What the gateway answers, in order; after the script runs out, `200 {"rejected": []}`.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

#[derive(Default)]
struct GatewayState {
    received: Vec<Received>,
    script: std::collections::VecDeque<Answer>,
}

pub struct LocalGateway {
    pub url: String,
    state: Arc<Mutex<GatewayState>>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalGateway {
    /// Starts the receiver; `script` is the list of answers to give first.
    pub async fn start(script: Vec<Answer>) -> Self {
        let state = Arc::new(Mutex::new(GatewayState {
            received: Vec::new(),
            script: script.into(),
        }));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let shared = shared.clone();
            async move {
                let path = request.uri().path().to_owned();
                let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let answer = {
                    let mut state = shared.lock().expect("gateway state");
                    state.received.push(Received { path, body });
                    state.script.pop_front()
                };
                let answer = answer.unwrap_or(Answer {
                    status: 200,
                    body: json!({ "rejected": [] }),
                });
                (
                    axum::http::StatusCode::from_u16(answer.status)
                        .unwrap_or(axum::http::StatusCode::OK),
                    axum::Json(answer.body),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"),
            state,
            task,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("gateway state").received.clone()
    }

    /// Waits until at least `n` requests arrived (or `timeout`); returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= n || Instant::now() > deadline {
                return received;
            }
            sleep_ms(25).await;
        }
    }
}

impl Drop for LocalGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}
