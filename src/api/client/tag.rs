//! Room tags (`m.tag` room account data).

use std::sync::Arc;

use ruma::api::client::tag::{create_tag, delete_tag, get_tags};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    server::Server,
    users::account_data,
};

fn tags_of(
    server: &Server,
    user: &ruma::UserId,
    room: &ruma::RoomId,
) -> Result<serde_json::Map<String, Value>> {
    Ok(account_data::get(&server.maps, user, Some(room), "m.tag")?
        .and_then(|content| content.get("tags").and_then(Value::as_object).cloned())
        .unwrap_or_default())
}

pub async fn create(
    server: Arc<Server>,
    request: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    if body.user_id != user {
        return Err(Error::forbidden("You may only tag rooms for yourself"));
    }
    if body.tag.len() > 255 {
        return Err(Error::invalid_param("Tag is too long"));
    }
    let mut tags = tags_of(&server, &user, &body.room_id)?;
    tags.insert(body.tag.clone(), serde_json::to_value(&body.tag_info)?);
    account_data::set(
        &server,
        &user,
        Some(&body.room_id),
        "m.tag",
        json!({ "tags": tags }),
    )?;
    Ok(create_tag::v3::Response::new())
}

pub async fn delete(
    server: Arc<Server>,
    request: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    if body.user_id != user {
        return Err(Error::forbidden("You may only untag rooms for yourself"));
    }
    let mut tags = tags_of(&server, &user, &body.room_id)?;
    tags.remove(&body.tag);
    account_data::set(
        &server,
        &user,
        Some(&body.room_id),
        "m.tag",
        json!({ "tags": tags }),
    )?;
    Ok(delete_tag::v3::Response::new())
}

pub async fn get(server: Arc<Server>, request: Ruma<get_tags::v3::Request>) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    if body.user_id != user {
        return Err(Error::forbidden("You may only read your own tags"));
    }
    Ok(json!({ "tags": tags_of(&server, &user, &body.room_id)? }))
}
