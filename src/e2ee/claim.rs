//! One-time and fallback keys: upload bookkeeping, `/keys/claim`, counts for `/sync`.
//!
//! One-time keys are handed out in upload order (`seq` numbers a device's upload calls) and each
//! exactly once: a claim reads and deletes the device's first key under the device's lock
//! stripe, so concurrent claims queue. Once none is left, the device's fallback key for the
//! algorithm is handed out (and stays, marked used, until the device replaces it).

use std::collections::BTreeMap;

use ruma::{CanonicalJsonValue, DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{invalid_signature, signing};
use crate::{
    error::{Error, Result},
    server::Server,
    storage::{
        Batch,
        keys::{Key, SEP, u64_from},
    },
};

/// The algorithm every client uses (Olm); its count is always reported, zero included, as
/// clients decide from it whether to upload more keys.
const DEFAULT_ALGORITHM: &str = "signed_curve25519";

/// Per device: what `onetimekey_meta` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OtkMeta {
    /// `seq` of the next upload call.
    #[serde(default)]
    next_seq: u64,
    /// Unclaimed keys per algorithm.
    #[serde(default)]
    counts: BTreeMap<String, u64>,
    /// Per algorithm, the last claimed key `(seq, key name)`: every key up to it is gone.
    #[serde(default)]
    cursors: BTreeMap<String, (u64, String)>,
}

/// Per device and algorithm: what `fallbackkeys` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Fallback {
    /// The part of the key id after `algorithm:`.
    key_id: String,
    /// The key (a JSON string or signed object) as canonical JSON text.
    key: String,
    used: bool,
}

/// A checked key of an upload.
pub struct ValidKey {
    algorithm: String,
    name: String,
    /// Canonical JSON text of the key.
    text: String,
}

fn meta_key(user: &UserId, device: &DeviceId) -> Vec<u8> {
    Key::new().s(user.as_str()).s(device.as_str()).build()
}

fn id_key(user: &UserId, device: &DeviceId, algorithm: &str, name: &str) -> Vec<u8> {
    Key::new()
        .s(user.as_str())
        .s(device.as_str())
        .s(&format!("{algorithm}:{name}"))
        .build()
}

fn algorithm_prefix(user: &UserId, device: &DeviceId, algorithm: &str) -> Vec<u8> {
    Key::new()
        .s(user.as_str())
        .s(device.as_str())
        .s(algorithm)
        .prefix()
}

fn key_suffix(seq: u64, name: &str) -> Vec<u8> {
    let mut suffix = seq.to_be_bytes().to_vec();
    suffix.push(SEP);
    suffix.extend_from_slice(name.as_bytes());
    suffix
}

fn otk_key(user: &UserId, device: &DeviceId, algorithm: &str, seq: u64, name: &str) -> Vec<u8> {
    let mut key = algorithm_prefix(user, device, algorithm);
    key.extend_from_slice(&key_suffix(seq, name));
    key
}

fn load_meta(server: &Server, user: &UserId, device: &DeviceId) -> Result<OtkMeta> {
    match server.maps.onetimekey_meta.get(meta_key(user, device))? {
        Some(raw) => Ok(serde_json::from_slice(&raw)?),
        None => Ok(OtkMeta::default()),
    }
}

/// Checks uploaded one-time or fallback keys: ids `algorithm:name`; a key is a string (an
/// unsigned key) or an object with a string `key`; `signed_*` keys, and any key carrying a
/// signature of the device, must be validly signed by the device's ed25519 key.
pub fn validate_keys(
    user: &UserId,
    device: &DeviceId,
    ed25519: Option<&str>,
    keys: &[(&str, &str)],
) -> Result<Vec<ValidKey>> {
    let mut out = Vec::with_capacity(keys.len());
    let signer = format!("ed25519:{device}");
    for (id, raw) in keys {
        let Some((algorithm, name)) = id
            .split_once(':')
            .filter(|(a, n)| !a.is_empty() && !n.is_empty())
        else {
            return Err(Error::invalid_param(format!(
                "Key id {id:?} is not algorithm:key_id"
            )));
        };
        let value: Value = serde_json::from_str(raw)
            .map_err(|_| Error::bad_json(format!("Key {id} is not JSON")))?;
        let text = match value {
            Value::String(key) => {
                if algorithm.starts_with("signed_") {
                    return Err(Error::invalid_param(format!(
                        "Key {id} must be a signed key object"
                    )));
                }
                serde_json::to_string(&key)?
            }
            Value::Object(_) => {
                let object = signing::parse_object(raw, "key")?;
                if !object.get("key").is_some_and(CanonicalJsonValue::is_string) {
                    return Err(Error::bad_json(format!("Key {id} has no string `key`")));
                }
                let signed = signing::signatures_by(&object, user.as_str())
                    .next()
                    .is_some();
                if algorithm.starts_with("signed_") || signed {
                    let Some(ed25519) = ed25519 else {
                        return Err(Error::invalid_param(
                            "Signed keys need the device's keys: upload device_keys first",
                        ));
                    };
                    if !signing::verify_signed_by(&object, user.as_str(), &signer, ed25519) {
                        return Err(invalid_signature(format!(
                            "Key {id} must be signed by the device's ed25519 key"
                        )));
                    }
                }
                signing::to_string(&object)
            }
            _ => {
                return Err(Error::bad_json(format!(
                    "Key {id} must be a string or an object"
                )));
            }
        };
        out.push(ValidKey {
            algorithm: algorithm.to_owned(),
            name: name.to_owned(),
            text,
        });
    }
    Ok(out)
}

/// The spec allows one fallback key per algorithm in an upload.
pub fn check_one_fallback_per_algorithm(keys: &[ValidKey]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        if !seen.insert(key.algorithm.as_str()) {
            return Err(Error::invalid_param(format!(
                "Only one fallback key per algorithm may be uploaded ({})",
                key.algorithm
            )));
        }
    }
    Ok(())
}

/// Adds one-time keys to the batch (caller holds the device's lock) and returns the counts
/// after it. A key id already held with the same content is ignored; with other content it is
/// `400 M_INVALID_PARAM`.
pub fn store_one_time_keys(
    server: &Server,
    batch: &mut Batch,
    user: &UserId,
    device: &DeviceId,
    keys: Vec<ValidKey>,
) -> Result<BTreeMap<String, u64>> {
    let maps = &server.maps;
    let mut meta = load_meta(server, user, device)?;
    if keys.is_empty() {
        return Ok(meta.counts);
    }
    let seq = meta.next_seq;
    let mut added = false;
    for key in keys {
        let ids = id_key(user, device, &key.algorithm, &key.name);
        if let Some(existing) = maps.onetimekey_ids.get(&ids)? {
            let existing_seq = u64_from(&existing).unwrap_or_default();
            let stored = maps.onetimekeys.get(otk_key(
                user,
                device,
                &key.algorithm,
                existing_seq,
                &key.name,
            ))?;
            if stored.as_deref() == Some(key.text.as_bytes()) {
                continue;
            }
            return Err(Error::invalid_param(format!(
                "One-time key {}:{} already exists with different content",
                key.algorithm, key.name
            )));
        }
        batch.put(
            &maps.onetimekeys,
            otk_key(user, device, &key.algorithm, seq, &key.name),
            key.text.as_bytes(),
        );
        batch.put(&maps.onetimekey_ids, ids, seq.to_be_bytes());
        *meta.counts.entry(key.algorithm).or_default() += 1;
        added = true;
    }
    if added {
        meta.next_seq = seq + 1;
        batch.put(
            &maps.onetimekey_meta,
            meta_key(user, device),
            serde_json::to_vec(&meta)?,
        );
    }
    Ok(meta.counts)
}

/// Replaces the device's fallback key per algorithm (caller holds the device's lock). The same
/// key uploaded again keeps its `used` mark.
pub fn store_fallback_keys(
    server: &Server,
    batch: &mut Batch,
    user: &UserId,
    device: &DeviceId,
    keys: Vec<ValidKey>,
) -> Result<()> {
    let maps = &server.maps;
    for key in keys {
        let storage_key = Key::new()
            .s(user.as_str())
            .s(device.as_str())
            .s(&key.algorithm)
            .build();
        if let Some(raw) = maps.fallbackkeys.get(&storage_key)? {
            let existing: Fallback = serde_json::from_slice(&raw)?;
            if existing.key_id == key.name && existing.key == key.text {
                continue;
            }
        }
        let record = Fallback {
            key_id: key.name,
            key: key.text,
            used: false,
        };
        batch.put(
            &maps.fallbackkeys,
            storage_key,
            serde_json::to_vec(&record)?,
        );
    }
    Ok(())
}

/// Counts as reported to clients: with `signed_curve25519` always present.
pub fn with_default_algorithm(mut counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts.retain(|_, count| *count > 0);
    counts.entry(DEFAULT_ALGORITHM.to_owned()).or_insert(0);
    counts
}

/// Unclaimed one-time keys of a device, per algorithm.
pub fn counts(server: &Server, user: &UserId, device: &DeviceId) -> Result<BTreeMap<String, u64>> {
    Ok(with_default_algorithm(
        load_meta(server, user, device)?.counts,
    ))
}

/// Algorithms for which the device has a fallback key that no claim has handed out yet.
pub fn unused_fallback_key_types(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
) -> Result<Vec<String>> {
    let prefix = Key::new().s(user.as_str()).s(device.as_str()).prefix();
    let plen = prefix.len();
    let mut out = Vec::new();
    for (key, value) in server.maps.fallbackkeys.scan_prefix(prefix) {
        let record: Fallback = serde_json::from_slice(&value)?;
        if !record.used
            && let Ok(algorithm) = std::str::from_utf8(&key[plen..])
        {
            out.push(algorithm.to_owned());
        }
    }
    Ok(out)
}

/// Claims one key of `algorithm` of a device: its oldest one-time key (deleted), else its
/// fallback key (marked used). Returns `(algorithm:key_id, key)`.
pub fn claim_one(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
    algorithm: &str,
) -> Result<Option<(String, Value)>> {
    let maps = &server.maps;
    let _guard = super::lock(&[user.as_str(), device.as_str()]);
    let mut meta = load_meta(server, user, device)?;
    let prefix = algorithm_prefix(user, device, algorithm);
    // Every key up to the cursor is claimed: seek past their tombstones.
    let mut from = prefix.clone();
    if let Some((seq, name)) = meta.cursors.get(algorithm) {
        from.extend_from_slice(&key_suffix(*seq, name));
    }
    let found = maps
        .onetimekeys
        .scan_from(prefix.clone(), from, true)
        .next();
    if let Some((key, value)) = found {
        let rest = &key[prefix.len()..];
        let seq = rest.get(..8).and_then(u64_from);
        let name = rest.get(9..).and_then(|n| std::str::from_utf8(n).ok());
        let (Some(seq), Some(name)) = (seq, name) else {
            return Err(Error::internal("corrupt one-time key entry"));
        };
        let name = name.to_owned();
        let value: Value = serde_json::from_slice(&value)?;
        let mut batch = server.db.batch();
        batch.delete(&maps.onetimekeys, &key);
        batch.delete(&maps.onetimekey_ids, id_key(user, device, algorithm, &name));
        if let Some(count) = meta.counts.get_mut(algorithm) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                meta.counts.remove(algorithm);
            }
        }
        meta.cursors
            .insert(algorithm.to_owned(), (seq, name.clone()));
        batch.put(
            &maps.onetimekey_meta,
            meta_key(user, device),
            serde_json::to_vec(&meta)?,
        );
        server.db.commit(batch)?;
        return Ok(Some((format!("{algorithm}:{name}"), value)));
    }
    let storage_key = Key::new()
        .s(user.as_str())
        .s(device.as_str())
        .s(algorithm)
        .build();
    let Some(raw) = maps.fallbackkeys.get(&storage_key)? else {
        return Ok(None);
    };
    let mut record: Fallback = serde_json::from_slice(&raw)?;
    let value: Value = serde_json::from_str(&record.key)?;
    let id = format!("{algorithm}:{}", record.key_id);
    if !record.used {
        record.used = true;
        maps.fallbackkeys
            .put(&server.db, &storage_key, serde_json::to_vec(&record)?)?;
    }
    Ok(Some((id, value)))
}

/// `/keys/claim`: `{one_time_keys: {user: {device: {key_id: key}}}, failures}`.
pub fn claim(
    server: &Server,
    requested: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
) -> Result<Value> {
    let mut one_time_keys = Map::new();
    let mut failures = Map::new();
    for (user, devices) in requested {
        if !server.is_local(user.server_name()) {
            // Claimed from their server by the caller (federation::e2ee::claim_remote).
            if !crate::federation::enabled(server) {
                failures.insert(
                    user.server_name().to_string(),
                    json!({
                        "status": 503,
                        "message": "The user is on another server and this server does not federate",
                    }),
                );
            }
            continue;
        }
        let mut by_device = Map::new();
        for (device, algorithm) in devices {
            if let Some((id, key)) = claim_one(server, user, device, algorithm)? {
                let mut keys = Map::new();
                keys.insert(id, key);
                by_device.insert(device.to_string(), Value::Object(keys));
            }
        }
        if !by_device.is_empty() {
            one_time_keys.insert(user.to_string(), Value::Object(by_device));
        }
    }
    Ok(json!({ "one_time_keys": one_time_keys, "failures": failures }))
}

/// Deletes a device's one-time and fallback keys (part of the device's removal).
pub(super) fn delete_device(
    server: &Server,
    batch: &mut Batch,
    user: &UserId,
    device: &DeviceId,
) -> Result<()> {
    let maps = &server.maps;
    let prefix = Key::new().s(user.as_str()).s(device.as_str()).prefix();
    for map in [&maps.onetimekeys, &maps.onetimekey_ids, &maps.fallbackkeys] {
        for (key, _) in map.scan_prefix(prefix.clone()) {
            batch.delete(map, key);
        }
    }
    batch.delete(&maps.onetimekey_meta, meta_key(user, device));
    Ok(())
}
