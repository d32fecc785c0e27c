//! Room state as snapshots ("state groups") stored as diffs over interned ids.
//!
//! A state group maps `(type, state_key)` to an event id. Both are interned to `u64` short ids
//! (`statekey_short`, `eventid_short`), so a group is a map `u64 -> u64`. Each group is stored
//! as a diff against its parent group; every [`SNAPSHOT_EVERY`] links a full snapshot is written,
//! which bounds the chain walked on a cache miss. Loaded groups are persistent maps (`imbl`), so
//! deriving a child group from a cached parent shares structure instead of copying the map.

use std::{num::NonZeroUsize, sync::Arc};

use imbl::HashMap as PMap;
use lru::LruCache;
use parking_lot::Mutex;
use ruma::{OwnedEventId, events::StateEventType};

use crate::{
    error::{Error, Result},
    storage::{Batch, Db, Maps, keys},
};

pub type ShortStateKey = u64;
pub type ShortEventId = u64;
pub type GroupId = u64;
pub type StateMap = PMap<ShortStateKey, ShortEventId>;

/// Full snapshot after this many diffs in a chain.
const SNAPSHOT_EVERY: u32 = 64;

pub struct StateStore {
    groups: Mutex<LruCache<GroupId, Arc<StateMap>>>,
    statekeys: Mutex<LruCache<(StateEventType, String), ShortStateKey>>,
    statekeys_rev: Mutex<LruCache<ShortStateKey, (StateEventType, String)>>,
    eventids: Mutex<LruCache<ShortEventId, OwnedEventId>>,
    /// Serialises interning of new state keys, so one key never gets two short ids.
    intern_lock: Mutex<()>,
    next_short: std::sync::atomic::AtomicU64,
}

/// A parsed group record.
struct Diff {
    parent: GroupId,
    depth: u32,
    added: Vec<(ShortStateKey, ShortEventId)>,
    removed: Vec<ShortStateKey>,
}

impl StateStore {
    pub fn new(maps: &Maps, cache_entries: usize) -> Result<Self> {
        let next = maps
            .global
            .get(b"short_counter")?
            .as_deref()
            .and_then(keys::u64_from)
            .unwrap_or(0);
        let cap = |n: usize| NonZeroUsize::new(n.max(16)).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            groups: Mutex::new(LruCache::new(cap(cache_entries))),
            statekeys: Mutex::new(LruCache::new(cap(100_000))),
            statekeys_rev: Mutex::new(LruCache::new(cap(100_000))),
            eventids: Mutex::new(LruCache::new(cap(100_000))),
            intern_lock: Mutex::new(()),
            next_short: std::sync::atomic::AtomicU64::new(next + 1),
        })
    }

    /// A fresh short id (for events and groups); persisted by raising `short_counter` in `batch`.
    pub fn allocate_short(&self, maps: &Maps, batch: &mut Batch) -> u64 {
        let id = self
            .next_short
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        batch.raise(&maps.global, b"short_counter", id);
        id
    }

    /// The short id of a state key, if it was ever used.
    pub fn statekey_short(
        &self,
        maps: &Maps,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<ShortStateKey>> {
        let cache_key = (kind.clone(), state_key.to_owned());
        if let Some(short) = self.statekeys.lock().get(&cache_key) {
            return Ok(Some(*short));
        }
        let key = keys::Key::new().s(&kind.to_string()).s(state_key).build();
        let short = maps
            .statekey_short
            .get(&key)?
            .as_deref()
            .and_then(keys::u64_from);
        if let Some(short) = short {
            self.statekeys.lock().put(cache_key, short);
        }
        Ok(short)
    }

    /// The short id of a state key, interning it (committed immediately) if new.
    pub fn intern_statekey(
        &self,
        db: &Db,
        maps: &Maps,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<ShortStateKey> {
        if let Some(short) = self.statekey_short(maps, kind, state_key)? {
            return Ok(short);
        }
        let _guard = self.intern_lock.lock();
        if let Some(short) = self.statekey_short(maps, kind, state_key)? {
            return Ok(short);
        }
        let mut batch = db.batch();
        let short = self.allocate_short(maps, &mut batch);
        let key = keys::Key::new().s(&kind.to_string()).s(state_key).build();
        batch.put(&maps.statekey_short, &key, short.to_be_bytes());
        batch.put(&maps.short_statekey, short.to_be_bytes(), &key);
        db.commit(batch)?;
        self.statekeys
            .lock()
            .put((kind.clone(), state_key.to_owned()), short);
        Ok(short)
    }

    /// Short ids of many state keys at once, interning the new ones in one commit (a remote
    /// join brings thousands of member keys).
    pub fn intern_statekeys(
        &self,
        db: &Db,
        maps: &Maps,
        wanted: &[(StateEventType, String)],
    ) -> Result<Vec<ShortStateKey>> {
        let mut out = Vec::with_capacity(wanted.len());
        let mut missing = Vec::new();
        for (i, (kind, state_key)) in wanted.iter().enumerate() {
            match self.statekey_short(maps, kind, state_key)? {
                Some(short) => out.push(short),
                None => {
                    out.push(0);
                    missing.push(i);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let _guard = self.intern_lock.lock();
        let mut batch = db.batch();
        let mut fresh = Vec::new();
        for i in missing {
            let (kind, state_key) = &wanted[i];
            // Interned by someone else meanwhile (or twice in this list)?
            if let Some(short) = self.statekey_short(maps, kind, state_key)? {
                out[i] = short;
                continue;
            }
            if let Some((_, short)) =
                fresh
                    .iter()
                    .find(|((k, sk), _): &&((StateEventType, String), u64)| {
                        k == kind && sk == state_key
                    })
            {
                out[i] = *short;
                continue;
            }
            let short = self.allocate_short(maps, &mut batch);
            let key = keys::Key::new().s(&kind.to_string()).s(state_key).build();
            batch.put(&maps.statekey_short, &key, short.to_be_bytes());
            batch.put(&maps.short_statekey, short.to_be_bytes(), &key);
            fresh.push(((kind.clone(), state_key.clone()), short));
            out[i] = short;
        }
        db.commit(batch)?;
        let mut cache = self.statekeys.lock();
        for (key, short) in fresh {
            cache.put(key, short);
        }
        Ok(out)
    }

    pub fn statekey_of(
        &self,
        maps: &Maps,
        short: ShortStateKey,
    ) -> Result<(StateEventType, String)> {
        if let Some(found) = self.statekeys_rev.lock().get(&short) {
            return Ok(found.clone());
        }
        let raw = maps
            .short_statekey
            .get(short.to_be_bytes())?
            .ok_or_else(|| Error::internal(format_args!("unknown short state key {short}")))?;
        let mut parts = keys::split(&raw);
        let kind = parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or_default();
        let state_key = raw
            .get(kind.len() + 1..)
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or_default();
        let found = (StateEventType::from(kind), state_key.to_owned());
        self.statekeys_rev.lock().put(short, found.clone());
        Ok(found)
    }

    /// Records the short id of a new event in `batch`.
    pub fn intern_event(
        &self,
        maps: &Maps,
        batch: &mut Batch,
        event_id: &OwnedEventId,
    ) -> ShortEventId {
        let short = self.allocate_short(maps, batch);
        batch.put(
            &maps.eventid_short,
            event_id.as_bytes(),
            short.to_be_bytes(),
        );
        batch.put(
            &maps.short_eventid,
            short.to_be_bytes(),
            event_id.as_bytes(),
        );
        self.eventids.lock().put(short, event_id.clone());
        short
    }

    /// The event's short id: the one it got when it was stored before (e.g. as an outlier),
    /// else a new one recorded in `batch`.
    pub fn event_short_or_intern(
        &self,
        maps: &Maps,
        batch: &mut Batch,
        event_id: &OwnedEventId,
    ) -> Result<ShortEventId> {
        match self.event_short(maps, event_id)? {
            Some(short) => Ok(short),
            None => Ok(self.intern_event(maps, batch, event_id)),
        }
    }

    pub fn event_short(
        &self,
        maps: &Maps,
        event_id: &ruma::EventId,
    ) -> Result<Option<ShortEventId>> {
        Ok(maps
            .eventid_short
            .get(event_id.as_bytes())?
            .as_deref()
            .and_then(keys::u64_from))
    }

    pub fn event_id_of(&self, maps: &Maps, short: ShortEventId) -> Result<OwnedEventId> {
        if let Some(found) = self.eventids.lock().get(&short) {
            return Ok(found.clone());
        }
        let raw = maps
            .short_eventid
            .get(short.to_be_bytes())?
            .ok_or_else(|| Error::internal(format_args!("unknown short event id {short}")))?;
        let event_id = std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| OwnedEventId::try_from(s).ok())
            .ok_or_else(|| Error::internal("corrupt short_eventid entry"))?;
        self.eventids.lock().put(short, event_id.clone());
        Ok(event_id)
    }

    /// Loads a state group as a map (walking its diff chain on a cache miss).
    pub fn load(&self, maps: &Maps, group: GroupId) -> Result<Arc<StateMap>> {
        if group == 0 {
            return Ok(Arc::new(StateMap::new()));
        }
        if let Some(found) = self.groups.lock().get(&group) {
            return Ok(found.clone());
        }
        // Walk up to a cached ancestor or a full snapshot, then apply diffs downwards.
        let mut chain = Vec::new();
        let mut cursor = group;
        let mut base = Arc::new(StateMap::new());
        while cursor != 0 {
            if let Some(found) = self.groups.lock().get(&cursor) {
                base = found.clone();
                break;
            }
            let diff = self.read_diff(maps, cursor)?;
            let parent = diff.parent;
            chain.push((cursor, diff));
            cursor = parent;
        }
        let mut map = (*base).clone();
        let mut result = base;
        for (id, diff) in chain.into_iter().rev() {
            for key in diff.removed {
                map.remove(&key);
            }
            for (key, event) in diff.added {
                map.insert(key, event);
            }
            result = Arc::new(map.clone());
            self.groups.lock().put(id, result.clone());
        }
        Ok(result)
    }

    /// Writes a new group derived from `parent` with `changes` (`None` removes a key).
    pub fn derive(
        &self,
        maps: &Maps,
        batch: &mut Batch,
        parent: GroupId,
        changes: &[(ShortStateKey, Option<ShortEventId>)],
    ) -> Result<(GroupId, Arc<StateMap>)> {
        let parent_map = self.load(maps, parent)?;
        let mut map = (*parent_map).clone();
        for (key, event) in changes {
            match event {
                Some(event) => map.insert(*key, *event),
                None => map.remove(key),
            };
        }
        let parent_depth = if parent == 0 {
            0
        } else {
            self.read_diff(maps, parent)?.depth
        };
        let id = self.allocate_short(maps, batch);
        let diff = if parent == 0 || parent_depth + 1 >= SNAPSHOT_EVERY {
            Diff {
                parent: 0,
                depth: 0,
                added: map.iter().map(|(k, v)| (*k, *v)).collect(),
                removed: vec![],
            }
        } else {
            Diff {
                parent,
                depth: parent_depth + 1,
                added: changes
                    .iter()
                    .filter_map(|(k, v)| v.map(|v| (*k, v)))
                    .collect(),
                removed: changes
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| *k)
                    .collect(),
            }
        };
        batch.put(&maps.stategroup_diff, id.to_be_bytes(), encode(&diff));
        let map = Arc::new(map);
        self.groups.lock().put(id, map.clone());
        Ok((id, map))
    }

    /// Writes a group holding exactly `state` (used when state comes from resolution or
    /// federation rather than a single change).
    pub fn store_full(
        &self,
        maps: &Maps,
        batch: &mut Batch,
        state: StateMap,
    ) -> (GroupId, Arc<StateMap>) {
        let id = self.allocate_short(maps, batch);
        let diff = Diff {
            parent: 0,
            depth: 0,
            added: state.iter().map(|(k, v)| (*k, *v)).collect(),
            removed: vec![],
        };
        batch.put(&maps.stategroup_diff, id.to_be_bytes(), encode(&diff));
        let map = Arc::new(state);
        self.groups.lock().put(id, map.clone());
        (id, map)
    }

    fn read_diff(&self, maps: &Maps, group: GroupId) -> Result<Diff> {
        let raw = maps
            .stategroup_diff
            .get(group.to_be_bytes())?
            .ok_or_else(|| Error::internal(format_args!("missing state group {group}")))?;
        decode(&raw).ok_or_else(|| Error::internal(format_args!("corrupt state group {group}")))
    }
}

/// `parent u64 | depth u32 | n_added u32 | (key u64, event u64)* | n_removed u32 | key u64*`
fn encode(diff: &Diff) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + diff.added.len() * 16 + diff.removed.len() * 8);
    out.extend_from_slice(&diff.parent.to_be_bytes());
    out.extend_from_slice(&diff.depth.to_be_bytes());
    out.extend_from_slice(&(diff.added.len() as u32).to_be_bytes());
    for (k, v) in &diff.added {
        out.extend_from_slice(&k.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&(diff.removed.len() as u32).to_be_bytes());
    for k in &diff.removed {
        out.extend_from_slice(&k.to_be_bytes());
    }
    out
}

fn decode(raw: &[u8]) -> Option<Diff> {
    let mut pos = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = raw.get(pos..pos + n)?;
        pos += n;
        Some(slice)
    };
    let parent = u64::from_be_bytes(take(8)?.try_into().ok()?);
    let depth = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let n_added = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut added = Vec::with_capacity(n_added);
    for _ in 0..n_added {
        let k = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let v = u64::from_be_bytes(take(8)?.try_into().ok()?);
        added.push((k, v));
    }
    let n_removed = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut removed = Vec::with_capacity(n_removed);
    for _ in 0..n_removed {
        removed.push(u64::from_be_bytes(take(8)?.try_into().ok()?));
    }
    Some(Diff {
        parent,
        depth,
        added,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_roundtrip() {
        let diff = Diff {
            parent: 7,
            depth: 3,
            added: vec![(1, 2), (3, 4)],
            removed: vec![9],
        };
        let back = decode(&encode(&diff)).expect("decodes");
        assert_eq!(
            (back.parent, back.depth, back.added, back.removed),
            (7, 3, vec![(1, 2), (3, 4)], vec![9])
        );
        assert!(decode(&encode(&diff)[..10]).is_none());
    }
}
