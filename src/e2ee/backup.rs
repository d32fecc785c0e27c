//! Server-side key backups (`/room_keys/...`).
//!
//! Versions are numbered per user and never reused; the current version is the newest one not
//! deleted, and keys can only be written to it (`403 M_WRONG_ROOM_KEYS_VERSION` otherwise). Each
//! version keeps its key count and an `etag` that changes whenever its keys change. A session's
//! key uploaded again replaces the stored one only if it is better, by the spec's rule.

use std::collections::BTreeMap;

use http::StatusCode;
use ruma::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    server::Server,
    storage::keys::{Key, SEP, u64_from},
};

/// What `backup_versions` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupVersion {
    pub algorithm: String,
    pub auth_data: Value,
    pub etag: u64,
    pub count: u64,
}

impl BackupVersion {
    /// The `/room_keys/version` response body.
    pub fn info(&self, version: u64) -> Value {
        json!({
            "algorithm": self.algorithm,
            "auth_data": self.auth_data,
            "count": self.count,
            "etag": self.etag.to_string(),
            "version": version.to_string(),
        })
    }
}

/// A session key in a backup (`KeyBackupData`), checked.
struct SessionKey {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    json: Value,
}

impl SessionKey {
    fn parse(value: Value) -> Result<Self> {
        let field = |name: &str| value.get(name);
        let (Some(first_message_index), Some(forwarded_count), Some(is_verified)) = (
            field("first_message_index").and_then(Value::as_u64),
            field("forwarded_count").and_then(Value::as_u64),
            field("is_verified").and_then(Value::as_bool),
        ) else {
            return Err(Error::bad_json(
                "Key backup data needs first_message_index, forwarded_count (non-negative \
                 integers) and is_verified (boolean)",
            ));
        };
        if !field("session_data").is_some_and(Value::is_object) {
            return Err(Error::bad_json(
                "Key backup data needs a session_data object",
            ));
        }
        Ok(Self {
            first_message_index,
            forwarded_count,
            is_verified,
            json: value,
        })
    }

    /// The spec's rule: a verified key beats an unverified one, then the lower
    /// `first_message_index`, then the lower `forwarded_count`; on a tie the stored key stays.
    fn better_than(&self, old: &Self) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

fn version_key(user: &UserId, version: u64) -> Vec<u8> {
    Key::new().s(user.as_str()).n(version).build()
}

fn keys_prefix(user: &UserId, version: u64) -> Vec<u8> {
    Key::new().s(user.as_str()).n(version).prefix()
}

fn load(server: &Server, user: &UserId, version: u64) -> Result<Option<BackupVersion>> {
    match server
        .maps
        .backup_versions
        .get(version_key(user, version))?
    {
        Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
        None => Ok(None),
    }
}

fn save(server: &Server, user: &UserId, version: u64, info: &BackupVersion) -> Result<()> {
    server.maps.backup_versions.put(
        &server.db,
        version_key(user, version),
        serde_json::to_vec(info)?,
    )
}

/// The current (newest) backup version.
pub fn latest(server: &Server, user: &UserId) -> Result<Option<(u64, BackupVersion)>> {
    let Some((key, value)) = server
        .maps
        .backup_versions
        .last_with_prefix(Key::new().s(user.as_str()).prefix())
    else {
        return Ok(None);
    };
    let Some(version) = key
        .len()
        .checked_sub(8)
        .and_then(|start| u64_from(&key[start..]))
    else {
        return Err(Error::internal("corrupt backup version key"));
    };
    Ok(Some((version, serde_json::from_slice(&value)?)))
}

/// A backup version named by the client (an opaque string to it: unknown ones are not found).
pub fn get(server: &Server, user: &UserId, version: &str) -> Result<(u64, BackupVersion)> {
    let not_found = || Error::not_found(format!("Unknown backup version {version:?}"));
    let number = version.parse::<u64>().map_err(|_| not_found())?;
    let info = load(server, user, number)?.ok_or_else(not_found)?;
    Ok((number, info))
}

/// Checks a `{algorithm, auth_data}` body.
fn parse_algorithm(body: &str) -> Result<(String, Value, Option<String>)> {
    let value: Value =
        serde_json::from_str(body).map_err(|_| Error::bad_json("Body is not a JSON object"))?;
    let Some(algorithm) = value.get("algorithm").and_then(Value::as_str) else {
        return Err(Error::bad_json("`algorithm` must be a string"));
    };
    let Some(auth_data) = value.get("auth_data").filter(|a| a.is_object()) else {
        return Err(Error::bad_json("`auth_data` must be an object"));
    };
    let version = match value.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => return Err(Error::bad_json("`version` must be a string")),
    };
    Ok((algorithm.to_owned(), auth_data.clone(), version))
}

/// `POST /room_keys/version`: a new current version.
pub fn create(server: &Server, user: &UserId, body: &str) -> Result<String> {
    let (algorithm, auth_data, _) = parse_algorithm(body)?;
    let _guard = super::lock(&[user.as_str(), "backup"]);
    let last = server
        .maps
        .backup_last
        .get(user.as_bytes())?
        .as_deref()
        .and_then(u64_from)
        .unwrap_or(0);
    let version = last + 1;
    let info = BackupVersion {
        algorithm,
        auth_data,
        etag: 0,
        count: 0,
    };
    let mut batch = server.db.batch();
    batch.put(
        &server.maps.backup_last,
        user.as_bytes(),
        version.to_be_bytes(),
    );
    batch.put(
        &server.maps.backup_versions,
        version_key(user, version),
        serde_json::to_vec(&info)?,
    );
    server.db.commit(batch)?;
    Ok(version.to_string())
}

/// `PUT /room_keys/version/{version}`: only `auth_data` changes.
pub fn update(server: &Server, user: &UserId, version: &str, body: &str) -> Result<()> {
    let (algorithm, auth_data, body_version) = parse_algorithm(body)?;
    let _guard = super::lock(&[user.as_str(), "backup"]);
    let (number, mut info) = get(server, user, version)?;
    if body_version.is_some_and(|v| v != version) {
        return Err(Error::invalid_param(
            "The version in the body does not match the version in the path",
        ));
    }
    if algorithm != info.algorithm {
        return Err(Error::invalid_param(
            "The algorithm does not match the backup's algorithm",
        ));
    }
    info.auth_data = auth_data;
    save(server, user, number, &info)
}

/// `DELETE /room_keys/version/{version}`: the version and all its keys.
pub fn delete_version(server: &Server, user: &UserId, version: &str) -> Result<()> {
    let _guard = super::lock(&[user.as_str(), "backup"]);
    let (number, _) = get(server, user, version)?;
    let maps = &server.maps;
    let mut batch = server.db.batch();
    for (key, _) in maps.backup_keys.scan_prefix(keys_prefix(user, number)) {
        batch.delete(&maps.backup_keys, key);
    }
    batch.delete(&maps.backup_versions, version_key(user, number));
    server.db.commit(batch)
}

/// `403 M_WRONG_ROOM_KEYS_VERSION` naming the current version.
fn wrong_version(current: u64) -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        "M_WRONG_ROOM_KEYS_VERSION",
        "Wrong backup version",
    )
    .with_field("current_version", json!(current.to_string()))
}

fn session_key(user: &UserId, version: u64, room: &str, session: &str) -> Vec<u8> {
    Key::new()
        .s(user.as_str())
        .n(version)
        .s(room)
        .s(session)
        .build()
}

/// `PUT /room_keys/keys[/{room}[/{session}]]`: stores keys in the current version, keeping the
/// better of two keys of a session. Returns `(etag, count)`.
pub fn put_keys(
    server: &Server,
    user: &UserId,
    version: &str,
    keys: Vec<(&RoomId, &str, &str)>,
) -> Result<(String, u64)> {
    let mut parsed = Vec::with_capacity(keys.len());
    for (room, session, raw) in keys {
        let value: Value = serde_json::from_str(raw)
            .map_err(|_| Error::bad_json("Key backup data is not JSON"))?;
        parsed.push((room, session, SessionKey::parse(value)?));
    }
    let _guard = super::lock(&[user.as_str(), "backup"]);
    let Some((current, mut info)) = latest(server, user)? else {
        return Err(Error::not_found("No backup version exists"));
    };
    if version.parse::<u64>().ok() != Some(current) {
        return Err(wrong_version(current));
    }
    let maps = &server.maps;
    let mut batch = server.db.batch();
    let mut changed = false;
    // Sessions of this request already written to the batch (a request may name one twice).
    let mut written: BTreeMap<Vec<u8>, SessionKey> = BTreeMap::new();
    for (room, session, key) in parsed {
        let storage_key = session_key(user, current, room.as_str(), session);
        let existing = match written.remove(&storage_key) {
            Some(key) => Some(key),
            None => match maps.backup_keys.get(&storage_key)? {
                Some(raw) => Some(SessionKey::parse(serde_json::from_slice(&raw)?)?),
                None => None,
            },
        };
        let keep = match existing {
            Some(old) if !key.better_than(&old) => old,
            old => {
                if old.is_none() {
                    info.count += 1;
                }
                batch.put(
                    &maps.backup_keys,
                    &storage_key,
                    serde_json::to_vec(&key.json)?,
                );
                changed = true;
                key
            }
        };
        written.insert(storage_key, keep);
    }
    if changed {
        info.etag += 1;
        batch.put(
            &maps.backup_versions,
            version_key(user, current),
            serde_json::to_vec(&info)?,
        );
        server.db.commit(batch)?;
    }
    Ok((info.etag.to_string(), info.count))
}

fn split_session_key(key: &[u8], prefix_len: usize) -> Option<(&str, &str)> {
    let rest = key.get(prefix_len..)?;
    let at = rest.iter().position(|b| *b == SEP)?;
    let room = std::str::from_utf8(&rest[..at]).ok()?;
    let session = std::str::from_utf8(&rest[at + 1..]).ok()?;
    Some((room, session))
}

/// `GET /room_keys/keys`: `{rooms: {room: {sessions: {session: data}}}}`.
pub fn get_all(server: &Server, user: &UserId, version: &str) -> Result<Value> {
    let (number, _) = get(server, user, version)?;
    let prefix = keys_prefix(user, number);
    let plen = prefix.len();
    let mut rooms: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (key, value) in server.maps.backup_keys.scan_prefix(prefix) {
        if let Some((room, session)) = split_session_key(&key, plen) {
            rooms
                .entry(room.to_owned())
                .or_default()
                .insert(session.to_owned(), serde_json::from_slice(&value)?);
        }
    }
    let rooms: Map<String, Value> = rooms
        .into_iter()
        .map(|(room, sessions)| (room, json!({ "sessions": sessions })))
        .collect();
    Ok(json!({ "rooms": rooms }))
}

/// `GET /room_keys/keys/{room}`: `{sessions: {...}}` (empty when the room has none).
pub fn get_room(server: &Server, user: &UserId, version: &str, room: &RoomId) -> Result<Value> {
    let (number, _) = get(server, user, version)?;
    let prefix = Key::new()
        .s(user.as_str())
        .n(number)
        .s(room.as_str())
        .prefix();
    let plen = prefix.len();
    let mut sessions = Map::new();
    for (key, value) in server.maps.backup_keys.scan_prefix(prefix) {
        if let Ok(session) = std::str::from_utf8(&key[plen..]) {
            sessions.insert(session.to_owned(), serde_json::from_slice(&value)?);
        }
    }
    Ok(json!({ "sessions": sessions }))
}

/// `GET /room_keys/keys/{room}/{session}`.
pub fn get_session(
    server: &Server,
    user: &UserId,
    version: &str,
    room: &RoomId,
    session: &str,
) -> Result<Value> {
    let (number, _) = get(server, user, version)?;
    let raw = server
        .maps
        .backup_keys
        .get(session_key(user, number, room.as_str(), session))?
        .ok_or_else(|| Error::not_found("Key not found"))?;
    Ok(serde_json::from_slice(&raw)?)
}

/// `DELETE /room_keys/keys[/{room}[/{session}]]`. Returns `(etag, count)`.
pub fn delete_keys(
    server: &Server,
    user: &UserId,
    version: &str,
    room: Option<&RoomId>,
    session: Option<&str>,
) -> Result<(String, u64)> {
    let _guard = super::lock(&[user.as_str(), "backup"]);
    let (number, mut info) = get(server, user, version)?;
    let maps = &server.maps;
    let mut batch = server.db.batch();
    let mut deleted = 0u64;
    match (room, session) {
        (Some(room), Some(session)) => {
            let key = session_key(user, number, room.as_str(), session);
            if maps.backup_keys.contains(&key)? {
                batch.delete(&maps.backup_keys, key);
                deleted = 1;
            }
        }
        _ => {
            let prefix = match room {
                Some(room) => Key::new()
                    .s(user.as_str())
                    .n(number)
                    .s(room.as_str())
                    .prefix(),
                None => keys_prefix(user, number),
            };
            for (key, _) in maps.backup_keys.scan_prefix(prefix) {
                batch.delete(&maps.backup_keys, key);
                deleted += 1;
            }
        }
    }
    if deleted > 0 {
        info.count = info.count.saturating_sub(deleted);
        info.etag += 1;
        batch.put(
            &maps.backup_versions,
            version_key(user, number),
            serde_json::to_vec(&info)?,
        );
        server.db.commit(batch)?;
    }
    Ok((info.etag.to_string(), info.count))
}
