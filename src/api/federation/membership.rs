//! Joining our rooms from another server: `GET /_matrix/federation/v1/make_join/{roomId}/
//! {userId}` hands out a join template, `PUT /_matrix/federation/v{1,2}/send_join/{roomId}/
//! {eventId}` takes the signed join and answers with the room's state and auth chain.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, ServerName,
    api::federation::membership::{create_join_event, prepare_join_event},
    events::TimelineEventType,
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    federation::{inbound, protocol},
    rooms::timeline::{self, NewEvent},
    server::Server,
};

pub async fn make_join(
    server: Arc<Server>,
    request: Ruma<prepare_join_event::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    template(
        &server,
        origin,
        &body.room_id,
        &body.user_id,
        "join",
        Some(&body.ver),
    )
    .await
}

pub async fn make_leave(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::membership::prepare_leave_event::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    template(&server, origin, &body.room_id, &body.user_id, "leave", None).await
}

pub async fn make_knock(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::membership::prepare_knock_event::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?;
    let body = &request.body;
    template(
        &server,
        origin,
        &body.room_id,
        &body.user_id,
        "knock",
        Some(&body.ver),
    )
    .await
}

/// A membership template (join, leave, knock) for a user of `origin`, refused early if the
/// room's rules would not allow it now.
async fn template(
    server: &Arc<Server>,
    origin: &ServerName,
    room_id: &RoomId,
    user: &ruma::UserId,
    membership: &str,
    versions: Option<&[ruma::RoomVersionId]>,
) -> Result<Value> {
    if user.server_name() != origin {
        return Err(Error::forbidden("The user is not on the requesting server"));
    }
    check_resident(server, room_id, origin)?;
    let version = server.rooms.version(&server.maps, room_id)?;
    if versions.is_some_and(|supported| !supported.contains(&version)) {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("The room is version {version}, which the requesting server does not support"),
        )
        .with_field("room_version", json!(version)));
    }
    let rules = crate::rooms::version::rules(&version)?;
    let _lock = server.rooms.lock(room_id).await;
    let group = server.rooms.current_group(&server.maps, room_id)?;
    let state = server.rooms.load_state(&server.maps, group)?;
    let event = NewEvent::state(
        TimelineEventType::RoomMember,
        user.as_str(),
        json!({ "membership": membership }),
    );
    let pdu = timeline::build(
        server,
        Some(room_id),
        &version,
        &rules,
        &state,
        user,
        &event,
    )?;
    timeline::authorize(server, &rules, &pdu, &state)?;
    let mut template = pdu.json.clone();
    template.remove("signatures");
    template.remove("hashes");
    Ok(json!({ "room_version": version, "event": template }))
}

pub async fn send_join_v2(
    server: Arc<Server>,
    request: Ruma<create_join_event::v2::Request>,
) -> Result<Value> {
    let origin = request.origin()?.to_owned();
    let body = &request.body;
    send_join(&server, &origin, &body.room_id, &body.event_id, &body.pdu).await
}

pub async fn send_leave_v2(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::membership::create_leave_event::v2::Request>,
) -> Result<Value> {
    let origin = request.origin()?.to_owned();
    let body = &request.body;
    accept_membership(
        &server,
        &origin,
        &body.room_id,
        &body.event_id,
        &body.pdu,
        "leave",
    )
    .await?;
    Ok(json!({}))
}

pub async fn send_knock(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::membership::create_knock_event::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?.to_owned();
    let body = &request.body;
    accept_membership(
        &server,
        &origin,
        &body.room_id,
        &body.event_id,
        &body.pdu,
        "knock",
    )
    .await?;
    // What the knocker may see of the room: the stripped-state event types, as full PDUs.
    let maps = &server.maps;
    let mut state = Vec::new();
    for kind in crate::federation::invite::STRIPPED_TYPES {
        if let Some(event) = server
            .rooms
            .current_state_event(maps, &body.room_id, kind, "")?
        {
            state.push(event.to_federation_value());
        }
    }
    Ok(json!({ "knock_room_state": state }))
}

/// Takes a signed membership event (leave, knock) from `origin` into the room and passes it
/// on to the other servers in it.
async fn accept_membership(
    server: &Arc<Server>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    raw: &serde_json::value::RawValue,
    membership: &str,
) -> Result<()> {
    check_resident(server, room_id, origin)?;
    let object = protocol::pdu::parse(raw).map_err(|e| Error::bad_json(e.to_string()))?;
    check_membership_event(&object, room_id, origin, membership)?;
    let version = server.rooms.version(&server.maps, room_id)?;
    let rules = crate::rooms::version::rules(&version)?;
    let computed =
        protocol::pdu::event_id(&object, &rules).map_err(|e| Error::bad_json(e.to_string()))?;
    if computed != event_id {
        return Err(Error::bad_json("Event id does not match the event"));
    }
    let (_, outcome) = inbound::handle_object(server, origin, object, 0).await;
    outcome?;
    forward(server, origin, room_id, event_id)
}

/// Sends an event a server handed us directly to every other server in the room.
fn forward(
    server: &Server,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &ruma::EventId,
) -> Result<()> {
    let (Some(pdu), Some(meta)) = (
        server.rooms.pdu(&server.maps, event_id)?,
        server.rooms.event_meta(&server.maps, event_id)?,
    ) else {
        return Ok(());
    };
    let others: Vec<_> = server
        .federation
        .sender
        .servers_in_room(server, room_id)?
        .iter()
        .filter(|s| s.as_str() != origin.as_str())
        .cloned()
        .collect();
    server
        .federation
        .sender
        .queue_pdu(server, &pdu, meta.count, &others)
}

async fn send_join(
    server: &Arc<Server>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    raw: &serde_json::value::RawValue,
) -> Result<Value> {
    check_resident(server, room_id, origin)?;
    let object = protocol::pdu::parse(raw).map_err(|e| Error::bad_json(e.to_string()))?;
    check_membership_event(&object, room_id, origin, "join")?;
    let version = server.rooms.version(&server.maps, room_id)?;
    let rules = crate::rooms::version::rules(&version)?;
    let computed =
        protocol::pdu::event_id(&object, &rules).map_err(|e| Error::bad_json(e.to_string()))?;
    if computed != event_id {
        return Err(Error::bad_json("Event id does not match the event"));
    }
    let (_, outcome) = inbound::handle_object(server, origin, object, 0).await;
    outcome?;
    let meta = server
        .rooms
        .event_meta(&server.maps, event_id)?
        .ok_or_else(|| Error::internal("join persisted without metadata"))?;
    // Everyone else in the room hears of the join from us.
    forward(server, origin, room_id, event_id)?;
    let (state, auth_chain) = state_and_auth_chain(server, meta.state_before)?;
    let mut servers: Vec<String> = server
        .federation
        .sender
        .servers_in_room(server, room_id)?
        .iter()
        .map(ToString::to_string)
        .collect();
    servers.push(server.server_name().to_string());
    Ok(json!({
        "origin": server.server_name(),
        "state": state,
        "auth_chain": auth_chain,
        "members_omitted": false,
        "servers_in_room": servers,
    }))
}

/// The PDUs of a state group and of their full auth chain.
pub fn state_and_auth_chain(server: &Server, group: u64) -> Result<(Vec<Value>, Vec<Value>)> {
    let maps = &server.maps;
    let state = server.rooms.load_state(maps, group)?;
    let events = server.rooms.state_events(maps, &state)?;
    let ids: Vec<OwnedEventId> = events.iter().map(|p| p.event_id.clone()).collect();
    let chain = crate::rooms::resolve::auth_chain(server, &ids)?;
    let mut auth = Vec::with_capacity(chain.len());
    for id in chain {
        if let Some(pdu) = server.rooms.pdu(maps, &id)? {
            auth.push(pdu.to_federation_value());
        }
    }
    Ok((
        events.iter().map(|p| p.to_federation_value()).collect(),
        auth,
    ))
}

/// We can only hand out joins for rooms we are in, to servers the room's ACL allows.
fn check_resident(server: &Server, room_id: &RoomId, origin: &ServerName) -> Result<()> {
    let joined_here = server
        .rooms
        .local_joined(server, room_id)
        .map(|members| !members.is_empty())
        .unwrap_or(false);
    if !joined_here {
        return Err(Error::not_found("This server is not in that room"));
    }
    if let Some(reason) = crate::federation::acl::denies(server, room_id, origin)? {
        return Err(Error::forbidden(reason));
    }
    Ok(())
}

/// A membership event of the expected kind for a user of `origin` in this room, nothing else.
fn check_membership_event(
    object: &CanonicalJsonObject,
    room_id: &RoomId,
    origin: &ServerName,
    expected: &str,
) -> Result<()> {
    let text = |field: &str| match object.get(field) {
        Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let membership = match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(m.as_str()),
            _ => None,
        },
        _ => None,
    };
    let sender = text("sender").unwrap_or_default();
    let sender_server = sender.rsplit_once(':').map_or("", |(_, _)| {
        sender.split_once(':').map_or("", |(_, server)| server)
    });
    if text("type") != Some("m.room.member")
        || membership != Some(expected)
        || text("state_key") != Some(sender)
        || text("room_id") != Some(room_id.as_str())
        || sender_server != origin.as_str()
    {
        return Err(Error::bad_json(format!(
            "Not a {expected} of a user of the sending server in this room"
        )));
    }
    Ok(())
}

pub async fn invite_v2(
    server: Arc<Server>,
    request: Ruma<ruma::api::federation::membership::create_invite::v2::Request>,
) -> Result<Value> {
    let origin = request.origin()?.to_owned();
    let body = &request.body;
    let stripped: Vec<Value> = body
        .invite_room_state
        .iter()
        .filter_map(stripped_from)
        .collect();
    crate::federation::invite::receive_invite(
        &server,
        &origin,
        &body.room_id,
        &body.event_id,
        &body.room_version,
        &body.event,
        stripped,
    )
    .await
}

/// Invite state as clients see it (type, state_key, content, sender), from either form a
/// server may send: full PDUs (Matrix 1.16+) or the older stripped events.
#[allow(deprecated)]
fn stripped_from(raw: &ruma::api::federation::membership::RawStrippedState) -> Option<Value> {
    use ruma::api::federation::membership::RawStrippedState;
    let value: Value = match raw {
        RawStrippedState::Stripped(event) => serde_json::from_str(event.json().get()).ok()?,
        RawStrippedState::Pdu(pdu) => serde_json::from_str(pdu.get()).ok()?,
        _ => return None,
    };
    Some(json!({
        "type": value.get("type")?,
        "state_key": value.get("state_key")?,
        "content": value.get("content")?,
        "sender": value.get("sender")?,
    }))
}
