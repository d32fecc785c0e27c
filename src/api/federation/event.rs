//! Reading a room's history over federation, for servers in the room: one event, the state at
//! an event (full or ids), and the events between two points (`get_missing_events`). Events
//! from history the server may not see (history visibility) are served redacted.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    RoomId, ServerName,
    api::federation::event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
};
use serde_json::{Value, json};

use super::membership::state_and_auth_chain;
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::visibility::ServerView,
    server::Server,
};

/// The origin must have a member in the room (and the room's ACL allow it).
fn check_in_room(server: &Server, room_id: &RoomId, origin: &ServerName) -> Result<()> {
    if let Some(reason) = crate::federation::acl::denies(server, room_id, origin)? {
        return Err(Error::forbidden(reason));
    }
    let servers = server.federation.sender.servers_in_room(server, room_id)?;
    if !servers.iter().any(|s| s == origin) {
        return Err(Error::forbidden("Your server has no member in this room"));
    }
    Ok(())
}

pub async fn event(server: Arc<Server>, request: Ruma<get_event::v1::Request>) -> Result<Value> {
    let origin = request.origin()?;
    let pdu = server
        .rooms
        .pdu(&server.maps, &request.body.event_id)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    check_in_room(&server, &pdu.room_id, origin)?;
    let mut view = ServerView::new(&server, origin);
    Ok(json!({
        "origin": server.server_name(),
        "origin_server_ts": crate::users::now_ms(),
        "pdus": [view.federation_value(&pdu)?],
    }))
}

/// The state group before `event_id` (in `room_id`).
fn group_before(server: &Server, room_id: &RoomId, event_id: &ruma::EventId) -> Result<u64> {
    let meta = server
        .rooms
        .event_meta(&server.maps, event_id)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if meta.room_id != room_id {
        return Err(Error::not_found("Event not in that room"));
    }
    Ok(meta.state_before)
}

pub async fn state(
    server: Arc<Server>,
    request: Ruma<get_room_state::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    check_in_room(&server, &body.room_id, origin)?;
    let group = group_before(&server, &body.room_id, &body.event_id)?;
    let (pdus, auth_chain) = state_and_auth_chain(&server, group)?;
    Ok(json!({ "pdus": pdus, "auth_chain": auth_chain }))
}

pub async fn state_ids(
    server: Arc<Server>,
    request: Ruma<get_room_state_ids::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    check_in_room(&server, &body.room_id, origin)?;
    let group = group_before(&server, &body.room_id, &body.event_id)?;
    let (pdus, auth_chain) = state_and_auth_chain(&server, group)?;
    let id_of = |pdus: Vec<Value>| -> Vec<Value> {
        pdus.iter()
            .filter_map(|p| {
                let object: ruma::CanonicalJsonObject = serde_json::from_value(p.clone()).ok()?;
                let version = server.rooms.version(&server.maps, &body.room_id).ok()?;
                let rules = crate::rooms::version::rules(&version).ok()?;
                let id = ruma::signatures::reference_hash(&object, &rules).ok()?;
                Some(Value::String(format!("${id}")))
            })
            .collect()
    };
    Ok(json!({ "pdu_ids": id_of(pdus), "auth_chain_ids": id_of(auth_chain) }))
}

pub async fn missing_events(
    server: Arc<Server>,
    request: Ruma<get_missing_events::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    check_in_room(&server, &body.room_id, origin)?;
    let limit = usize::try_from(u64::from(body.limit))
        .unwrap_or(10)
        .min(100);
    let min_depth = u64::from(body.min_depth);
    let earliest: HashSet<_> = body.earliest_events.iter().cloned().collect();
    let mut seen: HashSet<_> = body.latest_events.iter().cloned().collect();
    let mut queue: VecDeque<_> = body.latest_events.iter().cloned().collect();
    let mut found = Vec::new();
    // Breadth-first back through prev_events from the latest, up to the earliest.
    while let Some(id) = queue.pop_front() {
        let Some(pdu) = server.rooms.pdu(&server.maps, &id)? else {
            continue;
        };
        if pdu.room_id != body.room_id {
            continue;
        }
        for prev in &pdu.prev_events {
            if earliest.contains(prev) || !seen.insert(prev.clone()) {
                continue;
            }
            if let Some(prev_pdu) = server.rooms.pdu(&server.maps, prev)?
                && prev_pdu.depth >= min_depth
            {
                found.push(prev_pdu.clone());
                queue.push_back(prev.clone());
            }
            if found.len() >= limit {
                break;
            }
        }
        if found.len() >= limit {
            break;
        }
    }
    found.sort_by_key(|p| p.depth);
    let mut view = ServerView::new(&server, origin);
    let events = found
        .iter()
        .map(|p| view.federation_value(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({ "events": events }))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=..&limit=..`: the events before (and
/// including) `v`, newest first, walking `prev_events`.
pub async fn backfill(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::backfill::get_backfill::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    check_in_room(&server, &body.room_id, origin)?;
    let limit = usize::try_from(u64::from(body.limit))
        .unwrap_or(10)
        .min(100);
    let mut seen: HashSet<_> = body.v.iter().cloned().collect();
    let mut queue: VecDeque<_> = body.v.iter().cloned().collect();
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        if found.len() >= limit {
            break;
        }
        let Some(pdu) = server.rooms.pdu(&server.maps, &id)? else {
            continue;
        };
        if pdu.room_id != body.room_id {
            continue;
        }
        for prev in &pdu.prev_events {
            if seen.insert(prev.clone()) {
                queue.push_back(prev.clone());
            }
        }
        found.push(pdu);
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.depth));
    let mut view = ServerView::new(&server, origin);
    let pdus = found
        .iter()
        .map(|p| view.federation_value(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "origin": server.server_name(),
        "origin_server_ts": crate::users::now_ms(),
        "pdus": pdus,
    }))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`: the event's full auth chain.
pub async fn event_auth(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::authorization::get_event_authorization::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    check_in_room(&server, &body.room_id, origin)?;
    let pdu = server
        .rooms
        .pdu(&server.maps, &body.event_id)?
        .filter(|p| p.room_id == body.room_id)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let chain = crate::rooms::resolve::auth_chain(&server, std::slice::from_ref(&pdu.event_id))?;
    let mut events = Vec::with_capacity(chain.len());
    for id in chain {
        if let Some(event) = server.rooms.pdu(&server.maps, &id)? {
            events.push(event.to_federation_value());
        }
    }
    Ok(json!({ "auth_chain": events }))
}
