//! Room state: read all, read one, send (PUT) a state event.

use std::sync::Arc;

use ruma::{
    RoomAliasId,
    api::client::state::{
        get_state_event_for_key::{self, v3::StateEventFormat},
        get_state_events, send_state_event,
    },
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Value, json};

use super::membership::readable_group;
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        alias,
        membership::require_joined,
        timeline::{self, NewEvent},
    },
    server::Server,
    sync::format,
};

pub async fn all(
    server: Arc<Server>,
    request: Ruma<get_state_events::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let group = readable_group(&server, &request.body.room_id, &user)?;
    let state = server.rooms.load_state(&server.maps, group)?;
    let mut events = Vec::new();
    for pdu in server.rooms.state_events(&server.maps, &state)? {
        let meta = server.rooms.event_meta(&server.maps, &pdu.event_id)?;
        events.push(format::client_event(
            &server,
            &pdu,
            meta.as_deref(),
            request.device().ok(),
            true,
        )?);
    }
    Ok(Value::Array(events))
}

pub async fn one(
    server: Arc<Server>,
    request: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    let group = readable_group(&server, &body.room_id, &user)?;
    let state = server.rooms.load_state(&server.maps, group)?;
    let pdu = server
        .rooms
        .state_event(&server.maps, &state, &body.event_type, &body.state_key)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if body.format == StateEventFormat::Event {
        let meta = server.rooms.event_meta(&server.maps, &pdu.event_id)?;
        return format::client_event(&server, &pdu, meta.as_deref(), request.device().ok(), true);
    }
    Ok(pdu.content_value())
}

pub async fn send(
    server: Arc<Server>,
    request: Ruma<send_state_event::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    let content: Value = serde_json::from_str(body.body.json().get())
        .map_err(|_| Error::bad_json("Invalid JSON content"))?;
    if !content.is_object() {
        return Err(Error::bad_json("Content must be a JSON object"));
    }
    require_joined_or_member_change(&server, &body.room_id, &user, &body.event_type)?;
    if body.event_type == StateEventType::RoomCanonicalAlias {
        check_canonical_alias(&server, &body.room_id, &content)?;
    }
    // `?org.matrix.msc4140.delay=<ms>`: scheduled, not sent now.
    if let Some(delay) = super::delayed::requested_delay(&request.query)? {
        let delay_id = server.delayed.schedule(
            &server,
            &user,
            &body.room_id,
            &body.event_type.to_string(),
            Some(body.state_key.clone()),
            content,
            delay,
        )?;
        return Ok(json!({ "delay_id": delay_id }));
    }
    // Re-sending the current content is a no-op that returns the existing event (as Synapse).
    if let Some(current) = server.rooms.current_state_event(
        &server.maps,
        &body.room_id,
        &body.event_type,
        &body.state_key,
    )? && current.sender == user
        && current.content_value() == content
    {
        return Ok(json!({ "event_id": current.event_id }));
    }
    let mut event = NewEvent::state(
        TimelineEventType::from(body.event_type.to_string()),
        body.state_key.clone(),
        content,
    );
    event.timestamp = None;
    let pdu = timeline::send(&server, &body.room_id, &user, event, None).await?;
    Ok(json!({ "event_id": pdu.event_id }))
}

fn require_joined_or_member_change(
    server: &Server,
    room_id: &ruma::RoomId,
    user: &ruma::UserId,
    kind: &StateEventType,
) -> Result<()> {
    // Membership changes are judged by the auth rules (a user can set their own leave, etc.).
    if *kind == StateEventType::RoomMember {
        if !server.rooms.exists(&server.maps, room_id)? {
            return Err(Error::not_found("Unknown room"));
        }
        return Ok(());
    }
    require_joined(server, room_id, user)
}

/// `m.room.canonical_alias` may only name local aliases that point to this room.
fn check_canonical_alias(server: &Server, room_id: &ruma::RoomId, content: &Value) -> Result<()> {
    let mut aliases: Vec<&str> = Vec::new();
    if let Some(alias) = content.get("alias") {
        aliases.push(
            alias
                .as_str()
                .ok_or_else(|| Error::bad_json("alias must be a string"))?,
        );
    }
    if let Some(alt) = content.get("alt_aliases") {
        let alt = alt
            .as_array()
            .ok_or_else(|| Error::bad_json("alt_aliases must be an array"))?;
        for alias in alt {
            aliases.push(
                alias
                    .as_str()
                    .ok_or_else(|| Error::bad_json("alt_aliases must hold strings"))?,
            );
        }
    }
    for alias_str in aliases {
        let alias_id = <&RoomAliasId>::try_from(alias_str)
            .map_err(|_| Error::invalid_param(format!("Invalid alias {alias_str}")))?;
        if !server.is_local(alias_id.server_name()) {
            continue;
        }
        match alias::resolve_local(server, alias_id)? {
            Some(record) if record.room_id == room_id => {}
            _ => {
                return Err(Error::bad_alias(format!(
                    "Alias {alias_str} does not point to this room"
                )));
            }
        }
    }
    Ok(())
}

#[allow(dead_code)]
fn _unused() -> Value {
    json!({})
}
