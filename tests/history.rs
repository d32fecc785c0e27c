//! History visibility on every read path: `/messages`, `/context`, `/event`, `/sync`,
//! `/timestamp_to_event`.

mod common;
#[path = "room_suite_helpers/mod.rs"]
mod helpers;

use common::{TestServer, User, assert_error, timeline};
use helpers::*;
use serde_json::{Value, json};

struct Setup {
    server: TestServer,
    alice: User,
    bob: User,
    room: String,
    before_invite: String,
    after_invite: String,
    after_join: String,
}

/// alice: "before invite" · invites bob · "after invite" · bob joins · "after join".
async fn setup(visibility: &str) -> Setup {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": visibility } }] }),
        )
        .await;
    sleep_ms(15).await;
    let before_invite = server.send_text(&alice, &room, "before invite").await;
    sleep_ms(15).await;
    ok(&server.invite(&alice, &room, &bob.user_id).await, "invite");
    sleep_ms(15).await;
    let after_invite = server.send_text(&alice, &room, "after invite").await;
    sleep_ms(15).await;
    ok(&server.join(&bob, &room).await, "join");
    sleep_ms(15).await;
    let after_join = server.send_text(&alice, &room, "after join").await;
    Setup {
        server,
        alice,
        bob,
        room,
        before_invite,
        after_invite,
        after_join,
    }
}

/// What bob sees on each path; `expected` are the visible message bodies, oldest first.
async fn check_paths(s: &Setup, expected: &[&str]) {
    let Setup {
        server, bob, room, ..
    } = s;
    let all = [
        ("before invite", &s.before_invite),
        ("after invite", &s.after_invite),
        ("after join", &s.after_join),
    ];

    // /messages backwards and forwards.
    let chunk = arr(&messages_ok(server, bob, room, "dir=b&limit=100").await["chunk"]);
    let mut seen = bodies(&chunk);
    seen.reverse();
    assert_eq!(seen, expected, "/messages dir=b");
    let chunk = arr(&messages_ok(server, bob, room, "dir=f&limit=100").await["chunk"]);
    assert_eq!(bodies(&chunk), expected, "/messages dir=f");

    // /sync (initial, large timeline).
    let sync = sync_with(
        server,
        bob,
        &json!({ "room": { "timeline": { "limit": 100 } } }),
        None,
        "",
    )
    .await;
    assert_eq!(
        bodies(timeline(&sync, room)),
        expected,
        "/sync timeline: {sync}"
    );

    for (body, id) in all {
        let visible = expected.contains(&body);
        // /event
        let (status, event) = get_event(server, bob, room, id).await;
        if visible {
            assert_eq!(status, 200, "/event {body}: {event}");
            assert_eq!(event["content"]["body"], body);
        } else {
            assert_error(&(status, event), 404, "M_NOT_FOUND");
        }
        // /context
        let (status, ctx) = context(server, bob, room, id, "limit=10").await;
        if visible {
            assert_eq!(status, 200, "/context {body}: {ctx}");
            assert_eq!(ctx["event"]["event_id"], id.as_str());
            let mut around = bodies(&arr(&ctx["events_before"]));
            around.reverse();
            around.push(body.to_owned());
            around.extend(bodies(&arr(&ctx["events_after"])));
            assert_eq!(
                around, expected,
                "/context around {body} shows only visible events: {ctx}"
            );
        } else {
            assert_error(&(status, ctx), 404, "M_NOT_FOUND");
        }
        // /timestamp_to_event: the exact timestamp finds the event only if it is visible.
        let ts = origin_ts(server, &s.alice, room, id).await;
        for dir in ["f", "b"] {
            let (status, found) = ts_to_event(server, bob, room, ts, dir).await;
            if visible {
                assert_eq!(status, 200, "ts_to_event {body} dir={dir}: {found}");
                assert_eq!(
                    found["event_id"],
                    id.as_str(),
                    "ts_to_event {body} dir={dir}"
                );
                assert_eq!(found["origin_server_ts"], ts);
            } else if status == 200 {
                assert_ne!(
                    found["event_id"],
                    id.as_str(),
                    "ts_to_event returned invisible {body} (dir={dir})"
                );
                let (event_status, _) = get_event(
                    server,
                    bob,
                    room,
                    found["event_id"].as_str().unwrap_or_default(),
                )
                .await;
                assert_eq!(
                    event_status, 200,
                    "ts_to_event {body} dir={dir} returned an event bob cannot see: {found}"
                );
            } else {
                assert_error(&(status, found), 404, "M_NOT_FOUND");
            }
        }
    }
}

#[tokio::test]
async fn joined_visibility_hides_history_before_the_join() {
    let s = setup("joined").await;
    check_paths(&s, &["after join"]).await;
    // Backwards from before the join: only the room's setup events (sent before the
    // history_visibility event, so under the default `shared`) can be found, never the messages.
    let ts = origin_ts(&s.server, &s.alice, &s.room, &s.after_invite).await;
    let (status, found) = ts_to_event(&s.server, &s.bob, &s.room, ts, "b").await;
    if status == 200 {
        let (_, event) = get_event(
            &s.server,
            &s.alice,
            &s.room,
            found["event_id"].as_str().expect("id"),
        )
        .await;
        assert_ne!(event["type"], "m.room.message", "{event}");
        assert_ne!(
            event["state_key"],
            s.bob.user_id.as_str(),
            "bob's invite is not visible under `joined`: {event}"
        );
    } else {
        assert_error(&(status, found), 404, "M_NOT_FOUND");
    }
    // Forwards from the first message: bob's own join is the first visible event.
    let ts = origin_ts(&s.server, &s.alice, &s.room, &s.before_invite).await;
    let (status, found) = ts_to_event(&s.server, &s.bob, &s.room, ts, "f").await;
    assert_eq!(status, 200, "{found}");
    let (_, event) = get_event(
        &s.server,
        &s.bob,
        &s.room,
        found["event_id"].as_str().expect("id"),
    )
    .await;
    assert_eq!(event["type"], "m.room.member", "{event}");
    assert_eq!(event["state_key"], s.bob.user_id.as_str());
    assert_eq!(event["content"]["membership"], "join");
}

#[tokio::test]
async fn shared_visibility_shows_all_history_to_members() {
    let s = setup("shared").await;
    check_paths(&s, &["before invite", "after invite", "after join"]).await;
}

#[tokio::test]
async fn invited_visibility_shows_history_from_the_invite() {
    let s = setup("invited").await;
    check_paths(&s, &["after invite", "after join"]).await;
}

#[tokio::test]
async fn world_readable_visibility_shows_everything_even_to_non_members() {
    let s = setup("world_readable").await;
    check_paths(&s, &["before invite", "after invite", "after join"]).await;
    let carol = s.server.register("carol").await;
    let chunk = arr(&messages_ok(&s.server, &carol, &s.room, "dir=b&limit=100").await["chunk"]);
    let mut seen = bodies(&chunk);
    seen.reverse();
    assert_eq!(
        seen,
        vec!["before invite", "after invite", "after join"],
        "non-member reads world_readable room"
    );
    let (status, event) = get_event(&s.server, &carol, &s.room, &s.before_invite).await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["content"]["body"], "before invite");
    let (status, ctx) = context(&s.server, &carol, &s.room, &s.after_invite, "limit=4").await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "after invite");
}

#[tokio::test]
async fn non_members_cannot_read_a_shared_room() {
    let s = setup("shared").await;
    let carol = s.server.register("carol").await;
    assert_error(
        &messages(&s.server, &carol, &s.room, "dir=b").await,
        403,
        "M_FORBIDDEN",
    );
    let (status, _) = get_event(&s.server, &carol, &s.room, &s.after_join).await;
    assert!(status == 404 || status == 403, "{status}");
    let (status, _) = context(&s.server, &carol, &s.room, &s.after_join, "").await;
    assert!(status == 404 || status == 403, "{status}");
    let (status, _) = ts_to_event(&s.server, &carol, &s.room, 0, "f").await;
    assert!(status == 404 || status == 403, "{status}");
}

async fn leave_setup(visibility: &str) -> (TestServer, User, User, String, String, String, String) {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": visibility } }] }),
        )
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let since = next_batch(&server.sync(&bob, "timeout=0").await);
    sleep_ms(15).await;
    let while_joined = server.send_text(&alice, &room, "while joined").await;
    sleep_ms(15).await;
    ok(&leave(&server, &bob, &room).await, "leave");
    sleep_ms(15).await;
    let after_leave = server.send_text(&alice, &room, "after leave").await;
    (server, alice, bob, room, since, while_joined, after_leave)
}

#[tokio::test]
async fn after_leaving_later_events_are_invisible() {
    for visibility in ["shared", "joined", "invited"] {
        let (server, alice, bob, room, since, while_joined, after_leave) =
            leave_setup(visibility).await;
        // /messages: up to the leave.
        let chunk = arr(&messages_ok(&server, &bob, &room, "dir=b&limit=100").await["chunk"]);
        assert_eq!(
            bodies(&chunk),
            vec!["while joined"],
            "{visibility}: /messages for the leaver"
        );
        assert!(chunk.iter().all(|e| e["event_id"] != after_leave.as_str()));
        // /event and /context.
        assert_error(
            &get_event(&server, &bob, &room, &after_leave).await,
            404,
            "M_NOT_FOUND",
        );
        let (status, event) = get_event(&server, &bob, &room, &while_joined).await;
        assert_eq!(status, 200, "{visibility}: {event}");
        assert_error(
            &context(&server, &bob, &room, &after_leave, "").await,
            404,
            "M_NOT_FOUND",
        );
        let (status, ctx) = context(&server, &bob, &room, &while_joined, "limit=10").await;
        assert_eq!(status, 200, "{ctx}");
        assert!(
            bodies(&arr(&ctx["events_after"])).is_empty(),
            "{visibility}: context after leave: {ctx}"
        );
        // /sync: the leave section ends at the leave.
        let sync = sync_with(&server, &bob, &Value::Null, Some(&since), "").await;
        let events = section_timeline(&sync, "leave", &room);
        assert_eq!(
            bodies(&events),
            vec!["while joined"],
            "{visibility}: {sync}"
        );
        let include_leave =
            json!({ "room": { "include_leave": true, "timeline": { "limit": 100 } } });
        let sync = sync_with(&server, &bob, &include_leave, None, "").await;
        let events = section_timeline(&sync, "leave", &room);
        assert!(
            !bodies(&events).contains(&"after leave".to_owned()),
            "{visibility}: {sync}"
        );
        // /timestamp_to_event.
        let ts = origin_ts(&server, &alice, &room, &after_leave).await;
        let (status, found) = ts_to_event(&server, &bob, &room, ts, "f").await;
        assert!(
            status == 404 || found["event_id"] != after_leave.as_str(),
            "{visibility}: ts_to_event found an event after the leave: {found}"
        );
        let (status, found) = ts_to_event(&server, &bob, &room, ts, "b").await;
        assert_eq!(status, 200, "{found}");
        assert_ne!(found["event_id"], after_leave.as_str(), "{visibility}");
    }
}

#[tokio::test]
async fn visibility_change_applies_from_the_change_on() {
    // shared → joined: events under `shared` stay visible to later joiners, events after the
    // change (but before their join) do not.
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.send_text(&alice, &room, "shared era").await;
    ok(
        &put_state(
            &server,
            &alice,
            &room,
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "joined" }),
        )
        .await,
        "to joined",
    );
    server.send_text(&alice, &room, "joined era").await;
    ok(&server.join(&bob, &room).await, "join");
    server.send_text(&alice, &room, "member era").await;
    let chunk = arr(&messages_ok(&server, &bob, &room, "dir=f&limit=100").await["chunk"]);
    assert_eq!(bodies(&chunk), vec!["shared era", "member era"]);
    // The sync timeline ends where hidden history begins (no holes, so the state at its start
    // is exact); it is `limited` and the rest is reachable through `prev_batch`.
    let sync = sync_with(
        &server,
        &bob,
        &json!({ "room": { "timeline": { "limit": 100 } } }),
        None,
        "",
    )
    .await;
    assert_eq!(bodies(timeline(&sync, &room)), vec!["member era"], "{sync}");
    assert_eq!(
        sync["rooms"]["join"][&room]["timeline"]["limited"], true,
        "{sync}"
    );
    let prev_batch = sync["rooms"]["join"][&room]["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch")
        .to_owned();
    let older = arr(&messages_ok(
        &server,
        &bob,
        &room,
        &format!("dir=b&limit=100&from={prev_batch}"),
    )
    .await["chunk"]);
    assert_eq!(bodies(&older), vec!["shared era"]);
}
