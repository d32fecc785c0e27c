//! `POST /search` (issue 3): full-text search over room events. The search itself is
//! `crate::search::query`; this adds `include_state` and shapes the response.

use std::sync::Arc;

use ruma::api::client::search::search_events;
use serde_json::{Map, Value, json};

use super::membership::readable_group;
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    search::query,
    server::Server,
    sync::format,
};

pub async fn search(
    server: Arc<Server>,
    request: Ruma<search_events::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let device = request.owned_device().ok();
    let raw: Value = serde_json::from_slice(&request.json).unwrap_or_default();
    let categories = &raw["search_categories"];
    let Some(criteria) = request.body.search_categories.room_events.clone() else {
        let unknown = categories
            .as_object()
            .and_then(|c| c.keys().next().cloned());
        return match unknown {
            Some(name) => Err(Error::bad_json(format!(
                "Unknown search category {name:?}; only room_events is supported"
            ))),
            None => Ok(json!({ "search_categories": {} })),
        };
    };
    let with_context = categories["room_events"].get("event_context").is_some();
    let include_state = criteria.include_state == Some(true);
    let next_batch = request.body.next_batch.clone();
    let worker = server.clone();
    let searcher = user.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        query::room_events(
            &worker,
            &searcher,
            device.as_deref(),
            &criteria,
            next_batch.as_deref(),
            with_context,
        )
    })
    .await
    .map_err(Error::internal)??;
    let mut body = outcome.body;
    if include_state {
        let mut state = Map::new();
        for room_id in &outcome.rooms {
            let Ok(group) = readable_group(&server, room_id, &user) else {
                continue;
            };
            let map = server.rooms.load_state(&server.maps, group)?;
            let mut events = Vec::new();
            for event in server.rooms.state_events(&server.maps, &map)? {
                let meta = server.rooms.event_meta(&server.maps, &event.event_id)?;
                events.push(format::client_event(
                    &server,
                    &event,
                    meta.as_deref(),
                    request.device().ok(),
                    true,
                )?);
            }
            state.insert(room_id.to_string(), Value::Array(events));
        }
        body.insert("state".into(), Value::Object(state));
    }
    Ok(json!({ "search_categories": { "room_events": body } }))
}
