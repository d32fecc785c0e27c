//! The `e2ee` tests: `/keys/claim` throughput and to-device delivery latency.
//!
//! Claim: devices (500 keys each, Synapse's limit) upload `--claim-keys` one-time keys (unsigned `curve25519` keys, which
//! need no client-side signing), then `--claim-concurrency` other users claim them as fast as
//! they can; every key must come out exactly once. To-device: a message sent to a device
//! whose owner long-polls `/sync`; measured from issuing the send to the sync returning with it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Hs, Result, RunArgs, enc, pct_ms, register_many, round3, run_concurrent, str_field};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct E2eeResult {
    pub claim_keys: usize,
    pub claim_concurrency: usize,
    pub claims_per_sec: f64,
    pub claim_p50_ms: f64,
    pub claim_p99_ms: f64,
    pub to_device_samples: usize,
    pub to_device_p50_ms: f64,
    pub to_device_p99_ms: f64,
}

/// Most unclaimed one-time keys one device may hold on Synapse.
const PER_DEVICE: usize = 500;

/// A 43-character unpadded base64 string standing in for a Curve25519 public key.
fn fake_key(i: usize) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(43);
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for _ in 0..43 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(alphabet[(x % 64) as usize] as char);
    }
    out
}

pub async fn e2ee_test(hs: &Arc<Hs>, a: &RunArgs, prefix: &str) -> Result<E2eeResult> {
    let keys = a.claim_keys.max(1);
    let conc = a.claim_concurrency.max(1);
    // Synapse refuses to hold more than 500 unclaimed one-time keys per device, so the keys are
    // spread over enough owners (claim i goes to owner i % owners, which holds exactly those).
    let owners_n = keys.div_ceil(PER_DEVICE);
    eprintln!("[{}] e2ee: uploading {keys} one-time keys over {owners_n} devices", a.name);
    let owners = register_many(hs, prefix, "keyowner", owners_n, a.setup_concurrency).await?;
    let mut targets = Vec::with_capacity(owners_n);
    for (j, owner) in owners.iter().enumerate() {
        let device = whoami_device(hs, &owner.token).await?;
        let otks: serde_json::Map<String, Value> = (j..keys)
            .step_by(owners_n)
            .map(|i| (format!("curve25519:K{i:07}"), json!(fake_key(i))))
            .collect();
        hs.call(Method::POST, "/_matrix/client/v3/keys/upload", Some(&owner.token), Some(&json!({ "one_time_keys": otks })))
            .await?;
        targets.push((owner.user_id.clone(), device));
    }
    let targets = Arc::new(targets);

    let claimers = Arc::new(register_many(hs, prefix, "claimer", conc, a.setup_concurrency).await?);
    let claimed: Arc<std::sync::Mutex<Vec<String>>> = Arc::new(std::sync::Mutex::new(Vec::with_capacity(keys)));
    eprintln!("[{}] e2ee: claiming with {conc} concurrent clients", a.name);
    let (seconds, mut latencies) = run_concurrent(keys, conc, {
        let hs = hs.clone();
        let claimers = claimers.clone();
        let claimed = claimed.clone();
        let targets = targets.clone();
        move |i| {
            let hs = hs.clone();
            let claimer = claimers[i % claimers.len()].clone();
            let claimed = claimed.clone();
            let (owner_id, owner_device) = targets[i % targets.len()].clone();
            let body = json!({ "one_time_keys": { owner_id.clone(): { owner_device.clone(): "curve25519" } } });
            async move {
                let response = hs.call(Method::POST, "/_matrix/client/v3/keys/claim", Some(&claimer.token), Some(&body)).await?;
                let key_ids: Vec<String> = response["one_time_keys"][&owner_id][&owner_device]
                    .as_object()
                    .map(|k| k.keys().cloned().collect())
                    .unwrap_or_default();
                if key_ids.len() != 1 {
                    return Err(format!("claim {i}: expected one key, got {response}"));
                }
                claimed.lock().map_err(|_| "lock poisoned".to_string())?.extend(key_ids);
                Ok(())
            }
        }
    })
    .await?;
    let claimed = claimed.lock().map_err(|_| "lock poisoned".to_string())?.clone();
    let distinct: HashSet<&String> = claimed.iter().collect();
    if distinct.len() != claimed.len() {
        return Err(format!("e2ee: {} duplicate one-time keys handed out", claimed.len() - distinct.len()));
    }
    latencies.sort_unstable();

    // To-device latency.
    let users = register_many(hs, prefix, "todevice", 2, a.setup_concurrency).await?;
    let (sender, receiver) = (users[0].clone(), users[1].clone());
    let receiver_device = whoami_device(hs, &receiver.token).await?;
    let filter = json!({ "room": { "rooms": [] }, "presence": { "types": [] }, "account_data": { "types": [] } });
    let filter_id = hs.upload_filter(&receiver, &filter).await?;
    let (v, _) = hs.sync(&receiver, None, Some(&filter_id), Some(0)).await?;
    let mut since = str_field(&v, "next_batch", "/sync")?;
    let samples = a.wake_samples.max(10);
    let mut to_device = Vec::with_capacity(samples);
    for i in 0..samples {
        let hs_poll = hs.clone();
        let receiver_poll = receiver.clone();
        let poll_since = since.clone();
        let poll_filter = filter_id.clone();
        let poll = tokio::spawn(async move {
            let result = hs_poll.sync(&receiver_poll, Some(&poll_since), Some(&poll_filter), Some(30_000)).await;
            (result, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(a.wake_settle_ms)).await;
        let path = format!("/_matrix/client/v3/sendToDevice/{}/{}", enc("org.example.ping"), enc(&format!("td-{i}")));
        let body = json!({ "messages": { receiver.user_id.clone(): { receiver_device.clone(): { "n": i } } } });
        // From issuing the send (the sync may return before the send's response arrives).
        let sent = Instant::now();
        hs.call(Method::PUT, &path, Some(&sender.token), Some(&body)).await?;
        let (result, received) = poll.await.map_err(|e| format!("task panicked: {e}"))?;
        let (v, _) = result?;
        since = str_field(&v, "next_batch", "/sync")?;
        let delivered = v["to_device"]["events"].as_array().is_some_and(|e| e.iter().any(|e| e["content"]["n"] == i));
        if !delivered {
            return Err(format!("e2ee: to-device message {i} not in the sync that woke: {v}"));
        }
        to_device.push(received.saturating_duration_since(sent).as_micros() as u64);
    }
    to_device.sort_unstable();

    let result = E2eeResult {
        claim_keys: keys,
        claim_concurrency: conc,
        claims_per_sec: round3(keys as f64 / seconds.max(1e-9)),
        claim_p50_ms: round3(pct_ms(&latencies, 50.0)),
        claim_p99_ms: round3(pct_ms(&latencies, 99.0)),
        to_device_samples: to_device.len(),
        to_device_p50_ms: round3(pct_ms(&to_device, 50.0)),
        to_device_p99_ms: round3(pct_ms(&to_device, 99.0)),
    };
    eprintln!(
        "[{}] e2ee: {:.0} claims/s (p50 {:.2} ms, p99 {:.2} ms, {} distinct keys); to-device p50 {:.3} ms, p99 {:.3} ms",
        a.name, result.claims_per_sec, result.claim_p50_ms, result.claim_p99_ms, distinct.len(), result.to_device_p50_ms, result.to_device_p99_ms
    );
    Ok(result)
}

async fn whoami_device(hs: &Hs, token: &str) -> Result<String> {
    let v = hs.call(Method::GET, "/_matrix/client/v3/account/whoami", Some(token), None).await?;
    str_field(&v, "device_id", "/account/whoami")
}
