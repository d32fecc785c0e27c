//! To-device messages through HTTP: idempotent sends, order, acknowledgement by the next sync
//! token, large backlogs paginated across syncs, `*` for all devices, wake-ups.

mod common;
#[path = "e2ee_helpers/mod.rs"]
mod eh;

use std::time::{Duration, Instant};

use common::{TestServer, User, assert_error, enc};
use eh::V3;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn send(server: &TestServer, from: &User, txn: &str, messages: Value) -> (StatusCode, Value) {
    server
        .put(
            &format!("{V3}/sendToDevice/org.example.test/{}", enc(txn)),
            &from.token,
            json!({ "messages": messages }),
        )
        .await
}

async fn send_one(server: &TestServer, from: &User, to: &User, txn: &str, n: u64) {
    let (status, body) = send(
        server,
        from,
        txn,
        json!({ &to.user_id: { &to.device_id: { "n": n } } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "sendToDevice: {body}");
}

fn numbers(sync: &Value) -> Vec<u64> {
    sync["to_device"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["n"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn messages_are_delivered_once_in_order_and_kept_until_acknowledged() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let first = server.sync(&bob, "timeout=0").await;
    let token = eh::next_batch(&first);

    send_one(&server, &alice, &bob, "t1", 1).await;
    send_one(&server, &alice, &bob, "t2", 2).await;
    // The same transaction again is a no-op.
    send_one(&server, &alice, &bob, "t1", 99).await;
    send_one(&server, &alice, &bob, "t3", 3).await;

    let sync = server.sync(&bob, &format!("since={token}&timeout=0")).await;
    assert_eq!(numbers(&sync), vec![1, 2, 3], "{sync}");
    let event = &sync["to_device"]["events"][0];
    assert_eq!(event["type"], "org.example.test");
    assert_eq!(event["sender"], alice.user_id.as_str());
    // The response was lost: the same token gets the same messages again.
    let again = server.sync(&bob, &format!("since={token}&timeout=0")).await;
    assert_eq!(numbers(&again), vec![1, 2, 3]);
    // The next token acknowledges them: gone for good.
    let next = eh::next_batch(&again);
    let sync = server.sync(&bob, &format!("since={next}&timeout=0")).await;
    assert!(numbers(&sync).is_empty(), "{sync}");
    let sync = server.sync(&bob, &format!("since={token}&timeout=0")).await;
    assert!(
        numbers(&sync).is_empty(),
        "acknowledged ones are deleted: {sync}"
    );

    // Another device of the same sender reusing the transaction id is another transaction.
    let alice2 = eh::login(&server, &alice, None).await;
    send_one(&server, &alice2, &bob, "t1", 4).await;
    let sync = server.sync(&bob, &format!("since={next}&timeout=0")).await;
    assert_eq!(numbers(&sync), vec![4]);
}

#[tokio::test]
async fn star_reaches_every_device_and_a_long_poll_wakes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob2 = eh::login(&server, &bob, None).await;
    let token1 = eh::next_batch(&server.sync(&bob, "timeout=0").await);
    let token2 = eh::next_batch(&server.sync(&bob2, "timeout=0").await);

    let started = Instant::now();
    let poll = {
        let base = server.base.clone();
        let token = bob2.token.clone();
        let since = token2.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!(
                    "{base}{V3}/sync?since={}&timeout=20000",
                    enc(&since)
                ))
                .bearer_auth(token)
                .send()
                .await
                .expect("sync")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = send(
        &server,
        &alice,
        "all",
        json!({ &bob.user_id: { "*": { "n": 7 } } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll returns")
        .expect("task");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(numbers(&sync), vec![7], "{sync}");
    let sync = server
        .sync(&bob, &format!("since={token1}&timeout=0"))
        .await;
    assert_eq!(numbers(&sync), vec![7], "{sync}");

    // Unknown devices and users, and remote users (no federation yet), are skipped.
    let (status, body) = send(
        &server,
        &alice,
        "mixed",
        json!({
            &bob.user_id: { "NOSUCHDEVICE": { "n": 8 }, &bob.device_id: { "n": 9 } },
            "@nobody:localhost": { "*": { "n": 10 } },
            "@remote:remote.example": { "*": { "n": 11 } },
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = server
        .sync(&bob, &format!("since={}&timeout=0", eh::next_batch(&sync)))
        .await;
    assert_eq!(numbers(&sync), vec![9]);

    // Contents must be objects.
    let result = send(
        &server,
        &alice,
        "bad",
        json!({ &bob.user_id: { "*": "text" } }),
    )
    .await;
    assert_error(&result, 400, "M_BAD_JSON");
    let result = server
        .put(
            &format!("{V3}/sendToDevice/org.example.test/bad2"),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(result.0.as_u16(), 400, "{}", result.1);
}

#[tokio::test]
async fn a_large_backlog_is_paginated_across_syncs_and_nothing_is_lost() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut token = eh::next_batch(&server.sync(&bob, "timeout=0").await);
    let total = 250u64;
    for n in 0..total {
        send_one(&server, &alice, &bob, &format!("b{n}"), n).await;
    }
    let mut received = Vec::new();
    let mut batches = 0;
    loop {
        let started = Instant::now();
        // A long timeout: a sync with messages waiting must not wait.
        let sync = server
            .sync(&bob, &format!("since={}&timeout=5000", enc(&token)))
            .await;
        let got = numbers(&sync);
        if got.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "returned at once with messages"
        );
        assert!(got.len() <= 100, "at most 100 per sync");
        batches += 1;
        // Replaying a partial batch's token delivers the same batch (not acknowledged yet).
        if batches == 1 {
            let replay = server
                .sync(&bob, &format!("since={}&timeout=0", enc(&token)))
                .await;
            assert_eq!(numbers(&replay), got);
        }
        received.extend(got);
        token = eh::next_batch(&sync);
    }
    assert_eq!(received, (0..total).collect::<Vec<_>>());
    assert_eq!(batches, 3);

    // The device's inbox goes with the device: a device logging in again with the same id
    // finds it empty.
    send_one(&server, &alice, &bob, "gone", 1000).await;
    let device = bob.device_id.clone();
    eh::delete_device(&server, &bob, &device).await;
    let bob_again = eh::login(&server, &bob, Some(&device)).await;
    assert_eq!(bob_again.device_id, device);
    let sync = server.sync(&bob_again, "timeout=0").await;
    assert!(numbers(&sync).is_empty(), "{sync}");
}
