//! The public room directory (`/publicRooms`) and the user directory
//! (`/user_directory/search`) (issue 3).

mod common;

use std::collections::HashSet;

use common::{TestServer, User, assert_error, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PUBLIC_ROOMS: &str = "/_matrix/client/v3/publicRooms";
const USER_SEARCH: &str = "/_matrix/client/v3/user_directory/search";

fn room_ids(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .map(|chunk| {
            chunk
                .iter()
                .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn public_rooms(server: &TestServer, user: &User, body: Value) -> Value {
    let (status, page) = server.post(PUBLIC_ROOMS, &user.token, body).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page
}

async fn set_visibility(server: &TestServer, user: &User, room: &str, visibility: &str) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(room)),
            &user.token,
            json!({ "visibility": visibility }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn publish_and_unpublish() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let published = server
        .create_room(
            &alice,
            json!({
                "visibility": "public",
                "preset": "public_chat",
                "name": "Rustaceans",
                "topic": "Crabs welcome",
                "room_alias_name": "rust",
            }),
        )
        .await;
    let unlisted = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Hidden" }))
        .await;
    assert_eq!(server.join(&bob, &published).await.0, StatusCode::OK);

    // Unauthenticated GET lists published rooms only.
    let (status, page) = server.request(Method::GET, PUBLIC_ROOMS, None, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(room_ids(&page), vec![published.clone()]);
    assert_eq!(page["total_room_count_estimate"], 1);
    let chunk = &page["chunk"][0];
    assert_eq!(chunk["name"], "Rustaceans");
    assert_eq!(chunk["topic"], "Crabs welcome");
    assert_eq!(chunk["canonical_alias"], "#rust:localhost");
    assert_eq!(chunk["num_joined_members"], 2);
    assert_eq!(chunk["world_readable"], false);
    assert_eq!(chunk["guest_can_join"], false);
    assert_eq!(chunk["join_rule"], "public");
    assert!(chunk.get("room_type").is_none());

    // Publishing and unpublishing through /directory/list/room.
    set_visibility(&server, &alice, &unlisted, "public").await;
    let both: HashSet<String> = room_ids(&public_rooms(&server, &alice, json!({})).await)
        .into_iter()
        .collect();
    assert_eq!(both, HashSet::from([published.clone(), unlisted.clone()]));
    set_visibility(&server, &alice, &published, "private").await;
    let page = public_rooms(&server, &bob, json!({})).await;
    assert_eq!(room_ids(&page), vec![unlisted]);

    // Bob (no power) cannot publish.
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&published)),
            &bob.token,
            json!({ "visibility": "public" }),
        )
        .await;
    assert_error(&(status, body), 403, "M_FORBIDDEN");

    // Another server's directory needs federation; bad tokens are bad params.
    let (status, body) = server
        .request(
            Method::GET,
            &format!("{PUBLIC_ROOMS}?server=example.org"),
            None,
            None,
        )
        .await;
    assert_error(&(status, body), 404, "M_NOT_FOUND");
    let (status, body) = server
        .request(
            Method::GET,
            &format!("{PUBLIC_ROOMS}?server=localhost"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .request(
            Method::GET,
            &format!("{PUBLIC_ROOMS}?since=xyz"),
            None,
            None,
        )
        .await;
    assert_error(&(status, body), 400, "M_INVALID_PARAM");
    let (status, body) = server
        .request(Method::POST, PUBLIC_ROOMS, None, Some(json!({})))
        .await;
    assert_error(&(status, body), 401, "M_MISSING_TOKEN");
    let (status, body) = server
        .post(PUBLIC_ROOMS, &alice.token, json!({ "limit": "ten" }))
        .await;
    assert_error(&(status, body), 400, "M_BAD_JSON");
}

#[tokio::test]
async fn pagination_filter_and_room_types() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut rooms = Vec::new();
    for (i, name) in [
        "Alpha Hikers",
        "Beta Bakers",
        "Gamma Gardeners",
        "Delta Divers",
    ]
    .iter()
    .enumerate()
    {
        rooms.push(
            server
                .create_room(
                    &alice,
                    json!({
                        "visibility": "public",
                        "preset": "public_chat",
                        "name": name,
                        "topic": format!("topic number {i}"),
                    }),
                )
                .await,
        );
    }
    let space = server
        .create_room(
            &alice,
            json!({
                "visibility": "public",
                "preset": "public_chat",
                "name": "Outdoor Space",
                "creation_content": { "type": "m.space" },
            }),
        )
        .await;

    // Pages of two: 2 + 2 + 1, with prev_batch going back.
    let first = public_rooms(&server, &alice, json!({ "limit": 2 })).await;
    assert_eq!(first["total_room_count_estimate"], 5);
    assert_eq!(room_ids(&first).len(), 2);
    assert!(first.get("prev_batch").is_none());
    let next = first["next_batch"].as_str().expect("next_batch");
    let second = public_rooms(&server, &alice, json!({ "limit": 2, "since": next })).await;
    assert_eq!(room_ids(&second).len(), 2);
    let prev = second["prev_batch"].as_str().expect("prev_batch");
    let back = public_rooms(&server, &alice, json!({ "limit": 2, "since": prev })).await;
    assert_eq!(room_ids(&back), room_ids(&first));
    let next = second["next_batch"].as_str().expect("next_batch");
    let third = public_rooms(&server, &alice, json!({ "limit": 2, "since": next })).await;
    assert_eq!(room_ids(&third).len(), 1);
    assert!(third.get("next_batch").is_none());
    let all: HashSet<String> = [&first, &second, &third]
        .iter()
        .flat_map(|p| room_ids(p))
        .collect();
    assert_eq!(all.len(), 5);

    // The same through GET.
    let (status, page) = server
        .get(&format!("{PUBLIC_ROOMS}?limit=3"), &alice.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(room_ids(&page).len(), 3);
    assert!(page["next_batch"].is_string());

    // generic_search_term over name, topic and alias, case-insensitively.
    let bakers = public_rooms(
        &server,
        &alice,
        json!({ "filter": { "generic_search_term": "BAKERS" } }),
    )
    .await;
    assert_eq!(room_ids(&bakers), vec![rooms[1].clone()]);
    assert_eq!(bakers["total_room_count_estimate"], 1);
    let by_topic = public_rooms(
        &server,
        &alice,
        json!({ "filter": { "generic_search_term": "number 3" } }),
    )
    .await;
    assert_eq!(room_ids(&by_topic), vec![rooms[3].clone()]);

    // room_types: spaces only, or rooms without a type only.
    let spaces = public_rooms(
        &server,
        &alice,
        json!({ "filter": { "room_types": ["m.space"] } }),
    )
    .await;
    assert_eq!(room_ids(&spaces), vec![space.clone()]);
    assert_eq!(spaces["chunk"][0]["room_type"], "m.space");
    let plain = public_rooms(
        &server,
        &alice,
        json!({ "filter": { "room_types": [null] } }),
    )
    .await;
    let plain: HashSet<String> = room_ids(&plain).into_iter().collect();
    assert_eq!(plain, rooms.iter().cloned().collect());
    let either = public_rooms(
        &server,
        &alice,
        json!({ "filter": { "room_types": [null, "m.space"] } }),
    )
    .await;
    assert_eq!(room_ids(&either).len(), 5);
}

async fn find_users(server: &TestServer, user: &User, term: &str) -> Vec<String> {
    let (status, body) = server
        .post(USER_SEARCH, &user.token, json!({ "search_term": term }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|u| u["user_id"].as_str().map(str::to_owned))
        .collect()
}

async fn set_displayname(server: &TestServer, user: &User, name: &str) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&user.user_id)
            ),
            &user.token,
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn user_directory_shared_and_public_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bobby").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;

    // Alice and bob share a private room.
    let shared = server.create_room(&alice, json!({})).await;
    assert_eq!(
        server.invite(&alice, &shared, &bob.user_id).await.0,
        StatusCode::OK
    );
    assert_eq!(server.join(&bob, &shared).await.0, StatusCode::OK);
    // Carol is alone in a private room; dave is in a public one.
    server.create_room(&carol, json!({})).await;
    server
        .create_room(&dave, json!({ "preset": "public_chat" }))
        .await;

    assert_eq!(
        find_users(&server, &alice, "bob").await,
        vec![bob.user_id.clone()]
    );
    assert_eq!(
        find_users(&server, &alice, "BOBBY").await,
        vec![bob.user_id.clone()],
        "case-insensitive"
    );
    assert_eq!(
        find_users(&server, &alice, "@bobby:localhost").await,
        vec![bob.user_id.clone()],
        "full user id"
    );
    assert!(find_users(&server, &alice, "carol").await.is_empty());
    assert_eq!(
        find_users(&server, &alice, "dav").await,
        vec![dave.user_id.clone()]
    );
    // Carol finds dave (public room) but not bob (private).
    assert_eq!(
        find_users(&server, &carol, "dave").await,
        vec![dave.user_id.clone()]
    );
    assert!(find_users(&server, &carol, "bobby").await.is_empty());

    // Display names: word prefixes, changes reflected, old names forgotten.
    set_displayname(&server, &bob, "Robert Builder").await;
    let (status, body) = server
        .post(USER_SEARCH, &alice.token, json!({ "search_term": "build" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"][0]["user_id"], bob.user_id.as_str());
    assert_eq!(body["results"][0]["display_name"], "Robert Builder");
    assert_eq!(body["limited"], false);
    set_displayname(&server, &bob, "Zed Zebra").await;
    assert!(find_users(&server, &alice, "builder").await.is_empty());
    assert_eq!(
        find_users(&server, &alice, "zebra").await,
        vec![bob.user_id.clone()]
    );
    assert_eq!(
        find_users(&server, &alice, "zed zeb").await,
        vec![bob.user_id.clone()]
    );

    // After bob leaves, he is no longer found by alice (no shared or public room).
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&shared)),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(find_users(&server, &alice, "zebra").await.is_empty());

    // Limits, ranking and bad input.
    let erin = server.register("dave2").await;
    server
        .create_room(&erin, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = server
        .post(
            USER_SEARCH,
            &alice.token,
            json!({ "search_term": "dave", "limit": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["limited"], true);
    assert_eq!(
        body["results"][0]["user_id"],
        dave.user_id.as_str(),
        "exact match first"
    );
    let (status, body) = server
        .post(USER_SEARCH, &alice.token, json!({ "search_term": "!!!" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"], json!([]));
    let (status, body) = server.post(USER_SEARCH, &alice.token, json!({})).await;
    assert_error(&(status, body), 400, "M_BAD_JSON");
}
