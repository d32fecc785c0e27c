//! Outliers: events we hold without a place in the timeline — the state and auth chain a
//! remote join brings, auth events an incoming PDU names that we lack, the state at the start
//! of backfilled history. Fetched by id from a server in the room, checked (signatures, hash,
//! own auth events) and stored; and state maps built from them.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, RoomId, ServerName, events::StateEventType,
    room_version_rules::RoomVersionRules, state_res,
};

use super::inbound;
use crate::{
    error::{Error, Result},
    rooms::{pdu::Pdu, state::StateMap},
    server::Server,
};

/// At most this many events are fetched by id for one missing-events question.
const MAX_FETCH: usize = 500;
/// Fetches by id at once.
const CONCURRENCY: usize = 8;

/// Stores a checked event without a timeline position (kept when it is already there).
pub fn store(server: &Server, pdu: &Pdu) -> Result<()> {
    let mut batch = server.db.batch();
    stage(server, &mut batch, pdu)?;
    server.db.commit(batch)
}

/// As [`store`], into `batch` (with whatever else the caller writes alongside).
pub fn stage(server: &Server, batch: &mut crate::storage::Batch, pdu: &Pdu) -> Result<()> {
    let maps = &server.maps;
    server
        .rooms
        .state
        .event_short_or_intern(maps, batch, &pdu.event_id)?;
    batch.put(
        &maps.eventid_pdu,
        pdu.event_id.as_bytes(),
        serde_json::to_vec(&pdu.json)?,
    );
    Ok(())
}

/// Verifies a PDU from another server for `room_id`: id, signatures and hash (a mismatch
/// leaves it redacted), format.
pub async fn checked(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    object: CanonicalJsonObject,
) -> Result<Pdu> {
    let event_id = super::protocol::pdu::event_id(&object, rules)
        .map_err(|e| Error::bad_json(e.to_string()))?;
    let object = inbound::verify_signatures(server, rules, object).await?;
    let pdu = Pdu::from_json(event_id, object)?;
    if pdu.room_id != room_id {
        return Err(Error::forbidden("An event of another room"));
    }
    state_res::check_pdu_format(&pdu.json, &rules.event_format)
        .map_err(|e| Error::forbidden(format!("Bad PDU format: {e}")))?;
    Ok(pdu)
}

/// Fetches the events of `ids` we do not hold from `origin`, checks each against its own
/// auth events (oldest first, so auth events come before the events they authorise) and
/// stores those that pass. Events that fail or cannot be fetched are left out (logged).
pub async fn fetch(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    origin: &ServerName,
    ids: &[OwnedEventId],
) -> Result<()> {
    let maps = &server.maps;
    let mut wanted = Vec::new();
    for id in ids {
        if server.rooms.pdu(maps, id)?.is_none() && !wanted.contains(id) {
            wanted.push(id.clone());
        }
    }
    if wanted.len() > MAX_FETCH {
        return Err(super::remote_error(
            origin,
            format_args!(
                "{} events missing; too many to fetch one by one",
                wanted.len()
            ),
        ));
    }
    let mut fetched = Vec::new();
    for part in wanted.chunks(CONCURRENCY) {
        let answers = futures::future::join_all(
            part.iter()
                .map(|id| fetch_one(server, rules, room_id, origin, id)),
        )
        .await;
        for (id, answer) in part.iter().zip(answers) {
            match answer {
                Ok(pdu) => fetched.push(pdu),
                Err(error) => tracing::info!(%origin, event_id = %id, %error, "cannot fetch"),
            }
        }
    }
    fetched.sort_by_key(|p| p.depth);
    for pdu in fetched {
        match inbound::check_against_auth_events(server, rules, &pdu) {
            Ok(()) => store(server, &pdu)?,
            Err(reason) => {
                tracing::info!(event_id = %pdu.event_id, reason, "fetched event not authorised");
            }
        }
    }
    Ok(())
}

async fn fetch_one(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    origin: &ServerName,
    id: &EventId,
) -> Result<Pdu> {
    let path = format!(
        "/_matrix/federation/v1/event/{}",
        super::encode(id.as_str())
    );
    let answer = server
        .federation
        .client
        .send(server, origin, http::Method::GET, &path, None)
        .await?;
    let object: CanonicalJsonObject = answer["pdus"]
        .get(0)
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| super::remote_error(origin, e))?
        .ok_or_else(|| super::remote_error(origin, "no PDU in the answer"))?;
    let pdu = checked(server, rules, room_id, object).await?;
    if pdu.event_id != id {
        return Err(super::remote_error(origin, "answered with another event"));
    }
    Ok(pdu)
}

/// The state map of `events` (stored events; those without a state key are ignored).
pub fn state_map(server: &Server, events: &[&Pdu]) -> Result<StateMap> {
    let maps = &server.maps;
    let state_events: Vec<&Pdu> = events
        .iter()
        .copied()
        .filter(|p| p.state_key.is_some())
        .collect();
    let keys: Vec<(StateEventType, String)> = state_events
        .iter()
        .map(|p| {
            (
                StateEventType::from(p.kind.to_string()),
                p.state_key.clone().unwrap_or_default(),
            )
        })
        .collect();
    let shorts = server
        .rooms
        .state
        .intern_statekeys(&server.db, maps, &keys)?;
    let mut state = StateMap::default();
    for (pdu, key) in state_events.iter().zip(shorts) {
        if let Some(short) = server.rooms.state.event_short(maps, &pdu.event_id)? {
            state.insert(key, short);
        }
    }
    Ok(state)
}
