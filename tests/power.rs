//! Power levels as enforced on client requests, state endpoints and transaction idempotency.

mod common;
#[path = "room_suite_helpers/mod.rs"]
mod helpers;

use common::{TestServer, assert_error, enc};
use helpers::*;
use serde_json::json;

#[tokio::test]
async fn power_levels_are_enforced_and_raising_them_grants_rights() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    for version in ["10", "12"] {
        let room = server
            .create_room(
                &alice,
                json!({ "preset": "public_chat", "room_version": version }),
            )
            .await;
        ok(&server.join(&bob, &room).await, "bob joins");
        ok(&server.join(&carol, &room).await, "carol joins");
        let alice_msg = server.send_text(&alice, &room, "from alice").await;
        let carol_msg = server.send_text(&carol, &room, "from carol").await;

        // PL 0: no name, no kick, no ban, no redacting others.
        assert_error(
            &put_state(
                &server,
                &bob,
                &room,
                "m.room.name",
                "",
                json!({ "name": "bob's" }),
            )
            .await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(
            &kick(&server, &bob, &room, &carol.user_id, None).await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(
            &ban(&server, &bob, &room, &carol.user_id).await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(
            &redact(&server, &bob, &room, &alice_msg, None).await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(
            &redact(&server, &bob, &room, &carol_msg, None).await,
            403,
            "M_FORBIDDEN",
        );
        // Nor raise himself.
        assert_error(
            &set_power(&server, &bob, &room, &bob.user_id, 50).await,
            403,
            "M_FORBIDDEN",
        );
        assert!(
            state_content(&server, &alice, &room, "m.room.power_levels", "").await["users"]
                .get(&bob.user_id)
                .is_none()
        );

        ok(
            &set_power(&server, &alice, &room, &bob.user_id, 50).await,
            "alice raises bob to 50",
        );
        ok(
            &put_state(
                &server,
                &bob,
                &room,
                "m.room.name",
                "",
                json!({ "name": "bob's" }),
            )
            .await,
            "bob names the room",
        );
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.name", "").await["name"],
            "bob's"
        );
        ok(
            &redact(&server, &bob, &room, &carol_msg, None).await,
            "bob redacts carol",
        );
        ok(
            &kick(&server, &bob, &room, &carol.user_id, None).await,
            "bob kicks carol",
        );
        // Still below alice: cannot redact... (redact needs 50: allowed), but cannot kick alice.
        assert_error(
            &kick(&server, &bob, &room, &alice.user_id, None).await,
            403,
            "M_FORBIDDEN",
        );
        // Cannot raise himself or others above his own level.
        assert_error(
            &set_power(&server, &bob, &room, &bob.user_id, 75).await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(
            &set_power(&server, &bob, &room, &carol.user_id, 75).await,
            403,
            "M_FORBIDDEN",
        );
        // power_levels itself needs 100 here, so even an equal-level change is refused.
        assert_error(
            &set_power(&server, &bob, &room, &carol.user_id, 10).await,
            403,
            "M_FORBIDDEN",
        );
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.power_levels", "").await["users"]
                [&bob.user_id],
            50
        );
        ok(
            &ban(&server, &bob, &room, &carol.user_id).await,
            "bob bans carol",
        );
        ok(
            &unban(&server, &bob, &room, &carol.user_id).await,
            "bob unbans carol",
        );
        ok(&leave(&server, &bob, &room).await, "bob leaves");
    }
}

#[tokio::test]
async fn cannot_edit_power_levels_of_equal_or_higher_users() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({ "preset": "public_chat", "room_version": "10", "power_level_content_override": { "events": { "m.room.power_levels": 50 } } })).await;
    ok(&server.join(&bob, &room).await, "bob joins");
    ok(
        &set_power(&server, &alice, &room, &bob.user_id, 50).await,
        "bob to 50",
    );
    // Bob may now send power_levels, but not touch alice (100) nor go above 50.
    assert_error(
        &set_power(&server, &bob, &room, &alice.user_id, 0).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &set_power(&server, &bob, &room, &bob.user_id, 51).await,
        403,
        "M_FORBIDDEN",
    );
    // Lowering himself is allowed.
    ok(
        &set_power(&server, &bob, &room, &bob.user_id, 40).await,
        "bob lowers himself",
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.power_levels", "").await["users"]
            [&bob.user_id],
        40
    );
}

#[tokio::test]
async fn state_paths_with_and_without_state_key() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let base = room_path(&room, "/state/m.room.topic");
    let (status, body) = server
        .put(&base, &alice.token, json!({ "topic": "no slash" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["event_id"]
            .as_str()
            .is_some_and(|e| e.starts_with('$'))
    );
    for path in [base.clone(), format!("{base}/")] {
        let (status, body) = server.get(&path, &alice.token).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(body["topic"], "no slash");
    }
    let (status, _) = server
        .put(
            &format!("{base}/"),
            &alice.token,
            json!({ "topic": "slash" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.topic", "").await["topic"],
        "slash"
    );

    // A state key.
    ok(
        &put_state(
            &server,
            &alice,
            &room,
            "org.example.thing",
            "key/with slash",
            json!({ "n": 1 }),
        )
        .await,
        "custom state",
    );
    assert_eq!(
        state_content(
            &server,
            &alice,
            &room,
            "org.example.thing",
            "key/with slash"
        )
        .await,
        json!({ "n": 1 })
    );
    assert_error(
        &get_state(&server, &alice, &room, "org.example.thing", "").await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &get_state(&server, &alice, &room, "org.example.missing", "x").await,
        404,
        "M_NOT_FOUND",
    );

    // format=event returns the whole event.
    let event = state_event(&server, &alice, &room, "m.room.topic", "").await;
    assert_eq!(event["type"], "m.room.topic");
    assert_eq!(event["state_key"], "");
    assert_eq!(event["sender"], alice.user_id.as_str());
    assert_eq!(event["content"]["topic"], "slash");
    assert_eq!(event["room_id"], room.as_str());
    assert!(
        event["event_id"]
            .as_str()
            .is_some_and(|e| e.starts_with('$'))
    );
    assert!(event["origin_server_ts"].is_u64());
    assert_eq!(
        event["unsigned"]["prev_content"]["topic"], "no slash",
        "{event}"
    );

    // The whole state.
    let (status, state) = server.get(&room_path(&room, "/state"), &alice.token).await;
    assert_eq!(status, 200);
    let state = arr(&state);
    for kind in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.topic",
        "org.example.thing",
    ] {
        assert!(
            state.iter().any(|e| e["type"] == kind),
            "{kind} missing from /state"
        );
    }
    assert_eq!(
        state.iter().filter(|e| e["type"] == "m.room.topic").count(),
        1
    );

    // Non-members cannot read state of a shared room.
    let eve = server.register("eve").await;
    assert_error(
        &get_state(&server, &eve, &room, "m.room.topic", "").await,
        403,
        "M_FORBIDDEN",
    );
    // State content must be an object.
    let result = server
        .put(&base, &alice.token, json!(["not", "an", "object"]))
        .await;
    assert_eq!(result.0, 400, "{}", result.1);
}

#[tokio::test]
async fn transaction_ids_are_idempotent_per_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let path = room_path(&room, "/send/m.room.message/fixed-txn-1");
    let (status, first) = server
        .put(
            &path,
            &alice.token,
            json!({ "msgtype": "m.text", "body": "once" }),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = server
        .put(
            &path,
            &alice.token,
            json!({ "msgtype": "m.text", "body": "once" }),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(first["event_id"], second["event_id"]);
    let chunk = arr(&messages_ok(&server, &alice, &room, "dir=b&limit=50").await["chunk"]);
    assert_eq!(
        bodies(&chunk),
        vec!["once"],
        "one event for one transaction"
    );

    // The sending device sees its transaction id; another device does not.
    let sync = server.sync(&alice, "timeout=0").await;
    let event = section_timeline(&sync, "join", &room)
        .into_iter()
        .find(|e| e["event_id"] == first["event_id"])
        .expect("event in sync");
    assert_eq!(
        event["unsigned"]["transaction_id"], "fixed-txn-1",
        "{event}"
    );
    let phone = login(&server, "alice").await;
    let sync = server.sync(&phone, "timeout=0").await;
    let event = section_timeline(&sync, "join", &room)
        .into_iter()
        .find(|e| e["event_id"] == first["event_id"])
        .expect("event in sync");
    assert!(event["unsigned"].get("transaction_id").is_none(), "{event}");

    // The same txn id from another device is a different transaction.
    let (status, third) = server
        .put(
            &path,
            &phone.token,
            json!({ "msgtype": "m.text", "body": "twice" }),
        )
        .await;
    assert_eq!(status, 200, "{third}");
    assert_ne!(third["event_id"], first["event_id"]);
    // Concurrent retries of one transaction give one event.
    let path2 = room_path(&room, "/send/m.room.message/fixed-txn-2");
    let (a, b) = tokio::join!(
        server.put(
            &path2,
            &alice.token,
            json!({ "msgtype": "m.text", "body": "race" })
        ),
        server.put(
            &path2,
            &alice.token,
            json!({ "msgtype": "m.text", "body": "race" })
        ),
    );
    assert_eq!(a.0, 200);
    assert_eq!(b.0, 200);
    assert_eq!(a.1["event_id"], b.1["event_id"]);
    let chunk = arr(&messages_ok(&server, &alice, &room, "dir=b&limit=50").await["chunk"]);
    assert_eq!(bodies(&chunk).iter().filter(|b| *b == "race").count(), 1);
    let _ = enc;
}

#[tokio::test]
async fn equal_levels_cannot_kick_and_invite_needs_its_level() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_version": "10" }),
        )
        .await;
    ok(&server.join(&bob, &room).await, "join");
    ok(&server.join(&carol, &room).await, "join");
    // public_chat: invite needs 50.
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.power_levels", "").await["invite"],
        50
    );
    assert_error(
        &server.invite(&bob, &room, &dave.user_id).await,
        403,
        "M_FORBIDDEN",
    );
    ok(
        &set_power(&server, &alice, &room, &bob.user_id, 100).await,
        "bob to 100",
    );
    ok(
        &server.invite(&bob, &room, &dave.user_id).await,
        "bob invites",
    );
    // Equal levels cannot kick or ban each other.
    assert_error(
        &kick(&server, &bob, &room, &alice.user_id, None).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &ban(&server, &bob, &room, &alice.user_id).await,
        403,
        "M_FORBIDDEN",
    );
    ok(
        &kick(&server, &bob, &room, &carol.user_id, None).await,
        "higher kicks lower",
    );
    // private_chat: invite needs 0, so any member can invite.
    let private = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [carol.user_id] }),
        )
        .await;
    ok(&server.join(&carol, &private).await, "carol joins");
    ok(
        &server.invite(&carol, &private, &dave.user_id).await,
        "member invites",
    );
    // Non-members cannot send state or messages.
    let eve = server.register("eve").await;
    assert_error(
        &put_state(
            &server,
            &eve,
            &room,
            "m.room.topic",
            "",
            json!({ "topic": "x" }),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &try_send(&server, &eve, &room, "hi").await,
        403,
        "M_FORBIDDEN",
    );
}
