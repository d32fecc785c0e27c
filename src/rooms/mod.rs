//! Rooms: events, state, membership, aliases. The append pipeline lives in [`timeline`].

pub mod alias;
pub mod create;
pub mod delayed;
pub mod membership;
pub mod pdu;
pub mod power;
pub mod receipts;
pub mod relations;
pub mod resolve;
pub mod state;
pub mod timeline;
pub mod version;
pub mod visibility;

use std::{collections::HashMap, num::NonZeroUsize, sync::Arc};

use lru::LruCache;
use parking_lot::Mutex;
use ruma::{
    EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::StateEventType,
};
use serde::{Deserialize, Serialize};

use self::{
    pdu::{Pdu, PduRef},
    state::{GroupId, StateMap, StateStore},
};
use crate::{
    config::Config,
    error::{Error, Result},
    storage::{Maps, keys::Key},
};

/// What the server keeps about a room besides its events.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomMeta {
    pub room_version: RoomVersionId,
    pub create_event_id: OwnedEventId,
}

/// What the server keeps about an event besides its PDU.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventMeta {
    pub room_id: OwnedRoomId,
    /// Stream position (orders the timeline; sync tokens compare against it).
    pub count: u64,
    pub short: u64,
    pub state_before: GroupId,
    pub state_after: GroupId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_state: Option<OwnedEventId>,
    /// The sending device and transaction id, echoed to that device only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<(OwnedDeviceId, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_by: Option<OwnedEventId>,
    /// Passed its auth checks but not the room's current state (a federation "soft failure"):
    /// kept so later events may build on it, but never shown to clients.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soft_failed: bool,
}

/// A user's current membership in a room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Membership {
    pub membership: String,
    pub count: u64,
    pub event_id: OwnedEventId,
    /// Stream position of the user's most recent join, for `shared` history visibility.
    #[serde(default)]
    pub last_join_count: Option<u64>,
}

pub struct Rooms {
    pub state: StateStore,
    pdus: Mutex<LruCache<OwnedEventId, PduRef>>,
    metas: Mutex<LruCache<OwnedEventId, Arc<EventMeta>>>,
    versions: Mutex<HashMap<OwnedRoomId, RoomVersionId>>,
    locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    local_members: Mutex<HashMap<OwnedRoomId, Arc<Vec<OwnedUserId>>>>,
    local_joined: Mutex<HashMap<OwnedRoomId, Arc<Vec<OwnedUserId>>>>,
    joined_counts: Mutex<HashMap<OwnedRoomId, u64>>,
    last_create_ts: std::sync::atomic::AtomicU64,
}

impl Rooms {
    pub fn new(maps: &Maps, config: &Config) -> Result<Self> {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            state: StateStore::new(maps, config.storage.state_cache_entries)?,
            pdus: Mutex::new(LruCache::new(cap(20_000))),
            metas: Mutex::new(LruCache::new(cap(20_000))),
            versions: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            local_members: Mutex::new(HashMap::new()),
            local_joined: Mutex::new(HashMap::new()),
            joined_counts: Mutex::new(HashMap::new()),
            last_create_ts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A timestamp for a new room's create event: now, or 1 ms after the previous one.
    pub fn next_create_timestamp(&self) -> ruma::MilliSecondsSinceUnixEpoch {
        use std::sync::atomic::Ordering;
        let now = crate::users::now_ms();
        let mut previous = self.last_create_ts.load(Ordering::Relaxed);
        loop {
            let next = now.max(previous + 1);
            match self.last_create_ts.compare_exchange(
                previous,
                next,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(next)),
                Err(actual) => previous = actual,
            }
        }
    }

    /// The lock that serialises appends to one room (its DAG is extended one event at a time).
    pub async fn lock(&self, room_id: &RoomId) -> tokio::sync::OwnedMutexGuard<()> {
        let mutex = self
            .locks
            .lock()
            .entry(room_id.to_owned())
            .or_default()
            .clone();
        mutex.lock_owned().await
    }

    pub fn exists(&self, maps: &Maps, room_id: &RoomId) -> Result<bool> {
        Ok(self.versions.lock().contains_key(room_id)
            || maps.roomid_meta.contains(room_id.as_bytes())?)
    }

    pub fn meta(&self, maps: &Maps, room_id: &RoomId) -> Result<Option<RoomMeta>> {
        match maps.roomid_meta.get(room_id.as_bytes())? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    /// The room's version, or `M_NOT_FOUND` for a room this server does not know.
    pub fn version(&self, maps: &Maps, room_id: &RoomId) -> Result<RoomVersionId> {
        if let Some(version) = self.versions.lock().get(room_id) {
            return Ok(version.clone());
        }
        let meta = self
            .meta(maps, room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        self.versions
            .lock()
            .insert(room_id.to_owned(), meta.room_version.clone());
        Ok(meta.room_version)
    }

    pub fn pdu(&self, maps: &Maps, event_id: &EventId) -> Result<Option<PduRef>> {
        if let Some(found) = self.pdus.lock().get(event_id) {
            return Ok(Some(found.clone()));
        }
        let Some(raw) = maps.eventid_pdu.get(event_id.as_bytes())? else {
            return Ok(None);
        };
        let json: ruma::CanonicalJsonObject = serde_json::from_slice(&raw)?;
        let pdu = Arc::new(Pdu::from_json(event_id.to_owned(), json)?);
        self.pdus.lock().put(event_id.to_owned(), pdu.clone());
        Ok(Some(pdu))
    }

    pub fn event_meta(&self, maps: &Maps, event_id: &EventId) -> Result<Option<Arc<EventMeta>>> {
        if let Some(found) = self.metas.lock().get(event_id) {
            return Ok(Some(found.clone()));
        }
        let Some(raw) = maps.eventid_meta.get(event_id.as_bytes())? else {
            return Ok(None);
        };
        let meta: Arc<EventMeta> = Arc::new(serde_json::from_slice(&raw)?);
        self.metas.lock().put(event_id.to_owned(), meta.clone());
        Ok(Some(meta))
    }

    fn forget_cached(&self, event_id: &EventId) {
        self.pdus.lock().pop(event_id);
        self.metas.lock().pop(event_id);
    }

    /// The room's current state group (0 for a room with no state yet).
    pub fn current_group(&self, maps: &Maps, room_id: &RoomId) -> Result<GroupId> {
        Ok(maps
            .roomid_stategroup
            .get(room_id.as_bytes())?
            .as_deref()
            .and_then(crate::storage::keys::u64_from)
            .unwrap_or(0))
    }

    pub fn load_state(&self, maps: &Maps, group: GroupId) -> Result<Arc<StateMap>> {
        self.state.load(maps, group)
    }

    /// One state event of a group.
    pub fn state_event(
        &self,
        maps: &Maps,
        state: &StateMap,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<PduRef>> {
        let Some(short_key) = self.state.statekey_short(maps, kind, state_key)? else {
            return Ok(None);
        };
        let Some(short_event) = state.get(&short_key) else {
            return Ok(None);
        };
        let event_id = self.state.event_id_of(maps, *short_event)?;
        self.pdu(maps, &event_id)
    }

    /// One event of the room's current state.
    pub fn current_state_event(
        &self,
        maps: &Maps,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<PduRef>> {
        let state = self.load_state(maps, self.current_group(maps, room_id)?)?;
        self.state_event(maps, &state, kind, state_key)
    }

    /// Every event of a state group.
    pub fn state_events(&self, maps: &Maps, state: &StateMap) -> Result<Vec<PduRef>> {
        let mut events = Vec::with_capacity(state.len());
        for short_event in state.values() {
            let event_id = self.state.event_id_of(maps, *short_event)?;
            if let Some(pdu) = self.pdu(maps, &event_id)? {
                events.push(pdu);
            }
        }
        Ok(events)
    }

    pub fn membership(
        &self,
        maps: &Maps,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<Membership>> {
        let key = Key::new().s(room_id.as_str()).s(user_id.as_str()).build();
        match maps.roomuserid_membership.get(key)? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    pub fn is_joined(&self, maps: &Maps, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self
            .membership(maps, room_id, user_id)?
            .is_some_and(|m| m.membership == "join"))
    }

    /// Every user with a membership record in the room, with that record.
    pub fn members(&self, maps: &Maps, room_id: &RoomId) -> Result<Vec<(OwnedUserId, Membership)>> {
        let prefix = Key::new().s(room_id.as_str()).prefix();
        let plen = prefix.len();
        maps.roomuserid_membership
            .scan_prefix(prefix)
            .map(|(key, value)| {
                let user = std::str::from_utf8(&key[plen..])
                    .ok()
                    .and_then(|s| OwnedUserId::try_from(s).ok())
                    .ok_or_else(|| Error::internal("corrupt membership key"))?;
                Ok((user, serde_json::from_slice(&value)?))
            })
            .collect()
    }

    /// The rooms of a user with their membership records.
    pub fn rooms_of(
        &self,
        maps: &Maps,
        user_id: &UserId,
    ) -> Result<Vec<(OwnedRoomId, Membership)>> {
        let prefix = Key::new().s(user_id.as_str()).prefix();
        let plen = prefix.len();
        maps.userroomid_membership
            .scan_prefix(prefix)
            .map(|(key, value)| {
                let room = std::str::from_utf8(&key[plen..])
                    .ok()
                    .and_then(|s| OwnedRoomId::try_from(s).ok())
                    .ok_or_else(|| Error::internal("corrupt membership key"))?;
                Ok((room, serde_json::from_slice(&value)?))
            })
            .collect()
    }

    /// Local users to wake for a new event: joined and invited (cached per room).
    pub fn local_interested(
        &self,
        server: &crate::server::Server,
        room_id: &RoomId,
    ) -> Result<Arc<Vec<OwnedUserId>>> {
        if let Some(found) = self.local_members.lock().get(room_id) {
            return Ok(found.clone());
        }
        let users: Vec<OwnedUserId> = self
            .members(&server.maps, room_id)?
            .into_iter()
            .filter(|(user, m)| {
                server.is_local(user.server_name())
                    && matches!(m.membership.as_str(), "join" | "invite" | "knock")
            })
            .map(|(user, _)| user)
            .collect();
        let users = Arc::new(users);
        self.local_members
            .lock()
            .insert(room_id.to_owned(), users.clone());
        Ok(users)
    }

    pub fn members_changed(&self, room_id: &RoomId) {
        self.local_members.lock().remove(room_id);
        self.local_joined.lock().remove(room_id);
        self.joined_counts.lock().remove(room_id);
    }

    /// Local users joined to the room (cached per room).
    pub fn local_joined(
        &self,
        server: &crate::server::Server,
        room_id: &RoomId,
    ) -> Result<Arc<Vec<OwnedUserId>>> {
        if let Some(found) = self.local_joined.lock().get(room_id) {
            return Ok(found.clone());
        }
        let users: Vec<OwnedUserId> = self
            .members(&server.maps, room_id)?
            .into_iter()
            .filter(|(user, m)| server.is_local(user.server_name()) && m.membership == "join")
            .map(|(user, _)| user)
            .collect();
        let users = Arc::new(users);
        self.local_joined
            .lock()
            .insert(room_id.to_owned(), users.clone());
        Ok(users)
    }

    /// How many users (of any server) are joined to the room (cached per room).
    pub fn joined_count(&self, server: &crate::server::Server, room_id: &RoomId) -> Result<u64> {
        if let Some(count) = self.joined_counts.lock().get(room_id) {
            return Ok(*count);
        }
        let count = self
            .members(&server.maps, room_id)?
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .count() as u64;
        self.joined_counts.lock().insert(room_id.to_owned(), count);
        Ok(count)
    }

    /// The stream position of the newest event in the room.
    pub fn last_count(&self, maps: &Maps, room_id: &RoomId) -> Result<u64> {
        Ok(maps
            .roomcount_eventid
            .last_with_prefix(Key::new().s(room_id.as_str()).prefix())
            .and_then(|(key, _)| crate::storage::keys::tail_u64(&key))
            .unwrap_or(0))
    }

    /// Timeline events with `from < count <= to`, newest first, at most `limit`.
    pub fn timeline_desc(
        &self,
        maps: &Maps,
        room_id: &RoomId,
        from_exclusive: u64,
        to_inclusive: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PduRef)>> {
        let prefix = Key::new().s(room_id.as_str()).prefix();
        let start = Key::new().s(room_id.as_str()).n(to_inclusive).build();
        let mut out = Vec::new();
        for (key, value) in maps.roomcount_eventid.scan_from(prefix, start, false) {
            let Some(count) = crate::storage::keys::tail_u64(&key) else {
                continue;
            };
            if count <= from_exclusive || out.len() >= limit {
                break;
            }
            let event_id = parse_event_id(&value)?;
            if let Some(pdu) = self.pdu(maps, &event_id)? {
                out.push((count, pdu));
            }
        }
        Ok(out)
    }

    /// Timeline events with `from <= count < to`, oldest first, at most `limit`.
    pub fn timeline_asc(
        &self,
        maps: &Maps,
        room_id: &RoomId,
        from_inclusive: u64,
        to_exclusive: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PduRef)>> {
        let prefix = Key::new().s(room_id.as_str()).prefix();
        let start = Key::new().s(room_id.as_str()).n(from_inclusive).build();
        let mut out = Vec::new();
        for (key, value) in maps.roomcount_eventid.scan_from(prefix, start, true) {
            let Some(count) = crate::storage::keys::tail_u64(&key) else {
                continue;
            };
            if count >= to_exclusive || out.len() >= limit {
                break;
            }
            let event_id = parse_event_id(&value)?;
            if let Some(pdu) = self.pdu(maps, &event_id)? {
                out.push((count, pdu));
            }
        }
        Ok(out)
    }

    /// The state group in effect at stream position `count` (after every event `<= count`).
    pub fn group_at(&self, maps: &Maps, room_id: &RoomId, count: u64) -> Result<GroupId> {
        match self.timeline_desc(maps, room_id, 0, count, 1)?.first() {
            Some((_, pdu)) => Ok(self
                .event_meta(maps, &pdu.event_id)?
                .map_or(0, |m| m.state_after)),
            None => Ok(0),
        }
    }
}

pub fn parse_event_id(raw: &[u8]) -> Result<OwnedEventId> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| OwnedEventId::try_from(s).ok())
        .ok_or_else(|| Error::internal("corrupt event id in storage"))
}
