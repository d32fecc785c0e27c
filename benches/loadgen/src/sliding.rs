//! The `sliding` test: simplified sliding sync (MSC4186) for a user in `--sliding-rooms` rooms.
//! Measured: the initial response for a list covering all rooms (timeline_limit 1, a few
//! state types, as a room list asks), the Element X-style first page (`[0,19]`), and the
//! incremental latency: from a message's send returning to the user's long-polling
//! sliding-sync request returning with it (p50/p99).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Hs, Result, RunArgs, enc, pct_ms, register_many, round3, run_concurrent};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SlidingResult {
    pub rooms: usize,
    /// Median of the runs of an initial request whose list covers every room.
    pub initial_all_ms: f64,
    pub initial_all_bytes: usize,
    /// Median of the runs of an initial request for the first 20 rooms.
    pub initial_page_ms: f64,
    pub incremental_samples: usize,
    pub incremental_p50_ms: f64,
    pub incremental_p99_ms: f64,
}

fn body(conn: &str, end: usize) -> Value {
    json!({
        "conn_id": conn,
        "lists": {
            "all": {
                "ranges": [[0, end]],
                "timeline_limit": 1,
                "required_state": [
                    ["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""],
                    ["m.room.member", "$LAZY"], ["m.room.create", ""]
                ],
            }
        },
        "extensions": { "e2ee": { "enabled": true }, "to_device": { "enabled": true }, "account_data": { "enabled": true } }
    })
}

async fn request(hs: &Hs, token: &str, pos: Option<&str>, timeout: Option<u64>, body: &Value) -> Result<(Value, usize)> {
    let mut query = Vec::new();
    if let Some(pos) = pos {
        query.push(format!("pos={}", enc(pos)));
    }
    if let Some(timeout) = timeout {
        query.push(format!("timeout={timeout}"));
    }
    let path = if query.is_empty() { PATH.to_owned() } else { format!("{PATH}?{}", query.join("&")) };
    let (status, bytes) = hs.raw(Method::POST, &path, Some(token), Some(body)).await?;
    let value = crate::check_json(&Method::POST, &path, status, &bytes)?;
    Ok((value, bytes.len()))
}

pub async fn sliding_test(hs: &Arc<Hs>, a: &RunArgs, prefix: &str) -> Result<SlidingResult> {
    let n = a.sliding_rooms.max(20);
    eprintln!("[{}] sliding: creating {n} rooms", a.name);
    let users = register_many(hs, prefix, "slide", 2, a.setup_concurrency).await?;
    let (user, other) = (users[0].clone(), users[1].clone());
    let created = Instant::now();
    let slots: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::new(std::sync::Mutex::new(vec![None; n]));
    run_concurrent(n, a.setup_concurrency, {
        let hs = hs.clone();
        let user = user.clone();
        let other = other.clone();
        let slots = slots.clone();
        move |i| {
            let hs = hs.clone();
            let user = user.clone();
            let other = other.clone();
            let slots = slots.clone();
            async move {
                let room = hs.create_room(&user, json!({ "preset": "public_chat", "name": format!("sliding {i}") })).await?;
                hs.join(&other, &room).await?;
                hs.send_msg(&other, &room, &format!("slide-seed-{i}"), &format!("hello {i}")).await?;
                slots.lock().map_err(|_| "lock poisoned".to_string())?[i] = Some(room);
                Ok(())
            }
        }
    })
    .await?;
    let rooms: Vec<String> = slots.lock().map_err(|_| "lock poisoned".to_string())?.iter().flatten().cloned().collect();
    eprintln!("[{}] sliding: setup took {:.1}s", a.name, created.elapsed().as_secs_f64());

    let runs = a.initial_sync_runs.max(1);
    let mut all = Vec::new();
    let mut page = Vec::new();
    let mut bytes = 0;
    for run in 0..runs {
        let started = Instant::now();
        let (response, size) = request(hs, &user.token, None, None, &body(&format!("all-{run}"), n - 1)).await?;
        all.push(started.elapsed().as_micros() as u64);
        bytes = size;
        let returned = response["rooms"].as_object().map_or(0, |r| r.len());
        if returned != n {
            return Err(format!("sliding: initial request returned {returned} of {n} rooms"));
        }
        let started = Instant::now();
        request(hs, &user.token, None, None, &body(&format!("page-{run}"), 19)).await?;
        page.push(started.elapsed().as_micros() as u64);
    }
    all.sort_unstable();
    page.sort_unstable();

    // Incremental: one connection, long-polling; the other user sends into random rooms.
    let (first, _) = request(hs, &user.token, None, None, &body("live", 19)).await?;
    let mut pos = first["pos"].as_str().ok_or("sliding: no pos")?.to_owned();
    let samples = a.wake_samples.clamp(10, 1000);
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let hs_poll = hs.clone();
        let token = user.token.clone();
        let poll_pos = pos.clone();
        let poll = tokio::spawn(async move {
            let result = request(&hs_poll, &token, Some(&poll_pos), Some(30_000), &body("live", 19)).await;
            (result, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(a.wake_settle_ms)).await;
        let room = &rooms[(i * 7919) % rooms.len()];
        let event_id = hs.send_msg(&other, room, &format!("slide-live-{i}"), &format!("live {i}")).await?;
        let sent = Instant::now();
        let (result, received) = poll.await.map_err(|e| format!("task panicked: {e}"))?;
        let (response, _) = result?;
        pos = response["pos"].as_str().ok_or("sliding: no pos")?.to_owned();
        let has = response["rooms"][room.as_str()]["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["event_id"] == event_id.as_str()));
        if !has {
            // Returned early for something else: wait for the message on the next poll.
            let (response, _) = request(hs, &user.token, Some(&pos), Some(30_000), &body("live", 19)).await?;
            pos = response["pos"].as_str().ok_or("sliding: no pos")?.to_owned();
            latencies.push(Instant::now().saturating_duration_since(sent).as_micros() as u64);
            continue;
        }
        latencies.push(received.saturating_duration_since(sent).as_micros() as u64);
    }
    latencies.sort_unstable();
    let result = SlidingResult {
        rooms: n,
        initial_all_ms: round3(pct_ms(&all, 50.0)),
        initial_all_bytes: bytes,
        initial_page_ms: round3(pct_ms(&page, 50.0)),
        incremental_samples: latencies.len(),
        incremental_p50_ms: round3(pct_ms(&latencies, 50.0)),
        incremental_p99_ms: round3(pct_ms(&latencies, 99.0)),
    };
    eprintln!(
        "[{}] sliding: initial (all {n} rooms) {:.1} ms, first page {:.1} ms; incremental p50 {:.3} ms, p99 {:.3} ms",
        a.name, result.initial_all_ms, result.initial_page_ms, result.incremental_p50_ms, result.incremental_p99_ms
    );
    Ok(result)
}
