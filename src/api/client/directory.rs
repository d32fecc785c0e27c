//! Room directory visibility (`/directory/list/room/{roomId}`).

use std::sync::Arc;

use ruma::api::client::{
    directory::{get_room_visibility, set_room_visibility},
    room::Visibility,
};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::power::PowerLevels,
    server::Server,
};

pub async fn get(
    server: Arc<Server>,
    request: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    if !server.rooms.exists(&server.maps, &request.body.room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    let published = server
        .maps
        .roomid_published
        .contains(request.body.room_id.as_bytes())?;
    Ok(get_room_visibility::v3::Response::new(if published {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

pub async fn set(
    server: Arc<Server>,
    request: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let user = request.owned_user()?;
    let room_id = &request.body.room_id;
    if !server.rooms.exists(&server.maps, room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    // Publishing needs the power to change the canonical alias, as Synapse checks.
    let power = PowerLevels::current(&server, room_id)?;
    let required = power.for_event(&ruma::events::TimelineEventType::RoomCanonicalAlias, true);
    if !server.rooms.is_joined(&server.maps, room_id, &user)? {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    power.require(&user, required, "publish this room")?;
    match request.body.visibility {
        Visibility::Public => {
            server
                .maps
                .roomid_published
                .put(&server.db, room_id.as_bytes(), b"")?
        }
        _ => server
            .maps
            .roomid_published
            .delete(&server.db, room_id.as_bytes())?,
    }
    Ok(set_room_visibility::v3::Response::new())
}
