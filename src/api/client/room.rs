//! Rooms: create, upgrade, get an event, list aliases, find an event by timestamp.

use std::sync::Arc;

use ruma::{
    OwnedRoomId, UInt,
    api::{
        Direction,
        client::room::{
            Visibility, aliases,
            create_room::{self, v3::RoomPreset},
            get_event_by_timestamp, get_room_event, upgrade_room,
        },
    },
};
use serde_json::{Map, Value};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        self,
        create::{CreateRoom, Preset},
        visibility,
    },
    server::Server,
    sync::format,
};

pub async fn create(
    server: Arc<Server>,
    request: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    let creation_content: Map<String, Value> = match &body.creation_content {
        Some(raw) => serde_json::from_str(raw.json().get())
            .map_err(|_| Error::bad_json("creation_content must be an object"))?,
        None => Map::new(),
    };
    let mut initial_state = Vec::new();
    for raw in &body.initial_state {
        let event: Value = serde_json::from_str(raw.json().get())
            .map_err(|_| Error::bad_json("Invalid JSON content"))?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
        let state_key = event
            .get("state_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let content = event
            .get("content")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        if !content.is_object() {
            return Err(Error::bad_json("initial_state content must be an object"));
        }
        initial_state.push((kind.to_owned(), state_key.to_owned(), content));
    }
    let power_level_override = match &body.power_level_content_override {
        Some(raw) => Some(
            serde_json::from_str::<Map<String, Value>>(raw.json().get())
                .map_err(|_| Error::bad_json("power_level_content_override must be an object"))?,
        ),
        None => None,
    };
    let preset = body.preset.as_ref().map(|p| match p {
        RoomPreset::PublicChat => Ok(Preset::PublicChat),
        RoomPreset::TrustedPrivateChat => Ok(Preset::TrustedPrivateChat),
        RoomPreset::PrivateChat => Ok(Preset::PrivateChat),
        other => Err(Error::bad_json(format!(
            "Unknown preset {}",
            other.as_str()
        ))),
    });
    let preset = preset.transpose()?;
    if body.name.as_deref().is_some_and(|n| n.len() > 255) {
        return Err(Error::invalid_param("Room name is too long"));
    }
    let params = CreateRoom {
        room_version: body.room_version.clone(),
        preset,
        public: body.visibility == Visibility::Public,
        name: body.name.clone(),
        topic: body.topic.clone(),
        alias_localpart: body.room_alias_name.clone(),
        invite: body.invite.clone(),
        is_direct: body.is_direct,
        creation_content,
        initial_state,
        power_level_override,
    };
    let room_id = rooms::create::create_room(&server, &user, params).await?;
    Ok(create_room::v3::Response::new(room_id))
}

pub async fn upgrade(
    server: Arc<Server>,
    request: Ruma<upgrade_room::v3::Request>,
) -> Result<upgrade_room::v3::Response> {
    let user = request.owned_user()?;
    let new_room: OwnedRoomId = rooms::create::upgrade(
        &server,
        &request.body.room_id,
        &user,
        request.body.new_version.clone(),
        request.body.additional_creators.clone(),
    )
    .await?;
    Ok(upgrade_room::v3::Response::new(new_room))
}

pub async fn event(
    server: Arc<Server>,
    request: Ruma<get_room_event::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let maps = &server.maps;
    let not_found = || Error::not_found("Event not found");
    let pdu = server
        .rooms
        .pdu(maps, &request.body.event_id)?
        .ok_or_else(not_found)?;
    if pdu.room_id != request.body.room_id {
        return Err(not_found());
    }
    let meta = server
        .rooms
        .event_meta(maps, &pdu.event_id)?
        .ok_or_else(not_found)?;
    let current = server.rooms.membership(maps, &pdu.room_id, &user)?;
    if !visibility::can_see(&server, &user, &pdu, &meta, current.as_ref())? {
        return Err(not_found());
    }
    format::client_event_for(
        &server,
        &pdu,
        Some(&meta),
        Some(&user),
        request.device().ok(),
        true,
    )
}

pub async fn list_aliases(
    server: Arc<Server>,
    request: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    let user = request.owned_user()?;
    let room_id = &request.body.room_id;
    // Members may list aliases; so may anyone for a world-readable room.
    if !server.rooms.is_joined(&server.maps, room_id, &user)? {
        let readable = server
            .rooms
            .current_state_event(
                &server.maps,
                room_id,
                &ruma::events::StateEventType::RoomHistoryVisibility,
                "",
            )?
            .and_then(|e| e.content_str("history_visibility"))
            .is_some_and(|v| v == "world_readable");
        if !readable {
            return Err(Error::forbidden("You are not joined to this room"));
        }
    }
    Ok(aliases::v3::Response::new(rooms::alias::local_aliases(
        &server, room_id,
    )?))
}

/// The closest visible event to a timestamp in the given direction.
pub async fn timestamp_to_event(
    server: Arc<Server>,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let user = request.owned_user()?;
    let room_id = &request.body.room_id;
    let maps = &server.maps;
    let membership = server.rooms.membership(maps, room_id, &user)?;
    if membership.is_none() {
        return Err(Error::forbidden("You are not in this room"));
    }
    let target = u64::from(request.body.ts.0);
    let forward = request.body.dir == Direction::Forward;
    // Timestamps are not strictly ordered with the timeline; scan in pages and keep the best.
    let mut best: Option<(u64, ruma::OwnedEventId, UInt)> = None;
    let mut cursor = if forward { 1 } else { u64::MAX };
    loop {
        let page = if forward {
            server
                .rooms
                .timeline_asc(maps, room_id, cursor, u64::MAX, 500)?
        } else {
            server.rooms.timeline_desc(maps, room_id, 0, cursor, 500)?
        };
        let Some((last, _)) = page.last() else { break };
        cursor = if forward {
            last + 1
        } else {
            last.saturating_sub(1)
        };
        for (_, pdu) in &page {
            let ts = u64::from(pdu.origin_server_ts.0);
            let matches = if forward { ts >= target } else { ts <= target };
            if !matches {
                continue;
            }
            let distance = ts.abs_diff(target);
            if best.as_ref().is_some_and(|(d, _, _)| *d <= distance) {
                continue;
            }
            let Some(meta) = server.rooms.event_meta(maps, &pdu.event_id)? else {
                continue;
            };
            if visibility::can_see(&server, &user, pdu, &meta, membership.as_ref())? {
                best = Some((distance, pdu.event_id.clone(), pdu.origin_server_ts.0));
            }
        }
        if page.len() < 500 || cursor == 0 {
            break;
        }
    }
    let (_, event_id, ts) =
        best.ok_or_else(|| Error::not_found("No event found for that timestamp"))?;
    Ok(get_event_by_timestamp::v1::Response::new(
        event_id,
        ruma::MilliSecondsSinceUnixEpoch(ts),
    ))
}
