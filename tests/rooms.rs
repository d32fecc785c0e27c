//! Room versions, createRoom options, aliases, room upgrades and `/capabilities`.

mod common;
#[path = "room_suite_helpers/mod.rs"]
mod helpers;

use common::{TestServer, assert_error, enc, timeline};
use helpers::*;
use serde_json::{Value, json};

const VERSIONS: [&str; 7] = ["6", "7", "8", "9", "10", "11", "12"];

#[tokio::test]
async fn every_supported_room_version_creates_sends_and_syncs() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut rooms = Vec::new();
    for version in VERSIONS {
        let room = server
            .create_room(
                &alice,
                json!({ "room_version": version, "name": format!("v{version}") }),
            )
            .await;
        let create = state_event(&server, &alice, &room, "m.room.create", "").await;
        assert_eq!(
            create["content"]["room_version"], version,
            "v{version} create: {create}"
        );
        assert_eq!(create["sender"], alice.user_id.as_str());
        let version_n: u32 = version.parse().expect("number");
        if version_n >= 11 {
            assert!(
                create["content"].get("creator").is_none(),
                "v{version}: creator must be absent since v11: {create}"
            );
        } else {
            assert_eq!(
                create["content"]["creator"],
                alice.user_id.as_str(),
                "v{version}: {create}"
            );
        }
        let power = state_content(&server, &alice, &room, "m.room.power_levels", "").await;
        if version_n >= 12 {
            assert!(
                !room.contains(':'),
                "v12 room id has no server part: {room}"
            );
            let create_id = create["event_id"].as_str().expect("event id");
            assert_eq!(
                &room[1..],
                &create_id[1..],
                "v12 room id is the create event's hash"
            );
            assert!(
                power["users"].get(&alice.user_id).is_none(),
                "v12 creator must not be in users: {power}"
            );
        } else {
            assert!(room.ends_with(":localhost"), "v{version} room id {room}");
            assert_eq!(power["users"][&alice.user_id], 100, "v{version}: {power}");
        }
        let event_id = server
            .send_text(&alice, &room, &format!("hello v{version}"))
            .await;
        rooms.push((room, event_id, version));
    }
    let sync = server.sync(&alice, "").await;
    for (room, event_id, version) in &rooms {
        let events = timeline(&sync, room);
        let found = events
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("v{version} message missing from sync: {sync}"));
        assert_eq!(found["content"]["body"], format!("hello v{version}"));
    }
}

#[tokio::test]
async fn unsupported_room_versions_are_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for version in ["1", "5", "13", "banana"] {
        let result = server
            .post(
                &format!("{V3}/createRoom"),
                &alice.token,
                json!({ "room_version": version }),
            )
            .await;
        assert_error(&result, 400, "M_UNSUPPORTED_ROOM_VERSION");
    }
}

#[tokio::test]
async fn capabilities_list_versions_6_to_12_with_default_12() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, body) = server
        .get(&format!("{V3}/capabilities"), &alice.token)
        .await;
    assert_eq!(status, 200, "{body}");
    let versions = &body["capabilities"]["m.room_versions"];
    assert_eq!(versions["default"], "12", "{body}");
    let available = versions["available"].as_object().expect("available");
    let mut keys: Vec<&String> = available.keys().collect();
    keys.sort_by_key(|k| k.parse::<u32>().unwrap_or(0));
    assert_eq!(
        keys,
        VERSIONS
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    for version in VERSIONS {
        assert_eq!(available[version], "stable", "{body}");
    }
    // The default is what createRoom uses without room_version.
    let room = server.create_room(&alice, json!({})).await;
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.create", "").await["room_version"],
        "12"
    );
}

#[tokio::test]
async fn v12_creators_outrank_everyone_and_cannot_be_listed_in_power_levels() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "room_version": "12", "preset": "public_chat" }),
        )
        .await;
    ok(&server.join(&bob, &room).await, "bob joins");
    ok(
        &set_power(&server, &alice, &room, &bob.user_id, 100).await,
        "alice raises bob to 100",
    );
    // A PL-100 user still cannot kick or ban the creator.
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
    // The creator can kick a PL-100 user.
    ok(
        &kick(&server, &alice, &room, &bob.user_id, None).await,
        "creator kicks bob",
    );
    // Creators may not appear in power_levels.users.
    let before = state_content(&server, &alice, &room, "m.room.power_levels", "").await;
    let result = set_power(&server, &alice, &room, &alice.user_id, 100).await;
    assert!(
        result.0 == 400 || result.0 == 403,
        "listing a creator in users must be refused: {} {}",
        result.0,
        result.1
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.power_levels", "").await,
        before
    );
}

#[tokio::test]
async fn presets_set_join_rules_history_and_guest_access() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let cases = [
        (json!({ "preset": "private_chat" }), "invite", "can_join"),
        (json!({ "preset": "public_chat" }), "public", "forbidden"),
        (
            json!({ "preset": "trusted_private_chat" }),
            "invite",
            "can_join",
        ),
        (json!({ "visibility": "public" }), "public", "forbidden"),
        (json!({ "visibility": "private" }), "invite", "can_join"),
        (json!({}), "invite", "can_join"),
    ];
    for (body, join_rule, guest) in cases {
        let room = server.create_room(&alice, body.clone()).await;
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.join_rules", "").await["join_rule"],
            join_rule,
            "{body}"
        );
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.history_visibility", "").await["history_visibility"],
            "shared",
            "{body}"
        );
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.guest_access", "").await["guest_access"],
            guest,
            "{body}"
        );
    }
    // public_chat: anyone can join; private_chat: not without an invite.
    let public = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    ok(&server.join(&bob, &public).await, "join public");
    let private = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    assert_error(&server.join(&bob, &private).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn trusted_private_chat_gives_invitees_creator_power() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    // Before v12: the invitees get the creator's power level.
    let room = server.create_room(&alice, json!({ "preset": "trusted_private_chat", "room_version": "11", "invite": [bob.user_id] })).await;
    let power = state_content(&server, &alice, &room, "m.room.power_levels", "").await;
    assert_eq!(power["users"][&bob.user_id], 100, "{power}");
    assert_eq!(power["users"][&alice.user_id], 100, "{power}");
    // Since v12: they become additional creators.
    let room = server.create_room(&alice, json!({ "preset": "trusted_private_chat", "room_version": "12", "invite": [bob.user_id] })).await;
    let create = state_content(&server, &alice, &room, "m.room.create", "").await;
    assert_eq!(
        create["additional_creators"],
        json!([bob.user_id]),
        "{create}"
    );
    ok(&server.join(&bob, &room).await, "bob accepts");
    // As a creator bob can do anything, e.g. change the power levels.
    ok(
        &put_state(
            &server,
            &bob,
            &room,
            "m.room.power_levels",
            "",
            json!({ "users": {}, "state_default": 60 }),
        )
        .await,
        "bob changes PL",
    );
}

#[tokio::test]
async fn visibility_public_publishes_in_directory() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let public = server
        .create_room(&alice, json!({ "visibility": "public" }))
        .await;
    let private = server.create_room(&alice, json!({})).await;
    let (status, body) = server
        .get(
            &format!("{V3}/directory/list/room/{}", enc(&public)),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["visibility"], "public");
    let (status, body) = server
        .get(
            &format!("{V3}/directory/list/room/{}", enc(&private)),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["visibility"], "private");
    // And it can be changed.
    ok(
        &server
            .put(
                &format!("{V3}/directory/list/room/{}", enc(&private)),
                &alice.token,
                json!({ "visibility": "public" }),
            )
            .await,
        "publish",
    );
    let (_, body) = server
        .get(
            &format!("{V3}/directory/list/room/{}", enc(&private)),
            &alice.token,
        )
        .await;
    assert_eq!(body["visibility"], "public");
}

#[tokio::test]
async fn name_topic_initial_state_and_creation_content() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "name": "The Room",
                "topic": "About things",
                "creation_content": { "type": "m.space", "m.federate": false },
                "initial_state": [
                    { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "world_readable" } },
                    { "type": "m.room.join_rules", "content": { "join_rule": "invite" } },
                    { "type": "org.example.custom", "state_key": "k1", "content": { "v": 1 } },
                ],
            }),
        )
        .await;
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.name", "").await["name"],
        "The Room"
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.topic", "").await["topic"],
        "About things"
    );
    let create = state_content(&server, &alice, &room, "m.room.create", "").await;
    assert_eq!(create["type"], "m.space", "{create}");
    assert_eq!(create["m.federate"], false, "{create}");
    // initial_state overrides the preset's events.
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.history_visibility", "").await["history_visibility"],
        "world_readable"
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.join_rules", "").await["join_rule"],
        "invite"
    );
    assert_eq!(
        state_content(&server, &alice, &room, "org.example.custom", "k1").await,
        json!({ "v": 1 })
    );
    // Only one join_rules event and one history_visibility event exist in the room's state.
    let (status, state) = server.get(&room_path(&room, "/state"), &alice.token).await;
    assert_eq!(status, 200);
    let state = arr(&state);
    assert_eq!(
        state
            .iter()
            .filter(|e| e["type"] == "m.room.join_rules")
            .count(),
        1
    );
    // The preset's join rule event is not sent and then replaced: the timeline has one of each.
    let chunk = arr(&messages_ok(&server, &alice, &room, "dir=b&limit=100").await["chunk"]);
    assert_eq!(
        chunk
            .iter()
            .filter(|e| e["type"] == "m.room.join_rules")
            .count(),
        1,
        "{chunk:?}"
    );
    assert_eq!(
        chunk
            .iter()
            .filter(|e| e["type"] == "m.room.history_visibility")
            .count(),
        1,
        "{chunk:?}"
    );
}

#[tokio::test]
async fn invite_with_is_direct_reaches_the_invitee() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({ "invite": [bob.user_id], "is_direct": true, "preset": "trusted_private_chat", "name": "DM" })).await;
    let sync = server.sync(&bob, "timeout=0").await;
    let invite = &sync["rooms"]["invite"][&room];
    let events = arr(&invite["invite_state"]["events"]);
    let member = find(&events, "m.room.member", &bob.user_id)
        .unwrap_or_else(|| panic!("invite member event missing: {sync}"));
    assert_eq!(member["content"]["membership"], "invite");
    assert_eq!(member["content"]["is_direct"], true, "{member}");
    assert_eq!(member["sender"], alice.user_id.as_str());
    assert_eq!(
        find(&events, "m.room.name", "").map(|e| e["content"]["name"].clone()),
        Some(json!("DM")),
        "{events:?}"
    );
    assert!(
        find(&events, "m.room.create", "").is_some(),
        "invite_state has the create event: {events:?}"
    );
    assert!(
        find(&events, "m.room.join_rules", "").is_some(),
        "invite_state has join rules: {events:?}"
    );
}

#[tokio::test]
async fn power_level_content_override_is_applied() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "room_version": "10", "preset": "public_chat", "power_level_content_override": { "events_default": 20, "invite": 75, "events": { "m.room.name": 10 } } }),
        )
        .await;
    let power = state_content(&server, &alice, &room, "m.room.power_levels", "").await;
    assert_eq!(power["events_default"], 20);
    assert_eq!(power["invite"], 75);
    assert_eq!(
        power["events"],
        json!({ "m.room.name": 10 }),
        "top-level keys are replaced, not merged: {power}"
    );
    assert_eq!(power["users"][&alice.user_id], 100);
    ok(&server.join(&bob, &room).await, "bob joins");
    // events_default 20 > bob's 0: bob cannot talk.
    assert_error(
        &try_send(&server, &bob, &room, "hi").await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn room_alias_name_creates_alias_and_canonical_alias() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "lobby" }),
        )
        .await;
    let (status, body) = server
        .get(
            &format!("{V3}/directory/room/{}", enc("#lobby:localhost")),
            &bob.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["servers"], json!(["localhost"]));
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.canonical_alias", "").await["alias"],
        "#lobby:localhost"
    );
    // The alias is taken now.
    let result = server
        .post(
            &format!("{V3}/createRoom"),
            &alice.token,
            json!({ "room_alias_name": "lobby" }),
        )
        .await;
    assert_error(&result, 400, "M_ROOM_IN_USE");
}

#[tokio::test]
async fn alias_put_get_delete_and_conflict() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let other = server.create_room(&alice, json!({})).await;
    let alias = "#hall:localhost";
    let path = format!("{V3}/directory/room/{}", enc(alias));
    ok(
        &server
            .put(&path, &alice.token, json!({ "room_id": room }))
            .await,
        "PUT alias",
    );
    let (status, body) = server.get(&path, &bob.token).await;
    assert_eq!(status, 200);
    assert_eq!(body["room_id"], room.as_str());
    // Taken: 409 even for another room.
    let result = server
        .put(&path, &alice.token, json!({ "room_id": other }))
        .await;
    assert_eq!(result.0, 409, "{}", result.1);
    // The room lists its alias.
    let (status, body) = server
        .get(&room_path(&room, "/aliases"), &alice.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aliases"], json!([alias]));
    // A non-member cannot list aliases of a non-world-readable room.
    assert_error(
        &server.get(&room_path(&room, "/aliases"), &bob.token).await,
        403,
        "M_FORBIDDEN",
    );
    // Join by alias.
    let (status, body) = server.join(&bob, alias).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    // Bob (PL 0, not the alias creator) cannot delete it.
    assert_error(
        &server
            .request(reqwest::Method::DELETE, &path, Some(&bob.token), None)
            .await,
        403,
        "M_FORBIDDEN",
    );
    ok(
        &server
            .request(reqwest::Method::DELETE, &path, Some(&alice.token), None)
            .await,
        "DELETE alias",
    );
    assert_error(&server.get(&path, &alice.token).await, 404, "M_NOT_FOUND");
    let (_, body) = server
        .get(&room_path(&room, "/aliases"), &alice.token)
        .await;
    assert_eq!(body["aliases"], json!([]));
    // Deleting it again: 404.
    assert_error(
        &server
            .request(reqwest::Method::DELETE, &path, Some(&alice.token), None)
            .await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn canonical_alias_must_point_to_the_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let other = server.create_room(&alice, json!({})).await;
    ok(
        &server
            .put(
                &format!("{V3}/directory/room/{}", enc("#mine:localhost")),
                &alice.token,
                json!({ "room_id": room }),
            )
            .await,
        "alias",
    );
    ok(
        &server
            .put(
                &format!("{V3}/directory/room/{}", enc("#theirs:localhost")),
                &alice.token,
                json!({ "room_id": other }),
            )
            .await,
        "alias",
    );
    let set = |content: Value| {
        put_state(
            &server,
            &alice,
            &room,
            "m.room.canonical_alias",
            "",
            content,
        )
    };
    assert_error(
        &set(json!({ "alias": "#theirs:localhost" })).await,
        400,
        "M_BAD_ALIAS",
    );
    assert_error(
        &set(json!({ "alias": "#nowhere:localhost" })).await,
        400,
        "M_BAD_ALIAS",
    );
    assert_error(
        &set(json!({ "alias": "#mine:localhost", "alt_aliases": ["#theirs:localhost"] })).await,
        400,
        "M_BAD_ALIAS",
    );
    ok(
        &set(json!({ "alias": "#mine:localhost" })).await,
        "valid canonical alias",
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.canonical_alias", "").await["alias"],
        "#mine:localhost"
    );
    // An invalid alias string is a bad request too.
    let result = set(json!({ "alias": "not an alias" })).await;
    assert_eq!(result.0, 400, "{}", result.1);
}

#[tokio::test]
async fn upgrade_room_creates_successor_and_tombstones_predecessor() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = server
        .create_room(&alice, json!({ "room_version": "10", "preset": "public_chat", "name": "Old", "topic": "T", "room_alias_name": "up" }))
        .await;
    ok(&server.join(&bob, &old).await, "bob joins");
    // Bob at PL 0 cannot upgrade.
    assert_error(
        &server
            .post(
                &room_path(&old, "/upgrade"),
                &bob.token,
                json!({ "new_version": "12" }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .post(
                &room_path(&old, "/upgrade"),
                &alice.token,
                json!({ "new_version": "5" }),
            )
            .await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );

    let (status, body) = server
        .post(
            &room_path(&old, "/upgrade"),
            &alice.token,
            json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    assert_ne!(new, old);

    let create = state_content(&server, &alice, &new, "m.room.create", "").await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str(), "{create}");
    let tombstone = state_content(&server, &alice, &old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new.as_str(), "{tombstone}");

    // State carried over.
    assert_eq!(
        state_content(&server, &alice, &new, "m.room.name", "").await["name"],
        "Old"
    );
    assert_eq!(
        state_content(&server, &alice, &new, "m.room.topic", "").await["topic"],
        "T"
    );
    assert_eq!(
        state_content(&server, &alice, &new, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    let power = state_content(&server, &alice, &new, "m.room.power_levels", "").await;
    assert!(
        power["users"].get(&alice.user_id).is_none(),
        "v12 successor must not list the creator: {power}"
    );

    // The old room is closed for ordinary members.
    let old_power = state_content(&server, &alice, &old, "m.room.power_levels", "").await;
    assert!(
        old_power["events_default"].as_i64().unwrap_or(0) > 0,
        "{old_power}"
    );
    assert_error(
        &try_send(&server, &bob, &old, "still here?").await,
        403,
        "M_FORBIDDEN",
    );

    // Aliases move to the new room.
    let (status, body) = server
        .get(
            &format!("{V3}/directory/room/{}", enc("#up:localhost")),
            &bob.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], new.as_str());
    assert_eq!(
        state_content(&server, &alice, &new, "m.room.canonical_alias", "").await["alias"],
        "#up:localhost"
    );
    let (_, aliases) = server.get(&room_path(&new, "/aliases"), &alice.token).await;
    assert_eq!(aliases["aliases"], json!(["#up:localhost"]));
    let (_, aliases) = server.get(&room_path(&old, "/aliases"), &alice.token).await;
    assert_eq!(aliases["aliases"], json!([]));

    // Bob follows the tombstone.
    ok(&server.join(&bob, &new).await, "bob joins successor");
    let id = server.send_text(&bob, &new, "moved").await;
    assert!(id.starts_with('$'));
}

#[tokio::test]
async fn upgrade_from_v12_to_v11_lists_the_upgrader_in_power_levels() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let old = server
        .create_room(&alice, json!({ "room_version": "12" }))
        .await;
    let (status, body) = server
        .post(
            &room_path(&old, "/upgrade"),
            &alice.token,
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    let power = state_content(&server, &alice, &new, "m.room.power_levels", "").await;
    assert_eq!(power["users"][&alice.user_id], 100, "{power}");
    let create = state_content(&server, &alice, &new, "m.room.create", "").await;
    assert_eq!(create["room_version"], "11");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    ok(
        &put_state(
            &server,
            &alice,
            &new,
            "m.room.name",
            "",
            json!({ "name": "works" }),
        )
        .await,
        "alice admin in new room",
    );
}

#[tokio::test]
async fn upgrade_keeps_space_type_and_member_power() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = server.create_room(&alice, json!({ "room_version": "11", "preset": "public_chat", "creation_content": { "type": "m.space" } })).await;
    ok(&server.join(&bob, &old).await, "bob joins");
    ok(
        &set_power(&server, &alice, &old, &bob.user_id, 50).await,
        "bob to 50",
    );
    let (status, body) = server
        .post(
            &room_path(&old, "/upgrade"),
            &alice.token,
            json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    let create = state_content(&server, &alice, &new, "m.room.create", "").await;
    assert_eq!(create["type"], "m.space", "{create}");
    let power = state_content(&server, &alice, &new, "m.room.power_levels", "").await;
    assert_eq!(power["users"][&bob.user_id], 50, "{power}");
    // The upgrader joined the new room; bob did not (he was not invited automatically).
    let (_, members) = server
        .get(&room_path(&new, "/joined_members"), &alice.token)
        .await;
    assert!(members["joined"].get(&alice.user_id).is_some(), "{members}");
}

#[tokio::test]
async fn v10_rejects_string_power_levels() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for (version, accepted) in [("6", true), ("10", false)] {
        let room = server
            .create_room(&alice, json!({ "room_version": version }))
            .await;
        let mut levels = state_content(&server, &alice, &room, "m.room.power_levels", "").await;
        levels["ban"] = json!("60");
        let result = put_state(&server, &alice, &room, "m.room.power_levels", "", levels).await;
        if accepted {
            assert_eq!(
                result.0, 200,
                "v{version} accepts string levels: {}",
                result.1
            );
        } else {
            assert!(
                result.0 == 400 || result.0 == 403,
                "v{version} must reject string levels: {} {}",
                result.0,
                result.1
            );
            assert_eq!(
                state_content(&server, &alice, &room, "m.room.power_levels", "").await["ban"],
                50
            );
        }
    }
}

#[tokio::test]
async fn event_of_another_room_is_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let a = server.create_room(&alice, json!({})).await;
    let b = server.create_room(&alice, json!({})).await;
    let event = server.send_text(&alice, &a, "in a").await;
    assert_error(
        &get_event(&server, &alice, &b, &event).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &context(&server, &alice, &b, &event, "").await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &redact(&server, &alice, &b, &event, None).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn alias_and_directory_permissions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_version": "10" }),
        )
        .await;
    let alias_path = |a: &str| format!("{V3}/directory/room/{}", enc(a));
    // Not in the room: 403. Unknown room: 404.
    assert_error(
        &server
            .put(
                &alias_path("#bobs:localhost"),
                &bob.token,
                json!({ "room_id": room }),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    let result = server
        .put(
            &alias_path("#ghost:localhost"),
            &alice.token,
            json!({ "room_id": "!ghost:localhost" }),
        )
        .await;
    assert_eq!(result.0, 404, "{}", result.1);
    // Invalid alias in the path.
    let result = server
        .put(
            &format!("{V3}/directory/room/{}", enc("nohash")),
            &alice.token,
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(result.0, 400, "{}", result.1);
    // A member at PL 0 may add an alias, and delete their own.
    ok(&server.join(&bob, &room).await, "join");
    ok(
        &server
            .put(
                &alias_path("#bobs:localhost"),
                &bob.token,
                json!({ "room_id": room }),
            )
            .await,
        "member adds alias",
    );
    ok(
        &server
            .request(
                reqwest::Method::DELETE,
                &alias_path("#bobs:localhost"),
                Some(&bob.token),
                None,
            )
            .await,
        "creator deletes alias",
    );
    // Directory visibility needs power.
    let dir = format!("{V3}/directory/list/room/{}", enc(&room));
    assert_error(
        &server
            .put(&dir, &bob.token, json!({ "visibility": "public" }))
            .await,
        403,
        "M_FORBIDDEN",
    );
    ok(
        &server
            .put(&dir, &alice.token, json!({ "visibility": "public" }))
            .await,
        "admin publishes",
    );
    let (_, body) = server.get(&dir, &bob.token).await;
    assert_eq!(body["visibility"], "public");
    // Unknown room.
    assert_error(
        &server
            .get(
                &format!("{V3}/directory/list/room/{}", enc("!ghost:localhost")),
                &bob.token,
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    // Removing the canonical alias.
    ok(
        &server
            .put(
                &alias_path("#main:localhost"),
                &alice.token,
                json!({ "room_id": room }),
            )
            .await,
        "alias",
    );
    ok(
        &put_state(
            &server,
            &alice,
            &room,
            "m.room.canonical_alias",
            "",
            json!({ "alias": "#main:localhost" }),
        )
        .await,
        "set canonical",
    );
    ok(
        &put_state(
            &server,
            &alice,
            &room,
            "m.room.canonical_alias",
            "",
            json!({}),
        )
        .await,
        "clear canonical",
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.canonical_alias", "").await,
        json!({})
    );
    // Invalid room_alias_name (the grammar forbids ':'; an empty localpart is no alias).
    for bad in ["has:colon", ""] {
        let result = server
            .post(
                &format!("{V3}/createRoom"),
                &alice.token,
                json!({ "room_alias_name": bad }),
            )
            .await;
        assert_eq!(result.0, 400, "room_alias_name {bad:?}: {}", result.1);
    }
}

#[tokio::test]
async fn name_and_topic_override_initial_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(
            &alice,
            json!({
                "name": "From name",
                "topic": "From topic",
                "initial_state": [
                    { "type": "m.room.name", "content": { "name": "From initial_state" } },
                    { "type": "m.room.topic", "content": { "topic": "From initial_state" } },
                ],
            }),
        )
        .await;
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.name", "").await["name"],
        "From name"
    );
    assert_eq!(
        state_content(&server, &alice, &room, "m.room.topic", "").await["topic"],
        "From topic"
    );
}

#[tokio::test]
async fn upgrade_moves_directory_listing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let old = server
        .create_room(
            &alice,
            json!({ "visibility": "public", "room_version": "11" }),
        )
        .await;
    let (status, body) = server
        .post(
            &room_path(&old, "/upgrade"),
            &alice.token,
            json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    let (_, body) = server
        .get(
            &format!("{V3}/directory/list/room/{}", enc(&old)),
            &alice.token,
        )
        .await;
    assert_eq!(body["visibility"], "private");
    let (_, body) = server
        .get(
            &format!("{V3}/directory/list/room/{}", enc(&new)),
            &alice.token,
        )
        .await;
    assert_eq!(body["visibility"], "public");
}

#[tokio::test]
async fn upgrade_to_v12_honours_additional_creators() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = server
        .create_room(
            &alice,
            json!({ "room_version": "11", "preset": "public_chat" }),
        )
        .await;
    ok(&server.join(&bob, &old).await, "bob joins");
    let (status, body) = server
        .post(
            &room_path(&old, "/upgrade"),
            &alice.token,
            json!({ "new_version": "12", "additional_creators": [bob.user_id] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    let create = state_content(&server, &alice, &new, "m.room.create", "").await;
    assert_eq!(
        create["additional_creators"],
        json!([bob.user_id]),
        "POST /upgrade additional_creators must reach the new create event: {create}"
    );
    let power = state_content(&server, &alice, &new, "m.room.power_levels", "").await;
    assert!(
        power["users"].get(&bob.user_id).is_none(),
        "additional creators are not listed in users: {power}"
    );
}

/// v12 room ids are create-event hashes: identical createRoom requests by one user in the same
/// millisecond must still give distinct rooms.
#[tokio::test]
async fn identical_concurrent_create_room_calls_give_distinct_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let body = serde_json::json!({ "preset": "private_chat" });
    let creates =
        (0..8).map(|_| server.post("/_matrix/client/v3/createRoom", &alice.token, body.clone()));
    let results = futures::future::join_all(creates).await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, response) in results {
        assert_eq!(status.as_u16(), 200, "{response}");
        ids.insert(response["room_id"].as_str().expect("room_id").to_owned());
    }
    assert_eq!(ids.len(), 8, "{ids:?}");
}
