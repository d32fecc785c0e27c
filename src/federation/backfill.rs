//! Backfill: history from before we joined a room (or from while nobody of ours was in it).
//! When a client's `/messages` reaches the start of what we hold, a server in the room is
//! asked for the events before it (`GET /backfill`). Each is checked like any PDU (signatures
//! and hash, its auth events, the state before it) and placed in the timeline *below* every
//! event shown so far (see [`crate::sync::stream::LIVE_BASE`]), without touching the current
//! state, memberships, notifications or sync.
//!
//! The state before the oldest fetched events (whose parents we do not hold) comes from the
//! same server's `/state_ids`; the events it names that we lack are fetched as outliers.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId, ServerName,
    events::TimelineEventType, room_version_rules::RoomVersionRules,
};

use super::{inbound, outlier};
use crate::{
    error::{Error, Result},
    rooms::{pdu::Pdu, timeline},
    server::Server,
};

/// Events asked for per backfill request.
const LIMIT: usize = 50;
/// Servers tried in turn before giving up on this round.
const MAX_SERVERS: usize = 3;

/// Fetches history before the room's earliest event we hold. Returns how many events were
/// added to the timeline (0 when the room's history is complete or nobody could answer).
pub async fn backfill(server: &Arc<Server>, room_id: &RoomId) -> Result<usize> {
    if !super::enabled(server) {
        return Ok(0);
    }
    let maps = &server.maps;
    let Some((_, earliest)) = server
        .rooms
        .timeline_asc(maps, room_id, 0, u64::MAX, 1)?
        .into_iter()
        .next()
    else {
        return Ok(0);
    };
    if earliest.kind == TimelineEventType::RoomCreate {
        return Ok(0);
    }
    let version = server.rooms.version(maps, room_id)?;
    let rules = crate::rooms::version::rules(&version)?;
    for origin in candidates(server, room_id, &earliest)? {
        match from_server(server, &rules, room_id, &earliest.event_id, &origin).await {
            Ok(added) => return Ok(added),
            Err(error) => tracing::info!(%origin, %room_id, %error, "backfill failed"),
        }
    }
    Ok(0)
}

/// Servers that may hold the history: those of the room's members, the earliest event's
/// sender's first.
fn candidates(server: &Server, room_id: &RoomId, earliest: &Pdu) -> Result<Vec<OwnedServerName>> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    if !server.is_local(earliest.sender.server_name()) {
        out.push(earliest.sender.server_name().to_owned());
    }
    for name in server
        .federation
        .sender
        .servers_in_room(server, room_id)?
        .iter()
    {
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    out.truncate(MAX_SERVERS);
    Ok(out)
}

async fn from_server(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    from: &EventId,
    origin: &ServerName,
) -> Result<usize> {
    let maps = &server.maps;
    let path = format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit={LIMIT}",
        super::encode(room_id.as_str()),
        super::encode(from.as_str()),
    );
    let answer = server
        .federation
        .client
        .send(server, origin, http::Method::GET, &path, None)
        .await?;
    let mut pdus = Vec::new();
    for value in answer["pdus"]
        .as_array()
        .into_iter()
        .flatten()
        .take(LIMIT * 2)
    {
        let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(value.clone()) else {
            continue;
        };
        match outlier::checked(server, rules, room_id, object).await {
            Ok(pdu) if server.rooms.event_meta(maps, &pdu.event_id)?.is_none() => pdus.push(pdu),
            Ok(_) => {}
            Err(error) => tracing::info!(%origin, %error, "backfilled event refused"),
        }
    }
    if pdus.is_empty() {
        return Ok(0);
    }
    pdus.sort_by_key(|p| p.depth);
    let batch: HashSet<OwnedEventId> = pdus.iter().map(|p| p.event_id.clone()).collect();

    // What the checks need that we lack: auth events, and the state before the oldest events.
    let mut frontier = Vec::new();
    for pdu in &pdus {
        let missing_auth: Vec<OwnedEventId> = pdu
            .auth_events
            .iter()
            .filter(|id| !batch.contains(*id))
            .cloned()
            .collect();
        outlier::fetch(server, rules, room_id, origin, &missing_auth).await?;
        let parents_known = pdu
            .prev_events
            .iter()
            .all(|p| batch.contains(p) || matches!(server.rooms.event_meta(maps, p), Ok(Some(_))));
        if !parents_known {
            frontier.push((
                pdu.event_id.clone(),
                state_ids(server, rules, room_id, origin, &pdu.event_id).await?,
            ));
        }
    }

    // Newest gets the highest position: the timeline reads oldest to newest upwards.
    let positions = server
        .stream
        .backfill_positions(&server.db, maps, pdus.len() as u64)?;
    let _lock = server.rooms.lock(room_id).await;
    let mut added = 0;
    for (pdu, position) in pdus.into_iter().zip(positions.into_iter().rev()) {
        if server.rooms.event_meta(maps, &pdu.event_id)?.is_some() {
            continue;
        }
        let event_id = pdu.event_id.clone();
        let state_ids = frontier
            .iter()
            .find(|(id, _)| *id == event_id)
            .map(|(_, ids)| ids);
        match place(server, rules, pdu, state_ids, position) {
            Ok(()) => added += 1,
            Err(error) => tracing::info!(%event_id, %error, "backfilled event not placed"),
        }
    }
    tracing::debug!(%room_id, %origin, added, "backfilled");
    Ok(added)
}

/// Checks one backfilled event against its auth events and the state before it, and stores it
/// at `position`. Rejections are recorded as for any PDU.
fn place(
    server: &Server,
    rules: &RoomVersionRules,
    pdu: Pdu,
    state_ids: Option<&Vec<OwnedEventId>>,
    position: u64,
) -> Result<()> {
    let maps = &server.maps;
    let reject = |reason: String| {
        let _ = maps
            .eventid_rejected
            .put(&server.db, pdu.event_id.as_bytes(), reason.as_bytes());
        Error::forbidden(reason)
    };
    inbound::check_against_auth_events(server, rules, &pdu)
        .map_err(|reason| reject(format!("Not allowed by its auth events: {reason}")))?;
    let known_state = match state_ids {
        Some(ids) => {
            let events: Vec<_> = ids
                .iter()
                .filter_map(|id| server.rooms.pdu(maps, id).ok().flatten())
                .collect();
            let refs: Vec<&Pdu> = events.iter().map(|p| &**p).collect();
            Some(outlier::state_map(server, &refs)?)
        }
        // The create event: nothing before it.
        None if pdu.prev_events.is_empty() => Some(Default::default()),
        None => None,
    };
    let (group, state) = match known_state {
        Some(map) => {
            let mut batch = server.db.batch();
            let stored = server.rooms.state.store_full(maps, &mut batch, map);
            server.db.commit(batch)?;
            stored
        }
        None => inbound::state_before(server, rules, &pdu)?,
    };
    timeline::authorize(server, rules, &pdu, &state).map_err(|e| reject(e.message.to_string()))?;
    timeline::persist_historic(server, pdu, group, &state, Some(position))
}

/// The state before `event_id` as `origin` has it (event ids), with the events we lack
/// fetched as outliers.
async fn state_ids(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    origin: &ServerName,
    event_id: &EventId,
) -> Result<Vec<OwnedEventId>> {
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        super::encode(room_id.as_str()),
        super::encode(event_id.as_str()),
    );
    let answer = server
        .federation
        .client
        .send(server, origin, http::Method::GET, &path, None)
        .await?;
    let ids = |field: &str| -> Vec<OwnedEventId> {
        answer[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .filter_map(|s| OwnedEventId::try_from(s).ok())
            .collect()
    };
    let state = ids("pdu_ids");
    let mut wanted = ids("auth_chain_ids");
    wanted.extend(state.iter().cloned());
    outlier::fetch(server, rules, room_id, origin, &wanted).await?;
    Ok(state)
}
