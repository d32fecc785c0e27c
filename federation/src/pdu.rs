//! The first checks on a PDU received over federation (server-server API, "Checks performed on
//! receipt of a PDU", steps 1–2): it is well-formed and not too large, carries the signatures
//! its room version requires, and its content hash matches (if not, the event is kept only in
//! its redacted form). Authorization (steps 3–6) needs room state and is the server's.

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName,
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified},
};

use crate::{Error, Result};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// Parses a PDU from JSON and checks its shape: an object of at most 64 KiB with the fields
/// every PDU has, typed as they must be.
pub fn parse(raw: &serde_json::value::RawValue) -> Result<CanonicalJsonObject> {
    if raw.get().len() > MAX_PDU_BYTES * 2 {
        return Err(Error::Forbidden("PDU larger than 64 KiB".into()));
    }
    let object: CanonicalJsonObject = serde_json::from_str(raw.get())
        .map_err(|e| Error::Malformed(format!("PDU is not canonical JSON: {e}")))?;
    let size = serde_json::to_vec(&object)
        .map_err(|e| Error::Malformed(e.to_string()))?
        .len();
    if size > MAX_PDU_BYTES {
        return Err(Error::Forbidden(format!(
            "PDU of {size} bytes, over 64 KiB"
        )));
    }
    for field in ["room_id", "sender", "type"] {
        require_string(&object, field)?;
    }
    for field in ["origin_server_ts", "depth"] {
        if !matches!(object.get(field), Some(CanonicalJsonValue::Integer(_))) {
            return Err(Error::Malformed(format!("{field} must be an integer")));
        }
    }
    for field in ["auth_events", "prev_events"] {
        if !matches!(object.get(field), Some(CanonicalJsonValue::Array(_))) {
            return Err(Error::Malformed(format!("{field} must be an array")));
        }
    }
    for field in ["content", "hashes", "signatures"] {
        if !matches!(object.get(field), Some(CanonicalJsonValue::Object(_))) {
            return Err(Error::Malformed(format!("{field} must be an object")));
        }
    }
    if let Some(state_key) = object.get("state_key")
        && !matches!(state_key, CanonicalJsonValue::String(_))
    {
        return Err(Error::Malformed("state_key must be a string".into()));
    }
    Ok(object)
}

fn require_string<'a>(object: &'a CanonicalJsonObject, field: &str) -> Result<&'a str> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(s)) => Ok(s),
        _ => Err(Error::Malformed(format!("{field} must be a string"))),
    }
}

/// The event id of a PDU in a room version with hash-based ids (v3 and later).
pub fn event_id(pdu: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId> {
    let hash = ruma::signatures::reference_hash(pdu, rules)
        .map_err(|e| Error::Malformed(format!("reference hash: {e}")))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| Error::Malformed(e.to_string()))
}

/// The servers whose signatures the PDU must carry (the sender's, and for restricted joins
/// the authorising server's).
pub fn required_signers(
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<BTreeSet<OwnedServerName>> {
    ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures)
        .map_err(|e| Error::Malformed(e.to_string()))
}

/// Whether the content hash matched; signatures failing is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// Signatures and content hash are right: store as received.
    Intact,
    /// Signatures are right but the content does not match its hash: store redacted.
    Redact,
}

/// Verifies the required signatures (with the signers' keys in `keys`) and the content hash.
pub fn verify(
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
    keys: &PublicKeyMap,
) -> Result<Integrity> {
    match ruma::signatures::verify_event(keys, pdu, rules) {
        Ok(Verified::All) => Ok(Integrity::Intact),
        Ok(Verified::Signatures) => Ok(Integrity::Redact),
        Err(e) => Err(Error::Signature(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked() {
        let good = serde_json::json!({
            "room_id": "!r:a", "sender": "@u:a", "type": "m.room.message",
            "origin_server_ts": 1, "depth": 1, "auth_events": [], "prev_events": [],
            "content": {}, "hashes": {}, "signatures": {}
        });
        let raw = serde_json::value::to_raw_value(&good).expect("raw");
        assert!(parse(&raw).is_ok());
        let mut bad = good.clone();
        bad["depth"] = serde_json::json!("1");
        let raw = serde_json::value::to_raw_value(&bad).expect("raw");
        assert!(matches!(parse(&raw), Err(Error::Malformed(_))));
        let mut big = good;
        big["content"] = serde_json::json!({ "body": "x".repeat(70_000) });
        let raw = serde_json::value::to_raw_value(&big).expect("raw");
        assert!(matches!(parse(&raw), Err(Error::Forbidden(_))));
    }
}
