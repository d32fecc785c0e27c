//! Cross-signing: the master, self-signing and user-signing keys
//! (`/keys/device_signing/upload`) and signatures of keys (`/keys/signatures/upload`).
//!
//! Accepted signatures: a user's own devices by their self-signing key, their own master key by
//! one of their devices, and other users' master keys by their user-signing key. Each is checked
//! against the signing key before it is stored.

use std::collections::BTreeMap;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use super::{KeyChange, invalid_signature, keys, signing};
use crate::{
    error::{Error, Result},
    server::Server,
    storage::{Batch, keys::Key},
};

pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// A user's stored cross-signing key of `kind` (as uploaded).
pub fn load_key(server: &Server, user: &UserId, kind: &str) -> Result<Option<CanonicalJsonObject>> {
    server
        .maps
        .crosssigning_keys
        .get(Key::new().s(user.as_str()).s(kind).build())?
        .map(|raw| signing::load(&raw))
        .transpose()
}

/// The public key of a cross-signing key object (its one `ed25519:<key>` entry).
pub fn public_key(object: &CanonicalJsonObject) -> Option<&str> {
    let keys = object.get("keys").and_then(CanonicalJsonValue::as_object)?;
    let mut entries = keys.iter();
    let (id, value) = entries.next()?;
    if entries.next().is_some() {
        return None;
    }
    let value = value.as_str()?;
    (id.strip_prefix("ed25519:") == Some(value) && !value.is_empty()).then_some(value)
}

/// A cross-signing key of an upload: the uploader's, with the expected usage and one key.
fn validate(raw: &str, user: &UserId, usage: &str) -> Result<(CanonicalJsonObject, String)> {
    let field = format!("{usage}_key");
    let object = signing::parse_object(raw, &field)?;
    if signing::str_field(&object, "user_id") != Some(user.as_str()) {
        return Err(Error::invalid_param(format!(
            "{field}.user_id must be the user of the access token"
        )));
    }
    let has_usage = object
        .get("usage")
        .and_then(CanonicalJsonValue::as_array)
        .is_some_and(|list| list.iter().any(|u| u.as_str() == Some(usage)));
    if !has_usage {
        return Err(Error::invalid_param(format!(
            "{field}.usage must contain {usage:?}"
        )));
    }
    let Some(public) = public_key(&object).map(ToOwned::to_owned) else {
        return Err(Error::invalid_param(format!(
            "{field}.keys must hold exactly one key, as \"ed25519:<key>\": \"<key>\""
        )));
    };
    Ok((object, public))
}

/// The keys of a `/keys/device_signing/upload` request, as sent.
#[derive(Default)]
pub struct Upload<'a> {
    pub master: Option<&'a str>,
    pub self_signing: Option<&'a str>,
    pub user_signing: Option<&'a str>,
}

impl Upload<'_> {
    fn provided(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (MASTER, self.master),
            (SELF_SIGNING, self.self_signing),
            (USER_SIGNING, self.user_signing),
        ]
        .into_iter()
        .filter_map(|(kind, raw)| Some((kind, raw?)))
    }
}

/// Whether the upload needs user-interactive authentication (spec v1.11): not when the user has
/// no master key yet, nor when every provided key is identical to the stored one.
pub fn needs_auth(server: &Server, user: &UserId, upload: &Upload<'_>) -> Result<bool> {
    if load_key(server, user, MASTER)?.is_none() {
        return Ok(false);
    }
    for (kind, raw) in upload.provided() {
        let object = signing::parse_object(raw, &format!("{kind}_key"))?;
        if load_key(server, user, kind)?.as_ref() != Some(&object) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Validates and stores cross-signing keys. `authenticated`: whether UIA was completed (if
/// not, the keys must still need none when the user's lock is held).
pub fn upload(
    server: &Server,
    user: &UserId,
    upload: &Upload<'_>,
    authenticated: bool,
) -> Result<()> {
    let maps = &server.maps;
    let master = upload
        .master
        .map(|raw| validate(raw, user, MASTER))
        .transpose()?;
    let self_signing = upload
        .self_signing
        .map(|raw| validate(raw, user, SELF_SIGNING))
        .transpose()?;
    let user_signing = upload
        .user_signing
        .map(|raw| validate(raw, user, USER_SIGNING))
        .transpose()?;

    let _guard = super::lock(&[user.as_str()]);
    if !authenticated && needs_auth(server, user, upload)? {
        return Err(Error::forbidden(
            "The cross-signing keys changed meanwhile; retry with authentication",
        ));
    }
    let master_public = match &master {
        Some((_, public)) => Some(public.clone()),
        None => load_key(server, user, MASTER)?
            .as_ref()
            .and_then(public_key)
            .map(ToOwned::to_owned),
    };
    for (object, _) in [&self_signing, &user_signing].into_iter().flatten() {
        let Some(master_public) = &master_public else {
            return Err(Error::missing_param(
                "No master key: upload one with (or before) the other keys",
            ));
        };
        let signer = format!("ed25519:{master_public}");
        if !signing::verify_signed_by(object, user.as_str(), &signer, master_public) {
            return Err(invalid_signature(
                "Self-signing and user-signing keys must be signed by the master key",
            ));
        }
    }
    // Device ids and cross-signing public keys share one namespace in verification.
    let devices = server.users.devices(maps, user)?;
    for (_, public) in [&master, &self_signing, &user_signing]
        .into_iter()
        .flatten()
    {
        if devices.iter().any(|d| d.device_id.as_str() == public) {
            return Err(Error::forbidden("Key ID in use: a device has this ID"));
        }
    }

    let mut batch = server.db.batch();
    let mut public_change = false;
    let mut private_change = false;
    for (kind, key) in [
        (MASTER, master),
        (SELF_SIGNING, self_signing),
        (USER_SIGNING, user_signing),
    ] {
        let Some((object, _)) = key else {
            continue;
        };
        if load_key(server, user, kind)?.as_ref() == Some(&object) {
            continue;
        }
        batch.put(
            &maps.crosssigning_keys,
            Key::new().s(user.as_str()).s(kind).build(),
            signing::to_string(&object),
        );
        if kind == USER_SIGNING {
            private_change = true;
        } else {
            public_change = true;
        }
    }
    if !public_change && !private_change {
        return Ok(());
    }
    let change = KeyChange::record(server, &mut batch, user, !public_change);
    server.db.commit(batch)?;
    change.finish(server);
    Ok(())
}

/// Adds the stored signatures of `target` (a device id or a master public key) of
/// `target_user` to the object's `signatures`, for signers `include` accepts.
pub fn merge_signatures(
    server: &Server,
    object: &mut CanonicalJsonObject,
    target_user: &UserId,
    target: &str,
    include: impl Fn(&str) -> bool,
) -> Result<()> {
    let prefix = Key::new().s(target_user.as_str()).s(target).prefix();
    let plen = prefix.len();
    for (key, value) in server.maps.key_signatures.scan_prefix(prefix) {
        let mut parts = key[plen..].splitn(2, |b| *b == crate::storage::keys::SEP);
        let (Some(signer), Some(key_id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(signer), Ok(key_id), Ok(signature)) = (
            std::str::from_utf8(signer),
            std::str::from_utf8(key_id),
            std::str::from_utf8(&value),
        ) else {
            continue;
        };
        if include(signer) {
            signing::add_signature(object, signer, key_id, signature);
        }
    }
    Ok(())
}

/// Deletes the stored signatures of a key (a device's, when it is removed or its keys change).
pub fn delete_signatures_of(server: &Server, batch: &mut Batch, user: &UserId, target: &str) {
    let map = &server.maps.key_signatures;
    for (key, _) in map.scan_prefix(Key::new().s(user.as_str()).s(target).prefix()) {
        batch.delete(map, key);
    }
}

/// `/keys/signatures/upload`: checks and stores each signature; returns the `failures` map
/// (`{user: {key_id: {errcode, error}}}`).
pub fn upload_signatures(
    server: &Server,
    requester: &UserId,
    signed: &[(OwnedUserId, String, String)],
) -> Result<Value> {
    let maps = &server.maps;
    let _guard = super::lock(&[requester.as_str()]);
    let mut failures: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut batch = server.db.batch();
    let mut public_change = false;
    let mut private_change = false;
    for (target_user, key_id, raw) in signed {
        match check_signatures(server, requester, target_user, key_id, raw) {
            Ok(signatures) => {
                for (signer_key, signature) in signatures {
                    let key = Key::new()
                        .s(target_user.as_str())
                        .s(key_id)
                        .s(requester.as_str())
                        .s(&signer_key)
                        .build();
                    if maps.key_signatures.get(&key)?.as_deref() == Some(signature.as_bytes()) {
                        continue;
                    }
                    batch.put(&maps.key_signatures, key, signature.as_bytes());
                    if target_user == requester {
                        public_change = true;
                    } else {
                        private_change = true;
                    }
                }
            }
            Err((errcode, error)) => {
                failures.entry(target_user.to_string()).or_default().insert(
                    key_id.clone(),
                    json!({ "errcode": errcode, "error": error }),
                );
            }
        }
    }
    if public_change || private_change {
        // Signatures of the user's own keys concern everyone who tracks the user; signatures of
        // other users' master keys only the signer's own devices.
        let change = KeyChange::record(server, &mut batch, requester, !public_change);
        server.db.commit(batch)?;
        change.finish(server);
    }
    Ok(json!({ "failures": failures }))
}

type Failure = (&'static str, String);

/// The new, valid signatures by `requester` in one signed object, or why it is refused.
fn check_signatures(
    server: &Server,
    requester: &UserId,
    target_user: &UserId,
    key_id: &str,
    raw: &str,
) -> Result<Vec<(String, String)>, Failure> {
    let internal = |_: Error| ("M_UNKNOWN", "Internal error".to_owned());
    if !server.is_local(target_user.server_name()) {
        return Err((
            "M_INVALID_PARAM",
            "Signing keys of users on other servers needs federation, which is not supported yet"
                .to_owned(),
        ));
    }
    let object = signing::parse_object(raw, "signed key")
        .map_err(|e| ("M_BAD_JSON", e.message.to_string()))?;
    // The stored key the object must match, and the keys allowed to sign it (key id -> public).
    let mut allowed: BTreeMap<String, String> = BTreeMap::new();
    let stored = if target_user == requester {
        let own_device =
            keys::stored_device_keys(server, requester, key_id.into()).map_err(internal)?;
        if let Some(device_keys) = own_device {
            // An own device: signed by the self-signing key.
            let ssk = load_key(server, requester, SELF_SIGNING).map_err(internal)?;
            let Some(ssk_public) = ssk.as_ref().and_then(public_key) else {
                return Err(("M_NOT_FOUND", "You have no self-signing key".to_owned()));
            };
            allowed.insert(format!("ed25519:{ssk_public}"), ssk_public.to_owned());
            device_keys
        } else {
            // The own master key: signed by one of the user's devices.
            let master = load_key(server, requester, MASTER).map_err(internal)?;
            let Some(master) = master.filter(|m| public_key(m) == Some(key_id)) else {
                return Err(("M_NOT_FOUND", format!("Unknown key {key_id}")));
            };
            for (device, device_keys) in
                keys::all_device_keys(server, requester).map_err(internal)?
            {
                if let Some(ed25519) = signing::ed25519_key(&device_keys, device.as_str()) {
                    allowed.insert(format!("ed25519:{device}"), ed25519.to_owned());
                }
            }
            master
        }
    } else {
        // Another user's master key: signed by the requester's user-signing key.
        let master = load_key(server, target_user, MASTER).map_err(internal)?;
        let Some(master) = master.filter(|m| public_key(m) == Some(key_id)) else {
            return Err((
                "M_NOT_FOUND",
                format!("{key_id} is not the master key of {target_user}"),
            ));
        };
        let usk = load_key(server, requester, USER_SIGNING).map_err(internal)?;
        let Some(usk_public) = usk.as_ref().and_then(public_key) else {
            return Err(("M_NOT_FOUND", "You have no user-signing key".to_owned()));
        };
        allowed.insert(format!("ed25519:{usk_public}"), usk_public.to_owned());
        master
    };
    if signing::signed_part(&object) != signing::signed_part(&stored) {
        return Err((
            "M_INVALID_PARAM",
            "The signed object does not match the stored key".to_owned(),
        ));
    }
    let mut valid = Vec::new();
    for (signer_key, signature) in signing::signatures_by(&object, requester.as_str()) {
        // Other signatures by the requester (a device's self-signature, signatures the key
        // already carries) come along with the object and are not the upload's subject.
        let Some(public) = allowed.get(signer_key) else {
            continue;
        };
        if !signing::verify(&object, public, signature) {
            return Err(("M_INVALID_SIGNATURE", "Invalid signature".to_owned()));
        }
        valid.push((signer_key.to_owned(), signature.to_owned()));
    }
    if valid.is_empty() {
        return Err((
            "M_INVALID_SIGNATURE",
            "No new signature by an allowed key".to_owned(),
        ));
    }
    Ok(valid)
}
