//! Durability: every message the server acknowledged (200 with an event id) survives `kill -9`
//! right after the acknowledgement, exactly once and in order.

mod common;

use std::collections::{HashMap, HashSet};

use common::{TestServer, User, enc};
use reqwest::StatusCode;
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";
const SENDERS: usize = 4;
const PER_SENDER: usize = 250;

/// Every event of the room, oldest first, by paginating `/messages` forwards from the start.
async fn all_events(server: &TestServer, user: &User, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("{V3}/rooms/{}/messages?dir=f&limit=100", enc(room));
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let (status, body) = server.get(&path, &user.token).await;
        assert_eq!(status, StatusCode::OK, "messages: {body}");
        let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
        events.extend(chunk.iter().cloned());
        match body["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => return events,
        }
    }
    panic!("pagination did not end");
}

/// The same check backwards from the live end, to be sure both directions agree.
async fn all_events_backwards(server: &TestServer, user: &User, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("{V3}/rooms/{}/messages?dir=b&limit=100", enc(room));
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let (status, body) = server.get(&path, &user.token).await;
        assert_eq!(status, StatusCode::OK, "messages: {body}");
        let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
        events.extend(chunk.iter().cloned());
        match body["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => {
                events.reverse();
                return events;
            }
        }
    }
    panic!("pagination did not end");
}

/// Checks that `events` hold exactly the acknowledged messages, once each, each sender's in
/// the order it sent them.
fn check(events: &[Value], acked: &[(usize, Vec<(String, String)>)], what: &str) {
    let messages: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect();
    let mut seen = HashSet::new();
    for event in &messages {
        let id = event["event_id"].as_str().expect("event_id");
        assert!(
            seen.insert(id.to_owned()),
            "{what}: event {id} appears twice"
        );
    }
    let mut per_sender: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for event in &messages {
        per_sender
            .entry(event["sender"].as_str().expect("sender").to_owned())
            .or_default()
            .push((
                event["event_id"].as_str().expect("event_id").to_owned(),
                event["content"]["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
    }
    let total: usize = acked.iter().map(|(_, a)| a.len()).sum();
    assert_eq!(
        messages.len(),
        total,
        "{what}: {} messages stored, {total} acknowledged",
        messages.len()
    );
    for (index, sent) in acked {
        let user_id = format!("@sender{index}:localhost");
        let stored = per_sender.get(&user_id).cloned().unwrap_or_default();
        let missing: Vec<_> = sent
            .iter()
            .filter(|s| !stored.contains(s))
            .map(|(_, b)| b.clone())
            .collect();
        assert!(
            missing.is_empty(),
            "{what}: {user_id} lost {} acknowledged messages: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert_eq!(
            &stored, sent,
            "{what}: {user_id}'s messages are out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_kill_9() {
    let mut server = TestServer::start().await;
    let owner = server.register("owner").await;
    let room = server
        .create_room(&owner, json!({ "preset": "public_chat" }))
        .await;
    let mut senders = Vec::new();
    for index in 0..SENDERS {
        let user = server.register(&format!("sender{index}")).await;
        let (status, body) = server.join(&user, &room).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        senders.push(user);
    }

    let server_ref = std::sync::Arc::new(server.url(""));
    let mut tasks = Vec::new();
    for (index, user) in senders.iter().cloned().enumerate() {
        let base = server_ref.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            for n in 0..PER_SENDER {
                let body = format!("sender{index} message {n}");
                let url = format!(
                    "{base}{V3}/rooms/{}/send/m.room.message/dur{index}-{n}",
                    enc(&room)
                );
                let response = client
                    .put(url)
                    .bearer_auth(&user.token)
                    .json(&json!({ "msgtype": "m.text", "body": body }))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), StatusCode::OK);
                let value: Value = response.json().await.expect("json");
                acked.push((
                    value["event_id"].as_str().expect("event_id").to_owned(),
                    body,
                ));
            }
            (index, acked)
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.push(task.await.expect("sender task"));
    }
    // SIGKILL right after the last acknowledgement: nothing gets a chance to flush.
    server.kill_hard();
    server.spawn().await;

    let events = all_events(&server, &owner, &room).await;
    check(&events, &acked, "forwards");
    let backwards = all_events_backwards(&server, &owner, &room).await;
    check(&backwards, &acked, "backwards");
    let ids = |events: &[Value]| {
        events
            .iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&events),
        ids(&backwards),
        "both directions must list the same timeline"
    );

    // Retrying an acknowledged transaction after the restart returns the same event (no duplicate).
    let (index, sent) = &acked[0];
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/dur{index}-0", enc(&room)),
            &senders[*index].token,
            json!({ "msgtype": "m.text", "body": "retry" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["event_id"],
        sent[0].0.as_str(),
        "a retried transaction must not create a new event"
    );

    // And the server keeps working: new messages land after the old ones.
    let last = server.send_text(&owner, &room, "after restart").await;
    let events = all_events(&server, &owner, &room).await;
    assert_eq!(
        events.last().map(|e| e["event_id"].clone()),
        Some(json!(last))
    );
}

#[tokio::test]
async fn state_and_accounts_survive_kill_9() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(
            &alice,
            json!({ "name": "Before", "room_alias_name": "durable" }),
        )
        .await;
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.topic/", enc(&room)),
            &alice.token,
            json!({ "topic": "kept" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .put(
            &format!("{V3}/profile/{}/displayname", enc(&alice.user_id)),
            &alice.token,
            json!({ "displayname": "Alice D" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.kill_hard();
    server.spawn().await;

    // The old access token still works, as do the state, alias and profile.
    let (status, body) = server
        .get(&format!("{V3}/account/whoami"), &alice.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/state/m.room.topic/", enc(&room)),
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["topic"], "kept");
    let (status, body) = server
        .get(
            &format!("{V3}/directory/room/{}", enc("#durable:localhost")),
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let (status, body) = server
        .get(
            &format!("{V3}/profile/{}/displayname", enc(&alice.user_id)),
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["displayname"], "Alice D");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_sends_loses_nothing_acknowledged() {
    let mut server = TestServer::start().await;
    let owner = server.register("owner").await;
    let room = server
        .create_room(&owner, json!({ "preset": "public_chat" }))
        .await;
    let mut senders = Vec::new();
    for index in 0..SENDERS {
        let user = server.register(&format!("sender{index}")).await;
        let (status, body) = server.join(&user, &room).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        senders.push(user);
    }
    let total = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let base = server.url("");
    let mut tasks = Vec::new();
    for (index, user) in senders.iter().cloned().enumerate() {
        let base = base.clone();
        let room = room.clone();
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            // Sends until the server dies; only 200s with an event id count as acknowledged.
            for n in 0..10_000 {
                let body = format!("sender{index} message {n}");
                let url = format!(
                    "{base}{V3}/rooms/{}/send/m.room.message/live{index}-{n}",
                    enc(&room)
                );
                let Ok(response) = client
                    .put(url)
                    .bearer_auth(&user.token)
                    .json(&json!({ "msgtype": "m.text", "body": body }))
                    .send()
                    .await
                else {
                    break;
                };
                if response.status() != StatusCode::OK {
                    break;
                }
                let Ok(value) = response.json::<Value>().await else {
                    break;
                };
                let Some(id) = value["event_id"].as_str() else {
                    break;
                };
                acked.push((id.to_owned(), body));
                total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (index, acked)
        }));
    }
    while total.load(std::sync::atomic::Ordering::SeqCst) < 600 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    server.kill_hard();
    let mut acked = Vec::new();
    for task in tasks {
        acked.push(task.await.expect("sender task"));
    }
    server.spawn().await;

    let events = all_events(&server, &owner, &room).await;
    let mut seen = HashSet::new();
    for event in &events {
        let id = event["event_id"].as_str().expect("event_id");
        assert!(seen.insert(id.to_owned()), "event {id} appears twice");
    }
    for (index, sent) in &acked {
        let user_id = format!("@sender{index}:localhost");
        let stored: Vec<(String, String)> = events
            .iter()
            .filter(|e| e["type"] == "m.room.message" && e["sender"] == user_id.as_str())
            .map(|e| {
                (
                    e["event_id"].as_str().unwrap_or_default().to_owned(),
                    e["content"]["body"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        // Everything acknowledged, in order; at most the one in-flight message beyond it.
        assert!(
            stored.len() >= sent.len() && stored.len() <= sent.len() + 1,
            "{user_id}: {} stored, {} acknowledged",
            stored.len(),
            sent.len()
        );
        assert_eq!(
            &stored[..sent.len()],
            &sent[..],
            "{user_id}: acknowledged messages lost or reordered"
        );
        if let Some((_, extra)) = stored.get(sent.len()) {
            assert_eq!(
                extra,
                &format!("sender{index} message {}", sent.len()),
                "{user_id}: unexpected extra message"
            );
        }
    }
}
