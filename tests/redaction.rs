//! Redactions: permissions, the per-version redaction algorithm, and every read path.

mod common;
#[path = "room_suite_helpers/mod.rs"]
mod helpers;

use common::{TestServer, assert_error, timeline};
use helpers::*;
use serde_json::{Value, json};

/// The event as `/event`, `/messages` and `/sync` show it (all three must agree).
async fn read_everywhere(
    server: &TestServer,
    user: &common::User,
    room: &str,
    event_id: &str,
) -> Vec<Value> {
    let (status, single) = get_event(server, user, room, event_id).await;
    assert_eq!(status, 200, "{single}");
    let chunk = arr(&messages_ok(server, user, room, "dir=b&limit=100").await["chunk"]);
    let paged = chunk
        .into_iter()
        .find(|e| e["event_id"] == event_id)
        .expect("event in /messages");
    let sync = sync_with(
        server,
        user,
        &json!({ "room": { "timeline": { "limit": 100 } } }),
        None,
        "",
    )
    .await;
    let synced = timeline(&sync, room)
        .iter()
        .find(|e| e["event_id"] == event_id)
        .cloned()
        .expect("event in /sync");
    vec![single, paged, synced]
}

#[tokio::test]
async fn redacting_own_and_others_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_version": "10" }),
        )
        .await;
    ok(&server.join(&bob, &room).await, "bob joins");
    let bob_msg = server.send_text(&bob, &room, "bob's secret").await;
    let alice_msg = server.send_text(&alice, &room, "alice's words").await;
    let bob_msg2 = server.send_text(&bob, &room, "bob again").await;

    // Own message, no power needed.
    let (status, body) = redact(&server, &bob, &room, &bob_msg, Some("oops")).await;
    assert_eq!(status, 200, "{body}");
    let redaction_id = body["event_id"].as_str().expect("redaction id").to_owned();
    // Others' message without power.
    assert_error(
        &redact(&server, &bob, &room, &alice_msg, None).await,
        403,
        "M_FORBIDDEN",
    );
    // Others' message with power.
    ok(
        &redact(&server, &alice, &room, &bob_msg2, None).await,
        "alice redacts bob",
    );
    // Unknown event.
    assert_error(
        &redact(&server, &alice, &room, "$doesnotexist", None).await,
        404,
        "M_NOT_FOUND",
    );

    for event in read_everywhere(&server, &alice, &room, &bob_msg).await {
        assert_eq!(
            event["content"],
            json!({}),
            "message content stripped: {event}"
        );
        assert_eq!(event["type"], "m.room.message");
        assert_eq!(event["sender"], bob.user_id.as_str());
        let because = &event["unsigned"]["redacted_because"];
        assert_eq!(because["event_id"], redaction_id.as_str(), "{event}");
        assert_eq!(because["type"], "m.room.redaction");
        assert_eq!(because["sender"], bob.user_id.as_str());
        assert_eq!(because["content"]["reason"], "oops");
        assert_eq!(
            because["redacts"],
            bob_msg.as_str(),
            "v10: top-level redacts: {because}"
        );
    }
    for event in read_everywhere(&server, &bob, &room, &bob_msg2).await {
        assert_eq!(event["content"], json!({}));
        assert_eq!(
            event["unsigned"]["redacted_because"]["sender"],
            alice.user_id.as_str()
        );
    }
    for event in read_everywhere(&server, &bob, &room, &alice_msg).await {
        assert_eq!(event["content"]["body"], "alice's words", "untouched");
        assert!(event["unsigned"].get("redacted_because").is_none());
    }
    // The redaction event itself is in the timeline.
    let (status, redaction) = get_event(&server, &alice, &room, &redaction_id).await;
    assert_eq!(status, 200);
    assert_eq!(redaction["type"], "m.room.redaction");
    assert_eq!(redaction["redacts"], bob_msg.as_str());
}

#[tokio::test]
async fn v11_redaction_keeps_redacts_in_content() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(&alice, json!({ "room_version": "11" }))
        .await;
    let msg = server.send_text(&alice, &room, "x").await;
    let (status, body) = redact(&server, &alice, &room, &msg, None).await;
    assert_eq!(status, 200, "{body}");
    let (_, redaction) = get_event(
        &server,
        &alice,
        &room,
        body["event_id"].as_str().expect("id"),
    )
    .await;
    assert_eq!(redaction["content"]["redacts"], msg.as_str(), "{redaction}");
    let (_, target) = get_event(&server, &alice, &room, &msg).await;
    assert_eq!(target["content"], json!({}));
    assert_eq!(
        target["unsigned"]["redacted_because"]["content"]["redacts"],
        msg.as_str()
    );
}

#[tokio::test]
async fn state_event_redaction_follows_the_room_version() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    ok(
        &server
            .put(
                &format!("{V3}/profile/{}/displayname", common::enc(&alice.user_id)),
                &alice.token,
                json!({ "displayname": "Alice A" }),
            )
            .await,
        "displayname",
    );
    for version in ["10", "11"] {
        let room = server.create_room(&alice, json!({ "room_version": version, "creation_content": { "m.federate": true, "org.example.extra": "x" } })).await;
        let create = state_event(&server, &alice, &room, "m.room.create", "").await;
        let member = state_event(&server, &alice, &room, "m.room.member", &alice.user_id).await;
        assert_eq!(member["content"]["displayname"], "Alice A");
        let power = state_event(&server, &alice, &room, "m.room.power_levels", "").await;
        let history = state_event(&server, &alice, &room, "m.room.history_visibility", "").await;
        let join_rules = state_event(&server, &alice, &room, "m.room.join_rules", "").await;
        for event in [&create, &member, &power, &history, &join_rules] {
            ok(
                &redact(
                    &server,
                    &alice,
                    &room,
                    event["event_id"].as_str().expect("id"),
                    None,
                )
                .await,
                "redact state",
            );
        }
        let content_of = |e: &Value| e["event_id"].as_str().expect("id").to_owned();
        let read = |id: String| {
            let server = &server;
            let alice = &alice;
            let room = room.clone();
            async move {
                let (status, body) = get_event(server, alice, &room, &id).await;
                assert_eq!(status, 200, "{body}");
                assert!(body["unsigned"]["redacted_because"].is_object(), "{body}");
                body["content"].clone()
            }
        };
        let create_c = read(content_of(&create)).await;
        let member_c = read(content_of(&member)).await;
        let power_c = read(content_of(&power)).await;
        let history_c = read(content_of(&history)).await;
        let join_c = read(content_of(&join_rules)).await;
        if version == "11" {
            // v11 keeps all of m.room.create's content.
            assert_eq!(create_c, create["content"], "v11 create keeps content");
            assert_eq!(
                power_c["invite"], power["content"]["invite"],
                "v11 keeps power_levels.invite: {power_c}"
            );
        } else {
            assert_eq!(
                create_c,
                json!({ "creator": alice.user_id }),
                "v10 create keeps only creator"
            );
            assert!(
                power_c.get("invite").is_none(),
                "v10 drops power_levels.invite: {power_c}"
            );
        }
        assert_eq!(
            member_c,
            json!({ "membership": "join" }),
            "v{version} member keeps membership only"
        );
        assert_eq!(power_c["users"], power["content"]["users"]);
        assert_eq!(power_c["ban"], 50);
        assert!(power_c.get("notifications").is_none(), "{power_c}");
        assert_eq!(history_c, json!({ "history_visibility": "shared" }));
        assert_eq!(join_c, json!({ "join_rule": "invite" }));
        // The room still works.
        server.send_text(&alice, &room, "still fine").await;
    }
}

#[tokio::test]
async fn redacted_event_is_stripped_for_late_readers_and_in_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_version": "12" }),
        )
        .await;
    ok(&server.join(&bob, &room).await, "bob joins");
    let since = next_batch(&server.sync(&bob, "timeout=0").await);
    let msg = server.send_text(&alice, &room, "regret").await;
    let event = server
        .put(
            &room_path(&room, &format!("/send/org.example.custom/{}", txn())),
            &alice.token,
            json!({ "keep": false, "body": "custom" }),
        )
        .await;
    ok(&event, "custom event");
    let custom = event.1["event_id"].as_str().expect("id").to_owned();
    ok(&redact(&server, &alice, &room, &msg, None).await, "redact");
    ok(
        &redact(&server, &alice, &room, &custom, None).await,
        "redact custom",
    );
    // Bob's incremental sync holds both the stripped events and the redactions.
    let sync = sync_with(&server, &bob, &Value::Null, Some(&since), "").await;
    let events = section_timeline(&sync, "join", &room);
    let stripped = events
        .iter()
        .find(|e| e["event_id"] == msg.as_str())
        .unwrap_or_else(|| panic!("{sync}"));
    assert_eq!(stripped["content"], json!({}));
    assert!(stripped["unsigned"]["redacted_because"].is_object());
    let stripped = events
        .iter()
        .find(|e| e["event_id"] == custom.as_str())
        .unwrap_or_else(|| panic!("{sync}"));
    assert_eq!(stripped["content"], json!({}));
    assert_eq!(stripped["type"], "org.example.custom");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "m.room.redaction")
            .count(),
        2
    );
    // Redacting twice is accepted and changes nothing.
    ok(
        &redact(&server, &alice, &room, &msg, None).await,
        "redact again",
    );
    let (_, again) = get_event(&server, &bob, &room, &msg).await;
    assert_eq!(again["content"], json!({}));
}
