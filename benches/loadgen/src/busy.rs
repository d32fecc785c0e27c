//! The `busy` test: an observer syncs incrementally while two actors keep `--busy-rooms` rooms
//! busy at `--busy-rate` messages per second, each message followed by a typing notification
//! and a read receipt from the other actor. Measured: how long after a send's 200 the
//! observer's long-polling `/sync` delivers the message (p50/p99), and how many syncs,
//! receipts and typing notifications it took in. The offered load is the same for every
//! server, so a server that falls behind shows it as latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::sync::Mutex;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Hs, Result, RunArgs, User, enc, pct_ms, register_many, round3, str_field};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BusyResult {
    pub rooms: usize,
    pub offered_messages_per_sec: f64,
    pub seconds: f64,
    pub messages_sent: usize,
    pub messages_delivered: usize,
    /// From the send's 200 to the observer's /sync returning with the message.
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    pub syncs: usize,
    pub mean_sync_bytes: usize,
    pub receipts_seen: usize,
    pub typing_seen: usize,
}

pub async fn busy_test(hs: &Arc<Hs>, a: &RunArgs, prefix: &str) -> Result<BusyResult> {
    let rooms_n = a.busy_rooms.max(1);
    eprintln!("[{}] busy: setting up {rooms_n} rooms", a.name);
    let users = register_many(hs, prefix, "busy", 3, a.setup_concurrency).await?;
    let (observer, actor_a, actor_b) = (users[0].clone(), users[1].clone(), users[2].clone());
    let mut rooms = Vec::with_capacity(rooms_n);
    for i in 0..rooms_n {
        let room = hs
            .create_room(&actor_a, json!({ "preset": "public_chat", "name": format!("busy {i}") }))
            .await?;
        hs.join(&actor_b, &room).await?;
        hs.join(&observer, &room).await?;
        rooms.push(room);
    }
    let (v, _) = hs.sync(&observer, None, None, Some(0)).await?;
    let mut since = str_field(&v, "next_batch", "/sync")?;

    // Message number -> (when its send returned, when the observer received it). The observer
    // may see a message before its send's 200 is processed here; both orders are handled.
    let timing: Arc<Mutex<HashMap<usize, (Option<Instant>, Option<Instant>)>>> = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs_f64(a.duration);
    let interval = Duration::from_secs_f64(1.0 / a.busy_rate.max(0.1));
    eprintln!(
        "[{}] busy: {:.1} messages/s (+ typing + receipt each) for {:.1}s",
        a.name, a.busy_rate, a.duration
    );

    // The actors: a fixed schedule, so a slow server does not get a lighter load.
    let actors = {
        let hs = hs.clone();
        let timing = timing.clone();
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = Instant::now();
            let mut i = 0usize;
            let mut tasks = tokio::task::JoinSet::new();
            while started.elapsed() < duration {
                ticker.tick().await;
                let (sender, other) =
                    if i % 2 == 0 { (actor_a.clone(), actor_b.clone()) } else { (actor_b.clone(), actor_a.clone()) };
                let room = rooms[i % rooms.len()].clone();
                let hs = hs.clone();
                let timing = timing.clone();
                let n = i;
                tasks.spawn(async move { act(&hs, &sender, &other, &room, n, &timing).await });
                i += 1;
            }
            let mut errors = Vec::new();
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => errors.push(e),
                    Err(e) => errors.push(format!("task panicked: {e}")),
                }
            }
            (i, errors)
        })
    };

    // The observer: long-polls and timestamps each message it receives.
    let mut syncs = 0usize;
    let mut bytes = 0usize;
    let mut receipts = 0usize;
    let mut typing = 0usize;
    let observe_until = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep(duration + Duration::from_secs(3)).await;
            stop.store(true, Ordering::SeqCst);
        }
    };
    tokio::spawn(observe_until);
    while !stop.load(Ordering::SeqCst) {
        let (v, size) = hs.sync(&observer, Some(&since), None, Some(1000)).await?;
        let received = Instant::now();
        syncs += 1;
        bytes += size;
        since = str_field(&v, "next_batch", "/sync")?;
        let Some(joined) = v.pointer("/rooms/join").and_then(Value::as_object) else { continue };
        for room in joined.values() {
            for event in room.pointer("/timeline/events").and_then(Value::as_array).into_iter().flatten() {
                let n = event
                    .pointer("/content/body")
                    .and_then(Value::as_str)
                    .and_then(|b| b.strip_prefix("busy message "))
                    .and_then(|n| n.parse::<usize>().ok());
                if let Some(n) = n {
                    timing.lock().map_err(|_| "lock poisoned".to_string())?.entry(n).or_default().1.get_or_insert(received);
                }
            }
            for event in room.pointer("/ephemeral/events").and_then(Value::as_array).into_iter().flatten() {
                match event.get("type").and_then(Value::as_str) {
                    Some("m.receipt") => receipts += 1,
                    Some("m.typing") => typing += 1,
                    _ => {}
                }
            }
        }
    }
    let (messages_sent, errors) = actors.await.map_err(|e| format!("actors panicked: {e}"))?;
    if let Some(error) = errors.first() {
        return Err(format!("busy: {} actor requests failed, first: {error}", errors.len()));
    }
    let latencies_us: Vec<u64> = {
        let timing = timing.lock().map_err(|_| "lock poisoned".to_string())?;
        let mut l: Vec<u64> = timing
            .values()
            .filter_map(|(sent, seen)| Some(seen.as_ref()?.saturating_duration_since(*sent.as_ref()?).as_micros() as u64))
            .collect();
        l.sort_unstable();
        l
    };
    let delivered = latencies_us.len();
    let result = BusyResult {
        rooms: rooms_n,
        offered_messages_per_sec: a.busy_rate,
        seconds: a.duration,
        messages_sent,
        messages_delivered: delivered,
        delivery_p50_ms: round3(pct_ms(&latencies_us, 50.0)),
        delivery_p99_ms: round3(pct_ms(&latencies_us, 99.0)),
        delivery_max_ms: round3(pct_ms(&latencies_us, 100.0)),
        syncs,
        mean_sync_bytes: if syncs == 0 { 0 } else { bytes / syncs },
        receipts_seen: receipts,
        typing_seen: typing,
    };
    eprintln!(
        "[{}] busy: {} of {} messages delivered, p50 {:.3} ms, p99 {:.3} ms; {} syncs, {} receipts, {} typing",
        a.name,
        result.messages_delivered,
        result.messages_sent,
        result.delivery_p50_ms,
        result.delivery_p99_ms,
        result.syncs,
        result.receipts_seen,
        result.typing_seen
    );
    if delivered < messages_sent {
        return Err(format!("busy: only {delivered} of {messages_sent} messages reached the observer"));
    }
    Ok(result)
}

/// One tick: a message, then typing and a read receipt from the other actor.
type Timing = Mutex<HashMap<usize, (Option<Instant>, Option<Instant>)>>;

async fn act(hs: &Hs, sender: &User, other: &User, room: &str, n: usize, timing: &Timing) -> Result<()> {
    let event_id = hs.send_msg(sender, room, &format!("busy-{n}"), &format!("busy message {n}")).await?;
    timing.lock().map_err(|_| "lock poisoned".to_string())?.entry(n).or_default().0 = Some(Instant::now());
    let typing_path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room), enc(&other.user_id));
    hs.call(Method::PUT, &typing_path, Some(&other.token), Some(&json!({ "typing": true, "timeout": 5000 })))
        .await?;
    let receipt_path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(room), enc(&event_id));
    hs.call(Method::POST, &receipt_path, Some(&other.token), Some(&json!({}))).await?;
    Ok(())
}
