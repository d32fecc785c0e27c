//! Presence, room tags, ignored users and content reports.

mod common;
#[path = "notify_helpers/mod.rs"]
mod nh;

use common::{TestServer, User, assert_error, enc};
use nh::*;
use serde_json::{Value, json};

fn presence_path(user: &User) -> String {
    format!("{V3}/presence/{}/status", enc(&user.user_id))
}

/// The `m.presence` event for `user` in a sync response's `presence.events`, if any.
fn presence_of<'a>(sync: &'a Value, user: &User) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.presence" && e["sender"] == user.user_id.as_str())
}

#[tokio::test]
async fn presence_reaches_room_mates_in_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let stranger = s.register("stranger").await;
    public_room(&s, &alice, &[&bob]).await;
    let bob_since = next_batch(&sync(&s, &bob, &Value::Null, None).await);
    let stranger_since = next_batch(&sync(&s, &stranger, &Value::Null, None).await);

    ok(
        &s.put(
            &presence_path(&alice),
            &alice.token,
            json!({ "presence": "online", "status_msg": "working" }),
        )
        .await,
        "set online",
    );
    let inc = sync(&s, &bob, &Value::Null, Some(&bob_since)).await;
    let event = presence_of(&inc, &alice).unwrap_or_else(|| panic!("alice's presence: {inc}"));
    assert_eq!(event["content"]["presence"], "online", "{event}");
    assert_eq!(event["content"]["status_msg"], "working", "{event}");
    assert!(event["content"]["last_active_ago"].is_u64(), "{event}");
    let bob_since = next_batch(&inc);

    ok(
        &s.put(
            &presence_path(&alice),
            &alice.token,
            json!({ "presence": "unavailable", "status_msg": "away" }),
        )
        .await,
        "set unavailable",
    );
    let inc = sync(&s, &bob, &Value::Null, Some(&bob_since)).await;
    let event = presence_of(&inc, &alice).unwrap_or_else(|| panic!("alice's update: {inc}"));
    assert_eq!(event["content"]["presence"], "unavailable", "{event}");
    assert_eq!(event["content"]["status_msg"], "away", "{event}");

    // A user sharing no room with alice hears nothing.
    let other = sync(&s, &stranger, &Value::Null, Some(&stranger_since)).await;
    assert!(
        presence_of(&other, &alice).is_none(),
        "no presence for strangers: {other}"
    );
    let initial = sync(&s, &stranger, &Value::Null, None).await;
    assert!(presence_of(&initial, &alice).is_none(), "{initial}");
}

#[tokio::test]
async fn get_presence_for_room_mates_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let stranger = s.register("stranger").await;
    public_room(&s, &alice, &[&bob]).await;
    ok(
        &s.put(
            &presence_path(&alice),
            &alice.token,
            json!({ "presence": "unavailable", "status_msg": "lunch" }),
        )
        .await,
        "set",
    );
    for viewer in [&alice, &bob] {
        let (status, body) = s.get(&presence_path(&alice), &viewer.token).await;
        assert_eq!(status, 200, "{}: {body}", viewer.user_id);
        assert_eq!(body["presence"], "unavailable", "{body}");
        assert_eq!(body["status_msg"], "lunch", "{body}");
        assert!(body["last_active_ago"].is_u64(), "{body}");
    }
    let result = s.get(&presence_path(&alice), &stranger.token).await;
    assert_error(&result, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn invalid_presence_requests_are_rejected() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    ok(
        &s.put(
            &presence_path(&alice),
            &alice.token,
            json!({ "presence": "online" }),
        )
        .await,
        "set online",
    );
    let bad = s
        .put(
            &presence_path(&alice),
            &alice.token,
            json!({ "presence": "busy" }),
        )
        .await;
    assert_eq!(bad.0, 400, "unknown presence state: {}", bad.1);
    let missing = s
        .put(
            &presence_path(&alice),
            &alice.token,
            json!({ "status_msg": "no state" }),
        )
        .await;
    assert_eq!(missing.0, 400, "presence is required: {}", missing.1);
    // "You cannot set the presence state of another user."
    let other = s
        .put(
            &presence_path(&alice),
            &bob.token,
            json!({ "presence": "offline" }),
        )
        .await;
    assert_error(&other, 403, "M_FORBIDDEN");
    let (_, body) = s.get(&presence_path(&alice), &alice.token).await;
    assert_eq!(
        body["presence"], "online",
        "unchanged by the refused request: {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tags

fn tag_path(user: &User, room: &str, tag: &str) -> String {
    format!(
        "{V3}/user/{}/rooms/{}/tags/{}",
        enc(&user.user_id),
        enc(room),
        enc(tag)
    )
}

#[tokio::test]
async fn tags_are_room_account_data() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = public_room(&s, &alice, &[&bob]).await;
    let since = next_batch(&sync(&s, &bob, &Value::Null, None).await);

    ok(
        &s.put(
            &tag_path(&bob, &room, "u.work"),
            &bob.token,
            json!({ "order": 0.25 }),
        )
        .await,
        "tag u.work",
    );
    ok(
        &s.put(&tag_path(&bob, &room, "m.favourite"), &bob.token, json!({}))
            .await,
        "tag m.favourite",
    );
    let tags_url = format!("{V3}/user/{}/rooms/{}/tags", enc(&bob.user_id), enc(&room));
    let (status, tags) = s.get(&tags_url, &bob.token).await;
    assert_eq!(status, 200, "{tags}");
    assert_eq!(
        tags,
        json!({ "tags": { "u.work": { "order": 0.25 }, "m.favourite": {} } })
    );

    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    let data = room_account_data_of(&inc, &room);
    let tag = content_of(&data, "m.tag").unwrap_or_else(|| panic!("m.tag in sync: {inc}"));
    assert_eq!(tag["tags"]["u.work"]["order"], 0.25, "{tag}");
    assert!(tag["tags"]["m.favourite"].is_object(), "{tag}");
    let since = next_batch(&inc);

    let deleted = s
        .request(
            reqwest::Method::DELETE,
            &tag_path(&bob, &room, "u.work"),
            Some(&bob.token),
            None,
        )
        .await;
    ok(&deleted, "delete tag");
    let (_, tags) = s.get(&tags_url, &bob.token).await;
    assert_eq!(tags, json!({ "tags": { "m.favourite": {} } }));
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    let data = room_account_data_of(&inc, &room);
    let tag = content_of(&data, "m.tag").unwrap_or_else(|| panic!("updated m.tag: {inc}"));
    assert_eq!(tag["tags"], json!({ "m.favourite": {} }), "{tag}");

    // Tags are private: alice's sync does not show them; bob cannot tag for alice.
    let alices = sync(&s, &alice, &Value::Null, None).await;
    assert!(
        content_of(&room_account_data_of(&alices, &room), "m.tag").is_none(),
        "{alices}"
    );
    let forbidden = s
        .put(&tag_path(&alice, &room, "u.x"), &bob.token, json!({}))
        .await;
    assert_eq!(forbidden.0, 403, "{}", forbidden.1);
}

// ---------------------------------------------------------------------------------------------
// Ignored users

#[tokio::test]
async fn ignored_users_messages_and_invites_are_hidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    // Anyone may rename the room, so carol can send a state event.
    let room = s
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "power_level_content_override": { "events": { "m.room.name": 0 } } }),
        )
        .await;
    ok(&s.join(&bob, &room).await, "bob joins");
    ok(&s.join(&carol, &room).await, "carol joins");
    let from_carol = s.send_text(&carol, &room, "spam from carol").await;
    let from_alice = s.send_text(&alice, &room, "hello from alice").await;
    let before = sync(&s, &bob, &Value::Null, None).await;
    assert!(
        ids(&timeline_of(&before, &room)).contains(&from_carol),
        "precondition: {before}"
    );
    let since = next_batch(&before);

    put_account_data(
        &s,
        &bob,
        "m.ignored_user_list",
        json!({ "ignored_users": { carol.user_id.clone(): {} } }),
    )
    .await;
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    let events = arr(&inc["account_data"]["events"]);
    assert_eq!(
        content_of(&events, "m.ignored_user_list"),
        Some(&json!({ "ignored_users": { carol.user_id.clone(): {} } })),
        "{inc}"
    );
    let since = next_batch(&inc);

    // New messages from carol do not reach bob; her state events still do.
    let spam = s.send_text(&carol, &room, "more spam").await;
    let (status, topic) = s
        .put(
            &room_path(&room, "/state/m.room.topic/"),
            &alice.token,
            json!({ "topic": "topic by alice" }),
        )
        .await;
    assert_eq!(status, 200, "{topic}");
    ok(
        &s.put(
            &room_path(&room, "/state/m.room.name/"),
            &carol.token,
            json!({ "name": "renamed by carol" }),
        )
        .await,
        "carol renames the room",
    );
    let hello = s.send_text(&alice, &room, "still here").await;
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    let got = ids(&timeline_of(&inc, &room));
    assert!(got.contains(&hello), "{inc}");
    assert!(!got.contains(&spam), "carol's message hidden: {inc}");
    let state_and_timeline = inc.to_string();
    assert!(
        state_and_timeline.contains("renamed by carol"),
        "state events from ignored users are still sent: {inc}"
    );

    // A fresh sync and /messages hide carol's messages too.
    let initial = sync(
        &s,
        &bob,
        &json!({ "room": { "timeline": { "limit": 50 } } }),
        None,
    )
    .await;
    let got = ids(&timeline_of(&initial, &room));
    assert!(got.contains(&from_alice), "{initial}");
    assert!(
        !got.contains(&from_carol) && !got.contains(&spam),
        "{initial}"
    );
    let page = messages_ok(&s, &bob, &room, "dir=b&limit=50").await;
    let got = chunk_ids(&page);
    assert!(got.contains(&from_alice), "{page}");
    assert!(
        !got.contains(&from_carol) && !got.contains(&spam),
        "/messages hides ignored users' messages: {page}"
    );
    // Alice still sees everything.
    let page = messages_ok(&s, &alice, &room, "dir=b&limit=50").await;
    assert!(chunk_ids(&page).contains(&spam), "{page}");

    // Invites from carol are not shown to bob.
    let since = next_batch(&inc);
    let carols_room = s.create_room(&carol, json!({ "name": "carol's" })).await;
    ok(
        &s.invite(&carol, &carols_room, &bob.user_id).await,
        "invite",
    );
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    assert!(
        inc["rooms"]["invite"].get(&carols_room).is_none(),
        "invite from an ignored user hidden: {inc}"
    );
    let initial = sync(&s, &bob, &Value::Null, None).await;
    assert!(
        initial["rooms"]["invite"].get(&carols_room).is_none(),
        "{initial}"
    );
    // An invite from alice is shown.
    let alices_room = s.create_room(&alice, json!({})).await;
    ok(
        &s.invite(&alice, &alices_room, &bob.user_id).await,
        "invite",
    );
    let initial = sync(&s, &bob, &Value::Null, None).await;
    assert!(
        initial["rooms"]["invite"].get(&alices_room).is_some(),
        "{initial}"
    );

    // Un-ignoring: new messages from carol arrive again.
    put_account_data(
        &s,
        &bob,
        "m.ignored_user_list",
        json!({ "ignored_users": {} }),
    )
    .await;
    let since = next_batch(&sync(&s, &bob, &Value::Null, None).await);
    let back = s.send_text(&carol, &room, "carol is back").await;
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    assert!(ids(&timeline_of(&inc, &room)).contains(&back), "{inc}");
}

// ---------------------------------------------------------------------------------------------
// Reports

#[tokio::test]
async fn reporting_events_and_rooms() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = public_room(&s, &alice, &[&bob]).await;
    let event = s.send_text(&alice, &room, "offensive").await;

    let result = s
        .post(
            &room_path(&room, &format!("/report/{}", enc(&event))),
            &bob.token,
            json!({ "reason": "rude", "score": -100 }),
        )
        .await;
    ok(&result, "report event");
    assert_eq!(result.1, json!({}));
    ok(
        &s.post(
            &room_path(&room, &format!("/report/{}", enc(&event))),
            &bob.token,
            json!({}),
        )
        .await,
        "reason is optional",
    );
    let unknown = s
        .post(
            &room_path(&room, "/report/$doesnotexist"),
            &bob.token,
            json!({ "reason": "?" }),
        )
        .await;
    assert_error(&unknown, 404, "M_NOT_FOUND");

    let result = s
        .post(
            &room_path(&room, "/report"),
            &bob.token,
            json!({ "reason": "bad room" }),
        )
        .await;
    ok(&result, "report room");
    assert_eq!(result.1, json!({}));
    // The reporter need not be joined to report a room.
    let stranger = s.register("stranger").await;
    ok(
        &s.post(
            &room_path(&room, "/report"),
            &stranger.token,
            json!({ "reason": "seen in the directory" }),
        )
        .await,
        "report room without joining",
    );
    let unknown = s
        .post(
            &room_path("!nosuchroom:localhost", "/report"),
            &bob.token,
            json!({ "reason": "?" }),
        )
        .await;
    assert_error(&unknown, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn reporting_an_event_requires_being_joined() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let stranger = s.register("stranger").await;
    // World-readable: the stranger can read the event but is not joined.
    let room = s
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "initial_state": [{
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": { "history_visibility": "world_readable" },
                }],
            }),
        )
        .await;
    let event = s.send_text(&alice, &room, "readable by all").await;
    let (status, _) = get_event(&s, &stranger, &room, &event).await;
    assert_eq!(status, 200, "precondition: world-readable");
    // Spec: "The caller must be joined to the room to report it"; 404 otherwise.
    let result = s
        .post(
            &room_path(&room, &format!("/report/{}", enc(&event))),
            &stranger.token,
            json!({ "reason": "not joined" }),
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
}
