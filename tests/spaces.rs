//! Spaces (`/rooms/{roomId}/hierarchy`) and room summaries (`/room_summary`) (issue 3).

mod common;

use common::{TestServer, User, assert_error, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create_space(server: &TestServer, user: &User, name: &str) -> String {
    server
        .create_room(
            user,
            json!({
                "preset": "public_chat",
                "name": name,
                "creation_content": { "type": "m.space" },
            }),
        )
        .await
}

async fn add_child(server: &TestServer, user: &User, space: &str, child: &str, extra: Value) {
    let mut content = json!({ "via": ["localhost"] });
    if let (Some(content), Some(extra)) = (content.as_object_mut(), extra.as_object()) {
        content.extend(extra.clone());
    }
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(space),
                enc(child)
            ),
            &user.token,
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn hierarchy(
    server: &TestServer,
    user: &User,
    space: &str,
    query: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v1/rooms/{}/hierarchy?{query}", enc(space)),
            &user.token,
        )
        .await
}

fn names(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

struct Tree {
    server: TestServer,
    alice: User,
    bob: User,
    root: String,
}

/// Root space → [A (order "b"), Sub (order "a", suggested) → [B], Secret (private), Z (no order)]
async fn tree() -> Tree {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let root = create_space(&server, &alice, "Root").await;
    let sub = create_space(&server, &alice, "Sub").await;
    let a = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "A", "topic": "room a" }),
        )
        .await;
    let b = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "B" }))
        .await;
    let z = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Z" }))
        .await;
    let secret = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Secret" }),
        )
        .await;
    add_child(&server, &alice, &root, &a, json!({ "order": "b" })).await;
    add_child(
        &server,
        &alice,
        &root,
        &sub,
        json!({ "order": "a", "suggested": true }),
    )
    .await;
    add_child(&server, &alice, &root, &secret, json!({})).await;
    add_child(&server, &alice, &root, &z, json!({})).await;
    add_child(&server, &alice, &sub, &b, json!({ "suggested": true })).await;
    // A child link without `via` is a removed child; an unknown (remote) child is skipped.
    add_child(&server, &alice, &sub, "!unknown:example.org", json!({})).await;
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(&root),
                enc(&b)
            ),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Tree {
        server,
        alice,
        bob,
        root,
    }
}

#[tokio::test]
async fn nested_spaces_depth_and_suggested() {
    let t = tree().await;
    // Depth-first, children in the spec's order: ordered ones first (by order), then by
    // timestamp. Bob is in none of these rooms: the private one is left out.
    let (status, page) = hierarchy(&t.server, &t.bob, &t.root, "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(names(&page), vec!["Root", "Sub", "B", "A", "Z"]);
    assert!(page.get("next_batch").is_none());
    let root = &page["rooms"][0];
    assert_eq!(root["room_type"], "m.space");
    assert_eq!(root["join_rule"], "public");
    assert_eq!(root["num_joined_members"], 1);
    assert_eq!(root["children_state"].as_array().map(Vec::len), Some(4));
    let child = &root["children_state"][0];
    assert_eq!(child["type"], "m.space.child");
    assert!(child["origin_server_ts"].is_number());
    assert_eq!(child["content"]["via"], json!(["localhost"]));
    let a = &page["rooms"][3];
    assert_eq!(a["topic"], "room a");
    assert_eq!(a["children_state"], json!([]), "not a space");

    // Alice is in the private room: she sees it.
    let (_, page) = hierarchy(&t.server, &t.alice, &t.root, "").await;
    assert_eq!(names(&page), vec!["Root", "Sub", "B", "A", "Secret", "Z"]);

    // max_depth.
    let (_, page) = hierarchy(&t.server, &t.bob, &t.root, "max_depth=1").await;
    assert_eq!(names(&page), vec!["Root", "Sub", "A", "Z"]);
    let (_, page) = hierarchy(&t.server, &t.bob, &t.root, "max_depth=0").await;
    assert_eq!(names(&page), vec!["Root"]);

    // suggested_only.
    let (_, page) = hierarchy(&t.server, &t.bob, &t.root, "suggested_only=true").await;
    assert_eq!(names(&page), vec!["Root", "Sub", "B"]);
    assert_eq!(
        page["rooms"][0]["children_state"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn hierarchy_pagination_and_errors() {
    let t = tree().await;
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let query = match &from {
            Some(token) => format!("limit=2&from={}", enc(token)),
            None => "limit=2".to_owned(),
        };
        let (status, page) = hierarchy(&t.server, &t.bob, &t.root, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = names(&page);
        assert!(got.len() <= 2);
        seen.extend(got);
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
        assert!(seen.len() < 20, "pagination does not end");
    }
    assert_eq!(seen, vec!["Root", "Sub", "B", "A", "Z"]);

    // Parameters cannot change between pages; tokens must be ours.
    let (_, first) = hierarchy(&t.server, &t.bob, &t.root, "limit=2").await;
    let token = first["next_batch"].as_str().expect("next_batch");
    let changed = hierarchy(
        &t.server,
        &t.bob,
        &t.root,
        &format!("limit=2&max_depth=1&from={}", enc(token)),
    )
    .await;
    assert_error(&changed, 400, "M_INVALID_PARAM");
    let changed = hierarchy(
        &t.server,
        &t.bob,
        &t.root,
        &format!("limit=2&suggested_only=true&from={}", enc(token)),
    )
    .await;
    assert_error(&changed, 400, "M_INVALID_PARAM");
    assert_error(
        &hierarchy(&t.server, &t.bob, &t.root, "from=nonsense").await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &hierarchy(&t.server, &t.bob, &t.root, "limit=0").await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &hierarchy(&t.server, &t.bob, &t.root, "limit=-1").await,
        400,
        "M_INVALID_PARAM",
    );

    // A root the requester may not see, and an unknown one.
    let private_space = t
        .server
        .create_room(
            &t.alice,
            json!({ "preset": "private_chat", "creation_content": { "type": "m.space" } }),
        )
        .await;
    assert_error(
        &hierarchy(&t.server, &t.bob, &private_space, "").await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &hierarchy(&t.server, &t.bob, "!nothing:localhost", "").await,
        403,
        "M_FORBIDDEN",
    );
    let (status, _) = t
        .server
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&t.root)),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Cycles end.
    add_child(&t.server, &t.alice, &private_space, &t.root, json!({})).await;
    add_child(&t.server, &t.alice, &t.root, &private_space, json!({})).await;
    let (status, page) = hierarchy(&t.server, &t.alice, &t.root, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["rooms"].as_array().map(Vec::len), Some(7));
}

#[tokio::test]
async fn room_summary() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let public = server
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "name": "Lobby",
                "topic": "Say hi",
                "room_alias_name": "lobby",
            }),
        )
        .await;
    let private = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Back office" }),
        )
        .await;

    for path in [
        format!("/_matrix/client/v1/room_summary/{}", enc(&public)),
        format!(
            "/_matrix/client/v1/room_summary/{}",
            enc("#lobby:localhost")
        ),
        format!(
            "/_matrix/client/unstable/im.nheko.summary/rooms/{}/summary",
            enc(&public)
        ),
        format!(
            "/_matrix/client/unstable/im.nheko.summary/summary/{}",
            enc(&public)
        ),
    ] {
        let (status, body) = server.get(&path, &bob.token).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["room_id"], public.as_str());
        assert_eq!(body["name"], "Lobby");
        assert_eq!(body["topic"], "Say hi");
        assert_eq!(body["canonical_alias"], "#lobby:localhost");
        assert_eq!(body["join_rule"], "public");
        assert_eq!(body["num_joined_members"], 1);
        assert_eq!(body["membership"], "leave");
        assert!(body["room_version"].is_string());
    }
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v1/room_summary/{}", enc(&public)),
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["membership"], "join");

    // Without a token: public rooms only, and no membership.
    let (status, body) = server
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/room_summary/{}", enc(&public)),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("membership").is_none());
    let (status, body) = server
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/room_summary/{}", enc(&private)),
            None,
            None,
        )
        .await;
    assert_error(&(status, body), 404, "M_NOT_FOUND");

    // A private room is hidden from non-members, visible once invited.
    let path = format!("/_matrix/client/v1/room_summary/{}", enc(&private));
    assert_error(&server.get(&path, &bob.token).await, 404, "M_NOT_FOUND");
    assert_eq!(
        server.invite(&alice, &private, &bob.user_id).await.0,
        StatusCode::OK
    );
    let (status, body) = server.get(&path, &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["membership"], "invite");
    assert_eq!(body["join_rule"], "invite");

    // Unknown rooms and aliases; bad ids.
    for missing in ["!nothing:localhost", "#nothing:localhost"] {
        assert_error(
            &server
                .get(
                    &format!("/_matrix/client/v1/room_summary/{}", enc(missing)),
                    &bob.token,
                )
                .await,
            404,
            "M_NOT_FOUND",
        );
    }
    let (status, _) = server
        .get("/_matrix/client/v1/room_summary/not-a-room", &bob.token)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
