//! `loadgen` — load generator for the Sparks vs Synapse homeserver benchmark.
//!
//! Subcommands:
//! * `run`         — register users and run the client-API measurements against one
//!                   homeserver (send throughput, /sync wake latency, initial /sync,
//!                   media upload/download throughput, thumbnail generation,
//!                   /search latency).
//! * `wait-health` — poll `GET /health` until it answers 200; prints the elapsed ms
//!                   (used by `benches/run.sh` for cold-start timing).
//! * `report`      — merge per-server JSON files into one side-by-side table (+ JSON).
//!
//! Any unexpected HTTP status aborts the run with the response body printed; failed
//! requests are never counted as successes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, String>;

mod busy;
mod e2ee;
mod search;
mod sliding;

#[derive(Parser)]
#[command(name = "loadgen", about = "Matrix homeserver load generator (Sparks benchmark)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the client-API measurements against one homeserver.
    Run(RunArgs),
    /// Poll GET /health until 200; print elapsed milliseconds.
    WaitHealth(WaitArgs),
    /// Merge per-server result files into a side-by-side table.
    Report(ReportArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Homeserver base URL, e.g. http://127.0.0.1:8008
    #[arg(long)]
    url: String,
    /// Label for this server in output.
    #[arg(long, default_value = "server")]
    name: String,
    /// Seconds per send-throughput run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Comma-separated sender concurrencies for the send-throughput test.
    #[arg(long, default_value = "1,32", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Number of sequential /sync wake-latency samples.
    #[arg(long, default_value_t = 200)]
    wake_samples: usize,
    /// Milliseconds to wait after issuing the long-poll before sending (lets the
    /// server park the /sync request).
    #[arg(long, default_value_t = 50)]
    wake_settle_ms: u64,
    /// Rooms the initial-/sync user is in.
    #[arg(long, default_value_t = 200)]
    rooms: usize,
    /// Messages sent into each of those rooms.
    #[arg(long, default_value_t = 3)]
    msgs_per_room: usize,
    /// Timed initial /sync runs (median reported).
    #[arg(long, default_value_t = 5)]
    initial_sync_runs: usize,
    /// Concurrency for setup work (registration, room creation, seeding).
    #[arg(long, default_value_t = 4)]
    setup_concurrency: usize,
    /// Which tests to run (comma-separated): send, wake, initial, media.
    #[arg(long, default_value = "send,wake,initial,busy,sliding,e2ee,media,search", value_delimiter = ',')]
    tests: Vec<String>,
    /// Media test: size of each uploaded/downloaded file, in KiB.
    #[arg(long, default_value_t = 1024)]
    media_file_kib: usize,
    /// Media test: concurrent uploads/downloads.
    #[arg(long, default_value_t = 4)]
    media_concurrency: usize,
    /// Media test: files uploaded (each distinct, so no server can share work between them).
    #[arg(long, default_value_t = 64)]
    media_uploads: usize,
    /// Media test: downloads (round-robin over the uploaded files).
    #[arg(long, default_value_t = 128)]
    media_downloads: usize,
    /// Media test: thumbnail samples (each a fresh ~1 MP JPEG, so the request generates).
    #[arg(long, default_value_t = 20)]
    thumb_samples: usize,
    /// E2EE test: one-time keys uploaded and then claimed.
    #[arg(long, default_value_t = 2000)]
    claim_keys: usize,
    /// E2EE test: concurrent claimers.
    #[arg(long, default_value_t = 16)]
    claim_concurrency: usize,
    /// Sliding test: rooms the sliding-sync user is in.
    #[arg(long, default_value_t = 500)]
    sliding_rooms: usize,
    /// Busy test: rooms kept busy while the observer syncs.
    #[arg(long, default_value_t = 50)]
    busy_rooms: usize,
    /// Busy test: messages per second over all rooms (each with a typing notification and a
    /// read receipt).
    #[arg(long, default_value_t = 10.0)]
    busy_rate: f64,
    /// Search test: messages seeded before the timed queries.
    #[arg(long, default_value_t = 100_000)]
    search_messages: usize,
    /// Search test: rooms the messages are spread over.
    #[arg(long, default_value_t = 10)]
    search_rooms: usize,
    /// Search test: concurrent senders while seeding.
    #[arg(long, default_value_t = 32)]
    search_concurrency: usize,
    /// Search test: timed requests per query.
    #[arg(long, default_value_t = 20)]
    search_samples: usize,
    /// Username prefix (default: derived from the current time, so reruns against
    /// the same database do not collide).
    #[arg(long)]
    prefix: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120)]
    request_timeout: u64,
    /// Tokio worker threads for loadgen itself (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct WaitArgs {
    #[arg(long)]
    url: String,
    /// Start instant as Unix time in nanoseconds (e.g. `date +%s%N` just before spawn).
    /// Default: when wait-health itself started.
    #[arg(long)]
    t0_ns: Option<u128>,
    /// Abort if this process exits before /health answers.
    #[arg(long)]
    pid: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Poll interval in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    interval_ms: f64,
}

#[derive(Args)]
struct ReportArgs {
    /// NAME=FILE: loadgen `run --json` output for a server (repeatable).
    #[arg(long = "load")]
    load: Vec<String>,
    /// NAME=FILE: process figures (rss_idle_mb, rss_after_mb, cold_start_ms[]) for a
    /// server, written by run.sh (repeatable).
    #[arg(long = "proc")]
    procs: Vec<String>,
    /// Extra metadata NAME=VALUE pairs recorded in the JSON output (repeatable).
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// Write merged JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => {
            let rt = if a.threads <= 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(a.threads)
                    .enable_all()
                    .build()
            }
            .expect("tokio runtime");
            rt.block_on(run(a))
        }
        Cmd::WaitHealth(a) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(wait_health(a))
        }
        Cmd::Report(a) => report(a),
    };
    if let Err(e) = res {
        eprintln!("loadgen: error: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

struct Hs {
    http: reqwest::Client,
    base: String,
}

#[derive(Clone, Debug)]
struct User {
    user_id: String,
    token: String,
}

/// Percent-encode one path segment (room IDs, user IDs, txn IDs).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An error with its chain of causes ("error sending request: ...: Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = n;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

impl Hs {
    fn new(base: &str, timeout: Duration, pool: usize) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(timeout)
            .pool_max_idle_per_host(pool)
            .build()
            .map_err(|e| format!("building HTTP client: {e}"))?;
        Ok(Hs { http, base: base.trim_end_matches('/').to_string() })
    }

    /// Send a request; returns status and raw body, erroring only on transport failure.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{}", self.base, path);
        let mut rb = self.http.request(method.clone(), &url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| format!("{method} {path}: request failed: {}", chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("{method} {path}: reading body failed: {}", chain(&e)))?;
        Ok((status, bytes.to_vec()))
    }

    /// Send a request that must answer 200 with a JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, bytes) = self.raw(method.clone(), path, token, body).await?;
        check_json(&method, path, status, &bytes)
    }

    async fn register(&self, username: &str, password: &str) -> Result<User> {
        let path = "/_matrix/client/v3/register";
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "loadgen",
        });
        // Round 1: no auth -> 401 with a UIA session (or 200 if the server needs none).
        let (status, bytes) = self.raw(Method::POST, path, None, Some(&body)).await?;
        let v = if status == StatusCode::UNAUTHORIZED {
            let uia: Value = serde_json::from_slice(&bytes).map_err(|e| {
                format!("POST {path} -> 401 with non-JSON body ({e}): {}", String::from_utf8_lossy(&bytes))
            })?;
            let mut auth = json!({"type": "m.login.dummy"});
            if let Some(s) = uia.get("session").and_then(Value::as_str) {
                auth["session"] = json!(s);
            }
            body["auth"] = auth;
            self.call(Method::POST, path, None, Some(&body)).await?
        } else {
            check_json(&Method::POST, path, status, &bytes)?
        };
        let user_id = str_field(&v, "user_id", path)?;
        let token = str_field(&v, "access_token", path)?;
        Ok(User { user_id, token })
    }

    async fn create_room(&self, u: &User, body: Value) -> Result<String> {
        let path = "/_matrix/client/v3/createRoom";
        let v = self.call(Method::POST, path, Some(&u.token), Some(&body)).await?;
        str_field(&v, "room_id", path)
    }

    async fn join(&self, u: &User, room: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/join/{}", enc(room));
        self.call(Method::POST, &path, Some(&u.token), Some(&json!({}))).await?;
        Ok(())
    }

    async fn send_msg(&self, u: &User, room: &str, txn: &str, text: &str) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room),
            enc(txn)
        );
        let body = json!({"msgtype": "m.text", "body": text});
        let v = self.call(Method::PUT, &path, Some(&u.token), Some(&body)).await?;
        str_field(&v, "event_id", &path)
    }

    async fn upload_filter(&self, u: &User, filter: &Value) -> Result<String> {
        let path = format!("/_matrix/client/v3/user/{}/filter", enc(&u.user_id));
        let v = self.call(Method::POST, &path, Some(&u.token), Some(filter)).await?;
        str_field(&v, "filter_id", &path)
    }

    /// GET /sync; returns parsed body and body size in bytes.
    async fn sync(
        &self,
        u: &User,
        since: Option<&str>,
        filter: Option<&str>,
        timeout_ms: Option<u64>,
    ) -> Result<(Value, usize)> {
        let mut q = Vec::new();
        if let Some(s) = since {
            q.push(format!("since={}", enc(s)));
        }
        if let Some(f) = filter {
            q.push(format!("filter={}", enc(f)));
        }
        if let Some(t) = timeout_ms {
            q.push(format!("timeout={t}"));
        }
        let path = if q.is_empty() {
            "/_matrix/client/v3/sync".to_string()
        } else {
            format!("/_matrix/client/v3/sync?{}", q.join("&"))
        };
        let (status, bytes) = self.raw(Method::GET, &path, Some(&u.token), None).await?;
        let v = check_json(&Method::GET, &path, status, &bytes)?;
        Ok((v, bytes.len()))
    }
}

fn check_json(method: &Method, path: &str, status: StatusCode, bytes: &[u8]) -> Result<Value> {
    if status != StatusCode::OK {
        return Err(format!(
            "{method} {path} -> HTTP {status}: {}",
            truncate(&String::from_utf8_lossy(bytes), 4000)
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "{method} {path} -> 200 but body is not JSON ({e}): {}",
            truncate(&String::from_utf8_lossy(bytes), 4000)
        )
    })
}

fn str_field(v: &Value, field: &str, ctx: &str) -> Result<String> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{ctx}: response has no string `{field}`: {v}"))
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// Nearest-rank percentile over sorted microsecond samples, returned in ms.
fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[idx] as f64 / 1000.0
}

fn median_ms(sorted_us: &[u64]) -> f64 {
    let n = sorted_us.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted_us[n / 2] as f64 / 1000.0
    } else {
        (sorted_us[n / 2 - 1] + sorted_us[n / 2]) as f64 / 2000.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct SendResult {
    concurrency: usize,
    events: u64,
    seconds: f64,
    events_per_sec: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct WakeResult {
    samples: usize,
    settle_ms: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    /// Samples where /sync returned before the send's 200 arrived (clamped to 0).
    sync_before_send: usize,
    /// Extra long-polls needed because a /sync returned without the event.
    repolls: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct InitialSyncResult {
    rooms: usize,
    msgs_per_room: usize,
    runs: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    all_ms: Vec<f64>,
    response_bytes: usize,
    setup_seconds: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct RunResult {
    name: String,
    url: String,
    duration_s: f64,
    send: Vec<SendResult>,
    wake: Option<WakeResult>,
    initial_sync: Option<InitialSyncResult>,
    #[serde(default)]
    media: Option<MediaResult>,
    #[serde(default)]
    search: Option<search::SearchResult>,
    #[serde(default)]
    busy: Option<busy::BusyResult>,
    #[serde(default)]
    sliding: Option<sliding::SlidingResult>,
    #[serde(default)]
    e2ee: Option<e2ee::E2eeResult>,
    total_seconds: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct MediaResult {
    file_bytes: usize,
    concurrency: usize,
    uploads: usize,
    upload_seconds: f64,
    upload_mb_per_sec: f64,
    upload_p50_ms: f64,
    upload_p99_ms: f64,
    downloads: usize,
    download_seconds: f64,
    download_mb_per_sec: f64,
    download_p50_ms: f64,
    download_p99_ms: f64,
    thumb_samples: usize,
    thumb_source: String,
    thumb_source_bytes_avg: usize,
    thumb_request: String,
    /// First request for a size: the server decodes, resizes and encodes.
    thumb_first_p50_ms: f64,
    thumb_first_p99_ms: f64,
    /// The same request again (served from the server's thumbnail cache).
    thumb_cached_p50_ms: f64,
}

// ---------------------------------------------------------------------------
// `run`
// ---------------------------------------------------------------------------

async fn run(a: RunArgs) -> Result<()> {
    for t in &a.tests {
        if !matches!(t.as_str(), "send" | "wake" | "initial" | "busy" | "sliding" | "e2ee" | "media" | "search") {
            return Err(format!("unknown test `{t}` (expected send, wake, initial, busy, sliding, e2ee, media, search)"));
        }
    }
    let want = |t: &str| a.tests.iter().any(|x| x == t);
    let max_conc = a.concurrency.iter().copied().max().unwrap_or(1).max(1);
    let hs = Arc::new(Hs::new(
        &a.url,
        Duration::from_secs(a.request_timeout),
        max_conc.max(a.setup_concurrency).max(a.media_concurrency).max(a.search_concurrency) + 8,
    )?);
    let prefix = a.prefix.clone().unwrap_or_else(|| {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        format!("lg{}", ms % 100_000_000)
    });
    let started = Instant::now();
    let mut res = RunResult {
        name: a.name.clone(),
        url: a.url.clone(),
        duration_s: a.duration,
        ..Default::default()
    };
    eprintln!("[{}] loadgen against {} (user prefix {prefix})", a.name, a.url);

    if want("send") {
        res.send = send_tests(&hs, &a, &prefix, max_conc).await?;
    }
    if want("wake") {
        res.wake = Some(wake_test(&hs, &a, &prefix).await?);
    }
    if want("initial") {
        res.initial_sync = Some(initial_sync_test(&hs, &a, &prefix).await?);
    }
    if want("busy") {
        res.busy = Some(busy::busy_test(&hs, &a, &prefix).await?);
    }
    if want("sliding") {
        res.sliding = Some(sliding::sliding_test(&hs, &a, &prefix).await?);
    }
    if want("e2ee") {
        res.e2ee = Some(e2ee::e2ee_test(&hs, &a, &prefix).await?);
    }
    if want("media") {
        res.media = Some(media_test(&hs, &a, &prefix).await?);
    }
    if want("search") {
        res.search = Some(search::search_test(&hs, &a, &prefix).await?);
    }
    res.total_seconds = round3(started.elapsed().as_secs_f64());

    print_run(&res);
    if let Some(p) = &a.json {
        let s = serde_json::to_string_pretty(&res).map_err(|e| e.to_string())?;
        std::fs::write(p, s + "\n").map_err(|e| format!("writing {}: {e}", p.display()))?;
        eprintln!("[{}] wrote {}", a.name, p.display());
    }
    Ok(())
}

/// Register `n` users `<prefix>_<role><i>` with bounded concurrency.
async fn register_many(hs: &Arc<Hs>, prefix: &str, role: &str, n: usize, conc: usize) -> Result<Vec<User>> {
    let mut out: Vec<Option<User>> = vec![None; n];
    let mut idx = 0;
    while idx < n {
        let end = (idx + conc.max(1)).min(n);
        let mut set = tokio::task::JoinSet::new();
        for i in idx..end {
            let hs = hs.clone();
            let name = format!("{prefix}_{role}{i}");
            set.spawn(async move { (i, hs.register(&name, "loadgen-password-1").await) });
        }
        while let Some(j) = set.join_next().await {
            let (i, r) = j.map_err(|e| format!("task panicked: {e}"))?;
            out[i] = Some(r?);
        }
        idx = end;
    }
    Ok(out.into_iter().map(|u| u.expect("all registered")).collect())
}

async fn send_tests(hs: &Arc<Hs>, a: &RunArgs, prefix: &str, max_conc: usize) -> Result<Vec<SendResult>> {
    eprintln!("[{}] send: registering {max_conc} senders", a.name);
    let users = register_many(hs, prefix, "send", max_conc, a.setup_concurrency).await?;
    let room = hs
        .create_room(&users[0], json!({"preset": "public_chat", "name": "loadgen send throughput"}))
        .await?;
    for u in &users[1..] {
        hs.join(u, &room).await?;
    }
    let users = Arc::new(users);
    let mut results = Vec::new();
    for &c in &a.concurrency {
        let c = c.max(1);
        eprintln!("[{}] send: concurrency {c} for {:.1}s", a.name, a.duration);
        let failed = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(a.duration);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..c {
            let hs = hs.clone();
            let users = users.clone();
            let room = room.clone();
            let failed = failed.clone();
            let count = count.clone();
            set.spawn(async move {
                let u = &users[i];
                let mut lats: Vec<u64> = Vec::with_capacity(4096);
                let mut n: u64 = 0;
                while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                    let txn = format!("c{c}-{i}-{n}");
                    let t = Instant::now();
                    if let Err(e) = hs.send_msg(u, &room, &txn, &format!("loadgen {txn}")).await {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    lats.push(t.elapsed().as_micros() as u64);
                    count.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok(lats)
            });
        }
        let mut all: Vec<u64> = Vec::new();
        let mut first_err: Option<String> = None;
        while let Some(j) = set.join_next().await {
            match j.map_err(|e| format!("task panicked: {e}"))? {
                Ok(l) => all.extend(l),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(format!("send test (concurrency {c}) aborted: {e}"));
        }
        let secs = start.elapsed().as_secs_f64();
        all.sort_unstable();
        let events = count.load(Ordering::Relaxed);
        let r = SendResult {
            concurrency: c,
            events,
            seconds: round3(secs),
            events_per_sec: round3(events as f64 / secs),
            latency_p50_ms: round3(pct_ms(&all, 50.0)),
            latency_p99_ms: round3(pct_ms(&all, 99.0)),
            latency_max_ms: round3(pct_ms(&all, 100.0)),
        };
        eprintln!(
            "[{}] send: c={c}: {} events in {:.2}s = {:.1} ev/s (p50 {:.3} ms, p99 {:.3} ms)",
            a.name, r.events, r.seconds, r.events_per_sec, r.latency_p50_ms, r.latency_p99_ms
        );
        results.push(r);
    }
    Ok(results)
}

fn timeline_has(v: &Value, room: &str, event_id: &str) -> bool {
    v.pointer("/rooms/join")
        .and_then(|j| j.get(room))
        .and_then(|r| r.pointer("/timeline/events"))
        .and_then(Value::as_array)
        .is_some_and(|evs| evs.iter().any(|e| e.get("event_id").and_then(Value::as_str) == Some(event_id)))
}

async fn wake_test(hs: &Arc<Hs>, a: &RunArgs, prefix: &str) -> Result<WakeResult> {
    eprintln!("[{}] wake: setting up ({} samples)", a.name, a.wake_samples);
    let users = register_many(hs, prefix, "wake", 2, a.setup_concurrency).await?;
    let (ua, ub) = (users[0].clone(), users[1].clone());
    let room = hs
        .create_room(&ua, json!({"preset": "public_chat", "name": "loadgen wake latency"}))
        .await?;
    hs.join(&ub, &room).await?;
    // Small responses: only this room's timeline, nothing else.
    let filter = json!({
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "rooms": [room],
            "timeline": {"limit": 10},
            "state": {"types": []},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
    });
    let fid = hs.upload_filter(&ub, &filter).await?;
    let (v, _) = hs.sync(&ub, None, Some(&fid), Some(0)).await?;
    let mut since = str_field(&v, "next_batch", "/sync")?;

    let mut lats: Vec<u64> = Vec::with_capacity(a.wake_samples);
    let mut before = 0usize;
    let mut repolls = 0usize;
    for i in 0..a.wake_samples {
        let spawn_poll = |since: String| {
            let hs = hs.clone();
            let ub = ub.clone();
            let fid = fid.clone();
            tokio::spawn(async move {
                let r = hs.sync(&ub, Some(&since), Some(&fid), Some(30_000)).await;
                (r, Instant::now())
            })
        };
        let mut poll = spawn_poll(since.clone());
        tokio::time::sleep(Duration::from_millis(a.wake_settle_ms)).await;
        if poll.is_finished() {
            // Returned before we sent anything: spurious wake-up. Drain and re-arm.
            let (r, _) = poll.await.map_err(|e| format!("task panicked: {e}"))?;
            let (v, _) = r?;
            since = str_field(&v, "next_batch", "/sync")?;
            repolls += 1;
            poll = spawn_poll(since.clone());
            tokio::time::sleep(Duration::from_millis(a.wake_settle_ms)).await;
        }
        let txn = format!("wake-{i}");
        // Measured from issuing the send: a server may wake the sync before the send's own
        // response reaches the client, so "after the 200" would often be negative.
        let t_start = Instant::now();
        let event_id = hs.send_msg(&ua, &room, &txn, &format!("wake {i}")).await?;
        let t_sent = Instant::now();
        let t_recv = loop {
            let (r, t) = poll.await.map_err(|e| format!("task panicked: {e}"))?;
            let (v, _) = r.map_err(|e| format!("wake sample {i}: {e}"))?;
            since = str_field(&v, "next_batch", "/sync")?;
            if timeline_has(&v, &room, &event_id) {
                break t;
            }
            repolls += 1;
            if repolls > a.wake_samples * 4 + 20 {
                return Err(format!("wake: /sync keeps returning without event {event_id}: {v}"));
            }
            poll = spawn_poll(since.clone());
        };
        if t_recv < t_sent {
            before += 1;
        }
        lats.push(t_recv.saturating_duration_since(t_start).as_micros() as u64);
    }
    let mean = if lats.is_empty() { f64::NAN } else { lats.iter().sum::<u64>() as f64 / lats.len() as f64 / 1000.0 };
    lats.sort_unstable();
    let r = WakeResult {
        samples: lats.len(),
        settle_ms: a.wake_settle_ms,
        p50_ms: round3(pct_ms(&lats, 50.0)),
        p99_ms: round3(pct_ms(&lats, 99.0)),
        max_ms: round3(pct_ms(&lats, 100.0)),
        mean_ms: round3(mean),
        sync_before_send: before,
        repolls,
    };
    eprintln!(
        "[{}] wake: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples, {} repolls, {} early)",
        a.name, r.p50_ms, r.p99_ms, r.max_ms, r.samples, r.repolls, r.sync_before_send
    );
    Ok(r)
}

async fn initial_sync_test(hs: &Arc<Hs>, a: &RunArgs, prefix: &str) -> Result<InitialSyncResult> {
    eprintln!(
        "[{}] initial: creating {} rooms with {} messages each",
        a.name, a.rooms, a.msgs_per_room
    );
    let setup = Instant::now();
    let user = register_many(hs, prefix, "init", 1, 1).await?.remove(0);
    let user = Arc::new(user);
    let next = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.setup_concurrency.max(1) {
        let hs = hs.clone();
        let user = user.clone();
        let next = next.clone();
        let (rooms, msgs) = (a.rooms as u64, a.msgs_per_room);
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= rooms {
                    return Ok::<(), String>(());
                }
                let room = hs
                    .create_room(
                        &user,
                        json!({
                            "preset": "private_chat",
                            "name": format!("Benchmark room {i}"),
                            "topic": format!("loadgen initial-sync room number {i}"),
                        }),
                    )
                    .await?;
                for m in 0..msgs {
                    hs.send_msg(&user, &room, &format!("init-{i}-{m}"), &format!("message {m} in room {i}"))
                        .await?;
                }
            }
        });
    }
    while let Some(j) = set.join_next().await {
        j.map_err(|e| format!("task panicked: {e}"))??;
    }
    let setup_seconds = setup.elapsed().as_secs_f64();
    eprintln!("[{}] initial: setup took {setup_seconds:.1}s; timing {} runs", a.name, a.initial_sync_runs);

    let mut times: Vec<u64> = Vec::new();
    let mut bytes = 0;
    for run in 0..a.initial_sync_runs.max(1) {
        let t = Instant::now();
        let (v, n) = hs.sync(&user, None, None, None).await?;
        let us = t.elapsed().as_micros() as u64;
        let joined = v.pointer("/rooms/join").and_then(Value::as_object).map_or(0, |o| o.len());
        if joined != a.rooms {
            return Err(format!("initial /sync returned {joined} joined rooms, expected {}", a.rooms));
        }
        eprintln!("[{}] initial: run {}: {:.3} ms, {} bytes", a.name, run + 1, us as f64 / 1000.0, n);
        bytes = n;
        times.push(us);
    }
    let all_ms = times.iter().map(|&u| round3(u as f64 / 1000.0)).collect();
    times.sort_unstable();
    Ok(InitialSyncResult {
        rooms: a.rooms,
        msgs_per_room: a.msgs_per_room,
        runs: times.len(),
        median_ms: round3(median_ms(&times)),
        min_ms: round3(pct_ms(&times, 0.0)),
        max_ms: round3(pct_ms(&times, 100.0)),
        all_ms,
        response_bytes: bytes,
        setup_seconds: round3(setup_seconds),
    })
}

// ---------------------------------------------------------------------------
// media
// ---------------------------------------------------------------------------

impl Hs {
    /// POST /_matrix/media/v3/upload; returns the mxc URI.
    async fn upload(&self, u: &User, body: Vec<u8>, content_type: &str) -> Result<String> {
        let path = "/_matrix/media/v3/upload";
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&u.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {path}: request failed: {}", chain(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("POST {path}: {}", chain(&e)))?;
        let v = check_json(&Method::POST, path, status, &bytes)?;
        str_field(&v, "content_uri", path)
    }

    /// GET a binary body that must answer 200; returns (bytes, content type).
    async fn get_bytes(&self, u: &User, path: &str) -> Result<(Vec<u8>, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&u.token)
            .send()
            .await
            .map_err(|e| format!("GET {path}: request failed: {}", chain(&e)))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp.bytes().await.map_err(|e| format!("GET {path}: {}", chain(&e)))?;
        if status != StatusCode::OK {
            return Err(format!(
                "GET {path} -> HTTP {status}: {}",
                truncate(&String::from_utf8_lossy(&bytes), 4000)
            ));
        }
        Ok((bytes.to_vec(), content_type))
    }
}

fn mxc_path(uri: &str) -> Result<String> {
    uri.strip_prefix("mxc://")
        .map(str::to_string)
        .ok_or_else(|| format!("not an mxc URI: {uri}"))
}

/// A photo-like ~1 MP JPEG (smooth gradients plus grain), distinct for every `seed`.
fn test_jpeg(width: u32, height: u32, seed: u32) -> Result<Vec<u8>> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let grain = (state % 24) as i32 - 12;
        let px = |base: i32| (base + grain).clamp(0, 255) as u8;
        let fx = (x * 255 / width) as i32;
        let fy = (y * 255 / height) as i32;
        let wave = (((x + seed) / 40 + y / 40) % 2) as i32 * 40;
        image::Rgb([px(fx), px(fy + wave), px((fx + fy) / 2 + (seed % 50) as i32)])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&image)
        .map_err(|e| format!("encoding test JPEG: {e}"))?;
    Ok(out)
}

/// Runs `count` jobs, `conc` at a time; returns (wall seconds, sorted latencies in µs).
async fn run_concurrent<F, Fut>(count: usize, conc: usize, job: F) -> Result<(f64, Vec<u64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc.max(1) {
        let (job, next, failed) = (job.clone(), next.clone(), failed.clone());
        set.spawn(async move {
            let mut lats = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count || failed.load(Ordering::Relaxed) {
                    return Ok::<_, String>(lats);
                }
                let t = Instant::now();
                if let Err(e) = job(i).await {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                lats.push(t.elapsed().as_micros() as u64);
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    let mut first_err = None;
    while let Some(j) = set.join_next().await {
        match j.map_err(|e| format!("task panicked: {e}"))? {
            Ok(l) => all.extend(l),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((secs, all))
}

async fn media_test(hs: &Arc<Hs>, a: &RunArgs, prefix: &str) -> Result<MediaResult> {
    let size = a.media_file_kib.max(1) * 1024;
    let conc = a.media_concurrency.max(1);
    let uploads = a.media_uploads.max(1);
    eprintln!(
        "[{}] media: {uploads} uploads of {} KiB, {conc} at a time",
        a.name, a.media_file_kib
    );
    let user = Arc::new(register_many(hs, prefix, "media", 1, 1).await?.remove(0));

    // Upload throughput: distinct files (the first 8 bytes carry the index).
    let mut base = vec![0u8; size];
    let mut x: u32 = 0x9E37_79B9;
    for b in &mut base {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let base = Arc::new(base);
    let uris = Arc::new(std::sync::Mutex::new(vec![String::new(); uploads]));
    let (up_secs, up_lats) = {
        let (hs, user, base, uris) = (hs.clone(), user.clone(), base.clone(), uris.clone());
        run_concurrent(uploads, conc, move |i| {
            let (hs, user, base, uris) = (hs.clone(), user.clone(), base.clone(), uris.clone());
            async move {
                let mut body = base.as_ref().clone();
                body[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let uri = hs.upload(&user, body, "application/octet-stream").await?;
                uris.lock().map_err(|_| "lock poisoned".to_string())?[i] = mxc_path(&uri)?;
                Ok(())
            }
        })
        .await
        .map_err(|e| format!("media upload: {e}"))?
    };
    let up_mb = (uploads * size) as f64 / 1e6 / up_secs;
    eprintln!("[{}] media: uploads {up_mb:.1} MB/s ({uploads} in {up_secs:.2}s)", a.name);

    // Download throughput over the same files.
    let downloads = a.media_downloads.max(1);
    let paths: Arc<Vec<String>> =
        Arc::new(uris.lock().map_err(|_| "lock poisoned".to_string())?.clone());
    let (down_secs, down_lats) = {
        let (hs, user, paths) = (hs.clone(), user.clone(), paths.clone());
        run_concurrent(downloads, conc, move |i| {
            let (hs, user, paths) = (hs.clone(), user.clone(), paths.clone());
            async move {
                let idx = i % paths.len();
                let path = format!("/_matrix/client/v1/media/download/{}", paths[idx]);
                let (bytes, _) = hs.get_bytes(&user, &path).await?;
                if bytes.len() != size || bytes[..8] != (idx as u64).to_be_bytes() {
                    return Err(format!("GET {path}: got {} bytes, not the uploaded file", bytes.len()));
                }
                Ok(())
            }
        })
        .await
        .map_err(|e| format!("media download: {e}"))?
    };
    let down_mb = (downloads * size) as f64 / 1e6 / down_secs;
    eprintln!("[{}] media: downloads {down_mb:.1} MB/s ({downloads} in {down_secs:.2}s)", a.name);

    // Thumbnail generation: a fresh image per sample, so the first request generates.
    let samples = a.thumb_samples.max(1);
    let (tw, th) = (1280u32, 800u32);
    let request = "width=400&height=300&method=scale";
    eprintln!("[{}] media: {samples} thumbnails of {tw}x{th} JPEGs ({request})", a.name);
    let mut thumb_paths = Vec::with_capacity(samples);
    let mut source_bytes = 0;
    for i in 0..samples {
        let jpeg = test_jpeg(tw, th, i as u32 + 1)?;
        source_bytes += jpeg.len();
        let uri = hs.upload(&user, jpeg, "image/jpeg").await?;
        thumb_paths.push(mxc_path(&uri)?);
    }
    let mut first = Vec::with_capacity(samples);
    let mut cached = Vec::with_capacity(samples);
    for path in &thumb_paths {
        let path = format!("/_matrix/client/v1/media/thumbnail/{path}?{request}");
        for lats in [&mut first, &mut cached] {
            let t = Instant::now();
            let (bytes, content_type) = hs.get_bytes(&user, &path).await?;
            lats.push(t.elapsed().as_micros() as u64);
            if !content_type.starts_with("image/") || bytes.is_empty() {
                return Err(format!("GET {path}: not an image ({content_type}, {} bytes)", bytes.len()));
            }
        }
    }
    first.sort_unstable();
    cached.sort_unstable();
    let r = MediaResult {
        file_bytes: size,
        concurrency: conc,
        uploads,
        upload_seconds: round3(up_secs),
        upload_mb_per_sec: round3(up_mb),
        upload_p50_ms: round3(pct_ms(&up_lats, 50.0)),
        upload_p99_ms: round3(pct_ms(&up_lats, 99.0)),
        downloads,
        download_seconds: round3(down_secs),
        download_mb_per_sec: round3(down_mb),
        download_p50_ms: round3(pct_ms(&down_lats, 50.0)),
        download_p99_ms: round3(pct_ms(&down_lats, 99.0)),
        thumb_samples: samples,
        thumb_source: format!("{tw}x{th} JPEG"),
        thumb_source_bytes_avg: source_bytes / samples,
        thumb_request: request.to_string(),
        thumb_first_p50_ms: round3(pct_ms(&first, 50.0)),
        thumb_first_p99_ms: round3(pct_ms(&first, 99.0)),
        thumb_cached_p50_ms: round3(pct_ms(&cached, 50.0)),
    };
    eprintln!(
        "[{}] media: thumbnail first request p50 {:.2} ms, p99 {:.2} ms; cached p50 {:.2} ms",
        a.name, r.thumb_first_p50_ms, r.thumb_first_p99_ms, r.thumb_cached_p50_ms
    );
    Ok(r)
}

fn print_run(r: &RunResult) {
    println!("== {} ({}) ==", r.name, r.url);
    for s in &r.send {
        println!(
            "send throughput   c={:<3} {:>10.1} events/s  ({} events in {:.2}s; latency p50 {:.3} ms, p99 {:.3} ms)",
            s.concurrency, s.events_per_sec, s.events, s.seconds, s.latency_p50_ms, s.latency_p99_ms
        );
    }
    if let Some(w) = &r.wake {
        println!(
            "sync wake latency       p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms  ({} samples)",
            w.p50_ms, w.p99_ms, w.max_ms, w.samples
        );
    }
    if let Some(i) = &r.initial_sync {
        println!(
            "initial sync {:>4} rooms median {:.3} ms (min {:.3}, max {:.3}; {} runs, {} bytes)",
            i.rooms, i.median_ms, i.min_ms, i.max_ms, i.runs, i.response_bytes
        );
    }
    if let Some(m) = &r.media {
        println!(
            "media upload      {:>8.1} MB/s  ({} x {} KiB, {} concurrent; p50 {:.2} ms)",
            m.upload_mb_per_sec, m.uploads, m.file_bytes / 1024, m.concurrency, m.upload_p50_ms
        );
        println!(
            "media download    {:>8.1} MB/s  ({} x {} KiB, {} concurrent; p50 {:.2} ms)",
            m.download_mb_per_sec, m.downloads, m.file_bytes / 1024, m.concurrency, m.download_p50_ms
        );
        println!(
            "thumbnail ({}, {}) first p50 {:.2} ms, p99 {:.2} ms; cached p50 {:.2} ms",
            m.thumb_source, m.thumb_request, m.thumb_first_p50_ms, m.thumb_first_p99_ms, m.thumb_cached_p50_ms
        );
    }
    if let Some(s) = &r.search {
        println!(
            "search ({} messages)  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  ({} queries x {}; seeded at {:.0} events/s)",
            s.messages, s.p50_ms, s.p99_ms, s.max_ms, s.queries.len(), s.samples_per_query, s.seed_events_per_sec
        );
    }
}

// ---------------------------------------------------------------------------
// `wait-health`
// ---------------------------------------------------------------------------

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

async fn wait_health(a: WaitArgs) -> Result<()> {
    let t0 = a.t0_ns.unwrap_or_else(now_ns);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/health", a.url.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout);
    let interval = Duration::from_secs_f64(a.interval_ms / 1000.0);
    let mut last: String;
    loop {
        match http.get(&url).send().await {
            Ok(r) if r.status() == StatusCode::OK => {
                let elapsed_ns = now_ns().saturating_sub(t0);
                println!("{:.3}", elapsed_ns as f64 / 1e6);
                return Ok(());
            }
            Ok(r) => {
                let st = r.status();
                let body = r.text().await.unwrap_or_default();
                last = format!("HTTP {st}: {}", truncate(&body, 500));
            }
            Err(e) => last = chain(&e),
        }
        if let Some(pid) = a.pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(format!("process {pid} exited before {url} answered 200 (last: {last})"));
        }
        if let Some(pid) = a.pid
            && let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return Err(format!("process {pid} exited before {url} answered 200 (last: {last})"));
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {}s waiting for {url} (last: {last})", a.timeout));
        }
        tokio::time::sleep(interval).await;
    }
}

// ---------------------------------------------------------------------------
// `report`
// ---------------------------------------------------------------------------

#[derive(Deserialize, Serialize, Clone, Debug, Default)]
struct ProcFigures {
    #[serde(default)]
    rss_idle_mb: Option<f64>,
    #[serde(default)]
    rss_after_mb: Option<f64>,
    #[serde(default)]
    cold_start_ms: Vec<f64>,
    #[serde(default)]
    restart_ms: Option<f64>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

fn split_kv(s: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &str) -> Result<T> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    serde_json::from_str(&s).map_err(|e| format!("parsing {path}: {e}"))
}

/// Lower is better, or higher is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

struct Row {
    key: &'static str,
    label: String,
    unit: &'static str,
    better: Better,
    decimals: usize,
}

fn report(a: ReportArgs) -> Result<()> {
    let mut names: Vec<String> = Vec::new();
    let mut loads: BTreeMap<String, RunResult> = BTreeMap::new();
    let mut procs: BTreeMap<String, ProcFigures> = BTreeMap::new();
    for s in &a.load {
        let (n, p) = split_kv(s)?;
        if !names.contains(&n) {
            names.push(n.clone());
        }
        loads.insert(n, read_json(&p)?);
    }
    for s in &a.procs {
        let (n, p) = split_kv(s)?;
        if !names.contains(&n) {
            names.push(n.clone());
        }
        procs.insert(n, read_json(&p)?);
    }
    // Canonical column order: sparks first, synapse second, others after.
    names.sort_by_key(|n| match n.as_str() {
        "sparks" => 0,
        "synapse" => 1,
        _ => 2,
    });

    let mut conc: Vec<usize> = loads.values().flat_map(|l| l.send.iter().map(|s| s.concurrency)).collect();
    conc.sort_unstable();
    conc.dedup();
    let rooms = loads.values().find_map(|l| l.initial_sync.as_ref().map(|i| i.rooms));
    let search_n = loads
        .values()
        .find_map(|l| l.search.as_ref().map(|s| s.messages))
        .map_or("?".to_string(), |n| n.to_string());

    let mut rows: Vec<(Row, BTreeMap<String, f64>)> = Vec::new();
    let mut push = |row: Row, f: &dyn Fn(&str) -> Option<f64>| {
        let vals: BTreeMap<String, f64> =
            names.iter().filter_map(|n| f(n).filter(|v| v.is_finite()).map(|v| (n.clone(), v))).collect();
        if !vals.is_empty() {
            rows.push((row, vals));
        }
    };
    for &c in &conc {
        push(
            Row { key: "send", label: format!("send throughput, {c} sender(s)"), unit: "events/s", better: Better::Higher, decimals: 1 },
            &|n| loads.get(n)?.send.iter().find(|s| s.concurrency == c).map(|s| s.events_per_sec),
        );
    }
    push(
        Row { key: "wake_p50", label: "sync wake latency p50".into(), unit: "ms", better: Better::Lower, decimals: 3 },
        &|n| loads.get(n)?.wake.as_ref().map(|w| w.p50_ms),
    );
    push(
        Row { key: "wake_p99", label: "sync wake latency p99".into(), unit: "ms", better: Better::Lower, decimals: 3 },
        &|n| loads.get(n)?.wake.as_ref().map(|w| w.p99_ms),
    );
    push(
        Row { key: "wake_max", label: "sync wake latency max".into(), unit: "ms", better: Better::Lower, decimals: 3 },
        &|n| loads.get(n)?.wake.as_ref().map(|w| w.max_ms),
    );
    push(
        Row {
            key: "initial_sync",
            label: format!("initial sync, {} rooms (median)", rooms.map_or("?".into(), |r| r.to_string())),
            unit: "ms",
            better: Better::Lower,
            decimals: 3,
        },
        &|n| loads.get(n)?.initial_sync.as_ref().map(|i| i.median_ms),
    );
    let media_shape = loads.values().find_map(|l| {
        l.media.as_ref().map(|m| (m.file_bytes / 1024, m.concurrency, m.thumb_source.clone()))
    });
    let (kib, mconc, thumb_src) = media_shape.unwrap_or((0, 0, String::new()));
    let size_label = if kib % 1024 == 0 { format!("{} MiB", kib / 1024) } else { format!("{kib} KiB") };
    push(
        Row {
            key: "media_upload",
            label: format!("media upload, {size_label} files, {mconc} concurrent"),
            unit: "MB/s",
            better: Better::Higher,
            decimals: 1,
        },
        &|n| loads.get(n)?.media.as_ref().map(|m| m.upload_mb_per_sec),
    );
    push(
        Row {
            key: "media_download",
            label: format!("media download, {size_label} files, {mconc} concurrent"),
            unit: "MB/s",
            better: Better::Higher,
            decimals: 1,
        },
        &|n| loads.get(n)?.media.as_ref().map(|m| m.download_mb_per_sec),
    );
    push(
        Row {
            key: "thumb_p50",
            label: format!("thumbnail generation, {thumb_src}, p50"),
            unit: "ms",
            better: Better::Lower,
            decimals: 2,
        },
        &|n| loads.get(n)?.media.as_ref().map(|m| m.thumb_first_p50_ms),
    );
    push(
        Row {
            key: "thumb_p99",
            label: format!("thumbnail generation, {thumb_src}, p99"),
            unit: "ms",
            better: Better::Lower,
            decimals: 2,
        },
        &|n| loads.get(n)?.media.as_ref().map(|m| m.thumb_first_p99_ms),
    );
    let busy_label = names
        .iter()
        .find_map(|n| loads.get(n)?.busy.as_ref().map(|b| format!("{} rooms, {} msg/s + typing + receipts", b.rooms, b.offered_messages_per_sec)))
        .unwrap_or_default();
    push(
        Row {
            key: "busy_p50",
            label: format!("/sync delivery p50, {busy_label}"),
            unit: "ms",
            better: Better::Lower,
            decimals: 2,
        },
        &|n| loads.get(n)?.busy.as_ref().map(|b| b.delivery_p50_ms),
    );
    push(
        Row {
            key: "busy_p99",
            label: format!("/sync delivery p99, {busy_label}"),
            unit: "ms",
            better: Better::Lower,
            decimals: 2,
        },
        &|n| loads.get(n)?.busy.as_ref().map(|b| b.delivery_p99_ms),
    );
    push(
        Row {
            key: "claims",
            label: "/keys/claim throughput".to_string(),
            unit: "claims/s",
            better: Better::Higher,
            decimals: 1,
        },
        &|n| loads.get(n)?.e2ee.as_ref().map(|e| e.claims_per_sec),
    );
    push(
        Row {
            key: "to_device_p50",
            label: "to-device send→deliver p50".to_string(),
            unit: "ms",
            better: Better::Lower,
            decimals: 3,
        },
        &|n| loads.get(n)?.e2ee.as_ref().map(|e| e.to_device_p50_ms),
    );
    push(
        Row {
            key: "to_device_p99",
            label: "to-device send→deliver p99".to_string(),
            unit: "ms",
            better: Better::Lower,
            decimals: 3,
        },
        &|n| loads.get(n)?.e2ee.as_ref().map(|e| e.to_device_p99_ms),
    );
    let sliding_n = names.iter().find_map(|n| loads.get(n)?.sliding.as_ref().map(|s| s.rooms)).unwrap_or_default();
    push(
        Row {
            key: "sliding_initial",
            label: format!("sliding sync initial, all {sliding_n} rooms"),
            unit: "ms",
            better: Better::Lower,
            decimals: 1,
        },
        &|n| loads.get(n)?.sliding.as_ref().map(|s| s.initial_all_ms),
    );
    push(
        Row {
            key: "sliding_page",
            label: "sliding sync initial, first 20 rooms".to_string(),
            unit: "ms",
            better: Better::Lower,
            decimals: 1,
        },
        &|n| loads.get(n)?.sliding.as_ref().map(|s| s.initial_page_ms),
    );
    push(
        Row {
            key: "sliding_incremental_p99",
            label: format!("sliding sync incremental p99, {sliding_n} rooms"),
            unit: "ms",
            better: Better::Lower,
            decimals: 2,
        },
        &|n| loads.get(n)?.sliding.as_ref().map(|s| s.incremental_p99_ms),
    );
    push(
        Row {
            key: "search_p50",
            label: format!("search latency p50, {search_n} messages"),
            unit: "ms",
            better: Better::Lower,
            decimals: 2,
        },
        &|n| loads.get(n)?.search.as_ref().map(|s| s.p50_ms),
    );
    push(
        Row {
            key: "search_p99",
            label: format!("search latency p99, {search_n} messages"),
            unit: "ms",
            better: Better::Lower,
            decimals: 2,
        },
        &|n| loads.get(n)?.search.as_ref().map(|s| s.p99_ms),
    );
    push(
        Row { key: "rss_idle", label: "RSS idle".into(), unit: "MiB", better: Better::Lower, decimals: 1 },
        &|n| procs.get(n)?.rss_idle_mb,
    );
    push(
        Row { key: "rss_after", label: "RSS after load".into(), unit: "MiB", better: Better::Lower, decimals: 1 },
        &|n| procs.get(n)?.rss_after_mb,
    );
    push(
        Row { key: "cold_start", label: "first start, empty data dir (best)".into(), unit: "ms", better: Better::Lower, decimals: 1 },
        &|n| procs.get(n)?.cold_start_ms.iter().copied().reduce(f64::min),
    );
    push(
        Row { key: "restart", label: "restart with the load's data".into(), unit: "ms", better: Better::Lower, decimals: 1 },
        &|n| procs.get(n)?.restart_ms,
    );

    let has_ratio = names.iter().any(|n| n == "sparks") && names.iter().any(|n| n == "synapse");
    let ratio_of = |row: &Row, v: &BTreeMap<String, f64>| -> Option<f64> {
        let (s, y) = (*v.get("sparks")?, *v.get("synapse")?);
        let r = match row.better {
            Better::Higher => s / y,
            Better::Lower => y / s,
        };
        r.is_finite().then_some(r)
    };

    // Text table.
    let mut header: Vec<String> = vec!["metric".into()];
    header.extend(names.iter().map(|n| title(n)));
    if has_ratio {
        header.push("ratio".into());
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut json_rows = Vec::new();
    for (row, vals) in &rows {
        let mut line = vec![format!("{} ({})", row.label, row.unit)];
        for n in &names {
            line.push(vals.get(n).map_or("-".into(), |v| format!("{v:.*}", row.decimals)));
        }
        let ratio = if has_ratio { ratio_of(row, vals) } else { None };
        if has_ratio {
            line.push(ratio.map_or("-".into(), |r| format!("{r:.2}x")));
        }
        table.push(line);
        let mut jr = json!({
            "metric": row.key,
            "label": row.label,
            "unit": row.unit,
            "better": match row.better { Better::Higher => "higher", Better::Lower => "lower" },
            "values": vals,
        });
        if let Some(r) = ratio {
            jr["ratio_sparks_advantage"] = json!(round3(r));
        }
        json_rows.push(jr);
    }
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for l in &table {
        for (i, c) in l.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let fmt_line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                let _ = write!(s, "| {:<w$} ", c, w = widths[i]);
            } else {
                let _ = write!(s, "| {:>w$} ", c, w = widths[i]);
            }
        }
        s.push('|');
        s
    };
    println!();
    println!("{}", fmt_line(&header));
    let sep: Vec<String> = widths.iter().enumerate().map(|(i, w)| {
        if i == 0 { format!(":{}", "-".repeat(w + 1)) } else { format!("{}:", "-".repeat(w + 1)) }
    }).collect();
    println!("|{}|", sep.join("|"));
    for l in &table {
        println!("{}", fmt_line(l));
    }
    if has_ratio {
        println!("\nratio = how many times better Sparks is (throughput: Sparks/Synapse; latency, time, memory: Synapse/Sparks).");
    }

    if let Some(p) = &a.json {
        let mut meta = serde_json::Map::new();
        for m in &a.meta {
            let (k, v) = split_kv(m)?;
            meta.insert(k, json!(v));
        }
        let servers: BTreeMap<&String, Value> = names
            .iter()
            .map(|n| (n, json!({"load": loads.get(n), "process": procs.get(n)})))
            .collect();
        let out = json!({"meta": meta, "table": json_rows, "servers": servers});
        let s = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(p, s + "\n").map_err(|e| format!("writing {}: {e}", p.display()))?;
        println!("\nJSON written to {}", p.display());
    }
    Ok(())
}

fn title(n: &str) -> String {
    match n {
        "sparks" => "Sparks".into(),
        "synapse" => "Synapse".into(),
        _ => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(pct_ms(&v, 50.0), 50.0);
        assert_eq!(pct_ms(&v, 99.0), 99.0);
        assert_eq!(pct_ms(&v, 100.0), 100.0);
        assert_eq!(pct_ms(&v, 0.0), 1.0);
        assert_eq!(median_ms(&[1000, 2000, 3000, 4000]), 2.5);
    }

    #[test]
    fn encoding() {
        assert_eq!(enc("!abc:localhost"), "%21abc%3Alocalhost");
        assert_eq!(enc("@u_1.x:hs"), "%40u_1.x%3Ahs");
    }
}
