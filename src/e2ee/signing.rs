//! Canonical JSON and ed25519 signature checks for key objects (ruma-signatures).

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, signatures::SigningKeyAlgorithm};
use serde_json::Value;

use crate::error::{Error, Result};

/// Standard base64, padding optional (Matrix keys and signatures are unpadded).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses a client's JSON object into canonical JSON: `400 M_BAD_JSON` for anything that is
/// not an object or that canonical JSON cannot represent (floats, integers beyond 2^53).
pub fn parse_object(raw: &str, what: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str::<CanonicalJsonObject>(raw)
        .map_err(|error| Error::bad_json(format!("Invalid {what}: {error}")))
}

/// The canonical JSON text of an object (what is stored and served).
pub fn to_string(object: &CanonicalJsonObject) -> String {
    CanonicalJsonValue::Object(object.clone()).to_string()
}

/// A stored canonical object (written by us, so a failure is internal).
pub fn load(raw: &[u8]) -> Result<CanonicalJsonObject> {
    Ok(serde_json::from_slice(raw)?)
}

/// The object as a `serde_json::Value` (keys stay sorted: serde_json's map is a `BTreeMap`).
pub fn to_value(object: CanonicalJsonObject) -> Value {
    CanonicalJsonValue::Object(object).into()
}

/// The object without `signatures` and `unsigned`: what a signature covers, and what two
/// uploads of the same key must agree on.
pub fn signed_part(object: &CanonicalJsonObject) -> CanonicalJsonObject {
    let mut object = object.clone();
    object.remove("signatures");
    object.remove("unsigned");
    object
}

/// `signatures[user]` as `(key id, signature)` pairs.
pub fn signatures_by<'a>(
    object: &'a CanonicalJsonObject,
    user: &str,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    object
        .get("signatures")
        .and_then(CanonicalJsonValue::as_object)
        .and_then(|by_user| by_user.get(user))
        .and_then(CanonicalJsonValue::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key_id, signature)| Some((key_id.as_str(), signature.as_str()?)))
}

/// Adds `signatures[user][key_id] = signature` to an object.
pub fn add_signature(object: &mut CanonicalJsonObject, user: &str, key_id: &str, signature: &str) {
    let signatures = object
        .entry("signatures".to_owned())
        .or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
    if !signatures.is_object() {
        *signatures = CanonicalJsonValue::Object(Default::default());
    }
    if let Some(signatures) = signatures.as_object_mut() {
        let by_user = signatures
            .entry(user.to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
        if let Some(by_user) = by_user.as_object_mut() {
            by_user.insert(
                key_id.to_owned(),
                CanonicalJsonValue::String(signature.to_owned()),
            );
        }
    }
}

/// Checks `signature` (unpadded base64) over the object's signed part against the ed25519
/// `public_key` (unpadded base64).
pub fn verify(object: &CanonicalJsonObject, public_key: &str, signature: &str) -> bool {
    let (Ok(public_key), Ok(signature)) = (BASE64.decode(public_key), BASE64.decode(signature))
    else {
        return false;
    };
    let Ok(canonical) = ruma::signatures::to_canonical_json_string_for_signing(object) else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        canonical.as_bytes(),
    )
    .is_ok()
}

/// Checks that the object carries a valid signature `signatures[user][key_id]` by `public_key`.
pub fn verify_signed_by(
    object: &CanonicalJsonObject,
    user: &str,
    key_id: &str,
    public_key: &str,
) -> bool {
    signatures_by(object, user)
        .find(|(id, _)| *id == key_id)
        .is_some_and(|(_, signature)| verify(object, public_key, signature))
}

/// `object[field]` as a string.
pub fn str_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    object.get(field).and_then(CanonicalJsonValue::as_str)
}

/// `object.keys["ed25519:<name>"]`.
pub fn ed25519_key<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    object
        .get("keys")
        .and_then(CanonicalJsonValue::as_object)
        .and_then(|keys| keys.get(&format!("ed25519:{name}")))
        .and_then(CanonicalJsonValue::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_signature_made_by_ruma() {
        let der = ruma::signatures::Ed25519KeyPair::generate();
        let pair = ruma::signatures::Ed25519KeyPair::from_der(&der, "DEV".into()).expect("pair");
        let public = BASE64.encode(pair.public_key());
        let mut object = parse_object(
            r#"{"user_id":"@a:x","device_id":"DEV","keys":{"ed25519:DEV":"k"},"unsigned":{"x":1}}"#,
            "keys",
        )
        .expect("object");
        ruma::signatures::sign_json("@a:x", &pair, &mut object).expect("sign");
        assert!(verify_signed_by(&object, "@a:x", "ed25519:DEV", &public));
        object.insert("extra".into(), CanonicalJsonValue::Bool(true));
        assert!(!verify_signed_by(&object, "@a:x", "ed25519:DEV", &public));
        assert!(parse_object("{\"a\":1.5}", "keys").is_err());
        assert!(parse_object("[]", "keys").is_err());
    }
}
