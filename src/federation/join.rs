//! Joining a room that lives on other servers (server-server API, "Joining Rooms"): ask a
//! resident server for a join template (`make_join`), sign it, hand it over (`send_join` v2),
//! and take the room's state and auth chain from the answer — every event's signatures and
//! authorization checked — before the join enters our timeline.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    room_version_rules::RoomVersionRules, signatures::PublicKeyMap,
};
use serde_json::{Map, Value};

use super::{encode, protocol};
use crate::{
    error::{Error, Result},
    rooms::{
        Membership, RoomMeta,
        pdu::{Pdu, PduRef},
        timeline,
    },
    server::Server,
    storage::keys::Key,
};

/// Joins `room_id` through the first of `servers` that lets us in.
pub async fn join_remote(
    server: &Arc<Server>,
    room_id: &RoomId,
    user: &UserId,
    content: Map<String, Value>,
    servers: &[OwnedServerName],
) -> Result<PduRef> {
    if !super::enabled(server) {
        return Err(Error::not_found(
            "The room is on other servers and this server does not federate",
        ));
    }
    let mut failures = Vec::new();
    for remote in servers.iter().filter(|s| !server.is_local(s)) {
        match join_via(server, remote, room_id, user, &content).await {
            Ok(pdu) => return Ok(pdu),
            Err(error) => {
                tracing::info!(%remote, %room_id, %error, "remote join failed");
                // A refusal (not invited, banned ...) is the room's answer; say it.
                if error.status == http::StatusCode::FORBIDDEN {
                    return Err(error);
                }
                failures.push(format!("{remote}: {}", error.message));
            }
        }
    }
    if failures.is_empty() {
        return Err(Error::not_found(
            "No server to join the room through (give one with `via`)",
        ));
    }
    Err(Error::new(
        http::StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        format!("Could not join through any server: {}", failures.join("; ")),
    ))
}

async fn join_via(
    server: &Arc<Server>,
    remote: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    content: &Map<String, Value>,
) -> Result<PduRef> {
    let client = &server.federation.client;
    let started = std::time::Instant::now();
    let Template {
        version,
        rules,
        event_id,
        signed,
    } = make_and_sign(server, remote, room_id, user, content, "join").await?;
    let make_join_ms = started.elapsed().as_millis();

    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        encode(room_id.as_str()),
        encode(event_id.as_str())
    );
    let body = serde_json::to_value(&signed)?;
    let started = std::time::Instant::now();
    let mut answer: SendJoinAnswer = client
        .send_as(server, remote, http::Method::PUT, &path, Some(&body))
        .await?;
    let send_join_ms = started.elapsed().as_millis();
    // For restricted rooms the resident server countersigns the join and returns it.
    let signed = match answer.event.take().filter(Value::is_object) {
        Some(event) => {
            serde_json::from_value(event).map_err(|e| Error::bad_json(format!("event: {e}")))?
        }
        None => signed,
    };
    let (state_events, auth_chain) = (answer.state.len(), answer.auth_chain.len());
    let started = std::time::Instant::now();
    let joined = take_room(server, &rules, &version, room_id, signed, answer, remote).await?;
    tracing::info!(
        %room_id,
        %remote,
        state_events,
        auth_chain,
        make_join_ms,
        send_join_ms,
        checked_and_stored_ms = started.elapsed().as_millis(),
        "joined a room over federation"
    );
    Ok(joined)
}

/// A membership event of ours, made from a resident server's template.
struct Template {
    version: RoomVersionId,
    rules: RoomVersionRules,
    event_id: OwnedEventId,
    signed: CanonicalJsonObject,
}

/// `make_{membership}` on `remote` (telling it the room versions we support), and the
/// template it answers with filled in and signed by us.
async fn make_and_sign(
    server: &Server,
    remote: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    content: &Map<String, Value>,
    membership: &str,
) -> Result<Template> {
    let path = format!(
        "/_matrix/federation/v1/make_{membership}/{}/{}?{}",
        encode(room_id.as_str()),
        encode(user.as_str()),
        versions_query()
    );
    let answer = server
        .federation
        .client
        .send(server, remote, http::Method::GET, &path, None)
        .await?;
    let version = RoomVersionId::try_from(answer["room_version"].as_str().unwrap_or("1"))
        .map_err(|e| Error::bad_json(format!("room_version: {e}")))?;
    let rules = crate::rooms::version::rules(&version)?;
    let (event_id, signed) = sign_template(
        server,
        &rules,
        &answer["event"],
        room_id,
        user,
        content,
        membership,
    )?;
    Ok(Template {
        version,
        rules,
        event_id,
        signed,
    })
}

/// `ver=6&ver=7...`: the room versions we support, for make_join and make_knock.
fn versions_query() -> String {
    crate::rooms::version::SUPPORTED
        .iter()
        .map(|v| format!("ver={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Fills in and signs the template a resident server gave us.
fn sign_template(
    server: &Server,
    rules: &RoomVersionRules,
    template: &Value,
    room_id: &RoomId,
    user: &UserId,
    content: &Map<String, Value>,
    membership: &str,
) -> Result<(OwnedEventId, CanonicalJsonObject)> {
    let mut event: CanonicalJsonObject = serde_json::from_value(template.clone())
        .map_err(|e| Error::bad_json(format!("join template: {e}")))?;
    let is = |field: &str, expected: &str| matches!(event.get(field), Some(CanonicalJsonValue::String(s)) if s == expected);
    if !is("type", "m.room.member")
        || !is("sender", user.as_str())
        || !is("state_key", user.as_str())
        || !is("room_id", room_id.as_str())
    {
        return Err(Error::bad_json(format!(
            "The {membership} template is not for this user and room"
        )));
    }
    let mut merged = match event.get("content") {
        Some(CanonicalJsonValue::Object(c)) => c.clone(),
        _ => CanonicalJsonObject::new(),
    };
    for (key, value) in content {
        if let Ok(value) = CanonicalJsonValue::try_from(value.clone()) {
            merged.insert(key.clone(), value);
        }
    }
    merged.insert(
        "membership".into(),
        CanonicalJsonValue::String(membership.into()),
    );
    event.insert("content".into(), CanonicalJsonValue::Object(merged));
    event.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(MilliSecondsSinceUnixEpoch::now().0.into()),
    );
    event.remove("event_id");
    event.remove("signatures");
    event.remove("hashes");
    event.remove("unsigned");
    ruma::signatures::hash_and_sign_event(
        server.server_name().as_str(),
        &server.signing_key,
        &mut event,
        &rules.redaction,
    )
    .map_err(|e| Error::internal(format_args!("signing the join: {e}")))?;
    let event_id =
        protocol::pdu::event_id(&event, rules).map_err(|e| Error::bad_json(e.to_string()))?;
    Ok((event_id, event))
}

/// The answer to `send_join` (v2), parsed straight into events: a large room's state is held
/// once, not also as a JSON tree.
#[derive(serde::Deserialize)]
struct SendJoinAnswer {
    #[serde(default)]
    state: Vec<CanonicalJsonObject>,
    #[serde(default)]
    auth_chain: Vec<CanonicalJsonObject>,
    /// For restricted rooms: our join, countersigned by the resident server.
    #[serde(default)]
    event: Option<Value>,
}

/// Checks and stores the room's state and auth chain from `send_join`, then appends our join.
async fn take_room(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    version: &RoomVersionId,
    room_id: &RoomId,
    join: CanonicalJsonObject,
    answer: SendJoinAnswer,
    resident: &ServerName,
) -> Result<PduRef> {
    let join_id =
        &protocol::pdu::event_id(&join, rules).map_err(|e| Error::bad_json(e.to_string()))?;
    // The auth chain first, then the state: after verification the state is the tail.
    let mut events = answer.auth_chain;
    let state_from = events.len();
    events.extend(answer.state);
    let keys = signer_keys(server, rules, &events, resident).await?;
    // CPU-bound and spread over threads: keep the async worker available meanwhile.
    let verified = tokio::task::block_in_place(|| verify_all(rules, room_id, events, &keys))?;
    // The state before our join, as the resident server sent it.
    let state_ids: std::collections::HashSet<OwnedEventId> = verified
        .get(state_from..)
        .unwrap_or_default()
        .iter()
        .map(|p| p.event_id.clone())
        .collect();
    // An event may be in both the auth chain and the state: once is enough.
    let mut seen = std::collections::HashSet::new();
    let mut checked: Vec<PduRef> = verified
        .into_iter()
        .filter(|p| seen.insert(p.event_id.clone()))
        .map(Arc::new)
        .collect();
    drop(seen);
    // Oldest first, so each event's auth events are checked before it.
    checked.sort_by_key(|p| p.depth);
    let checked = checked;
    let create = checked
        .iter()
        .find(|p| p.kind.to_string() == "m.room.create" && p.state_key.as_deref() == Some(""))
        .cloned()
        .ok_or_else(|| Error::bad_json("The room state has no create event"))?;
    if create.content_str("room_version").as_deref().unwrap_or("1") != version.as_str() {
        return Err(Error::bad_json(
            "The create event disagrees about the room version",
        ));
    }
    let maps = &server.maps;
    let _lock = server.rooms.lock(room_id).await;
    // Store them as outliers (no timeline position) in one write, then check each against its
    // auth events.
    let mut batch = server.db.batch();
    for pdu in &checked {
        super::outlier::stage(server, &mut batch, pdu)?;
    }
    let meta = RoomMeta {
        room_version: version.clone(),
        create_event_id: create.event_id.clone(),
    };
    batch.put(
        &maps.roomid_meta,
        room_id.as_bytes(),
        serde_json::to_vec(&meta)?,
    );
    server.db.commit(batch)?;
    // Each checked against its auth events, taken from the answer in hand (not read back,
    // which would also fill the event cache with the whole room).
    let by_id: std::collections::HashMap<&ruma::EventId, &PduRef> =
        checked.iter().map(|p| (&*p.event_id, p)).collect();
    let lookup = |id: &ruma::EventId| match by_id.get(id) {
        Some(pdu) => Some(Arc::clone(pdu)),
        None => server.rooms.pdu(maps, id).ok().flatten(),
    };
    for pdu in &checked {
        authorize_outlier(rules, pdu, &create.event_id, lookup)?;
    }
    drop(by_id);

    let state_events: Vec<&Pdu> = checked
        .iter()
        .filter(|p| p.state_key.is_some() && state_ids.contains(&p.event_id))
        .map(|p| &**p)
        .collect();
    let state = super::outlier::state_map(server, &state_events)?;
    let members: Vec<_> = state_events
        .iter()
        .filter_map(|pdu| match (pdu.membership(), pdu.state_user()) {
            (Some(membership), Some(target)) => {
                Some((target.to_owned(), membership, pdu.event_id.clone()))
            }
            _ => None,
        })
        .collect();
    let join = Pdu::from_json(join_id.clone(), join)?;
    let mut batch = server.db.batch();
    let (group, state) = server.rooms.state.store_full(maps, &mut batch, state);
    batch.put(
        &maps.roomid_stategroup,
        room_id.as_bytes(),
        group.to_be_bytes(),
    );
    batch.put(
        &maps.roomid_extremities,
        room_id.as_bytes(),
        serde_json::to_vec(&join.prev_events)?,
    );
    // Everyone already in the room, so membership lookups (and who gets our events) work.
    for (target, membership, event_id) in members {
        let record = Membership {
            last_join_count: (membership == "join").then_some(0),
            membership,
            count: 0,
            event_id,
        };
        let value = serde_json::to_vec(&record)?;
        batch.put(
            &maps.roomuserid_membership,
            Key::new().s(room_id.as_str()).s(target.as_str()).build(),
            &value,
        );
        batch.put(
            &maps.userroomid_membership,
            Key::new().s(target.as_str()).s(room_id.as_str()).build(),
            &value,
        );
    }
    server.db.commit(batch)?;
    server.rooms.members_changed(room_id);
    server.federation.sender.members_changed(room_id);

    timeline::authorize(server, rules, &join, &state)?;
    timeline::persist(server, rules, join, group, &state, None)
}

/// Verifies signatures and hashes of the room's events on every core (the bulk of a large
/// join's cost); events whose content does not match its hash are kept redacted. The result
/// is in the order of `events`.
fn verify_all(
    rules: &RoomVersionRules,
    room_id: &RoomId,
    events: Vec<CanonicalJsonObject>,
    keys: &PublicKeyMap,
) -> Result<Vec<Pdu>> {
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, 8);
    let total = events.len();
    let chunk = total.div_ceil(threads).max(1);
    // Each thread takes its part by value: no event is copied.
    let mut parts = Vec::with_capacity(threads);
    let mut rest = events;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        parts.push(rest);
        rest = tail;
    }
    parts.push(rest);
    let results: Vec<Result<Vec<Pdu>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .map(|e| verify_one(rules, room_id, e, keys))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::internal("verification thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(total);
    for part in results {
        out.extend(part?);
    }
    Ok(out)
}

fn verify_one(
    rules: &RoomVersionRules,
    room_id: &RoomId,
    object: CanonicalJsonObject,
    keys: &PublicKeyMap,
) -> Result<Pdu> {
    let event_id =
        protocol::pdu::event_id(&object, rules).map_err(|e| Error::bad_json(e.to_string()))?;
    let object = match protocol::pdu::verify(&object, rules, keys) {
        Ok(protocol::pdu::Integrity::Intact) => object,
        Ok(protocol::pdu::Integrity::Redact) => {
            ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(|e| Error::bad_json(e.to_string()))?
        }
        Err(e) => {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("The room's state from the resident server does not verify: {e}"),
            ));
        }
    };
    let pdu = Pdu::from_json(event_id, object)?;
    if pdu.room_id != room_id {
        return Err(Error::bad_json(
            "An event of another room in the room state",
        ));
    }
    Ok(pdu)
}

/// The keys of every server that signed one of `events` (fetched once per server).
async fn signer_keys(
    server: &Arc<Server>,
    rules: &RoomVersionRules,
    events: &[CanonicalJsonObject],
    resident: &ServerName,
) -> Result<PublicKeyMap> {
    let mut signers = BTreeSet::new();
    for event in events {
        signers.extend(
            protocol::pdu::required_signers(event, rules)
                .map_err(|e| Error::bad_json(e.to_string()))?,
        );
    }
    // The key ids each signer used, to ask a notary for them by name.
    let key_ids_of = |signer: &ServerName| -> Vec<String> {
        let mut ids = BTreeSet::new();
        for event in events {
            if let Some(CanonicalJsonValue::Object(signatures)) = event.get("signatures")
                && let Some(CanonicalJsonValue::Object(by_key)) = signatures.get(signer.as_str())
            {
                ids.extend(by_key.keys().cloned());
            }
        }
        ids.into_iter().collect()
    };
    let mut keys = PublicKeyMap::new();
    for signer in signers {
        if server.is_local(&signer) {
            let ours = crate::federation::keys::our_document(server)?;
            let parsed = protocol::keys::verify_server_keys(&ours, Some(&signer))
                .map_err(|e| Error::internal(e.to_string()))?;
            keys.insert(signer.to_string(), parsed.public_key_set());
            continue;
        }
        // Servers in the room may be gone; the resident server vouches for their keys then.
        let cached = server
            .federation
            .keys
            .get_or_ask(server, &signer, resident, &key_ids_of(&signer))
            .await?;
        keys.insert(signer.to_string(), cached.keys.public_key_set());
    }
    Ok(keys)
}

/// An event of the state or auth chain must be allowed by its own auth events.
fn authorize_outlier(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    create: &ruma::EventId,
    lookup: impl Fn(&ruma::EventId) -> Option<PduRef>,
) -> Result<()> {
    super::inbound::check_against_auth_events_in(rules, pdu, Some(create), lookup).map_err(
        |reason| {
            Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!(
                    "Event {} of the room's state is not authorised: {reason}",
                    pdu.event_id
                ),
            )
        },
    )
}

/// A remote alias: asks its server for the room id and servers to join through.
pub async fn resolve_alias(
    server: &Arc<Server>,
    alias: &ruma::RoomAliasId,
) -> Result<(ruma::OwnedRoomId, Vec<OwnedServerName>)> {
    if !super::enabled(server) {
        return Err(Error::not_found(
            "The alias is on another server and this server does not federate",
        ));
    }
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        encode(alias.as_str())
    );
    let answer = server
        .federation
        .client
        .send(server, alias.server_name(), http::Method::GET, &path, None)
        .await?;
    let room_id = ruma::OwnedRoomId::try_from(answer["room_id"].as_str().unwrap_or_default())
        .map_err(|e| Error::bad_json(format!("room_id: {e}")))?;
    let mut servers: Vec<OwnedServerName> = answer["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().and_then(|s| OwnedServerName::try_from(s).ok()))
        .collect();
    if !servers.iter().any(|s| s == alias.server_name()) {
        servers.insert(0, alias.server_name().to_owned());
    }
    Ok((room_id, servers))
}

/// Leaves (rejects an invite, rescinds a knock) a room we are not in, through `servers`.
pub async fn leave_remote(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
    content: Map<String, Value>,
    servers: &[OwnedServerName],
) -> Result<()> {
    handshake(server, room_id, user, content, servers, "leave").await
}

/// Knocks on a room we are not in, through `servers`.
pub async fn knock_remote(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
    content: Map<String, Value>,
    servers: &[OwnedServerName],
) -> Result<()> {
    handshake(server, room_id, user, content, servers, "knock").await
}

/// make_{leave,knock} → our signature → send_{leave,knock}, then the user's membership here.
async fn handshake(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
    content: Map<String, Value>,
    servers: &[OwnedServerName],
    membership: &str,
) -> Result<()> {
    if !super::enabled(server) {
        return Err(Error::not_found(
            "The room is on other servers and this server does not federate",
        ));
    }
    let mut last = Error::not_found("No server to reach the room through (give one with `via`)");
    for remote in servers.iter().filter(|s| !server.is_local(s)) {
        match handshake_via(server, remote, room_id, user, &content, membership).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::info!(%remote, %room_id, %error, membership, "remote membership failed");
                if error.status == http::StatusCode::FORBIDDEN {
                    return Err(error);
                }
                last = error;
            }
        }
    }
    Err(last)
}

async fn handshake_via(
    server: &Server,
    remote: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    content: &Map<String, Value>,
    membership: &str,
) -> Result<()> {
    let client = &server.federation.client;
    let Template {
        event_id, signed, ..
    } = make_and_sign(server, remote, room_id, user, content, membership).await?;
    let path = match membership {
        "leave" => format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            encode(room_id.as_str()),
            encode(event_id.as_str())
        ),
        _ => format!(
            "/_matrix/federation/v1/send_knock/{}/{}",
            encode(room_id.as_str()),
            encode(event_id.as_str())
        ),
    };
    let body = serde_json::to_value(&signed)?;
    let answer = client
        .send(server, remote, http::Method::PUT, &path, Some(&body))
        .await?;
    let stripped: Vec<Value> = answer["knock_room_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| {
            Some(serde_json::json!({
                "type": event.get("type")?,
                "state_key": event.get("state_key")?,
                "content": event.get("content")?,
                "sender": event.get("sender")?,
            }))
        })
        .collect();
    let pdu = Pdu::from_json(event_id, signed)?;
    super::invite::store_membership(
        server,
        &pdu,
        user,
        membership,
        Some(stripped).filter(|_| membership == "knock"),
    )
}

/// Servers that may let us leave or join a room we are not in: those named in the stored
/// invite or knock state (the inviter's first), for rooms whose id names no server.
pub fn servers_from_stored_state(
    server: &Server,
    room_id: &RoomId,
    user: &UserId,
) -> Vec<OwnedServerName> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    if let Ok(Some(membership)) = server.rooms.membership(&server.maps, room_id, user)
        && let Ok(Some(pdu)) = server.rooms.pdu(&server.maps, &membership.event_id)
        && !server.is_local(pdu.sender.server_name())
    {
        out.push(pdu.sender.server_name().to_owned());
    }
    for event in super::invite::stored_invite_state(server, room_id, user) {
        if let Some(sender) = event["sender"].as_str()
            && let Ok(sender) = <&UserId>::try_from(sender)
            && !server.is_local(sender.server_name())
            && !out.iter().any(|s| s == sender.server_name())
        {
            out.push(sender.server_name().to_owned());
        }
    }
    out
}
