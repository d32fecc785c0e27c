//! Typing notifications: in memory only, with expiry.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{error::Result, server::Server};

#[derive(Default)]
pub struct Typing {
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Stream position of the last change.
    count: u64,
}

/// Longest typing timeout honoured, whatever the client asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

impl Typing {
    pub fn set(
        &self,
        server: &Server,
        room_id: &RoomId,
        user: &UserId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let pending = server.stream.next_ephemeral();
        {
            let mut rooms = self.rooms.lock();
            let room = rooms.entry(room_id.to_owned()).or_default();
            match timeout {
                Some(timeout) => {
                    room.users
                        .insert(user.to_owned(), Instant::now() + timeout.min(MAX_TIMEOUT));
                }
                None => {
                    room.users.remove(user);
                }
            }
            room.count = pending.count();
        }
        let users = (*server.rooms.local_interested(server, room_id)?).clone();
        pending.finish(users);
        if server.is_local(user.server_name()) {
            let edu = serde_json::json!({
                "edu_type": "m.typing",
                "content": { "room_id": room_id, "user_id": user, "typing": timeout.is_some() },
            });
            server
                .federation
                .sender
                .queue_room_edu(server, room_id, edu)?;
        }
        Ok(())
    }

    /// Users typing in the room now and the position of the last change.
    pub fn get(&self, room_id: &RoomId) -> (u64, Vec<OwnedUserId>) {
        let rooms = self.rooms.lock();
        match rooms.get(room_id) {
            Some(room) => {
                let now = Instant::now();
                (
                    room.count,
                    room.users
                        .iter()
                        .filter(|(_, until)| **until > now)
                        .map(|(u, _)| u.clone())
                        .collect(),
                )
            }
            None => (0, Vec::new()),
        }
    }

    /// Removes expired entries and wakes the rooms' members. Called periodically.
    pub fn expire(&self, server: &Server) {
        let now = Instant::now();
        let expired: Vec<OwnedRoomId> = {
            let rooms = self.rooms.lock();
            rooms
                .iter()
                .filter(|(_, room)| room.users.values().any(|until| *until <= now))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for room_id in expired {
            let pending = server.stream.next_ephemeral();
            {
                let mut rooms = self.rooms.lock();
                if let Some(room) = rooms.get_mut(&room_id) {
                    room.users.retain(|_, until| *until > now);
                    room.count = pending.count();
                    if room.users.is_empty() {
                        // Keep the entry (with its count) so incremental syncs see the stop.
                    }
                }
            }
            let users = server
                .rooms
                .local_interested(server, &room_id)
                .map(|u| (*u).clone())
                .unwrap_or_default();
            pending.finish(users);
        }
    }
}
