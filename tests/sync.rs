//! `/sync`: initial and incremental, long-polling, full_state, filters, lazy members, state
//! deltas across gaps; `/messages`, `/context`, `/timestamp_to_event`; typing; account data.

mod common;
#[path = "room_suite_helpers/mod.rs"]
mod helpers;

use std::time::{Duration, Instant};

use common::{TestServer, assert_error, enc, timeline};
use helpers::*;
use serde_json::{Value, json};

#[tokio::test]
async fn initial_then_incremental() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({ "name": "R" })).await;
    let first = server.send_text(&alice, &room, "one").await;
    let sync = server.sync(&alice, "timeout=0").await;
    let state = section_state(&sync, "join", &room);
    let events = timeline(&sync, &room);
    // Initial sync: the room's state is covered by state + timeline.
    let everything: Vec<Value> = state.iter().chain(events.iter()).cloned().collect();
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.name",
    ] {
        assert!(
            find(&everything, kind, "").is_some(),
            "{kind} missing from initial sync: {sync}"
        );
    }
    assert!(find(&everything, "m.room.member", &alice.user_id).is_some());
    assert_eq!(
        events.last().map(|e| e["event_id"].clone()),
        Some(json!(first))
    );
    for event in events.iter().chain(state.iter()) {
        assert!(
            event.get("room_id").is_none(),
            "sync events omit room_id: {event}"
        );
        assert!(event["origin_server_ts"].is_u64());
        assert!(event["sender"].is_string());
    }
    let token = next_batch(&sync);

    // Nothing new: the room is absent.
    let sync = sync_with(&server, &alice, &Value::Null, Some(&token), "").await;
    assert!(
        sync["rooms"]["join"].get(&room).is_none(),
        "no changes → no room: {sync}"
    );
    let token = next_batch(&sync);

    let second = server.send_text(&alice, &room, "two").await;
    let sync = sync_with(&server, &alice, &Value::Null, Some(&token), "").await;
    let events = timeline(&sync, &room);
    assert_eq!(
        ids(events),
        vec![second.clone()],
        "only the new event: {sync}"
    );
    assert_eq!(section_state(&sync, "join", &room), Vec::<Value>::new());
    assert_eq!(sync["rooms"]["join"][&room]["timeline"]["limited"], false);
    // The same token again gives the same answer (tokens are reusable).
    let again = sync_with(&server, &alice, &Value::Null, Some(&token), "").await;
    assert_eq!(ids(timeline(&again, &room)), vec![second]);
    // A garbage token is rejected.
    let (status, body) = server
        .get(&format!("{V3}/sync?since=garbage&timeout=0"), &alice.token)
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn long_poll_wakes_promptly_on_new_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    let start = Instant::now();
    let url = format!("{V3}/sync?timeout=10000&since={}", enc(&token));
    let poll = server.get(&url, &bob.token);
    let send = async {
        sleep_ms(300).await;
        server.send_text(&alice, &room, "wake up").await
    };
    let ((status, sync), event_id) = tokio::join!(poll, send);
    let elapsed = start.elapsed();
    assert_eq!(status, 200, "{sync}");
    assert!(
        elapsed < Duration::from_secs(2),
        "long poll took {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "returned before the event was sent: {elapsed:?} {sync}"
    );
    assert_eq!(ids(timeline(&sync, &room)), vec![event_id]);
}

#[tokio::test]
async fn long_poll_holds_until_timeout_when_idle() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let token = next_batch(&server.sync(&alice, "timeout=0").await);
    let start = Instant::now();
    let (status, sync) = server
        .get(
            &format!("{V3}/sync?timeout=1500&since={}", enc(&token)),
            &alice.token,
        )
        .await;
    let elapsed = start.elapsed();
    assert_eq!(status, 200);
    assert!(
        elapsed >= Duration::from_millis(1350),
        "returned after only {elapsed:?}: {sync}"
    );
    assert!(elapsed < Duration::from_millis(5000), "took {elapsed:?}");
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    assert!(sync["next_batch"].is_string());
}

#[tokio::test]
async fn long_poll_wakes_for_invites_and_typing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({})).await;
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    let start = Instant::now();
    let url = format!("{V3}/sync?timeout=10000&since={}", enc(&token));
    let poll = server.get(&url, &bob.token);
    let act = async {
        sleep_ms(200).await;
        ok(&server.invite(&alice, &room, &bob.user_id).await, "invite");
    };
    let ((status, sync), ()) = tokio::join!(poll, act);
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(sync["rooms"]["invite"].get(&room).is_some(), "{sync}");

    ok(&server.join(&bob, &room).await, "join");
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    let start = Instant::now();
    let url = format!("{V3}/sync?timeout=10000&since={}", enc(&token));
    let poll = server.get(&url, &bob.token);
    let act = async {
        sleep_ms(200).await;
        let path = format!("{}/typing/{}", room_path(&room, ""), enc(&alice.user_id));
        ok(
            &server
                .put(
                    &path,
                    &alice.token,
                    json!({ "typing": true, "timeout": 10000 }),
                )
                .await,
            "typing",
        );
    };
    let ((status, sync), ()) = tokio::join!(poll, act);
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let ephemeral = arr(&sync["rooms"]["join"][&room]["ephemeral"]["events"]);
    assert_eq!(
        ephemeral
            .iter()
            .find(|e| e["type"] == "m.typing")
            .map(|e| e["content"]["user_ids"].clone()),
        Some(json!([alice.user_id])),
        "{sync}"
    );
}

#[tokio::test]
async fn full_state_returns_all_state_without_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(&alice, json!({ "name": "Full", "topic": "t" }))
        .await;
    let token = next_batch(&server.sync(&alice, "timeout=0").await);
    let start = Instant::now();
    let sync = sync_with(
        &server,
        &alice,
        &Value::Null,
        Some(&token),
        "full_state=true&timeout=5000",
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "full_state returns at once"
    );
    let state = section_state(&sync, "join", &room);
    for (kind, key) in [
        ("m.room.create", ""),
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", alice.user_id.as_str()),
    ] {
        assert!(
            find(&state, kind, key).is_some(),
            "{kind} missing from full_state: {sync}"
        );
    }
    assert_eq!(timeline(&sync, &room).len(), 0, "no new events: {sync}");
}

#[tokio::test]
async fn filters_upload_get_and_use() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..5 {
        server.send_text(&alice, &room, &format!("m{i}")).await;
    }
    let filter = json!({ "room": { "timeline": { "limit": 2 } }, "presence": { "types": [] } });
    let path = format!("{V3}/user/{}/filter", enc(&alice.user_id));
    let (status, body) = server.post(&path, &alice.token, filter.clone()).await;
    assert_eq!(status, 200, "{body}");
    let id = body["filter_id"].as_str().expect("filter_id").to_owned();
    let (status, stored) = server
        .get(&format!("{path}/{}", enc(&id)), &alice.token)
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["room"]["timeline"]["limit"], 2, "{stored}");
    // Other users cannot read or create filters for alice.
    assert_error(
        &server
            .get(&format!("{path}/{}", enc(&id)), &bob.token)
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.post(&path, &bob.token, filter.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    // Unknown filter id.
    assert_error(
        &server.get(&format!("{path}/999999"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );

    let sync = server
        .sync(&alice, &format!("timeout=0&filter={}", enc(&id)))
        .await;
    assert_eq!(bodies(timeline(&sync, &room)), vec!["m3", "m4"], "{sync}");
    assert_eq!(sync["rooms"]["join"][&room]["timeline"]["limited"], true);
    let sync = sync_with(&server, &alice, &filter, None, "").await;
    assert_eq!(
        bodies(timeline(&sync, &room)),
        vec!["m3", "m4"],
        "inline filter: {sync}"
    );
}

#[tokio::test]
async fn limited_timeline_prev_batch_continues_with_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let token = next_batch(&server.sync(&alice, "timeout=0").await);
    for i in 0..8 {
        server.send_text(&alice, &room, &format!("n{i}")).await;
    }
    let sync = sync_with(
        &server,
        &alice,
        &json!({ "room": { "timeline": { "limit": 3 } } }),
        Some(&token),
        "",
    )
    .await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{sync}");
    assert_eq!(
        bodies(&arr(&joined["timeline"]["events"])),
        vec!["n5", "n6", "n7"]
    );
    let prev = joined["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch")
        .to_owned();
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=3&from={}", enc(&prev)),
    )
    .await;
    assert_eq!(
        bodies(&arr(&page["chunk"])),
        vec!["n4", "n3", "n2"],
        "{page}"
    );
    assert_eq!(page["start"], prev.as_str());
    let end = page["end"].as_str().expect("end").to_owned();
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=2&from={}", enc(&end)),
    )
    .await;
    assert_eq!(bodies(&arr(&page["chunk"])), vec!["n1", "n0"], "{page}");
    // Bounded by `to`: the gap between the old sync token and prev_batch is exactly n0..n4.
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=50&from={}&to={}", enc(&prev), enc(&token)),
    )
    .await;
    assert_eq!(
        bodies(&arr(&page["chunk"])),
        vec!["n4", "n3", "n2", "n1", "n0"],
        "{page}"
    );
    assert_eq!(
        arr(&page["chunk"]).len(),
        5,
        "no other events in the gap: {page}"
    );
    // A non-limited incremental sync has limited: false.
    let token = next_batch(&sync);
    server.send_text(&alice, &room, "n8").await;
    let sync = sync_with(
        &server,
        &alice,
        &json!({ "room": { "timeline": { "limit": 3 } } }),
        Some(&token),
        "",
    )
    .await;
    assert_eq!(
        sync["rooms"]["join"][&room]["timeline"]["limited"], false,
        "{sync}"
    );
}

#[tokio::test]
async fn timeline_type_filters() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let token = next_batch(&server.sync(&alice, "timeout=0").await);
    server.send_text(&alice, &room, "text").await;
    ok(
        &send_event(
            &server,
            &alice,
            &room,
            "org.example.ping",
            json!({ "n": 1 }),
        )
        .await,
        "custom",
    );
    ok(
        &put_state(
            &server,
            &alice,
            &room,
            "m.room.topic",
            "",
            json!({ "topic": "x" }),
        )
        .await,
        "topic",
    );
    let only = sync_with(
        &server,
        &alice,
        &json!({ "room": { "timeline": { "types": ["m.room.message"] } } }),
        Some(&token),
        "",
    )
    .await;
    let kinds: Vec<Value> = timeline(&only, &room)
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(kinds, vec![json!("m.room.message")], "{only}");
    let not = sync_with(
        &server,
        &alice,
        &json!({ "room": { "timeline": { "not_types": ["m.room.message"] } } }),
        Some(&token),
        "",
    )
    .await;
    let kinds: Vec<Value> = timeline(&not, &room)
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![json!("org.example.ping"), json!("m.room.topic")],
        "{not}"
    );
    let glob = sync_with(
        &server,
        &alice,
        &json!({ "room": { "timeline": { "types": ["org.example.*"] } } }),
        Some(&token),
        "",
    )
    .await;
    assert_eq!(timeline(&glob, &room).len(), 1, "{glob}");
    // Room filters.
    let other = server.create_room(&alice, json!({})).await;
    let sync = sync_with(
        &server,
        &alice,
        &json!({ "room": { "rooms": [other] } }),
        None,
        "",
    )
    .await;
    assert!(sync["rooms"]["join"].get(&room).is_none());
    assert!(sync["rooms"]["join"].get(&other).is_some(), "{sync}");
    let sync = sync_with(
        &server,
        &alice,
        &json!({ "room": { "not_rooms": [other] } }),
        None,
        "",
    )
    .await;
    assert!(sync["rooms"]["join"].get(&other).is_none());
    assert!(sync["rooms"]["join"].get(&room).is_some());
    // State filter types.
    let sync = sync_with(
        &server,
        &alice,
        &json!({ "room": { "state": { "types": ["m.room.create"] }, "timeline": { "limit": 1 } } }),
        None,
        "",
    )
    .await;
    let state = section_state(&sync, "join", &room);
    assert!(!state.is_empty(), "{sync}");
    assert!(
        state.iter().all(|e| e["type"] == "m.room.create"),
        "{state:?}"
    );
}

#[tokio::test]
async fn lazy_loaded_members_are_only_the_timeline_senders() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    for user in [&bob, &carol, &dave] {
        ok(&server.join(user, &room).await, "join");
    }
    server.send_text(&alice, &room, "a").await;
    for i in 0..4 {
        server.send_text(&carol, &room, &format!("c{i}")).await;
    }
    let lazy =
        json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 3 } } });
    let sync = sync_with(&server, &bob, &lazy, None, "").await;
    assert_eq!(bodies(timeline(&sync, &room)), vec!["c1", "c2", "c3"]);
    let state = section_state(&sync, "join", &room);
    let members: Vec<&str> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(
        members.contains(&carol.user_id.as_str()),
        "sender's member event: {members:?}"
    );
    assert!(
        !members.contains(&alice.user_id.as_str()),
        "alice sent nothing in the timeline: {members:?}"
    );
    assert!(
        !members.contains(&dave.user_id.as_str()),
        "dave sent nothing: {members:?}"
    );
    assert!(
        find(&state, "m.room.create", "").is_some(),
        "other state still there"
    );
    // Without lazy loading everyone is there.
    let sync = sync_with(
        &server,
        &bob,
        &json!({ "room": { "timeline": { "limit": 3 } } }),
        None,
        "",
    )
    .await;
    let state = section_state(&sync, "join", &room);
    for user in [&alice, &bob, &carol, &dave] {
        assert!(
            find(&state, "m.room.member", &user.user_id).is_some(),
            "{} missing: {state:?}",
            user.user_id
        );
    }
    // /messages with lazy loading returns the senders' member events in `state`.
    let page = messages_ok(
        &server,
        &bob,
        &room,
        &format!(
            "dir=b&limit=3&filter={}",
            q(&json!({ "lazy_load_members": true }))
        ),
    )
    .await;
    let state = arr(&page["state"]);
    let members: Vec<&str> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(members, vec![carol.user_id.as_str()], "{page}");
}

#[tokio::test]
async fn state_changes_inside_a_gap_appear_in_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Before" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    ok(
        &put_state(
            &server,
            &alice,
            &room,
            "m.room.name",
            "",
            json!({ "name": "After" }),
        )
        .await,
        "rename",
    );
    for i in 0..6 {
        server.send_text(&alice, &room, &format!("g{i}")).await;
    }
    let sync = sync_with(
        &server,
        &bob,
        &json!({ "room": { "timeline": { "limit": 3 } } }),
        Some(&token),
        "",
    )
    .await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(
        bodies(&arr(&joined["timeline"]["events"])),
        vec!["g3", "g4", "g5"]
    );
    let state = section_state(&sync, "join", &room);
    let name =
        find(&state, "m.room.name", "").unwrap_or_else(|| panic!("name change in state: {sync}"));
    assert_eq!(name["content"]["name"], "After");
    assert_eq!(state.len(), 1, "only the changed state: {state:?}");
}

#[tokio::test]
async fn messages_both_directions_with_filters() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let start_token = next_batch(&server.sync(&alice, "timeout=0").await);
    for i in 0..6 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        server.send_text(who, &room, &format!("p{i}")).await;
    }
    let end_token = next_batch(&server.sync(&alice, "timeout=0").await);

    // Forwards from the start token.
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=4&from={}", enc(&start_token)),
    )
    .await;
    assert_eq!(
        bodies(&arr(&page["chunk"])),
        vec!["p0", "p1", "p2", "p3"],
        "{page}"
    );
    let end = page["end"].as_str().expect("end");
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=4&from={}", enc(end)),
    )
    .await;
    assert_eq!(bodies(&arr(&page["chunk"])), vec!["p4", "p5"], "{page}");
    assert!(page.get("end").is_none(), "no more events forwards: {page}");

    // Backwards from the end token, bounded by `to`.
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!(
            "dir=b&limit=10&from={}&to={}",
            enc(&end_token),
            enc(&start_token)
        ),
    )
    .await;
    assert_eq!(
        bodies(&arr(&page["chunk"])),
        vec!["p5", "p4", "p3", "p2", "p1", "p0"]
    );
    assert_eq!(arr(&page["chunk"]).len(), 6, "nothing before `to`: {page}");
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!(
            "dir=f&limit=10&from={}&to={}",
            enc(&start_token),
            enc(&end_token)
        ),
    )
    .await;
    assert_eq!(
        bodies(&arr(&page["chunk"])),
        vec!["p0", "p1", "p2", "p3", "p4", "p5"]
    );

    // Backwards without `from` starts at the newest event.
    let page = messages_ok(&server, &alice, &room, "dir=b&limit=2").await;
    assert_eq!(bodies(&arr(&page["chunk"])), vec!["p5", "p4"]);

    // Filters.
    let senders = json!({ "senders": [bob.user_id] });
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!(
            "dir=b&limit=10&from={}&filter={}",
            enc(&end_token),
            q(&senders)
        ),
    )
    .await;
    assert_eq!(bodies(&arr(&page["chunk"])), vec!["p5", "p3", "p1"]);
    let not_senders = json!({ "not_senders": [bob.user_id] });
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!(
            "dir=f&limit=10&from={}&filter={}",
            enc(&start_token),
            q(&not_senders)
        ),
    )
    .await;
    assert_eq!(bodies(&arr(&page["chunk"])), vec!["p0", "p2", "p4"]);
    let types = json!({ "types": ["m.room.member"] });
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=50&filter={}", q(&types)),
    )
    .await;
    let chunk = arr(&page["chunk"]);
    assert!(
        !chunk.is_empty() && chunk.iter().all(|e| e["type"] == "m.room.member"),
        "{page}"
    );
    assert_eq!(chunk.len(), 2, "alice's and bob's joins: {page}");
    // A bad direction is rejected.
    let (status, body) = messages(&server, &alice, &room, "dir=x").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn context_around_an_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({ "name": "Ctx" })).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(server.send_text(&alice, &room, &format!("c{i}")).await);
    }
    let (status, ctx) = context(&server, &alice, &room, &ids[3], "limit=4").await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["event_id"], ids[3].as_str());
    assert_eq!(ctx["event"]["content"]["body"], "c3");
    assert_eq!(
        bodies(&arr(&ctx["events_before"])),
        vec!["c2", "c1"],
        "reverse chronological: {ctx}"
    );
    assert_eq!(bodies(&arr(&ctx["events_after"])), vec!["c4", "c5"]);
    let state = arr(&ctx["state"]);
    assert_eq!(
        find(&state, "m.room.name", "").map(|e| e["content"]["name"].clone()),
        Some(json!("Ctx"))
    );
    // The tokens continue pagination.
    let start = ctx["start"].as_str().expect("start");
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=1&from={}", enc(start)),
    )
    .await;
    assert_eq!(bodies(&arr(&page["chunk"])), vec!["c0"], "{page}");
    let end = ctx["end"].as_str().expect("end");
    let page = messages_ok(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=5&from={}", enc(end)),
    )
    .await;
    assert_eq!(bodies(&arr(&page["chunk"])), vec!["c6"], "{page}");
    // Unknown event.
    assert_error(
        &context(&server, &alice, &room, "$nope", "").await,
        404,
        "M_NOT_FOUND",
    );
    // limit=0 gives only the event.
    let (status, ctx) = context(&server, &alice, &room, &ids[3], "limit=0").await;
    assert_eq!(status, 200);
    assert_eq!(arr(&ctx["events_before"]).len(), 0);
    assert_eq!(arr(&ctx["events_after"]).len(), 0);
}

#[tokio::test]
async fn timestamp_to_event_both_directions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut events = Vec::new();
    for i in 0..3 {
        sleep_ms(30).await;
        let id = server.send_text(&alice, &room, &format!("t{i}")).await;
        events.push((id.clone(), origin_ts(&server, &alice, &room, &id).await));
    }
    let (id0, ts0) = events[0].clone();
    let (id1, ts1) = events[1].clone();
    let (id2, ts2) = events[2].clone();
    assert!(ts0 < ts1 && ts1 < ts2);
    let find = |ts: u64, dir: &'static str| ts_to_event(&server, &alice, &room, ts, dir);
    let (status, found) = find(ts1, "f").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], id1.as_str());
    assert_eq!(found["origin_server_ts"], ts1);
    assert_eq!(find(ts1 + 1, "f").await.1["event_id"], id2.as_str());
    assert_eq!(find(ts1 - 1, "b").await.1["event_id"], id0.as_str());
    assert_eq!(find(ts1, "b").await.1["event_id"], id1.as_str());
    assert_eq!(find(ts2 + 100_000, "b").await.1["event_id"], id2.as_str());
    assert_error(&find(ts2 + 100_000, "f").await, 404, "M_NOT_FOUND");
    assert_error(&find(1, "b").await, 404, "M_NOT_FOUND");
    // Non-members get nothing.
    let (status, _) = ts_to_event(&server, &bob, &room, ts1, "f").await;
    assert!(status == 403 || status == 404, "{status}");
    // Bad direction.
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts1}&dir=sideways",
                enc(&room)
            ),
            &alice.token,
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn typing_notifications_reach_other_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    let path = format!("{}/typing/{}", room_path(&room, ""), enc(&alice.user_id));
    ok(
        &server
            .put(
                &path,
                &alice.token,
                json!({ "typing": true, "timeout": 30000 }),
            )
            .await,
        "typing on",
    );
    let sync = sync_with(&server, &bob, &Value::Null, Some(&token), "").await;
    let ephemeral = arr(&sync["rooms"]["join"][&room]["ephemeral"]["events"]);
    let typing = ephemeral
        .iter()
        .find(|e| e["type"] == "m.typing")
        .unwrap_or_else(|| panic!("{sync}"));
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]));
    let token = next_batch(&sync);
    ok(
        &server
            .put(&path, &alice.token, json!({ "typing": false }))
            .await,
        "typing off",
    );
    let sync = sync_with(&server, &bob, &Value::Null, Some(&token), "").await;
    let ephemeral = arr(&sync["rooms"]["join"][&room]["ephemeral"]["events"]);
    let typing = ephemeral
        .iter()
        .find(|e| e["type"] == "m.typing")
        .unwrap_or_else(|| panic!("stop typing: {sync}"));
    assert_eq!(typing["content"]["user_ids"], json!([]));
    // Setting another user's typing is forbidden; so is typing in a room one is not in.
    let bob_path = format!("{}/typing/{}", room_path(&room, ""), enc(&bob.user_id));
    assert_error(
        &server
            .put(
                &bob_path,
                &alice.token,
                json!({ "typing": true, "timeout": 1000 }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    let other = server.create_room(&alice, json!({})).await;
    let other_path = format!("{}/typing/{}", room_path(&other, ""), enc(&bob.user_id));
    assert_error(
        &server
            .put(
                &other_path,
                &bob.token,
                json!({ "typing": true, "timeout": 1000 }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    // Typing expires.
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    ok(
        &server
            .put(
                &path,
                &alice.token,
                json!({ "typing": true, "timeout": 500 }),
            )
            .await,
        "short typing",
    );
    let sync = sync_with(&server, &bob, &Value::Null, Some(&token), "").await;
    assert_eq!(
        arr(&sync["rooms"]["join"][&room]["ephemeral"]["events"])[0]["content"]["user_ids"],
        json!([alice.user_id])
    );
    let token = next_batch(&sync);
    let (status, sync) = server
        .get(
            &format!("{V3}/sync?timeout=5000&since={}", enc(&token)),
            &bob.token,
        )
        .await;
    assert_eq!(status, 200);
    let ephemeral = arr(&sync["rooms"]["join"][&room]["ephemeral"]["events"]);
    assert_eq!(
        ephemeral
            .iter()
            .find(|e| e["type"] == "m.typing")
            .map(|e| e["content"]["user_ids"].clone()),
        Some(json!([])),
        "typing expired: {sync}"
    );
}

#[tokio::test]
async fn account_data_global_and_per_room_in_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({})).await;
    let token = next_batch(&server.sync(&alice, "timeout=0").await);
    let global = format!(
        "{V3}/user/{}/account_data/org.example.global",
        enc(&alice.user_id)
    );
    let per_room = format!(
        "{V3}/user/{}/rooms/{}/account_data/org.example.room",
        enc(&alice.user_id),
        enc(&room)
    );
    ok(
        &server.put(&global, &alice.token, json!({ "g": 1 })).await,
        "global",
    );
    ok(
        &server.put(&per_room, &alice.token, json!({ "r": 2 })).await,
        "room",
    );
    let (status, body) = server.get(&global, &alice.token).await;
    assert_eq!((status.as_u16(), body), (200, json!({ "g": 1 })));
    let (status, body) = server.get(&per_room, &alice.token).await;
    assert_eq!((status.as_u16(), body), (200, json!({ "r": 2 })));
    // Not someone else's.
    assert_error(&server.get(&global, &bob.token).await, 403, "M_FORBIDDEN");
    assert_error(
        &server.put(&global, &bob.token, json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .get(
                &format!(
                    "{V3}/user/{}/account_data/org.example.unset",
                    enc(&alice.user_id)
                ),
                &alice.token,
            )
            .await,
        404,
        "M_NOT_FOUND",
    );

    for since in [None, Some(token.as_str())] {
        let sync = sync_with(&server, &alice, &Value::Null, since, "").await;
        let globals = arr(&sync["account_data"]["events"]);
        let g = globals
            .iter()
            .find(|e| e["type"] == "org.example.global")
            .unwrap_or_else(|| panic!("{sync}"));
        assert_eq!(g["content"], json!({ "g": 1 }));
        assert!(
            globals.iter().all(|e| e["type"] != "org.example.room"),
            "room data is not global: {sync}"
        );
        let rooms = arr(&sync["rooms"]["join"][&room]["account_data"]["events"]);
        let r = rooms
            .iter()
            .find(|e| e["type"] == "org.example.room")
            .unwrap_or_else(|| panic!("{sync}"));
        assert_eq!(r["content"], json!({ "r": 2 }));
    }
    // Updating replaces; an incremental sync carries only the change.
    let token = next_batch(&server.sync(&alice, "timeout=0").await);
    ok(
        &server.put(&global, &alice.token, json!({ "g": 3 })).await,
        "update",
    );
    let sync = sync_with(&server, &alice, &Value::Null, Some(&token), "").await;
    let globals = arr(&sync["account_data"]["events"]);
    assert_eq!(globals.len(), 1, "{sync}");
    assert_eq!(globals[0]["content"], json!({ "g": 3 }));
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn initial_sync_of_a_long_room_is_limited_with_full_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Long", "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }] }),
        )
        .await;
    for i in 0..15 {
        server.send_text(&alice, &room, &format!("l{i}")).await;
    }
    ok(&server.join(&bob, &room).await, "join");
    server.send_text(&alice, &room, "hello bob").await;
    // Alice: default limit 10, limited, prev_batch pages back.
    let sync = server.sync(&alice, "timeout=0").await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(
        arr(&joined["timeline"]["events"]).len(),
        10,
        "default timeline limit is 10: {sync}"
    );
    assert_eq!(joined["timeline"]["limited"], true);
    let state = section_state(&sync, "join", &room);
    assert_eq!(
        find(&state, "m.room.name", "").map(|e| e["content"]["name"].clone()),
        Some(json!("Long")),
        "{state:?}"
    );
    assert!(find(&state, "m.room.create", "").is_some());
    // Bob (joined visibility, late joiner): history is hidden but the state is complete.
    let sync = server.sync(&bob, "timeout=0").await;
    let events = timeline(&sync, &room);
    assert_eq!(bodies(events), vec!["hello bob"], "{sync}");
    let state = section_state(&sync, "join", &room);
    let everything: Vec<Value> = state.iter().chain(events.iter()).cloned().collect();
    assert_eq!(
        find(&everything, "m.room.name", "").map(|e| e["content"]["name"].clone()),
        Some(json!("Long")),
        "state is not subject to history visibility: {sync}"
    );
    assert!(find(&everything, "m.room.create", "").is_some(), "{sync}");
    assert!(
        find(&everything, "m.room.power_levels", "").is_some(),
        "{sync}"
    );
    assert!(
        find(&everything, "m.room.member", &alice.user_id).is_some(),
        "{sync}"
    );
    assert!(
        find(&everything, "m.room.member", &bob.user_id).is_some(),
        "{sync}"
    );
}

#[tokio::test]
async fn room_joined_between_syncs_arrives_with_full_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Later", "topic": "tt" }),
        )
        .await;
    server.send_text(&alice, &room, "old news").await;
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    ok(&server.invite(&alice, &room, &bob.user_id).await, "invite");
    let sync = sync_with(&server, &bob, &Value::Null, Some(&token), "").await;
    assert!(sync["rooms"]["invite"].get(&room).is_some(), "{sync}");
    assert!(sync["rooms"]["join"].get(&room).is_none());
    let token = next_batch(&sync);
    ok(&server.join(&bob, &room).await, "join");
    let sync = sync_with(&server, &bob, &Value::Null, Some(&token), "").await;
    assert!(
        sync["rooms"]["invite"].get(&room).is_none(),
        "invite gone after join: {sync}"
    );
    let state = section_state(&sync, "join", &room);
    let events = timeline(&sync, &room);
    let everything: Vec<Value> = state.iter().chain(events.iter()).cloned().collect();
    for (kind, key) in [
        ("m.room.create", ""),
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", alice.user_id.as_str()),
    ] {
        assert!(
            find(&everything, kind, key).is_some(),
            "{kind} missing for newly joined room: {sync}"
        );
    }
    let join = find(events, "m.room.member", &bob.user_id)
        .unwrap_or_else(|| panic!("own join in timeline: {sync}"));
    assert_eq!(join["content"]["membership"], "join");
    // Shared history: the old message is reachable from the timeline's prev_batch.
    let prev = sync["rooms"]["join"][&room]["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch")
        .to_owned();
    let page = messages_ok(
        &server,
        &bob,
        &room,
        &format!("dir=b&limit=50&from={}", enc(&prev)),
    )
    .await;
    let mut seen = bodies(&arr(&page["chunk"]));
    seen.extend(bodies(events));
    assert_eq!(seen, vec!["old news"], "{page}");
}

#[tokio::test]
async fn banned_user_gets_leave_section_with_ban() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let token = next_batch(&server.sync(&bob, "timeout=0").await);
    ok(&ban(&server, &alice, &room, &bob.user_id).await, "ban");
    let sync = sync_with(&server, &bob, &Value::Null, Some(&token), "").await;
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    let left = &sync["rooms"]["leave"][&room];
    assert!(left.is_object(), "banned room in leave: {sync}");
    let events = arr(&left["timeline"]["events"]);
    let state = arr(&left["state"]["events"]);
    let everything: Vec<Value> = state.iter().chain(events.iter()).cloned().collect();
    let ban = find(&everything, "m.room.member", &bob.user_id)
        .unwrap_or_else(|| panic!("ban event visible to the banned user: {sync}"));
    assert_eq!(ban["content"]["membership"], "ban");
}

#[tokio::test]
async fn lazy_members_in_incremental_sync_include_new_senders() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    ok(&server.join(&carol, &room).await, "join");
    server.send_text(&alice, &room, "a1").await;
    let lazy =
        json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 1 } } });
    let sync = sync_with(&server, &bob, &lazy, None, "").await;
    let state = section_state(&sync, "join", &room);
    assert!(
        find(&state, "m.room.member", &carol.user_id).is_none(),
        "carol is silent: {state:?}"
    );
    let token = next_batch(&sync);
    // Carol speaks for the first time: bob has never been sent her member event.
    server.send_text(&carol, &room, "c1").await;
    let sync = sync_with(&server, &bob, &lazy, Some(&token), "").await;
    assert_eq!(bodies(timeline(&sync, &room)), vec!["c1"]);
    let state = section_state(&sync, "join", &room);
    let member = find(&state, "m.room.member", &carol.user_id)
        .unwrap_or_else(|| panic!("carol's member event must accompany her first message: {sync}"));
    assert_eq!(member["content"]["membership"], "join");
}

#[tokio::test]
async fn filter_senders_and_event_fields() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    let token = next_batch(&server.sync(&alice, "timeout=0").await);
    server.send_text(&alice, &room, "from alice").await;
    server.send_text(&bob, &room, "from bob").await;
    let senders = json!({ "room": { "timeline": { "senders": [bob.user_id] } } });
    let sync = sync_with(&server, &alice, &senders, Some(&token), "").await;
    assert_eq!(bodies(timeline(&sync, &room)), vec!["from bob"], "{sync}");
    let not_senders = json!({ "room": { "timeline": { "not_senders": [bob.user_id] } } });
    let sync = sync_with(&server, &alice, &not_senders, Some(&token), "").await;
    assert_eq!(bodies(timeline(&sync, &room)), vec!["from alice"], "{sync}");
    // event_fields may be ignored ("a server may include more fields"), but the requested
    // fields must be there.
    let fields = json!({ "event_fields": ["type", "content.body"], "room": { "timeline": { "types": ["m.room.message"] } } });
    let sync = sync_with(&server, &alice, &fields, Some(&token), "").await;
    let events = timeline(&sync, &room);
    assert_eq!(events.len(), 2, "{sync}");
    for event in events {
        assert_eq!(event["type"], "m.room.message");
        assert!(event["content"]["body"].is_string(), "{event}");
    }
}

#[tokio::test]
async fn left_users_read_state_as_of_their_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Before" }))
        .await;
    ok(&server.join(&bob, &room).await, "join");
    ok(&leave(&server, &bob, &room).await, "leave");
    ok(
        &put_state(
            &server,
            &alice,
            &room,
            "m.room.name",
            "",
            json!({ "name": "After" }),
        )
        .await,
        "rename",
    );
    ok(&server.join(&carol, &room).await, "carol joins");
    let current_after = next_batch(&server.sync(&alice, "timeout=0").await);
    assert_eq!(
        state_content(&server, &bob, &room, "m.room.name", "").await["name"],
        "Before"
    );
    let (status, state) = server.get(&room_path(&room, "/state"), &bob.token).await;
    assert_eq!(status, 200);
    assert_eq!(
        find(&arr(&state), "m.room.name", "").map(|e| e["content"]["name"].clone()),
        Some(json!("Before"))
    );
    let (status, members) = server.get(&room_path(&room, "/members"), &bob.token).await;
    assert_eq!(status, 200, "{members}");
    assert!(
        find(&arr(&members["chunk"]), "m.room.member", &carol.user_id).is_none(),
        "carol joined after bob left: {members}"
    );
    // `at` a later token must not reveal later membership either.
    let (status, members) = server
        .get(
            &room_path(&room, &format!("/members?at={}", enc(&current_after))),
            &bob.token,
        )
        .await;
    assert_eq!(status, 200, "{members}");
    assert!(
        find(&arr(&members["chunk"]), "m.room.member", &carol.user_id).is_none(),
        "/members?at after the leave leaks later state: {members}"
    );
}
