//! `/search` (issue 3): full-text search over room events with tantivy — keys, ordering,
//! filters, pagination, context, visibility, redactions, durability across restarts and
//! `kill -9`, and bad input.

mod common;

use std::collections::HashSet;

use common::{TestServer, User, assert_error, enc};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SEARCH: &str = "/_matrix/client/v3/search";

async fn search(server: &TestServer, user: &User, criteria: Value) -> Value {
    search_page(server, user, criteria, None).await
}

async fn search_page(
    server: &TestServer,
    user: &User,
    criteria: Value,
    next_batch: Option<&str>,
) -> Value {
    let path = match next_batch {
        Some(token) => format!("{SEARCH}?next_batch={}", enc(token)),
        None => SEARCH.to_owned(),
    };
    let (status, body) = server
        .post(
            &path,
            &user.token,
            json!({ "search_categories": { "room_events": criteria } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "search: {body}");
    body["search_categories"]["room_events"].clone()
}

/// Event ids of the results, in order.
fn ids(result: &Value) -> Vec<String> {
    result["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| {
                    r["result"]["event_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn term(server: &TestServer, user: &User, term: &str) -> Vec<String> {
    ids(&search(server, user, json!({ "search_term": term })).await)
}

#[tokio::test]
async fn finds_messages_names_and_topics() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(
            &alice,
            json!({ "name": "Quantum Physics Club", "topic": "weekly zebra meetups" }),
        )
        .await;
    let message = server
        .send_text(&alice, &room, "Hello xylophone World")
        .await;

    // Body, name, topic; case-insensitive.
    assert_eq!(
        term(&server, &alice, "XYLOPHONE").await,
        vec![message.clone()]
    );
    let by_name = search(&server, &alice, json!({ "search_term": "quantum" })).await;
    assert_eq!(by_name["results"][0]["result"]["type"], "m.room.name");
    assert_eq!(by_name["count"], 1);
    let by_topic = search(&server, &alice, json!({ "search_term": "zebra" })).await;
    assert_eq!(by_topic["results"][0]["result"]["type"], "m.room.topic");

    // Word prefixes match, and the matched words are highlighted.
    let prefixed = search(&server, &alice, json!({ "search_term": "xylo" })).await;
    assert_eq!(ids(&prefixed), vec![message.clone()]);
    let highlights: Vec<&str> = prefixed["highlights"]
        .as_array()
        .expect("highlights")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(highlights.contains(&"xylophone"), "{highlights:?}");

    // Keys restrict the fields searched.
    let body_only = search(
        &server,
        &alice,
        json!({ "search_term": "quantum", "keys": ["content.body"] }),
    )
    .await;
    assert_eq!(ids(&body_only), Vec::<String>::new());
    let name_only = search(
        &server,
        &alice,
        json!({ "search_term": "quantum", "keys": ["content.name"] }),
    )
    .await;
    assert_eq!(name_only["results"].as_array().map(Vec::len), Some(1));

    // All words must match; quoted phrases match in order; `-word` excludes.
    let other = server.send_text(&alice, &room, "World of xylophones").await;
    assert_eq!(
        term(&server, &alice, "hello world").await,
        vec![message.clone()]
    );
    assert_eq!(
        term(&server, &alice, "\"world of\"").await,
        vec![other.clone()]
    );
    assert_eq!(term(&server, &alice, "world -hello").await, vec![other]);
    assert!(term(&server, &alice, "nothingmatcheshere").await.is_empty());

    // The result is a client event with room_id.
    let result = &prefixed["results"][0];
    assert_eq!(result["result"]["room_id"], room.as_str());
    assert_eq!(result["result"]["content"]["body"], "Hello xylophone World");
    assert!(result["rank"].is_number());
    assert!(result.get("context").is_none(), "no context unless asked");
}

#[tokio::test]
async fn rank_and_recent_ordering() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let strong = server.send_text(&alice, &room, "apple apple apple").await;
    let medium = server
        .send_text(&alice, &room, "apple orange pear grape melon kiwi")
        .await;
    let weak = server
        .send_text(
            &alice,
            &room,
            "a long story that mentions apple only once among many many other words here",
        )
        .await;

    let ranked = search(&server, &alice, json!({ "search_term": "apple" })).await;
    let ranked_ids = ids(&ranked);
    assert_eq!(ranked_ids.len(), 3);
    assert_eq!(ranked_ids[0], strong, "most relevant first");
    assert_eq!(ranked_ids[2], weak, "least relevant last");
    let ranks: Vec<f64> = ranked["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["rank"].as_f64())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");

    let recent = search(
        &server,
        &alice,
        json!({ "search_term": "apple", "order_by": "recent" }),
    )
    .await;
    assert_eq!(ids(&recent), vec![weak, medium, strong]);
}

#[tokio::test]
async fn filters_rooms_senders_and_types() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let first = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let second = server.create_room(&alice, json!({})).await;
    assert_eq!(server.join(&bob, &first).await.0, StatusCode::OK);
    let a = server.send_text(&alice, &first, "banana split").await;
    let b = server.send_text(&bob, &first, "banana bread").await;
    let c = server.send_text(&alice, &second, "banana boat").await;

    let all: HashSet<String> = term(&server, &alice, "banana").await.into_iter().collect();
    assert_eq!(all, HashSet::from([a.clone(), b.clone(), c.clone()]));

    let only_first = search(
        &server,
        &alice,
        json!({ "search_term": "banana", "filter": { "rooms": [first] } }),
    )
    .await;
    let got: HashSet<String> = ids(&only_first).into_iter().collect();
    assert_eq!(got, HashSet::from([a.clone(), b.clone()]));

    let not_first = search(
        &server,
        &alice,
        json!({ "search_term": "banana", "filter": { "not_rooms": [first] } }),
    )
    .await;
    assert_eq!(ids(&not_first), vec![c]);

    let by_bob = search(
        &server,
        &alice,
        json!({ "search_term": "banana", "filter": { "senders": [bob.user_id] } }),
    )
    .await;
    assert_eq!(ids(&by_bob), vec![b]);

    let no_messages = search(
        &server,
        &alice,
        json!({ "search_term": "banana", "filter": { "not_types": ["m.room.message"] } }),
    )
    .await;
    assert!(ids(&no_messages).is_empty());

    // Groups by room, and the rooms' state.
    let grouped = search(
        &server,
        &alice,
        json!({
            "search_term": "banana",
            "groupings": { "group_by": [{ "key": "room_id" }, { "key": "sender" }] },
            "include_state": true,
        }),
    )
    .await;
    let groups = &grouped["groups"]["room_id"];
    assert_eq!(
        groups[first.as_str()]["results"].as_array().map(Vec::len),
        Some(2),
        "{grouped}"
    );
    assert_eq!(
        groups[second.as_str()]["results"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(groups[first.as_str()]["order"].is_number());
    assert_eq!(
        grouped["groups"]["sender"][alice.user_id.as_str()]["results"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let state = grouped["state"][first.as_str()]
        .as_array()
        .expect("state of the first room");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
}

#[tokio::test]
async fn paginates_with_next_batch() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut sent = HashSet::new();
    for i in 0..25 {
        sent.insert(
            server
                .send_text(&alice, &room, &format!("pagination marker {i}"))
                .await,
        );
    }
    for order in ["rank", "recent"] {
        let criteria = json!({
            "search_term": "pagination",
            "order_by": order,
            "filter": { "limit": 10 },
        });
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Vec::new();
        loop {
            let page = search_page(&server, &alice, criteria.clone(), token.as_deref()).await;
            assert_eq!(page["count"], 25, "{order}: {page}");
            let page_ids = ids(&page);
            pages.push(page_ids.len());
            seen.extend(page_ids);
            match page["next_batch"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
            assert!(pages.len() < 10, "{order}: pagination does not end");
        }
        assert_eq!(pages, vec![10, 10, 5], "{order}");
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), 25, "{order}: no duplicates");
        assert_eq!(unique, sent, "{order}: every message once");
        if order == "recent" {
            // Newest first across pages.
            let expected: Vec<String> = {
                let mut by_time = Vec::new();
                for i in (0..25).rev() {
                    let body = format!("pagination marker {i}");
                    by_time.push(body);
                }
                by_time
            };
            let page = search(
                &server,
                &alice,
                json!({ "search_term": "pagination", "order_by": "recent", "filter": { "limit": 25 } }),
            )
            .await;
            let bodies: Vec<String> = page["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| {
                    r["result"]["content"]["body"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            assert_eq!(bodies, expected);
        }
    }
    // A token from one ordering is not valid for the other.
    let first = search(
        &server,
        &alice,
        json!({ "search_term": "pagination", "filter": { "limit": 10 } }),
    )
    .await;
    let token = first["next_batch"].as_str().expect("next_batch");
    let (status, body) = server
        .post(
            &format!("{SEARCH}?next_batch={}", enc(token)),
            &alice.token,
            json!({ "search_categories": { "room_events": { "search_term": "pagination", "order_by": "recent" } } }),
        )
        .await;
    assert_error(&(status, body), 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn context_before_and_after_with_profiles() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&alice.user_id)
            ),
            &alice.token,
            json!({ "displayname": "Alice Liddell" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = server.create_room(&alice, json!({})).await;
    server.send_text(&alice, &room, "first before").await;
    let before = server.send_text(&alice, &room, "second before").await;
    let needle = server.send_text(&alice, &room, "the needle").await;
    let after = server.send_text(&alice, &room, "first after").await;
    server.send_text(&alice, &room, "second after").await;

    let found = search(
        &server,
        &alice,
        json!({
            "search_term": "needle",
            "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
        }),
    )
    .await;
    assert_eq!(ids(&found), vec![needle]);
    let context = &found["results"][0]["context"];
    let before_ids: Vec<&str> = context["events_before"]
        .as_array()
        .expect("events_before")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(before_ids, vec![before.as_str()]);
    let after_ids: Vec<&str> = context["events_after"]
        .as_array()
        .expect("events_after")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(after_ids, vec![after.as_str()]);
    assert!(context["start"].is_string() && context["end"].is_string());
    assert_eq!(
        context["profile_info"][alice.user_id.as_str()]["displayname"],
        "Alice Liddell"
    );

    // The default context is 5 each side.
    let default = search(
        &server,
        &alice,
        json!({ "search_term": "needle", "event_context": {} }),
    )
    .await;
    let context = &default["results"][0]["context"];
    assert_eq!(context["events_after"].as_array().map(Vec::len), Some(2));
    assert!(
        context["events_before"]
            .as_array()
            .is_some_and(|e| e.len() == 5)
    );
    assert!(context.get("profile_info").is_none());
}

#[tokio::test]
async fn only_events_the_user_may_see() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;

    // A room carol is not in: nothing from it.
    let private = server.create_room(&alice, json!({})).await;
    server
        .send_text(&alice, &private, "confidential walrus")
        .await;
    assert!(term(&server, &carol, "walrus").await.is_empty());
    let filtered = search(
        &server,
        &carol,
        json!({ "search_term": "walrus", "filter": { "rooms": [private] } }),
    )
    .await;
    assert!(ids(&filtered).is_empty());
    assert_eq!(filtered["count"], 0, "count does not leak other rooms");

    // `joined` visibility: a late joiner sees only what follows the join.
    let room = server
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
    server.send_text(&alice, &room, "early penguin").await;
    assert_eq!(server.join(&bob, &room).await.0, StatusCode::OK);
    let late = server.send_text(&alice, &room, "late penguin").await;
    assert_eq!(term(&server, &bob, "penguin").await, vec![late.clone()]);
    assert_eq!(term(&server, &alice, "penguin").await.len(), 2);

    // After leaving, later events are not found; earlier visible ones still are.
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.send_text(&alice, &room, "penguin after leave").await;
    assert_eq!(term(&server, &bob, "penguin").await, vec![late]);

    // `shared` visibility (the default): a late joiner sees the history.
    let shared = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let old = server.send_text(&alice, &shared, "ancient narwhal").await;
    assert!(term(&server, &carol, "narwhal").await.is_empty());
    assert_eq!(server.join(&carol, &shared).await.0, StatusCode::OK);
    assert_eq!(term(&server, &carol, "narwhal").await, vec![old]);
}

#[tokio::test]
async fn redacted_events_disappear() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let keep = server.send_text(&alice, &room, "keep this platypus").await;
    let gone = server
        .send_text(&alice, &room, "delete this platypus")
        .await;
    assert_eq!(term(&server, &alice, "platypus").await.len(), 2);
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&gone)
            ),
            &alice.token,
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(term(&server, &alice, "platypus").await, vec![keep.clone()]);
    assert!(term(&server, &alice, "delete").await.is_empty());
    // Still gone after a restart (the index is not rebuilt with the old text).
    server.terminate();
    server.spawn().await;
    assert_eq!(term(&server, &alice, "platypus").await, vec![keep]);
}

#[tokio::test]
async fn index_survives_restart_and_kill() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut sent = HashSet::new();
    for i in 0..10 {
        sent.insert(
            server
                .send_text(&alice, &room, &format!("durable lemur {i}"))
                .await,
        );
    }
    assert_eq!(term(&server, &alice, "lemur").await.len(), 10);

    // Clean restart.
    assert_eq!(server.terminate(), Some(0));
    server.spawn().await;
    let found: HashSet<String> = term(&server, &alice, "lemur").await.into_iter().collect();
    assert_eq!(found, sent);
    assert!(
        server
            .dir
            .path()
            .join("db-search")
            .join("meta.json")
            .exists(),
        "the index lives next to the database"
    );

    // kill -9 right after sending: the index has not committed these yet.
    for i in 10..40 {
        sent.insert(
            server
                .send_text(&alice, &room, &format!("durable lemur {i}"))
                .await,
        );
    }
    server.kill_hard();
    server.spawn().await;
    let page = search(
        &server,
        &alice,
        json!({ "search_term": "lemur", "filter": { "limit": 100 } }),
    )
    .await;
    assert_eq!(page["count"], 40, "{page}");
    let found: HashSet<String> = ids(&page).into_iter().collect();
    assert_eq!(found, sent);

    // A deleted index is rebuilt from the database.
    server.kill_hard();
    std::fs::remove_dir_all(server.dir.path().join("db-search")).expect("remove index");
    server.spawn().await;
    let found: HashSet<String> = ids(&search(
        &server,
        &alice,
        json!({ "search_term": "lemur", "filter": { "limit": 100 } }),
    )
    .await)
    .into_iter()
    .collect();
    assert_eq!(found, sent);
}

#[tokio::test]
async fn bad_input() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let post = |body: Value| server.post(SEARCH, &alice.token, body);

    assert_error(
        &post(json!({ "search_categories": { "room_events": {} } })).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(&post(json!({})).await, 400, "M_BAD_JSON");
    assert_error(
        &post(json!({ "search_categories": { "room_events": { "search_term": 5 } } })).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &post(json!({ "search_categories": { "emoji": { "search_term": "x" } } })).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &post(json!({ "search_categories": { "room_events": { "search_term": "x", "order_by": "random" } } }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &post(json!({ "search_categories": { "room_events": { "search_term": "x", "keys": ["content.url"] } } }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .post(
                &format!("{SEARCH}?next_batch=garbage"),
                &alice.token,
                json!({ "search_categories": { "room_events": { "search_term": "x" } } }),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    for token in [
        "r18446744073709551615",
        "r99999999999999999999999",
        "t-1",
        "",
        "r",
    ] {
        assert_error(
            &server
                .post(
                    &format!("{SEARCH}?next_batch={token}"),
                    &alice.token,
                    json!({ "search_categories": { "room_events": { "search_term": "x" } } }),
                )
                .await,
            400,
            "M_INVALID_PARAM",
        );
    }
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            SEARCH,
            None,
            Some(json!({ "search_categories": { "room_events": { "search_term": "x" } } })),
        )
        .await;
    assert_error(&(status, body), 401, "M_MISSING_TOKEN");

    // Odd search terms are not errors.
    let room = server.create_room(&alice, json!({})).await;
    server.send_text(&alice, &room, "some text").await;
    for odd in [
        "",
        "\"",
        "-",
        "--",
        "\"\"",
        "-\"",
        "   ",
        "!!!",
        "*",
        "a",
        "ü",
        "\u{1F600}",
        "x\"y\"z",
        "-text",
        "(",
        "[]",
        "AND OR NOT",
    ] {
        let (status, body) =
            post(json!({ "search_categories": { "room_events": { "search_term": odd } } })).await;
        assert_eq!(status, StatusCode::OK, "{odd:?}: {body}");
    }
    let long = "word ".repeat(2000);
    let (status, body) =
        post(json!({ "search_categories": { "room_events": { "search_term": long } } })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An empty category list is an empty answer.
    let (status, body) = post(json!({ "search_categories": {} })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn finds_cjk_text() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let japanese = server
        .send_text(&alice, &room, "今日は東京で会議があります")
        .await;
    let chinese = server.send_text(&alice, &room, "我们明天去北京").await;
    assert_eq!(term(&server, &alice, "東京").await, vec![japanese.clone()]);
    assert_eq!(term(&server, &alice, "会議").await, vec![japanese]);
    assert_eq!(term(&server, &alice, "北京").await, vec![chinese]);
    assert!(term(&server, &alice, "京東").await.is_empty());
}

#[tokio::test]
async fn a_search_right_after_a_send_finds_it() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut tasks = Vec::new();
    for task in 0..4 {
        let (server, alice, room) = (server.clone(), alice.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let word = format!("fresh{task}x{i}");
                let sent = server
                    .send_text(&alice, &room, &format!("just sent {word}"))
                    .await;
                assert_eq!(term(&server, &alice, &word).await, vec![sent], "{word}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(
        search(&server, &alice, json!({ "search_term": "just sent" })).await["count"],
        60
    );
}
