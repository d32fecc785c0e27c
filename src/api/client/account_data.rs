//! Global and per-room account data.

use std::sync::Arc;

use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use serde_json::Value;

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    server::Server,
    users::account_data,
};

fn content_of(raw: &str) -> Result<Value> {
    let value: Value =
        serde_json::from_str(raw).map_err(|_| Error::bad_json("Invalid JSON content"))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(Error::bad_json("Account data must be a JSON object"))
    }
}

/// Types the server manages itself and clients may not set through this endpoint.
fn check_type(kind: &str) -> Result<()> {
    if kind == "m.fully_read" || kind == "m.push_rules" {
        return Err(Error::bad_json(format!(
            "Cannot set {kind} through the account data API"
        )));
    }
    Ok(())
}

pub async fn set_global(
    server: Arc<Server>,
    request: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let user = request.owned_user()?;
    if request.body.user_id != user {
        return Err(Error::forbidden("You may only set your own account data"));
    }
    let kind = request.body.event_type.to_string();
    check_type(&kind)?;
    account_data::set(
        &server,
        &user,
        None,
        &kind,
        content_of(request.body.data.json().get())?,
    )?;
    Ok(set_global_account_data::v3::Response::new())
}

pub async fn get_global(
    server: Arc<Server>,
    request: Ruma<get_global_account_data::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    if request.body.user_id != user {
        return Err(Error::forbidden("You may only read your own account data"));
    }
    account_data::get(
        &server.maps,
        &user,
        None,
        &request.body.event_type.to_string(),
    )?
    .ok_or_else(|| Error::not_found("Account data not found"))
}

pub async fn set_room(
    server: Arc<Server>,
    request: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    if body.user_id != user {
        return Err(Error::forbidden("You may only set your own account data"));
    }
    let kind = body.event_type.to_string();
    check_type(&kind)?;
    if !server.rooms.exists(&server.maps, &body.room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    account_data::set(
        &server,
        &user,
        Some(&body.room_id),
        &kind,
        content_of(body.data.json().get())?,
    )?;
    Ok(set_room_account_data::v3::Response::new())
}

pub async fn get_room(
    server: Arc<Server>,
    request: Ruma<get_room_account_data::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    if body.user_id != user {
        return Err(Error::forbidden("You may only read your own account data"));
    }
    account_data::get(
        &server.maps,
        &user,
        Some(&body.room_id),
        &body.event_type.to_string(),
    )?
    .ok_or_else(|| Error::not_found("Account data not found"))
}
