//! What a room looks like from outside, and who may look: room summaries (the public room
//! directory, `/hierarchy`, `/room_summary`), the user directory and space trees (issue 3).
//!
//! A room's summary is derived from its current state and cached by state group: any state
//! change (including a membership change) moves the room to a new group, so a cached summary
//! is never stale and needs no invalidation.

pub mod hierarchy;
pub mod public_rooms;
pub mod users;

use std::{num::NonZeroUsize, sync::Arc};

use lru::LruCache;
use parking_lot::Mutex;
use ruma::{
    OwnedRoomId, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Map, Value, json};

use crate::{
    error::Result,
    rooms::{pdu::PduRef, state::GroupId},
    server::Server,
};

/// One `m.space.child` link of a space.
#[derive(Clone, Debug)]
pub struct SpaceChild {
    pub room_id: OwnedRoomId,
    pub order: Option<String>,
    pub suggested: bool,
    pub origin_server_ts: u64,
    /// The event as a stripped state event with `origin_server_ts` (for `children_state`).
    pub stripped: Value,
}

/// A room as the directory, the space hierarchy and the room summary show it.
#[derive(Clone, Debug, Default)]
pub struct RoomSummary {
    pub room_id: Option<OwnedRoomId>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub canonical_alias: Option<String>,
    pub alt_aliases: Vec<String>,
    pub avatar_url: Option<String>,
    pub num_joined_members: u64,
    pub history_visibility: String,
    pub guest_can_join: bool,
    pub join_rule: String,
    /// Rooms whose members may join a `restricted` / `knock_restricted` room.
    pub allowed_room_ids: Vec<OwnedRoomId>,
    pub room_type: Option<String>,
    pub encryption: Option<String>,
    pub room_version: String,
    /// Valid `m.space.child` links (with a non-empty `via`), in the spec's order. Only filled
    /// for spaces (`room_type` `m.space`).
    pub children: Vec<SpaceChild>,
}

impl RoomSummary {
    pub fn world_readable(&self) -> bool {
        self.history_visibility == "world_readable"
    }

    pub fn is_space(&self) -> bool {
        self.room_type.as_deref() == Some("m.space")
    }

    /// The fields shared by `PublicRoomsChunk`, `SpaceHierarchyRoomsChunk` and the room summary.
    pub fn to_json(&self, room_id: &RoomId, extended: bool) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("room_id".into(), json!(room_id));
        if let Some(name) = &self.name {
            out.insert("name".into(), json!(name));
        }
        if let Some(topic) = &self.topic {
            out.insert("topic".into(), json!(topic));
        }
        if let Some(alias) = &self.canonical_alias {
            out.insert("canonical_alias".into(), json!(alias));
        }
        if let Some(avatar) = &self.avatar_url {
            out.insert("avatar_url".into(), json!(avatar));
        }
        out.insert("num_joined_members".into(), json!(self.num_joined_members));
        out.insert("world_readable".into(), json!(self.world_readable()));
        out.insert("guest_can_join".into(), json!(self.guest_can_join));
        out.insert("join_rule".into(), json!(self.join_rule));
        if let Some(room_type) = &self.room_type {
            out.insert("room_type".into(), json!(room_type));
        }
        if extended {
            if !self.allowed_room_ids.is_empty() {
                out.insert("allowed_room_ids".into(), json!(self.allowed_room_ids));
            }
            if let Some(encryption) = &self.encryption {
                out.insert("encryption".into(), json!(encryption));
            }
            out.insert("room_version".into(), json!(self.room_version));
        }
        out
    }

    /// Whether `generic_search_term` matches the name, topic or an alias (case-insensitive).
    pub fn matches(&self, lowercase_term: &str) -> bool {
        let hit = |s: &Option<String>| {
            s.as_deref()
                .is_some_and(|s| s.to_lowercase().contains(lowercase_term))
        };
        hit(&self.name)
            || hit(&self.topic)
            || hit(&self.canonical_alias)
            || self
                .alt_aliases
                .iter()
                .any(|a| a.to_lowercase().contains(lowercase_term))
    }
}

/// Caches of the directory services (owned by [`crate::search::Search`]).
pub struct Directory {
    summaries: Mutex<LruCache<OwnedRoomId, (GroupId, Arc<RoomSummary>)>>,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    pub fn new() -> Self {
        Self {
            summaries: Mutex::new(LruCache::new(
                NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The room's summary from its current state, or `None` for a room this server does not
    /// know.
    pub fn summary(&self, server: &Server, room_id: &RoomId) -> Result<Option<Arc<RoomSummary>>> {
        let maps = &server.maps;
        let Some(meta) = server.rooms.meta(maps, room_id)? else {
            return Ok(None);
        };
        let group = server.rooms.current_group(maps, room_id)?;
        if let Some((cached_group, summary)) = self.summaries.lock().get(room_id)
            && *cached_group == group
        {
            return Ok(Some(summary.clone()));
        }
        let summary = Arc::new(compute(server, room_id, group, meta.room_version.as_str())?);
        self.summaries
            .lock()
            .put(room_id.to_owned(), (group, summary.clone()));
        Ok(Some(summary))
    }
}

fn compute(
    server: &Server,
    room_id: &RoomId,
    group: GroupId,
    version: &str,
) -> Result<RoomSummary> {
    let maps = &server.maps;
    let rooms = &server.rooms;
    let state = rooms.load_state(maps, group)?;
    let get = |kind: StateEventType| -> Result<Option<PduRef>> {
        rooms.state_event(maps, &state, &kind, "")
    };
    let content_str = |event: &Option<PduRef>, field: &str| -> Option<String> {
        event
            .as_ref()
            .and_then(|e| e.content_str(field))
            .filter(|s| !s.is_empty())
    };
    let create = get(StateEventType::RoomCreate)?;
    let name = get(StateEventType::RoomName)?;
    let topic = get(StateEventType::RoomTopic)?;
    let alias = get(StateEventType::RoomCanonicalAlias)?;
    let avatar = get(StateEventType::RoomAvatar)?;
    let history = get(StateEventType::RoomHistoryVisibility)?;
    let guest = get(StateEventType::RoomGuestAccess)?;
    let join_rules = get(StateEventType::RoomJoinRules)?;
    let encryption = get(StateEventType::RoomEncryption)?;

    let join_rules_content = join_rules
        .as_ref()
        .map(|e| e.content_value())
        .unwrap_or(Value::Null);
    let allowed_room_ids = join_rules_content["allow"]
        .as_array()
        .map(|allow| {
            allow
                .iter()
                .filter(|a| a["type"] == "m.room_membership")
                .filter_map(|a| a["room_id"].as_str())
                .filter_map(|r| OwnedRoomId::try_from(r).ok())
                .collect()
        })
        .unwrap_or_default();
    let alt_aliases = alias
        .as_ref()
        .map(|e| e.content_value())
        .and_then(|c| {
            c["alt_aliases"].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    let num_joined_members = rooms
        .members(maps, room_id)?
        .iter()
        .filter(|(_, m)| m.membership == "join")
        .count() as u64;
    let room_type = content_str(&create, "type");
    let mut summary = RoomSummary {
        room_id: Some(room_id.to_owned()),
        name: content_str(&name, "name"),
        topic: topic.as_ref().and_then(|e| topic_text(&e.content_value())),
        canonical_alias: content_str(&alias, "alias"),
        alt_aliases,
        avatar_url: content_str(&avatar, "url"),
        num_joined_members,
        history_visibility: content_str(&history, "history_visibility")
            .unwrap_or_else(|| "shared".to_owned()),
        guest_can_join: content_str(&guest, "guest_access").as_deref() == Some("can_join"),
        join_rule: content_str(&join_rules, "join_rule").unwrap_or_else(|| "invite".to_owned()),
        allowed_room_ids,
        room_type,
        encryption: content_str(&encryption, "algorithm"),
        room_version: version.to_owned(),
        children: Vec::new(),
    };
    if summary.is_space() {
        summary.children = space_children(server, &state)?;
    }
    Ok(summary)
}

/// The plain-text topic: `content.topic`, or the `text/plain` body of `content["m.topic"]`.
pub fn topic_text(content: &Value) -> Option<String> {
    if let Some(topic) = content["topic"].as_str().filter(|t| !t.is_empty()) {
        return Some(topic.to_owned());
    }
    content["m.topic"]["m.text"]
        .as_array()
        .or_else(|| content["m.topic"].as_array())
        .and_then(|reprs| {
            reprs
                .iter()
                .find(|r| r["mimetype"].as_str().is_none_or(|m| m == "text/plain"))
                .and_then(|r| r["body"].as_str())
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
        })
}

/// The valid `m.space.child` events of a state (non-empty `via`), ordered as the spec says:
/// valid `order` first (lexicographic), then by timestamp, then by room id.
fn space_children(
    server: &Server,
    state: &crate::rooms::state::StateMap,
) -> Result<Vec<SpaceChild>> {
    let maps = &server.maps;
    let mut children = Vec::new();
    for (short_key, short_event) in state.iter() {
        let (kind, state_key) = server.rooms.state.statekey_of(maps, *short_key)?;
        if kind != StateEventType::SpaceChild {
            continue;
        }
        let Ok(room_id) = OwnedRoomId::try_from(state_key.as_str()) else {
            continue;
        };
        let event_id = server.rooms.state.event_id_of(maps, *short_event)?;
        let Some(pdu) = server.rooms.pdu(maps, &event_id)? else {
            continue;
        };
        if pdu.kind != TimelineEventType::SpaceChild {
            continue;
        }
        let content = pdu.content_value();
        let via_ok = content["via"].as_array().is_some_and(|via| {
            via.iter()
                .any(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        });
        if !via_ok {
            continue;
        }
        let order = content["order"]
            .as_str()
            .filter(|o| o.len() <= 50 && o.chars().all(|c| ('\x20'..='\x7e').contains(&c)))
            .map(str::to_owned);
        let ts = u64::from(pdu.origin_server_ts.0);
        children.push(SpaceChild {
            room_id,
            order,
            suggested: content["suggested"].as_bool().unwrap_or(false),
            origin_server_ts: ts,
            stripped: json!({
                "type": "m.space.child",
                "state_key": state_key,
                "content": content,
                "sender": pdu.sender,
                "origin_server_ts": ts,
            }),
        });
    }
    children.sort_by(|a, b| {
        let rank = |c: &SpaceChild| (c.order.is_none(), c.order.clone());
        rank(a)
            .cmp(&rank(b))
            .then(a.origin_server_ts.cmp(&b.origin_server_ts))
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    Ok(children)
}

/// Whether `user` (or an anonymous client) may see a room's summary and its place in a space
/// tree: joined or invited, or the room is world-readable, or its join rule lets anyone join
/// or knock, or it is restricted to members of a room the user is joined to. A banned user may
/// not.
pub fn accessible(
    server: &Server,
    user: Option<&UserId>,
    room_id: &RoomId,
    summary: &RoomSummary,
) -> Result<bool> {
    if let Some(user) = user {
        match server
            .rooms
            .membership(&server.maps, room_id, user)?
            .map(|m| m.membership)
            .as_deref()
        {
            Some("join" | "invite") => return Ok(true),
            Some("ban") => return Ok(false),
            _ => {}
        }
    }
    if summary.world_readable() {
        return Ok(true);
    }
    match summary.join_rule.as_str() {
        "public" | "knock" | "knock_restricted" => return Ok(true),
        "restricted" => {}
        _ => return Ok(false),
    }
    let Some(user) = user else {
        return Ok(false);
    };
    for allowed in &summary.allowed_room_ids {
        if server.rooms.is_joined(&server.maps, allowed, user)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a room counts as public for the user directory: published in the room directory,
/// joinable by anyone, or world-readable.
pub fn is_public(server: &Server, room_id: &RoomId) -> Result<bool> {
    if server.maps.roomid_published.contains(room_id.as_bytes())? {
        return Ok(true);
    }
    Ok(server
        .search
        .directory
        .summary(server, room_id)?
        .is_some_and(|s| s.join_rule == "public" || s.world_readable()))
}

/// The user's membership in a room as the summary reports it (`leave` when none).
pub fn membership_of(server: &Server, room_id: &RoomId, user: &UserId) -> Result<String> {
    Ok(server
        .rooms
        .membership(&server.maps, room_id, user)?
        .map_or_else(|| "leave".to_owned(), |m| m.membership))
}
