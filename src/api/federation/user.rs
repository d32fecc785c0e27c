//! Our users' devices and keys for other servers: `POST /_matrix/federation/v1/user/keys/
//! query`, `.../user/keys/claim` and `GET .../user/devices/{userId}`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    e2ee::{claim, cross_signing, keys},
    error::{Error, Result},
    server::Server,
};

/// A requester id no local user has: other servers see neither user-signing keys nor
/// signatures meant for one user.
fn outsider(origin: &ruma::ServerName) -> Result<OwnedUserId> {
    OwnedUserId::try_from(format!("@federation:{origin}"))
        .map_err(|e| Error::internal(format_args!("requester id: {e}")))
}

pub async fn query(server: Arc<Server>, request: Ruma<get_keys::v1::Request>) -> Result<Value> {
    let origin = request.origin()?;
    let local: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> = request
        .body
        .device_keys
        .iter()
        .filter(|(user, _)| server.is_local(user.server_name()))
        .map(|(user, devices)| (user.clone(), devices.clone()))
        .collect();
    let mut answer = keys::query(&server, &outsider(origin)?, &local)?;
    if let Some(object) = answer.as_object_mut() {
        object.remove("failures");
        object.remove("user_signing_keys");
    }
    Ok(answer)
}

pub async fn claim(server: Arc<Server>, request: Ruma<claim_keys::v1::Request>) -> Result<Value> {
    request.origin()?;
    let local: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>> = request
        .body
        .one_time_keys
        .iter()
        .filter(|(user, _)| server.is_local(user.server_name()))
        .map(|(user, devices)| {
            let devices = devices
                .iter()
                .map(|(device, algorithm)| (device.clone(), algorithm.to_string()))
                .collect();
            (user.clone(), devices)
        })
        .collect();
    let mut answer = claim::claim(&server, &local)?;
    if let Some(object) = answer.as_object_mut() {
        object.remove("failures");
    }
    Ok(answer)
}

pub async fn devices(
    server: Arc<Server>,
    request: Ruma<get_devices::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let user = &request.body.user_id;
    if !server.is_local(user.server_name()) || !server.users.exists(&server.maps, user)? {
        return Err(Error::not_found("No such user here"));
    }
    let wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> = [(user.clone(), Vec::new())].into();
    let answer = keys::query(&server, &outsider(origin)?, &wanted)?;
    let names: BTreeMap<OwnedDeviceId, Option<String>> = server
        .users
        .devices(&server.maps, user)?
        .into_iter()
        .map(|d| (d.device_id, d.display_name))
        .collect();
    let devices: Vec<Value> = answer["device_keys"][user.as_str()]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(device, keys)| {
            let mut entry = json!({ "device_id": device, "keys": keys });
            if let Some(Some(name)) = names.get(device.as_str()) {
                entry["device_display_name"] = json!(name);
            }
            entry
        })
        .collect();
    let mut out = json!({
        "user_id": user,
        "stream_id": server.stream.current(),
        "devices": devices,
    });
    if let Some(master) = answer["master_keys"].get(user.as_str()) {
        out["master_key"] = master.clone();
    }
    if let Some(key) = cross_signing::load_key(&server, user, cross_signing::SELF_SIGNING)? {
        out["self_signing_key"] = crate::e2ee::signing::to_value(key);
    }
    Ok(out)
}
