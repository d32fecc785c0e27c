//! Device keys: `/keys/upload` and `/keys/query`.
//!
//! Device keys are stored as the canonical JSON of what the device uploaded (less `unsigned`),
//! so `/keys/query` serves exactly the bytes the device signed; signatures other devices add
//! later (`/keys/signatures/upload`) are kept apart and merged into `signatures` when served.

use std::collections::{BTreeMap, HashMap};

use ruma::{CanonicalJsonObject, CanonicalJsonValue, DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use super::{KeyChange, claim, cross_signing, invalid_signature, signing};
use crate::{
    error::{Error, Result},
    server::Server,
    storage::{Batch, keys::Key},
};

/// What a `/keys/upload` request carries, as the client sent it.
#[derive(Default)]
pub struct Upload<'a> {
    pub device_keys: Option<&'a str>,
    /// `(algorithm:key_id, key json)`
    pub one_time_keys: Vec<(&'a str, &'a str)>,
    pub fallback_keys: Vec<(&'a str, &'a str)>,
}

fn device_key(user: &UserId, device: &DeviceId) -> Vec<u8> {
    Key::new().s(user.as_str()).s(device.as_str()).build()
}

/// Stores a device's keys, one-time keys and fallback keys (all or nothing) and returns the
/// device's unclaimed one-time key counts.
pub fn upload(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
    upload: &Upload<'_>,
) -> Result<BTreeMap<String, u64>> {
    let maps = &server.maps;
    let new_keys = upload
        .device_keys
        .map(|raw| validate_device_keys(raw, user, device))
        .transpose()?;
    let _guard = super::lock(&[user.as_str(), device.as_str()]);
    // Checked under the lock: a device deleted meanwhile must not get keys back.
    if server.users.device(maps, user, device)?.is_none() {
        return Err(Error::unknown_token(false));
    }
    let stored = stored_device_keys(server, user, device)?;
    let ed25519 = new_keys
        .as_ref()
        .or(stored.as_ref())
        .and_then(|keys| signing::ed25519_key(keys, device.as_str()))
        .map(ToOwned::to_owned);
    let one_time = claim::validate_keys(user, device, ed25519.as_deref(), &upload.one_time_keys)?;
    let fallback = claim::validate_keys(user, device, ed25519.as_deref(), &upload.fallback_keys)?;
    claim::check_one_fallback_per_algorithm(&fallback)?;

    let mut batch = server.db.batch();
    let counts = claim::store_one_time_keys(server, &mut batch, user, device, one_time)?;
    claim::store_fallback_keys(server, &mut batch, user, device, fallback)?;
    let mut change = None;
    if let Some(new_keys) = new_keys
        && stored.as_ref() != Some(&new_keys)
    {
        // New key material (not just other signatures): signatures of the old keys no longer
        // apply.
        if stored
            .as_ref()
            .is_some_and(|old| signing::signed_part(old) != signing::signed_part(&new_keys))
        {
            cross_signing::delete_signatures_of(server, &mut batch, user, device.as_str());
        }
        batch.put(
            &maps.devicekeys,
            device_key(user, device),
            signing::to_string(&new_keys),
        );
        change = Some(KeyChange::record(server, &mut batch, user, false));
    }
    server.db.commit(batch)?;
    if let Some(change) = change {
        change.finish(server);
    }
    Ok(claim::with_default_algorithm(counts))
}

/// The device keys of an upload: the session's user and device, the device's ed25519 key, and
/// that key's signature over the object.
fn validate_device_keys(
    raw: &str,
    user: &UserId,
    device: &DeviceId,
) -> Result<CanonicalJsonObject> {
    let mut keys = signing::parse_object(raw, "device_keys")?;
    keys.remove("unsigned");
    if signing::str_field(&keys, "user_id") != Some(user.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.user_id must be the user of the access token",
        ));
    }
    if signing::str_field(&keys, "device_id") != Some(device.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.device_id must be the device of the access token",
        ));
    }
    let algorithms_ok = keys
        .get("algorithms")
        .and_then(CanonicalJsonValue::as_array)
        .is_some_and(|list| list.iter().all(CanonicalJsonValue::is_string));
    if !algorithms_ok {
        return Err(Error::bad_json(
            "device_keys.algorithms must be a list of strings",
        ));
    }
    let keys_ok = keys
        .get("keys")
        .and_then(CanonicalJsonValue::as_object)
        .is_some_and(|map| map.values().all(CanonicalJsonValue::is_string));
    if !keys_ok {
        return Err(Error::bad_json("device_keys.keys must map key ids to keys"));
    }
    // (Absent signatures fail the signature check below.)
    let signatures_ok = keys.get("signatures").is_none_or(|signatures| {
        signatures.as_object().is_some_and(|by_user| {
            by_user.values().all(|sigs| {
                sigs.as_object()
                    .is_some_and(|sigs| sigs.values().all(CanonicalJsonValue::is_string))
            })
        })
    });
    if !signatures_ok {
        return Err(Error::bad_json(
            "device_keys.signatures must map users to key ids to signatures",
        ));
    }
    let Some(ed25519) = signing::ed25519_key(&keys, device.as_str()) else {
        return Err(Error::invalid_param(format!(
            "device_keys.keys must hold the device's key ed25519:{device}"
        )));
    };
    if !signing::verify_signed_by(&keys, user.as_str(), &format!("ed25519:{device}"), ed25519) {
        return Err(invalid_signature(
            "device_keys must be signed by the device's own ed25519 key",
        ));
    }
    Ok(keys)
}

/// The device's keys as uploaded (no merged signatures, no `unsigned`).
pub fn stored_device_keys(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
) -> Result<Option<CanonicalJsonObject>> {
    server
        .maps
        .devicekeys
        .get(device_key(user, device))?
        .map(|raw| signing::load(&raw))
        .transpose()
}

/// Every device of a user that has uploaded keys, with those keys (as uploaded).
pub fn all_device_keys(
    server: &Server,
    user: &UserId,
) -> Result<Vec<(OwnedDeviceId, CanonicalJsonObject)>> {
    let prefix = Key::new().s(user.as_str()).prefix();
    let plen = prefix.len();
    let mut out = Vec::new();
    for (key, value) in server.maps.devicekeys.scan_prefix(prefix) {
        let Some(device) = std::str::from_utf8(&key[plen..]).ok() else {
            continue;
        };
        out.push((OwnedDeviceId::from(device), signing::load(&value)?));
    }
    Ok(out)
}

/// `/keys/query` for local users; remote users get a `failures` entry for their server until
/// federation exists.
pub fn query(
    server: &Server,
    requester: &UserId,
    requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
) -> Result<Value> {
    let mut device_keys = Map::new();
    let mut master_keys = Map::new();
    let mut self_signing_keys = Map::new();
    let mut user_signing_keys = Map::new();
    let mut failures = Map::new();
    for (user, wanted) in requested {
        if !server.is_local(user.server_name()) {
            // Asked of their server by the caller (federation::e2ee::query_remote).
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
        device_keys.insert(
            user.to_string(),
            Value::Object(devices_of(server, user, wanted)?),
        );
        if let Some(mut master) = cross_signing::load_key(server, user, cross_signing::MASTER)? {
            if let Some(public) = cross_signing::public_key(&master).map(ToOwned::to_owned) {
                // The owner's own signatures (their devices), and the requester's (their
                // user-signing key); signatures by third users are theirs alone to see.
                cross_signing::merge_signatures(server, &mut master, user, &public, |signer| {
                    signer == user.as_str() || signer == requester.as_str()
                })?;
            }
            master_keys.insert(user.to_string(), signing::to_value(master));
        }
        if let Some(key) = cross_signing::load_key(server, user, cross_signing::SELF_SIGNING)? {
            self_signing_keys.insert(user.to_string(), signing::to_value(key));
        }
        // The user-signing key is only visible to its owner.
        if user == requester
            && let Some(key) = cross_signing::load_key(server, user, cross_signing::USER_SIGNING)?
        {
            user_signing_keys.insert(user.to_string(), signing::to_value(key));
        }
    }
    Ok(json!({
        "failures": failures,
        "device_keys": device_keys,
        "master_keys": master_keys,
        "self_signing_keys": self_signing_keys,
        "user_signing_keys": user_signing_keys,
    }))
}

/// The keys of a local user's devices (all, or the `wanted` ones), as served by `/keys/query`.
fn devices_of(
    server: &Server,
    user: &UserId,
    wanted: &[OwnedDeviceId],
) -> Result<Map<String, Value>> {
    let devices: HashMap<OwnedDeviceId, Option<String>> = server
        .users
        .devices(&server.maps, user)?
        .into_iter()
        .map(|d| (d.device_id, d.display_name))
        .collect();
    let keys = if wanted.is_empty() {
        all_device_keys(server, user)?
    } else {
        let mut keys = Vec::new();
        for device in wanted {
            if let Some(object) = stored_device_keys(server, user, device)? {
                keys.push((device.clone(), object));
            }
        }
        keys
    };
    let mut out = Map::new();
    for (device, mut object) in keys {
        // Keys of a device that no longer exists are never served.
        let Some(display_name) = devices.get(&device) else {
            continue;
        };
        cross_signing::merge_signatures(server, &mut object, user, device.as_str(), |signer| {
            signer == user.as_str()
        })?;
        let mut unsigned = CanonicalJsonObject::new();
        if let Some(name) = display_name {
            unsigned.insert(
                "device_display_name".to_owned(),
                CanonicalJsonValue::String(name.clone()),
            );
        }
        object.insert("unsigned".to_owned(), CanonicalJsonValue::Object(unsigned));
        out.insert(device.to_string(), signing::to_value(object));
    }
    Ok(out)
}

/// Deletes a device's keys and the signatures of them (part of the device's removal).
pub(super) fn delete_device(
    server: &Server,
    batch: &mut Batch,
    user: &UserId,
    device: &DeviceId,
) -> Result<()> {
    batch.delete(&server.maps.devicekeys, device_key(user, device));
    cross_signing::delete_signatures_of(server, batch, user, device.as_str());
    Ok(())
}
