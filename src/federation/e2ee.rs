//! End-to-end encryption across servers: key queries and one-time key claims for users of
//! other servers, to-device messages to them (`m.direct_to_device` EDUs), and device-list
//! changes announced both ways (`m.device_list_update`, `m.signing_key_update`).

use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::{Map, Value, json};

use crate::{error::Result, server::Server};

/// Remote users of a `/keys/query`, asked of their servers; merged into `result`.
pub async fn query_remote(
    server: &Server,
    requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    result: &mut Value,
) {
    for (destination, users) in by_server(server, requested) {
        let device_keys: Map<String, Value> = users
            .iter()
            .map(|(user, devices)| (user.to_string(), json!(devices)))
            .collect();
        let answer = server
            .federation
            .client
            .send(
                server,
                &destination,
                http::Method::POST,
                "/_matrix/federation/v1/user/keys/query",
                Some(&json!({ "device_keys": device_keys })),
            )
            .await;
        match answer {
            Ok(answer) => {
                for field in ["device_keys", "master_keys", "self_signing_keys"] {
                    let Some(found) = answer[field].as_object() else {
                        continue;
                    };
                    for (user, keys) in found {
                        // Only keys of users of the server that answered.
                        if users.iter().any(|(u, _)| u.as_str() == user) {
                            result[field][user] = keys.clone();
                        }
                    }
                }
            }
            Err(error) => {
                result["failures"][destination.as_str()] =
                    json!({ "status": error.status.as_u16(), "message": error.message });
            }
        }
    }
}

/// Remote users of a `/keys/claim`, claimed from their servers; merged into `result`.
pub async fn claim_remote(
    server: &Server,
    requested: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    result: &mut Value,
) {
    for (destination, users) in by_server(server, requested) {
        let one_time_keys: Map<String, Value> = users
            .iter()
            .map(|(user, devices)| (user.to_string(), json!(devices)))
            .collect();
        let answer = server
            .federation
            .client
            .send(
                server,
                &destination,
                http::Method::POST,
                "/_matrix/federation/v1/user/keys/claim",
                Some(&json!({ "one_time_keys": one_time_keys })),
            )
            .await;
        match answer {
            Ok(answer) => {
                if let Some(found) = answer["one_time_keys"].as_object() {
                    for (user, keys) in found {
                        if users.iter().any(|(u, _)| u.as_str() == user) {
                            result["one_time_keys"][user] = keys.clone();
                        }
                    }
                }
            }
            Err(error) => {
                result["failures"][destination.as_str()] =
                    json!({ "status": error.status.as_u16(), "message": error.message });
            }
        }
    }
}

/// The remote users of a request, grouped by server.
fn by_server<'a, T>(
    server: &Server,
    requested: &'a BTreeMap<OwnedUserId, T>,
) -> BTreeMap<OwnedServerName, Vec<(&'a OwnedUserId, &'a T)>> {
    let mut out: BTreeMap<OwnedServerName, Vec<(&OwnedUserId, &T)>> = BTreeMap::new();
    for (user, value) in requested {
        if !server.is_local(user.server_name()) {
            out.entry(user.server_name().to_owned())
                .or_default()
                .push((user, value));
        }
    }
    out
}

/// To-device messages for users of other servers: one `m.direct_to_device` EDU per server.
pub fn send_to_device(
    server: &Server,
    sender: &UserId,
    event_type: &str,
    message_id: &str,
    messages: &[(OwnedUserId, String, Value)],
) -> Result<()> {
    let mut per_server: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
    for (user, device, content) in messages {
        let users = per_server.entry(user.server_name().to_owned()).or_default();
        let devices = users.entry(user.to_string()).or_insert_with(|| json!({}));
        devices[device] = content.clone();
    }
    for (destination, messages) in per_server {
        let edu = json!({
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": sender,
                "type": event_type,
                "message_id": message_id,
                "messages": messages,
            },
        });
        server
            .federation
            .sender
            .queue_durable_edu(server, &destination, &edu)?;
    }
    Ok(())
}

/// Tells the servers that share a room with `user` (ours) that their devices or keys changed;
/// they fetch the list again (`GET /_matrix/federation/v1/user/devices/{userId}`).
pub fn announce_device_change(server: &Server, user: &UserId, stream_id: u64) {
    if !super::enabled(server) || !server.is_local(user.server_name()) {
        return;
    }
    let destinations = super::sender::servers_sharing_rooms(server, user);
    let devices = server.users.devices(&server.maps, user).unwrap_or_default();
    for destination in destinations {
        for device in &devices {
            let edu = json!({
                "edu_type": "m.device_list_update",
                "content": {
                    "user_id": user,
                    "device_id": device.device_id,
                    "stream_id": stream_id,
                    "prev_id": [],
                },
            });
            queue_or_log(server, &destination, &edu);
        }
        let master =
            crate::e2ee::cross_signing::load_key(server, user, crate::e2ee::cross_signing::MASTER)
                .ok()
                .flatten();
        let self_signing = crate::e2ee::cross_signing::load_key(
            server,
            user,
            crate::e2ee::cross_signing::SELF_SIGNING,
        )
        .ok()
        .flatten();
        if master.is_some() || self_signing.is_some() {
            let edu = json!({
                "edu_type": "m.signing_key_update",
                "content": { "user_id": user, "master_key": master, "self_signing_key": self_signing },
            });
            queue_or_log(server, &destination, &edu);
        }
    }
}

fn queue_or_log(server: &Server, destination: &ServerName, edu: &Value) {
    if let Err(error) = server
        .federation
        .sender
        .queue_durable_edu(server, destination, edu)
    {
        tracing::error!(%destination, %error, "cannot queue a device update");
    }
}

/// EDUs about a remote user's devices: their room-mates here learn the list changed (and ask
/// for it again on their next key query, which goes to the user's server).
pub fn device_list_edu(server: &Server, origin: &ServerName, content: &Value) -> Result<()> {
    let user = content["user_id"].as_str().unwrap_or_default();
    let user = OwnedUserId::try_from(user)
        .map_err(|e| crate::error::Error::bad_json(format!("user_id: {e}")))?;
    if user.server_name() != origin {
        return Err(crate::error::Error::forbidden(
            "device list of another server's user",
        ));
    }
    crate::e2ee::device_list_changed(server, &user)
}

/// `m.direct_to_device` from another server: delivered to our users' devices.
pub fn direct_to_device_edu(server: &Server, origin: &ServerName, content: &Value) -> Result<()> {
    let sender = OwnedUserId::try_from(content["sender"].as_str().unwrap_or_default())
        .map_err(|e| crate::error::Error::bad_json(format!("sender: {e}")))?;
    if sender.server_name() != origin {
        return Err(crate::error::Error::forbidden(
            "to-device from another server's user",
        ));
    }
    let event_type = content["type"].as_str().unwrap_or_default();
    let message_id = content["message_id"].as_str().unwrap_or_default();
    let Some(users) = content["messages"].as_object() else {
        return Err(crate::error::Error::bad_json("messages must be an object"));
    };
    let mut owned: Vec<(OwnedUserId, ruma::to_device::DeviceIdOrAllDevices, String)> = Vec::new();
    for (user, devices) in users {
        let Ok(user) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        if !server.is_local(user.server_name()) {
            continue;
        }
        for (device, message) in devices.as_object().into_iter().flatten() {
            let target = if device == "*" {
                ruma::to_device::DeviceIdOrAllDevices::AllDevices
            } else {
                ruma::to_device::DeviceIdOrAllDevices::DeviceId(device.as_str().into())
            };
            owned.push((user.clone(), target, message.to_string()));
        }
    }
    let messages: Vec<crate::e2ee::to_device::Message<'_>> = owned
        .iter()
        .map(|(user, target, raw)| (&**user, target, raw.as_str()))
        .collect();
    // Deduplicated per (sender, origin, message_id), like a client's transaction id.
    let pseudo_device: ruma::OwnedDeviceId = format!("federation:{origin}").into();
    crate::e2ee::to_device::send(
        server,
        &sender,
        &pseudo_device,
        event_type,
        message_id,
        &messages,
    )
}
