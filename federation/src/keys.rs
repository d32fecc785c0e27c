//! Server signing keys: the document a server publishes at `GET /_matrix/key/v2/server`, and
//! the checks on another server's document before its keys are trusted.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName,
    ServerName,
    serde::Base64,
    signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet},
};

use crate::{Error, Result};

/// A key this server signed with before and no longer uses (kept for `old_verify_keys`).
#[derive(Clone, Debug)]
pub struct OldKey {
    pub key_id: String,
    /// Unpadded base64 of the ed25519 public key.
    pub key: String,
    pub expired_ts: u64,
}

/// Our key document, signed by our current key.
pub fn server_keys_document(
    server_name: &ServerName,
    key_pair: &Ed25519KeyPair,
    old_keys: &[OldKey],
    valid_until_ts: u64,
) -> Result<CanonicalJsonObject> {
    let key_id = format!("ed25519:{}", key_pair.version());
    let public = Base64::<ruma::serde::base64::Standard>::new(key_pair.public_key().to_vec());
    let mut verify_keys = CanonicalJsonObject::new();
    verify_keys.insert(key_id, object([("key", public.encode().into())]).into());
    let mut old = CanonicalJsonObject::new();
    for key in old_keys {
        old.insert(
            key.key_id.clone(),
            object([
                ("key", key.key.clone().into()),
                ("expired_ts", int(key.expired_ts)),
            ])
            .into(),
        );
    }
    let mut document = object([
        ("server_name", server_name.as_str().into()),
        ("valid_until_ts", int(valid_until_ts)),
        ("verify_keys", verify_keys.into()),
        ("old_verify_keys", old.into()),
    ]);
    ruma::signatures::sign_json(server_name.as_str(), key_pair, &mut document)
        .map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(document)
}

/// Adds our signature to another server's key document (what a notary does).
pub fn notarise(
    our_name: &ServerName,
    key_pair: &Ed25519KeyPair,
    document: &mut CanonicalJsonObject,
) -> Result<()> {
    ruma::signatures::sign_json(our_name.as_str(), key_pair, document)
        .map_err(|e| Error::Malformed(e.to_string()))
}

/// A server's keys, checked: the current ones until `valid_until_ts`, old ones with the time
/// they stopped being used.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerKeys {
    pub server_name: OwnedServerName,
    pub valid_until_ts: u64,
    /// key id -> unpadded base64 public key
    pub verify_keys: BTreeMap<String, String>,
    /// key id -> (key, expired_ts)
    pub old_verify_keys: BTreeMap<String, (String, u64)>,
}

impl ServerKeys {
    /// The key with this id if it may verify something signed at `at_ts` (current keys within
    /// their validity, old keys before they expired).
    pub fn key_for(&self, key_id: &str, at_ts: u64) -> Option<&str> {
        if let Some(key) = self.verify_keys.get(key_id) {
            return Some(key.as_str());
        }
        self.old_verify_keys
            .get(key_id)
            .filter(|(_, expired)| at_ts < *expired)
            .map(|(key, _)| key.as_str())
    }

    /// All keys as a ruma public key map (for `verify_json`/`verify_event`).
    pub fn public_key_set(&self) -> PublicKeySet {
        self.verify_keys
            .iter()
            .map(|(id, key)| (id.clone(), key.as_str()))
            .chain(
                self.old_verify_keys
                    .iter()
                    .map(|(id, (key, _))| (id.clone(), key.as_str())),
            )
            .filter_map(|(id, key)| Some((id, Base64::parse(key).ok()?)))
            .collect()
    }
}

/// Checks a key document another server published (directly or through a notary): it names
/// `expected` (when given), lists its keys, and is signed by every one of its current
/// `verify_keys`' server with one of them. Expiry is the caller's business: the document says
/// until when its keys are valid.
pub fn verify_server_keys(
    document: &CanonicalJsonObject,
    expected: Option<&ServerName>,
) -> Result<ServerKeys> {
    let server_name = match document.get("server_name") {
        Some(CanonicalJsonValue::String(name)) => OwnedServerName::try_from(name.as_str())
            .map_err(|e| Error::Malformed(format!("server_name: {e}")))?,
        _ => return Err(Error::Malformed("server_name missing".into())),
    };
    if let Some(expected) = expected
        && server_name != expected
    {
        return Err(Error::Forbidden(format!(
            "key document for {server_name}, expected {expected}"
        )));
    }
    let valid_until_ts = match document.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
        _ => return Err(Error::Malformed("valid_until_ts missing".into())),
    };
    let verify_keys = keys_of(document, "verify_keys")?
        .into_iter()
        .map(|(id, (key, _))| (id, key))
        .collect::<BTreeMap<_, _>>();
    if verify_keys.is_empty() {
        return Err(Error::Malformed("no verify_keys".into()));
    }
    let old_verify_keys = keys_of(document, "old_verify_keys").unwrap_or_default();
    let keys = ServerKeys {
        server_name,
        valid_until_ts,
        verify_keys,
        old_verify_keys,
    };
    // The document must be signed by the server itself with one of its current keys (other
    // signatures, e.g. a notary's, are checked by whoever relies on them).
    let current = ServerKeys {
        old_verify_keys: BTreeMap::new(),
        ..keys.clone()
    };
    let mut own_only = document.clone();
    retain_signatures_of(&mut own_only, keys.server_name.as_str());
    let map: PublicKeyMap = [(keys.server_name.to_string(), current.public_key_set())].into();
    ruma::signatures::verify_json(&map, &own_only)
        .map_err(|e| Error::Signature(format!("key document of {}: {e}", keys.server_name)))?;
    Ok(keys)
}

/// Keeps only `server`'s entry under `signatures` (a notary's signature on a document does not
/// matter for the self-signature check, and a missing key for it must not fail that check).
fn retain_signatures_of(document: &mut CanonicalJsonObject, server: &str) {
    if let Some(CanonicalJsonValue::Object(signatures)) = document.get_mut("signatures") {
        signatures.retain(|entity, _| entity == server);
    }
}

fn keys_of(document: &CanonicalJsonObject, field: &str) -> Result<BTreeMap<String, (String, u64)>> {
    let Some(CanonicalJsonValue::Object(keys)) = document.get(field) else {
        return Err(Error::Malformed(format!("{field} missing")));
    };
    let mut out = BTreeMap::new();
    for (id, value) in keys {
        let CanonicalJsonValue::Object(entry) = value else {
            return Err(Error::Malformed(format!("{field}.{id} is not an object")));
        };
        let Some(CanonicalJsonValue::String(key)) = entry.get("key") else {
            return Err(Error::Malformed(format!("{field}.{id}.key missing")));
        };
        let expired = match entry.get("expired_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
            _ => 0,
        };
        if id.starts_with("ed25519:") {
            out.insert(id.clone(), (key.clone(), expired));
        }
    }
    Ok(out)
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

fn object<const N: usize>(entries: [(&str, CanonicalJsonValue); N]) -> CanonicalJsonObject {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn int(value: u64) -> CanonicalJsonValue {
    CanonicalJsonValue::Integer(ruma::Int::try_from(value).unwrap_or(ruma::Int::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_pair(version: &str) -> Ed25519KeyPair {
        let der = Ed25519KeyPair::generate();
        Ed25519KeyPair::from_der(&der, version.to_owned()).expect("parse")
    }

    #[test]
    fn our_document_verifies_and_tampering_is_caught() {
        let name = ruma::server_name!("example.org");
        let pair = key_pair("abc");
        let old = OldKey {
            key_id: "ed25519:old".into(),
            key: "Pz8/Pz8/Pz8/Pz8/Pz8/Pz8/Pz8/Pz8/Pz8/Pz8/Pz8".into(),
            expired_ts: 5,
        };
        let doc = server_keys_document(name, &pair, &[old], 1_000).expect("document");
        let keys = verify_server_keys(&doc, Some(name)).expect("verifies");
        assert_eq!(keys.valid_until_ts, 1_000);
        assert!(keys.key_for("ed25519:abc", 999_999).is_some());
        assert!(keys.key_for("ed25519:old", 4).is_some());
        assert!(keys.key_for("ed25519:old", 5).is_none());

        // Someone else's name, or a changed validity, does not pass.
        assert!(verify_server_keys(&doc, Some(ruma::server_name!("other.org"))).is_err());
        let mut tampered = doc.clone();
        tampered.insert("valid_until_ts".into(), int(9_999_999));
        assert!(matches!(
            verify_server_keys(&tampered, Some(name)),
            Err(Error::Signature(_))
        ));

        // A notary's signature on top does not disturb the check.
        let mut notarised = doc.clone();
        notarise(
            ruma::server_name!("notary.org"),
            &key_pair("n"),
            &mut notarised,
        )
        .expect("notarise");
        assert!(verify_server_keys(&notarised, Some(name)).is_ok());
    }
}
