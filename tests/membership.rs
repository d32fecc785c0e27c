//! Membership: join, leave, forget, invite, reject, kick, ban, unban, knock, restricted joins
//! and the member lists.

mod common;
#[path = "room_suite_helpers/mod.rs"]
mod helpers;

use common::{TestServer, assert_error, enc};
use helpers::*;
use serde_json::json;

#[tokio::test]
async fn join_by_id_and_alias_then_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "pub" }),
        )
        .await;

    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/join", enc(&room)),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let (_, joined) = server.get(&format!("{V3}/joined_rooms"), &bob.token).await;
    assert_eq!(joined["joined_rooms"], json!([room]));
    assert_eq!(
        state_content(&server, &bob, &room, "m.room.member", &bob.user_id).await["membership"],
        "join"
    );

    ok(&leave(&server, &bob, &room).await, "leave");
    let (_, joined) = server.get(&format!("{V3}/joined_rooms"), &bob.token).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await["membership"],
        "leave"
    );

    let (status, body) = server.join(&bob, "#pub:localhost").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let (_, joined) = server.get(&format!("{V3}/joined_rooms"), &bob.token).await;
    assert_eq!(joined["joined_rooms"], json!([room]));

    // Unknown alias and unknown room.
    assert_error(
        &server.join(&bob, "#nope:localhost").await,
        404,
        "M_NOT_FOUND",
    );
    let unknown = server.join(&bob, "!doesnotexist:localhost").await;
    assert_eq!(unknown.0, 404, "{}", unknown.1);
}

#[tokio::test]
async fn joined_members_and_members_filters() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    ok(
        &server
            .put(
                &format!("{V3}/profile/{}/displayname", enc(&bob.user_id)),
                &bob.token,
                json!({ "displayname": "Bobby" }),
            )
            .await,
        "displayname",
    );
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let before_bob = next_batch(&server.sync(&alice, "timeout=0").await);
    ok(&server.join(&bob, &room).await, "bob joins");
    ok(&server.join(&carol, &room).await, "carol joins");
    ok(&leave(&server, &carol, &room).await, "carol leaves");
    ok(
        &server.invite(&alice, &room, &dave.user_id).await,
        "invite dave",
    );

    let (status, body) = server
        .get(&room_path(&room, "/joined_members"), &bob.token)
        .await;
    assert_eq!(status, 200, "{body}");
    let joined = body["joined"].as_object().expect("joined");
    let mut names: Vec<&String> = joined.keys().collect();
    names.sort();
    assert_eq!(names, vec![&alice.user_id, &bob.user_id]);
    assert_eq!(joined[&bob.user_id]["display_name"], "Bobby");

    // A user who was never in the room cannot read the members.
    let eve = server.register("eve").await;
    assert_error(
        &server
            .get(&room_path(&room, "/joined_members"), &eve.token)
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.get(&room_path(&room, "/members"), &eve.token).await,
        403,
        "M_FORBIDDEN",
    );

    let members = |query: &'static str| {
        let server = &server;
        let bob = &bob;
        let room = room.clone();
        async move {
            let (status, body) = server
                .get(&room_path(&room, &format!("/members{query}")), &bob.token)
                .await;
            assert_eq!(status, 200, "{body}");
            let mut out: Vec<(String, String)> = arr(&body["chunk"])
                .iter()
                .map(|e| {
                    assert_eq!(e["type"], "m.room.member");
                    (
                        e["state_key"].as_str().unwrap_or_default().to_owned(),
                        e["content"]["membership"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
                .collect();
            out.sort();
            out
        }
    };
    let all = members("").await;
    assert_eq!(
        all,
        vec![
            (alice.user_id.clone(), "join".to_owned()),
            (bob.user_id.clone(), "join".to_owned()),
            (carol.user_id.clone(), "leave".to_owned()),
            (dave.user_id.clone(), "invite".to_owned()),
        ]
    );
    assert_eq!(members("?membership=join").await.len(), 2);
    assert_eq!(
        members("?membership=invite").await,
        vec![(dave.user_id.clone(), "invite".to_owned())]
    );
    assert_eq!(members("?not_membership=leave").await.len(), 3);
    assert!(
        members("?not_membership=join")
            .await
            .iter()
            .all(|(_, m)| m != "join")
    );
    // `at` a token from before bob joined: only alice.
    let at = members_at(&server, &bob, &room, &before_bob).await;
    assert_eq!(at, vec![(alice.user_id.clone(), "join".to_owned())]);
}

async fn members_at(
    server: &TestServer,
    user: &common::User,
    room: &str,
    at: &str,
) -> Vec<(String, String)> {
    let (status, body) = server
        .get(
            &room_path(room, &format!("/members?at={}", enc(at))),
            &user.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut out: Vec<(String, String)> = arr(&body["chunk"])
        .iter()
        .map(|e| {
            (
                e["state_key"].as_str().unwrap_or_default().to_owned(),
                e["content"]["membership"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn invite_reject_and_accept() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Secret" }),
        )
        .await;
    assert_error(&server.join(&bob, &room).await, 403, "M_FORBIDDEN");
    let since = next_batch(&server.sync(&bob, "timeout=0").await);

    ok(&server.invite(&alice, &room, &bob.user_id).await, "invite");
    let sync = sync_with(&server, &bob, &serde_json::Value::Null, Some(&since), "").await;
    let invite_state = arr(&sync["rooms"]["invite"][&room]["invite_state"]["events"]);
    assert_eq!(
        find(&invite_state, "m.room.member", &bob.user_id)
            .map(|e| e["content"]["membership"].clone()),
        Some(json!("invite")),
        "{sync}"
    );
    assert_eq!(
        find(&invite_state, "m.room.name", "").map(|e| e["content"]["name"].clone()),
        Some(json!("Secret"))
    );
    // Inviting an already-invited user again is fine; inviting an unknown user is not.
    let unknown = server.invite(&alice, &room, "@nobody:localhost").await;
    assert!(
        unknown.0 == 403 || unknown.0 == 404,
        "{} {}",
        unknown.0,
        unknown.1
    );
    // A non-member cannot invite.
    let carol = server.register("carol").await;
    assert_error(
        &server.invite(&carol, &room, &carol.user_id).await,
        403,
        "M_FORBIDDEN",
    );

    // Reject.
    let since = next_batch(&sync);
    ok(&leave(&server, &bob, &room).await, "reject");
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await["membership"],
        "leave"
    );
    let sync = sync_with(&server, &bob, &serde_json::Value::Null, Some(&since), "").await;
    assert!(
        sync["rooms"]["leave"].get(&room).is_some(),
        "rejected invite appears in leave: {sync}"
    );
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");
    assert_error(&server.join(&bob, &room).await, 403, "M_FORBIDDEN");

    // Invite again and accept.
    ok(
        &server.invite(&alice, &room, &bob.user_id).await,
        "re-invite",
    );
    ok(&server.join(&bob, &room).await, "accept");
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await["membership"],
        "join"
    );
    // Inviting a joined member is refused.
    assert_error(
        &server.invite(&alice, &room, &bob.user_id).await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn kick_ban_unban() {
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
    // Bob (PL 0) can do neither.
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
        &kick(&server, &alice, &room, &bob.user_id, Some("bye")).await,
        "kick",
    );
    let member = state_event(&server, &alice, &room, "m.room.member", &bob.user_id).await;
    assert_eq!(member["content"]["membership"], "leave");
    assert_eq!(member["content"]["reason"], "bye");
    assert_eq!(member["sender"], alice.user_id.as_str());
    // Kicked users may rejoin a public room.
    ok(&server.join(&bob, &room).await, "rejoin after kick");

    ok(&ban(&server, &alice, &room, &bob.user_id).await, "ban");
    let member = state_event(&server, &alice, &room, "m.room.member", &bob.user_id).await;
    assert_eq!(member["content"]["membership"], "ban");
    assert_eq!(member["content"]["reason"], "spam");
    assert_error(&server.join(&bob, &room).await, 403, "M_FORBIDDEN");
    // Bob can no longer send.
    assert_error(
        &try_send(&server, &bob, &room, "let me in").await,
        403,
        "M_FORBIDDEN",
    );
    // A banned user cannot be invited either.
    assert_error(
        &server.invite(&alice, &room, &bob.user_id).await,
        403,
        "M_FORBIDDEN",
    );

    ok(&unban(&server, &alice, &room, &bob.user_id).await, "unban");
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await["membership"],
        "leave"
    );
    ok(&server.join(&bob, &room).await, "join after unban");

    // Banning someone who was never in the room works too (pre-emptive ban).
    let carol = server.register("carol").await;
    ok(
        &ban(&server, &alice, &room, &carol.user_id).await,
        "pre-emptive ban",
    );
    assert_error(&server.join(&carol, &room).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn forget_removes_room_from_leave_section() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "bob joins");
    // Cannot forget while joined.
    let result = server
        .post(&room_path(&room, "/forget"), &bob.token, json!({}))
        .await;
    assert_eq!(result.0, 400, "{}", result.1);

    let since = next_batch(&server.sync(&bob, "timeout=0").await);
    ok(&leave(&server, &bob, &room).await, "leave");
    let include_leave = json!({ "room": { "include_leave": true } });
    let sync = sync_with(&server, &bob, &include_leave, None, "").await;
    assert!(
        sync["rooms"]["leave"].get(&room).is_some(),
        "left room in include_leave initial sync: {sync}"
    );

    ok(
        &server
            .post(&room_path(&room, "/forget"), &bob.token, json!({}))
            .await,
        "forget",
    );
    let sync = sync_with(&server, &bob, &include_leave, None, "").await;
    assert!(
        sync["rooms"]["leave"].get(&room).is_none(),
        "forgotten room must not be in leave: {sync}"
    );
    let sync = sync_with(&server, &bob, &include_leave, Some(&since), "").await;
    assert!(
        sync["rooms"]["leave"].get(&room).is_none(),
        "forgotten room must not be in incremental leave: {sync}"
    );
    // Rejoining un-forgets.
    ok(&server.join(&bob, &room).await, "rejoin");
    ok(&leave(&server, &bob, &room).await, "leave again");
    let sync = sync_with(&server, &bob, &include_leave, None, "").await;
    assert!(
        sync["rooms"]["leave"].get(&room).is_some(),
        "left again after rejoin: {sync}"
    );
}

#[tokio::test]
async fn knock_then_invite_in() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "room_version": "10", "name": "Knock knock", "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] }),
        )
        .await;
    // Knocking is not joining.
    assert_error(&server.join(&bob, &room).await, 403, "M_FORBIDDEN");
    let alice_since = next_batch(&server.sync(&alice, "timeout=0").await);

    let (status, body) = server
        .post(
            &format!("{V3}/knock/{}", enc(&room)),
            &bob.token,
            json!({ "reason": "please" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());

    let sync = server.sync(&bob, "timeout=0").await;
    let knock_state = arr(&sync["rooms"]["knock"][&room]["knock_state"]["events"]);
    let member = find(&knock_state, "m.room.member", &bob.user_id)
        .unwrap_or_else(|| panic!("knock member missing: {sync}"));
    assert_eq!(member["content"]["membership"], "knock");
    assert_eq!(
        find(&knock_state, "m.room.join_rules", "").map(|e| e["content"]["join_rule"].clone()),
        Some(json!("knock"))
    );
    assert_eq!(
        find(&knock_state, "m.room.name", "").map(|e| e["content"]["name"].clone()),
        Some(json!("Knock knock"))
    );
    assert!(sync["rooms"]["join"].get(&room).is_none());

    // The admin sees the knock.
    let sync = sync_with(
        &server,
        &alice,
        &serde_json::Value::Null,
        Some(&alice_since),
        "",
    )
    .await;
    let events = section_timeline(&sync, "join", &room);
    let knock = find(&events, "m.room.member", &bob.user_id)
        .unwrap_or_else(|| panic!("alice sees knock: {sync}"));
    assert_eq!(knock["content"]["membership"], "knock");
    assert_eq!(knock["content"]["reason"], "please");

    let bob_since = next_batch(&server.sync(&bob, "timeout=0").await);
    ok(
        &server.invite(&alice, &room, &bob.user_id).await,
        "invite knocker",
    );
    let sync = sync_with(
        &server,
        &bob,
        &serde_json::Value::Null,
        Some(&bob_since),
        "",
    )
    .await;
    assert!(sync["rooms"]["invite"].get(&room).is_some(), "{sync}");
    ok(&server.join(&bob, &room).await, "join after invite");
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await["membership"],
        "join"
    );
}

#[tokio::test]
async fn knock_refused_where_not_allowed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let invite_only = server
        .create_room(
            &alice,
            json!({ "room_version": "10", "preset": "private_chat" }),
        )
        .await;
    assert_error(
        &server
            .post(
                &format!("{V3}/knock/{}", enc(&invite_only)),
                &bob.token,
                json!({}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    // Room version 6 has no knocking.
    let v6 = server.create_room(&alice, json!({ "room_version": "6", "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] })).await;
    assert_error(
        &server
            .post(&format!("{V3}/knock/{}", enc(&v6)), &bob.token, json!({}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    // Members cannot knock.
    let knock_room = server.create_room(&alice, json!({ "room_version": "10", "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] })).await;
    assert_error(
        &server
            .post(
                &format!("{V3}/knock/{}", enc(&knock_room)),
                &alice.token,
                json!({}),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn knocker_can_withdraw_and_admin_can_deny() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({ "room_version": "11", "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] })).await;
    ok(
        &server
            .post(&format!("{V3}/knock/{}", enc(&room)), &bob.token, json!({}))
            .await,
        "knock",
    );
    ok(&leave(&server, &bob, &room).await, "withdraw knock");
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await["membership"],
        "leave"
    );
    ok(
        &server
            .post(&format!("{V3}/knock/{}", enc(&room)), &bob.token, json!({}))
            .await,
        "knock again",
    );
    ok(
        &kick(&server, &alice, &room, &bob.user_id, Some("no")).await,
        "deny knock",
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await["membership"],
        "leave"
    );
    let sync = server.sync(&bob, "timeout=0").await;
    assert!(sync["rooms"]["knock"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn restricted_join_via_space_membership() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let space = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }),
        )
        .await;
    ok(&server.join(&bob, &space).await, "bob joins space");
    for version in ["8", "10", "12"] {
        let room = server
            .create_room(
                &alice,
                json!({
                    "room_version": version,
                    "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }],
                }),
            )
            .await;
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.join_rules", "").await["join_rule"],
            "restricted"
        );
        let (status, body) = server.join(&bob, &room).await;
        assert_eq!(status, 200, "v{version}: space member joins: {body}");
        let member = state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await;
        assert_eq!(member["membership"], "join");
        assert_eq!(
            member["join_authorised_via_users_server"],
            alice.user_id.as_str(),
            "v{version}: {member}"
        );
        assert_error(&server.join(&carol, &room).await, 403, "M_FORBIDDEN");
        // Leaving the space ends the right to join (after leaving the room).
        ok(&leave(&server, &bob, &room).await, "bob leaves room");
        // An invite still works for a non-member of the space.
        ok(
            &server.invite(&alice, &room, &carol.user_id).await,
            "invite carol",
        );
        ok(&server.join(&carol, &room).await, "invited carol joins");
        ok(&leave(&server, &carol, &room).await, "carol leaves");
    }
    ok(&leave(&server, &bob, &space).await, "bob leaves space");
    let room = server
        .create_room(
            &alice,
            json!({
                "room_version": "10",
                "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }],
            }),
        )
        .await;
    assert_error(&server.join(&bob, &room).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn membership_changes_show_in_sync_sections() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "bob joins");
    let since = next_batch(&server.sync(&bob, "timeout=0").await);
    server.send_text(&alice, &room, "before kick").await;
    ok(
        &kick(&server, &alice, &room, &bob.user_id, Some("out")).await,
        "kick",
    );
    server.send_text(&alice, &room, "after kick").await;
    let sync = sync_with(&server, &bob, &serde_json::Value::Null, Some(&since), "").await;
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    let events = section_timeline(&sync, "leave", &room);
    let kick_event = find(&events, "m.room.member", &bob.user_id)
        .unwrap_or_else(|| panic!("kick in leave timeline: {sync}"));
    assert_eq!(kick_event["content"]["membership"], "leave");
    assert_eq!(kick_event["sender"], alice.user_id.as_str());
    assert_eq!(
        bodies(&events),
        vec!["before kick"],
        "events after the kick are not for bob: {sync}"
    );
    // The kick is the last event of the leave timeline.
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some(json!("m.room.member"))
    );
}

#[tokio::test]
async fn knock_restricted_lets_space_members_join_and_others_knock() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let space = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }),
        )
        .await;
    ok(&server.join(&bob, &space).await, "bob joins space");
    let room = server
        .create_room(
            &alice,
            json!({
                "room_version": "10",
                "room_alias_name": "kr",
                "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock_restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }],
            }),
        )
        .await;
    ok(&server.join(&bob, &room).await, "space member joins");
    assert_error(&server.join(&carol, &room).await, 403, "M_FORBIDDEN");
    let (status, body) = server
        .post(
            &format!("{V3}/knock/{}", enc("#kr:localhost")),
            &carol.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "knock by alias: {body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.member", &carol.user_id).await["membership"],
        "knock"
    );
}

#[tokio::test]
async fn own_leave_is_visible_to_the_leaver() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let since = next_batch(&server.sync(&bob, "timeout=0").await);
    let (_, body) = kick(&server, &alice, &room, &bob.user_id, Some("bye")).await;
    assert!(body.is_object());
    let kick_event = state_event(&server, &alice, &room, "m.room.member", &bob.user_id).await;
    let kick_id = kick_event["event_id"].as_str().expect("id").to_owned();
    let (status, event) = get_event(&server, &bob, &room, &kick_id).await;
    assert_eq!(status, 200, "bob can fetch his own kick: {event}");
    assert_eq!(event["content"]["reason"], "bye");
    let chunk = arr(&messages_ok(&server, &bob, &room, "dir=b&limit=5").await["chunk"]);
    assert_eq!(
        chunk.first().map(|e| e["event_id"].clone()),
        Some(json!(kick_id)),
        "newest event bob may see is his kick: {chunk:?}"
    );
    let sync = sync_with(&server, &bob, &serde_json::Value::Null, Some(&since), "").await;
    assert_eq!(
        ids(&section_timeline(&sync, "leave", &room)),
        vec![kick_id],
        "{sync}"
    );
}
