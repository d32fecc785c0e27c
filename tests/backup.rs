//! Server-side key backups through HTTP: version CRUD, keys at the three levels, etag and
//! count, the wrong-version error and the spec's rule for which key of a session to keep.

mod common;
#[path = "e2ee_helpers/mod.rs"]
mod eh;

use common::{TestServer, User, assert_error, enc};
use eh::V3;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn auth_data(public_key: &str) -> Value {
    json!({ "public_key": public_key, "signatures": {} })
}

async fn create(server: &TestServer, user: &User, public_key: &str) -> String {
    let (status, body) = server
        .post(
            &format!("{V3}/room_keys/version"),
            &user.token,
            json!({ "algorithm": ALGORITHM, "auth_data": auth_data(public_key) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "create: {body}");
    body["version"].as_str().expect("version").to_owned()
}

fn key(first_message_index: u64, forwarded_count: u64, is_verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": { "ephemeral": tag, "ciphertext": tag, "mac": tag },
    })
}

async fn put_session(
    server: &TestServer,
    user: &User,
    version: &str,
    room: &str,
    session: &str,
    data: Value,
) -> (StatusCode, Value) {
    server
        .put(
            &format!(
                "{V3}/room_keys/keys/{}/{}?version={}",
                enc(room),
                enc(session),
                enc(version)
            ),
            &user.token,
            data,
        )
        .await
}

async fn delete(server: &TestServer, user: &User, path: String) -> (StatusCode, Value) {
    server
        .request(
            Method::DELETE,
            &format!("{V3}/{path}"),
            Some(&user.token),
            None,
        )
        .await
}

async fn get(server: &TestServer, user: &User, path: &str) -> (StatusCode, Value) {
    server.get(&format!("{V3}/{path}"), &user.token).await
}

#[tokio::test]
async fn backup_versions_crud() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    assert_error(
        &get(&server, &alice, "room_keys/version").await,
        404,
        "M_NOT_FOUND",
    );
    let version = create(&server, &alice, "pk1").await;
    let (status, info) = get(&server, &alice, "room_keys/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["version"], version.as_str());
    assert_eq!(info["algorithm"], ALGORITHM);
    assert_eq!(info["auth_data"], auth_data("pk1"));
    assert_eq!(info["count"], 0);
    assert!(info["etag"].is_string());
    let (status, same) = get(&server, &alice, &format!("room_keys/version/{version}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same, info);
    // Backups are per user.
    assert_error(
        &get(&server, &bob, "room_keys/version").await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &get(&server, &bob, &format!("room_keys/version/{version}")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &get(&server, &alice, "room_keys/version/notaversion").await,
        404,
        "M_NOT_FOUND",
    );

    // Update: only auth_data; algorithm and the body's version must match.
    let path = format!("{V3}/room_keys/version/{version}");
    let (status, body) = server
        .put(
            &path,
            &alice.token,
            json!({ "algorithm": ALGORITHM, "auth_data": auth_data("pk2"), "version": version }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, info) = get(&server, &alice, "room_keys/version").await;
    assert_eq!(info["auth_data"], auth_data("pk2"));
    let result = server
        .put(
            &path,
            &alice.token,
            json!({ "algorithm": "org.example.other", "auth_data": {} }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let result = server
        .put(
            &path,
            &alice.token,
            json!({ "algorithm": ALGORITHM, "auth_data": {}, "version": "999" }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let result = server
        .put(
            &format!("{V3}/room_keys/version/999"),
            &alice.token,
            json!({ "algorithm": ALGORITHM, "auth_data": {} }),
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    let result = server
        .post(
            &format!("{V3}/room_keys/version"),
            &alice.token,
            json!({ "algorithm": ALGORITHM, "auth_data": "not an object" }),
        )
        .await;
    assert_error(&result, 400, "M_BAD_JSON");

    // A newer version is the current one; versions are never reused after a delete.
    let version2 = create(&server, &alice, "pk3").await;
    assert_ne!(version2, version);
    let (_, info) = get(&server, &alice, "room_keys/version").await;
    assert_eq!(info["version"], version2.as_str());
    let (status, _) = server
        .request(
            Method::DELETE,
            &format!("{V3}/room_keys/version/{version2}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, info) = get(&server, &alice, "room_keys/version").await;
    assert_eq!(info["version"], version.as_str(), "back to the older one");
    let result = server
        .request(
            Method::DELETE,
            &format!("{V3}/room_keys/version/{version2}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    let version3 = create(&server, &alice, "pk4").await;
    assert!(
        version3.parse::<u64>().expect("number") > version2.parse::<u64>().expect("number"),
        "{version3} after {version2}"
    );
}

#[tokio::test]
async fn backup_keys_at_three_levels_with_etag_count_and_version_checks() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_a = "!a:localhost";
    let room_b = "!b:localhost";

    // No backup at all: 404.
    let result = put_session(&server, &alice, "1", room_a, "s1", key(0, 0, false, "x")).await;
    assert_error(&result, 404, "M_NOT_FOUND");

    let version = create(&server, &alice, "pk").await;
    let (status, body) = put_session(
        &server,
        &alice,
        &version,
        room_a,
        "s1",
        key(0, 0, false, "a1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    let etag1 = body["etag"].as_str().expect("etag").to_owned();

    let (status, body) = server
        .put(
            &format!("{V3}/room_keys/keys/{}?version={version}", enc(room_a)),
            &alice.token,
            json!({ "sessions": { "s2": key(0, 0, false, "a2"), "s3": key(0, 0, false, "a3") } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 3);
    assert_ne!(body["etag"], etag1.as_str());

    let (status, body) = server
        .put(
            &format!("{V3}/room_keys/keys?version={version}"),
            &alice.token,
            json!({ "rooms": { room_b: { "sessions": { "s1": key(0, 0, false, "b1") } } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 4);
    let (_, info) = get(&server, &alice, "room_keys/version").await;
    assert_eq!(info["count"], 4);
    assert_eq!(info["etag"], body["etag"]);

    // Reads.
    let (status, all) = get(
        &server,
        &alice,
        &format!("room_keys/keys?version={version}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        all["rooms"][room_a]["sessions"]["s2"],
        key(0, 0, false, "a2")
    );
    assert_eq!(
        all["rooms"][room_b]["sessions"]["s1"],
        key(0, 0, false, "b1")
    );
    let (_, room) = get(
        &server,
        &alice,
        &format!("room_keys/keys/{}?version={version}", enc(room_a)),
    )
    .await;
    assert_eq!(room["sessions"].as_object().expect("sessions").len(), 3);
    let (_, empty) = get(
        &server,
        &alice,
        &format!(
            "room_keys/keys/{}?version={version}",
            enc("!none:localhost")
        ),
    )
    .await;
    assert_eq!(empty, json!({ "sessions": {} }));
    let (_, session) = get(
        &server,
        &alice,
        &format!("room_keys/keys/{}/s3?version={version}", enc(room_a)),
    )
    .await;
    assert_eq!(session, key(0, 0, false, "a3"));
    let result = get(
        &server,
        &alice,
        &format!("room_keys/keys/{}/nope?version={version}", enc(room_a)),
    )
    .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    let result = get(&server, &alice, "room_keys/keys?version=42").await;
    assert_error(&result, 404, "M_NOT_FOUND");

    // A new version: writes to the old one are refused, naming the current one.
    let version2 = create(&server, &alice, "pk2").await;
    let result = put_session(
        &server,
        &alice,
        &version,
        room_a,
        "s9",
        key(0, 0, false, "x"),
    )
    .await;
    assert_error(&result, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(result.1["current_version"], version2.as_str());
    let result = put_session(
        &server,
        &alice,
        "nonsense",
        room_a,
        "s9",
        key(0, 0, false, "x"),
    )
    .await;
    assert_error(&result, 403, "M_WRONG_ROOM_KEYS_VERSION");
    // The old version's keys are still readable.
    let (status, all) = get(
        &server,
        &alice,
        &format!("room_keys/keys?version={version}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["rooms"].as_object().expect("rooms").len(), 2);

    // Deletes at the three levels, with counts.
    let (status, body) = delete(
        &server,
        &alice,
        format!("room_keys/keys/{}/s1?version={version}", enc(room_a)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 3);
    let (_, body) = delete(
        &server,
        &alice,
        format!("room_keys/keys/{}?version={version}", enc(room_a)),
    )
    .await;
    assert_eq!(body["count"], 1);
    let etag = body["etag"].clone();
    let (_, body) = delete(
        &server,
        &alice,
        format!("room_keys/keys/{}?version={version}", enc(room_a)),
    )
    .await;
    assert_eq!(body["count"], 1);
    assert_eq!(body["etag"], etag, "nothing deleted, same etag");
    let (_, body) = delete(&server, &alice, format!("room_keys/keys?version={version}")).await;
    assert_eq!(body["count"], 0);
    let (_, all) = get(
        &server,
        &alice,
        &format!("room_keys/keys?version={version}"),
    )
    .await;
    assert_eq!(all, json!({ "rooms": {} }));
    let result = delete(&server, &alice, "room_keys/keys?version=77".to_owned()).await;
    assert_error(&result, 404, "M_NOT_FOUND");

    // Bad key data.
    for bad in [
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false }),
        json!({ "first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {} }),
        json!([]),
    ] {
        let result = put_session(&server, &alice, &version2, room_a, "s1", bad.clone()).await;
        assert_error(&result, 400, "M_BAD_JSON");
    }
    let result = server
        .put(
            &format!("{V3}/room_keys/keys?version={version2}"),
            &alice.token,
            json!({ "rooms": { room_a: {} } }),
        )
        .await;
    assert_eq!(result.0.as_u16(), 400, "{}", result.1);
    let result = server
        .get(&format!("{V3}/room_keys/keys"), &alice.token)
        .await;
    assert_eq!(result.0.as_u16(), 400, "version is required: {}", result.1);
}

#[tokio::test]
async fn a_sessions_key_is_replaced_only_by_a_better_one() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let version = create(&server, &alice, "pk").await;
    let room = "!r:localhost";
    let path = format!("room_keys/keys/{}/s?version={version}", enc(room));

    let (_, body) = put_session(
        &server,
        &alice,
        &version,
        room,
        "s",
        key(5, 1, false, "first"),
    )
    .await;
    let mut etag = body["etag"].clone();
    // (new key, replaces?)
    let steps = [
        (key(3, 2, false, "lower index"), true),
        (key(3, 1, false, "fewer forwards"), true),
        (key(3, 1, false, "a tie keeps the stored key"), false),
        (key(4, 0, false, "higher index"), false),
        (key(10, 5, true, "verified"), true),
        (key(0, 0, false, "unverified never beats verified"), false),
        (key(10, 6, true, "more forwards"), false),
        (key(9, 9, true, "verified, lower index"), true),
    ];
    for (new, replaces) in steps {
        let before = get(&server, &alice, &path).await.1;
        let (status, body) = put_session(&server, &alice, &version, room, "s", new.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["count"], 1);
        let after = get(&server, &alice, &path).await.1;
        if replaces {
            assert_eq!(after, new, "{new} should replace {before}");
            assert_ne!(body["etag"], etag, "etag changes with the keys");
        } else {
            assert_eq!(after, before, "{new} should not replace {before}");
            assert_eq!(body["etag"], etag, "etag stays when nothing changed");
        }
        etag = body["etag"].clone();
    }
}
