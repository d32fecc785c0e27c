//! Read receipts (`m.read`, `m.read.private`, threaded or not) and what they mean for unread
//! counts.

use std::collections::{BTreeMap, HashMap};

use ruma::{EventId, OwnedEventId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    server::Server,
    storage::{Maps, keys::Key},
    users::now_ms,
};

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub event_id: OwnedEventId,
    pub ts: u64,
    /// Stream position of the receipt itself (for incremental sync).
    pub count: u64,
    /// Stream position of the event it points at (for unread counts).
    pub event_count: u64,
}

/// A receipt with where it belongs.
pub struct Entry {
    pub user: OwnedUserId,
    pub receipt_type: String,
    /// `""` for an unthreaded receipt, `"main"` or a thread root otherwise.
    pub thread: String,
    pub receipt: Receipt,
}

fn key(room: &RoomId, user: &UserId, receipt_type: &str, thread: &str) -> Vec<u8> {
    Key::new()
        .s(room.as_str())
        .s(user.as_str())
        .s(receipt_type)
        .s(thread)
        .build()
}

/// Records a receipt. Receipts never move backwards within one (type, thread): an older event
/// is accepted and ignored, as Synapse does.
pub fn set(
    server: &Server,
    room: &RoomId,
    user: &UserId,
    receipt_type: &str,
    thread: &str,
    event_id: &EventId,
) -> Result<()> {
    let maps = &server.maps;
    let meta = server
        .rooms
        .event_meta(maps, event_id)?
        .filter(|m| *m.room_id == *room)
        .ok_or_else(|| Error::not_found("Event not found in this room"))?;
    let key = key(room, user, receipt_type, thread);
    let previous: Option<Receipt> = match maps.roomreceipt.get(&key)? {
        Some(raw) => Some(serde_json::from_slice(&raw)?),
        None => None,
    };
    if previous
        .as_ref()
        .is_some_and(|p| p.event_count >= meta.count)
    {
        return Ok(());
    }
    let mut batch = server.db.batch();
    let pending = server.stream.next(maps, &mut batch);
    let receipt = Receipt {
        event_id: event_id.to_owned(),
        ts: now_ms(),
        count: pending.count(),
        event_count: meta.count,
    };
    if let Some(previous) = &previous {
        batch.delete(
            &maps.roomcount_receipt,
            Key::new().s(room.as_str()).n(previous.count).build(),
        );
    }
    batch.put(&maps.roomreceipt, &key, serde_json::to_vec(&receipt)?);
    batch.put(
        &maps.roomcount_receipt,
        Key::new().s(room.as_str()).n(receipt.count).build(),
        serde_json::to_vec(&json!([user, receipt_type, thread]))?,
    );
    server.db.commit(batch)?;
    // Public receipts go to every member; private ones only to the reader.
    let users = if receipt_type == READ_PRIVATE {
        vec![user.to_owned()]
    } else {
        (*server.rooms.local_interested(server, room)?).clone()
    };
    pending.finish(users);
    // Our users' public receipts go to the other servers in the room.
    if receipt_type == READ && server.is_local(user.server_name()) {
        let mut data = json!({ "ts": receipt.ts });
        if !thread.is_empty() {
            data["thread_id"] = json!(thread);
        }
        let edu = json!({
            "edu_type": "m.receipt",
            "content": { room.as_str(): { READ: { user.as_str(): {
                "event_ids": [event_id],
                "data": data,
            } } } },
        });
        server.federation.sender.queue_room_edu(server, room, edu)?;
    }
    Ok(())
}

fn parse_entry(room: &RoomId, key: &[u8], value: &[u8]) -> Option<Entry> {
    let rest = key.get(room.as_str().len() + 1..)?;
    let mut parts = rest.split(|b| *b == crate::storage::keys::SEP);
    let user = OwnedUserId::try_from(std::str::from_utf8(parts.next()?).ok()?).ok()?;
    let receipt_type = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let thread = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let receipt = serde_json::from_slice(value).ok()?;
    Some(Entry {
        user,
        receipt_type,
        thread,
        receipt,
    })
}

/// Every receipt in a room.
pub fn all(maps: &Maps, room: &RoomId) -> Vec<Entry> {
    maps.roomreceipt
        .scan_prefix(Key::new().s(room.as_str()).prefix())
        .filter_map(|(key, value)| parse_entry(room, &key, &value))
        .collect()
}

/// Receipts changed after stream position `since`, up to `to`.
pub fn changed(maps: &Maps, room: &RoomId, since: u64, to: u64) -> Result<Vec<Entry>> {
    let prefix = Key::new().s(room.as_str()).prefix();
    let from = Key::new()
        .s(room.as_str())
        .n(since.saturating_add(1))
        .build();
    let mut out = Vec::new();
    for (key, value) in maps.roomcount_receipt.scan_from(prefix, from, true) {
        let Some(count) = crate::storage::keys::tail_u64(&key) else {
            continue;
        };
        if count > to {
            break;
        }
        let Ok((user, receipt_type, thread)) =
            serde_json::from_slice::<(OwnedUserId, String, String)>(&value)
        else {
            continue;
        };
        if let Some(raw) = maps
            .roomreceipt
            .get(self::key(room, &user, &receipt_type, &thread))?
            && let Some(entry) =
                parse_entry(room, &self::key(room, &user, &receipt_type, &thread), &raw)
        {
            out.push(entry);
        }
    }
    Ok(out)
}

/// The `m.receipt` ephemeral event for `viewer` (private receipts only their own).
pub fn ephemeral_event(entries: &[Entry], viewer: &UserId) -> Option<Value> {
    let mut content: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for entry in entries {
        if entry.receipt_type == READ_PRIVATE && entry.user != viewer {
            continue;
        }
        let mut info = Map::new();
        info.insert("ts".into(), json!(entry.receipt.ts));
        if !entry.thread.is_empty() {
            info.insert("thread_id".into(), json!(entry.thread));
        }
        let by_type = content
            .entry(entry.receipt.event_id.to_string())
            .or_default();
        let users = by_type
            .entry(entry.receipt_type.clone())
            .or_insert_with(|| json!({}));
        if let Some(users) = users.as_object_mut() {
            users.insert(entry.user.to_string(), Value::Object(info));
        }
    }
    (!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content }))
}

/// How far a user has read: the unthreaded receipt, the main timeline and each thread
/// (stream positions of the events read).
#[derive(Default, Debug)]
pub struct ReadUpTo {
    pub unthreaded: u64,
    pub main: u64,
    pub threads: HashMap<String, u64>,
}

impl ReadUpTo {
    /// The position up to which events of `thread` (None = main timeline) are read.
    pub fn for_thread(&self, thread: Option<&str>) -> u64 {
        let threaded = match thread {
            None => self.main,
            Some(root) => self.threads.get(root).copied().unwrap_or(0),
        };
        self.unthreaded.max(threaded)
    }
}

/// How far the user has read: by receipts, and by their own events (which mark everything
/// before them as read for unread counts).
pub fn read_up_to(maps: &Maps, room: &RoomId, user: &UserId) -> ReadUpTo {
    let mut read = read_by_receipts(maps, room, user);
    let own_prefix = Key::new().s(room.as_str()).s(user.as_str()).prefix();
    let plen = own_prefix.len();
    for (key, value) in maps.own_read.scan_prefix(own_prefix) {
        let (Some(thread), Some(position)) = (
            std::str::from_utf8(&key[plen..]).ok(),
            crate::storage::keys::u64_from(&value),
        ) else {
            continue;
        };
        if thread == "main" {
            read.main = read.main.max(position);
        } else {
            let slot = read.threads.entry(thread.to_owned()).or_default();
            *slot = (*slot).max(position);
        }
    }
    read
}

/// How far the user's receipts say they have read (what `/notifications` reports as `read`).
pub fn read_by_receipts(maps: &Maps, room: &RoomId, user: &UserId) -> ReadUpTo {
    let mut read = ReadUpTo::default();
    let prefix = Key::new().s(room.as_str()).s(user.as_str()).prefix();
    for (key, value) in maps.roomreceipt.scan_prefix(prefix) {
        let Some(entry) = parse_entry(room, &key, &value) else {
            continue;
        };
        if entry.receipt_type != READ && entry.receipt_type != READ_PRIVATE {
            continue;
        }
        let position = entry.receipt.event_count;
        match entry.thread.as_str() {
            "" => read.unthreaded = read.unthreaded.max(position),
            "main" => read.main = read.main.max(position),
            root => {
                let slot = read.threads.entry(root.to_owned()).or_default();
                *slot = (*slot).max(position);
            }
        }
    }
    read
}

/// Records a user's own new event as read by them (in the event's batch).
pub fn mark_own(
    maps: &Maps,
    batch: &mut crate::storage::Batch,
    room: &RoomId,
    user: &UserId,
    thread: Option<&str>,
    count: u64,
) {
    let key = Key::new()
        .s(room.as_str())
        .s(user.as_str())
        .s(thread.unwrap_or("main"))
        .build();
    batch.put(&maps.own_read, key, count.to_be_bytes());
}
