//! Devices: list, get, rename, delete (with UIA).

use std::sync::Arc;

use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::device::{
        Device as ApiDevice, delete_device, delete_devices, get_device, get_devices, update_device,
    },
};
use serde_json::Map;

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    server::Server,
    users::Device,
};

fn to_api(device: Device) -> ApiDevice {
    let mut api = ApiDevice::new(device.device_id);
    api.display_name = device.display_name;
    api.last_seen_ip = device.last_seen_ip;
    api.last_seen_ts = device
        .last_seen_ts
        .and_then(UInt::new)
        .map(MilliSecondsSinceUnixEpoch);
    api
}

pub async fn list(
    server: Arc<Server>,
    request: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response> {
    let devices = server.users.devices(&server.maps, request.user()?)?;
    Ok(get_devices::v3::Response::new(
        devices.into_iter().map(to_api).collect(),
    ))
}

pub async fn get(
    server: Arc<Server>,
    request: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response> {
    let device = server
        .users
        .device(&server.maps, request.user()?, &request.body.device_id)?
        .ok_or_else(|| Error::not_found("Device not found"))?;
    Ok(get_device::v3::Response::new(to_api(device)))
}

pub async fn update(
    server: Arc<Server>,
    request: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    let user = request.user()?;
    let mut device = server
        .users
        .device(&server.maps, user, &request.body.device_id)?
        .ok_or_else(|| Error::not_found("Device not found"))?;
    if let Some(name) = &request.body.display_name {
        if name.len() > 100 {
            return Err(Error::invalid_param("Device display name is too long"));
        }
        device.display_name = Some(name.clone());
    }
    server.users.update_device(&server, user, &device)?;
    // The display name is served with the device keys, so other users' clients must re-query.
    crate::e2ee::device_list_changed(&server, user)?;
    Ok(update_device::v3::Response::new())
}

pub async fn delete(
    server: Arc<Server>,
    request: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let user = request.owned_user()?;
    if server
        .users
        .device(&server.maps, &user, &request.body.device_id)?
        .is_none()
    {
        return Err(Error::not_found("Device not found"));
    }
    let flows = vec![vec!["m.login.password"]];
    server
        .uiaa
        .check(
            &server,
            "delete_device",
            request.body.auth.as_ref(),
            &flows,
            Some(&user),
            Map::new(),
        )
        .await?;
    server
        .users
        .remove_device(&server, &user, &request.body.device_id)?;
    Ok(delete_device::v3::Response::new())
}

pub async fn delete_many(
    server: Arc<Server>,
    request: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let user = request.owned_user()?;
    let flows = vec![vec!["m.login.password"]];
    server
        .uiaa
        .check(
            &server,
            "delete_devices",
            request.body.auth.as_ref(),
            &flows,
            Some(&user),
            Map::new(),
        )
        .await?;
    for device in &request.body.devices {
        server.users.remove_device(&server, &user, device)?;
    }
    Ok(delete_devices::v3::Response::new())
}
