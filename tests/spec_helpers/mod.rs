//! Helpers shared by the spec-conformance tests (errors, config, durability, accounts). Kept out
//! of `tests/common` so that file stays owned by the harness.

#![allow(dead_code)]

use std::{sync::OnceLock, time::Duration};

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};

use crate::common::TestServer;

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    })
}

/// The result of a raw request: status, headers, JSON body (`Null` if not JSON) and raw bytes.
#[derive(Debug)]
pub struct Raw {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub bytes: Vec<u8>,
}

impl Raw {
    pub fn pair(&self) -> (StatusCode, Value) {
        (self.status, self.json.clone())
    }
}

/// A request with arbitrary method, headers and raw body bytes. `Err` when the connection failed
/// or was dropped (never expected from a healthy server).
pub async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Raw, String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = client().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Raw {
        status,
        headers,
        json,
        bytes,
    })
}

/// An `m.login.password` UIA auth dict.
pub fn password_auth(user: &str, password: &str, session: Option<&str>) -> Value {
    let mut auth = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    });
    if let Some(session) = session {
        auth["session"] = json!(session);
    }
    auth
}

/// `POST /login` with a password; returns the raw result.
pub async fn login_raw(
    server: &TestServer,
    user: &str,
    password: &str,
    extra: Value,
) -> (StatusCode, Value) {
    let mut body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    server
        .request(Method::POST, "/_matrix/client/v3/login", None, Some(body))
        .await
}

/// Logs in successfully; returns (access_token, device_id).
pub async fn login(server: &TestServer, user: &str, password: &str) -> (String, String) {
    let (status, body) = login_raw(server, user, password, json!({})).await;
    assert_eq!(status, StatusCode::OK, "login {user}: {body}");
    (
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
        body["device_id"].as_str().expect("device_id").to_owned(),
    )
}

/// Asserts a UIA challenge: 401 with `flows` (one of which contains `stage`) and a `session`;
/// returns the session.
#[track_caller]
pub fn assert_uia(result: &(StatusCode, Value), stage: &str) -> String {
    assert_eq!(
        result.0,
        StatusCode::UNAUTHORIZED,
        "expected a UIA 401, got {} {}",
        result.0,
        result.1
    );
    let flows = result.1["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no flows in {}", result.1));
    assert!(
        flows.iter().any(|f| f["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == stage))),
        "no flow with {stage}: {}",
        result.1
    );
    result.1["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {}", result.1))
        .to_owned()
}
