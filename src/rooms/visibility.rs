//! History visibility: whether a user may see an event, applied on every read path
//! (sync, messages, context, event, relations ...). The spec's algorithm:
//! world_readable → yes; joined at the event → yes; `shared` and joined at any point after the
//! event → yes; invited at the event and `invited` visibility → yes; otherwise no.
//! Soft-failed events are seen by nobody.

use ruma::{UserId, events::StateEventType};

use super::{EventMeta, Membership, pdu::Pdu};
use crate::{error::Result, server::Server};

pub fn can_see(
    server: &Server,
    user: &UserId,
    pdu: &Pdu,
    meta: &EventMeta,
    current: Option<&Membership>,
) -> Result<bool> {
    // Soft-failed events are kept for the DAG only; clients never see them.
    if meta.soft_failed {
        return Ok(false);
    }
    // Fast path: joined now, and no membership change since this event → joined at the event.
    if let Some(m) = current
        && m.membership == "join"
        && m.count <= meta.count
    {
        return Ok(true);
    }
    let maps = &server.maps;
    let state = server.rooms.load_state(maps, meta.state_before)?;
    let visibility = server
        .rooms
        .state_event(maps, &state, &StateEventType::RoomHistoryVisibility, "")?
        .and_then(|e| e.content_str("history_visibility"))
        .unwrap_or_else(|| "shared".to_owned());
    if visibility == "world_readable" {
        return Ok(true);
    }
    let before = server
        .rooms
        .state_event(maps, &state, &StateEventType::RoomMember, user.as_str())?
        .and_then(|e| e.membership());
    let membership_at_event = match pdu.membership().filter(|_| pdu.state_user() == Some(user)) {
        // The user's own membership event: judged by the "most joined" of the membership it
        // replaces and the one it sets, and a leave after a join or invite is always visible
        // (the user must see the room go away).
        Some(new) => {
            if new == "leave" && matches!(before.as_deref(), Some("join" | "invite")) {
                return Ok(true);
            }
            most_joined(before, Some(new))
        }
        None => before,
    };
    match membership_at_event.as_deref() {
        Some("join") => return Ok(true),
        Some("invite") if visibility == "invited" => return Ok(true),
        _ => {}
    }
    if visibility == "shared"
        && current
            .and_then(|m| m.last_join_count)
            .is_some_and(|joined| joined > meta.count)
    {
        return Ok(true);
    }
    Ok(false)
}

/// Of two memberships, the one that grants more: join > invite > knock > leave > ban.
fn most_joined(a: Option<String>, b: Option<String>) -> Option<String> {
    let rank = |m: &Option<String>| match m.as_deref() {
        Some("join") => 0,
        Some("invite") => 1,
        Some("knock") => 2,
        Some("leave") | None => 3,
        _ => 4,
    };
    if rank(&a) <= rank(&b) { a } else { b }
}

/// Filters events (with their metadata) down to those `user` may see.
pub fn filter<'a, I>(
    server: &Server,
    user: &UserId,
    room_id: &ruma::RoomId,
    events: I,
) -> Result<Vec<std::sync::Arc<Pdu>>>
where
    I: IntoIterator<Item = &'a std::sync::Arc<Pdu>>,
{
    let current = server.rooms.membership(&server.maps, room_id, user)?;
    let mut out = Vec::new();
    for pdu in events {
        let Some(meta) = server.rooms.event_meta(&server.maps, &pdu.event_id)? else {
            continue;
        };
        if can_see(server, user, pdu, &meta, current.as_ref())? {
            out.push(pdu.clone());
        }
    }
    Ok(out)
}
