//! PDUs received from other servers, checked in the spec's order ("Checks performed on receipt
//! of a PDU") before they may enter a room:
//!
//! 1. well-formed, at most 64 KiB ([`protocol::pdu::parse`]);
//! 2. signed by the servers its room version requires; content hash matches, else it is kept
//!    only redacted;
//! 3. passes the authorization rules against its own `auth_events`;
//! 4. passes them against the state before it (resolved over its `prev_events`);
//! 5. passes them against the room's current state, else it is *soft-failed*: stored so later
//!    events may build on it, but not shown to clients, not in the current state and not a
//!    forward extremity (so our events do not build on it).
//!
//! Missing `prev_events` are fetched from the origin (`get_missing_events`) first, missing
//! auth events by id (as outliers). Failures are recorded (`eventid_rejected`) and never enter
//! state.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, ServerName,
    events::StateEventType, room_version_rules::RoomVersionRules, signatures::PublicKeyMap,
    state_res,
};
use serde_json::{Value, json, value::RawValue};

use super::protocol;
use crate::{
    error::{Error, Result},
    rooms::{
        pdu::{Pdu, PduRef},
        state::StateMap,
        timeline,
    },
    server::Server,
};

/// How deep `get_missing_events` recursion may go for one incoming PDU.
const MAX_FETCH_DEPTH: u32 = 3;

/// Handles one PDU of a transaction. Returns its event id (when it could be computed) and the
/// outcome.
pub async fn handle_pdu(
    server: &Arc<Server>,
    origin: &ServerName,
    raw: &RawValue,
) -> (Option<OwnedEventId>, Result<()>) {
    let object = match protocol::pdu::parse(raw) {
        Ok(object) => object,
        Err(e) => return (None, Err(Error::bad_json(e.to_string()))),
    };
    handle_object(server, origin, object, 0).await
}

/// As [`handle_pdu`] for an already parsed PDU; `depth` counts missing-event fetches.
pub async fn handle_object(
    server: &Arc<Server>,
    origin: &ServerName,
    object: CanonicalJsonObject,
    depth: u32,
) -> (Option<OwnedEventId>, Result<()>) {
    let room_id = match object.get("room_id") {
        Some(CanonicalJsonValue::String(id)) => match ruma::OwnedRoomId::try_from(id.as_str()) {
            Ok(id) => id,
            Err(e) => return (None, Err(Error::bad_json(format!("room_id: {e}")))),
        },
        _ => return (None, Err(Error::bad_json("room_id missing"))),
    };
    let rules = match room_rules(server, &room_id) {
        Ok(rules) => rules,
        Err(e) => return (None, Err(e)),
    };
    let event_id = match protocol::pdu::event_id(&object, &rules) {
        Ok(id) => id,
        Err(e) => return (None, Err(Error::bad_json(e.to_string()))),
    };
    let outcome = accept(server, origin, &room_id, &rules, &event_id, object, depth).await;
    if let Err(error) = &outcome
        && error.errcode == "M_FORBIDDEN"
    {
        let _ = server.maps.eventid_rejected.put(
            &server.db,
            event_id.as_bytes(),
            error.message.as_bytes(),
        );
    }
    (Some(event_id), outcome)
}

/// The rules of a room we know (we must be in it to take its events).
fn room_rules(server: &Server, room_id: &RoomId) -> Result<RoomVersionRules> {
    if !server.rooms.exists(&server.maps, room_id)? {
        return Err(Error::not_found(format!("Unknown room {room_id}")));
    }
    let version = server.rooms.version(&server.maps, room_id)?;
    crate::rooms::version::rules(&version)
}

async fn accept(
    server: &Arc<Server>,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    event_id: &EventId,
    object: CanonicalJsonObject,
    depth: u32,
) -> Result<()> {
    let maps = &server.maps;
    if server.rooms.pdu(maps, event_id)?.is_some() {
        return Ok(());
    }
    if let Some(reason) = maps.eventid_rejected.get(event_id.as_bytes())? {
        return Err(Error::forbidden(format!(
            "Rejected earlier: {}",
            String::from_utf8_lossy(&reason)
        )));
    }
    if let Some(acl) = crate::federation::acl::denies(server, room_id, origin)? {
        return Err(Error::forbidden(acl));
    }

    // Signatures and content hash.
    let object = verify_signatures(server, rules, object).await?;
    let pdu = Pdu::from_json(event_id.to_owned(), object)?;
    if pdu.room_id != room_id {
        return Err(Error::forbidden("room_id changed"));
    }
    state_res::check_pdu_format(&pdu.json, &rules.event_format)
        .map_err(|e| Error::forbidden(format!("Bad PDU format: {e}")))?;

    // Everything it builds on must be here first.
    let missing: Vec<OwnedEventId> = pdu
        .prev_events
        .iter()
        .filter(|id| !matches!(server.rooms.pdu(maps, id), Ok(Some(_))))
        .cloned()
        .collect();
    if !missing.is_empty() {
        if depth >= MAX_FETCH_DEPTH {
            return Err(Error::not_found("Missing prev_events"));
        }
        fetch_missing(server, origin, room_id, event_id, depth).await;
        if pdu
            .prev_events
            .iter()
            .any(|id| !matches!(server.rooms.pdu(maps, id), Ok(Some(_))))
        {
            return Err(Error::not_found("Missing prev_events (not fetched)"));
        }
    }
    let missing_auth: Vec<OwnedEventId> = pdu
        .auth_events
        .iter()
        .filter(|id| !matches!(server.rooms.pdu(maps, id), Ok(Some(_))))
        .cloned()
        .collect();
    if !missing_auth.is_empty() {
        super::outlier::fetch(server, rules, room_id, origin, &missing_auth).await?;
    }
    for auth in &pdu.auth_events {
        if server.rooms.pdu(maps, auth)?.is_none() {
            return Err(Error::not_found(format!("Missing auth event {auth}")));
        }
    }

    let _lock = server.rooms.lock(room_id).await;
    if server.rooms.pdu(maps, event_id)?.is_some() {
        return Ok(());
    }
    authorize_by_auth_events(server, rules, &pdu)?;
    let (group_before, state_before) = state_before(server, rules, &pdu)?;
    timeline::authorize(server, rules, &pdu, &state_before)?;
    if let Some(reason) = soft_failure(server, rules, &pdu, group_before)? {
        tracing::info!(%event_id, %origin, reason, "soft-failed PDU");
        return timeline::persist_historic(server, pdu, group_before, &state_before, None);
    }
    let persisted = timeline::persist(server, rules, pdu, group_before, &state_before, None)?;
    settle_current_state(server, rules, room_id)?;
    tracing::debug!(event_id = %persisted.event_id, %origin, "accepted PDU");
    Ok(())
}

/// Step 5: why the event is not allowed by the room's current state, if it is not (only
/// asked when the state before it differs from the current one).
fn soft_failure(
    server: &Server,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    group_before: u64,
) -> Result<Option<String>> {
    let current = server.rooms.current_group(&server.maps, &pdu.room_id)?;
    if current == group_before {
        return Ok(None);
    }
    let state = server.rooms.load_state(&server.maps, current)?;
    Ok(timeline::authorize(server, rules, pdu, &state)
        .err()
        .map(|e| e.message.to_string()))
}

/// Checks the signatures the room version requires (fetching the signers' keys); a content
/// hash mismatch leaves only the redacted event.
pub(super) async fn verify_signatures(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    object: CanonicalJsonObject,
) -> Result<CanonicalJsonObject> {
    let signers = protocol::pdu::required_signers(&object, rules)
        .map_err(|e| Error::forbidden(e.to_string()))?;
    let mut keys = PublicKeyMap::new();
    for signer in signers {
        let cached = server
            .federation
            .keys
            .get(server, &signer)
            .await
            .map_err(|e| Error::forbidden(format!("No keys for {signer}: {}", e.message)))?;
        keys.insert(signer.to_string(), cached.keys.public_key_set());
    }
    match protocol::pdu::verify(&object, rules, &keys) {
        Ok(protocol::pdu::Integrity::Intact) => Ok(object),
        Ok(protocol::pdu::Integrity::Redact) => {
            ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(|e| Error::forbidden(format!("Cannot redact: {e}")))
        }
        Err(e) => Err(Error::forbidden(e.to_string())),
    }
}

/// Step 3: the event must be allowed by its own auth events.
fn authorize_by_auth_events(server: &Server, rules: &RoomVersionRules, pdu: &Pdu) -> Result<()> {
    check_against_auth_events(server, rules, pdu)
        .map_err(|reason| Error::forbidden(format!("Not allowed by its auth events: {reason}")))
}

/// The authorization rules applied with the event's own auth events as the state (plus the
/// create event, implied by the room id since room version 12). Also used for the state a
/// remote join brings. Returns why it is not allowed.
pub(super) fn check_against_auth_events(
    server: &Server,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> std::result::Result<(), String> {
    let maps = &server.maps;
    let create = server
        .rooms
        .meta(maps, &pdu.room_id)
        .map_err(|e| e.message.to_string())?
        .map(|meta| meta.create_event_id.clone());
    check_against_auth_events_in(rules, pdu, create.as_deref(), |id| {
        server.rooms.pdu(maps, id).ok().flatten()
    })
}

/// As [`check_against_auth_events`], with the events taken from `lookup` (e.g. a room's
/// state in hand) and the room's create event id given.
pub(super) fn check_against_auth_events_in(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    create: Option<&EventId>,
    lookup: impl Fn(&EventId) -> Option<PduRef>,
) -> std::result::Result<(), String> {
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, &lookup)
        .map_err(|reason| reason.to_string())?;
    let mut auth: Vec<_> = pdu.auth_events.iter().filter_map(|id| lookup(id)).collect();
    if let Some(create) = create
        && !pdu.auth_events.iter().any(|id| id == create)
        && let Some(create) = lookup(create)
    {
        auth.push(create);
    }
    let fetch_state = |kind: &StateEventType, state_key: &str| {
        auth.iter()
            .find(|a| {
                a.kind.to_string() == kind.to_string() && a.state_key.as_deref() == Some(state_key)
            })
            .cloned()
    };
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(|reason| reason.to_string())
}

/// The state before the event: after its one prev event, or resolved over several.
pub(super) fn state_before(
    server: &Server,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> Result<(u64, Arc<StateMap>)> {
    let maps = &server.maps;
    let mut groups = Vec::new();
    for prev in &pdu.prev_events {
        let meta = server
            .rooms
            .event_meta(maps, prev)?
            .ok_or_else(|| Error::internal(format_args!("no metadata for {prev}")))?;
        if !groups.contains(&meta.state_after) {
            groups.push(meta.state_after);
        }
    }
    match groups.as_slice() {
        [] => Err(Error::forbidden("PDU without prev_events")),
        [group] => Ok((*group, server.rooms.load_state(maps, *group)?)),
        _ => {
            let states = groups
                .iter()
                .map(|g| server.rooms.load_state(maps, *g).map(|s| (*s).clone()))
                .collect::<Result<Vec<_>>>()?;
            let resolved = crate::rooms::resolve::resolve(server, rules, &states)?;
            let mut batch = server.db.batch();
            let (group, state) = server.rooms.state.store_full(maps, &mut batch, resolved);
            server.db.commit(batch)?;
            Ok((group, state))
        }
    }
}

/// With several forward extremities the room's current state is their states resolved.
fn settle_current_state(server: &Server, rules: &RoomVersionRules, room_id: &RoomId) -> Result<()> {
    let maps = &server.maps;
    let extremities = timeline::extremities(server, room_id)?;
    if extremities.len() < 2 {
        return Ok(());
    }
    let mut groups = Vec::new();
    for id in &extremities {
        if let Some(meta) = server.rooms.event_meta(maps, id)?
            && !groups.contains(&meta.state_after)
        {
            groups.push(meta.state_after);
        }
    }
    if groups.len() < 2 {
        return Ok(());
    }
    let states = groups
        .iter()
        .map(|g| server.rooms.load_state(maps, *g).map(|s| (*s).clone()))
        .collect::<Result<Vec<_>>>()?;
    let resolved = crate::rooms::resolve::resolve(server, rules, &states)?;
    let mut batch = server.db.batch();
    let (group, _) = server.rooms.state.store_full(maps, &mut batch, resolved);
    batch.put(
        &maps.roomid_stategroup,
        room_id.as_bytes(),
        group.to_be_bytes(),
    );
    server.db.commit(batch)?;
    server.rooms.members_changed(room_id);
    Ok(())
}

/// Asks the origin for the events between our extremities and `latest`, and takes them
/// oldest first.
async fn fetch_missing(
    server: &Arc<Server>,
    origin: &ServerName,
    room_id: &RoomId,
    latest: &EventId,
    depth: u32,
) {
    let earliest = timeline::extremities(server, room_id).unwrap_or_default();
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [latest],
        "limit": 20,
        "min_depth": 0,
    });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        crate::federation::encode(room_id.as_str())
    );
    let answer = match server
        .federation
        .client
        .send(server, origin, http::Method::POST, &path, Some(&body))
        .await
    {
        Ok(answer) => answer,
        Err(error) => {
            tracing::info!(%origin, %room_id, %error, "get_missing_events failed");
            return;
        }
    };
    let mut events: Vec<CanonicalJsonObject> = answer["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| serde_json::from_value(e.clone()).ok())
        .collect();
    events.sort_by_key(|e| match e.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => i64::from(*d),
        _ => 0,
    });
    for event in events {
        let (id, outcome) = Box::pin(handle_object(server, origin, event, depth + 1)).await;
        if let Err(error) = outcome {
            tracing::info!(?id, %error, "missing event not accepted");
        }
    }
}

/// The JSON `{event_id: {}}` / `{event_id: {"error": ...}}` map `/send` answers with.
pub fn result_entry(outcome: &Result<()>) -> Value {
    match outcome {
        Ok(()) => json!({}),
        Err(error) => json!({ "error": error.message }),
    }
}
