//! Room creation (`createRoom`) and room upgrades (`/upgrade`).

use std::collections::BTreeSet;

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Map, Value, json};

use super::{
    alias,
    timeline::{self, NewEvent},
    version,
};
use crate::{
    error::{Error, Result},
    server::Server,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// What `createRoom` asked for, already parsed.
#[derive(Debug, Default)]
pub struct CreateRoom {
    pub room_version: Option<RoomVersionId>,
    pub preset: Option<Preset>,
    pub public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub alias_localpart: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub creation_content: Map<String, Value>,
    pub initial_state: Vec<(String, String, Value)>,
    pub power_level_override: Option<Map<String, Value>>,
}

pub async fn create_room(
    server: &Server,
    creator: &UserId,
    params: CreateRoom,
) -> Result<OwnedRoomId> {
    let room_version = params
        .room_version
        .clone()
        .unwrap_or_else(|| server.config.default_room_version.clone());
    let rules = version::rules(&room_version)?;
    let preset = params.preset.unwrap_or(if params.public {
        Preset::PublicChat
    } else {
        Preset::PrivateChat
    });

    let alias = match &params.alias_localpart {
        Some(localpart) => {
            let alias =
                OwnedRoomAliasId::try_from(format!("#{localpart}:{}", server.server_name()))
                    .map_err(|_| Error::invalid_param("Invalid room_alias_name"))?;
            if localpart.contains(':') || localpart.is_empty() {
                return Err(Error::invalid_param("Invalid room_alias_name"));
            }
            if alias::resolve_local(server, &alias)?.is_some() {
                return Err(Error::room_in_use("Room alias already taken"));
            }
            Some(alias)
        }
        None => None,
    };
    for user in &params.invite {
        if !server.is_local(user.server_name()) {
            return Err(Error::forbidden(
                "Inviting users of other servers needs federation, which is not supported yet",
            ));
        }
    }

    // 1. m.room.create
    let mut create_content = params.creation_content.clone();
    create_content.insert("room_version".into(), json!(room_version.as_str()));
    if rules.authorization.use_room_create_sender {
        create_content.remove("creator");
    } else {
        create_content.insert("creator".into(), json!(creator));
    }
    let trusted_invitees: Vec<OwnedUserId> = if preset == Preset::TrustedPrivateChat {
        params.invite.clone()
    } else {
        vec![]
    };
    if rules.authorization.additional_room_creators {
        let mut additional: BTreeSet<String> = create_content
            .get("additional_creators")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        // Since v12, the trusted_private_chat preset makes the invitees creators too.
        additional.extend(trusted_invitees.iter().map(|u| u.to_string()));
        additional.remove(creator.as_str());
        if additional.is_empty() {
            create_content.remove("additional_creators");
        } else {
            create_content.insert("additional_creators".into(), json!(additional));
        }
    } else {
        create_content.remove("additional_creators");
    }
    let create_event = NewEvent::state(
        TimelineEventType::RoomCreate,
        "",
        Value::Object(create_content),
    );

    let room_id = if rules.authorization.room_create_event_id_as_room_id {
        None
    } else {
        Some(RoomId::new_v1(server.server_name()))
    };
    let empty = super::state::StateMap::new();
    // In v12 the room id is the create event's hash: two identical createRoom calls by one user
    // in the same millisecond would name the same room. Create events therefore get strictly
    // increasing timestamps (at most a few ms ahead of the clock under a burst).
    let mut create_event = create_event;
    create_event.timestamp = Some(server.rooms.next_create_timestamp());
    let create_pdu = timeline::build(
        server,
        room_id.as_deref(),
        &room_version,
        &rules,
        &empty,
        creator,
        &create_event,
    )?;
    let room_id = create_pdu.room_id.clone();
    let _lock = server.rooms.lock(&room_id).await;
    if server.rooms.exists(&server.maps, &room_id)? {
        return Err(Error::room_in_use("Room already exists"));
    }
    timeline::authorize(server, &rules, &create_pdu, &empty)?;
    timeline::persist(server, &rules, create_pdu, 0, &empty, None)?;

    let send = |event: NewEvent| timeline::send_locked(server, &room_id, creator, event, None);

    // 2. The creator joins.
    let profile = server.users.profile(&server.maps, creator)?;
    let mut member = Map::new();
    member.insert("membership".into(), json!("join"));
    if let Some(name) = profile.displayname {
        member.insert("displayname".into(), json!(name));
    }
    if let Some(avatar) = profile.avatar_url {
        member.insert("avatar_url".into(), json!(avatar));
    }
    send(NewEvent::state(
        TimelineEventType::RoomMember,
        creator.as_str(),
        Value::Object(member),
    ))?;

    // 3. Power levels.
    let privileged_creators = rules.authorization.explicitly_privilege_room_creators;
    let mut users = Map::new();
    if !privileged_creators {
        users.insert(creator.to_string(), json!(100));
        for user in &trusted_invitees {
            users.insert(user.to_string(), json!(100));
        }
    }
    let tombstone_level = if privileged_creators { 150 } else { 100 };
    let mut power = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": tombstone_level,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if preset == Preset::PublicChat { 50 } else { 0 },
        "notifications": { "room": 50 },
    });
    if let (Some(overrides), Some(power)) = (&params.power_level_override, power.as_object_mut()) {
        for (key, value) in overrides {
            power.insert(key.clone(), value.clone());
        }
    }
    send(NewEvent::state(
        TimelineEventType::RoomPowerLevels,
        "",
        power,
    ))?;

    // 4. Canonical alias.
    if let Some(alias) = &alias {
        alias::create(server, alias, &room_id, creator)?;
        send(NewEvent::state(
            TimelineEventType::RoomCanonicalAlias,
            "",
            json!({ "alias": alias }),
        ))?;
    }

    // 5. Preset.
    let (join_rule, guest_access) = match preset {
        Preset::PublicChat => ("public", "forbidden"),
        _ => ("invite", "can_join"),
    };
    let overridden: BTreeSet<(String, String)> = params
        .initial_state
        .iter()
        .map(|(t, k, _)| (t.clone(), k.clone()))
        .collect();
    let preset_events = [
        ("m.room.join_rules", json!({ "join_rule": join_rule })),
        (
            "m.room.history_visibility",
            json!({ "history_visibility": "shared" }),
        ),
        (
            "m.room.guest_access",
            json!({ "guest_access": guest_access }),
        ),
    ];
    for (kind, content) in preset_events {
        if !overridden.contains(&(kind.to_owned(), String::new())) {
            send(NewEvent::state(kind, "", content))?;
        }
    }

    // 6. initial_state.
    for (kind, state_key, content) in &params.initial_state {
        if kind == "m.room.create" || kind == "m.room.member" {
            continue;
        }
        send(NewEvent::state(
            kind.as_str(),
            state_key.clone(),
            content.clone(),
        ))?;
    }

    // 7. Name and topic.
    if let Some(name) = &params.name {
        send(NewEvent::state(
            TimelineEventType::RoomName,
            "",
            json!({ "name": name }),
        ))?;
    }
    if let Some(topic) = &params.topic {
        send(NewEvent::state(
            TimelineEventType::RoomTopic,
            "",
            topic_content(topic),
        ))?;
    }

    if params.public {
        server
            .maps
            .roomid_published
            .put(&server.db, room_id.as_bytes(), b"")?;
    }
    drop(_lock);

    // 8. Invites.
    for user in &params.invite {
        super::membership::invite(server, &room_id, creator, user, None, params.is_direct).await?;
    }
    Ok(room_id)
}

/// `m.room.topic` content with the plain topic and its `m.topic` text/plain representation.
pub fn topic_content(topic: &str) -> Value {
    json!({ "topic": topic, "m.topic": [{ "mimetype": "text/plain", "body": topic }] })
}

/// Upgrades a room: a new room of `new_version` that copies the important state, then a
/// tombstone in the old room and restricted power levels there.
pub async fn upgrade(
    server: &Server,
    old_room: &RoomId,
    user: &UserId,
    new_version: RoomVersionId,
    additional_creators: Vec<OwnedUserId>,
) -> Result<OwnedRoomId> {
    let rules = version::rules(&new_version)?;
    let maps = &server.maps;
    super::membership::require_joined(server, old_room, user)?;
    let power = super::power::PowerLevels::current(server, old_room)?;
    let required = power.for_event(&TimelineEventType::RoomTombstone, true);
    power.require(user, required, "upgrade this room")?;

    let state_of = |kind: StateEventType| -> Result<Option<Value>> {
        Ok(server
            .rooms
            .current_state_event(maps, old_room, &kind, "")?
            .map(|pdu| pdu.content_value()))
    };
    let old_create = state_of(StateEventType::RoomCreate)?.unwrap_or_default();
    let old_version = server.rooms.version(maps, old_room)?;
    let old_rules = version::rules(&old_version)?;

    let mut creation_content = Map::new();
    for key in ["type", "m.federate"] {
        if let Some(value) = old_create.get(key) {
            creation_content.insert(key.into(), value.clone());
        }
    }
    let last_event = server.rooms.timeline_desc(maps, old_room, 0, u64::MAX, 1)?;
    let mut predecessor = json!({ "room_id": old_room });
    if !rules.authorization.room_create_event_id_as_room_id
        && let Some((_, pdu)) = last_event.first()
    {
        predecessor["event_id"] = json!(pdu.event_id);
    }
    creation_content.insert("predecessor".into(), predecessor);
    if rules.authorization.additional_room_creators && !additional_creators.is_empty() {
        creation_content.insert("additional_creators".into(), json!(additional_creators));
    }

    let mut initial_state = Vec::new();
    for kind in [
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.name",
        "m.room.topic",
        "m.room.avatar",
        "m.room.encryption",
        "m.room.server_acl",
    ] {
        if let Some(content) = state_of(StateEventType::from(kind))? {
            initial_state.push((kind.to_owned(), String::new(), content));
        }
    }
    // Keep the old power levels, minus the creators' entries that v12 forbids.
    let mut power_override =
        state_of(StateEventType::RoomPowerLevels)?.and_then(|v| v.as_object().cloned());
    if let Some(levels) = power_override.as_mut() {
        if rules.authorization.explicitly_privilege_room_creators {
            if let Some(users) = levels.get_mut("users").and_then(Value::as_object_mut) {
                users.remove(user.as_str());
            }
        } else if let Some(users) = levels.get_mut("users").and_then(Value::as_object_mut) {
            users.insert(user.to_string(), json!(100));
        }
    }
    if old_rules.authorization.explicitly_privilege_room_creators
        && !rules.authorization.explicitly_privilege_room_creators
        && let Some(levels) = power_override.as_mut()
    {
        let users = levels.entry("users").or_insert_with(|| json!({}));
        if let Some(users) = users.as_object_mut() {
            users.insert(user.to_string(), json!(100));
        }
    }

    let new_room = create_room(
        server,
        user,
        CreateRoom {
            room_version: Some(new_version),
            preset: Some(Preset::PrivateChat),
            creation_content,
            initial_state,
            power_level_override: power_override,
            ..Default::default()
        },
    )
    .await?;

    // Move local aliases and the canonical alias.
    if let Some(canonical) = state_of(StateEventType::RoomCanonicalAlias)? {
        for alias_id in alias::local_aliases(server, old_room)? {
            alias::delete(server, &alias_id)?;
            alias::create(server, &alias_id, &new_room, user)?;
        }
        timeline::send(
            server,
            &new_room,
            user,
            NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", canonical),
            None,
        )
        .await?;
    }

    let tombstone = json!({ "body": "This room has been replaced", "replacement_room": new_room });
    timeline::send(
        server,
        old_room,
        user,
        NewEvent::state(TimelineEventType::RoomTombstone, "", tombstone),
        None,
    )
    .await?;

    // Stop conversation in the old room: raise events_default and invite above users_default.
    if let Some(mut levels) = state_of(StateEventType::RoomPowerLevels)? {
        let users_default = levels
            .get("users_default")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let restricted = 50.max(users_default.saturating_add(1));
        levels["events_default"] = json!(restricted);
        levels["invite"] = json!(restricted);
        // Best effort: the upgrading user may lack the power to change power levels.
        let _ = timeline::send(
            server,
            old_room,
            user,
            NewEvent::state(TimelineEventType::RoomPowerLevels, "", levels),
            None,
        )
        .await;
    }
    if server.maps.roomid_published.contains(old_room.as_bytes())? {
        server
            .maps
            .roomid_published
            .delete(&server.db, old_room.as_bytes())?;
        server
            .maps
            .roomid_published
            .put(&server.db, new_room.as_bytes(), b"")?;
    }
    Ok(new_room)
}
