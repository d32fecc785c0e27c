//! Room aliases: `PUT/GET/DELETE /directory/room/{alias}`.

use std::sync::Arc;

use ruma::api::client::alias::{create_alias, delete_alias, get_alias};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{alias, power::PowerLevels},
    server::Server,
};

pub async fn create(
    server: Arc<Server>,
    request: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    if !server.is_local(body.room_alias.server_name()) {
        return Err(Error::invalid_param("Alias must be on this server"));
    }
    if !server.rooms.exists(&server.maps, &body.room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    if !server.rooms.is_joined(&server.maps, &body.room_id, &user)? {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    alias::create(&server, &body.room_alias, &body.room_id, &user)?;
    Ok(create_alias::v3::Response::new())
}

pub async fn get(
    server: Arc<Server>,
    request: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    let alias_id = &request.body.room_alias;
    if !server.is_local(alias_id.server_name()) {
        return Err(Error::not_found(
            "Resolving aliases of other servers needs federation, which is not supported yet",
        ));
    }
    let record = alias::resolve_local(&server, alias_id)?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(get_alias::v3::Response::new(
        record.room_id,
        vec![server.server_name().clone()],
    ))
}

pub async fn delete(
    server: Arc<Server>,
    request: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let user = request.owned_user()?;
    let alias_id = &request.body.room_alias;
    let record = alias::resolve_local(&server, alias_id)?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    // The creator may delete; so may anyone allowed to change the canonical alias.
    if record.creator != user {
        let power = PowerLevels::current(&server, &record.room_id)?;
        let required = power.for_event(&ruma::events::TimelineEventType::RoomCanonicalAlias, true);
        power.require(&user, required, "delete this alias")?;
    }
    alias::delete(&server, alias_id)?;
    Ok(delete_alias::v3::Response::new())
}
