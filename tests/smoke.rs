//! The server starts with a config file, answers discovery and serves a message round trip.

mod common;

use common::{TestServer, timeline};
use serde_json::json;

#[tokio::test]
async fn register_create_send_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({ "name": "Smoke" })).await;
    let event_id = server.send_text(&alice, &room, "hello").await;
    let sync = server.sync(&alice, "").await;
    let events = timeline(&sync, &room);
    assert!(
        events
            .iter()
            .any(|e| e["event_id"] == event_id.as_str() && e["content"]["body"] == "hello"),
        "{sync}"
    );
}
