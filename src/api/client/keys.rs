//! End-to-end encryption keys: upload, query, claim, changes, cross-signing keys and
//! signatures (issue 4). The logic is in `crate::e2ee`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::client::keys::{
        claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
    },
};
use serde_json::{Map, Value, json, value::RawValue};

use crate::{
    api::ruma::Ruma,
    e2ee::{claim, cross_signing, device_lists, keys},
    error::{Error, Result},
    server::Server,
    sync,
};

pub async fn upload(server: Arc<Server>, request: Ruma<upload_keys::v3::Request>) -> Result<Value> {
    let body = &request.body;
    let upload = keys::Upload {
        device_keys: body.device_keys.as_ref().map(|raw| raw.json().get()),
        one_time_keys: body
            .one_time_keys
            .iter()
            .map(|(id, raw)| (id.as_str(), raw.json().get()))
            .collect(),
        fallback_keys: body
            .fallback_keys
            .iter()
            .map(|(id, raw)| (id.as_str(), raw.json().get()))
            .collect(),
    };
    let counts = keys::upload(&server, request.user()?, request.device()?, &upload)?;
    Ok(json!({ "one_time_key_counts": counts }))
}

pub async fn query(server: Arc<Server>, request: Ruma<get_keys::v3::Request>) -> Result<Value> {
    let mut result = keys::query(&server, request.user()?, &request.body.device_keys)?;
    if crate::federation::enabled(&server) {
        crate::federation::e2ee::query_remote(&server, &request.body.device_keys, &mut result)
            .await;
    }
    Ok(result)
}

pub async fn claim(server: Arc<Server>, request: Ruma<claim_keys::v3::Request>) -> Result<Value> {
    request.user()?;
    let requested: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>> = request
        .body
        .one_time_keys
        .iter()
        .map(|(user, devices)| {
            let devices = devices
                .iter()
                .map(|(device, algorithm)| (device.clone(), algorithm.to_string()))
                .collect();
            (user.clone(), devices)
        })
        .collect();
    let mut result = claim::claim(&server, &requested)?;
    if crate::federation::enabled(&server) {
        crate::federation::e2ee::claim_remote(&server, &requested, &mut result).await;
    }
    Ok(result)
}

pub async fn changes(
    server: Arc<Server>,
    request: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let from = sync::parse_token(&request.body.from)?;
    let to = sync::parse_token(&request.body.to)?.min(server.stream.current());
    let lists = device_lists::changes(&server, request.user()?, from, to)?;
    Ok(get_key_changes::v3::Response::new(
        lists.changed,
        lists.left,
    ))
}

pub async fn signing_upload(
    server: Arc<Server>,
    request: Ruma<upload_signing_keys::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    let upload = cross_signing::Upload {
        master: body.master_key.as_ref().map(|raw| raw.json().get()),
        self_signing: body.self_signing_key.as_ref().map(|raw| raw.json().get()),
        user_signing: body.user_signing_key.as_ref().map(|raw| raw.json().get()),
    };
    // Spec v1.11: no UIA for the first upload, nor for one that changes nothing.
    let needs_auth = cross_signing::needs_auth(&server, &user, &upload)?;
    if needs_auth {
        server
            .uiaa
            .check(
                &server,
                "device_signing_upload",
                body.auth.as_ref(),
                &vec![vec!["m.login.password"]],
                Some(&user),
                Map::new(),
            )
            .await?;
    }
    cross_signing::upload(&server, &user, &upload, needs_auth)?;
    Ok(json!({}))
}

pub async fn signatures_upload(
    server: Arc<Server>,
    request: Ruma<upload_signatures::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    // The raw objects: signatures are checked over exactly what the client sent.
    let signed: BTreeMap<OwnedUserId, BTreeMap<String, Box<RawValue>>> =
        serde_json::from_slice(&request.json)
            .map_err(|e| Error::bad_json(format!("Invalid request body: {e}")))?;
    let signed: Vec<(OwnedUserId, String, String)> = signed
        .into_iter()
        .flat_map(|(target, keys)| {
            keys.into_iter()
                .map(move |(key_id, raw)| (target.clone(), key_id, raw.get().to_owned()))
        })
        .collect();
    cross_signing::upload_signatures(&server, &user, &signed)
}
