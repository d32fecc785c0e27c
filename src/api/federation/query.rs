//! Queries other servers make about our users and aliases: `GET /_matrix/federation/v1/query/
//! profile` and `.../query/directory`.

use std::sync::Arc;

use ruma::api::federation::query::{get_profile_information, get_room_information};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    server::Server,
};

pub async fn profile(
    server: Arc<Server>,
    request: Ruma<get_profile_information::v1::Request>,
) -> Result<Value> {
    let user = &request.body.user_id;
    if !server.is_local(user.server_name()) {
        return Err(Error::invalid_param("User is not on this server"));
    }
    if !server.users.exists(&server.maps, user)? {
        return Err(Error::not_found("User not found"));
    }
    let profile = serde_json::to_value(server.users.profile(&server.maps, user)?)?;
    match &request.body.field {
        Some(field) => match profile.get(field.as_str()) {
            Some(value) => Ok(json!({ field.as_str(): value })),
            None => Ok(json!({})),
        },
        None => Ok(profile),
    }
}

pub async fn directory(
    server: Arc<Server>,
    request: Ruma<get_room_information::v1::Request>,
) -> Result<Value> {
    let alias = &request.body.room_alias;
    if !server.is_local(alias.server_name()) {
        return Err(Error::invalid_param("Alias is not on this server"));
    }
    let room = crate::rooms::alias::resolve_local(&server, alias)?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(json!({ "room_id": room.room_id, "servers": [server.server_name()] }))
}

/// `GET /_matrix/federation/v1/publicRooms`: our directory for another server.
pub async fn public_rooms(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::directory::get_public_rooms::v1::Request>,
) -> Result<Value> {
    let query = crate::directory::public_rooms::Query {
        limit: request.body.limit.map(u64::from),
        since: request.body.since.clone(),
        ..Default::default()
    };
    crate::directory::public_rooms::list(&server, &query)
}

/// `POST /_matrix/federation/v1/publicRooms`: the same with a search filter.
pub async fn public_rooms_filtered(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::directory::get_public_rooms_filtered::v1::Request>,
) -> Result<Value> {
    let body = &request.body;
    let query = crate::directory::public_rooms::Query {
        limit: body.limit.map(u64::from),
        since: body.since.clone(),
        search: body
            .filter
            .generic_search_term
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase),
        room_types: None,
    };
    crate::directory::public_rooms::list(&server, &query)
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}`: a room (a space) and its direct children,
/// as far as a server with no member in them may see them (public or world-readable).
pub async fn hierarchy(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::space::get_hierarchy::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    if let Some(reason) = crate::federation::acl::denies(&server, &body.room_id, origin)? {
        return Err(Error::forbidden(reason));
    }
    let outsider = ruma::OwnedUserId::try_from(format!("@federation:{origin}"))
        .map_err(|e| Error::internal(format_args!("requester id: {e}")))?;
    let query = crate::directory::hierarchy::Query {
        root: &body.room_id,
        suggested_only: body.suggested_only,
        max_depth: Some(1),
        limit: Some(crate::directory::hierarchy::MAX_LIMIT as u64),
        from: None,
    };
    let walked =
        crate::directory::hierarchy::walk(&server, &outsider, &query).map_err(|e| {
            match e.status.as_u16() {
                403 => Error::not_found("Room not found or not visible to your server"),
                _ => e,
            }
        })?;
    let mut rooms = walked["rooms"].as_array().cloned().unwrap_or_default();
    if rooms.is_empty() {
        return Err(Error::not_found("Room not found"));
    }
    let root = rooms.remove(0);
    let children: Vec<Value> = rooms
        .into_iter()
        .map(|mut child| {
            // Children are listed without their own children.
            if let Some(object) = child.as_object_mut() {
                object.remove("children_state");
            }
            child
        })
        .collect();
    Ok(json!({ "room": root, "children": children, "inaccessible_children": [] }))
}
