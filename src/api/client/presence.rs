//! Presence status.

use std::sync::Arc;

use ruma::api::client::presence::{get_presence, set_presence};
use serde_json::Value;

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    server::Server,
    users::presence,
};

pub async fn set(
    server: Arc<Server>,
    request: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    if body.user_id != user {
        return Err(Error::forbidden("You may only set your own presence"));
    }
    let state = body.presence.as_str();
    if !matches!(state, "online" | "offline" | "unavailable") {
        return Err(Error::invalid_param(format!("Unknown presence {state}")));
    }
    if body.status_msg.as_deref().is_some_and(|m| m.len() > 1024) {
        return Err(Error::invalid_param("Status message is too long"));
    }
    presence::set(&server, &user, state, Some(body.status_msg.clone()))?;
    Ok(set_presence::v3::Response::new())
}

pub async fn get(server: Arc<Server>, request: Ruma<get_presence::v3::Request>) -> Result<Value> {
    let user = request.owned_user()?;
    let target = &request.body.user_id;
    // Presence is visible to the user and to those sharing a room with them.
    if *target != user && !presence::room_mates(&server, target)?.contains(&user) {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    // Users of other servers: what their server told us (room-mates only, checked above).
    if server.is_local(target.server_name()) && !server.users.exists(&server.maps, target)? {
        return Err(Error::not_found("Unknown user"));
    }
    let record = presence::get(&server.maps, target)?.unwrap_or(presence::Presence {
        presence: "offline".into(),
        status_msg: None,
        last_active_ts: 0,
        count: 0,
    });
    let mut content = presence::content(&server, target, &record);
    if record.last_active_ts == 0
        && let Some(object) = content.as_object_mut()
    {
        object.remove("last_active_ago");
    }
    Ok(content)
}
