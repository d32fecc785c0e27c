//! The append pipeline: build a local event, authorise it by its room version's rules, and
//! persist it with everything derived from it in one atomic batch.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedDeviceId,
    OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
    canonical_json::{RedactedBecause, redact},
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res,
};
use serde_json::Value;

use super::{
    EventMeta, Membership, RoomMeta,
    pdu::{Pdu, PduRef},
    state::StateMap,
};
use crate::{
    error::{Error, Result},
    server::Server,
    storage::keys::Key,
};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// A new event as a client (or the server itself) asks for it.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    pub timestamp: Option<MilliSecondsSinceUnixEpoch>,
}

impl NewEvent {
    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: Value,
    ) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
            timestamp: None,
        }
    }

    pub fn message(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: None,
            redacts: None,
            timestamp: None,
        }
    }
}

/// The client transaction that produced an event, for idempotency and `unsigned.transaction_id`.
#[derive(Clone, Debug)]
pub struct Txn {
    pub device_id: OwnedDeviceId,
    pub txn_id: String,
}

/// Builds, authorises and appends an event to a room, taking the room's lock.
pub async fn send(
    server: &Server,
    room_id: &RoomId,
    sender: &UserId,
    event: NewEvent,
    txn: Option<Txn>,
) -> Result<PduRef> {
    let _lock = server.rooms.lock(room_id).await;
    send_locked(server, room_id, sender, event, txn)
}

/// As [`send`], for a caller that already holds the room's lock.
pub fn send_locked(
    server: &Server,
    room_id: &RoomId,
    sender: &UserId,
    event: NewEvent,
    txn: Option<Txn>,
) -> Result<PduRef> {
    let version = server.rooms.version(&server.maps, room_id)?;
    let rules = super::version::rules(&version)?;
    let group = server.rooms.current_group(&server.maps, room_id)?;
    let state = server.rooms.load_state(&server.maps, group)?;
    let pdu = build(
        server,
        Some(room_id),
        &version,
        &rules,
        &state,
        sender,
        &event,
    )?;
    authorize(server, &rules, &pdu, &state)?;
    persist(server, &rules, pdu, group, &state, txn)
}

/// Builds and signs a PDU on top of the room's current extremities and state.
pub fn build(
    server: &Server,
    room_id: Option<&RoomId>,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    state: &StateMap,
    sender: &UserId,
    event: &NewEvent,
) -> Result<Pdu> {
    if !event.content.is_object() {
        return Err(Error::bad_json("Event content must be a JSON object"));
    }
    let maps = &server.maps;
    let content_raw = serde_json::value::to_raw_value(&event.content)?;
    let auth_types = state_res::auth_types_for_event(
        &event.kind,
        sender,
        event.state_key.as_deref(),
        &content_raw,
        &rules.authorization,
    )
    .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;

    let mut auth_events = Vec::new();
    for (kind, state_key) in &auth_types {
        if let Some(pdu) = server.rooms.state_event(maps, state, kind, state_key)? {
            auth_events.push(pdu.event_id.clone());
        }
    }
    // Since v12 the create event is not in state lookups by auth type but is still needed to
    // authorise; it is implied by the room id, so nothing to add here.

    let (prev_events, depth) = match room_id {
        Some(room_id) => extremities_and_depth(server, room_id)?,
        None => (Vec::new(), 1),
    };

    let timestamp = event
        .timestamp
        .unwrap_or_else(MilliSecondsSinceUnixEpoch::now);
    let mut object = CanonicalJsonObject::new();
    let id_list = |ids: &[OwnedEventId]| {
        CanonicalJsonValue::Array(
            ids.iter()
                .map(|id| CanonicalJsonValue::String(id.to_string()))
                .collect(),
        )
    };
    object.insert("auth_events".into(), id_list(&auth_events));
    object.insert("prev_events".into(), id_list(&prev_events));
    object.insert("content".into(), to_canonical(&event.content)?);
    object.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(ruma::Int::try_from(depth).unwrap_or(ruma::Int::MAX)),
    );
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(ruma::Int::from(timestamp.0)),
    );
    if let Some(room_id) = room_id {
        object.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
    }
    object.insert(
        "sender".into(),
        CanonicalJsonValue::String(sender.to_string()),
    );
    object.insert(
        "type".into(),
        CanonicalJsonValue::String(event.kind.to_string()),
    );
    if let Some(state_key) = &event.state_key {
        object.insert(
            "state_key".into(),
            CanonicalJsonValue::String(state_key.clone()),
        );
    }
    if let Some(redacts) = &event.redacts {
        // Since v11 `redacts` lives in the content; older versions have it at the top level.
        if rules.redaction.content_field_redacts {
            if let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content") {
                content.insert(
                    "redacts".into(),
                    CanonicalJsonValue::String(redacts.to_string()),
                );
            }
        } else {
            object.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
    }
    if !matches!(version, RoomVersionId::V1 | RoomVersionId::V2) {
        // `origin` is no longer part of the format but Synapse still sends it; omit it.
    }

    let size = serde_json::to_vec(&object)?.len();
    if size > MAX_PDU_BYTES - 1024 {
        // Leave room for hashes and signatures within the 64 KiB limit.
        return Err(Error::too_large("Event is too large"));
    }
    ruma::signatures::hash_and_sign_event(
        server.server_name().as_str(),
        &server.signing_key,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| Error::internal(format_args!("signing: {e}")))?;
    if serde_json::to_vec(&object)?.len() > MAX_PDU_BYTES {
        return Err(Error::too_large("Event is too large"));
    }
    let hash = ruma::signatures::reference_hash(&object, rules)
        .map_err(|e| Error::too_large(e.to_string()))?;
    let event_id = OwnedEventId::try_from(format!("${hash}")).map_err(Error::internal)?;
    Pdu::from_json(event_id, object)
}

fn to_canonical(value: &Value) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(value.clone())
        .map_err(|e| Error::bad_json(format!("Event content is not canonical JSON: {e}")))
}

/// The room's forward extremities (at most 20, as the spec advises) and the next depth.
fn extremities_and_depth(server: &Server, room_id: &RoomId) -> Result<(Vec<OwnedEventId>, u64)> {
    let mut prev = extremities(server, room_id)?;
    // At most 20 prev_events, as the spec advises; the newest ones.
    if prev.len() > 20 {
        prev.drain(..prev.len() - 20);
    }
    let mut depth = 0;
    for event_id in &prev {
        if let Some(pdu) = server.rooms.pdu(&server.maps, event_id)? {
            depth = depth.max(pdu.depth);
        }
    }
    Ok((prev, depth.saturating_add(1).min(i64::MAX as u64)))
}

/// The room's forward extremities (the DAG's current leaves).
pub fn extremities(server: &Server, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
    match server.maps.roomid_extremities.get(room_id.as_bytes())? {
        Some(raw) => Ok(serde_json::from_slice(&raw)?),
        None => Ok(Vec::new()),
    }
}

/// Checks the event against its room version's authorisation rules and the current state.
pub fn authorize(
    server: &Server,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
) -> Result<()> {
    let maps = &server.maps;
    state_res::check_pdu_format(&pdu.json, &rules.event_format).map_err(Error::bad_json)?;
    let fetch_event =
        |id: &ruma::EventId| -> Option<PduRef> { server.rooms.pdu(maps, id).ok().flatten() };
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(|reason| Error::forbidden(format!("Event not allowed: {reason}")))?;
    let fetch_state = |kind: &StateEventType, state_key: &str| -> Option<PduRef> {
        server
            .rooms
            .state_event(maps, state, kind, state_key)
            .ok()
            .flatten()
    };
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(|reason| Error::forbidden(format!("Event not allowed: {reason}")))
}

/// Persists an authorised event: PDU, metadata, timeline position, state, membership,
/// extremities, transaction id and redaction, all in one batch. Then wakes local members.
pub fn persist(
    server: &Server,
    rules: &RoomVersionRules,
    pdu: Pdu,
    group_before: u64,
    state_before: &StateMap,
    txn: Option<Txn>,
) -> Result<PduRef> {
    let maps = &server.maps;
    let rooms = &server.rooms;
    let room_id = pdu.room_id.clone();
    let mut batch = server.db.batch();
    let (pdu, redacted_by) = with_waiting_redaction(server, rules, &mut batch, pdu)?;
    let short = rooms
        .state
        .event_short_or_intern(maps, &mut batch, &pdu.event_id)?;
    let (group_after, replaces_state) =
        state_after(server, &mut batch, &pdu, short, group_before, state_before)?;
    if pdu.state_key.is_some() {
        batch.put(
            &maps.roomid_stategroup,
            room_id.as_bytes(),
            group_after.to_be_bytes(),
        );
    }

    let pending = server.stream.next(maps, &mut batch);
    let count = pending.count();

    if pdu.kind == TimelineEventType::RoomCreate {
        let meta = RoomMeta {
            room_version: room_version_of_create(&pdu)?,
            create_event_id: pdu.event_id.clone(),
        };
        batch.put(
            &maps.roomid_meta,
            room_id.as_bytes(),
            serde_json::to_vec(&meta)?,
        );
    }

    let meta = EventMeta {
        room_id: room_id.clone(),
        count,
        short,
        state_before: group_before,
        state_after: group_after,
        replaces_state,
        txn: txn
            .as_ref()
            .map(|t| (t.device_id.clone(), t.txn_id.clone())),
        redacted_by,
        soft_failed: false,
    };
    batch.put(
        &maps.eventid_pdu,
        pdu.event_id.as_bytes(),
        serde_json::to_vec(&pdu.json)?,
    );
    batch.put(
        &maps.eventid_meta,
        pdu.event_id.as_bytes(),
        serde_json::to_vec(&meta)?,
    );
    let redaction = apply_redaction(server, rules, &mut batch, &pdu, state_before)?;
    // A redaction that may not take effect is part of the room, but clients never see it
    // (they would apply it).
    if redaction != Redaction::Refused {
        batch.put(
            &maps.roomcount_eventid,
            Key::new().s(room_id.as_str()).n(count).build(),
            pdu.event_id.as_bytes(),
        );
    }
    // The room's forward extremities: one value per room (a list), not one key per event, so
    // the write is a single put and reading them never walks deleted keys.
    let mut extremities = extremities(server, &room_id)?;
    extremities.retain(|id| !pdu.prev_events.contains(id));
    extremities.push(pdu.event_id.clone());
    batch.put(
        &maps.roomid_extremities,
        room_id.as_bytes(),
        serde_json::to_vec(&extremities)?,
    );
    if let Some(txn) = &txn {
        let key = Key::new()
            .s(pdu.sender.as_str())
            .s(txn.device_id.as_str())
            .s(&txn.txn_id)
            .build();
        batch.put(&maps.usertxn_eventid, key, pdu.event_id.as_bytes());
    }

    let mut wake_extra = None;
    if let (Some(membership), Some(target)) = (pdu.membership(), pdu.state_user()) {
        let previous = rooms.membership(maps, &room_id, target)?;
        // A join that follows a join (a profile change) is not a new join.
        let last_join_count = match previous.as_ref() {
            Some(p) if p.membership == "join" => p.last_join_count,
            _ if membership == "join" => Some(count),
            _ => previous.as_ref().and_then(|p| p.last_join_count),
        };
        let record = Membership {
            membership,
            count,
            event_id: pdu.event_id.clone(),
            last_join_count,
        };
        let value = serde_json::to_vec(&record)?;
        batch.put(
            &maps.roomuserid_membership,
            Key::new().s(room_id.as_str()).s(target.as_str()).build(),
            &value,
        );
        batch.put(
            &maps.userroomid_membership,
            Key::new().s(target.as_str()).s(room_id.as_str()).build(),
            &value,
        );
        if record.membership == "join" {
            batch.delete(
                &maps.userroomid_forgotten,
                Key::new().s(target.as_str()).s(room_id.as_str()).build(),
            );
        }
        if server.is_local(target.server_name()) {
            wake_extra = Some(target.to_owned());
        }
    }

    let redacted_target = redaction.applied();

    super::relations::index(server, &mut batch, &pdu, count)?;
    if server.is_local(pdu.sender.server_name()) {
        let thread = super::relations::thread_root(maps, rooms, &pdu);
        super::receipts::mark_own(
            maps,
            &mut batch,
            &room_id,
            &pdu.sender,
            thread.as_ref().map(|t| t.as_str()),
            count,
        );
    }
    // Push rules are judged against the state the event was sent in.
    let notified = crate::push::evaluate(server, &mut batch, &pdu, count, state_before)?;

    server.db.commit(batch)?;
    server.push.enqueue(notified);
    server.search.index_event(&pdu);
    if let Some(target) = &redacted_target {
        server.search.remove_event(target);
    }

    if let Some(state_key) = &pdu.state_key {
        let kind = pdu.kind.to_string();
        server
            .delayed
            .state_changed(server, &room_id, &kind, state_key, &pdu.sender);
    }
    if pdu.kind == TimelineEventType::RoomMember {
        rooms.members_changed(&room_id);
        server.federation.sender.members_changed(&room_id);
        // Whoever is no longer joined leaves any call in the room at once.
        if let (Some(membership), Some(target)) = (pdu.membership(), pdu.state_user())
            && membership != "join"
        {
            server.rtc.member_left(&room_id, target);
        }
    }
    // Other servers in the room get our users' events (queued durably; sent in background).
    if let Err(error) = crate::federation::sender::queue_local_event(server, &pdu, count) {
        tracing::error!(event_id = %pdu.event_id, %error, "cannot queue event for federation");
    }
    if let Some(target) = redacted_target {
        rooms.forget_cached(&target);
    }
    let pdu = Arc::new(pdu);
    rooms.pdus.lock().put(pdu.event_id.clone(), pdu.clone());
    rooms.metas.lock().put(pdu.event_id.clone(), Arc::new(meta));

    let mut users = (*rooms.local_interested(server, &room_id)?).clone();
    if let Some(extra) = wake_extra
        && !users.contains(&extra)
    {
        users.push(extra);
    }
    pending.finish(users);
    Ok(pdu)
}

/// The state group after the event (a new one when it is a state event) and the event it
/// replaces in the state, if any.
fn state_after(
    server: &Server,
    batch: &mut crate::storage::Batch,
    pdu: &Pdu,
    short: u64,
    group_before: u64,
    state_before: &StateMap,
) -> Result<(u64, Option<OwnedEventId>)> {
    let Some(state_key) = &pdu.state_key else {
        return Ok((group_before, None));
    };
    let maps = &server.maps;
    let state = &server.rooms.state;
    let kind = StateEventType::from(pdu.kind.to_string());
    let key = state.intern_statekey(&server.db, maps, &kind, state_key)?;
    let replaces = match state_before.get(&key) {
        Some(previous) => Some(state.event_id_of(maps, *previous)?),
        None => None,
    };
    let (group, _) = state.derive(maps, batch, group_before, &[(key, Some(short))])?;
    Ok((group, replaces))
}

/// Persists an event that is not new to the room: history fetched from another server
/// (`position`: its place in the timeline, below everything shown so far) or a soft-failed
/// event (`None`: no place in the timeline). Neither changes the current state, the forward
/// extremities or memberships, notifies anyone, nor is sent on to other servers.
pub fn persist_historic(
    server: &Server,
    pdu: Pdu,
    group_before: u64,
    state_before: &StateMap,
    position: Option<u64>,
) -> Result<()> {
    let maps = &server.maps;
    let rooms = &server.rooms;
    let rules = super::version::rules(&rooms.version(maps, &pdu.room_id)?)?;
    let mut batch = server.db.batch();
    let (pdu, redacted_by) = with_waiting_redaction(server, &rules, &mut batch, pdu)?;
    let short = rooms
        .state
        .event_short_or_intern(maps, &mut batch, &pdu.event_id)?;
    let (group_after, replaces_state) =
        state_after(server, &mut batch, &pdu, short, group_before, state_before)?;
    let meta = EventMeta {
        room_id: pdu.room_id.clone(),
        count: position.unwrap_or(0),
        short,
        state_before: group_before,
        state_after: group_after,
        replaces_state,
        txn: None,
        redacted_by,
        soft_failed: position.is_none(),
    };
    // A soft-failed redaction takes no effect; a backfilled one does, as a live one would.
    let redaction = match position {
        Some(_) => apply_redaction(server, &rules, &mut batch, &pdu, state_before)?,
        None => Redaction::NotApplied,
    };
    let redacted_target = redaction.applied();
    batch.put(
        &maps.eventid_pdu,
        pdu.event_id.as_bytes(),
        serde_json::to_vec(&pdu.json)?,
    );
    batch.put(
        &maps.eventid_meta,
        pdu.event_id.as_bytes(),
        serde_json::to_vec(&meta)?,
    );
    if let Some(count) = position.filter(|_| redaction != Redaction::Refused) {
        batch.put(
            &maps.roomcount_eventid,
            Key::new().s(pdu.room_id.as_str()).n(count).build(),
            pdu.event_id.as_bytes(),
        );
        super::relations::index(server, &mut batch, &pdu, count)?;
    }
    server.db.commit(batch)?;
    if position.is_some() {
        server.search.index_event(&pdu);
    }
    if let Some(target) = redacted_target {
        server.search.remove_event(&target);
        rooms.forget_cached(&target);
    }
    let pdu = Arc::new(pdu);
    rooms.pdus.lock().put(pdu.event_id.clone(), pdu.clone());
    rooms.metas.lock().put(pdu.event_id.clone(), Arc::new(meta));
    Ok(())
}

fn room_version_of_create(pdu: &Pdu) -> Result<RoomVersionId> {
    let version = pdu
        .content_str("room_version")
        .unwrap_or_else(|| "1".to_owned());
    RoomVersionId::try_from(version)
        .map_err(|e| Error::bad_json(format!("invalid room_version: {e}")))
}

/// Replaces the stored target with its redacted form (content stripped by the room version's
/// rules, `unsigned.redacted_because` set). Returns the target id if it was redacted.
fn redact_in_batch(
    server: &Server,
    rules: &RoomVersionRules,
    batch: &mut crate::storage::Batch,
    redaction: &Pdu,
    original: &Pdu,
) -> Result<Option<OwnedEventId>> {
    let maps = &server.maps;
    let target = &*original.event_id;
    let Some(meta) = server.rooms.event_meta(maps, target)? else {
        return Ok(None);
    };
    if original.room_id != redaction.room_id || meta.redacted_by.is_some() {
        return Ok(None);
    }
    let redacted = redacted_json(rules, original, redaction)?;
    let mut meta = (*meta).clone();
    meta.redacted_by = Some(redaction.event_id.clone());
    super::relations::unindex(maps, batch, original, meta.count);
    batch.put(
        &maps.eventid_pdu,
        target.as_bytes(),
        serde_json::to_vec(&redacted)?,
    );
    batch.put(
        &maps.eventid_meta,
        target.as_bytes(),
        serde_json::to_vec(&meta)?,
    );
    Ok(Some(target.to_owned()))
}

/// `original`'s content stripped by the room version's rules, with `unsigned.redacted_because`.
fn redacted_json(
    rules: &RoomVersionRules,
    original: &Pdu,
    redaction: &Pdu,
) -> Result<CanonicalJsonObject> {
    let mut because_json = redaction.json.clone();
    because_json.insert(
        "event_id".into(),
        CanonicalJsonValue::String(redaction.event_id.to_string()),
    );
    let because = RedactedBecause::from_json(because_json);
    redact(original.json.clone(), &rules.redaction, Some(because))
        .map_err(|e| Error::internal(format_args!("redaction: {e}")))
}

/// Whether a redaction takes effect on an event of `target_sender` (the spec's "Handling
/// redactions"). Since room version 3 the authorization rules accept a redaction from any
/// member; it applies only if its sender may redact others' events (in the state it was sent
/// in) or is on the target sender's server. Versions 1 and 2 check this in the authorization
/// rules themselves.
fn redaction_permitted(
    server: &Server,
    rules: &RoomVersionRules,
    redaction: &Pdu,
    target_sender: &UserId,
    state_at_redaction: &StateMap,
) -> Result<bool> {
    if rules.authorization.special_case_room_redaction
        || redaction.sender.server_name() == target_sender.server_name()
    {
        return Ok(true);
    }
    let power = super::power::PowerLevels::at(server, &redaction.room_id, state_at_redaction)?;
    Ok(power.can_redact_others(&redaction.sender))
}

/// What an event being stored did as a redaction.
#[derive(Debug, PartialEq, Eq)]
enum Redaction {
    /// Not a redaction, or one whose target is already redacted, not here yet, or elsewhere.
    NotApplied,
    /// The target (this id) is redacted.
    Applied(OwnedEventId),
    /// Its sender may not redact the target.
    Refused,
}

impl Redaction {
    fn applied(&self) -> Option<OwnedEventId> {
        match self {
            Self::Applied(target) => Some(target.clone()),
            _ => None,
        }
    }
}

/// Applies a redaction event (sent in `state_before`) to its target: at once if the target is
/// here and the redaction is permitted; if the target has not arrived yet (history not
/// fetched, or a branch of the room's graph still missing), it is noted and applied when the
/// target comes.
fn apply_redaction(
    server: &Server,
    rules: &RoomVersionRules,
    batch: &mut crate::storage::Batch,
    redaction: &Pdu,
    state_before: &StateMap,
) -> Result<Redaction> {
    if redaction.kind != TimelineEventType::RoomRedaction {
        return Ok(Redaction::NotApplied);
    }
    let Some(target) = redaction.redacts.as_deref() else {
        return Ok(Redaction::NotApplied);
    };
    let maps = &server.maps;
    let Some(original) = server.rooms.pdu(maps, target)? else {
        let key = Key::new()
            .s(target.as_str())
            .s(redaction.event_id.as_str())
            .build();
        batch.put(&maps.target_redaction, key, []);
        return Ok(Redaction::NotApplied);
    };
    if !redaction_permitted(server, rules, redaction, &original.sender, state_before)? {
        tracing::info!(
            redaction = %redaction.event_id,
            target = %target,
            sender = %redaction.sender,
            "redaction not applied: its sender may not redact this event"
        );
        return Ok(Redaction::Refused);
    }
    Ok(
        match redact_in_batch(server, rules, batch, redaction, &original)? {
            Some(target) => Redaction::Applied(target),
            None => Redaction::NotApplied,
        },
    )
}

/// An event about to be stored, redacted if a permitted redaction of it arrived before it;
/// with the id of that redaction. The notes of redactions waiting for it are removed.
fn with_waiting_redaction(
    server: &Server,
    rules: &RoomVersionRules,
    batch: &mut crate::storage::Batch,
    pdu: Pdu,
) -> Result<(Pdu, Option<OwnedEventId>)> {
    // Our own new events cannot have been named by a redaction before (their ids are hashes
    // of contents nobody else has seen): the send path skips the lookup.
    if server.is_local(pdu.sender.server_name()) {
        return Ok((pdu, None));
    }
    let maps = &server.maps;
    let rooms = &server.rooms;
    let prefix = Key::new().s(pdu.event_id.as_str()).prefix();
    let waiting: Vec<Box<[u8]>> = maps
        .target_redaction
        .scan_prefix(prefix.clone())
        .map(|(key, _)| key)
        .collect();
    let ids: Vec<OwnedEventId> = waiting
        .iter()
        .filter_map(|key| key.get(prefix.len()..))
        .filter_map(|raw| std::str::from_utf8(raw).ok())
        .filter_map(|raw| OwnedEventId::try_from(raw).ok())
        .collect();
    for key in &waiting {
        batch.delete(&maps.target_redaction, key);
    }
    for id in ids {
        let (Some(redaction), Some(meta)) = (rooms.pdu(maps, &id)?, rooms.event_meta(maps, &id)?)
        else {
            continue;
        };
        if redaction.room_id != pdu.room_id || meta.soft_failed {
            continue;
        }
        let state = rooms.load_state(maps, meta.state_before)?;
        if redaction_permitted(server, rules, &redaction, &pdu.sender, &state)? {
            let json = redacted_json(rules, &pdu, &redaction)?;
            return Ok((Pdu::from_json(pdu.event_id.clone(), json)?, Some(id)));
        }
    }
    Ok((pdu, None))
}

/// The event id a transaction produced earlier, if any (idempotent sends).
pub fn txn_event(
    server: &Server,
    user: &UserId,
    device: &ruma::DeviceId,
    txn_id: &str,
) -> Result<Option<OwnedEventId>> {
    let key = Key::new()
        .s(user.as_str())
        .s(device.as_str())
        .s(txn_id)
        .build();
    match server.maps.usertxn_eventid.get(key)? {
        Some(raw) => Ok(Some(super::parse_event_id(&raw)?)),
        None => Ok(None),
    }
}

/// For v12 rooms: the room id a create event defines.
pub fn room_id_from_create(pdu: &Pdu) -> OwnedRoomId {
    pdu.room_id.clone()
}
