//! Presence: online / unavailable / offline, a status message, last activity. Syncing marks a
//! user online; a user who stops syncing goes offline after [`OFFLINE_AFTER`].

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{error::Result, server::Server, storage::Maps, users::now_ms};

/// Active within this long counts as `currently_active`.
const ACTIVE_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Online users become `unavailable` after this long without activity.
const IDLE_AFTER_MS: u64 = 5 * 60 * 1000;
/// A user who has not synced for this long is marked offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Presence {
    pub presence: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<String>,
    pub last_active_ts: u64,
    /// Stream position of the last change.
    pub count: u64,
}

#[derive(Default)]
pub struct PresenceTracker {
    last_sync: Mutex<HashMap<OwnedUserId, Instant>>,
}

pub fn get(maps: &Maps, user: &UserId) -> Result<Option<Presence>> {
    match maps.userid_presence.get(user.as_bytes())? {
        Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
        None => Ok(None),
    }
}

/// Sets presence (and optionally the status message) and wakes the user's room-mates.
pub fn set(
    server: &Server,
    user: &UserId,
    presence: &str,
    status_msg: Option<Option<String>>,
) -> Result<()> {
    let maps = &server.maps;
    let previous = get(maps, user)?;
    let status_msg = match status_msg {
        Some(msg) => msg.filter(|m| !m.is_empty()),
        None => previous.as_ref().and_then(|p| p.status_msg.clone()),
    };
    let mut batch = server.db.batch();
    let pending = server.stream.next(maps, &mut batch);
    let record = Presence {
        presence: presence.to_owned(),
        status_msg,
        last_active_ts: now_ms(),
        count: pending.count(),
    };
    if let Some(previous) = &previous {
        batch.delete(&maps.count_presence, previous.count.to_be_bytes());
    }
    batch.put(
        &maps.userid_presence,
        user.as_bytes(),
        serde_json::to_vec(&record)?,
    );
    batch.put(
        &maps.count_presence,
        record.count.to_be_bytes(),
        user.as_bytes(),
    );
    server.db.commit(batch)?;
    pending.finish(room_mates(server, user)?);
    // Other servers sharing a room with our user hear of it.
    if server.is_local(user.server_name()) && crate::federation::enabled(server) {
        let mut entry = json!({
            "user_id": user,
            "presence": record.presence,
            "last_active_ago": 0,
            "currently_active": record.presence == "online",
        });
        if let Some(msg) = &record.status_msg {
            entry["status_msg"] = json!(msg);
        }
        let edu = json!({ "edu_type": "m.presence", "content": { "push": [entry] } });
        server.federation.sender.queue_user_edu(server, user, edu);
    }
    Ok(())
}

/// A sync by the user: marks them online (or `unavailable` if they ask) and remembers when.
pub fn touch(server: &Server, user: &UserId, requested: &str) -> Result<()> {
    server
        .presence
        .last_sync
        .lock()
        .insert(user.to_owned(), Instant::now());
    if requested == "offline" {
        return Ok(());
    }
    let current = get(&server.maps, user)?;
    let changed = current.as_ref().is_none_or(|p| p.presence != requested);
    // Activity alone is only recorded once a minute, without waking anyone.
    let stale = current
        .as_ref()
        .is_some_and(|p| now_ms().saturating_sub(p.last_active_ts) > 60_000);
    if changed {
        set(server, user, requested, None)?;
    } else if stale && let Some(mut record) = current {
        record.last_active_ts = now_ms();
        server.maps.userid_presence.put(
            &server.db,
            user.as_bytes(),
            serde_json::to_vec(&record)?,
        )?;
    }
    Ok(())
}

/// Marks users offline who stopped syncing. Called periodically.
pub fn reap(server: &Server) {
    let expired: Vec<OwnedUserId> = {
        let mut last_sync = server.presence.last_sync.lock();
        let expired: Vec<OwnedUserId> = last_sync
            .iter()
            .filter(|(_, at)| at.elapsed() > OFFLINE_AFTER)
            .map(|(u, _)| u.clone())
            .collect();
        for user in &expired {
            last_sync.remove(user);
        }
        expired
    };
    for user in expired {
        let online = get(&server.maps, &user)
            .ok()
            .flatten()
            .is_some_and(|p| p.presence != "offline");
        if online && let Err(error) = set(server, &user, "offline", None) {
            tracing::warn!(%user, %error, "could not mark user offline");
        }
    }
}

/// Local users who share a room with `user` (and the user).
pub fn room_mates(server: &Server, user: &UserId) -> Result<Vec<OwnedUserId>> {
    let mut users = BTreeSet::new();
    users.insert(user.to_owned());
    for (room, membership) in server.rooms.rooms_of(&server.maps, user)? {
        if membership.membership == "join" {
            users.extend(server.rooms.local_joined(server, &room)?.iter().cloned());
        }
    }
    Ok(users.into_iter().collect())
}

/// The `m.presence` content as clients see it now.
pub fn content(server: &Server, user: &UserId, record: &Presence) -> Value {
    let ago = now_ms().saturating_sub(record.last_active_ts);
    let presence = if record.presence == "online" && ago > IDLE_AFTER_MS {
        "unavailable"
    } else {
        record.presence.as_str()
    };
    let profile = server.users.profile(&server.maps, user).unwrap_or_default();
    let mut content = json!({
        "presence": presence,
        "last_active_ago": ago,
        "currently_active": presence == "online" && ago < ACTIVE_WINDOW_MS,
    });
    if let Some(msg) = &record.status_msg {
        content["status_msg"] = json!(msg);
    }
    if let Some(name) = profile.displayname {
        content["displayname"] = json!(name);
    }
    if let Some(avatar) = profile.avatar_url {
        content["avatar_url"] = json!(avatar);
    }
    content
}

/// Users whose presence changed in `(since, to]`.
pub fn changed(maps: &Maps, since: u64, to: u64) -> Vec<(OwnedUserId, Presence)> {
    let mut out = Vec::new();
    let from = since.saturating_add(1).to_be_bytes().to_vec();
    for (key, value) in maps.count_presence.scan_from(Vec::new(), from, true) {
        let Some(count) = crate::storage::keys::u64_from(&key) else {
            continue;
        };
        if count > to {
            break;
        }
        let Some(user) = std::str::from_utf8(&value)
            .ok()
            .and_then(|s| OwnedUserId::try_from(s).ok())
        else {
            continue;
        };
        if let Ok(Some(record)) = get(maps, &user) {
            out.push((user, record));
        }
    }
    out
}
