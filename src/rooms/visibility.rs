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

/// What another server may see of a room's history (serving `/event`, `/backfill`,
/// `/get_missing_events`), per the spec's rules for servers: with `world_readable` or `shared`
/// history everything (the caller has checked the server is in the room); with `invited` what
/// happened while one of its users was invited or joined; with `joined` only while joined.
/// Events it may not see are served redacted, so its copy of the room's graph stays complete.
pub struct ServerView<'a> {
    server: &'a Server,
    origin: &'a ruma::ServerName,
    /// Verdicts per state group (the state before an event decides).
    by_group: std::collections::HashMap<u64, bool>,
}

impl<'a> ServerView<'a> {
    pub fn new(server: &'a Server, origin: &'a ruma::ServerName) -> Self {
        Self {
            server,
            origin,
            by_group: std::collections::HashMap::new(),
        }
    }

    /// The event as `origin` may have it: whole, or redacted.
    pub fn federation_value(&mut self, pdu: &Pdu) -> Result<serde_json::Value> {
        if self.can_see(pdu)? {
            return Ok(pdu.to_federation_value());
        }
        let version = self.server.rooms.version(&self.server.maps, &pdu.room_id)?;
        let rules = super::version::rules(&version)?;
        let redacted = ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None)
            .map_err(|e| crate::error::Error::internal(format_args!("redaction: {e}")))?;
        Ok(serde_json::to_value(redacted)?)
    }

    fn can_see(&mut self, pdu: &Pdu) -> Result<bool> {
        let maps = &self.server.maps;
        // Outliers (state and auth events) are part of what every member server needs.
        let Some(meta) = self.server.rooms.event_meta(maps, &pdu.event_id)? else {
            return Ok(true);
        };
        if pdu
            .state_user()
            .is_some_and(|user| user.server_name() == self.origin)
        {
            return Ok(true);
        }
        if let Some(verdict) = self.by_group.get(&meta.state_before) {
            return Ok(*verdict);
        }
        let verdict = self.group_visible(meta.state_before)?;
        self.by_group.insert(meta.state_before, verdict);
        Ok(verdict)
    }

    fn group_visible(&self, group: u64) -> Result<bool> {
        let rooms = &self.server.rooms;
        let maps = &self.server.maps;
        let state = rooms.load_state(maps, group)?;
        let visibility = rooms
            .state_event(maps, &state, &StateEventType::RoomHistoryVisibility, "")?
            .and_then(|e| e.content_str("history_visibility"))
            .unwrap_or_else(|| "shared".to_owned());
        if matches!(visibility.as_str(), "world_readable" | "shared") {
            return Ok(true);
        }
        let suffix = format!(":{}", self.origin);
        for (key, event) in state.iter() {
            let (kind, state_key) = rooms.state.statekey_of(maps, *key)?;
            if kind != StateEventType::RoomMember || !state_key.ends_with(&suffix) {
                continue;
            }
            let id = rooms.state.event_id_of(maps, *event)?;
            let membership = rooms.pdu(maps, &id)?.and_then(|p| p.membership());
            match membership.as_deref() {
                Some("join") => return Ok(true),
                Some("invite") if visibility == "invited" => return Ok(true),
                _ => {}
            }
        }
        Ok(false)
    }
}
