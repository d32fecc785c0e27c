//! Simplified sliding sync (MSC4186) through HTTP, as matrix-rust-sdk uses it.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn sliding(
    server: &TestServer,
    user: &User,
    pos: Option<&str>,
    timeout_ms: Option<u64>,
    body: &Value,
) -> (u16, Value) {
    let mut query = Vec::new();
    if let Some(pos) = pos {
        query.push(format!("pos={}", enc(pos)));
    }
    if let Some(timeout) = timeout_ms {
        query.push(format!("timeout={timeout}"));
    }
    let path = if query.is_empty() {
        SLIDING.to_owned()
    } else {
        format!("{SLIDING}?{}", query.join("&"))
    };
    let (status, response) = server.post(&path, &user.token, body.clone()).await;
    (status.as_u16(), response)
}

fn list_body(range_end: u64, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": {
            "all": {
                "ranges": [[0, range_end]],
                "required_state": [["m.room.create", ""], ["m.room.member", "$ME"]],
                "timeline_limit": timeline_limit,
            }
        }
    })
}

fn room_ids(response: &Value) -> Vec<String> {
    response["rooms"]
        .as_object()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn initial_list_is_ordered_by_activity_and_ranged() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        rooms.push(
            server
                .create_room(&alice, json!({ "name": format!("room {i}") }))
                .await,
        );
    }
    // Room 1 becomes the most recently active.
    server.send_text(&alice, &rooms[1], "latest").await;

    let (status, response) = sliding(&server, &alice, None, None, &list_body(2, 1)).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["lists"]["all"]["count"], 5, "{response}");
    let returned = room_ids(&response);
    assert_eq!(
        returned.len(),
        3,
        "range [0,2] selects three rooms: {response}"
    );
    assert!(
        returned.contains(&rooms[1])
            && returned.contains(&rooms[4])
            && returned.contains(&rooms[3]),
        "{response}"
    );
    let top = &response["rooms"][&rooms[1]];
    assert_eq!(top["initial"], true);
    assert_eq!(top["name"], "room 1");
    assert_eq!(bodies(top), vec!["latest"], "timeline_limit 1: {top}");
    assert_eq!(top["limited"], true, "{top}");
    let state_types: Vec<&str> = top["required_state"]
        .as_array()
        .expect("required_state")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        state_types.contains(&"m.room.create") && state_types.contains(&"m.room.member"),
        "{top}"
    );
    assert!(
        !state_types.contains(&"m.room.name"),
        "only the required state: {top}"
    );
    let bumps: Vec<u64> = [&rooms[1], &rooms[4], &rooms[3]]
        .iter()
        .map(|r| {
            response["rooms"][r.as_str()]["bump_stamp"]
                .as_u64()
                .expect("bump")
        })
        .collect();
    assert!(
        bumps[0] > bumps[1] && bumps[1] > bumps[2],
        "bump stamps follow activity: {bumps:?}"
    );
}

#[tokio::test]
async fn incremental_returns_only_changed_rooms_and_long_polls() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let quiet = server.create_room(&alice, json!({ "name": "quiet" })).await;
    let busy = server
        .create_room(&alice, json!({ "name": "busy", "preset": "public_chat" }))
        .await;
    server.join(&bob, &busy).await;
    let (_, first) = sliding(&server, &alice, None, None, &list_body(10, 5)).await;
    let pos = first["pos"].as_str().expect("pos").to_owned();
    assert_eq!(room_ids(&first).len(), 2);

    // Nothing happens: the request holds for its timeout and returns no rooms.
    let started = Instant::now();
    let (status, idle) = sliding(&server, &alice, Some(&pos), Some(800), &list_body(10, 5)).await;
    assert_eq!(status, 200, "{idle}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "held for the timeout"
    );
    assert!(
        room_ids(&idle).is_empty(),
        "unchanged rooms are not repeated: {idle}"
    );
    let pos = idle["pos"].as_str().expect("pos").to_owned();

    // Bob speaks in the busy room while alice long-polls.
    let poll = {
        let base = server.base.clone();
        let token = alice.token.clone();
        let pos = pos.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response: Value = reqwest::Client::new()
                .post(format!("{base}{SLIDING}?pos={}&timeout=10000", enc(&pos)))
                .bearer_auth(token)
                .json(&list_body(10, 5))
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            (started.elapsed(), response)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.send_text(&bob, &busy, "hello alice").await;
    let (elapsed, update) = poll.await.expect("poll");
    assert!(
        elapsed < Duration::from_secs(5),
        "woken by the message: {elapsed:?}"
    );
    assert_eq!(room_ids(&update), vec![busy.clone()], "{update}");
    let room = &update["rooms"][&busy];
    assert!(room.get("initial").is_none(), "{room}");
    assert_eq!(
        bodies(room),
        vec!["hello alice"],
        "only the new event: {room}"
    );
    assert_eq!(room["num_live"], 1, "{room}");
    assert!(!room_ids(&update).contains(&quiet));
    assert_eq!(room["notification_count"], 1, "{room}");
}

#[tokio::test]
async fn unknown_pos_is_m_unknown_pos() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, response) =
        sliding(&server, &alice, Some("12_999"), Some(0), &list_body(1, 1)).await;
    assert_eq!(status, 400, "{response}");
    assert_eq!(response["errcode"], "M_UNKNOWN_POS");
    let (status, response) =
        sliding(&server, &alice, Some("nonsense"), Some(0), &list_body(1, 1)).await;
    assert_eq!(status, 400);
    assert_eq!(response["errcode"], "M_UNKNOWN_POS");
}

#[tokio::test]
async fn filters_dm_invite_encrypted_and_space() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dm = server
        .create_room(
            &alice,
            json!({ "is_direct": true, "invite": [bob.user_id] }),
        )
        .await;
    let encrypted = server
        .create_room(&alice, json!({ "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }))
        .await;
    let space = server
        .create_room(&alice, json!({ "creation_content": { "type": "m.space" } }))
        .await;
    let plain = server.create_room(&alice, json!({})).await;
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.direct",
                enc(&alice.user_id)
            ),
            &alice.token,
            json!({ bob.user_id.clone(): [dm] }),
        )
        .await;
    assert_eq!(status, 200);

    let filtered = |filters: Value| json!({ "lists": { "l": { "ranges": [[0, 20]], "required_state": [], "timeline_limit": 0, "filters": filters } } });
    let run = |body: Value| {
        let server = &server;
        let alice = &alice;
        async move {
            let (_, response) = sliding(server, alice, None, None, &body).await;
            let mut ids = room_ids(&response);
            ids.sort();
            ids
        }
    };
    assert_eq!(
        run(filtered(json!({ "is_dm": true }))).await,
        vec![dm.clone()]
    );
    let mut not_dm = run(filtered(json!({ "is_dm": false }))).await;
    not_dm.sort();
    let mut expected = vec![encrypted.clone(), space.clone(), plain.clone()];
    expected.sort();
    assert_eq!(not_dm, expected);
    assert_eq!(
        run(filtered(json!({ "is_encrypted": true }))).await,
        vec![encrypted.clone()]
    );
    assert_eq!(
        run(filtered(json!({ "room_types": ["m.space"] }))).await,
        vec![space.clone()]
    );
    assert!(
        !run(filtered(json!({ "not_room_types": ["m.space"] })))
            .await
            .contains(&space)
    );
    // `spaces`: only the children of the space (an m.space.child with `via`).
    assert_eq!(
        run(filtered(json!({ "spaces": [space] }))).await,
        Vec::<String>::new()
    );
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(&space),
                enc(&plain)
            ),
            &alice.token,
            json!({ "via": ["localhost"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        run(filtered(json!({ "spaces": [space] }))).await,
        vec![plain.clone()]
    );

    // Bob: the DM invite, as stripped state.
    let (_, response) = sliding(
        &server,
        &bob,
        None,
        None,
        &filtered(json!({ "is_invite": true })),
    )
    .await;
    assert_eq!(room_ids(&response), vec![dm.clone()], "{response}");
    let invite = &response["rooms"][&dm];
    assert_eq!(invite["membership"], "invite");
    assert!(
        invite["invite_state"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{invite}"
    );
    assert!(
        invite.get("timeline").is_none(),
        "no timeline before joining: {invite}"
    );
}

#[tokio::test]
async fn subscriptions_lazy_members_and_extensions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "sub" }))
        .await;
    server.join(&bob, &room).await;
    let event = server.send_text(&bob, &room, "from bob").await;
    let (status, _) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&event)
            ),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.setting",
                enc(&alice.user_id)
            ),
            &alice.token,
            json!({ "on": true }),
        )
        .await;
    assert_eq!(status, 200);

    let body = json!({
        "room_subscriptions": {
            room.clone(): { "required_state": [["m.room.member", "$LAZY"], ["m.room.name", ""]], "timeline_limit": 3 }
        },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true },
            "typing": { "enabled": true },
            "e2ee": { "enabled": true },
            "to_device": { "enabled": true },
        }
    });
    let (status, response) = sliding(&server, &alice, None, None, &body).await;
    assert_eq!(status, 200, "{response}");
    let sub = &response["rooms"][&room];
    assert_eq!(sub["name"], "sub");
    assert!(sub.get("lists").is_none(), "subscription only: {sub}");
    let members: Vec<&str> = sub["required_state"]
        .as_array()
        .expect("required_state")
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(
        members.contains(&bob.user_id.as_str()),
        "lazy member of a timeline sender: {sub}"
    );
    let global: Vec<&str> = response["extensions"]["account_data"]["global"]
        .as_array()
        .expect("global account data")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(global.contains(&"org.example.setting"), "{response}");
    let receipt = &response["extensions"]["receipts"]["rooms"][&room];
    assert_eq!(receipt["type"], "m.receipt", "{response}");
    assert!(
        receipt["content"][&event]["m.read"][&bob.user_id].is_object(),
        "{receipt}"
    );
    assert!(
        response["extensions"]["e2ee"]["device_lists"].is_object(),
        "{response}"
    );
    assert!(
        response["extensions"]["to_device"]["next_batch"].is_string(),
        "{response}"
    );

    // Typing shows up incrementally.
    let pos = response["pos"].as_str().expect("pos").to_owned();
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&bob.user_id)
            ),
            &bob.token,
            json!({ "typing": true, "timeout": 10000 }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, update) = sliding(&server, &alice, Some(&pos), Some(5000), &body).await;
    let typing = &update["extensions"]["typing"]["rooms"][&room];
    assert_eq!(
        typing["content"]["user_ids"],
        json!([bob.user_id]),
        "{update}"
    );
}

#[tokio::test]
async fn growing_the_range_sends_only_new_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for i in 0..6 {
        server
            .create_room(&alice, json!({ "name": format!("r{i}") }))
            .await;
    }
    let (_, first) = sliding(&server, &alice, None, None, &list_body(1, 1)).await;
    assert_eq!(room_ids(&first).len(), 2);
    let pos = first["pos"].as_str().expect("pos").to_owned();
    let (_, grown) = sliding(&server, &alice, Some(&pos), Some(0), &list_body(5, 1)).await;
    let new_rooms = room_ids(&grown);
    assert_eq!(
        new_rooms.len(),
        4,
        "only the four rooms not sent yet: {grown}"
    );
    assert!(new_rooms.iter().all(|r| !room_ids(&first).contains(r)));
    assert!(
        new_rooms
            .iter()
            .all(|r| grown["rooms"][r]["initial"] == true)
    );
}
