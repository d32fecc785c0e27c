//! Error responses over HTTP: exact status codes and errcodes as the Matrix client-server spec
//! (https://spec.matrix.org/latest/client-server-api/#standard-error-response) defines them.

mod common;
mod spec_helpers;

use std::time::Duration;

use common::{TestServer, assert_error, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spec_helpers::raw;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V3: &str = "/_matrix/client/v3";

/// POST with a raw body and `Content-Type: application/json`.
async fn post_bytes(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (StatusCode, Value) {
    raw(
        server,
        "POST",
        path,
        token,
        &[("content-type", "application/json")],
        Some(body.to_vec()),
    )
    .await
    .expect("request")
    .pair()
}

#[tokio::test]
async fn non_json_body_is_m_not_json() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for body in [
        &b"this is not json"[..],
        b"{\"name\": ",
        b"{'single': 'quotes'}",
        b"\xff\xfe\x00",
    ] {
        let result = post_bytes(
            &server,
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            body,
        )
        .await;
        assert_error(&result, 400, "M_NOT_JSON");
    }
    // Also on an endpoint without authentication.
    let result = post_bytes(&server, &format!("{V3}/login"), None, b"nope").await;
    assert_error(&result, 400, "M_NOT_JSON");
    let result = post_bytes(&server, &format!("{V3}/register"), None, b"{").await;
    assert_error(&result, 400, "M_NOT_JSON");
}

#[tokio::test]
async fn wrongly_typed_fields_are_m_bad_json() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let result = server
        .post(
            &format!("{V3}/createRoom"),
            &alice.token,
            json!({ "name": 5 }),
        )
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
    let result = server
        .post(
            &format!("{V3}/createRoom"),
            &alice.token,
            json!({ "invite": "not-a-list" }),
        )
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
    let result = server
        .post(&format!("{V3}/createRoom"), &alice.token, json!([1, 2, 3]))
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
    let result = server
        .request(
            Method::POST,
            &format!("{V3}/register"),
            None,
            Some(json!({ "username": [], "password": "x", "auth": { "type": "m.login.dummy" } })),
        )
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
    let result = server
        .request(Method::POST, &format!("{V3}/login"), None, Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": 7 }, "password": "x" })))
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
    let room = server.create_room(&alice, json!({})).await;
    // A missing required key is also a malformed body (M_BAD_JSON, or M_MISSING_PARAM).
    let result = server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&room)),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(result.0, StatusCode::BAD_REQUEST, "{}", result.1);
    assert!(
        matches!(
            result.1["errcode"].as_str(),
            Some("M_BAD_JSON" | "M_MISSING_PARAM")
        ),
        "{}",
        result.1
    );
    // The m.room.message content is free-form JSON but must be an object.
    let result = server
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/t1", enc(&room)),
            &alice.token,
            json!("text"),
        )
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn invalid_ids_in_path_are_m_invalid_param() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let result = server
        .put(
            &format!("{V3}/rooms/not-a-room-id/send/m.room.message/t1"),
            &alice.token,
            json!({ "body": "x", "msgtype": "m.text" }),
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let result = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b", enc("#alias:localhost")),
            &alice.token,
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let result = server
        .get(
            &format!("{V3}/rooms/{}/state", enc("room-without-sigil:localhost")),
            &alice.token,
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let result = server
        .get(&format!("{V3}/profile/not-a-user-id"), &alice.token)
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let room = server.create_room(&alice, json!({})).await;
    let result = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=sideways", enc(&room)),
            &alice.token,
        )
        .await;
    assert_error(&result, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn unknown_endpoint_and_wrong_method_are_m_unrecognized() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for path in [
        "/_matrix/client/v3/no_such_endpoint",
        "/_matrix/client/v9/sync",
        "/_matrix/nothing",
        "/totally/unknown",
    ] {
        let result = server.get(path, &alice.token).await;
        assert_error(&result, 404, "M_UNRECOGNIZED");
        // Unauthenticated too: the path is unknown, no token needed to learn that.
        let result = server.request(Method::GET, path, None, None).await;
        assert_error(&result, 404, "M_UNRECOGNIZED");
    }
    let result = server
        .request(
            Method::DELETE,
            &format!("{V3}/sync"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_error(&result, 405, "M_UNRECOGNIZED");
    let result = server
        .request(Method::PUT, &format!("{V3}/login"), None, Some(json!({})))
        .await;
    assert_error(&result, 405, "M_UNRECOGNIZED");
    let result = server
        .request(
            Method::GET,
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_error(&result, 405, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn missing_and_unknown_tokens() {
    let server = TestServer::start().await;
    for path in [
        format!("{V3}/sync"),
        format!("{V3}/account/whoami"),
        format!("{V3}/joined_rooms"),
    ] {
        let result = server.request(Method::GET, &path, None, None).await;
        assert_error(&result, 401, "M_MISSING_TOKEN");
        let result = server
            .request(Method::GET, &path, Some("not-a-real-token"), None)
            .await;
        assert_error(&result, 401, "M_UNKNOWN_TOKEN");
        // The deprecated query parameter is checked as well.
        let result = server
            .request(
                Method::GET,
                &format!("{path}?access_token=bogus"),
                None,
                None,
            )
            .await;
        assert_error(&result, 401, "M_UNKNOWN_TOKEN");
    }
    let result = server
        .request(
            Method::POST,
            &format!("{V3}/createRoom"),
            None,
            Some(json!({})),
        )
        .await;
    assert_error(&result, 401, "M_MISSING_TOKEN");
    // A non-Bearer Authorization header is no token at all.
    let result = raw(
        &server,
        "GET",
        &format!("{V3}/account/whoami"),
        None,
        &[("authorization", "Basic Zm9vOmJhcg==")],
        None,
    )
    .await
    .expect("request")
    .pair();
    assert_error(&result, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn not_a_member_is_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let result = server
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/t1", enc(&room)),
            &bob.token,
            json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
    let result = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b", enc(&room)),
            &bob.token,
        )
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
    let result = server
        .get(&format!("{V3}/rooms/{}/state", enc(&room)), &bob.token)
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
    let result = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.topic/", enc(&room)),
            &bob.token,
            json!({ "topic": "x" }),
        )
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
    // Joining an invite-only room uninvited.
    let result = server.join(&bob, &room).await;
    assert_error(&result, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn unknown_event_and_room_are_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let result = server
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(&room), enc("$doesnotexist")),
            &alice.token,
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    let result = server
        .get(
            &format!("{V3}/rooms/{}/context/{}", enc(&room), enc("$doesnotexist")),
            &alice.token,
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    let result = server
        .get(
            &format!("{V3}/directory/room/{}", enc("#nowhere:localhost")),
            &alice.token,
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    // An event in a room that does not exist: the spec's 404 covers "not found or no permission".
    let result = server
        .get(
            &format!(
                "{V3}/rooms/{}/event/{}",
                enc("!unknownroom:localhost"),
                enc("$doesnotexist")
            ),
            &alice.token,
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    // A state event that was never set.
    let result = server
        .get(
            &format!("{V3}/rooms/{}/state/m.room.topic/", enc(&room)),
            &alice.token,
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    let result = server
        .get(&format!("{V3}/devices/NOSUCHDEVICE"), &alice.token)
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
    let result = server
        .get(
            &format!(
                "{V3}/user/{}/account_data/com.example.none",
                enc(&alice.user_id)
            ),
            &alice.token,
        )
        .await;
    assert_error(&result, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn username_taken_and_invalid() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let register = |username: Value| {
        let server = &server;
        async move {
            server
                .request(Method::POST, &format!("{V3}/register"), None, Some(json!({ "username": username, "password": "pw", "auth": { "type": "m.login.dummy" } })))
                .await
        }
    };
    assert_error(&register(json!("alice")).await, 400, "M_USER_IN_USE");
    for bad in [
        "",
        "has space",
        "bang!",
        "ümlaut",
        "colon:",
        "@at",
        &"x".repeat(300),
    ] {
        assert_error(&register(json!(bad)).await, 400, "M_INVALID_USERNAME");
    }
}

#[tokio::test]
async fn alias_taken_on_create_room_and_directory() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(&alice, json!({ "room_alias_name": "taken" }))
        .await;
    let result = server
        .post(
            &format!("{V3}/createRoom"),
            &alice.token,
            json!({ "room_alias_name": "taken" }),
        )
        .await;
    assert_error(&result, 400, "M_ROOM_IN_USE");
    let other = server.create_room(&alice, json!({})).await;
    let result = server
        .put(
            &format!("{V3}/directory/room/{}", enc("#taken:localhost")),
            &alice.token,
            json!({ "room_id": other }),
        )
        .await;
    assert_eq!(result.0, StatusCode::CONFLICT, "{}", result.1);
    assert!(result.1["errcode"].is_string(), "{}", result.1);
    // The alias still points at the first room.
    let (status, body) = server
        .get(
            &format!("{V3}/directory/room/{}", enc("#taken:localhost")),
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    // Malformed alias localpart on createRoom.
    let result = server
        .post(
            &format!("{V3}/createRoom"),
            &alice.token,
            json!({ "room_alias_name": "bad:alias" }),
        )
        .await;
    assert_eq!(result.0, StatusCode::BAD_REQUEST, "{}", result.1);
}

#[tokio::test]
async fn unsupported_room_version() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for version in ["999", "org.example.custom", "0"] {
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
async fn event_over_64_kib_is_too_large() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let big = "x".repeat(70_000);
    let result = server
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/big1", enc(&room)),
            &alice.token,
            json!({ "msgtype": "m.text", "body": big }),
        )
        .await;
    assert_error(&result, 413, "M_TOO_LARGE");
    let result = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.topic/", enc(&room)),
            &alice.token,
            json!({ "topic": big }),
        )
        .await;
    assert_error(&result, 413, "M_TOO_LARGE");
    // Content under 64 KiB whose whole event (with sender, room id, hashes ...) is over it.
    let edge = "e".repeat(65_500);
    let result = server
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/edge1", enc(&room)),
            &alice.token,
            json!({ "body": edge }),
        )
        .await;
    assert_error(&result, 413, "M_TOO_LARGE");
    // Just under the limit is fine.
    let ok = "y".repeat(60_000);
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/ok1", enc(&room)),
            &alice.token,
            json!({ "msgtype": "m.text", "body": ok }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

const SMALL_BODY_LIMIT: &str =
    "[ratelimit]\nenabled = false\n[limits]\nmax_request_body = 100000\n";

#[tokio::test]
async fn request_body_over_limit_is_too_large() {
    let server = TestServer::start_with(SMALL_BODY_LIMIT).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let body = json!({ "msgtype": "m.text", "body": "z".repeat(150_000) })
        .to_string()
        .into_bytes();
    // A fresh connection per request: connection reuse after a 413 is tested separately.
    let send = |method: Method, path: String, token: Option<String>, body: Vec<u8>| async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut request = client
            .request(method, path)
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let result = send(
        Method::PUT,
        server.url(&format!(
            "{V3}/rooms/{}/send/m.room.message/huge",
            enc(&room)
        )),
        Some(alice.token.clone()),
        body.clone(),
    )
    .await;
    assert_error(&result, 413, "M_TOO_LARGE");
    // On an unauthenticated endpoint as well.
    let result = send(Method::POST, server.url(&format!("{V3}/login")), None, body).await;
    assert_error(&result, 413, "M_TOO_LARGE");
}

/// After a 413 answered without reading the body, the server must not leave a keep-alive client
/// stranded: either it says `Connection: close`, or the connection stays usable (RFC 9112 §9.6).
#[tokio::test]
async fn too_large_response_on_keep_alive_connection() {
    let server = TestServer::start_with(SMALL_BODY_LIMIT).await;
    let body = format!("{{\"a\":\"{}\"}}", "x".repeat(150_000));
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let head = format!(
        "POST {V3}/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let _ = stream.write_all(body.as_bytes()).await;
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if received.windows(4).any(|w| w == b"\r\n\r\n") && received.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    let first = String::from_utf8_lossy(&received).into_owned();
    assert!(first.starts_with("HTTP/1.1 413"), "{first:?}");
    if first.to_ascii_lowercase().contains("connection: close") {
        return;
    }
    // No `Connection: close`: the client may reuse the connection, so it must work.
    let second = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let write = stream.write_all(second).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if received.starts_with(b"HTTP/1.1") && received.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    let second = String::from_utf8_lossy(&received);
    assert!(
        write.is_ok() && second.starts_with("HTTP/1.1 200"),
        "413 sent without `Connection: close`, then the connection was dropped (write: {write:?}, second response: {second:?}); first response: {first:?}"
    );
}

#[tokio::test]
async fn missing_type_fields_are_bad_requests_not_panics() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (_, other_device) = spec_helpers::login(&server, "alice", "correct horse").await;
    let cases: Vec<(Method, String, Option<&str>, Value)> = vec![
        (Method::POST, format!("{V3}/login"), None, json!({})),
        (
            Method::POST,
            format!("{V3}/login"),
            None,
            json!({ "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse" }),
        ),
        (
            Method::POST,
            format!("{V3}/login"),
            None,
            json!({ "type": "m.login.password", "identifier": {}, "password": "x" }),
        ),
        (
            Method::POST,
            format!("{V3}/register"),
            None,
            json!({ "username": "x1", "password": "pw", "auth": {} }),
        ),
        (
            Method::POST,
            format!("{V3}/register"),
            None,
            json!({ "username": "x2", "password": "pw", "auth": { "session": "abc" } }),
        ),
        (
            Method::DELETE,
            format!("{V3}/devices/{}", enc(&other_device)),
            Some(alice.token.as_str()),
            json!({ "auth": {} }),
        ),
        (
            Method::POST,
            format!("{V3}/delete_devices"),
            Some(alice.token.as_str()),
            json!({ "devices": [], "auth": {} }),
        ),
        (
            Method::POST,
            format!("{V3}/account/password"),
            Some(alice.token.as_str()),
            json!({ "new_password": "n", "auth": { "password": "x" } }),
        ),
        (
            Method::POST,
            format!("{V3}/account/deactivate"),
            Some(alice.token.as_str()),
            json!({ "auth": { "identifier": {}, "password": "x" } }),
        ),
        (
            Method::POST,
            format!("{V3}/createRoom"),
            Some(alice.token.as_str()),
            json!({ "initial_state": [{}] }),
        ),
        (
            Method::POST,
            format!("{V3}/createRoom"),
            Some(alice.token.as_str()),
            json!({ "invite_3pid": [{}] }),
        ),
        (
            Method::POST,
            format!("{V3}/user/{}/filter", enc(&alice.user_id)),
            Some(alice.token.as_str()),
            json!({ "room": { "timeline": { "types": [{}] } } }),
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, token, body) in cases {
        let (status, response) = server
            .request(method.clone(), &path, token, Some(body.clone()))
            .await;
        // 401 is a UIA challenge (it asks again for a valid auth dict); otherwise a 4xx error.
        let fine = (status.is_client_error() && response["errcode"].is_string())
            || (status == StatusCode::UNAUTHORIZED && response["flows"].is_array());
        if !fine {
            failures.push(format!("{method} {path} {body}: {status} {response}"));
        }
    }
    assert!(
        !server.log().contains("panicked"),
        "the server panicked:\n{}\nfailures: {failures:#?}",
        server
            .log()
            .lines()
            .filter(|l| l.contains("panicked") || l.contains(".rs:"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Writes `head` and a few body bytes of a request declaring a huge `Content-Length`, never sends
/// the rest, and returns the raw response read within 5 s.
async fn partial_request(port: u16, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
        .write_all(b"{\"msgtype\":\"m.text\",\"body\":\"")
        .await
        .expect("write body start");
    stream.flush().await.expect("flush");
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read error after {} bytes: {e}", received.len()),
        }
        let text = String::from_utf8_lossy(&received);
        if let Some(split) = text.find("\r\n\r\n") {
            let length = text[..split].lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if length.is_some_and(|len| received.len() >= split + 4 + len) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn oversized_content_length_is_rejected_without_reading_the_body() {
    let server = TestServer::start_with(SMALL_BODY_LIMIT).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let head = format!(
        "PUT {V3}/rooms/{}/send/m.room.message/partial HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n",
        enc(&room),
        server.port,
        alice.token
    );
    let started = std::time::Instant::now();
    let response = partial_request(server.port, &head).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "expected an immediate 413 after {:?}, got {response:?}",
        started.elapsed()
    );
    assert!(response.contains("M_TOO_LARGE"), "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Unauthenticated endpoint, no token: still refused from the header alone.
    let head = format!(
        "POST {V3}/login HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
        server.port
    );
    let response = partial_request(server.port, &head).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response:?}");
    assert!(response.contains("M_TOO_LARGE"), "{response}");
    // The server is still fine.
    let (status, _) = server
        .get(&format!("{V3}/account/whoami"), &alice.token)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn chunked_body_over_limit_is_too_large() {
    let server = TestServer::start_with(SMALL_BODY_LIMIT).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let head = format!(
        "PUT {V3}/rooms/{}/send/m.room.message/chunked HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        enc(&room),
        server.port,
        alice.token
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut payload = b"{\"msgtype\":\"m.text\",\"body\":\"".to_vec();
    payload.extend(std::iter::repeat_n(b'c', 200_000));
    // Send 8 KiB chunks; the server may answer and stop reading once past the limit.
    for chunk in payload.chunks(8192) {
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.to_vec(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&received).contains("}") {
                break;
            }
        }
    })
    .await;
    let response = String::from_utf8_lossy(&received);
    assert!(response.starts_with("HTTP/1.1 413"), "{response:?}");
    assert!(response.contains("M_TOO_LARGE"), "{response}");
}

const RATE_LIMITED: &str = "[ratelimit]\nenabled = true\n[ratelimit.failed_login]\nper_second = 0.001\nburst = 2\n[ratelimit.registration]\nper_second = 0.001\nburst = 3\n";

#[track_caller]
fn assert_limited(result: &(StatusCode, Value)) {
    assert_error(result, 429, "M_LIMIT_EXCEEDED");
    let retry = &result.1["retry_after_ms"];
    assert!(
        retry.is_u64() && retry.as_u64() > Some(0),
        "retry_after_ms must be a positive integer: {}",
        result.1
    );
}

#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let server = TestServer::start_with(RATE_LIMITED).await;
    server.register("alice").await;
    for _ in 0..2 {
        let result = spec_helpers::login_raw(&server, "alice", "wrong", json!({})).await;
        assert_error(&result, 403, "M_FORBIDDEN");
    }
    let result = spec_helpers::login_raw(&server, "alice", "wrong", json!({})).await;
    assert_limited(&result);
    // The Retry-After header accompanies it.
    let response = raw(
        &server,
        "POST",
        &format!("{V3}/login"),
        None,
        &[("content-type", "application/json")],
        Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "wrong" }).to_string().into_bytes()),
    )
    .await
    .expect("request");
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after = response
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s > 0),
        "Retry-After header: {:?}",
        response.headers
    );
}

#[tokio::test]
async fn registration_is_rate_limited() {
    let server = TestServer::start_with(RATE_LIMITED).await;
    for name in ["r1", "r2", "r3"] {
        server.register(name).await;
    }
    let result = server
        .request(
            Method::POST,
            &format!("{V3}/register"),
            None,
            Some(
                json!({ "username": "r4", "password": "pw", "auth": { "type": "m.login.dummy" } }),
            ),
        )
        .await;
    assert_limited(&result);
    // Nothing was created.
    let (status, body) = server
        .request(
            Method::GET,
            &format!("{V3}/register/available?username=r4"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let response = raw(
        &server,
        "OPTIONS",
        &format!("{V3}/rooms/{}/send/m.room.message/t1", enc("!a:localhost")),
        None,
        &[
            ("origin", "https://app.example.org"),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        None,
    )
    .await
    .expect("preflight");
    assert!(
        response.status.is_success(),
        "preflight status {}",
        response.status
    );
    let header = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert_eq!(
        header("access-control-allow-origin"),
        "*",
        "{:?}",
        response.headers
    );
    let methods = header("access-control-allow-methods");
    for method in ["get", "post", "put", "delete", "options"] {
        assert!(
            methods.contains(method),
            "allow-methods {methods:?} lacks {method}"
        );
    }
    let allowed = header("access-control-allow-headers");
    for name in ["authorization", "content-type", "x-requested-with"] {
        assert!(
            allowed.contains(name),
            "allow-headers {allowed:?} lacks {name}"
        );
    }
    // Ordinary responses, successful and failed, carry the origin header.
    for (path, token) in [
        ("/_matrix/client/versions", None),
        (
            "/_matrix/client/v3/account/whoami",
            Some(alice.token.as_str()),
        ),
        ("/_matrix/client/v3/nope", None),
    ] {
        let response = raw(
            &server,
            "GET",
            path,
            token,
            &[("origin", "https://app.example.org")],
            None,
        )
        .await
        .expect("request");
        assert_eq!(
            response
                .headers
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some("*"),
            "{path}: {} {:?}",
            response.status,
            response.headers
        );
    }
}

/// Garbage values for query parameters and path segments (already percent-encoded where needed).
fn garbage() -> Vec<String> {
    vec![
        "18446744073709551615".into(),
        "18446744073709551616".into(),
        "9223372036854775807".into(),
        "-1".into(),
        "-9223372036854775808".into(),
        "".into(),
        "0".into(),
        "1e400".into(),
        "NaN".into(),
        "%F0%9F%92%A9%E2%80%AE".into(),
        "%00".into(),
        "%00%01%02".into(),
        "%FF%FE".into(),
        "null".into(),
        "%7B%22a%22%3A1%7D".into(),
        "%5B%5D".into(),
        "s18446744073709551615".into(),
        "s-1_x".into(),
        "a".repeat(3000),
        format!("%21{}%3Alocalhost", "r".repeat(3000)),
        format!("%24{}", "e".repeat(3000)),
        format!("%40{}%3Alocalhost", "u".repeat(3000)),
        "%21a%3A".into(),
        "%40%3A".into(),
        "..%2F..%2Fetc%2Fpasswd".into(),
    ]
}

/// Every response must be 2xx, or 4xx with a JSON errcode (a UIA 401 with flows also counts).
async fn check_no_panic(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    failures: &mut Vec<String>,
) {
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("content-type", "application/json")]
    } else {
        &[]
    };
    let mut short: String = path.chars().take(160).collect();
    if let Some(body) = &body {
        short.push_str(" body=");
        short.extend(String::from_utf8_lossy(body).chars().take(160));
    }
    match raw(server, method, path, token, headers, body).await {
        Err(e) => failures.push(format!("{method} {short}: connection failed: {e}")),
        Ok(r) if r.status.is_success() => {}
        Ok(r) if r.status.is_client_error() => {
            let ok = r.json["errcode"].is_string()
                || (r.status == StatusCode::UNAUTHORIZED && r.json["flows"].is_array());
            if !ok {
                failures.push(format!(
                    "{method} {short}: {} without JSON errcode: {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.bytes)
                ));
            }
        }
        Ok(r) => failures.push(format!(
            "{method} {short}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.bytes)
        )),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_never_panics() {
    let server = TestServer::start_with(
        "[ratelimit]\nenabled = false\n[limits]\nmax_sync_timeout_ms = 200\n",
    )
    .await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(&alice, json!({ "room_alias_name": "sweep" }))
        .await;
    let event = server.send_text(&alice, &room, "hello").await;
    let r = enc(&room);
    let u = enc(&alice.user_id);
    let e = enc(&event);
    let templates: Vec<(&str, String, Option<&str>)> = vec![
        (
            "GET",
            format!("{V3}/rooms/{r}/messages?dir=b&limit={{v}}"),
            None,
        ),
        (
            "GET",
            format!("{V3}/rooms/{r}/messages?dir=b&from={{v}}"),
            None,
        ),
        (
            "GET",
            format!("{V3}/rooms/{r}/messages?dir=f&from={{v}}&limit=18446744073709551615"),
            None,
        ),
        ("GET", format!("{V3}/rooms/{r}/messages?dir={{v}}"), None),
        (
            "GET",
            format!("{V3}/rooms/{r}/messages?dir=f&to={{v}}"),
            None,
        ),
        (
            "GET",
            format!("{V3}/rooms/{r}/messages?dir=b&filter={{v}}"),
            None,
        ),
        ("GET", format!("{V3}/rooms/{{v}}/messages?dir=b"), None),
        (
            "GET",
            "/_matrix/client/v3/sync?timeout={v}".to_string(),
            None,
        ),
        (
            "GET",
            "/_matrix/client/v3/sync?since={v}&timeout=0".to_string(),
            None,
        ),
        (
            "GET",
            "/_matrix/client/v3/sync?since=s1&timeout={v}".to_string(),
            None,
        ),
        (
            "GET",
            "/_matrix/client/v3/sync?filter={v}&timeout=0".to_string(),
            None,
        ),
        (
            "GET",
            "/_matrix/client/v3/sync?set_presence={v}&timeout=0&full_state={v}".to_string(),
            None,
        ),
        (
            "GET",
            format!("{V3}/rooms/{r}/context/{e}?limit={{v}}"),
            None,
        ),
        (
            "GET",
            format!("{V3}/rooms/{r}/context/{e}?filter={{v}}"),
            None,
        ),
        ("GET", format!("{V3}/rooms/{r}/context/{{v}}"), None),
        ("GET", format!("{V3}/rooms/{r}/event/{{v}}"), None),
        ("GET", format!("{V3}/rooms/{{v}}/state"), None),
        ("GET", format!("{V3}/rooms/{r}/state/{{v}}/{{v}}"), None),
        (
            "GET",
            format!("{V3}/rooms/{r}/members?at={{v}}&membership={{v}}"),
            None,
        ),
        (
            "GET",
            format!("{V3}/rooms/{r}/members?not_membership={{v}}"),
            None,
        ),
        (
            "GET",
            format!("{V3}/rooms/{r}/joined_members?x={{v}}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts={{v}}&dir=b"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts=0&dir={{v}}"),
            None,
        ),
        ("GET", format!("{V3}/profile/{{v}}"), None),
        ("GET", format!("{V3}/profile/{u}/{{v}}"), None),
        ("GET", format!("{V3}/directory/room/{{v}}"), None),
        ("GET", format!("{V3}/directory/list/room/{{v}}"), None),
        ("GET", format!("{V3}/user/{u}/filter/{{v}}"), None),
        ("GET", format!("{V3}/user/{{v}}/account_data/{{v}}"), None),
        (
            "GET",
            format!("{V3}/user/{u}/rooms/{{v}}/account_data/x"),
            None,
        ),
        ("GET", format!("{V3}/devices/{{v}}"), None),
        (
            "GET",
            format!("{V3}/register/available?username={{v}}"),
            None,
        ),
        (
            "GET",
            "/_matrix/client/v1/register/m.login.registration_token/validity?token={v}".to_owned(),
            None,
        ),
        (
            "GET",
            "/_matrix/federation/v1/openid/userinfo?access_token={v}".to_owned(),
            None,
        ),
        (
            "GET",
            format!("{V3}/account/whoami?access_token={{v}}"),
            None,
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/send/{{v}}/{{v}}"),
            Some("{}"),
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/state/{{v}}/{{v}}"),
            Some("{}"),
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/redact/{{v}}/{{v}}"),
            Some("{}"),
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/typing/{{v}}"),
            Some("{\"typing\": true, \"timeout\": 18446744073709551615}"),
        ),
        (
            "PUT",
            format!("{V3}/user/{u}/account_data/{{v}}"),
            Some("{}"),
        ),
        (
            "PUT",
            format!("{V3}/devices/{{v}}"),
            Some("{\"display_name\": \"x\"}"),
        ),
        (
            "PUT",
            format!("{V3}/profile/{u}/{{v}}"),
            Some("{\"displayname\": \"x\"}"),
        ),
        (
            "PUT",
            format!("{V3}/directory/room/{{v}}"),
            Some("{\"room_id\": \"!a:localhost\"}"),
        ),
        (
            "PUT",
            format!("{V3}/directory/list/room/{{v}}"),
            Some("{\"visibility\": \"public\"}"),
        ),
        ("POST", format!("{V3}/join/{{v}}"), Some("{}")),
        ("POST", format!("{V3}/rooms/{{v}}/join"), Some("{}")),
        ("POST", format!("{V3}/rooms/{{v}}/leave"), Some("{}")),
        ("POST", format!("{V3}/rooms/{{v}}/forget"), Some("{}")),
        ("POST", format!("{V3}/knock/{{v}}"), Some("{}")),
        (
            "POST",
            format!("{V3}/rooms/{{v}}/upgrade"),
            Some("{\"new_version\": \"12\"}"),
        ),
        ("DELETE", format!("{V3}/devices/{{v}}"), Some("{}")),
        ("DELETE", format!("{V3}/directory/room/{{v}}"), None),
    ];
    let mut failures = Vec::new();
    let mut count = 0;
    for (method, template, body) in &templates {
        for value in garbage() {
            let path = template.replace("{v}", &value);
            check_no_panic(
                &server,
                method,
                &path,
                Some(&alice.token),
                body.map(|b| b.as_bytes().to_vec()),
                &mut failures,
            )
            .await;
            count += 1;
        }
    }

    // Garbage JSON values in bodies.
    let values: Vec<String> = vec![
        "18446744073709551616".into(),
        "-9223372036854775809".into(),
        "1e400".into(),
        "-0".into(),
        "1.5".into(),
        "null".into(),
        "true".into(),
        "\"\\u0000\"".into(),
        "\"\\ud800\"".into(),
        "\"\"".into(),
        format!("\"{}\"", "w".repeat(5000)),
        "[]".into(),
        "{}".into(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
    ];
    let body_templates: Vec<(&str, String, &str)> = vec![
        ("POST", format!("{V3}/createRoom"), r#"{"name": {v}}"#),
        (
            "POST",
            format!("{V3}/createRoom"),
            r#"{"room_version": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/createRoom"),
            r#"{"preset": {v}, "visibility": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/createRoom"),
            r#"{"power_level_content_override": {"users_default": {v}, "ban": {v}}}"#,
        ),
        (
            "POST",
            format!("{V3}/createRoom"),
            r#"{"initial_state": [{"type": "m.room.power_levels", "state_key": "", "content": {"events_default": {v}}}]}"#,
        ),
        (
            "POST",
            format!("{V3}/createRoom"),
            r#"{"initial_state": [{"type": {v}, "state_key": {v}, "content": {v}}]}"#,
        ),
        (
            "POST",
            format!("{V3}/createRoom"),
            r#"{"invite": [{v}], "creation_content": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/createRoom"),
            r#"{"room_alias_name": {v}}"#,
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/state/m.room.power_levels/"),
            r#"{"users": {"@alice:localhost": 100}, "users_default": {v}, "events": {"m.room.message": {v}}}"#,
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/state/m.room.member/{{sk}}"),
            r#"{"membership": {v}}"#,
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/send/m.room.message/{{txn}}"),
            r#"{"msgtype": {v}, "body": {v}}"#,
        ),
        (
            "PUT",
            format!("{V3}/rooms/{r}/typing/{u}"),
            r#"{"typing": {v}, "timeout": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/rooms/{r}/invite"),
            r#"{"user_id": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/rooms/{r}/kick"),
            r#"{"user_id": {v}, "reason": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/user/{u}/filter"),
            r#"{"room": {"timeline": {"limit": {v}}}, "event_fields": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/login"),
            r#"{"type": "m.login.password", "identifier": {"type": "m.id.user", "user": {v}}, "password": {v}}"#,
        ),
        ("POST", format!("{V3}/login"), r#"{"type": {v}}"#),
        (
            "POST",
            format!("{V3}/register"),
            r#"{"username": {v}, "password": {v}, "auth": {"type": "m.login.dummy"}}"#,
        ),
        (
            "POST",
            format!("{V3}/register"),
            r#"{"auth": {"type": {v}, "session": {v}}}"#,
        ),
        ("POST", format!("{V3}/refresh"), r#"{"refresh_token": {v}}"#),
        (
            "PUT",
            format!("{V3}/profile/{u}/displayname"),
            r#"{"displayname": {v}}"#,
        ),
        (
            "PUT",
            format!("{V3}/devices/{}", enc(&alice.device_id)),
            r#"{"display_name": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/account/password"),
            r#"{"new_password": {v}, "logout_devices": {v}, "auth": {"type": "m.login.password", "password": {v}}}"#,
        ),
        (
            "POST",
            format!("{V3}/delete_devices"),
            r#"{"devices": [{v}]}"#,
        ),
        (
            "PUT",
            format!("{V3}/directory/room/{}", enc("#x:localhost")),
            r#"{"room_id": {v}}"#,
        ),
        (
            "PUT",
            format!("{V3}/directory/list/room/{r}"),
            r#"{"visibility": {v}}"#,
        ),
        (
            "POST",
            format!("{V3}/user/{u}/openid/request_token"),
            r#"{v}"#,
        ),
        ("POST", "/_matrix/client/v3/sync".to_string(), r#"{v}"#),
        (
            "PUT",
            format!("{V3}/user/{u}/account_data/com.example.sweep"),
            r#"{"k": {v}}"#,
        ),
        (
            "PUT",
            format!("{V3}/user/{u}/rooms/{r}/account_data/com.example.sweep"),
            r#"{"k": {v}}"#,
        ),
    ];
    let mut txn = 0;
    for (method, path, template) in &body_templates {
        for value in &values {
            txn += 1;
            let path = path
                .replace("{sk}", &enc("@alice:localhost"))
                .replace("{txn}", &format!("g{txn}"));
            let body = template.replace("{v}", value);
            check_no_panic(
                &server,
                method,
                &path,
                Some(&alice.token),
                Some(body.into_bytes()),
                &mut failures,
            )
            .await;
            count += 1;
        }
    }

    // Headers: odd Authorization values and content types.
    for auth in [
        "Bearer",
        "Bearer ",
        "bearer abc",
        "Bearer \t spaced token",
        &format!("Bearer {}", "t".repeat(8000)),
    ] {
        let result = raw(
            &server,
            "GET",
            &format!("{V3}/account/whoami"),
            None,
            &[("authorization", auth)],
            None,
        )
        .await;
        match result {
            Ok(r) if r.status.is_client_error() && r.json["errcode"].is_string() => {}
            Ok(r) => failures.push(format!(
                "Authorization {:?}: {} {:?}",
                auth.chars().take(20).collect::<String>(),
                r.status,
                String::from_utf8_lossy(&r.bytes)
            )),
            Err(e) => failures.push(format!(
                "Authorization {:?}: {e}",
                auth.chars().take(20).collect::<String>()
            )),
        }
        count += 1;
    }

    let (status, _) = server
        .get(&format!("{V3}/account/whoami"), &alice.token)
        .await;
    assert_eq!(status, StatusCode::OK, "server unhealthy after the sweep");
    assert!(
        !server.log().contains("panicked"),
        "a handler panicked: {}",
        server.log()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} requests misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
