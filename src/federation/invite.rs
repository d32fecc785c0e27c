//! Invites across servers (`PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`): the
//! invitee's server countersigns the invite before it enters the room. Outbound for our users
//! inviting others; inbound for invites to our users into rooms we may not know yet (kept as
//! the invite event plus the stripped state the inviting server sent).

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, EventId, RoomId, RoomVersionId, ServerName, UserId,
    events::StateEventType, signatures::PublicKeyMap,
};
use serde_json::{Value, json};

use super::{encode, protocol};
use crate::{
    error::{Error, Result},
    rooms::{Membership, pdu::Pdu, timeline},
    server::Server,
    storage::keys::Key,
};

/// The state event types invitees and knockers get to see (with empty state keys).
pub const STRIPPED_TYPES: &[StateEventType] = &[
    StateEventType::RoomCreate,
    StateEventType::RoomJoinRules,
    StateEventType::RoomName,
    StateEventType::RoomAvatar,
    StateEventType::RoomCanonicalAlias,
    StateEventType::RoomEncryption,
    StateEventType::RoomTopic,
];

/// Sends an invite built and authorised here to the invitee's server and appends the
/// countersigned event it returns. The caller holds the room's lock.
pub async fn invite_remote(server: &Server, pdu: Pdu, group: u64) -> Result<()> {
    let maps = &server.maps;
    let target = pdu
        .state_user()
        .ok_or_else(|| Error::internal("invite without target"))?
        .to_owned();
    let destination = target.server_name().to_owned();
    let version = server.rooms.version(maps, &pdu.room_id)?;
    let rules = crate::rooms::version::rules(&version)?;
    let state = server.rooms.load_state(maps, group)?;
    let mut stripped = Vec::new();
    for kind in STRIPPED_TYPES {
        if let Some(event) = server.rooms.state_event(maps, &state, kind, "")? {
            // Full PDUs, as the spec requires since Matrix 1.16.
            stripped.push(event.to_federation_value());
        }
    }
    if let Some(sender) = server.rooms.state_event(
        maps,
        &state,
        &StateEventType::RoomMember,
        pdu.sender.as_str(),
    )? {
        stripped.push(sender.to_federation_value());
    }
    let body = json!({
        "room_version": version,
        "event": pdu.to_federation_value(),
        "invite_room_state": stripped,
    });
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        encode(pdu.room_id.as_str()),
        encode(pdu.event_id.as_str())
    );
    let answer = server
        .federation
        .client
        .send(server, &destination, http::Method::PUT, &path, Some(&body))
        .await?;
    let returned: CanonicalJsonObject = serde_json::from_value(answer["event"].clone())
        .map_err(|e| Error::bad_json(format!("invite answer: {e}")))?;
    let returned_id =
        protocol::pdu::event_id(&returned, &rules).map_err(|e| Error::bad_json(e.to_string()))?;
    if returned_id != pdu.event_id {
        return Err(Error::bad_json("The invitee's server changed the invite"));
    }
    // It must carry the invitee's server's signature now (and still ours).
    let keys = server.federation.keys.get(server, &destination).await?;
    let ours = super::keys::our_document(server)?;
    let ours = protocol::keys::verify_server_keys(&ours, Some(server.server_name()))
        .map_err(|e| Error::internal(e.to_string()))?;
    let map: PublicKeyMap = [
        (destination.to_string(), keys.keys.public_key_set()),
        (server.server_name().to_string(), ours.public_key_set()),
    ]
    .into();
    let mut only_theirs = returned.clone();
    if let Some(ruma::CanonicalJsonValue::Object(signatures)) = only_theirs.get_mut("signatures")
        && !signatures.contains_key(destination.as_str())
    {
        return Err(Error::bad_json(
            "The invitee's server did not sign the invite",
        ));
    }
    only_theirs.remove("unsigned");
    ruma::signatures::verify_json(&map, &redacted_for_signing(&only_theirs, &rules)?)
        .map_err(|e| Error::bad_json(format!("invite signatures: {e}")))?;
    let signed = Pdu::from_json(pdu.event_id.clone(), returned)?;
    timeline::persist(server, &rules, signed, group, &state, None)?;
    Ok(())
}

/// Signatures on an event cover its redacted form without `unsigned`.
fn redacted_for_signing(
    event: &CanonicalJsonObject,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<CanonicalJsonObject> {
    let mut redacted = ruma::canonical_json::redact(event.clone(), &rules.redaction, None)
        .map_err(|e| Error::bad_json(e.to_string()))?;
    redacted.remove("unsigned");
    redacted.remove("age_ts");
    Ok(redacted)
}

/// An invite from another server to one of our users: check, countersign, keep.
pub async fn receive_invite(
    server: &Arc<Server>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    version: &RoomVersionId,
    raw: &serde_json::value::RawValue,
    invite_room_state: Vec<Value>,
) -> Result<Value> {
    if !crate::rooms::version::is_supported(version) {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("Room version {version} is not supported here"),
        )
        .with_field("room_version", json!(version)));
    }
    let rules = crate::rooms::version::rules(version)?;
    let mut object = protocol::pdu::parse(raw).map_err(|e| Error::bad_json(e.to_string()))?;
    if protocol::pdu::event_id(&object, &rules).map_err(|e| Error::bad_json(e.to_string()))?
        != event_id
    {
        return Err(Error::bad_json("Event id does not match the event"));
    }
    let pdu = Pdu::from_json(event_id.to_owned(), object.clone())?;
    let target = pdu
        .state_user()
        .ok_or_else(|| Error::bad_json("Invite without state_key"))?
        .to_owned();
    if pdu.kind.to_string() != "m.room.member"
        || pdu.membership().as_deref() != Some("invite")
        || pdu.room_id != room_id
        || pdu.sender.server_name() != origin
    {
        return Err(Error::bad_json(
            "Not an invite from the sending server into this room",
        ));
    }
    if !server.is_local(target.server_name()) || !server.users.exists(&server.maps, &target)? {
        return Err(Error::not_found("No such user here"));
    }
    if crate::federation::acl::denies(server, room_id, origin)?.is_some() {
        return Err(Error::forbidden("Denied by the room's server ACL"));
    }
    // The sending server's signature must be good.
    let keys = server.federation.keys.get(server, origin).await?;
    let map: PublicKeyMap = [(origin.to_string(), keys.keys.public_key_set())].into();
    protocol::pdu::verify(&object, &rules, &map).map_err(|e| Error::forbidden(e.to_string()))?;
    ruma::signatures::sign_event(
        server.server_name().as_str(),
        &server.signing_key,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| Error::internal(format_args!("countersigning: {e}")))?;
    let signed = Pdu::from_json(event_id.to_owned(), object.clone())?;
    store_invite(server, &signed, &target, invite_room_state)?;
    Ok(json!({ "event": object }))
}

/// Records the invite for the user and wakes their syncs. In a room we know (a user of ours
/// is in it) the event also arrives by `/send`; here it is only the user's membership.
fn store_invite(
    server: &Server,
    pdu: &Pdu,
    target: &UserId,
    invite_room_state: Vec<Value>,
) -> Result<()> {
    store_membership(server, pdu, target, "invite", Some(invite_room_state))
}

/// Records a membership of our user in a room we are not in (invited, knocking, left) with
/// its event, and the room's stripped state when given; wakes the user's syncs.
pub fn store_membership(
    server: &Server,
    pdu: &Pdu,
    target: &UserId,
    membership: &str,
    stripped_state: Option<Vec<Value>>,
) -> Result<()> {
    let maps = &server.maps;
    let mut batch = server.db.batch();
    super::outlier::stage(server, &mut batch, pdu)?;
    if let Some(stripped) = stripped_state {
        batch.put(
            &maps.roomuser_invitestate,
            Key::new()
                .s(pdu.room_id.as_str())
                .s(target.as_str())
                .build(),
            serde_json::to_vec(&stripped)?,
        );
    }
    let pending = server.stream.next(maps, &mut batch);
    let record = Membership {
        membership: membership.into(),
        count: pending.count(),
        event_id: pdu.event_id.clone(),
        last_join_count: server
            .rooms
            .membership(maps, &pdu.room_id, target)?
            .and_then(|m| m.last_join_count),
    };
    let value = serde_json::to_vec(&record)?;
    batch.put(
        &maps.roomuserid_membership,
        Key::new()
            .s(pdu.room_id.as_str())
            .s(target.as_str())
            .build(),
        &value,
    );
    batch.put(
        &maps.userroomid_membership,
        Key::new()
            .s(target.as_str())
            .s(pdu.room_id.as_str())
            .build(),
        &value,
    );
    server.db.commit(batch)?;
    server.rooms.members_changed(&pdu.room_id);
    pending.finish(vec![target.to_owned()]);
    Ok(())
}

/// The stripped state another server sent with an invite to `user` (empty if none).
pub fn stored_invite_state(server: &Server, room_id: &RoomId, user: &UserId) -> Vec<Value> {
    server
        .maps
        .roomuser_invitestate
        .get(Key::new().s(room_id.as_str()).s(user.as_str()).build())
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default()
}
