//! Building `/sync` (v3) responses.
//!
//! A response covers the stream window `(since, now]`. Per room the timeline is read newest
//! first from the room's `roomcount_eventid` range; state is the difference between the state
//! at the start of the window and the state at the start of the returned timeline (or all of
//! it for an initial sync, a newly joined room or `full_state`).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ruma::{
    DeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId, api::client::filter::FilterDefinition,
    events::StateEventType,
};
use serde_json::{Map, Value, json};

use super::{filter, format};
use crate::{
    error::Result,
    rooms::{Membership, pdu::PduRef, receipts, state::StateMap, visibility},
    server::Server,
    users::account_data,
};

pub struct SyncParams {
    pub user: OwnedUserId,
    pub device: ruma::OwnedDeviceId,
    pub since: Option<u64>,
    /// To-device messages up to here are acknowledged (the since token's `_t` part, else its
    /// position).
    pub to_device_ack: u64,
    pub filter: FilterDefinition,
    pub full_state: bool,
    pub use_state_after: bool,
    pub timeout: Duration,
    /// `set_presence`: online (default), unavailable or offline.
    pub set_presence: String,
    /// Users the requester ignores (`m.ignored_user_list`): their messages are left out.
    pub ignored: BTreeSet<OwnedUserId>,
}

/// The users in a user's `m.ignored_user_list`.
pub fn ignored_users(server: &Server, user: &UserId) -> Result<BTreeSet<OwnedUserId>> {
    account_data::ignored_users(&server.maps, user)
}

/// Long-polls until something for the user arrives or the timeout passes.
pub async fn sync(server: &Server, params: SyncParams) -> Result<Value> {
    crate::users::presence::touch(server, &params.user, &params.set_presence)?;
    let mut receiver = server.stream.subscribe(&params.user);
    let deadline = tokio::time::Instant::now() + params.timeout;
    loop {
        receiver.borrow_and_update();
        let now = server.stream.current();
        let (response, has_updates) = build(server, &params, now)?;
        if has_updates
            || params.since.is_none()
            || params.full_state
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(response);
        }
        // Wait for a write for this user (or the deadline); a write between `current()` and
        // here has already marked the receiver changed, so it is not missed.
        let mut shutdown = server.shutdown.subscribe();
        let woken = tokio::select! {
            changed = tokio::time::timeout_at(deadline, receiver.changed()) => changed.is_ok(),
            _ = shutdown.wait_for(|s| *s) => false,
        };
        if !woken {
            let now = server.stream.current();
            return Ok(build(server, &params, now)?.0);
        }
    }
}

/// The response for the window `(since, now]` and whether it holds anything.
pub fn build(server: &Server, params: &SyncParams, now: u64) -> Result<(Value, bool)> {
    let since = params.since.map(|s| s.min(now));
    let mut join = Map::new();
    let mut invite = Map::new();
    let mut leave = Map::new();
    let mut knock = Map::new();
    // Account data changed in the window, read once: global entries and per-room entries.
    let mut room_account_data: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut global_account_data = Vec::new();
    for (room, kind, content) in
        account_data::changes_since(&server.maps, &params.user, since.unwrap_or(0))?
    {
        if room.is_empty() {
            if filter::type_only_allowed(&params.filter.account_data, &kind) {
                global_account_data.push(json!({ "type": kind, "content": content }));
            }
        } else if filter::room_type_allowed(&params.filter.room.account_data, &kind) {
            room_account_data
                .entry(room)
                .or_default()
                .push(json!({ "type": kind, "content": content }));
        }
    }
    let rooms = server.rooms.rooms_of(&server.maps, &params.user)?;
    for (room_id, membership) in rooms {
        if !filter::room_allowed(&params.filter, &room_id) {
            continue;
        }
        // Ignore membership changes after `now` (they belong to the next response).
        let membership = if membership.count > now {
            membership_at(server, &room_id, &params.user, now)?
        } else {
            Some(membership)
        };
        let Some(membership) = membership else {
            continue;
        };
        match membership.membership.as_str() {
            "join" => {
                let account_data = room_account_data
                    .remove(room_id.as_str())
                    .unwrap_or_default();
                if let Some(room) = joined_room(
                    server,
                    params,
                    &room_id,
                    &membership,
                    since,
                    now,
                    account_data,
                )? {
                    join.insert(room_id.to_string(), room);
                }
            }
            "invite" if since.is_none_or(|s| membership.count > s) => {
                // Invites from ignored users are not shown.
                let inviter = server
                    .rooms
                    .pdu(&server.maps, &membership.event_id)?
                    .map(|p| p.sender.clone());
                if inviter.is_some_and(|i| params.ignored.contains(&i)) {
                    continue;
                }
                invite.insert(room_id.to_string(), json!({ "invite_state": { "events": stripped_state(server, &room_id, &membership)? } }));
            }
            "knock" if since.is_none_or(|s| membership.count > s) => {
                knock.insert(room_id.to_string(), json!({ "knock_state": { "events": stripped_state(server, &room_id, &membership)? } }));
            }
            "leave" | "ban" => {
                let changed = match since {
                    Some(s) => membership.count > s,
                    None => params.filter.room.include_leave,
                };
                let forgotten = server.maps.userroomid_forgotten.contains(
                    crate::storage::keys::Key::new()
                        .s(params.user.as_str())
                        .s(room_id.as_str())
                        .build(),
                )?;
                if changed && !forgotten {
                    leave.insert(
                        room_id.to_string(),
                        left_room(server, params, &room_id, &membership, since)?,
                    );
                }
            }
            _ => {}
        }
    }

    let presence_events = presence_section(server, params, since, now)?;
    let has_updates = !presence_events.is_empty()
        || !join.is_empty()
        || !invite.is_empty()
        || !leave.is_empty()
        || !knock.is_empty()
        || !global_account_data.is_empty();
    let mut rooms = Map::new();
    for (name, section) in [
        ("join", join),
        ("invite", invite),
        ("leave", leave),
        ("knock", knock),
    ] {
        if !section.is_empty() {
            rooms.insert(name.into(), Value::Object(section));
        }
    }
    // End-to-end encryption: to-device messages (acknowledged by the since token), device-list
    // changes, key counts.
    let to_device = crate::e2ee::to_device(
        server,
        &params.user,
        &params.device,
        params.to_device_ack,
        now,
        100,
    )?;
    let device_lists = match since {
        Some(s) => crate::e2ee::device_lists(server, &params.user, s, now)?,
        None => Default::default(),
    };
    let has_updates = has_updates
        || !to_device.events.is_empty()
        || !device_lists.changed.is_empty()
        || !device_lists.left.is_empty();
    let to_device_position = if to_device.more { to_device.last } else { None };

    let mut response = Map::new();
    response.insert(
        "next_batch".into(),
        json!(super::sync_token(now, to_device_position)),
    );
    response.insert("rooms".into(), Value::Object(rooms));
    response.insert(
        "account_data".into(),
        json!({ "events": global_account_data }),
    );
    response.insert("presence".into(), json!({ "events": presence_events }));
    response.insert("to_device".into(), json!({ "events": to_device.events }));
    response.insert(
        "device_lists".into(),
        json!({ "changed": device_lists.changed, "left": device_lists.left }),
    );
    response.insert(
        "device_one_time_keys_count".into(),
        json!(crate::e2ee::one_time_key_counts(
            server,
            &params.user,
            &params.device
        )?),
    );
    response.insert(
        "device_unused_fallback_key_types".into(),
        json!(crate::e2ee::unused_fallback_key_types(
            server,
            &params.user,
            &params.device
        )?),
    );
    Ok((Value::Object(response), has_updates))
}

/// Presence of the users sharing a room with the requester: all of it initially, changes after.
fn presence_section(
    server: &Server,
    params: &SyncParams,
    since: Option<u64>,
    now: u64,
) -> Result<Vec<Value>> {
    use crate::users::presence;
    if !filter::type_only_allowed(&params.filter.presence, "m.presence") {
        return Ok(Vec::new());
    }
    let changed: Vec<(OwnedUserId, presence::Presence)> = match since {
        Some(s) => presence::changed(&server.maps, s, now),
        None => Vec::new(),
    };
    if since.is_some() && changed.is_empty() {
        return Ok(Vec::new());
    }
    let mates: BTreeSet<OwnedUserId> = presence::room_mates(server, &params.user)?
        .into_iter()
        .collect();
    let records: Vec<(OwnedUserId, presence::Presence)> = match since {
        Some(_) => changed
            .into_iter()
            .filter(|(u, _)| mates.contains(u))
            .collect(),
        None => mates
            .iter()
            .filter_map(|u| {
                presence::get(&server.maps, u)
                    .ok()
                    .flatten()
                    .map(|p| (u.clone(), p))
            })
            .collect(),
    };
    Ok(records
        .into_iter()
        .map(|(user, record)| json!({ "type": "m.presence", "sender": user, "content": presence::content(server, &user, &record) }))
        .collect())
}

/// The user's membership as of stream position `at` (for changes that raced the window).
fn membership_at(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
    at: u64,
) -> Result<Option<Membership>> {
    let group = server.rooms.group_at(&server.maps, room_id, at)?;
    let state = server.rooms.load_state(&server.maps, group)?;
    let Some(event) = server.rooms.state_event(
        &server.maps,
        &state,
        &StateEventType::RoomMember,
        user.as_str(),
    )?
    else {
        return Ok(None);
    };
    let Some(meta) = server.rooms.event_meta(&server.maps, &event.event_id)? else {
        return Ok(None);
    };
    Ok(event.membership().map(|membership| Membership {
        membership,
        count: meta.count,
        event_id: event.event_id.clone(),
        last_join_count: None,
    }))
}

pub struct Timeline {
    pub events: Vec<(u64, PduRef)>,
    pub limited: bool,
}

/// Visible timeline events in `(from, to]`, newest `limit`, returned oldest first.
fn timeline(
    server: &Server,
    params: &SyncParams,
    room_id: &RoomId,
    from: u64,
    to: u64,
    limit: usize,
    current: Option<&Membership>,
) -> Result<Timeline> {
    let reader = Reader {
        user: &params.user,
        ignored: &params.ignored,
        filter: Some(&params.filter.room.timeline),
    };
    read_timeline(server, &reader, room_id, from, to, limit, current)
}

/// Who reads a timeline, and how: for visibility, ignored senders and the event filter.
pub struct Reader<'a> {
    pub user: &'a UserId,
    pub ignored: &'a BTreeSet<OwnedUserId>,
    pub filter: Option<&'a ruma::api::client::filter::RoomEventFilter>,
}

/// The newest `limit` visible events in `(from, to]`, oldest first. The window ends at the
/// first event the reader may not see (no holes: the state at its start stays exact).
pub fn read_timeline(
    server: &Server,
    reader: &Reader<'_>,
    room_id: &RoomId,
    from: u64,
    to: u64,
    limit: usize,
    current: Option<&Membership>,
) -> Result<Timeline> {
    let mut events = Vec::new();
    let mut limited = false;
    let mut cursor = to;
    'scan: loop {
        let batch = server
            .rooms
            .timeline_desc(&server.maps, room_id, from, cursor, limit + 1)?;
        if batch.is_empty() {
            break;
        }
        for (count, pdu) in &batch {
            cursor = count.saturating_sub(1);
            if reader
                .filter
                .is_some_and(|f| !filter::room_event_allowed(f, pdu))
            {
                continue;
            }
            if !pdu.is_state() && reader.ignored.contains(&pdu.sender) {
                continue;
            }
            let Some(meta) = server.rooms.event_meta(&server.maps, &pdu.event_id)? else {
                continue;
            };
            if !visibility::can_see(server, reader.user, pdu, &meta, current)? {
                limited = !events.is_empty() || limited;
                break 'scan;
            }
            if events.len() == limit {
                limited = true;
                break 'scan;
            }
            events.push((*count, pdu.clone()));
        }
        if batch.len() <= limit || cursor <= from {
            break;
        }
    }
    events.reverse();
    Ok(Timeline { events, limited })
}

fn timeline_limit(params: &SyncParams) -> usize {
    params
        .filter
        .room
        .timeline
        .limit
        .map_or(10, |l| u64::from(l).clamp(1, 1000) as usize)
}

fn joined_room(
    server: &Server,
    params: &SyncParams,
    room_id: &RoomId,
    membership: &Membership,
    since: Option<u64>,
    now: u64,
    room_account_data: Vec<Value>,
) -> Result<Option<Value>> {
    let maps = &server.maps;
    let newly_joined = since.is_none_or(|s| membership.last_join_count.is_some_and(|j| j > s));
    let from = since.unwrap_or(0);
    let last = server.rooms.last_count(maps, room_id)?;
    let (typing_count, typing_users) = server.typing.get(room_id);
    let typing_changed = since.is_none_or(|s| typing_count > s && typing_count <= now);
    let has_new_events = since.is_none_or(|s| last > s);
    let receipts = match since {
        None => receipts::all(maps, room_id),
        Some(s) => receipts::changed(maps, room_id, s, now)?,
    };
    let receipt_event = receipts::ephemeral_event(&receipts, &params.user)
        .filter(|_| filter::room_type_allowed(&params.filter.room.ephemeral, "m.receipt"));
    if !has_new_events
        && !params.full_state
        && !typing_changed
        && receipt_event.is_none()
        && room_account_data.is_empty()
        && !newly_joined
    {
        return Ok(None);
    }

    let limit = timeline_limit(params);
    let timeline = if has_new_events || newly_joined {
        // A newly joined room's timeline starts at the join, so its history goes through
        // `/messages` (and its visibility rules), not a huge first sync.
        timeline(server, params, room_id, from, now, limit, Some(membership))?
    } else {
        Timeline {
            events: Vec::new(),
            limited: false,
        }
    };

    let full = newly_joined || params.full_state;
    let start_group = match timeline.events.first() {
        Some((_, pdu)) => server
            .rooms
            .event_meta(maps, &pdu.event_id)?
            .map_or(0, |m| m.state_before),
        None => server.rooms.group_at(maps, room_id, now)?,
    };
    let in_timeline: BTreeSet<_> = timeline
        .events
        .iter()
        .map(|(_, p)| p.event_id.clone())
        .collect();
    let senders: BTreeSet<OwnedUserId> = timeline
        .events
        .iter()
        .map(|(_, p)| p.sender.clone())
        .collect();
    let since_group = if full {
        0
    } else {
        server.rooms.group_at(maps, room_id, from)?
    };
    let state = state_delta(
        server,
        params,
        since_group,
        start_group,
        &in_timeline,
        &senders,
        full,
    )?;

    let state_after = if params.use_state_after {
        let end_group = server.rooms.group_at(maps, room_id, now)?;
        Some(state_delta(
            server,
            params,
            since_group,
            end_group,
            &BTreeSet::new(),
            &senders,
            full,
        )?)
    } else {
        None
    };

    let mut ephemeral = Vec::new();
    if typing_changed
        && (typing_count > 0)
        && filter::room_type_allowed(&params.filter.room.ephemeral, "m.typing")
    {
        ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": typing_users } }));
    }
    ephemeral.extend(receipt_event);

    if !full
        && timeline.events.is_empty()
        && state.is_empty()
        && ephemeral.is_empty()
        && room_account_data.is_empty()
    {
        return Ok(None);
    }

    let prev_batch = timeline
        .events
        .first()
        .map_or(from, |(count, _)| count.saturating_sub(1));
    let events = timeline
        .events
        .iter()
        .map(|(_, pdu)| {
            let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
            format::client_event_for(
                server,
                pdu,
                meta.as_deref(),
                Some(&params.user),
                Some(&params.device),
                false,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let mut room = Map::new();
    room.insert(
        "timeline".into(),
        json!({ "events": events, "limited": timeline.limited, "prev_batch": super::token(prev_batch) }),
    );
    match state_after {
        Some(after) => room.insert("state_after".into(), json!({ "events": after })),
        None => room.insert("state".into(), json!({ "events": state })),
    };
    room.insert("ephemeral".into(), json!({ "events": ephemeral }));
    room.insert(
        "account_data".into(),
        json!({ "events": room_account_data }),
    );
    let per_thread = params.filter.room.timeline.unread_thread_notifications;
    let read = receipts::read_up_to(maps, room_id, &params.user);
    let counts = crate::push::unread_counts(maps, &params.user, room_id, &read, per_thread);
    room.insert(
        "unread_notifications".into(),
        json!({ "notification_count": counts.notifications, "highlight_count": counts.highlights }),
    );
    if per_thread {
        let threads: Map<String, Value> = counts
            .threads
            .iter()
            .map(|(root, (n, h))| {
                (
                    root.clone(),
                    json!({ "notification_count": n, "highlight_count": h }),
                )
            })
            .collect();
        room.insert("unread_thread_notifications".into(), Value::Object(threads));
    }
    let members_changed = full
        || timeline
            .events
            .iter()
            .any(|(_, p)| p.kind == ruma::events::TimelineEventType::RoomMember);
    if members_changed {
        room.insert("summary".into(), summary(server, room_id, &params.user)?);
    }
    Ok(Some(Value::Object(room)))
}

/// State events in `to` that differ from `from` (all of `to` when `from` is 0), minus events
/// already in the timeline; lazy-loaded members are limited to the timeline's senders.
fn state_delta(
    server: &Server,
    params: &SyncParams,
    from_group: u64,
    to_group: u64,
    in_timeline: &BTreeSet<ruma::OwnedEventId>,
    senders: &BTreeSet<OwnedUserId>,
    full: bool,
) -> Result<Vec<Value>> {
    let maps = &server.maps;
    let lazy = filter::lazy_members(&params.filter.room.state);
    if from_group == to_group && !full {
        return if lazy {
            sender_members(server, params, to_group, in_timeline, senders)
        } else {
            Ok(Vec::new())
        };
    }
    let to_state = server.rooms.load_state(maps, to_group)?;
    let from_state: Arc<StateMap> = if full {
        Arc::new(StateMap::new())
    } else {
        server.rooms.load_state(maps, from_group)?
    };
    let mut events = Vec::new();
    let mut included = BTreeSet::new();
    for (key, event) in to_state.iter() {
        if from_state.get(key) == Some(event) {
            continue;
        }
        let event_id = server.rooms.state.event_id_of(maps, *event)?;
        if in_timeline.contains(&event_id) {
            continue;
        }
        let Some(pdu) = server.rooms.pdu(maps, &event_id)? else {
            continue;
        };
        if !filter::room_event_allowed(&params.filter.room.state, &pdu) {
            continue;
        }
        if lazy && pdu.kind == ruma::events::TimelineEventType::RoomMember {
            let member = pdu.state_user();
            if !member.is_some_and(|m| senders.contains(m) || m == params.user) {
                continue;
            }
        }
        let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
        included.insert(pdu.event_id.clone());
        events.push(format::client_event(
            server,
            &pdu,
            meta.as_deref(),
            Some(&params.device),
            false,
        )?);
    }
    if lazy && !full {
        // Senders whose member event did not change still need it once they speak.
        for event in sender_members(server, params, to_group, in_timeline, senders)? {
            if event["event_id"]
                .as_str()
                .is_some_and(|id| !included.iter().any(|i| i.as_str() == id))
            {
                events.push(event);
            }
        }
    }
    Ok(events)
}

/// The member events (at `group`) of the timeline's senders, for lazy-loading clients.
fn sender_members(
    server: &Server,
    params: &SyncParams,
    group: u64,
    in_timeline: &BTreeSet<ruma::OwnedEventId>,
    senders: &BTreeSet<OwnedUserId>,
) -> Result<Vec<Value>> {
    let maps = &server.maps;
    let state = server.rooms.load_state(maps, group)?;
    let mut events = Vec::new();
    for sender in senders {
        let Some(pdu) =
            server
                .rooms
                .state_event(maps, &state, &StateEventType::RoomMember, sender.as_str())?
        else {
            continue;
        };
        if in_timeline.contains(&pdu.event_id) {
            continue;
        }
        let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
        events.push(format::client_event(
            server,
            &pdu,
            meta.as_deref(),
            Some(&params.device),
            false,
        )?);
    }
    Ok(events)
}

/// `m.heroes` and member counts, for clients to name unnamed rooms.
fn summary(server: &Server, room_id: &RoomId, user: &UserId) -> Result<Value> {
    let members = server.rooms.members(&server.maps, room_id)?;
    let joined = members
        .iter()
        .filter(|(_, m)| m.membership == "join")
        .count();
    let invited = members
        .iter()
        .filter(|(_, m)| m.membership == "invite")
        .count();
    let mut heroes: Vec<&OwnedUserId> = members
        .iter()
        .filter(|(u, m)| *u != user && matches!(m.membership.as_str(), "join" | "invite"))
        .map(|(u, _)| u)
        .collect();
    heroes.sort();
    heroes.truncate(5);
    Ok(json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    }))
}

/// Stripped state for invites and knocks, plus the membership event itself.
fn stripped_state(
    server: &Server,
    room_id: &RoomId,
    membership: &Membership,
) -> Result<Vec<Value>> {
    if !server.rooms.exists(&server.maps, room_id)? {
        // Invited over federation into a room we are not in: the state the inviting server
        // sent, then the invite itself.
        let user = server
            .rooms
            .pdu(&server.maps, &membership.event_id)?
            .and_then(|p| p.state_key.clone())
            .and_then(|k| ruma::OwnedUserId::try_from(k).ok());
        let mut events = match &user {
            Some(user) => crate::federation::invite::stored_invite_state(server, room_id, user),
            None => Vec::new(),
        };
        if let Some(pdu) = server.rooms.pdu(&server.maps, &membership.event_id)? {
            events.push(format::stripped(&pdu));
        }
        return Ok(events);
    }
    let maps = &server.maps;
    let mut events = Vec::new();
    for kind in [
        StateEventType::RoomCreate,
        StateEventType::RoomJoinRules,
        StateEventType::RoomName,
        StateEventType::RoomAvatar,
        StateEventType::RoomCanonicalAlias,
        StateEventType::RoomEncryption,
        StateEventType::RoomTopic,
    ] {
        if let Some(pdu) = server.rooms.current_state_event(maps, room_id, &kind, "")? {
            events.push(format::stripped(&pdu));
        }
    }
    if let Some(pdu) = server.rooms.pdu(maps, &membership.event_id)? {
        // The membership event itself, in full client format, so clients see who invited.
        if let Some(sender_member) = server.rooms.current_state_event(
            maps,
            room_id,
            &StateEventType::RoomMember,
            pdu.sender.as_str(),
        )? && sender_member.event_id != pdu.event_id
        {
            events.push(format::stripped(&sender_member));
        }
        let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
        events.push(format::client_event(
            server,
            &pdu,
            meta.as_deref(),
            None,
            false,
        )?);
    }
    Ok(events)
}

fn left_room(
    server: &Server,
    params: &SyncParams,
    room_id: &RoomId,
    membership: &Membership,
    since: Option<u64>,
) -> Result<Value> {
    let maps = &server.maps;
    let from = since.unwrap_or(0);
    let limit = timeline_limit(params);
    let timeline = timeline(
        server,
        params,
        room_id,
        from,
        membership.count,
        limit,
        Some(membership),
    )?;
    let start_group = match timeline.events.first() {
        Some((_, pdu)) => server
            .rooms
            .event_meta(maps, &pdu.event_id)?
            .map_or(0, |m| m.state_before),
        None => server.rooms.group_at(maps, room_id, membership.count)?,
    };
    let in_timeline: BTreeSet<_> = timeline
        .events
        .iter()
        .map(|(_, p)| p.event_id.clone())
        .collect();
    let senders: BTreeSet<OwnedUserId> = timeline
        .events
        .iter()
        .map(|(_, p)| p.sender.clone())
        .collect();
    let full = since.is_none() || params.full_state;
    let since_group = if full {
        0
    } else {
        server.rooms.group_at(maps, room_id, from)?
    };
    let state = state_delta(
        server,
        params,
        since_group,
        start_group,
        &in_timeline,
        &senders,
        full,
    )?;
    let prev_batch = timeline
        .events
        .first()
        .map_or(from, |(count, _)| count.saturating_sub(1));
    let events = timeline
        .events
        .iter()
        .map(|(_, pdu)| {
            let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
            format::client_event_for(
                server,
                pdu,
                meta.as_deref(),
                Some(&params.user),
                Some(&params.device),
                false,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "timeline": { "events": events, "limited": timeline.limited, "prev_batch": super::token(prev_batch) },
        "state": { "events": state },
        "account_data": { "events": [] },
    }))
}

/// Rooms the user is joined to (for `/joined_rooms`).
pub fn joined_rooms(server: &Server, user: &UserId) -> Result<Vec<OwnedRoomId>> {
    Ok(server
        .rooms
        .rooms_of(&server.maps, user)?
        .into_iter()
        .filter(|(_, m)| m.membership == "join")
        .map(|(room, _)| room)
        .collect())
}

#[allow(dead_code)]
fn _assert_device(_: &DeviceId) {}
