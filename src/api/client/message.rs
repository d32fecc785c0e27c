//! Messages: send, redact, paginate (`/messages`), `/context`.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    OwnedUserId, RoomId, UserId,
    api::{
        Direction,
        client::{
            context::get_context,
            filter::RoomEventFilter,
            message::{get_message_events, send_message_event},
            redact::redact_event,
        },
    },
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Value, json};

use super::membership::readable_group;
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        Membership,
        membership::require_joined,
        pdu::PduRef,
        power::PowerLevels,
        timeline::{self, NewEvent, Txn},
        visibility,
    },
    server::Server,
    sync::{filter, format, parse_token, token},
};

pub async fn send(
    server: Arc<Server>,
    request: Ruma<send_message_event::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let device = request.owned_device()?;
    let body = &request.body;
    if let Some(event_id) = timeline::txn_event(&server, &user, &device, body.txn_id.as_str())? {
        return Ok(json!({ "event_id": event_id }));
    }
    require_joined(&server, &body.room_id, &user)?;
    let content: Value = serde_json::from_str(body.body.json().get())
        .map_err(|_| Error::bad_json("Invalid JSON content"))?;
    // `?org.matrix.msc4140.delay=<ms>`: scheduled, not sent now.
    if let Some(delay) = super::delayed::requested_delay(&request.query)? {
        let delay_id = server.delayed.schedule(
            &server,
            &user,
            &body.room_id,
            &body.event_type.to_string(),
            None,
            content,
            delay,
        )?;
        return Ok(json!({ "delay_id": delay_id }));
    }
    let event = NewEvent::message(
        TimelineEventType::from(body.event_type.to_string()),
        content,
    );
    let txn = Txn {
        device_id: device,
        txn_id: body.txn_id.to_string(),
    };
    let _lock = server.rooms.lock(&body.room_id).await;
    // Checked again under the room lock: two requests with one txn id must give one event.
    if let Some(event_id) = timeline::txn_event(&server, &user, &txn.device_id, &txn.txn_id)? {
        return Ok(json!({ "event_id": event_id }));
    }
    crate::rooms::relations::check_new(
        &server,
        &user,
        event.kind.to_string().as_str(),
        &event.content,
    )?;
    let pdu = timeline::send_locked(&server, &body.room_id, &user, event, Some(txn))?;
    Ok(json!({ "event_id": pdu.event_id }))
}

pub async fn redact(
    server: Arc<Server>,
    request: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let user = request.owned_user()?;
    let device = request.owned_device()?;
    let body = &request.body;
    if let Some(event_id) = timeline::txn_event(&server, &user, &device, body.txn_id.as_str())? {
        return Ok(redact_event::v3::Response::new(event_id));
    }
    require_joined(&server, &body.room_id, &user)?;
    let target = server
        .rooms
        .pdu(&server.maps, &body.event_id)?
        .filter(|t| t.room_id == body.room_id)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if target.sender != user {
        let power = PowerLevels::current(&server, &body.room_id)?;
        if !power.can_redact_others(&user) {
            return Err(Error::forbidden(
                "You don't have permission to redact this event",
            ));
        }
    }
    let mut content = serde_json::Map::new();
    if let Some(reason) = &body.reason {
        content.insert("reason".into(), json!(reason));
    }
    let mut event = NewEvent::message(TimelineEventType::RoomRedaction, Value::Object(content));
    event.redacts = Some(body.event_id.clone());
    let txn = Txn {
        device_id: device,
        txn_id: body.txn_id.to_string(),
    };
    let _lock = server.rooms.lock(&body.room_id).await;
    if let Some(event_id) = timeline::txn_event(&server, &user, &txn.device_id, &txn.txn_id)? {
        return Ok(redact_event::v3::Response::new(event_id));
    }
    let pdu = timeline::send_locked(&server, &body.room_id, &user, event, Some(txn))?;
    Ok(redact_event::v3::Response::new(pdu.event_id.clone()))
}

/// The user's membership, or 403 if they may not read this room's history at all.
fn reader(server: &Server, room_id: &RoomId, user: &UserId) -> Result<Option<Membership>> {
    readable_group(server, room_id, user)?;
    server.rooms.membership(&server.maps, room_id, user)
}

/// A walk along a room's timeline: from `start` (inclusive) in one direction, stopping before
/// `stop` or after `limit` events that pass the filter and the reader's visibility.
struct Walk<'a> {
    start: u64,
    stop: Option<u64>,
    forward: bool,
    limit: usize,
    filter: &'a RoomEventFilter,
    /// Senders whose messages the reader ignores.
    ignored: &'a std::collections::BTreeSet<ruma::OwnedUserId>,
}

/// Events found by a walk, and whether more would follow.
struct Page {
    events: Vec<(u64, PduRef)>,
    more: bool,
}

fn walk(
    server: &Server,
    user: &UserId,
    current: Option<&Membership>,
    room_id: &RoomId,
    walk: Walk<'_>,
) -> Result<Page> {
    let mut events = Vec::new();
    let mut cursor = walk.start;
    loop {
        let page = if walk.forward {
            server.rooms.timeline_asc(
                &server.maps,
                room_id,
                cursor,
                walk.stop.unwrap_or(u64::MAX),
                100,
            )?
        } else {
            server.rooms.timeline_desc(
                &server.maps,
                room_id,
                walk.stop.unwrap_or(0),
                cursor,
                100,
            )?
        };
        if page.is_empty() {
            return Ok(Page {
                events,
                more: false,
            });
        }
        for (count, pdu) in &page {
            if events.len() == walk.limit {
                return Ok(Page { events, more: true });
            }
            cursor = if walk.forward {
                count + 1
            } else {
                count.saturating_sub(1)
            };
            if !filter::room_event_allowed(walk.filter, pdu) {
                continue;
            }
            if !pdu.is_state() && walk.ignored.contains(&pdu.sender) {
                continue;
            }
            let Some(meta) = server.rooms.event_meta(&server.maps, &pdu.event_id)? else {
                continue;
            };
            if visibility::can_see(server, user, pdu, &meta, current)? {
                events.push((*count, pdu.clone()));
            }
        }
        if page.len() < 100 || (!walk.forward && cursor == 0) {
            return Ok(Page {
                events,
                more: false,
            });
        }
    }
}

/// Member events of the chunk's senders (for lazy-loading clients).
fn lazy_members(
    server: &Server,
    events: &[(u64, PduRef)],
    device: Option<&ruma::DeviceId>,
) -> Result<Vec<Value>> {
    let senders: BTreeSet<OwnedUserId> = events.iter().map(|(_, p)| p.sender.clone()).collect();
    let mut state = Vec::new();
    for sender in senders {
        let Some((_, first)) = events.iter().find(|(_, p)| p.sender == sender) else {
            continue;
        };
        let Some(meta) = server.rooms.event_meta(&server.maps, &first.event_id)? else {
            continue;
        };
        let group = server.rooms.load_state(&server.maps, meta.state_before)?;
        if let Some(member) = server.rooms.state_event(
            &server.maps,
            &group,
            &StateEventType::RoomMember,
            sender.as_str(),
        )? {
            let member_meta = server.rooms.event_meta(&server.maps, &member.event_id)?;
            state.push(format::client_event(
                server,
                &member,
                member_meta.as_deref(),
                device,
                true,
            )?);
        }
    }
    Ok(state)
}

pub async fn messages(
    server: Arc<Server>,
    request: Ruma<get_message_events::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    let current = reader(&server, &body.room_id, &user)?;
    let forward = body.dir == Direction::Forward;
    let limit = u64::from(body.limit).clamp(1, 1000) as usize;
    let now = server.stream.current();
    let from = match &body.from {
        Some(from) => parse_token(from)?,
        None if forward => 0,
        None => now,
    };
    let to = body.to.as_deref().map(parse_token).transpose()?;
    // Backwards from `s<n>` covers events `<= n`; forwards covers events `> n`.
    let (start, stop) = if forward {
        (from.saturating_add(1), to.map(|t| t.saturating_add(1)))
    } else {
        (from, to)
    };
    let ignored = crate::sync::v3::ignored_users(&server, &user)?;
    let page_walk = || Walk {
        start,
        stop,
        forward,
        limit,
        filter: &body.filter,
        ignored: &ignored,
    };
    let mut page = walk(&server, &user, current.as_ref(), &body.room_id, page_walk())?;
    // At the start of what we hold: ask the room's other servers for older history.
    if !forward && stop.is_none() && !page.more && page.events.len() < limit {
        let added = crate::federation::backfill::backfill(&server, &body.room_id)
            .await
            .unwrap_or_else(|error| {
                tracing::info!(room_id = %body.room_id, %error, "backfill failed");
                0
            });
        if added > 0 {
            page = walk(&server, &user, current.as_ref(), &body.room_id, page_walk())?;
            // More may lie further back: give the client a token to ask again.
            page.more = true;
        }
    }
    let device = request.device().ok();
    let chunk = page
        .events
        .iter()
        .map(|(_, pdu)| {
            let meta = server.rooms.event_meta(&server.maps, &pdu.event_id)?;
            format::client_event_for(&server, pdu, meta.as_deref(), Some(&user), device, true)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut response = serde_json::Map::new();
    response.insert("start".into(), json!(token(from)));
    if page.more
        && let Some((count, _)) = page.events.last()
    {
        let end = if forward {
            *count
        } else {
            count.saturating_sub(1)
        };
        response.insert("end".into(), json!(token(end)));
    }
    if filter::lazy_members(&body.filter) {
        response.insert(
            "state".into(),
            Value::Array(lazy_members(&server, &page.events, device)?),
        );
    }
    response.insert("chunk".into(), Value::Array(chunk));
    Ok(Value::Object(response))
}

pub async fn context(
    server: Arc<Server>,
    request: Ruma<get_context::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    let maps = &server.maps;
    let current = reader(&server, &body.room_id, &user)?;
    let not_found = || Error::not_found("Event not found");
    let pdu = server
        .rooms
        .pdu(maps, &body.event_id)?
        .filter(|p| p.room_id == body.room_id)
        .ok_or_else(not_found)?;
    let meta = server
        .rooms
        .event_meta(maps, &pdu.event_id)?
        .ok_or_else(not_found)?;
    if !visibility::can_see(&server, &user, &pdu, &meta, current.as_ref())? {
        return Err(not_found());
    }
    let limit = u64::from(body.limit).min(100) as usize;
    let before_limit = limit / 2;
    let after_limit = limit - before_limit;
    let reader = (&*user, current.as_ref());
    let ignored = crate::sync::v3::ignored_users(&server, &user)?;
    let before = walk(
        &server,
        reader.0,
        reader.1,
        &body.room_id,
        Walk {
            start: meta.count.saturating_sub(1),
            stop: None,
            forward: false,
            limit: before_limit,
            filter: &body.filter,
            ignored: &ignored,
        },
    )?
    .events;
    let after = walk(
        &server,
        reader.0,
        reader.1,
        &body.room_id,
        Walk {
            start: meta.count + 1,
            stop: None,
            forward: true,
            limit: after_limit,
            filter: &body.filter,
            ignored: &ignored,
        },
    )?
    .events;
    let device = request.device().ok();
    let render = |events: &[(u64, PduRef)]| -> Result<Vec<Value>> {
        events
            .iter()
            .map(|(_, p)| {
                let meta = server.rooms.event_meta(maps, &p.event_id)?;
                format::client_event_for(&server, p, meta.as_deref(), Some(&user), device, true)
            })
            .collect()
    };
    let start = before
        .last()
        .map_or(meta.count.saturating_sub(1), |(c, _)| c.saturating_sub(1));
    let end = after.last().map_or(meta.count, |(c, _)| *c);
    // State at the last returned event.
    let last_meta = match after.last() {
        Some((_, last)) => server
            .rooms
            .event_meta(maps, &last.event_id)?
            .ok_or_else(not_found)?,
        None => meta.clone(),
    };
    let state_map = server.rooms.load_state(maps, last_meta.state_after)?;
    let mut state = Vec::new();
    let lazy = filter::lazy_members(&body.filter);
    let senders: BTreeSet<&UserId> = before
        .iter()
        .chain(after.iter())
        .map(|(_, p)| &*p.sender)
        .chain(std::iter::once(&*pdu.sender))
        .collect();
    for event in server.rooms.state_events(maps, &state_map)? {
        if lazy
            && event.kind == TimelineEventType::RoomMember
            && !event.state_user().is_some_and(|u| senders.contains(u))
        {
            continue;
        }
        let event_meta = server.rooms.event_meta(maps, &event.event_id)?;
        state.push(format::client_event(
            &server,
            &event,
            event_meta.as_deref(),
            device,
            true,
        )?);
    }
    Ok(json!({
        "event": format::client_event_for(&server, &pdu, Some(&meta), Some(&user), device, true)?,
        "events_before": render(&before)?,
        "events_after": render(&after)?,
        "start": token(start),
        "end": token(end),
        "state": state,
    }))
}
