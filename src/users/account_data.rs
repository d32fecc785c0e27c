//! Global and per-room account data, in stream order for incremental sync.

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::{
    error::Result,
    server::Server,
    storage::{
        Maps,
        keys::{self, Key},
    },
};

fn key(user: &UserId, room: Option<&RoomId>, kind: &str) -> Vec<u8> {
    Key::new()
        .s(user.as_str())
        .s(room.map_or("", |r| r.as_str()))
        .s(kind)
        .build()
}

pub fn set(
    server: &Server,
    user: &UserId,
    room: Option<&RoomId>,
    kind: &str,
    content: Value,
) -> Result<()> {
    let maps = &server.maps;
    let previous = get_record(maps, user, room, kind)?;
    let mut batch = server.db.batch();
    let pending = server.stream.next(maps, &mut batch);
    let count = pending.count();
    if let Some(old) = previous.as_ref().and_then(|r| r["count"].as_u64()) {
        batch.delete(
            &maps.usercount_accountdata,
            Key::new().s(user.as_str()).n(old).build(),
        );
    }
    batch.put(
        &maps.useraccountdata,
        key(user, room, kind),
        serde_json::to_vec(&json!({ "count": count, "content": content }))?,
    );
    batch.put(
        &maps.usercount_accountdata,
        Key::new().s(user.as_str()).n(count).build(),
        serde_json::to_vec(&json!([room.map_or("", |r| r.as_str()), kind]))?,
    );
    server.db.commit(batch)?;
    pending.finish(vec![user.to_owned()]);
    Ok(())
}

fn get_record(
    maps: &Maps,
    user: &UserId,
    room: Option<&RoomId>,
    kind: &str,
) -> Result<Option<Value>> {
    match maps.useraccountdata.get(key(user, room, kind))? {
        Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
        None => Ok(None),
    }
}

pub fn get(maps: &Maps, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
    Ok(get_record(maps, user, room, kind)?.map(|mut r| r["content"].take()))
}

/// Account data changed after `since`: `(room or "", type, content)`.
pub fn changes_since(
    maps: &Maps,
    user: &UserId,
    since: u64,
) -> Result<Vec<(String, String, Value)>> {
    let prefix = Key::new().s(user.as_str()).prefix();
    let from = Key::new()
        .s(user.as_str())
        .n(since.saturating_add(1))
        .build();
    let mut out = Vec::new();
    for (key, value) in maps.usercount_accountdata.scan_from(prefix, from, true) {
        if keys::tail_u64(&key).is_none_or(|c| c <= since) {
            continue;
        }
        let entry: (String, String) = serde_json::from_slice(&value)?;
        let room = <&RoomId>::try_from(entry.0.as_str()).ok();
        if let Some(content) = get(maps, user, room, &entry.1)? {
            out.push((entry.0, entry.1, content));
        }
    }
    Ok(out)
}

/// The users in a user's `m.ignored_user_list`.
pub fn ignored_users(
    maps: &Maps,
    user: &UserId,
) -> Result<std::collections::BTreeSet<ruma::OwnedUserId>> {
    Ok(get(maps, user, None, "m.ignored_user_list")?
        .and_then(|content| {
            content
                .get("ignored_users")
                .and_then(Value::as_object)
                .cloned()
        })
        .map(|users| {
            users
                .keys()
                .filter_map(|u| ruma::OwnedUserId::try_from(u.as_str()).ok())
                .collect()
        })
        .unwrap_or_default())
}
