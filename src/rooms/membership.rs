//! Membership changes a local user asks for: join, leave, invite, kick, ban, unban, knock.
//! The auth rules decide; this module builds the right `m.room.member` content first.

use ruma::{
    OwnedUserId, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Map, Value, json};

use super::{
    pdu::PduRef,
    power::PowerLevels,
    timeline::{self, NewEvent},
};
use crate::{
    error::{Error, Result},
    server::Server,
};

fn member_event(target: &UserId, content: Map<String, Value>) -> NewEvent {
    NewEvent::state(
        TimelineEventType::RoomMember,
        target.as_str(),
        Value::Object(content),
    )
}

fn base_content(membership: &str, reason: Option<&str>) -> Map<String, Value> {
    let mut content = Map::new();
    content.insert("membership".into(), json!(membership));
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        content.insert("reason".into(), json!(reason));
    }
    content
}

/// Adds the user's profile (displayname, avatar_url) to a member event's content.
fn with_profile(
    server: &Server,
    user: &UserId,
    mut content: Map<String, Value>,
) -> Result<Map<String, Value>> {
    let profile = server.users.profile(&server.maps, user)?;
    if let Some(name) = profile.displayname {
        content.insert("displayname".into(), json!(name));
    }
    if let Some(avatar) = profile.avatar_url {
        content.insert("avatar_url".into(), json!(avatar));
    }
    Ok(content)
}

/// Joins a room: locally when one of our users is in it (we are resident), else over
/// federation through `via` (and the servers of the room's known members).
pub async fn join(
    server: &std::sync::Arc<Server>,
    room_id: &RoomId,
    user: &UserId,
    reason: Option<&str>,
    via: &[ruma::OwnedServerName],
) -> Result<PduRef> {
    let known = server.rooms.exists(&server.maps, room_id)?;
    let resident = known && !server.rooms.local_joined(server, room_id)?.is_empty();
    if !resident {
        let current = server.rooms.membership(&server.maps, room_id, user)?;
        if current.as_ref().is_some_and(|m| m.membership == "ban") {
            return Err(Error::forbidden("You are banned from this room"));
        }
        let mut servers = via.to_vec();
        if known {
            servers.extend(
                server
                    .federation
                    .sender
                    .servers_in_room(server, room_id)?
                    .iter()
                    .cloned(),
            );
        }
        // Whoever invited us is in the room.
        if let Some(invite) = current.filter(|m| m.membership == "invite")
            && let Some(pdu) = server.rooms.pdu(&server.maps, &invite.event_id)?
        {
            servers.insert(0, pdu.sender.server_name().to_owned());
        }
        servers.dedup();
        let content = with_profile(server, user, base_content("join", reason))?;
        if !servers.iter().any(|s| !server.is_local(s)) && !known {
            // Nothing to join through.
            return Err(Error::not_found(
                "This server does not know the room; give a server to join through (`via`)",
            ));
        }
        if !servers.is_empty() {
            return crate::federation::join::join_remote(server, room_id, user, content, &servers)
                .await;
        }
    }
    let _lock = server.rooms.lock(room_id).await;
    let current = server.rooms.membership(&server.maps, room_id, user)?;
    if let Some(current) = &current {
        if current.membership == "join"
            && let Some(pdu) = server.rooms.pdu(&server.maps, &current.event_id)?
        {
            return Ok(pdu);
        }
        if current.membership == "ban" {
            return Err(Error::forbidden("You are banned from this room"));
        }
    }
    let mut content = with_profile(server, user, base_content("join", reason))?;
    if current.as_ref().is_none_or(|m| m.membership != "invite")
        && let Some(authoriser) = restricted_join_authoriser(server, room_id, user)?
    {
        content.insert("join_authorised_via_users_server".into(), json!(authoriser));
    }
    timeline::send_locked(server, room_id, user, member_event(user, content), None)
}

/// For `restricted` rooms: a local member able to invite, if the user is in an allowed room.
/// `Ok(None)` when the rule does not apply (the auth rules then decide).
fn restricted_join_authoriser(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<OwnedUserId>> {
    let maps = &server.maps;
    let Some(rules) =
        server
            .rooms
            .current_state_event(maps, room_id, &StateEventType::RoomJoinRules, "")?
    else {
        return Ok(None);
    };
    let content = rules.content_value();
    let join_rule = content
        .get("join_rule")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if join_rule != "restricted" && join_rule != "knock_restricted" {
        return Ok(None);
    }
    let allowed = content
        .get("allow")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let in_allowed_room = allowed.iter().any(|entry| {
        entry.get("type").and_then(Value::as_str) == Some("m.room_membership")
            && entry
                .get("room_id")
                .and_then(Value::as_str)
                .and_then(|id| <&RoomId>::try_from(id).ok())
                .is_some_and(|allowed_room| {
                    server
                        .rooms
                        .is_joined(maps, allowed_room, user)
                        .unwrap_or(false)
                })
    });
    if !in_allowed_room {
        return Err(Error::forbidden(
            "You are not invited to this room and not a member of a room that grants access",
        ));
    }
    let power = PowerLevels::current(server, room_id)?;
    let authoriser = server
        .rooms
        .members(maps, room_id)?
        .into_iter()
        .filter(|(member, m)| m.membership == "join" && server.is_local(member.server_name()))
        .find(|(member, _)| power.can_invite(member))
        .map(|(member, _)| member);
    match authoriser {
        Some(authoriser) => Ok(Some(authoriser)),
        None => Err(Error::forbidden(
            "No member of this server can authorise your join",
        )),
    }
}

pub async fn leave(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
    reason: Option<&str>,
) -> Result<()> {
    let current = server.rooms.membership(&server.maps, room_id, user)?;
    let resident = server.rooms.exists(&server.maps, room_id)?
        && !server.rooms.local_joined(server, room_id)?.is_empty();
    if !resident
        && current
            .as_ref()
            .is_some_and(|m| matches!(m.membership.as_str(), "invite" | "knock"))
    {
        // Rejecting an invite or rescinding a knock in a room only other servers are in.
        let servers = crate::federation::join::servers_from_stored_state(server, room_id, user);
        return crate::federation::join::leave_remote(
            server,
            room_id,
            user,
            base_content("leave", reason),
            &servers,
        )
        .await;
    }
    if !server.rooms.exists(&server.maps, room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    let _lock = server.rooms.lock(room_id).await;
    match server.rooms.membership(&server.maps, room_id, user)? {
        Some(m) if matches!(m.membership.as_str(), "join" | "invite" | "knock") => {}
        // Leaving a room one is not in is a no-op, as in Synapse.
        _ => return Ok(()),
    }
    timeline::send_locked(
        server,
        room_id,
        user,
        member_event(user, base_content("leave", reason)),
        None,
    )?;
    Ok(())
}

pub async fn invite(
    server: &Server,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<()> {
    let _lock = server.rooms.lock(room_id).await;
    require_joined(server, room_id, sender)?;
    if let Some(m) = server.rooms.membership(&server.maps, room_id, target)? {
        match m.membership.as_str() {
            "join" => return Err(Error::forbidden(format!("{target} is already in the room"))),
            "ban" => {
                return Err(Error::forbidden(format!(
                    "{target} is banned from the room"
                )));
            }
            _ => {}
        }
    }
    if !server.is_local(target.server_name()) {
        if !crate::federation::enabled(server) {
            return Err(Error::forbidden(
                "The user is on another server and this server does not federate",
            ));
        }
        // Built and authorised here, countersigned by the invitee's server, then appended.
        let mut content = base_content("invite", reason);
        if is_direct {
            content.insert("is_direct".into(), json!(true));
        }
        let version = server.rooms.version(&server.maps, room_id)?;
        let rules = super::version::rules(&version)?;
        let group = server.rooms.current_group(&server.maps, room_id)?;
        let state = server.rooms.load_state(&server.maps, group)?;
        let pdu = timeline::build(
            server,
            Some(room_id),
            &version,
            &rules,
            &state,
            sender,
            &member_event(target, content),
        )?;
        timeline::authorize(server, &rules, &pdu, &state)?;
        return crate::federation::invite::invite_remote(server, pdu, group).await;
    }
    if !server.users.exists(&server.maps, target)? {
        return Err(Error::not_found(format!("User {target} does not exist")));
    }
    let mut content = with_profile(server, target, base_content("invite", reason))?;
    if is_direct {
        content.insert("is_direct".into(), json!(true));
    }
    timeline::send_locked(server, room_id, sender, member_event(target, content), None)?;
    Ok(())
}

/// Kick (`leave`), ban or unban (`leave` from `ban`) another user.
pub async fn moderate(
    server: &Server,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    action: Moderation,
    reason: Option<&str>,
) -> Result<()> {
    let _lock = server.rooms.lock(room_id).await;
    require_joined(server, room_id, sender)?;
    let current = server.rooms.membership(&server.maps, room_id, target)?;
    let membership = current.as_ref().map(|m| m.membership.as_str());
    let new_membership = match action {
        Moderation::Kick => {
            if !matches!(membership, Some("join" | "invite" | "knock")) {
                return Err(Error::forbidden(format!("{target} is not in the room")));
            }
            "leave"
        }
        Moderation::Ban => "ban",
        Moderation::Unban => {
            if membership != Some("ban") {
                return Err(Error::forbidden(format!("{target} is not banned")));
            }
            "leave"
        }
    };
    let mut content = base_content(new_membership, reason);
    if new_membership == "ban" {
        content =
            with_profile(server, target, content).unwrap_or_else(|_| base_content("ban", reason));
    }
    timeline::send_locked(server, room_id, sender, member_event(target, content), None)?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub enum Moderation {
    Kick,
    Ban,
    Unban,
}

pub async fn knock(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
    reason: Option<&str>,
    via: &[ruma::OwnedServerName],
) -> Result<()> {
    let resident = server.rooms.exists(&server.maps, room_id)?
        && !server.rooms.local_joined(server, room_id)?.is_empty();
    if !resident {
        if let Some(m) = server.rooms.membership(&server.maps, room_id, user)?
            && matches!(m.membership.as_str(), "join" | "invite" | "ban")
        {
            return Err(Error::forbidden(format!(
                "You cannot knock: your membership is {}",
                m.membership
            )));
        }
        let content = with_profile(server, user, base_content("knock", reason))?;
        return crate::federation::join::knock_remote(server, room_id, user, content, via).await;
    }
    let _lock = server.rooms.lock(room_id).await;
    if let Some(m) = server.rooms.membership(&server.maps, room_id, user)? {
        match m.membership.as_str() {
            "join" => return Err(Error::forbidden("You are already in the room")),
            "invite" => return Err(Error::forbidden("You are already invited to the room")),
            "ban" => return Err(Error::forbidden("You are banned from this room")),
            _ => {}
        }
    }
    let content = with_profile(server, user, base_content("knock", reason))?;
    timeline::send_locked(server, room_id, user, member_event(user, content), None)?;
    Ok(())
}

pub fn require_joined(server: &Server, room_id: &RoomId, user: &UserId) -> Result<()> {
    if !server.rooms.exists(&server.maps, room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    if server.rooms.is_joined(&server.maps, room_id, user)? {
        Ok(())
    } else {
        Err(Error::forbidden("You are not joined to this room"))
    }
}
