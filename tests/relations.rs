//! Event relationships (CS API "Forming relationships between events"): edits (`m.replace`),
//! reactions (`m.annotation`), references (`m.reference`), threads (`m.thread`), bundled
//! aggregations in `unsigned.m.relations`, `/relations` and `/threads`.

mod common;
#[path = "notify_helpers/mod.rs"]
mod nh;

use common::{TestServer, assert_error};
use nh::*;
use serde_json::{Value, json};

/// Alice's room with an original message and two edits (v1, v2); returns (room, original,
/// edit1, edit2).
async fn edited_message(s: &TestServer, alice: &common::User) -> (String, String, String, String) {
    let room = s.create_room(alice, json!({ "name": "edits" })).await;
    let original = send_msg(s, alice, &room, text("v0")).await;
    let edit1 = send_msg(s, alice, &room, edit(&original, "v1")).await;
    let edit2 = send_msg(s, alice, &room, edit(&original, "v2")).await;
    (room, original, edit1, edit2)
}

#[track_caller]
fn assert_replaced_by(event: &Value, edit_id: &str, new_body: &str, where_: &str) {
    let replace = &bundle(event)["m.replace"];
    assert_eq!(
        replace["event_id"], edit_id,
        "{where_}: m.replace must be the latest edit: {event}"
    );
    assert_eq!(replace["type"], "m.room.message", "{where_}: {event}");
    assert!(replace["sender"].is_string(), "{where_}: {event}");
    assert!(replace["origin_server_ts"].is_u64(), "{where_}: {event}");
    assert_eq!(
        replace["content"]["m.new_content"]["body"], new_body,
        "{where_}: the full edit event is bundled: {event}"
    );
    assert_eq!(
        replace["content"]["m.relates_to"]["rel_type"], "m.replace",
        "{where_}: {event}"
    );
    // Servers must not replace the original's content (since v1.7).
    assert_eq!(
        event["content"]["body"], "v0",
        "{where_}: original content intact: {event}"
    );
}

#[tokio::test]
async fn edit_is_bundled_on_event_messages_context_and_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (room, original, _edit1, edit2) = edited_message(&s, &alice).await;
    s.send_text(&alice, &room, "after").await;

    let event = event_ok(&s, &alice, &room, &original).await;
    assert_replaced_by(&event, &edit2, "v2", "/event");

    let page = messages_ok(&s, &alice, &room, "dir=b&limit=20").await;
    let chunk = arr(&page["chunk"]);
    assert_replaced_by(find_event(&chunk, &original), &edit2, "v2", "/messages");

    let context = context_ok(&s, &alice, &room, &original).await;
    assert_replaced_by(&context["event"], &edit2, "v2", "/context");

    // A limited sync timeline holding the original (the case the spec names for /sync).
    let sync = sync(
        &s,
        &alice,
        &json!({ "room": { "timeline": { "limit": 4 } } }),
        None,
    )
    .await;
    assert_eq!(
        joined(&sync, &room)["timeline"]["limited"],
        true,
        "precondition: limited timeline: {sync}"
    );
    let events = timeline_of(&sync, &room);
    assert_replaced_by(find_event(&events, &original), &edit2, "v2", "/sync");
}

#[tokio::test]
async fn edits_by_another_sender_or_with_another_type_are_not_bundled() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = public_room(&s, &alice, &[&bob]).await;
    let original = send_msg(&s, &alice, &room, text("v0")).await;
    let valid = send_msg(&s, &alice, &room, edit(&original, "v1")).await;
    // Later, invalid edits: another sender, another event type.
    send_msg(&s, &bob, &room, edit(&original, "bob's version")).await;
    send(
        &s,
        &alice,
        &room,
        "org.example.custom",
        edit(&original, "custom type"),
    )
    .await;

    let event = event_ok(&s, &alice, &room, &original).await;
    assert_eq!(
        bundle(&event)["m.replace"]["event_id"],
        valid.as_str(),
        "only the valid edit is bundled: {event}"
    );
    let event = event_ok(&s, &bob, &room, &original).await;
    assert_eq!(
        bundle(&event)["m.replace"]["event_id"],
        valid.as_str(),
        "bob sees the same aggregation: {event}"
    );

    // An edit of bob's own message by alice never becomes bob's message's edit.
    let bobs = send_msg(&s, &bob, &room, text("bob says")).await;
    send_msg(&s, &alice, &room, edit(&bobs, "alice rewrites")).await;
    let event = event_ok(&s, &bob, &room, &bobs).await;
    assert!(
        bundle(&event).get("m.replace").is_none(),
        "an edit by another user is ignored: {event}"
    );
}

#[tokio::test]
async fn edit_without_new_content_is_not_bundled() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let original = send_msg(&s, &alice, &room, text("v0")).await;
    let valid = send_msg(&s, &alice, &room, edit(&original, "v1")).await;
    // Spec: "The replacement event must have an m.new_content property" — else ignore it.
    send_msg(
        &s,
        &alice,
        &room,
        json!({
            "msgtype": "m.text",
            "body": "* no new content",
            "m.relates_to": { "rel_type": "m.replace", "event_id": original },
        }),
    )
    .await;
    let event = event_ok(&s, &alice, &room, &original).await;
    assert_eq!(
        bundle(&event)["m.replace"]["event_id"],
        valid.as_str(),
        "an edit without m.new_content is invalid and must not be bundled: {event}"
    );
}

#[tokio::test]
async fn relations_lists_edits_newest_first() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (room, original, edit1, edit2) = edited_message(&s, &alice).await;
    // Another relation type that must not show up under /m.replace.
    send(&s, &alice, &room, "m.reaction", reaction(&original, "👍")).await;

    let body = relations_ok(&s, &alice, &room, &original, "/m.replace", "").await;
    assert_eq!(
        chunk_ids(&body),
        vec![edit2.clone(), edit1.clone()],
        "{body}"
    );
    for event in arr(&body["chunk"]) {
        assert_eq!(event["room_id"], room.as_str(), "client format: {event}");
        assert_eq!(
            event["content"]["m.relates_to"]["event_id"],
            original.as_str()
        );
    }
    assert!(
        body.get("recursion_depth").is_none(),
        "recursion_depth must be absent without recurse: {body}"
    );
    let body = relations_ok(
        &s,
        &alice,
        &room,
        &original,
        "/m.replace/m.room.message",
        "",
    )
    .await;
    assert_eq!(chunk_ids(&body), vec![edit2, edit1], "{body}");
    let body = relations_ok(&s, &alice, &room, &original, "/m.replace/m.reaction", "").await;
    assert_eq!(chunk_ids(&body), Vec::<String>::new(), "{body}");
}

#[tokio::test]
async fn redacting_edits_removes_them_from_the_bundle() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (room, original, edit1, edit2) = edited_message(&s, &alice).await;

    redact(&s, &alice, &room, &edit2).await;
    let event = event_ok(&s, &alice, &room, &original).await;
    assert_eq!(
        bundle(&event)["m.replace"]["event_id"],
        edit1.as_str(),
        "after redacting the latest edit, the previous one is bundled: {event}"
    );
    let body = relations_ok(&s, &alice, &room, &original, "/m.replace", "").await;
    assert_eq!(
        chunk_ids(&body),
        vec![edit1.clone()],
        "a redacted edit no longer relates: {body}"
    );

    redact(&s, &alice, &room, &edit1).await;
    let event = event_ok(&s, &alice, &room, &original).await;
    assert!(
        bundle(&event).get("m.replace").is_none(),
        "no edits left: {event}"
    );

    // A new edit, then redacting the original: no m.replace bundled with a redacted event.
    send_msg(&s, &alice, &room, edit(&original, "v3")).await;
    redact(&s, &alice, &room, &original).await;
    let event = event_ok(&s, &alice, &room, &original).await;
    assert!(
        bundle(&event).get("m.replace").is_none(),
        "a redacted original carries no m.replace: {event}"
    );
}

#[tokio::test]
async fn duplicate_reaction_is_rejected_until_redacted() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let target = s.send_text(&alice, &room, "react to me").await;

    let first = send(&s, &bob, &room, "m.reaction", reaction(&target, "👍")).await;
    let again = try_send(&s, &bob, &room, "m.reaction", reaction(&target, "👍")).await;
    assert_error(&again, 400, "M_DUPLICATE_ANNOTATION");
    let down = send(&s, &bob, &room, "m.reaction", reaction(&target, "👎")).await;
    // Another user may use the same key.
    let carols = send(&s, &carol, &room, "m.reaction", reaction(&target, "👍")).await;

    let body = relations_ok(&s, &alice, &room, &target, "/m.annotation/m.reaction", "").await;
    assert_eq!(
        chunk_ids(&body),
        vec![carols.clone(), down.clone(), first.clone()],
        "{body}"
    );
    for event in arr(&body["chunk"]) {
        assert_eq!(event["type"], "m.reaction");
        assert_eq!(event["content"]["m.relates_to"]["rel_type"], "m.annotation");
    }

    // Annotations are not aggregated by the server (spec: not in m.relations).
    let event = event_ok(&s, &alice, &room, &target).await;
    assert!(
        bundle(&event).get("m.annotation").is_none(),
        "m.annotation must not be bundled: {event}"
    );

    // After redacting the first reaction, the same reaction can be sent again.
    redact(&s, &bob, &room, &first).await;
    let renewed = send(&s, &bob, &room, "m.reaction", reaction(&target, "👍")).await;
    let body = relations_ok(&s, &alice, &room, &target, "/m.annotation", "").await;
    assert_eq!(chunk_ids(&body), vec![renewed, carols, down], "{body}");
}

#[tokio::test]
async fn duplicate_annotation_check_is_per_event_type() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let target = s.send_text(&alice, &room, "vote").await;
    send(&s, &alice, &room, "m.reaction", reaction(&target, "yes")).await;
    // Spec: duplicates are "identical event type and annotation key"; another type is fine.
    let other = try_send(
        &s,
        &alice,
        &room,
        "org.example.vote",
        reaction(&target, "yes"),
    )
    .await;
    assert_eq!(
        other.0, 200,
        "same key with another event type is not a duplicate: {}",
        other.1
    );
}

#[tokio::test]
async fn references_are_bundled_as_chunk() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = public_room(&s, &alice, &[&bob]).await;
    let target = s.send_text(&alice, &room, "target").await;
    let r1 = send_msg(&s, &alice, &room, reference(&target, "ref one")).await;
    let r2 = send_msg(&s, &bob, &room, reference(&target, "ref two")).await;

    let event = event_ok(&s, &bob, &room, &target).await;
    let chunk = arr(&bundle(&event)["m.reference"]["chunk"]);
    let mut got = ids(&chunk);
    got.sort();
    let mut want = vec![r1, r2];
    want.sort();
    assert_eq!(got, want, "{event}");
    for entry in &chunk {
        assert_eq!(
            entry.as_object().map(|o| o.len()),
            Some(1),
            "only event_id in reference chunk entries: {event}"
        );
    }
    let body = relations_ok(&s, &alice, &room, &target, "/m.reference", "").await;
    assert_eq!(arr(&body["chunk"]).len(), 2, "{body}");
}

/// Five references to a target, oldest first.
async fn five_children(s: &TestServer, alice: &common::User) -> (String, String, Vec<String>) {
    let room = s.create_room(alice, json!({})).await;
    let target = s.send_text(alice, &room, "parent").await;
    let mut children = Vec::new();
    for i in 0..5 {
        children.push(send_msg(s, alice, &room, reference(&target, &format!("c{i}"))).await);
    }
    (room, target, children)
}

#[tokio::test]
async fn relations_paginate_backwards_and_forwards() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (room, target, c) = five_children(&s, &alice).await;

    // dir=b (default): newest first.
    let page1 = relations_ok(&s, &alice, &room, &target, "", "limit=2").await;
    assert_eq!(
        chunk_ids(&page1),
        vec![c[4].clone(), c[3].clone()],
        "{page1}"
    );
    let token = page1["next_batch"].as_str().expect("next_batch on page 1");
    let page2 = relations_ok(
        &s,
        &alice,
        &room,
        &target,
        "",
        &format!("limit=2&from={}", common::enc(token)),
    )
    .await;
    assert_eq!(
        chunk_ids(&page2),
        vec![c[2].clone(), c[1].clone()],
        "{page2}"
    );
    let token = page2["next_batch"].as_str().expect("next_batch on page 2");
    let page3 = relations_ok(
        &s,
        &alice,
        &room,
        &target,
        "",
        &format!("limit=2&from={}", common::enc(token)),
    )
    .await;
    assert_eq!(chunk_ids(&page3), vec![c[0].clone()], "{page3}");
    assert!(
        page3.get("next_batch").is_none(),
        "no next_batch at the end: {page3}"
    );

    // dir=f: oldest first.
    let page1 = relations_ok(&s, &alice, &room, &target, "", "dir=f&limit=2").await;
    assert_eq!(
        chunk_ids(&page1),
        vec![c[0].clone(), c[1].clone()],
        "{page1}"
    );
    let token = page1["next_batch"].as_str().expect("next_batch dir=f");
    let page2 = relations_ok(
        &s,
        &alice,
        &room,
        &target,
        "",
        &format!("dir=f&limit=2&from={}", common::enc(token)),
    )
    .await;
    assert_eq!(
        chunk_ids(&page2),
        vec![c[2].clone(), c[3].clone()],
        "{page2}"
    );
    let token = page2["next_batch"].as_str().expect("next_batch dir=f 2");
    let page3 = relations_ok(
        &s,
        &alice,
        &room,
        &target,
        "",
        &format!("dir=f&limit=2&from={}", common::enc(token)),
    )
    .await;
    assert_eq!(chunk_ids(&page3), vec![c[4].clone()], "{page3}");
    assert!(page3.get("next_batch").is_none(), "{page3}");

    // All at once.
    let all = relations_ok(&s, &alice, &room, &target, "", "limit=50").await;
    let mut newest_first = c.clone();
    newest_first.reverse();
    assert_eq!(chunk_ids(&all), newest_first, "{all}");
}

#[tokio::test]
async fn relations_recurse_follows_indirect_relations() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let target = s.send_text(&alice, &room, "parent").await;
    let child = send_msg(&s, &alice, &room, reference(&target, "child")).await;
    let grandchild = send_msg(&s, &alice, &room, reference(&child, "grandchild")).await;
    let great = send_msg(&s, &alice, &room, reference(&grandchild, "great")).await;

    let direct = relations_ok(&s, &alice, &room, &target, "", "limit=50").await;
    assert_eq!(chunk_ids(&direct), vec![child.clone()], "{direct}");
    assert!(direct.get("recursion_depth").is_none(), "{direct}");

    let deep = relations_ok(&s, &alice, &room, &target, "", "limit=50&recurse=true").await;
    let got = chunk_ids(&deep);
    // Servers SHOULD traverse at least 3 levels.
    for id in [&child, &grandchild, &great] {
        assert!(got.contains(id), "{id} missing with recurse=true: {deep}");
    }
    assert_eq!(got.len(), 3, "{deep}");
    assert_eq!(
        got,
        vec![great, grandchild, child],
        "topological, newest first: {deep}"
    );
    let depth = deep["recursion_depth"]
        .as_u64()
        .unwrap_or_else(|| panic!("recursion_depth is mandatory with recurse: {deep}"));
    assert!(depth >= 3, "recursed to 3 levels: {deep}");
}

#[tokio::test]
async fn relations_recursion_depth_present_when_recurse_false_is_supplied() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let target = s.send_text(&alice, &room, "parent").await;
    let child = send_msg(&s, &alice, &room, reference(&target, "child")).await;
    send_msg(&s, &alice, &room, reference(&child, "grandchild")).await;
    // "If the recurse parameter was supplied by the client, this response field is mandatory".
    let body = relations_ok(&s, &alice, &room, &target, "", "recurse=false").await;
    assert_eq!(chunk_ids(&body), vec![child], "{body}");
    assert!(
        body["recursion_depth"].is_u64(),
        "recursion_depth mandatory when recurse is supplied (even false): {body}"
    );
}

#[tokio::test]
async fn relations_of_invisible_event_is_404() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let stranger = s.register("stranger").await;
    let room = s
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "initial_state": [{
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": { "history_visibility": "joined" },
                }],
            }),
        )
        .await;
    let target = s.send_text(&alice, &room, "before bob").await;
    send(&s, &alice, &room, "m.reaction", reaction(&target, "👍")).await;
    ok(&s.join(&bob, &room).await, "bob joins");
    let visible = s.send_text(&alice, &room, "after bob").await;
    send(&s, &alice, &room, "m.reaction", reaction(&visible, "👍")).await;

    let body = relations_ok(&s, &bob, &room, &visible, "", "").await;
    assert_eq!(arr(&body["chunk"]).len(), 1, "{body}");
    let hidden = relations(&s, &bob, &room, &target, "", "").await;
    assert_error(&hidden, 404, "M_NOT_FOUND");
    let hidden = relations(&s, &bob, &room, &target, "/m.annotation", "").await;
    assert_error(&hidden, 404, "M_NOT_FOUND");
    // A user who was never in the (non world-readable) room.
    let outsider = relations(&s, &stranger, &room, &visible, "", "").await;
    assert_error(&outsider, 404, "M_NOT_FOUND");
    // An unknown event.
    let unknown = relations(&s, &alice, &room, "$nope", "", "").await;
    assert_error(&unknown, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn thread_summary_is_bundled_with_participation() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let dave = s.register("dave").await;
    let room = public_room(&s, &alice, &[&bob, &carol, &dave]).await;
    let root = s.send_text(&alice, &room, "root").await;
    send_msg(&s, &bob, &room, thread_reply(&root, "first")).await;
    let latest = send_msg(&s, &carol, &room, thread_reply(&root, "second")).await;

    for (user, participated) in [(&alice, true), (&bob, true), (&carol, true), (&dave, false)] {
        let event = event_ok(&s, user, &room, &root).await;
        let thread = &bundle(&event)["m.thread"];
        assert_eq!(thread["count"], 2, "{}: {event}", user.user_id);
        assert_eq!(
            thread["latest_event"]["event_id"],
            latest.as_str(),
            "{}: {event}",
            user.user_id
        );
        assert_eq!(thread["latest_event"]["content"]["body"], "second");
        assert_eq!(thread["latest_event"]["sender"], carol.user_id.as_str());
        assert_eq!(
            thread["current_user_participated"], participated,
            "{}: {event}",
            user.user_id
        );
    }

    // The same summary in /messages and /sync.
    let page = messages_ok(&s, &dave, &room, "dir=b&limit=20").await;
    let chunk = arr(&page["chunk"]);
    let in_messages = &bundle(find_event(&chunk, &root))["m.thread"];
    assert_eq!(in_messages["count"], 2, "{page}");
    assert_eq!(in_messages["current_user_participated"], false);
    let sync = sync(
        &s,
        &bob,
        &json!({ "room": { "timeline": { "limit": 3 } } }),
        None,
    )
    .await;
    let events = timeline_of(&sync, &room);
    let in_sync = &bundle(find_event(&events, &root))["m.thread"];
    assert_eq!(in_sync["count"], 2, "{sync}");
    assert_eq!(in_sync["latest_event"]["event_id"], latest.as_str());
    assert_eq!(in_sync["current_user_participated"], true);

    // /relations/{root}/m.thread lists the replies.
    let body = relations_ok(&s, &dave, &room, &root, "/m.thread", "").await;
    assert_eq!(arr(&body["chunk"]).len(), 2, "{body}");
    assert_eq!(chunk_ids(&body)[0], latest, "{body}");
}

#[tokio::test]
async fn thread_latest_event_carries_its_own_aggregations() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let root = s.send_text(&alice, &room, "root").await;
    let reply = send_msg(&s, &alice, &room, thread_reply(&root, "reply")).await;
    let fix = send_msg(&s, &alice, &room, edit(&reply, "reply, edited")).await;
    let event = event_ok(&s, &alice, &room, &root).await;
    let thread = &bundle(&event)["m.thread"];
    assert_eq!(thread["count"], 1, "an edit is not a thread reply: {event}");
    assert_eq!(
        thread["latest_event"]["event_id"],
        reply.as_str(),
        "{event}"
    );
    assert_eq!(
        bundle(&thread["latest_event"])["m.replace"]["event_id"],
        fix.as_str(),
        "latest_event's own children are aggregated: {event}"
    );
}

#[tokio::test]
async fn thread_aggregation_ignores_ignored_users() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let root = s.send_text(&alice, &room, "root").await;
    let alices = send_msg(&s, &alice, &room, thread_reply(&root, "from alice")).await;
    send_msg(&s, &carol, &room, thread_reply(&root, "from carol")).await;
    put_account_data(
        &s,
        &bob,
        "m.ignored_user_list",
        json!({ "ignored_users": { carol.user_id.clone(): {} } }),
    )
    .await;
    let event = event_ok(&s, &bob, &room, &root).await;
    let thread = &bundle(&event)["m.thread"];
    assert_eq!(
        thread["count"], 1,
        "count excludes ignored users' replies: {event}"
    );
    assert_eq!(
        thread["latest_event"]["event_id"],
        alices.as_str(),
        "latest_event is from an un-ignored user: {event}"
    );
    // Alice ignores nobody.
    let event = event_ok(&s, &alice, &room, &root).await;
    assert_eq!(bundle(&event)["m.thread"]["count"], 2, "{event}");
}

#[tokio::test]
async fn thread_off_an_event_with_a_relation_is_rejected() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let root = s.send_text(&alice, &room, "root").await;
    let reply = send_msg(&s, &alice, &room, thread_reply(&root, "reply")).await;
    // Spec: servers SHOULD reject threads off an event that has m.relates_to: 400 M_UNKNOWN.
    let nested = try_send(
        &s,
        &alice,
        &room,
        "m.room.message",
        thread_reply(&reply, "nested thread"),
    )
    .await;
    assert_error(&nested, 400, "M_UNKNOWN");
}

#[tokio::test]
async fn threads_list_orders_by_activity_and_paginates() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let r1 = s.send_text(&alice, &room, "r1").await;
    let r2 = s.send_text(&alice, &room, "r2").await;
    let r3 = s.send_text(&alice, &room, "r3").await;
    s.send_text(&alice, &room, "not a thread").await;
    send_msg(&s, &bob, &room, thread_reply(&r1, "r1 a")).await;
    send_msg(&s, &carol, &room, thread_reply(&r2, "r2 a")).await;
    send_msg(&s, &bob, &room, thread_reply(&r3, "r3 a")).await;
    let r1_latest = send_msg(&s, &bob, &room, thread_reply(&r1, "r1 b")).await;

    let (status, body) = threads(&s, &carol, &room, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        chunk_ids(&body),
        vec![r1.clone(), r3.clone(), r2.clone()],
        "ordered by latest activity: {body}"
    );
    assert!(body.get("next_batch").is_none(), "{body}");
    let first = &arr(&body["chunk"])[0];
    assert_eq!(bundle(first)["m.thread"]["count"], 2, "bundled: {first}");
    assert_eq!(
        bundle(first)["m.thread"]["latest_event"]["event_id"],
        r1_latest.as_str()
    );
    assert_eq!(
        bundle(first)["m.thread"]["current_user_participated"],
        false
    );

    let (_, body) = threads(&s, &carol, &room, "include=participated").await;
    assert_eq!(chunk_ids(&body), vec![r2.clone()], "{body}");
    let (_, body) = threads(&s, &alice, &room, "include=participated").await;
    assert_eq!(
        chunk_ids(&body),
        vec![r1.clone(), r3.clone(), r2.clone()],
        "the root's sender participated: {body}"
    );
    let (_, body) = threads(&s, &bob, &room, "include=all").await;
    assert_eq!(arr(&body["chunk"]).len(), 3, "{body}");

    // Pagination, one at a time.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..5 {
        let query = match &from {
            Some(token) => format!("limit=1&from={}", common::enc(token)),
            None => "limit=1".to_owned(),
        };
        let (status, body) = threads(&s, &carol, &room, &query).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(chunk_ids(&body));
        match body["next_batch"].as_str() {
            Some(token) => from = Some(token.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, vec![r1, r3, r2], "paginated with next_batch");

    // A user who is not in the room cannot list its threads.
    let stranger = s.register("stranger").await;
    let private = s.create_room(&alice, json!({})).await;
    let (status, body) = threads(&s, &stranger, &private, "").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
}

#[tokio::test]
async fn threads_list_redacts_roots_from_ignored_users() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let root = s.send_text(&carol, &room, "carol's root").await;
    send_msg(&s, &alice, &room, thread_reply(&root, "alice replies")).await;
    put_account_data(
        &s,
        &bob,
        "m.ignored_user_list",
        json!({ "ignored_users": { carol.user_id.clone(): {} } }),
    )
    .await;
    let (status, body) = threads(&s, &bob, &room, "").await;
    assert_eq!(status, 200, "{body}");
    let chunk = arr(&body["chunk"]);
    let listed = find_event(&chunk, &root);
    assert_eq!(
        listed["content"],
        json!({}),
        "a root by an ignored user is returned redacted: {body}"
    );
}
