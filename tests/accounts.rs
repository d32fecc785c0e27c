//! Accounts over HTTP: login, UIA on sensitive endpoints, password changes, deactivation,
//! refresh tokens, logout, OpenID, availability and whoami.

mod common;
mod spec_helpers;

use common::{TestServer, assert_error, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spec_helpers::{assert_uia, login, login_raw, password_auth};

const V3: &str = "/_matrix/client/v3";
const PASSWORD: &str = "correct horse";

async fn whoami(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server.get(&format!("{V3}/account/whoami"), token).await
}

#[tokio::test]
async fn login_by_localpart_full_id_and_legacy_user_field() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for user in ["alice", "@alice:localhost"] {
        let (status, body) = login_raw(&server, user, PASSWORD, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{user}: {body}");
        assert_eq!(body["user_id"], alice.user_id.as_str());
        assert!(
            body["access_token"].is_string() && body["device_id"].is_string(),
            "{body}"
        );
        let (status, me) = whoami(&server, body["access_token"].as_str().expect("token")).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["device_id"], body["device_id"]);
    }
    // The deprecated top-level `user` field.
    let (status, body) = server
        .request(
            Method::POST,
            &format!("{V3}/login"),
            None,
            Some(json!({ "type": "m.login.password", "user": "alice", "password": PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id.as_str());
    // A requested device id is used.
    let (status, body) = login_raw(
        &server,
        "alice",
        PASSWORD,
        json!({ "device_id": "MYPHONE", "initial_device_display_name": "Phone" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], "MYPHONE");
    let (status, device) = server
        .get(&format!("{V3}/devices/MYPHONE"), &alice.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(device["display_name"], "Phone");
    // Wrong password, unknown user: 403 M_FORBIDDEN.
    assert_error(
        &login_raw(&server, "alice", "wrong", json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &login_raw(&server, "nobody", PASSWORD, json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &login_raw(&server, "@alice:elsewhere.org", PASSWORD, json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    // GET /login lists m.login.password.
    let (status, body) = server
        .request(Method::GET, &format!("{V3}/login"), None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["flows"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["type"] == "m.login.password")),
        "{body}"
    );
}

#[tokio::test]
async fn whoami_includes_device_id() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, body) = whoami(&server, &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id.as_str());
    assert_eq!(body["device_id"], alice.device_id.as_str());
    assert_ne!(body["is_guest"], true, "{body}");
}

#[tokio::test]
async fn register_available() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let available = |name: &str| {
        let server = &server;
        let path = format!("{V3}/register/available?username={}", enc(name));
        async move { server.request(Method::GET, &path, None, None).await }
    };
    let (status, body) = available("bob").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "available": true }));
    assert_error(&available("alice").await, 400, "M_USER_IN_USE");
    assert_error(&available("not valid!").await, 400, "M_INVALID_USERNAME");
    // `username` is required.
    let (status, body) = server
        .request(Method::GET, &format!("{V3}/register/available"), None, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn delete_device_requires_uia() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (other_token, other_device) = login(&server, "alice", PASSWORD).await;
    let path = format!("{V3}/devices/{}", enc(&other_device));

    let first = server
        .request(Method::DELETE, &path, Some(&alice.token), Some(json!({})))
        .await;
    let session = assert_uia(&first, "m.login.password");
    assert!(
        first.1.get("errcode").is_none(),
        "the first challenge has no error: {}",
        first.1
    );
    // Also with no body at all.
    let no_body = server
        .request(Method::DELETE, &path, Some(&alice.token), None)
        .await;
    assert_uia(&no_body, "m.login.password");

    let wrong = server
        .request(
            Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({ "auth": password_auth("alice", "wrong", Some(&session)) })),
        )
        .await;
    assert_uia(&wrong, "m.login.password");
    assert_eq!(wrong.1["errcode"], "M_FORBIDDEN", "{}", wrong.1);
    assert_eq!(
        wrong.1["session"],
        session.as_str(),
        "the session continues after a failed stage"
    );
    // The device is still there.
    assert_eq!(whoami(&server, &other_token).await.0, StatusCode::OK);

    let (status, body) = server
        .request(
            Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({ "auth": password_auth("alice", PASSWORD, Some(&session)) })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(&whoami(&server, &other_token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&server.get(&path, &alice.token).await, 404, "M_NOT_FOUND");
    // The caller's own device is untouched.
    assert_eq!(whoami(&server, &alice.token).await.0, StatusCode::OK);
    // A completed session cannot be replayed.
    let (_, third) = login(&server, "alice", PASSWORD).await;
    let replay = server
        .request(
            Method::DELETE,
            &format!("{V3}/devices/{}", enc(&third)),
            Some(&alice.token),
            Some(json!({ "auth": { "type": "m.login.dummy", "session": session } })),
        )
        .await;
    assert_ne!(
        replay.0,
        StatusCode::OK,
        "replayed UIA session accepted: {}",
        replay.1
    );
}

#[tokio::test]
async fn uia_password_stage_must_name_the_authenticated_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    server.register("mallory").await;
    let (_, other_device) = login(&server, "alice", PASSWORD).await;
    let path = format!("{V3}/devices/{}", enc(&other_device));
    let first = server
        .request(Method::DELETE, &path, Some(&alice.token), Some(json!({})))
        .await;
    let session = assert_uia(&first, "m.login.password");
    // Mallory's correct password does not authorise an action on Alice's account.
    let result = server
        .request(
            Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({ "auth": password_auth("mallory", PASSWORD, Some(&session)) })),
        )
        .await;
    assert_eq!(result.0, StatusCode::UNAUTHORIZED, "{}", result.1);
    assert_eq!(result.1["errcode"], "M_FORBIDDEN", "{}", result.1);
}

#[tokio::test]
async fn change_password_with_uia_and_logout_devices() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (other_token, _) = login(&server, "alice", PASSWORD).await;
    let path = format!("{V3}/account/password");

    let first = server
        .post(
            &path,
            &alice.token,
            json!({ "new_password": "new secret", "logout_devices": true }),
        )
        .await;
    let session = assert_uia(&first, "m.login.password");
    let wrong = server
        .post(&path, &alice.token, json!({ "new_password": "new secret", "logout_devices": true, "auth": password_auth("alice", "wrong", Some(&session)) }))
        .await;
    assert_uia(&wrong, "m.login.password");
    assert_eq!(wrong.1["errcode"], "M_FORBIDDEN", "{}", wrong.1);
    // Nothing changed yet.
    login(&server, "alice", PASSWORD).await;

    let (status, body) = server
        .post(&path, &alice.token, json!({ "new_password": "new secret", "logout_devices": true, "auth": password_auth("@alice:localhost", PASSWORD, Some(&session)) }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        whoami(&server, &alice.token).await.0,
        StatusCode::OK,
        "the current device stays logged in"
    );
    assert_error(&whoami(&server, &other_token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(
        &login_raw(&server, "alice", PASSWORD, json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    login(&server, "alice", "new secret").await;
    // Only the current device and the fresh login remain.
    let (status, devices) = server.get(&format!("{V3}/devices"), &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(2),
        "{devices}"
    );
}

#[tokio::test]
async fn change_password_logs_out_other_devices_by_default() {
    // Spec: `logout_devices` defaults to true.
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (other_token, _) = login(&server, "alice", PASSWORD).await;
    let (status, body) = server
        .post(
            &format!("{V3}/account/password"),
            &alice.token,
            json!({ "new_password": "new secret", "auth": password_auth("alice", PASSWORD, None) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(&whoami(&server, &other_token).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(whoami(&server, &alice.token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn change_password_without_logout_keeps_devices() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (other_token, _) = login(&server, "alice", PASSWORD).await;
    let (status, body) = server
        .post(
            &format!("{V3}/account/password"),
            &alice.token,
            json!({ "new_password": "new secret", "logout_devices": false, "auth": password_auth("alice", PASSWORD, None) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(whoami(&server, &other_token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn deactivate_with_uia_then_login_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server
        .create_room(&bob, json!({ "preset": "public_chat" }))
        .await;
    assert_eq!(server.join(&alice, &room).await.0, StatusCode::OK);
    let (other_token, _) = login(&server, "alice", PASSWORD).await;
    let path = format!("{V3}/account/deactivate");

    let first = server.post(&path, &alice.token, json!({})).await;
    let session = assert_uia(&first, "m.login.password");
    let wrong = server
        .post(
            &path,
            &alice.token,
            json!({ "auth": password_auth("alice", "nope", Some(&session)) }),
        )
        .await;
    assert_uia(&wrong, "m.login.password");
    assert_eq!(wrong.1["errcode"], "M_FORBIDDEN", "{}", wrong.1);
    assert_eq!(
        whoami(&server, &alice.token).await.0,
        StatusCode::OK,
        "still active after a failed attempt"
    );

    let (status, body) = server
        .post(
            &path,
            &alice.token,
            json!({ "auth": password_auth("alice", PASSWORD, Some(&session)) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support", "{body}");

    // All tokens are gone, login fails, the name stays taken.
    assert_error(&whoami(&server, &alice.token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&whoami(&server, &other_token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(
        &login_raw(&server, "alice", PASSWORD, json!({})).await,
        403,
        "M_USER_DEACTIVATED",
    );
    assert_error(
        &server
            .request(
                Method::GET,
                &format!("{V3}/register/available?username=alice"),
                None,
                None,
            )
            .await,
        400,
        "M_USER_IN_USE",
    );
    // The deactivated user left the room.
    let (status, members) = server
        .get(
            &format!("{V3}/rooms/{}/joined_members", enc(&room)),
            &bob.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&alice.user_id).is_none(), "{members}");
}

#[tokio::test]
async fn refresh_tokens_rotate() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let (status, body) =
        login_raw(&server, "alice", PASSWORD, json!({ "refresh_token": true })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let refresh = body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("refresh_token missing: {body}"))
        .to_owned();
    assert!(
        body["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0),
        "expires_in_ms: {body}"
    );
    assert_eq!(whoami(&server, &access).await.0, StatusCode::OK);

    let (status, renewed) = server
        .request(
            Method::POST,
            &format!("{V3}/refresh"),
            None,
            Some(json!({ "refresh_token": refresh })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let new_access = renewed["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let new_refresh = renewed["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("refresh_token missing: {renewed}"))
        .to_owned();
    assert!(
        renewed["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{renewed}"
    );
    assert_ne!(new_access, access);
    assert_ne!(new_refresh, refresh);
    let (status, me) = whoami(&server, &new_access).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        me["device_id"], body["device_id"],
        "refreshing keeps the device"
    );

    // The used refresh token is spent.
    let result = server
        .request(
            Method::POST,
            &format!("{V3}/refresh"),
            None,
            Some(json!({ "refresh_token": refresh })),
        )
        .await;
    assert_error(&result, 401, "M_UNKNOWN_TOKEN");
    let result = server
        .request(
            Method::POST,
            &format!("{V3}/refresh"),
            None,
            Some(json!({ "refresh_token": "never-issued" })),
        )
        .await;
    assert_error(&result, 401, "M_UNKNOWN_TOKEN");
    // The new one works.
    let (status, body) = server
        .request(
            Method::POST,
            &format!("{V3}/refresh"),
            None,
            Some(json!({ "refresh_token": new_refresh })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn refresh_token_not_issued_unless_asked() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let (status, body) = login_raw(&server, "alice", PASSWORD, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body.get("expires_in_ms").is_none(), "{body}");
}

#[tokio::test]
async fn logout_and_logout_all() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (one, _) = login(&server, "alice", PASSWORD).await;
    let (two, _) = login(&server, "alice", PASSWORD).await;

    let (status, body) = server.post(&format!("{V3}/logout"), &one, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(&whoami(&server, &one).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(whoami(&server, &two).await.0, StatusCode::OK);

    let (status, body) = server
        .post(&format!("{V3}/logout/all"), &two, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    assert_error(&whoami(&server, &two).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&whoami(&server, &alice.token).await, 401, "M_UNKNOWN_TOKEN");
    // The password still works.
    login(&server, "alice", PASSWORD).await;
}

#[tokio::test]
async fn openid_token_and_userinfo() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (status, body) = server
        .post(
            &format!("{V3}/user/{}/openid/request_token", enc(&alice.user_id)),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "localhost");
    assert!(
        body["expires_in"].as_u64().is_some_and(|s| s > 0),
        "expires_in (seconds): {body}"
    );

    let (status, info) = server
        .request(
            Method::GET,
            &format!(
                "/_matrix/federation/v1/openid/userinfo?access_token={}",
                enc(&token)
            ),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info, json!({ "sub": alice.user_id }));

    let result = server
        .request(
            Method::GET,
            "/_matrix/federation/v1/openid/userinfo?access_token=bogus",
            None,
            None,
        )
        .await;
    assert_error(&result, 401, "M_UNKNOWN_TOKEN");
    // An access token is not an OpenID token.
    let result = server
        .request(
            Method::GET,
            &format!(
                "/_matrix/federation/v1/openid/userinfo?access_token={}",
                enc(&alice.token)
            ),
            None,
            None,
        )
        .await;
    assert_error(&result, 401, "M_UNKNOWN_TOKEN");
    // Only for yourself.
    let result = server
        .post(
            &format!("{V3}/user/{}/openid/request_token", enc(&alice.user_id)),
            &bob.token,
            json!({}),
        )
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn device_list_rename_and_delete_many() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (_, second) = login(&server, "alice", PASSWORD).await;
    let (_, third) = login(&server, "alice", PASSWORD).await;
    let (status, body) = server
        .put(
            &format!("{V3}/devices/{}", enc(&second)),
            &alice.token,
            json!({ "display_name": "Laptop" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, devices) = server.get(&format!("{V3}/devices"), &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    let list = devices["devices"].as_array().expect("devices");
    assert_eq!(list.len(), 3, "{devices}");
    assert!(
        list.iter()
            .any(|d| d["device_id"] == second.as_str() && d["display_name"] == "Laptop"),
        "{devices}"
    );
    // Renaming an unknown device: 404.
    assert_error(
        &server
            .put(
                &format!("{V3}/devices/NOPE"),
                &alice.token,
                json!({ "display_name": "x" }),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );

    let path = format!("{V3}/delete_devices");
    let first = server
        .post(&path, &alice.token, json!({ "devices": [second, third] }))
        .await;
    let session = assert_uia(&first, "m.login.password");
    let (status, body) = server.post(&path, &alice.token, json!({ "devices": [second, third], "auth": password_auth("alice", PASSWORD, Some(&session)) })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, devices) = server.get(&format!("{V3}/devices"), &alice.token).await;
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(1),
        "{devices}"
    );
}

#[tokio::test]
async fn expired_access_token_is_soft_logout_and_refreshable() {
    let server = TestServer::start_with(
        "[ratelimit]\nenabled = false\n[limits]\nrefreshable_access_token_lifetime_ms = 10000\n",
    )
    .await;
    server.register("alice").await;
    let (status, body) =
        login_raw(&server, "alice", PASSWORD, json!({ "refresh_token": true })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expires = body["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(
        expires <= 10_000,
        "expires_in_ms {expires} beyond the configured lifetime"
    );
    let access = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(expires + 500)).await;
    let result = whoami(&server, &access).await;
    assert_error(&result, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(
        result.1["soft_logout"], true,
        "an expired token is a soft logout: {}",
        result.1
    );
    let (status, renewed) = server
        .request(
            Method::POST,
            &format!("{V3}/refresh"),
            None,
            Some(json!({ "refresh_token": refresh })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(
        whoami(&server, renewed["access_token"].as_str().expect("token"))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn register_uia_dummy_flow_and_inhibit_login() {
    let server = TestServer::start().await;
    let register = |body: Value| {
        let server = &server;
        async move {
            server
                .request(Method::POST, &format!("{V3}/register"), None, Some(body))
                .await
        }
    };
    let first = register(json!({ "username": "carol", "password": PASSWORD })).await;
    let session = assert_uia(&first, "m.login.dummy");
    let (status, body) = register(json!({ "username": "carol", "password": PASSWORD, "auth": { "type": "m.login.dummy", "session": session } })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@carol:localhost");
    assert!(
        body["access_token"].is_string() && body["device_id"].is_string(),
        "{body}"
    );
    let (status, body) = register(json!({ "username": "dave", "password": PASSWORD, "inhibit_login": true, "auth": { "type": "m.login.dummy" } })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@dave:localhost");
    assert!(
        body["access_token"].is_null() && body["device_id"].is_null(),
        "inhibit_login: {body}"
    );
    login(&server, "dave", PASSWORD).await;
    // No username: the server picks one.
    let (status, body) =
        register(json!({ "password": PASSWORD, "auth": { "type": "m.login.dummy" } })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["user_id"]
            .as_str()
            .is_some_and(|u| u.starts_with('@') && u.ends_with(":localhost")),
        "{body}"
    );
    // Guests are not supported: 403 M_FORBIDDEN (spec allows refusing guest registration).
    let result = server
        .request(
            Method::POST,
            &format!("{V3}/register?kind=guest"),
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(result.0, StatusCode::FORBIDDEN, "{}", result.1);
}
