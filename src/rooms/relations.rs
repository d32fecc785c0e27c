//! Event relations (`m.relates_to`): edits, reactions, references and threads.
//!
//! Every relation is indexed under its target in stream order (`relates`), so the server can
//! bundle aggregations into `unsigned.m.relations`, serve `/relations` and list `/threads`.

use ruma::{EventId, OwnedEventId, OwnedUserId, RoomId, UserId, events::TimelineEventType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::pdu::Pdu;
use crate::{
    error::{Error, Result},
    server::Server,
    storage::keys::Key,
    storage::{Batch, Maps, keys},
};

pub const THREAD: &str = "m.thread";
pub const REPLACE: &str = "m.replace";
pub const ANNOTATION: &str = "m.annotation";
pub const REFERENCE: &str = "m.reference";

/// One relation as indexed under its target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Relation {
    pub event_id: OwnedEventId,
    pub rel_type: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub sender: OwnedUserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Stream position of the relating event.
    pub count: u64,
}

/// The `m.relates_to` of an event's content: (rel_type, target, annotation key).
pub fn relates_to(pdu: &Pdu) -> Option<(String, OwnedEventId, Option<String>)> {
    let content = pdu.content_value();
    let relates = content.get("m.relates_to")?;
    let rel_type = relates.get("rel_type")?.as_str()?.to_owned();
    let target = OwnedEventId::try_from(relates.get("event_id")?.as_str()?).ok()?;
    let key = relates
        .get("key")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((rel_type, target, key))
}

/// The thread an event belongs to: its root when it is an `m.thread` relation.
pub fn thread_of(pdu: &Pdu) -> Option<OwnedEventId> {
    relates_to(pdu)
        .filter(|(rel, _, _)| rel == THREAD)
        .map(|(_, root, _)| root)
}

/// One annotation per (target, sender, event type, key): a user may react with the same key
/// only once, but another event type with that key is a different annotation.
fn annotation_key(target: &EventId, sender: &UserId, kind: &str, key: &str) -> Vec<u8> {
    Key::new()
        .s(target.as_str())
        .s(sender.as_str())
        .s(kind)
        .s(key)
        .build()
}

/// Checks a relation before the event is sent: a second identical reaction is
/// `M_DUPLICATE_ANNOTATION`; a thread cannot start from an event that itself has a relation.
pub fn check_new(server: &Server, sender: &UserId, kind: &str, content: &Value) -> Result<()> {
    let Some(relates) = content.get("m.relates_to") else {
        return Ok(());
    };
    let rel_type = relates.get("rel_type").and_then(Value::as_str);
    if rel_type == Some(THREAD) {
        let target = relates
            .get("event_id")
            .and_then(Value::as_str)
            .and_then(|s| <&EventId>::try_from(s).ok());
        if let Some(target) = target.and_then(|t| server.rooms.pdu(&server.maps, t).ok().flatten())
            && relates_to(&target).is_some()
        {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Cannot start a thread from an event with a relation",
            ));
        }
    }
    if rel_type != Some(ANNOTATION) {
        return Ok(());
    }
    let (Some(target), Some(key)) = (
        relates
            .get("event_id")
            .and_then(Value::as_str)
            .and_then(|s| <&EventId>::try_from(s).ok()),
        relates.get("key").and_then(Value::as_str),
    ) else {
        return Ok(());
    };
    if server
        .maps
        .annotation_key
        .contains(annotation_key(target, sender, kind, key))?
    {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_DUPLICATE_ANNOTATION",
            "You already reacted with this key",
        ));
    }
    Ok(())
}

/// Adds an event's relation (if any) to the indexes, in the event's batch.
pub fn index(server: &Server, batch: &mut Batch, pdu: &Pdu, count: u64) -> Result<()> {
    let Some((rel_type, target, key)) = relates_to(pdu) else {
        return Ok(());
    };
    let maps = &server.maps;
    let relation = Relation {
        event_id: pdu.event_id.clone(),
        rel_type: rel_type.clone(),
        kind: pdu.kind.to_string(),
        sender: pdu.sender.clone(),
        key: key.clone(),
        count,
    };
    batch.put(
        &maps.relates,
        Key::new().s(target.as_str()).n(count).build(),
        serde_json::to_vec(&relation)?,
    );
    if rel_type == ANNOTATION
        && let Some(key) = &key
    {
        batch.put(
            &maps.annotation_key,
            annotation_key(&target, &pdu.sender, pdu.kind.to_string().as_str(), key),
            pdu.event_id.as_bytes(),
        );
    }
    if rel_type == THREAD {
        let room = pdu.room_id.as_str();
        let latest_key = Key::new().s(room).s(target.as_str()).build();
        if let Some(previous) = maps
            .roomthread_latest
            .get(&latest_key)?
            .as_deref()
            .and_then(keys::u64_from)
        {
            batch.delete(
                &maps.roomthread_activity,
                Key::new().s(room).n(previous).s(target.as_str()).build(),
            );
        }
        batch.put(&maps.roomthread_latest, &latest_key, count.to_be_bytes());
        batch.put(
            &maps.roomthread_activity,
            Key::new().s(room).n(count).s(target.as_str()).build(),
            b"",
        );
        batch.put(
            &maps.thread_participant,
            Key::new().s(target.as_str()).s(pdu.sender.as_str()).build(),
            b"",
        );
    }
    Ok(())
}

/// Removes a redacted event's relation from the indexes.
pub fn unindex(maps: &Maps, batch: &mut Batch, original: &Pdu, count: u64) {
    let Some((rel_type, target, key)) = relates_to(original) else {
        return;
    };
    batch.delete(
        &maps.relates,
        Key::new().s(target.as_str()).n(count).build(),
    );
    if let (true, Some(key)) = (rel_type == ANNOTATION, key) {
        batch.delete(
            &maps.annotation_key,
            annotation_key(&target, &original.sender, &original.kind.to_string(), &key),
        );
    }
}

/// Relations of `target` in stream order (oldest first).
pub fn of(maps: &Maps, target: &EventId) -> Result<Vec<Relation>> {
    maps.relates
        .scan_prefix(Key::new().s(target.as_str()).prefix())
        .map(|(_, value)| Ok(serde_json::from_slice(&value)?))
        .collect()
}

/// `unsigned.m.relations` for an event: the latest valid edit, the thread summary and the
/// references. `None` when there is nothing to bundle.
pub fn bundle(
    server: &Server,
    pdu: &Pdu,
    viewer: Option<&UserId>,
    device: Option<&ruma::DeviceId>,
) -> Result<Option<Value>> {
    bundle_at(server, pdu, viewer, device, 0)
}

/// Aggregations of aggregated events (a thread's latest reply and its edit) go one level deep.
fn bundle_at(
    server: &Server,
    pdu: &Pdu,
    viewer: Option<&UserId>,
    device: Option<&ruma::DeviceId>,
    depth: u8,
) -> Result<Option<Value>> {
    let maps = &server.maps;
    let relations = of(maps, &pdu.event_id)?;
    if relations.is_empty() {
        return Ok(None);
    }
    let mut bundled = serde_json::Map::new();

    // m.replace: the most recent valid edit: same sender and type, `m.new_content` present,
    // neither event a state event, and the original not itself an edit.
    let original_is_edit = relates_to(pdu).is_some_and(|(rel, _, _)| rel == REPLACE);
    if !pdu.is_state() && !original_is_edit {
        let edit = relations
            .iter()
            .rev()
            .filter(|r| {
                r.rel_type == REPLACE && r.sender == pdu.sender && r.kind == pdu.kind.to_string()
            })
            .filter_map(|r| server.rooms.pdu(maps, &r.event_id).ok().flatten())
            .find(|e| {
                e.state_key.is_none()
                    && e.content_value()
                        .get("m.new_content")
                        .is_some_and(Value::is_object)
            });
        if let Some(edit) = edit {
            let meta = server.rooms.event_meta(maps, &edit.event_id)?;
            let event =
                crate::sync::format::client_event(server, &edit, meta.as_deref(), device, true)?;
            bundled.insert(REPLACE.into(), event);
        }
    }

    // m.thread: count, latest reply (with its own aggregations), whether the viewer took part.
    // Replies from users the viewer ignores do not count.
    let mut replies: Vec<&Relation> = relations.iter().filter(|r| r.rel_type == THREAD).collect();
    if !replies.is_empty()
        && let Some(viewer) = viewer
    {
        let ignored = crate::users::account_data::ignored_users(maps, viewer)?;
        replies.retain(|r| !ignored.contains(&r.sender));
    }
    if let Some(latest) = replies.last()
        && let Some(latest_pdu) = server.rooms.pdu(maps, &latest.event_id)?
    {
        let meta = server.rooms.event_meta(maps, &latest_pdu.event_id)?;
        let mut latest_event =
            crate::sync::format::client_event(server, &latest_pdu, meta.as_deref(), device, true)?;
        if depth == 0
            && let Some(inner) = bundle_at(server, &latest_pdu, viewer, device, depth + 1)?
        {
            latest_event["unsigned"]["m.relations"] = inner;
        }
        let participated = viewer.is_some_and(|viewer| {
            pdu.sender == viewer || replies.iter().any(|r| r.sender == viewer)
        });
        bundled.insert(
                THREAD.into(),
                json!({ "latest_event": latest_event, "count": replies.len(), "current_user_participated": participated }),
            );
    }

    let references: Vec<Value> = relations
        .iter()
        .filter(|r| r.rel_type == REFERENCE)
        .map(|r| json!({ "event_id": r.event_id }))
        .collect();
    if !references.is_empty() {
        bundled.insert(REFERENCE.into(), json!({ "chunk": references }));
    }
    Ok((!bundled.is_empty()).then_some(Value::Object(bundled)))
}

/// The thread an event belongs to, following relations up to three hops (a reaction to a
/// thread reply is in that thread).
pub fn thread_root(maps: &Maps, rooms: &super::Rooms, pdu: &Pdu) -> Option<OwnedEventId> {
    let mut current = relates_to(pdu)?;
    for _ in 0..3 {
        let (rel_type, target, _) = current;
        if rel_type == THREAD {
            return Some(target);
        }
        let parent = rooms.pdu(maps, &target).ok().flatten()?;
        current = relates_to(&parent)?;
    }
    None
}

/// Thread roots of a room, most recently active first, from stream position `before`
/// (exclusive) downwards. Returns (latest activity position, root).
pub fn threads(
    maps: &Maps,
    room_id: &RoomId,
    before: u64,
    limit: usize,
) -> Result<Vec<(u64, OwnedEventId)>> {
    let prefix = Key::new().s(room_id.as_str()).prefix();
    // Above every root at `before - 1` (roots are UTF-8, below 0xFF).
    let mut start = Key::new()
        .s(room_id.as_str())
        .n(before.saturating_sub(1))
        .prefix();
    start.push(0xFF);
    let mut out = Vec::new();
    for (key, _) in maps
        .roomthread_activity
        .scan_from(prefix.clone(), start, false)
    {
        let rest = &key[prefix.len()..];
        let Some(count) = rest.get(..8).and_then(keys::u64_from) else {
            continue;
        };
        if count >= before {
            continue;
        }
        let Some(root) = rest
            .get(9..)
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(|s| OwnedEventId::try_from(s).ok())
        else {
            continue;
        };
        out.push((count, root));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Whether `user` sent the thread root or a reply in it.
pub fn participated(maps: &Maps, root: &Pdu, user: &UserId) -> Result<bool> {
    Ok(root.sender == user
        || maps.thread_participant.contains(
            Key::new()
                .s(root.event_id.as_str())
                .s(user.as_str())
                .build(),
        )?)
}

/// Whether an event type can carry relations the spec aggregates (not state, not redactions).
pub fn aggregatable(kind: &TimelineEventType) -> bool {
    *kind != TimelineEventType::RoomRedaction
}
