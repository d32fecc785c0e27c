//! Receipts (`m.read`, `m.read.private`, threaded), read markers (`m.fully_read`) and the unread
//! notification counts in `/sync` that the default push rules and receipts produce.

mod common;
#[path = "notify_helpers/mod.rs"]
mod nh;

use common::{TestServer, User, assert_error};
use nh::*;
use serde_json::{Value, json};

/// The `m.receipt` ephemeral event of a room in a sync response, if any.
fn receipt_content(sync: &Value, room: &str) -> Option<Value> {
    content_of(&ephemeral_of(sync, room), "m.receipt").cloned()
}

async fn two_users() -> (TestServer, User, User, String) {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = public_room(&s, &alice, &[&bob]).await;
    (s, alice, bob, room)
}

#[tokio::test]
async fn read_receipt_reaches_other_member_in_sync() {
    let (s, alice, bob, room) = two_users().await;
    let m1 = s.send_text(&bob, &room, "one").await;
    let since = next_batch(&sync(&s, &bob, &Value::Null, None).await);

    let result = receipt(&s, &alice, &room, "m.read", &m1, json!({})).await;
    ok(&result, "receipt");
    assert_eq!(result.1, json!({}), "empty object response");

    let sync = sync(&s, &bob, &Value::Null, Some(&since)).await;
    let content = receipt_content(&sync, &room)
        .unwrap_or_else(|| panic!("m.receipt missing from bob's ephemeral events: {sync}"));
    let entry = &content[&m1]["m.read"][&alice.user_id];
    assert!(entry["ts"].is_u64(), "ts set by the server: {content}");
    assert!(
        entry.get("thread_id").is_none(),
        "unthreaded receipt has no thread_id: {content}"
    );
    assert_eq!(
        content.as_object().map(|o| o.len()),
        Some(1),
        "only the new receipt: {content}"
    );

    // An initial sync also shows the receipt.
    let initial = nh::sync(&s, &bob, &Value::Null, None).await;
    let content = receipt_content(&initial, &room).expect("receipt in initial sync");
    assert!(
        content[&m1]["m.read"][&alice.user_id]["ts"].is_u64(),
        "{content}"
    );
}

#[tokio::test]
async fn private_receipt_is_only_visible_to_its_sender() {
    let (s, alice, bob, room) = two_users().await;
    let m1 = s.send_text(&bob, &room, "one").await;
    let bob_since = next_batch(&sync(&s, &bob, &Value::Null, None).await);
    let alice_since = next_batch(&sync(&s, &alice, &Value::Null, None).await);

    ok(
        &receipt(&s, &alice, &room, "m.read.private", &m1, json!({})).await,
        "private receipt",
    );

    let bobs = sync(&s, &bob, &Value::Null, Some(&bob_since)).await;
    if let Some(content) = receipt_content(&bobs, &room) {
        assert!(
            !content.to_string().contains("m.read.private"),
            "bob must not see alice's private receipt: {content}"
        );
        assert!(
            !content.to_string().contains(alice.user_id.as_str()),
            "{content}"
        );
    }
    let initial = nh::sync(&s, &bob, &Value::Null, None).await;
    assert!(
        !initial.to_string().contains("m.read.private"),
        "not even in an initial sync: {initial}"
    );

    let alices = sync(&s, &alice, &Value::Null, Some(&alice_since)).await;
    let content = receipt_content(&alices, &room)
        .unwrap_or_else(|| panic!("alice sees her own private receipt: {alices}"));
    assert!(
        content[&m1]["m.read.private"][&alice.user_id]["ts"].is_u64(),
        "{content}"
    );
}

#[tokio::test]
async fn threaded_receipts_carry_thread_id() {
    let (s, alice, bob, room) = two_users().await;
    let root = s.send_text(&bob, &room, "root").await;
    let reply = send_msg(&s, &bob, &room, thread_reply(&root, "in thread")).await;
    let main = s.send_text(&bob, &room, "main timeline").await;
    let since = next_batch(&sync(&s, &bob, &Value::Null, None).await);

    ok(
        &receipt(
            &s,
            &alice,
            &room,
            "m.read",
            &reply,
            json!({ "thread_id": root }),
        )
        .await,
        "threaded receipt",
    );
    ok(
        &receipt(
            &s,
            &alice,
            &room,
            "m.read",
            &main,
            json!({ "thread_id": "main" }),
        )
        .await,
        "main receipt",
    );
    let sync = sync(&s, &bob, &Value::Null, Some(&since)).await;
    let content = receipt_content(&sync, &room).unwrap_or_else(|| panic!("{sync}"));
    assert_eq!(
        content[&reply]["m.read"][&alice.user_id]["thread_id"],
        root.as_str(),
        "{content}"
    );
    assert_eq!(
        content[&main]["m.read"][&alice.user_id]["thread_id"], "main",
        "{content}"
    );
}

#[tokio::test]
async fn receipt_errors() {
    let (s, alice, bob, room) = two_users().await;
    let main = s.send_text(&bob, &room, "main").await;

    // Unknown event: the spec lists no error for this; 404 M_NOT_FOUND is the standard one.
    let unknown = receipt(&s, &alice, &room, "m.read", "$unknown", json!({})).await;
    assert_error(&unknown, 404, "M_NOT_FOUND");

    // Spec 400 M_INVALID_PARAM cases for thread_id.
    let empty = receipt(
        &s,
        &alice,
        &room,
        "m.read",
        &main,
        json!({ "thread_id": "" }),
    )
    .await;
    assert_error(&empty, 400, "M_INVALID_PARAM");
    let fully_read = receipt(
        &s,
        &alice,
        &room,
        "m.fully_read",
        &main,
        json!({ "thread_id": "main" }),
    )
    .await;
    assert_error(&fully_read, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn receipt_thread_id_must_match_the_event() {
    let (s, alice, bob, room) = two_users().await;
    let root = s.send_text(&bob, &room, "root").await;
    send_msg(&s, &bob, &room, thread_reply(&root, "in thread")).await;
    let main = s.send_text(&bob, &room, "main").await;
    // Spec 400: "The event_id is not related to the thread_id".
    let unrelated = receipt(
        &s,
        &alice,
        &room,
        "m.read",
        &main,
        json!({ "thread_id": root }),
    )
    .await;
    assert_error(&unrelated, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn read_markers_set_fully_read_and_receipts() {
    let (s, alice, bob, room) = two_users().await;
    let m1 = s.send_text(&bob, &room, "one").await;
    let m2 = s.send_text(&bob, &room, "two").await;
    let bob_since = next_batch(&sync(&s, &bob, &Value::Null, None).await);
    let alice_since = next_batch(&sync(&s, &alice, &Value::Null, None).await);

    let result = s
        .post(
            &room_path(&room, "/read_markers"),
            &alice.token,
            json!({ "m.fully_read": m1, "m.read": m2 }),
        )
        .await;
    ok(&result, "read_markers");

    let (status, marker) = room_account_data(&s, &alice, &room, "m.fully_read").await;
    assert_eq!(status, 200, "{marker}");
    assert_eq!(marker, json!({ "event_id": m1 }));

    let alices = sync(&s, &alice, &Value::Null, Some(&alice_since)).await;
    let data = room_account_data_of(&alices, &room);
    assert_eq!(
        content_of(&data, "m.fully_read"),
        Some(&json!({ "event_id": m1 })),
        "m.fully_read room account data in sync: {alices}"
    );
    let bobs = sync(&s, &bob, &Value::Null, Some(&bob_since)).await;
    let content = receipt_content(&bobs, &room).unwrap_or_else(|| panic!("{bobs}"));
    assert!(
        content[&m2]["m.read"][&alice.user_id]["ts"].is_u64(),
        "{content}"
    );
    assert!(
        !bobs.to_string().contains("m.fully_read"),
        "the read marker is private to alice: {bobs}"
    );

    // The receipt endpoint accepts m.fully_read too, without producing an m.receipt.
    let bob_since = next_batch(&bobs);
    ok(
        &receipt(&s, &alice, &room, "m.fully_read", &m2, json!({})).await,
        "fully_read via /receipt",
    );
    let (_, marker) = room_account_data(&s, &alice, &room, "m.fully_read").await;
    assert_eq!(marker, json!({ "event_id": m2 }));
    let bobs = sync(&s, &bob, &Value::Null, Some(&bob_since)).await;
    assert!(
        receipt_content(&bobs, &room).is_none(),
        "m.fully_read does not appear under m.receipt: {bobs}"
    );

    // A private receipt through /read_markers.
    let m3 = s.send_text(&bob, &room, "three").await;
    ok(
        &s.post(
            &room_path(&room, "/read_markers"),
            &alice.token,
            json!({ "m.read.private": m3 }),
        )
        .await,
        "read_markers private",
    );
    let alices = nh::sync(&s, &alice, &Value::Null, None).await;
    let content = receipt_content(&alices, &room).unwrap_or_else(|| panic!("{alices}"));
    assert!(
        content[&m3]["m.read.private"][&alice.user_id]["ts"].is_u64(),
        "{content}"
    );
}

// ---------------------------------------------------------------------------------------------
// Unread counts

fn mention(user: &User, body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body, "m.mentions": { "user_ids": [user.user_id] } })
}

#[tokio::test]
async fn mention_notifies_and_highlights() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    set_displayname(&s, &bob, "Bobby Tables").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    assert_eq!(counts(&s, &bob, &room).await, (0, 0));

    send_msg(&s, &alice, &room, mention(&bob, "hey Bobby Tables, look")).await;
    assert_eq!(
        counts(&s, &bob, &room).await,
        (1, 1),
        "mention: notify + highlight"
    );
    // Carol is not mentioned: .m.rule.message notifies without highlight.
    assert_eq!(counts(&s, &carol, &room).await, (1, 0));
    // The sender is never notified about their own event.
    assert_eq!(counts(&s, &alice, &room).await, (0, 0));
}

#[tokio::test]
async fn plain_message_in_one_to_one_room_notifies_without_highlight() {
    let (s, alice, bob, room) = two_users().await;
    s.send_text(&alice, &room, "hello").await;
    assert_eq!(counts(&s, &bob, &room).await, (1, 0));
    s.send_text(&alice, &room, "again").await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 0));
}

#[tokio::test]
async fn plain_message_in_group_room_notifies_per_message_rule() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    s.send_text(&alice, &room, "hi all").await;
    // .m.rule.message: actions ["notify"].
    assert_eq!(counts(&s, &bob, &room).await, (1, 0));
    assert_eq!(counts(&s, &carol, &room).await, (1, 0));
    // Suppressed by default rules: notices, reactions, edits.
    let target = s.send_text(&alice, &room, "second").await;
    send_msg(
        &s,
        &alice,
        &room,
        json!({ "msgtype": "m.notice", "body": "bot says" }),
    )
    .await;
    send(&s, &carol, &room, "m.reaction", reaction(&target, "👍")).await;
    send_msg(&s, &alice, &room, edit(&target, "second, edited")).await;
    assert_eq!(
        counts(&s, &bob, &room).await,
        (2, 0),
        "notice, reaction and edit do not notify"
    );
}

#[tokio::test]
async fn read_receipt_clears_counts() {
    let (s, alice, bob, room) = two_users().await;
    let m1 = s.send_text(&alice, &room, "one").await;
    s.send_text(&alice, &room, "two").await;
    let m3 = send_msg(&s, &alice, &room, mention(&bob, "three, bob")).await;
    assert_eq!(counts(&s, &bob, &room).await, (3, 1));
    read(&s, &bob, &room, &m1).await;
    assert_eq!(
        counts(&s, &bob, &room).await,
        (2, 1),
        "up to and including m1 read"
    );
    read(&s, &bob, &room, &m3).await;
    assert_eq!(counts(&s, &bob, &room).await, (0, 0));

    // The counts change in an incremental sync too.
    let since = next_batch(&sync(&s, &bob, &Value::Null, None).await);
    let m4 = s.send_text(&alice, &room, "four").await;
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    assert_eq!(
        counts_in(&inc, &room),
        (1, 0),
        "same response as the event: {inc}"
    );
    let since = next_batch(&inc);
    read(&s, &bob, &room, &m4).await;
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    assert_eq!(counts_in(&inc, &room), (0, 0), "{inc}");
}

#[tokio::test]
async fn private_receipt_clears_counts() {
    let (s, alice, bob, room) = two_users().await;
    s.send_text(&alice, &room, "one").await;
    let m2 = s.send_text(&alice, &room, "two").await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 0));
    ok(
        &receipt(&s, &bob, &room, "m.read.private", &m2, json!({})).await,
        "private receipt",
    );
    assert_eq!(counts(&s, &bob, &room).await, (0, 0));
}

#[tokio::test]
async fn sending_a_message_marks_earlier_notifications_read() {
    let (s, alice, bob, room) = two_users().await;
    s.send_text(&alice, &room, "one").await;
    s.send_text(&alice, &room, "two").await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 0));
    // Spec (Receiving notifications): updating the read receipt "either by using the API or by
    // sending an event" marks notifications up to that event as read.
    s.send_text(&bob, &room, "my reply").await;
    assert_eq!(
        counts(&s, &bob, &room).await,
        (0, 0),
        "bob's own message implies he read the room"
    );
}

#[tokio::test]
async fn thread_notifications_are_counted_per_thread() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let root = s.send_text(&alice, &room, "root").await;
    let t1 = send_msg(&s, &alice, &room, thread_reply(&root, "t1")).await;
    let t2 = send_msg(&s, &carol, &room, thread_reply(&root, "t2")).await;
    let main = s.send_text(&alice, &room, "main").await;

    // Without the filter flag, everything counts in the room's totals.
    assert_eq!(counts(&s, &bob, &room).await, (4, 0));

    let (main_counts, threads) = thread_counts(&s, &bob, &room).await;
    assert_eq!(main_counts, (2, 0), "main timeline: root + main: {threads}");
    assert_eq!(thread_entry(&threads, &root), (2, 0), "{threads}");

    // A threaded receipt clears only that thread (up to the event).
    ok(
        &receipt(&s, &bob, &room, "m.read", &t1, json!({ "thread_id": root })).await,
        "threaded receipt",
    );
    let (main_counts, threads) = thread_counts(&s, &bob, &room).await;
    assert_eq!(main_counts, (2, 0), "main untouched: {threads}");
    assert_eq!(thread_entry(&threads, &root), (1, 0), "{threads}");
    ok(
        &receipt(&s, &bob, &room, "m.read", &t2, json!({ "thread_id": root })).await,
        "threaded receipt 2",
    );
    let (main_counts, threads) = thread_counts(&s, &bob, &room).await;
    assert_eq!(main_counts, (2, 0));
    assert_eq!(thread_entry(&threads, &root), (0, 0), "{threads}");

    // A "main" receipt clears the main timeline only.
    ok(
        &receipt(
            &s,
            &bob,
            &room,
            "m.read",
            &main,
            json!({ "thread_id": "main" }),
        )
        .await,
        "main receipt",
    );
    let (main_counts, _) = thread_counts(&s, &bob, &room).await;
    assert_eq!(main_counts, (0, 0));

    // Carol: her own reply t2 is not counted, and sending it marked the thread read up to
    // it (an implicit threaded receipt), so alice's earlier t1 is read too.
    let (main_counts, threads) = thread_counts(&s, &carol, &room).await;
    assert_eq!(main_counts, (2, 0));
    assert_eq!(
        thread_entry(&threads, &root),
        (0, 0),
        "carol's reply reads the thread up to it: {threads}"
    );
    read(&s, &carol, &room, &main).await;
    let (main_counts, threads) = thread_counts(&s, &carol, &room).await;
    assert_eq!(main_counts, (0, 0));
    assert_eq!(thread_entry(&threads, &root), (0, 0), "{threads}");
}

#[tokio::test]
async fn events_related_to_thread_replies_count_in_the_thread() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let root = s.send_text(&alice, &room, "root").await;
    let reply = send_msg(&s, &alice, &room, thread_reply(&root, "reply")).await;
    read(&s, &bob, &room, &root).await;
    // A message referencing a thread reply belongs to that thread (spec: follow relations
    // up to 3 hops to find the thread).
    send_msg(&s, &carol, &room, reference(&reply, "about that reply")).await;
    let (main_counts, threads) = thread_counts(&s, &bob, &room).await;
    assert_eq!(
        thread_entry(&threads, &root),
        (2, 0),
        "reply + referencing message: {threads}"
    );
    assert_eq!(main_counts, (0, 0), "nothing new in main: {threads}");
}

#[tokio::test]
async fn room_mention_highlights_only_with_enough_power() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let at_room =
        |body: &str| json!({ "msgtype": "m.text", "body": body, "m.mentions": { "room": true } });

    // Alice created the room: enough power for `notifications.room` (default 50).
    send_msg(&s, &alice, &room, at_room("@room meeting now")).await;
    assert_eq!(
        counts(&s, &bob, &room).await,
        (1, 1),
        ".m.rule.is_room_mention"
    );
    assert_eq!(counts(&s, &carol, &room).await, (1, 1));

    // Carol has power 0: no highlight, a plain notification from .m.rule.message.
    send_msg(&s, &carol, &room, at_room("@room me too")).await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 1));
}
