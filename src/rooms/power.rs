//! Power levels as the API layer needs them (the auth rules enforce them again on every event).

use ruma::state_res::events::{RoomCreateEvent, RoomPowerLevelsEvent};
use ruma::{
    Int, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
};

use super::{pdu::PduRef, state::StateMap};
use crate::{
    error::{Error, Result},
    server::Server,
};

/// A room's power levels at some state, with the creators (who outrank everyone since v12).
pub struct PowerLevels {
    levels: Option<RoomPowerLevelsEvent<PduRef>>,
    creators: std::collections::HashSet<ruma::OwnedUserId>,
    rules: AuthorizationRules,
}

impl PowerLevels {
    pub fn at(server: &Server, room_id: &RoomId, state: &StateMap) -> Result<Self> {
        let version = server.rooms.version(&server.maps, room_id)?;
        let rules = super::version::rules(&version)?.authorization;
        let maps = &server.maps;
        let levels = server
            .rooms
            .state_event(maps, state, &StateEventType::RoomPowerLevels, "")?
            .map(RoomPowerLevelsEvent::new);
        let create = server
            .rooms
            .state_event(maps, state, &StateEventType::RoomCreate, "")?;
        let creators = match create {
            Some(create) => RoomCreateEvent::new(create)
                .creators(&rules)
                .unwrap_or_default(),
            None => Default::default(),
        };
        Ok(Self {
            levels,
            creators,
            rules,
        })
    }

    pub fn current(server: &Server, room_id: &RoomId) -> Result<Self> {
        let group = server.rooms.current_group(&server.maps, room_id)?;
        let state = server.rooms.load_state(&server.maps, group)?;
        Self::at(server, room_id, &state)
    }

    /// The user's level; `None` means infinite (a creator in a v12+ room).
    pub fn user(&self, user: &UserId) -> Option<Int> {
        if self.rules.explicitly_privilege_room_creators && self.creators.contains(user) {
            return None;
        }
        Some(match &self.levels {
            Some(levels) => levels
                .user_power_level(user, &self.rules)
                .unwrap_or_default(),
            // Without a power levels event the creators have 100 and everyone else 0.
            None if self.creators.contains(user) => Int::from(100),
            None => Int::from(0),
        })
    }

    fn field(&self, name: &str, default: i32) -> Int {
        let Some(levels) = &self.levels else {
            return Int::from(default);
        };
        let content: serde_json::Value =
            serde_json::from_str(ruma::state_res::Event::content(&**levels).get())
                .unwrap_or_default();
        content
            .get(name)
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .and_then(|v| Int::try_from(v).ok())
            .unwrap_or(Int::from(default))
    }

    /// The level required to send an event of this type.
    pub fn for_event(&self, kind: &TimelineEventType, is_state: bool) -> Int {
        match &self.levels {
            Some(levels) => levels
                .event_power_level(kind, is_state.then_some(""), &self.rules)
                .unwrap_or(Int::from(if is_state { 50 } else { 0 })),
            None => Int::from(0),
        }
    }

    pub fn has(&self, user: &UserId, required: Int) -> bool {
        self.user(user).is_none_or(|level| level >= required)
    }

    pub fn can_redact_others(&self, user: &UserId) -> bool {
        self.has(user, self.field("redact", 50))
    }

    pub fn can_invite(&self, user: &UserId) -> bool {
        self.has(user, self.field("invite", 0))
    }

    /// Whether `user` outranks `target` (kick/ban need a strictly higher level).
    pub fn outranks(&self, user: &UserId, target: &UserId) -> bool {
        match (self.user(user), self.user(target)) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => a > b,
            _ => false,
        }
    }

    pub fn require(&self, user: &UserId, required: Int, action: &str) -> Result<()> {
        if self.has(user, required) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "You don't have permission to {action}"
            )))
        }
    }
}
