//! Membership endpoints: join, leave, invite, kick, ban, unban, knock, forget, member lists.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomOrAliasId, UserId,
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, get_member_events,
            invite_user::{self, v3::InvitationRecipient},
            join_room_by_id, join_room_by_id_or_alias, joined_members, joined_rooms, kick_user,
            leave_room, unban_user,
        },
    },
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        alias,
        membership::{self, Moderation},
        state::GroupId,
    },
    server::Server,
    storage::keys::Key,
    sync::format,
};

/// A room id (with no servers to join through) or an alias resolved to its room id and
/// servers: locally, or over federation for another server's alias.
async fn resolve(
    server: &Arc<Server>,
    room: &RoomOrAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    match <&RoomId>::try_from(room.as_str()) {
        Ok(room_id) => Ok((room_id.to_owned(), Vec::new())),
        Err(_) => {
            let alias_id = <&ruma::RoomAliasId>::try_from(room.as_str())
                .map_err(|_| Error::invalid_param("Invalid room id or alias"))?;
            if !server.is_local(alias_id.server_name()) {
                return crate::federation::join::resolve_alias(server, alias_id).await;
            }
            let room_id = alias::resolve_local(server, alias_id)?
                .ok_or_else(|| Error::not_found("Room alias not found"))?
                .room_id;
            Ok((room_id, Vec::new()))
        }
    }
}

pub async fn join_by_id(
    server: Arc<Server>,
    request: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let user = request.owned_user()?;
    membership::join(
        &server,
        &request.body.room_id,
        &user,
        request.body.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(
        request.body.room_id.clone(),
    ))
}

pub async fn join(
    server: Arc<Server>,
    request: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let user = request.owned_user()?;
    let (room_id, mut servers) = resolve(&server, &request.body.room_id_or_alias).await?;
    servers.extend(request.body.via.iter().cloned());
    membership::join(
        &server,
        &room_id,
        &user,
        request.body.reason.as_deref(),
        &servers,
    )
    .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

pub async fn knock(
    server: Arc<Server>,
    request: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let user = request.owned_user()?;
    let (room_id, mut servers) = resolve(&server, &request.body.room_id_or_alias).await?;
    servers.extend(request.body.via.iter().cloned());
    membership::knock(
        &server,
        &room_id,
        &user,
        request.body.reason.as_deref(),
        &servers,
    )
    .await?;
    Ok(knock_room::v3::Response::new(room_id))
}

pub async fn leave(
    server: Arc<Server>,
    request: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let user = request.owned_user()?;
    membership::leave(
        &server,
        &request.body.room_id,
        &user,
        request.body.reason.as_deref(),
    )
    .await?;
    Ok(leave_room::v3::Response::new())
}

pub async fn invite(
    server: Arc<Server>,
    request: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    let user = request.owned_user()?;
    let InvitationRecipient::UserId(recipient) = &request.body.recipient else {
        return Err(Error::forbidden("Third-party invites are not supported"));
    };
    membership::invite(
        &server,
        &request.body.room_id,
        &user,
        &recipient.user_id,
        recipient.reason.as_deref(),
        false,
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

pub async fn kick(
    server: Arc<Server>,
    request: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    membership::moderate(
        &server,
        &body.room_id,
        &user,
        &body.user_id,
        Moderation::Kick,
        body.reason.as_deref(),
    )
    .await?;
    Ok(kick_user::v3::Response::new())
}

pub async fn ban(
    server: Arc<Server>,
    request: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    membership::moderate(
        &server,
        &body.room_id,
        &user,
        &body.user_id,
        Moderation::Ban,
        body.reason.as_deref(),
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

pub async fn unban(
    server: Arc<Server>,
    request: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    membership::moderate(
        &server,
        &body.room_id,
        &user,
        &body.user_id,
        Moderation::Unban,
        body.reason.as_deref(),
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

pub async fn forget(
    server: Arc<Server>,
    request: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    let user = request.owned_user()?;
    let room_id = &request.body.room_id;
    match server.rooms.membership(&server.maps, room_id, &user)? {
        None => return Err(Error::not_found("You have never been in this room")),
        Some(m) if matches!(m.membership.as_str(), "join" | "invite" | "knock") => {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "You must leave the room before forgetting it",
            ));
        }
        Some(_) => {}
    }
    server.maps.userroomid_forgotten.put(
        &server.db,
        Key::new().s(user.as_str()).s(room_id.as_str()).build(),
        b"",
    )?;
    Ok(forget_room::v3::Response::new())
}

pub async fn joined(
    server: Arc<Server>,
    request: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    Ok(joined_rooms::v3::Response::new(
        crate::sync::v3::joined_rooms(&server, request.user()?)?,
    ))
}

/// The state group a user may read: current state while joined (or world-readable), the state
/// when they left otherwise.
pub fn readable_group(server: &Server, room_id: &RoomId, user: &UserId) -> Result<GroupId> {
    let maps = &server.maps;
    if !server.rooms.exists(maps, room_id)? {
        return Err(Error::forbidden("You are not in this room"));
    }
    let membership = server.rooms.membership(maps, room_id, user)?;
    if membership.as_ref().is_some_and(|m| m.membership == "join") {
        return server.rooms.current_group(maps, room_id);
    }
    let world_readable = server
        .rooms
        .current_state_event(maps, room_id, &StateEventType::RoomHistoryVisibility, "")?
        .and_then(|e| e.content_str("history_visibility"))
        .is_some_and(|v| v == "world_readable");
    if world_readable {
        return server.rooms.current_group(maps, room_id);
    }
    match membership {
        Some(m)
            if matches!(m.membership.as_str(), "leave" | "ban") && m.last_join_count.is_some() =>
        {
            Ok(server
                .rooms
                .event_meta(maps, &m.event_id)?
                .map_or(0, |meta| meta.state_after))
        }
        _ => Err(Error::forbidden("You are not in this room")),
    }
}

pub async fn joined_members(
    server: Arc<Server>,
    request: Ruma<joined_members::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let group = readable_group(&server, &request.body.room_id, &user)?;
    let state = server.rooms.load_state(&server.maps, group)?;
    let mut joined = BTreeMap::new();
    for pdu in server.rooms.state_events(&server.maps, &state)? {
        if pdu.kind == TimelineEventType::RoomMember && pdu.membership().as_deref() == Some("join")
        {
            let content = pdu.content_value();
            joined.insert(
                pdu.state_key.clone().unwrap_or_default(),
                json!({ "display_name": content.get("displayname"), "avatar_url": content.get("avatar_url") }),
            );
        }
    }
    Ok(json!({ "joined": joined }))
}

pub async fn members(
    server: Arc<Server>,
    request: Ruma<get_member_events::v3::Request>,
) -> Result<Value> {
    let user: OwnedUserId = request.owned_user()?;
    let body = &request.body;
    let group = match &body.at {
        Some(at) => {
            readable_group(&server, &body.room_id, &user)?;
            let mut position = crate::sync::parse_token(at)?;
            // A user who left reads the room as it was when they left, whatever `at` says.
            if let Some(m) = server
                .rooms
                .membership(&server.maps, &body.room_id, &user)?
                && matches!(m.membership.as_str(), "leave" | "ban")
            {
                position = position.min(m.count);
            }
            server
                .rooms
                .group_at(&server.maps, &body.room_id, position)?
        }
        None => readable_group(&server, &body.room_id, &user)?,
    };
    let state = server.rooms.load_state(&server.maps, group)?;
    let mut chunk = Vec::new();
    for pdu in server.rooms.state_events(&server.maps, &state)? {
        if pdu.kind != TimelineEventType::RoomMember {
            continue;
        }
        let membership = pdu.membership().unwrap_or_default();
        if body
            .membership
            .as_ref()
            .is_some_and(|m| m.as_str() != membership)
        {
            continue;
        }
        if body
            .not_membership
            .as_ref()
            .is_some_and(|m| m.as_str() == membership)
        {
            continue;
        }
        let meta = server.rooms.event_meta(&server.maps, &pdu.event_id)?;
        chunk.push(format::client_event(
            &server,
            &pdu,
            meta.as_deref(),
            request.device().ok(),
            true,
        )?);
    }
    Ok(json!({ "chunk": chunk }))
}
