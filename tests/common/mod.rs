//! Test harness: starts the real `sparks` binary on a free loopback port with a temporary data
//! directory and talks to it over HTTP like a client.

#![allow(dead_code)]

use std::{
    io::Write,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct TestServer {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub extra_config: String,
    http: reqwest::Client,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TestServer {
    /// Starts a server with the default test config plus `extra` TOML (appended verbatim; put
    /// sections last).
    pub async fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            extra_config: extra.to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4)
                .build()
                .expect("client"),
        };
        server.spawn().await;
        server
    }

    pub async fn start() -> Self {
        Self::start_with("[ratelimit]\nenabled = false\n").await
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sparks.toml")
    }

    fn write_config(&self) {
        let config = format!(
            "server_name = \"localhost\"\ndatabase_path = \"{}\"\n{}\n[listen]\nclient = \"127.0.0.1:{}\"\n",
            self.dir.path().join("db").display(),
            self.top_level_extra(),
            self.port,
        );
        let config = format!("{config}{}", self.section_extra());
        let mut file = std::fs::File::create(self.config_path()).expect("config file");
        file.write_all(config.as_bytes()).expect("write config");
    }

    /// Lines of `extra` before its first `[section]` (top-level keys).
    fn top_level_extra(&self) -> String {
        self.extra_config
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn section_extra(&self) -> String {
        self.extra_config
            .lines()
            .skip_while(|l| !l.trim_start().starts_with('['))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// (Re)starts the process on the same data directory and waits for `/health`.
    pub async fn spawn(&mut self) {
        self.write_config();
        let log = std::fs::File::create(self.dir.path().join("sparks.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sparks"))
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "warn")
            // Tests run in parallel: each SFU takes any free UDP port (a test can override it).
            .env("SPARKS_RTC__UDP_PORT", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sparks");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.http.get(format!("{}/health", self.base)).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sparks exited during start ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sparks did not become healthy: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sparks.log")).unwrap_or_default()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.take()?;
        let pid = child.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A raw request: returns status and JSON body (`Value::Null` for a non-JSON body).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::PUT, path, Some(token), Some(body))
            .await
    }

    /// Registers a user with `m.login.dummy`; returns (user_id, access_token, device_id).
    pub async fn register(&self, localpart: &str) -> User {
        let (status, body) = self
            .request(
                Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(json!({ "username": localpart, "password": "correct horse", "auth": { "type": "m.login.dummy" } })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "register {localpart}: {body}");
        User {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            token: body["access_token"].as_str().expect("token").to_owned(),
            device_id: body["device_id"].as_str().expect("device").to_owned(),
        }
    }

    /// Creates a room with the given createRoom body; returns the room id.
    pub async fn create_room(&self, user: &User, body: Value) -> String {
        let (status, response) = self
            .post("/_matrix/client/v3/createRoom", &user.token, body)
            .await;
        assert_eq!(status, StatusCode::OK, "createRoom: {response}");
        response["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends `m.room.message` with a fresh txn id; returns the event id.
    pub async fn send_text(&self, user: &User, room: &str, text: &str) -> String {
        let txn = format!(
            "t{}",
            NEXT_TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (status, body) = self
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    enc(room)
                ),
                &user.token,
                json!({ "msgtype": "m.text", "body": text }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "send: {body}");
        body["event_id"].as_str().expect("event_id").to_owned()
    }

    pub async fn join(&self, user: &User, room: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            &user.token,
            json!({}),
        )
        .await
    }

    pub async fn invite(&self, user: &User, room: &str, target: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            &user.token,
            json!({ "user_id": target }),
        )
        .await
    }

    pub async fn sync(&self, user: &User, query: &str) -> Value {
        let (status, body) = self
            .get(&format!("/_matrix/client/v3/sync?{query}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::OK, "sync: {body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

static NEXT_TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

/// Percent-encodes a path segment (room ids contain `!`, `:`, `$`, `#`).
pub fn enc(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts a Matrix error: status and errcode.
#[track_caller]
pub fn assert_error(result: &(StatusCode, Value), status: u16, errcode: &str) {
    assert_eq!(
        result.0.as_u16(),
        status,
        "expected {status} {errcode}, got {} {}",
        result.0,
        result.1
    );
    assert_eq!(
        result.1["errcode"], errcode,
        "expected {errcode}, got {}",
        result.1
    );
    assert!(
        result.1["error"].is_string(),
        "error message missing: {}",
        result.1
    );
}

/// Timeline events of a room in a sync response.
pub fn timeline<'a>(sync: &'a Value, room: &str) -> &'a Vec<Value> {
    static EMPTY: Vec<Value> = Vec::new();
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .unwrap_or(&EMPTY)
}
