//! End-to-end encryption keys through HTTP: upload/query, one-time and fallback key claims
//! (concurrent too), device lists in `/sync` and `/keys/changes`, cross-signing and signatures.

mod common;
#[path = "e2ee_helpers/mod.rs"]
mod eh;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{TestServer, User, assert_error, enc};
use eh::{Signer, V3};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn query(server: &TestServer, user: &User, users: &[&str]) -> Value {
    let device_keys: serde_json::Map<String, Value> =
        users.iter().map(|u| ((*u).to_owned(), json!([]))).collect();
    let (status, body) = server
        .post(
            &format!("{V3}/keys/query"),
            &user.token,
            json!({ "device_keys": device_keys }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "keys/query: {body}");
    body
}

async fn claim(server: &TestServer, user: &User, target: &User) -> Value {
    let (status, body) = server
        .post(
            &format!("{V3}/keys/claim"),
            &user.token,
            json!({ "one_time_keys": { &target.user_id: { &target.device_id: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "keys/claim: {body}");
    body
}

/// The one claimed key of `target`'s device: (key id, key).
fn claimed(body: &Value, target: &User) -> Option<(String, Value)> {
    let keys = body["one_time_keys"][&target.user_id][&target.device_id].as_object()?;
    assert_eq!(keys.len(), 1, "one key per claim: {body}");
    keys.iter().next().map(|(k, v)| (k.clone(), v.clone()))
}

fn without_unsigned(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("unsigned");
    }
    value
}

#[tokio::test]
async fn upload_query_round_trip_is_byte_identical() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let signer = Signer::device(&alice.device_id);
    // Extra fields (even non-ASCII ones) are part of what the device signs: kept as sent.
    let mut unsigned_keys = without_signatures(eh::device_keys(&alice, &signer));
    unsigned_keys["org.example.extra"] =
        json!({ "zeta": "ünïcødé ✓ \u{1}", "alpha": [3, 2, 1], "n": -5 });
    let keys = signer.sign(&alice.user_id, &unsigned_keys);
    let response = eh::upload(&server, &alice, json!({ "device_keys": keys })).await;
    assert_eq!(response["one_time_key_counts"]["signed_curve25519"], 0);

    let (status, _) = server
        .put(
            &format!("{V3}/devices/{}", alice.device_id),
            &alice.token,
            json!({ "display_name": "Alice's phone" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let body = query(&server, &bob, &[&alice.user_id]).await;
    let served = body["device_keys"][&alice.user_id][&alice.device_id].clone();
    assert_eq!(
        served["unsigned"]["device_display_name"], "Alice's phone",
        "{body}"
    );
    let served = without_unsigned(served);
    assert_eq!(served, keys);
    // Canonical JSON of both is the same text, and the device's signature checks out.
    assert_eq!(canonical(&served), canonical(&keys));
    assert!(eh::verify(
        &served,
        &alice.user_id,
        &format!("ed25519:{}", alice.device_id),
        &signer.public
    ));

    // Asking for one device, or a device without keys, works too.
    let (status, body) = server
        .post(
            &format!("{V3}/keys/query"),
            &bob.token,
            json!({ "device_keys": { &alice.user_id: [&alice.device_id, "NOSUCHDEVICE"] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let devices = body["device_keys"][&alice.user_id]
        .as_object()
        .expect("devices");
    assert_eq!(devices.len(), 1, "{body}");

    // Uploading the same keys again changes nothing; remote users are a failure, not an error.
    eh::upload(&server, &alice, json!({ "device_keys": keys })).await;
    let body = query(&server, &bob, &["@carol:remote.example"]).await;
    assert!(
        body["failures"]["remote.example"].is_object(),
        "remote users fail until federation: {body}"
    );
}

fn without_signatures(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("signatures");
    }
    value
}

fn canonical(value: &Value) -> String {
    let object: ruma::CanonicalJsonObject =
        serde_json::from_value(value.clone()).expect("canonical");
    ruma::CanonicalJsonValue::Object(object).to_string()
}

#[tokio::test]
async fn bad_device_keys_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let signer = Signer::device(&alice.device_id);
    let path = format!("{V3}/keys/upload");

    // A signature by another key.
    let mut keys = eh::device_keys(&alice, &signer);
    keys["keys"][format!("ed25519:{}", alice.device_id)] =
        json!(Signer::device(&alice.device_id).public);
    let result = server
        .post(&path, &alice.token, json!({ "device_keys": keys }))
        .await;
    assert_error(&result, 400, "M_INVALID_SIGNATURE");

    // Content changed after signing.
    let mut keys = eh::device_keys(&alice, &signer);
    keys["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    let result = server
        .post(&path, &alice.token, json!({ "device_keys": keys }))
        .await;
    assert_error(&result, 400, "M_INVALID_SIGNATURE");

    // No signature at all.
    let keys = without_signatures(eh::device_keys(&alice, &signer));
    let result = server
        .post(&path, &alice.token, json!({ "device_keys": keys }))
        .await;
    assert_error(&result, 400, "M_INVALID_SIGNATURE");

    // Another user's or another device's keys.
    let keys = eh::device_keys(&bob, &Signer::device(&bob.device_id));
    let result = server
        .post(&path, &alice.token, json!({ "device_keys": keys }))
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let other = User {
        device_id: "OTHERDEVICE".into(),
        ..alice.clone()
    };
    let keys = eh::device_keys(&other, &Signer::device("OTHERDEVICE"));
    let result = server
        .post(&path, &alice.token, json!({ "device_keys": keys }))
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");

    // Not JSON objects, floats (not canonical JSON), missing fields.
    for bad in [
        json!("keys"),
        json!({ "user_id": alice.user_id, "device_id": alice.device_id, "keys": {}, "algorithms": [], "x": 1.5 }),
        json!({ "user_id": alice.user_id, "device_id": alice.device_id }),
    ] {
        let result = server
            .post(&path, &alice.token, json!({ "device_keys": bad }))
            .await;
        assert_eq!(result.0.as_u16(), 400, "{bad}: {}", result.1);
    }
    let result = server
        .post(
            &path,
            &alice.token,
            json!({ "one_time_keys": { "nocolon": "x" } }),
        )
        .await;
    assert_eq!(result.0.as_u16(), 400, "{}", result.1);
    let result = server
        .post(
            &path,
            &alice.token,
            json!({ "one_time_keys": { "curve25519:A": 5 } }),
        )
        .await;
    assert_error(&result, 400, "M_BAD_JSON");

    // Signed one-time keys need the device's keys first; nothing was stored so far.
    let otks = eh::one_time_keys(&alice, &signer, "A", 1);
    let result = server
        .post(&path, &alice.token, json!({ "one_time_keys": otks }))
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let body = query(&server, &bob, &[&alice.user_id]).await;
    assert_eq!(body["device_keys"][&alice.user_id], json!({}), "{body}");

    // A one-time key signed by another key, or unsigned where a signature is required.
    eh::upload(
        &server,
        &alice,
        json!({ "device_keys": eh::device_keys(&alice, &signer) }),
    )
    .await;
    let otks = eh::one_time_keys(&alice, &Signer::device(&alice.device_id), "B", 1);
    let result = server
        .post(&path, &alice.token, json!({ "one_time_keys": otks }))
        .await;
    assert_error(&result, 400, "M_INVALID_SIGNATURE");
    let result = server
        .post(
            &path,
            &alice.token,
            json!({ "one_time_keys": { "signed_curve25519:C": "abc" } }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    // Two fallback keys of one algorithm.
    let mut fallback = eh::fallback_key(&alice, &signer, "F1");
    fallback["signed_curve25519:F2"] = fallback["signed_curve25519:F1"].clone();
    let result = server
        .post(&path, &alice.token, json!({ "fallback_keys": fallback }))
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn one_time_keys_are_claimed_once_in_order_then_the_fallback_key() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let signer = eh::device_with_keys(&server, &alice).await;

    let first = eh::one_time_keys(&alice, &signer, "A", 2);
    let response = eh::upload(
        &server,
        &alice,
        json!({ "one_time_keys": first, "fallback_keys": eh::fallback_key(&alice, &signer, "FB1") }),
    )
    .await;
    assert_eq!(response["one_time_key_counts"]["signed_curve25519"], 2);
    // A later upload whose ids sort before the first ones: still claimed after them.
    let second = eh::one_time_keys(&alice, &signer, "0", 1);
    let response = eh::upload(&server, &alice, json!({ "one_time_keys": second })).await;
    assert_eq!(response["one_time_key_counts"]["signed_curve25519"], 3);

    // Re-uploading a key id with the same content is fine; with other content it is refused.
    let response = eh::upload(&server, &alice, json!({ "one_time_keys": second })).await;
    assert_eq!(response["one_time_key_counts"]["signed_curve25519"], 3);
    let other = eh::one_time_keys(&alice, &signer, "Z", 1);
    let result = server
        .post(
            &format!("{V3}/keys/upload"),
            &alice.token,
            json!({ "one_time_keys": { "signed_curve25519:00000": other["signed_curve25519:Z0000"] } }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");

    let sync = server.sync(&alice, "timeout=0").await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 3);
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = claim(&server, &bob, &alice).await;
        let (id, key) = claimed(&body, &alice).expect("a one-time key");
        assert!(eh::verify(
            &key,
            &alice.user_id,
            &format!("ed25519:{}", alice.device_id),
            &signer.public
        ));
        ids.push(id);
    }
    assert_eq!(
        ids,
        [
            "signed_curve25519:A0000",
            "signed_curve25519:A0001",
            "signed_curve25519:00000"
        ]
    );
    let sync = server.sync(&alice, "timeout=0").await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);

    // Out of one-time keys: the fallback key, every time, now marked used.
    for _ in 0..2 {
        let body = claim(&server, &bob, &alice).await;
        let (id, key) = claimed(&body, &alice).expect("the fallback key");
        assert_eq!(id, "signed_curve25519:FB1");
        assert_eq!(key["fallback"], true);
    }
    let sync = server.sync(&alice, "timeout=0").await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
    // The same fallback key again stays used; a new one is unused.
    eh::upload(
        &server,
        &alice,
        json!({ "fallback_keys": eh::fallback_key(&alice, &signer, "FB1") }),
    )
    .await;
    let sync = server.sync(&alice, "timeout=0").await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
    eh::upload(
        &server,
        &alice,
        json!({ "fallback_keys": eh::fallback_key(&alice, &signer, "FB2") }),
    )
    .await;
    let sync = server.sync(&alice, "timeout=0").await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    let body = claim(&server, &bob, &alice).await;
    assert_eq!(
        claimed(&body, &alice).expect("fallback").0,
        "signed_curve25519:FB2"
    );

    // Unknown devices and algorithms: nothing, no error.
    let (status, body) = server
        .post(
            &format!("{V3}/keys/claim"),
            &bob.token,
            json!({ "one_time_keys": {
                &alice.user_id: { "NOSUCHDEVICE": "signed_curve25519", &alice.device_id: "org.example.alg" },
                "@nobody:localhost": { "X": "signed_curve25519" },
                "@someone:remote.example": { "X": "signed_curve25519" },
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["one_time_keys"], json!({}), "{body}");
    assert!(body["failures"]["remote.example"].is_object(), "{body}");

    // Unsigned curve25519 keys (as the benchmark uploads) are accepted.
    let response = eh::upload(
        &server,
        &alice,
        json!({ "one_time_keys": { "curve25519:K1": "abcdefgh", "curve25519:K2": "ijklmnop" } }),
    )
    .await;
    assert_eq!(response["one_time_key_counts"]["curve25519"], 2);
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_a_key_twice() {
    let server = Arc::new(TestServer::start().await);
    let alice = server.register("alice").await;
    let signer = eh::device_with_keys(&server, &alice).await;
    eh::upload(
        &server,
        &alice,
        json!({
            "one_time_keys": eh::one_time_keys(&alice, &signer, "K", 20),
            "fallback_keys": eh::fallback_key(&alice, &signer, "FALLBACK"),
        }),
    )
    .await;
    let mut claimers = Vec::new();
    for i in 0..5 {
        claimers.push(server.register(&format!("claimer{i}")).await);
    }
    let mut tasks = Vec::new();
    for i in 0..50 {
        let server = server.clone();
        let claimer = claimers[i % claimers.len()].clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            let body = claim(&server, &claimer, &alice).await;
            claimed(&body, &alice).expect("every claim gets a key").0
        }));
    }
    let mut one_time = Vec::new();
    let mut fallback = 0;
    for task in tasks {
        let id = task.await.expect("task");
        if id == "signed_curve25519:FALLBACK" {
            fallback += 1;
        } else {
            one_time.push(id);
        }
    }
    let distinct: HashSet<&String> = one_time.iter().collect();
    assert_eq!(one_time.len(), 20, "20 one-time keys: {one_time:?}");
    assert_eq!(distinct.len(), 20, "no duplicate: {one_time:?}");
    assert_eq!(fallback, 30);
    let sync = server.sync(&alice, "timeout=0").await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
}

#[tokio::test]
async fn device_lists_in_sync_and_key_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    eh::device_with_keys(&server, &alice).await;
    eh::device_with_keys(&server, &bob).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let sync = server.sync(&bob, "timeout=0").await;
    let bob_token = eh::next_batch(&sync);

    // Bob joins: both now share a room, each sees the other in `changed`.
    let alice_token = eh::next_batch(&server.sync(&alice, "timeout=0").await);
    server.join(&bob, &room).await;
    let sync = server
        .sync(&alice, &format!("since={alice_token}&timeout=0"))
        .await;
    assert!(eh::list(&sync, "changed").contains(&bob.user_id), "{sync}");
    let sync = server
        .sync(&bob, &format!("since={bob_token}&timeout=0"))
        .await;
    assert!(
        eh::list(&sync, "changed").contains(&alice.user_id),
        "{sync}"
    );
    let bob_token = eh::next_batch(&sync);

    // Nothing new: a sync with the latest token shows no change.
    let sync = server
        .sync(&bob, &format!("since={bob_token}&timeout=0"))
        .await;
    assert!(eh::list(&sync, "changed").is_empty(), "{sync}");

    // A new device of Alice's, with keys: a long-polling sync of Bob's wakes with it.
    let started = Instant::now();
    let poll = {
        let base = server.base.clone();
        let token = bob.token.clone();
        let since = bob_token.clone();
        let alice_id = alice.user_id.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut since = since;
            loop {
                let sync: Value = client
                    .get(format!(
                        "{base}{V3}/sync?since={}&timeout=20000",
                        enc(&since)
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("sync")
                    .json()
                    .await
                    .expect("json");
                if eh::list(&sync, "changed").contains(&alice_id) {
                    return sync;
                }
                since = eh::next_batch(&sync);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alice2 = eh::login(&server, &alice, None).await;
    eh::device_with_keys(&server, &alice2).await;
    let sync = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("woken by the key upload")
        .expect("poll");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, changes) = server
        .get(
            &format!(
                "{V3}/keys/changes?from={}&to={}",
                enc(&bob_token),
                enc(&eh::next_batch(&sync))
            ),
            &bob.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        eh::list(&changes, "changed").contains(&alice.user_id),
        "{changes}"
    );
    let bob_token = eh::next_batch(&sync);

    // Carol shares no room with Bob: her new keys are not Bob's business.
    eh::device_with_keys(&server, &carol).await;
    let carol2 = eh::login(&server, &carol, None).await;
    eh::device_with_keys(&server, &carol2).await;
    let sync = server
        .sync(&bob, &format!("since={bob_token}&timeout=0"))
        .await;
    assert!(
        !eh::list(&sync, "changed").contains(&carol.user_id),
        "{sync}"
    );

    // Alice removes a device: a change for Bob.
    eh::delete_device(&server, &alice, &alice2.device_id).await;
    let sync = server
        .sync(&bob, &format!("since={bob_token}&timeout=0"))
        .await;
    assert!(
        eh::list(&sync, "changed").contains(&alice.user_id),
        "{sync}"
    );
    let body = query(&server, &bob, &[&alice.user_id]).await;
    let devices = body["device_keys"][&alice.user_id]
        .as_object()
        .expect("devices");
    assert!(
        !devices.contains_key(&alice2.device_id),
        "removed device's keys are gone: {body}"
    );
    let bob_token = eh::next_batch(&sync);
    let alice_token = eh::next_batch(&server.sync(&alice, "timeout=0").await);

    // Bob leaves the only room they share: Alice sees him in `left`, and he sees her.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/leave", enc(&room)),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sync = server
        .sync(&alice, &format!("since={alice_token}&timeout=0"))
        .await;
    assert_eq!(eh::list(&sync, "left"), vec![bob.user_id.clone()], "{sync}");
    let sync = server
        .sync(&bob, &format!("since={bob_token}&timeout=0"))
        .await;
    assert_eq!(
        eh::list(&sync, "left"),
        vec![alice.user_id.clone()],
        "{sync}"
    );
    let (_, changes) = server
        .get(
            &format!(
                "{V3}/keys/changes?from={}&to={}",
                enc(&bob_token),
                enc(&eh::next_batch(&sync))
            ),
            &bob.token,
        )
        .await;
    assert_eq!(eh::list(&changes, "left"), vec![alice.user_id.clone()]);

    // Still sharing another room: leaving one is not `left`.
    let room2 = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let room3 = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room2).await;
    server.join(&bob, &room3).await;
    let alice_token = eh::next_batch(&server.sync(&alice, "timeout=0").await);
    server
        .post(
            &format!("{V3}/rooms/{}/leave", enc(&room2)),
            &bob.token,
            json!({}),
        )
        .await;
    let sync = server
        .sync(&alice, &format!("since={alice_token}&timeout=0"))
        .await;
    assert!(eh::list(&sync, "left").is_empty(), "{sync}");

    // Bad tokens.
    let result = server
        .get(&format!("{V3}/keys/changes?from=nope&to=s1"), &bob.token)
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
}

fn cross_signing_key(user: &User, usage: &str, key: &Signer, master: Option<&Signer>) -> Value {
    let object = json!({
        "user_id": user.user_id,
        "usage": [usage],
        "keys": { key.key_id(): key.public },
    });
    match master {
        Some(master) => master.sign(&user.user_id, &object),
        None => object,
    }
}

fn password_auth(user: &User, session: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user.user_id },
        "password": "correct horse",
        "session": session,
    })
}

#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let alice_device = eh::device_with_keys(&server, &alice).await;
    let path = format!("{V3}/keys/device_signing/upload");

    let master = Signer::cross_signing();
    let ssk = Signer::cross_signing();
    let usk = Signer::cross_signing();
    // A self-signing key not signed by the master key, or with no master key at all.
    let result = server
        .post(
            &path,
            &alice.token,
            json!({ "self_signing_key": cross_signing_key(&alice, "self_signing", &ssk, Some(&ssk)) }),
        )
        .await;
    assert_error(&result, 400, "M_MISSING_PARAM");
    let result = server
        .post(
            &path,
            &alice.token,
            json!({
                "master_key": cross_signing_key(&alice, "master", &master, None),
                "self_signing_key": cross_signing_key(&alice, "self_signing", &ssk, Some(&usk)),
            }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_SIGNATURE");
    // Wrong usage, another user's key.
    let result = server
        .post(
            &path,
            &alice.token,
            json!({ "master_key": cross_signing_key(&alice, "self_signing", &master, None) }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let result = server
        .post(
            &path,
            &alice.token,
            json!({ "master_key": cross_signing_key(&bob, "master", &master, None) }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");

    // The first upload needs no UIA (spec v1.11), nor does repeating it.
    let keys = json!({
        "master_key": cross_signing_key(&alice, "master", &master, None),
        "self_signing_key": cross_signing_key(&alice, "self_signing", &ssk, Some(&master)),
        "user_signing_key": cross_signing_key(&alice, "user_signing", &usk, Some(&master)),
    });
    let (status, body) = server.post(&path, &alice.token, keys.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.post(&path, &alice.token, keys.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Replacing them does.
    let master2 = Signer::cross_signing();
    let replace = json!({ "master_key": cross_signing_key(&alice, "master", &master2, None) });
    let (status, challenge) = server.post(&path, &alice.token, replace.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"][0]["stages"], json!(["m.login.password"]));
    let session = challenge["session"].as_str().expect("session");
    let mut wrong = password_auth(&alice, session);
    wrong["password"] = json!("wrong");
    let mut attempt = replace.clone();
    attempt["auth"] = wrong;
    let (status, _) = server.post(&path, &alice.token, attempt).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // (Not completed: the original keys stay; Bob sets up his own.)
    let bob_master = Signer::cross_signing();
    let bob_ssk = Signer::cross_signing();
    let bob_usk = Signer::cross_signing();
    let bob_device = eh::device_with_keys(&server, &bob).await;
    let (status, body) = server
        .post(
            &path,
            &bob.token,
            json!({
                "master_key": cross_signing_key(&bob, "master", &bob_master, None),
                "self_signing_key": cross_signing_key(&bob, "self_signing", &bob_ssk, Some(&bob_master)),
                "user_signing_key": cross_signing_key(&bob, "user_signing", &bob_usk, Some(&bob_master)),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Alice's query of herself: all three; Bob's query of Alice: no user-signing key.
    let own = query(&server, &alice, &[&alice.user_id]).await;
    assert_eq!(own["master_keys"][&alice.user_id], keys["master_key"]);
    assert_eq!(
        own["self_signing_keys"][&alice.user_id],
        keys["self_signing_key"]
    );
    assert_eq!(
        own["user_signing_keys"][&alice.user_id],
        keys["user_signing_key"]
    );
    let theirs = query(&server, &bob, &[&alice.user_id]).await;
    assert_eq!(theirs["master_keys"][&alice.user_id], keys["master_key"]);
    assert!(
        theirs["user_signing_keys"].get(&alice.user_id).is_none(),
        "{theirs}"
    );

    // Signatures: Alice's device by her self-signing key, her master key by her device, Bob's
    // master key by her user-signing key; one bad one.
    let device_keys = own["device_keys"][&alice.user_id][&alice.device_id].clone();
    let signed_device = ssk.sign(&alice.user_id, &device_keys);
    let signed_master = alice_device.sign(&alice.user_id, &keys["master_key"]);
    let bob_master_key = theirs_master(&server, &alice, &bob).await;
    let signed_bob = usk.sign(&alice.user_id, &bob_master_key);
    let forged = Signer::cross_signing();
    let mut forged_device = without_unsigned(device_keys.clone());
    forged_device["signatures"][&alice.user_id][ssk.key_id()] = forged
        .sign(&alice.user_id, &device_keys)["signatures"][&alice.user_id][forged.key_id()]
    .clone();
    let (status, body) = server
        .post(
            &format!("{V3}/keys/signatures/upload"),
            &alice.token,
            json!({
                &alice.user_id: {
                    &alice.device_id: signed_device,
                    &master.public: signed_master,
                },
                &bob.user_id: { &bob_master.public: signed_bob },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{body}"
    );
    let (status, body) = server
        .post(
            &format!("{V3}/keys/signatures/upload"),
            &alice.token,
            json!({
                &alice.user_id: { &alice.device_id: forged_device, "NOSUCHKEY": keys["master_key"] },
                &bob.user_id: { &bob.device_id: bob_master_key },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "{body}"
    );
    assert!(body["failures"][&alice.user_id]["NOSUCHKEY"]["errcode"].is_string());
    assert!(body["failures"][&bob.user_id][&bob.device_id]["errcode"].is_string());

    // Bob sees Alice's device signed by her self-signing key, and her master key signed by her
    // device.
    let theirs = query(&server, &bob, &[&alice.user_id]).await;
    let device = &theirs["device_keys"][&alice.user_id][&alice.device_id];
    assert!(
        eh::verify(device, &alice.user_id, &ssk.key_id(), &ssk.public),
        "{theirs}"
    );
    let alice_master = &theirs["master_keys"][&alice.user_id];
    assert!(eh::verify(
        alice_master,
        &alice.user_id,
        &format!("ed25519:{}", alice.device_id),
        &alice_device.public
    ));
    // Alice's signature of Bob's master key: only Alice sees it.
    let alice_view = query(&server, &alice, &[&bob.user_id]).await;
    assert!(eh::verify(
        &alice_view["master_keys"][&bob.user_id],
        &alice.user_id,
        &usk.key_id(),
        &usk.public
    ));
    for viewer in [&bob, &carol] {
        let view = query(&server, viewer, &[&bob.user_id]).await;
        assert!(
            view["master_keys"][&bob.user_id]["signatures"]
                .get(&alice.user_id)
                .is_none(),
            "{view}"
        );
    }
    let _ = bob_device;

    // Now with UIA: the replacement goes through.
    let (status, challenge) = server.post(&path, &alice.token, replace.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut attempt = replace.clone();
    attempt["auth"] = password_auth(&alice, challenge["session"].as_str().expect("session"));
    let (status, body) = server.post(&path, &alice.token, attempt).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let own = query(&server, &alice, &[&alice.user_id]).await;
    assert_eq!(
        without_signatures(own["master_keys"][&alice.user_id].clone()),
        replace["master_key"]
    );
}

async fn theirs_master(server: &TestServer, viewer: &User, owner: &User) -> Value {
    query(server, viewer, &[&owner.user_id]).await["master_keys"][&owner.user_id].clone()
}

#[tokio::test]
async fn bad_requests_get_matrix_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for (method, path, body) in [
        (
            Method::POST,
            "keys/query",
            json!({ "device_keys": { "not-a-user": [] } }),
        ),
        (Method::POST, "keys/query", json!({ "device_keys": [] })),
        (Method::POST, "keys/claim", json!({})),
        (
            Method::POST,
            "keys/claim",
            json!({ "one_time_keys": { "@a:localhost": "x" } }),
        ),
        (Method::POST, "keys/upload", json!({ "device_keys": [] })),
        (
            Method::POST,
            "keys/signatures/upload",
            json!({ "@a:localhost": [] }),
        ),
        (
            Method::POST,
            "keys/device_signing/upload",
            json!({ "master_key": "x" }),
        ),
        (Method::GET, "keys/changes", Value::Null),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (status, response) = server
            .request(
                method.clone(),
                &format!("{V3}/{path}"),
                Some(&alice.token),
                body,
            )
            .await;
        assert_eq!(status.as_u16(), 400, "{method} {path}: {response}");
        assert!(response["errcode"].is_string(), "{response}");
    }
    // Not logged in.
    let (status, response) = server
        .request(
            Method::POST,
            &format!("{V3}/keys/query"),
            None,
            Some(json!({ "device_keys": {} })),
        )
        .await;
    assert_eq!(status.as_u16(), 401, "{response}");
}

#[tokio::test]
async fn no_input_makes_an_e2ee_endpoint_fail_with_500() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    eh::device_with_keys(&server, &alice).await;
    let junk = [
        json!(null),
        json!([]),
        json!("text"),
        json!(1.5),
        json!({}),
        json!({ "a": { "b": [1, { "c": 9_007_199_254_740_993u64 }] } }),
        json!({ "device_keys": { "user_id": 1 }, "one_time_keys": { "x:y": [] }, "fallback_keys": { "a:b": {} } }),
        json!({ "one_time_keys": { "signed_curve25519:A": { "key": 1.5, "signatures": "x" } } }),
        json!({ "device_keys": { "@x:localhost": ["\u{0}"] } }),
        json!({ "one_time_keys": { "@x:localhost": { "D": "\u{ffff}" } } }),
        json!({ "master_key": { "user_id": alice.user_id, "usage": "master", "keys": [] } }),
        json!({ &alice.user_id: { "K": { "signatures": { &alice.user_id: { "ed25519:K": 5 } } } } }),
        json!({ "messages": { &alice.user_id: { "*": [] } } }),
        json!({ "algorithm": 5, "auth_data": [] }),
        json!({ "rooms": { "!r:localhost": { "sessions": { "s": { "session_data": 1 } } } } }),
        json!({ "sessions": { "s": [] } }),
    ];
    let paths = [
        (Method::POST, "keys/upload".to_owned()),
        (Method::POST, "keys/query".to_owned()),
        (Method::POST, "keys/claim".to_owned()),
        (Method::POST, "keys/device_signing/upload".to_owned()),
        (Method::POST, "keys/signatures/upload".to_owned()),
        (Method::PUT, "sendToDevice/m.test/t1".to_owned()),
        (Method::POST, "room_keys/version".to_owned()),
        (Method::PUT, "room_keys/version/1".to_owned()),
        (Method::PUT, "room_keys/keys?version=1".to_owned()),
        (
            Method::PUT,
            format!("room_keys/keys/{}?version=1", enc("!r:localhost")),
        ),
        (
            Method::PUT,
            format!("room_keys/keys/{}/s?version=1", enc("!r:localhost")),
        ),
    ];
    for (method, path) in &paths {
        for (i, body) in junk.iter().enumerate() {
            // Vary the transaction id so each send is really processed.
            let path = path.replace("/t1", &format!("/t{i}"));
            let (status, response) = server
                .request(
                    method.clone(),
                    &format!("{V3}/{path}"),
                    Some(&alice.token),
                    Some(body.clone()),
                )
                .await;
            assert!(
                status.as_u16() < 500,
                "{method} {path} {body}: {status} {response}"
            );
        }
    }
    for path in [
        "keys/changes?from=s0&to=s999999999999",
        "keys/changes?from=s99999999999999999999999&to=s1",
        "room_keys/version/18446744073709551616",
        "room_keys/keys?version=-1",
        "room_keys/keys/%21r%3Alocalhost/%FF?version=1",
    ] {
        let (status, response) = server.get(&format!("{V3}/{path}"), &alice.token).await;
        assert!(status.as_u16() < 500, "GET {path}: {status} {response}");
    }
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
