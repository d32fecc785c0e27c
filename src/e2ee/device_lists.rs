//! Device lists: who a client must re-query (`changed`) or may stop tracking (`left`), for
//! `/sync` and `/keys/changes`.
//!
//! For a window `(since, to]`:
//! - `changed`: users sharing a room with the requester at `to` whose devices, device keys or
//!   cross-signing keys changed in the window (`keychanges`; the requester too), and users who
//!   started sharing a room with the requester in the window (their join, or the requester's);
//! - `left`: users who shared a room with the requester at `since` and share none at `to`.
//!
//! Sharing a room means both are joined. Membership at a position comes from the membership
//! record when it is not newer than the position, else from the room state at that position.

use std::collections::BTreeSet;

use ruma::{OwnedUserId, RoomId, UserId, events::StateEventType};

use super::{DeviceLists, PRIVATE};
use crate::{
    error::Result,
    rooms::Membership,
    server::Server,
    storage::keys::{SEP, u64_from},
};

/// Whether `user` is joined to `room` at stream position `at`; `record` is the user's current
/// membership record in the room, when the caller has it.
fn joined_at(
    server: &Server,
    room: &RoomId,
    user: &UserId,
    at: u64,
    record: Option<&Membership>,
) -> Result<bool> {
    let fetched;
    let record = match record {
        Some(record) => Some(record),
        None => {
            fetched = server.rooms.membership(&server.maps, room, user)?;
            fetched.as_ref()
        }
    };
    let Some(record) = record else {
        return Ok(false);
    };
    if record.count <= at {
        return Ok(record.membership == "join");
    }
    // The membership changed after `at`: read the room's state at `at`.
    let group = server.rooms.group_at(&server.maps, room, at)?;
    let state = server.rooms.load_state(&server.maps, group)?;
    Ok(server
        .rooms
        .state_event(
            &server.maps,
            &state,
            &StateEventType::RoomMember,
            user.as_str(),
        )?
        .and_then(|event| event.membership())
        .is_some_and(|m| m == "join"))
}

/// Users whose device list changed in `(since, to]`, with whether each change is private
/// (only the user's own devices care).
fn key_changes(server: &Server, since: u64, to: u64) -> Vec<(OwnedUserId, bool)> {
    let mut out = Vec::new();
    let from = since.saturating_add(1).to_be_bytes().to_vec();
    for (key, value) in server.maps.keychanges.scan_from(Vec::new(), from, true) {
        let Some(count) = u64_from(&key) else {
            continue;
        };
        if count > to {
            break;
        }
        let mut parts = value.splitn(2, |b| *b == SEP);
        let user = parts
            .next()
            .and_then(|u| std::str::from_utf8(u).ok())
            .and_then(|u| OwnedUserId::try_from(u).ok());
        let private = parts.next() == Some(PRIVATE.as_bytes());
        if let Some(user) = user {
            out.push((user, private));
        }
    }
    out
}

/// Device-list changes for `user` in `(since, to]`.
pub fn changes(server: &Server, user: &UserId, since: u64, to: u64) -> Result<DeviceLists> {
    if to <= since {
        return Ok(DeviceLists::default());
    }
    let maps = &server.maps;
    let rooms = server.rooms.rooms_of(maps, user)?;
    // Users whose sharing of a room with `user` started or ended in the window.
    let mut started = BTreeSet::new();
    let mut ended = BTreeSet::new();
    for (room, mine) in &rooms {
        if server.rooms.last_count(maps, room)? <= since {
            continue; // nothing happened in the room
        }
        let me_then = joined_at(server, room, user, since, Some(mine))?;
        let me_now = joined_at(server, room, user, to, Some(mine))?;
        if !me_then && !me_now {
            continue;
        }
        let i_changed = me_then != me_now;
        for (other, theirs) in server.rooms.members(maps, room)? {
            if other == *user || (!i_changed && theirs.count <= since) {
                continue;
            }
            let then = me_then && joined_at(server, room, &other, since, Some(&theirs))?;
            let now = me_now && joined_at(server, room, &other, to, Some(&theirs))?;
            if now && !then {
                started.insert(other);
            } else if then && !now {
                ended.insert(other);
            }
        }
    }
    // Rooms `user` is joined to at `to`, to test whether another user shares one.
    let mut joined_now = Vec::new();
    for (room, mine) in &rooms {
        if joined_at(server, room, user, to, Some(mine))? {
            joined_now.push(room.clone());
        }
    }
    let shares_now = |other: &UserId| -> Result<bool> {
        for room in &joined_now {
            if joined_at(server, room, other, to, None)? {
                return Ok(true);
            }
        }
        Ok(false)
    };

    let mut changed: BTreeSet<OwnedUserId> = started;
    for (other, private) in key_changes(server, since, to) {
        let relevant =
            other == *user || (!private && !changed.contains(&other) && shares_now(&other)?);
        if relevant {
            changed.insert(other);
        }
    }
    let mut left = Vec::new();
    for other in ended {
        if !changed.contains(&other) && !shares_now(&other)? {
            left.push(other);
        }
    }
    Ok(DeviceLists {
        changed: changed.into_iter().collect(),
        left,
    })
}
