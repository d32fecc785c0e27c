//! Configuration: the binary's handling of bad files, environment overrides, the registration
//! safety rules and the registration settings as seen over HTTP; clean shutdown on SIGTERM.

mod common;
mod spec_helpers;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{TestServer, assert_error, free_port};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spec_helpers::assert_uia;

const V3: &str = "/_matrix/client/v3";

/// A sparks process started directly with a hand-written config (the harness always writes a
/// loopback `[listen]`, which these tests need to control).
struct Proc {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Proc {
    /// Writes `config` (with `{db}` and `{port}` substituted) and starts the binary with `env`.
    fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = config
            .replace("{db}", &dir.path().join("db").display().to_string())
            .replace("{port}", &port.to_string());
        std::fs::write(dir.path().join("sparks.toml"), config).expect("config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sparks"));
        command
            .arg("--config")
            .arg(dir.path().join("sparks.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn sparks");
        Self {
            child: Some(child),
            dir,
            port,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits for the process to exit (up to `secs`); `None` if it is still running.
    fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/health` answers on 127.0.0.1 (also reachable for a 0.0.0.0 listener).
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client
                .get(format!("http://127.0.0.1:{}/health", self.port))
                .send()
                .await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited with {status}: {}", self.stderr()));
            }
            if Instant::now() > deadline {
                return Err(format!("not healthy after 30 s: {}", self.stderr()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request =
            reqwest::Client::new().request(method, format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const BASE: &str = "server_name = \"localhost\"\ndatabase_path = \"{db}\"\n";

fn with_listen(listen: &str, rest: &str) -> String {
    format!("{BASE}[listen]\nclient = \"{listen}:{{port}}\"\n[ratelimit]\nenabled = false\n{rest}")
}

/// Starts with `config` and expects a non-zero exit with stderr naming every string in `needles`.
fn assert_refused(config: &str, needles: &[&str]) {
    let mut proc = Proc::start(config, &[]);
    let code = proc.wait_exit(15);
    let stderr = proc.stderr();
    assert!(
        code.is_some(),
        "sparks kept running with a bad config:\n{config}\nstderr: {stderr}"
    );
    assert_ne!(
        code,
        Some(0),
        "sparks exited 0 with a bad config:\n{config}\nstderr: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr does not mention {needle:?}:\n{stderr}"
        );
    }
}

#[test]
fn wrong_type_names_the_key() {
    assert_refused(&format!("{BASE}[listen]\nclient = 5\n"), &["listen.client"]);
    assert_refused(
        &format!("{BASE}[ratelimit]\nenabled = \"yes\"\n"),
        &["ratelimit.enabled"],
    );
    assert_refused(
        &format!("{BASE}[limits]\nmax_request_body = -3\n"),
        &["limits.max_request_body"],
    );
    assert_refused(
        "server_name = 42\ndatabase_path = \"{db}\"\n",
        &["server_name"],
    );
}

#[test]
fn unknown_keys_are_refused() {
    assert_refused(&format!("{BASE}databse_path = \"x\"\n"), &["databse_path"]);
    assert_refused(
        &format!("{BASE}[registration]\nenable = true\n"),
        &["enable"],
    );
    assert_refused(
        &format!("{BASE}[listen]\nclient = \"127.0.0.1:{{port}}\"\nfederaton = \"127.0.0.1:1\"\n"),
        &["federaton"],
    );
    assert_refused(
        &format!("{BASE}[nosuchsection]\nx = 1\n"),
        &["nosuchsection"],
    );
}

#[test]
fn invalid_values_are_refused() {
    assert_refused(
        "server_name = \"not a server name!\"\ndatabase_path = \"{db}\"\n",
        &["server_name"],
    );
    assert_refused(
        &format!("{BASE}[listen]\nclient = \"localhost\"\n"),
        &["listen.client"],
    );
    assert_refused(
        &format!("{BASE}default_room_version = \"999\"\n"),
        &["default_room_version"],
    );
    assert_refused(
        &format!("{BASE}[federation]\nip_range_denylist = [\"10.0.0.0/33\"]\n"),
        &["federation.ip_range_denylist"],
    );
    assert_refused(
        &format!("{BASE}[federation]\ntls_certificate = \"/x.pem\"\n"),
        &["tls_private_key"],
    );
    assert_refused(
        &format!("{BASE}[federation]\nca_certificates = [\"/nonexistent/ca.pem\"]\n"),
        &["federation.ca_certificates", "/nonexistent/ca.pem"],
    );
    assert_refused(
        &format!("{BASE}[rtc]\nsend_threads = 1000\n"),
        &["rtc.send_threads"],
    );
}

#[test]
fn open_registration_on_public_address_is_refused() {
    let config = with_listen("0.0.0.0", "");
    let mut proc = Proc::start(&config, &[]);
    let code = proc.wait_exit(15);
    let stderr = proc.stderr();
    assert!(
        code.is_some_and(|c| c != 0),
        "expected a non-zero exit, got {code:?}: {stderr}"
    );
    assert!(
        stderr.contains("registration"),
        "message must mention registration: {stderr}"
    );
    // Explicitly enabled is the same.
    let mut proc = Proc::start(
        &with_listen("0.0.0.0", "[registration]\nenabled = true\n"),
        &[],
    );
    assert!(
        proc.wait_exit(15).is_some_and(|c| c != 0),
        "{}",
        proc.stderr()
    );
}

#[tokio::test]
async fn public_address_starts_with_token_or_explicit_opt_in() {
    for rest in [
        "[registration]\ntoken = \"s3cret\"\n",
        "[registration]\nallow_open_registration_on_public_address = true\n",
        "[registration]\nenabled = false\n",
    ] {
        let mut proc = Proc::start(&with_listen("0.0.0.0", rest), &[]);
        if let Err(e) = proc.wait_healthy().await {
            panic!("did not start with {rest:?}: {e}");
        }
    }
}

#[tokio::test]
async fn environment_overrides_the_file() {
    let mut proc = Proc::start(
        &with_listen("127.0.0.1", ""),
        &[("SPARKS_SERVER_NAME", "env.example.org")],
    );
    proc.wait_healthy().await.expect("start");
    let (status, body) = proc
        .request(Method::POST, &format!("{V3}/register"), None, Some(json!({ "username": "envy", "password": "pw", "auth": { "type": "m.login.dummy" } })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@envy:env.example.org");

    // Nested keys use `__`; the file says registration is on, the environment turns it off.
    let mut proc = Proc::start(
        &with_listen("127.0.0.1", "[registration]\nenabled = true\n"),
        &[("SPARKS_REGISTRATION__ENABLED", "false")],
    );
    proc.wait_healthy().await.expect("start");
    let result = proc
        .request(Method::POST, &format!("{V3}/register"), None, Some(json!({ "username": "envy", "password": "pw", "auth": { "type": "m.login.dummy" } })))
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");

    // A bad value from the environment is reported like one from the file.
    let mut proc = Proc::start(
        &with_listen("127.0.0.1", ""),
        &[("SPARKS_LISTEN__CLIENT", "nonsense")],
    );
    let code = proc.wait_exit(15);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {}", proc.stderr());
    assert!(proc.stderr().contains("listen.client"), "{}", proc.stderr());

    // SPARKS_* variables that name no config key (scripts use SPARKS_BIN) are ignored.
    let mut proc = Proc::start(
        &with_listen("127.0.0.1", ""),
        &[("SPARKS_BIN", "/usr/bin/sparks"), ("SPARKS_PORT", "1")],
    );
    proc.wait_healthy()
        .await
        .expect("unrelated SPARKS_* variables must not stop the server");
}

#[tokio::test]
async fn registration_disabled_is_forbidden() {
    let server =
        TestServer::start_with("[ratelimit]\nenabled = false\n[registration]\nenabled = false\n")
            .await;
    // Both the first (UIA) round and a complete request.
    for body in [
        json!({ "username": "alice", "password": "pw" }),
        json!({ "username": "alice", "password": "pw", "auth": { "type": "m.login.dummy" } }),
    ] {
        let result = server
            .request(Method::POST, &format!("{V3}/register"), None, Some(body))
            .await;
        assert_error(&result, 403, "M_FORBIDDEN");
    }
}

#[tokio::test]
async fn registration_token_flow() {
    let server = TestServer::start_with(
        "[ratelimit]\nenabled = false\n[registration]\ntoken = \"s3cret\"\n",
    )
    .await;
    let register = |auth: Option<Value>| {
        let server = &server;
        async move {
            let mut body = json!({ "username": "tok", "password": "pw" });
            if let Some(auth) = auth {
                body["auth"] = auth;
            }
            server
                .request(Method::POST, &format!("{V3}/register"), None, Some(body))
                .await
        }
    };
    let first = register(None).await;
    let session = assert_uia(&first, "m.login.registration_token");
    let flows = first.1["flows"].as_array().expect("flows");
    assert!(
        flows.iter().all(|f| f["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "m.login.registration_token"))),
        "every flow must require the token: {}",
        first.1
    );
    // Dummy auth does not bypass the token.
    let result = register(Some(json!({ "type": "m.login.dummy" }))).await;
    assert_eq!(result.0, StatusCode::UNAUTHORIZED, "{}", result.1);
    let result = register(Some(json!({ "type": "m.login.dummy", "session": session }))).await;
    assert_eq!(result.0, StatusCode::UNAUTHORIZED, "{}", result.1);
    // A wrong token: 401 with the UIA body and an error.
    let result = register(Some(
        json!({ "type": "m.login.registration_token", "token": "wrong", "session": session }),
    ))
    .await;
    assert_uia(&result, "m.login.registration_token");
    assert!(
        result.1["errcode"].is_string(),
        "a failed stage carries an errcode: {}",
        result.1
    );
    assert!(result.1.get("access_token").is_none());
    // The right one.
    let (status, body) = register(Some(
        json!({ "type": "m.login.registration_token", "token": "s3cret", "session": session }),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@tok:localhost");
    assert!(body["access_token"].is_string(), "{body}");

    // The validity endpoint.
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let (status, body) = server
        .request(Method::GET, &format!("{validity}?token=s3cret"), None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "valid": true }));
    let (status, body) = server
        .request(Method::GET, &format!("{validity}?token=nope"), None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "valid": false }));
    // `token` is required.
    let (status, body) = server.request(Method::GET, validity, None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn registration_token_validity_when_registration_disabled() {
    // Spec: 403 M_FORBIDDEN "The homeserver does not permit registration and thus all tokens are
    // considered invalid."
    let server = TestServer::start_with(
        "[ratelimit]\nenabled = false\n[registration]\nenabled = false\ntoken = \"s3cret\"\n",
    )
    .await;
    let result = server
        .request(
            Method::GET,
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=s3cret",
            None,
            None,
        )
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly_during_long_poll() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let since = server.sync(&alice, "timeout=0").await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let url = server.url(&format!("{V3}/sync?since={since}&timeout=30000"));
    let token = alice.token.clone();
    let poll = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the long-poll should still be waiting");
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let code = server.terminate();
        (code, server)
    })
    .await
    .expect("join");
    let elapsed = started.elapsed();
    assert_eq!(
        code.0,
        Some(0),
        "exit code after SIGTERM (elapsed {elapsed:?}); log: {}",
        code.1.log()
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "shutdown took {elapsed:?}"
    );
    // The long-poll ended (with a response or a closed connection), well before its 30 s.
    let ended = tokio::time::timeout(Duration::from_secs(5), poll).await;
    assert!(
        ended.is_ok(),
        "the long-poll request was still hanging after shutdown"
    );
}

#[tokio::test]
async fn data_survives_clean_restart_and_config_path_is_reported() {
    // The file named with --config must exist.
    let output = Command::new(env!("CARGO_BIN_EXE_sparks"))
        .arg("--config")
        .arg(Path::new("/nonexistent/sparks.toml"))
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("/nonexistent/sparks.toml"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut server = TestServer::start().await;
    server.register("alice").await;
    assert_eq!(server.terminate(), Some(0));
    server.spawn().await;
    let result = server
        .request(
            Method::GET,
            &format!("{V3}/register/available?username=alice"),
            None,
            None,
        )
        .await;
    assert_error(&result, 400, "M_USER_IN_USE");
}
