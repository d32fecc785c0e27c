//! Helpers for the end-to-end encryption suites (`keys`, `to_device`, `backup`): ed25519
//! signers standing in for devices and cross-signing keys, signed key objects, logins.
//! Included with `#[path = "e2ee_helpers/mod.rs"] mod eh;`.

#![allow(dead_code)]

use base64::Engine;
use reqwest::StatusCode;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    signatures::{Ed25519KeyPair, SigningKeyAlgorithm},
};
use serde_json::{Value, json};

use crate::common::{TestServer, User};

pub const V3: &str = "/_matrix/client/v3";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// An ed25519 key pair that signs as `ed25519:<name>` (a device id, or for cross-signing keys
/// its own public key).
pub struct Signer {
    pair: Ed25519KeyPair,
    pub public: String,
    pub name: String,
}

impl Signer {
    /// A device's key: signs as `ed25519:<device_id>`.
    pub fn device(device_id: &str) -> Self {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, device_id.to_owned()).expect("key pair");
        let public = B64.encode(pair.public_key());
        Self {
            pair,
            public,
            name: device_id.to_owned(),
        }
    }

    /// A cross-signing key: signs as `ed25519:<its public key>`.
    pub fn cross_signing() -> Self {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, "x".to_owned()).expect("key pair");
        let public = B64.encode(probe.public_key());
        let pair = Ed25519KeyPair::from_der(&der, public.clone()).expect("key pair");
        Self {
            pair,
            public: public.clone(),
            name: public,
        }
    }

    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.name)
    }

    /// `value` with this key's signature added under `signatures[user]`.
    pub fn sign(&self, user: &str, value: &Value) -> Value {
        let mut object: CanonicalJsonObject =
            serde_json::from_value(value.clone()).expect("canonical object");
        ruma::signatures::sign_json(user, &self.pair, &mut object).expect("sign");
        CanonicalJsonValue::Object(object).into()
    }
}

/// Whether `object` carries a valid signature `signatures[user][ed25519:<name>]` by `public`.
pub fn verify(object: &Value, user: &str, key_id: &str, public: &str) -> bool {
    let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(object.clone()) else {
        return false;
    };
    let Some(signature) = object
        .get("signatures")
        .and_then(|s| s.as_object())
        .and_then(|s| s.get(user))
        .and_then(|s| s.as_object())
        .and_then(|s| s.get(key_id))
        .and_then(|s| s.as_str())
    else {
        return false;
    };
    let (Ok(public), Ok(signature)) = (B64.decode(public), B64.decode(signature)) else {
        return false;
    };
    let canonical =
        ruma::signatures::to_canonical_json_string_for_signing(&object).expect("canonical");
    ruma::signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &public,
        &signature,
        canonical.as_bytes(),
    )
    .is_ok()
}

/// A stand-in curve25519 public key (43 characters of unpadded base64).
pub fn fake_curve_key(seed: &str) -> String {
    use sha2::Digest;
    B64.encode(sha2::Sha256::digest(seed.as_bytes()))
}

/// The device keys of `user`'s device, self-signed by `signer`.
pub fn device_keys(user: &User, signer: &Signer) -> Value {
    let device = &user.device_id;
    signer.sign(
        &user.user_id,
        &json!({
            "user_id": user.user_id,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{device}"): fake_curve_key(&format!("{}{device}", user.user_id)),
                format!("ed25519:{device}"): signer.public,
            },
        }),
    )
}

/// `count` signed one-time keys named `<prefix><n>`, as `{"signed_curve25519:<id>": key}`.
pub fn one_time_keys(user: &User, signer: &Signer, prefix: &str, count: usize) -> Value {
    let mut keys = serde_json::Map::new();
    for n in 0..count {
        let id = format!("{prefix}{n:04}");
        let key = signer.sign(
            &user.user_id,
            &json!({ "key": fake_curve_key(&format!("{}{id}", user.user_id)) }),
        );
        keys.insert(format!("signed_curve25519:{id}"), key);
    }
    Value::Object(keys)
}

/// A signed fallback key `{"signed_curve25519:<id>": {key, fallback: true, signatures}}`.
pub fn fallback_key(user: &User, signer: &Signer, id: &str) -> Value {
    let key = signer.sign(
        &user.user_id,
        &json!({ "key": fake_curve_key(&format!("fb{}{id}", user.user_id)), "fallback": true }),
    );
    json!({ format!("signed_curve25519:{id}"): key })
}

/// Uploads keys; asserts 200 and returns the response.
pub async fn upload(server: &TestServer, user: &User, body: Value) -> Value {
    let (status, response) = server
        .post(&format!("{V3}/keys/upload"), &user.token, body)
        .await;
    assert_eq!(status, StatusCode::OK, "keys/upload: {response}");
    response
}

/// A device with uploaded, self-signed device keys.
pub async fn device_with_keys(server: &TestServer, user: &User) -> Signer {
    let signer = Signer::device(&user.device_id);
    upload(
        server,
        user,
        json!({ "device_keys": device_keys(user, &signer) }),
    )
    .await;
    signer
}

/// Logs `user` in again: a new device (password `correct horse`, as `TestServer::register`).
pub async fn login(server: &TestServer, user: &User, device_id: Option<&str>) -> User {
    let mut body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user.user_id },
        "password": "correct horse",
    });
    if let Some(device_id) = device_id {
        body["device_id"] = json!(device_id);
    }
    let (status, response) = server
        .request(
            reqwest::Method::POST,
            &format!("{V3}/login"),
            None,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "login: {response}");
    User {
        user_id: user.user_id.clone(),
        token: response["access_token"].as_str().expect("token").to_owned(),
        device_id: response["device_id"].as_str().expect("device").to_owned(),
    }
}

/// Deletes a device with password UIA.
pub async fn delete_device(server: &TestServer, user: &User, device_id: &str) {
    let (status, response) = server
        .request(
            reqwest::Method::DELETE,
            &format!("{V3}/devices/{device_id}"),
            Some(&user.token),
            Some(json!({
                "auth": {
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": user.user_id },
                    "password": "correct horse",
                }
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "delete device: {response}");
}

/// The `next_batch` of a sync.
pub fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

/// `device_lists.changed` / `left` of a sync or `/keys/changes` response, as strings.
pub fn list(value: &Value, field: &str) -> Vec<String> {
    let list = if value.get("device_lists").is_some() {
        &value["device_lists"][field]
    } else {
        &value[field]
    };
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(ToOwned::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
