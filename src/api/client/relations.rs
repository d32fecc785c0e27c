//! `/relations` and `/threads`.

use std::sync::Arc;

use ruma::{
    EventId, OwnedUserId, RoomId, UserId,
    api::{
        Direction,
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads::{self, v1::IncludeThreads},
        },
    },
};
use serde_json::{Value, json};

use super::membership::readable_group;
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{relations, visibility},
    server::Server,
    sync::{format, parse_token, token},
};

/// The parameters the three `/relations` endpoints share.
struct Query<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: Direction,
    limit: Option<ruma::UInt>,
    recurse: bool,
    /// Whether the client sent `recurse` at all (then `recursion_depth` is always answered).
    recurse_given: bool,
}

fn query_has(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(name))
}

/// How deep `recurse=true` follows relations of relations (the spec suggests at least 3).
const MAX_DEPTH: usize = 3;

async fn relations(
    server: &Server,
    user: &UserId,
    device: Option<&ruma::DeviceId>,
    query: Query<'_>,
) -> Result<Value> {
    let maps = &server.maps;
    // Someone who cannot read the room learns nothing, not even that the event exists.
    readable_group(server, query.room_id, user).map_err(|_| Error::not_found("Event not found"))?;
    let current = server.rooms.membership(maps, query.room_id, user)?;
    let target = server
        .rooms
        .pdu(maps, query.event_id)?
        .filter(|p| p.room_id == query.room_id);
    let Some(target) = target else {
        return Err(Error::not_found("Event not found"));
    };
    let target_meta = server
        .rooms
        .event_meta(maps, &target.event_id)?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if !visibility::can_see(server, user, &target, &target_meta, current.as_ref())? {
        return Err(Error::not_found("Event not found"));
    }
    let limit = query
        .limit
        .map_or(5, |l| u64::from(l).clamp(1, 100) as usize);
    let from = query.from.map(parse_token).transpose()?;
    let to = query.to.map(parse_token).transpose()?;
    let forward = query.dir == Direction::Forward;

    // Collect relations (recursively when asked), newest first unless paginating forwards.
    let mut found = Vec::new();
    let mut frontier = vec![target.event_id.clone()];
    let mut depth = 0;
    let max_depth = if query.recurse { MAX_DEPTH } else { 1 };
    while depth < max_depth && !frontier.is_empty() {
        let mut next = Vec::new();
        for parent in &frontier {
            for relation in relations::of(maps, parent)? {
                next.push(relation.event_id.clone());
                found.push(relation);
            }
        }
        frontier = next;
        depth += 1;
    }
    found.retain(|r| {
        query.rel_type.as_deref().is_none_or(|t| r.rel_type == t)
            && query.event_type.as_deref().is_none_or(|t| r.kind == t)
    });
    found.sort_by_key(|r| r.count);
    if !forward {
        found.reverse();
    }
    let mut chunk = Vec::new();
    let mut last = None;
    let mut more = false;
    for relation in found {
        let in_range = match (forward, from, to) {
            (true, Some(f), _) if relation.count <= f => false,
            (false, Some(f), _) if relation.count > f => false,
            (true, _, Some(t)) if relation.count > t => false,
            (false, _, Some(t)) if relation.count <= t => false,
            _ => true,
        };
        if !in_range {
            continue;
        }
        if chunk.len() == limit {
            more = true;
            break;
        }
        let Some(pdu) = server.rooms.pdu(maps, &relation.event_id)? else {
            continue;
        };
        let Some(meta) = server.rooms.event_meta(maps, &pdu.event_id)? else {
            continue;
        };
        if !visibility::can_see(server, user, &pdu, &meta, current.as_ref())? {
            continue;
        }
        chunk.push(format::client_event_for(
            server,
            &pdu,
            Some(&meta),
            Some(user),
            device,
            true,
        )?);
        last = Some(relation.count);
    }
    let mut response = json!({ "chunk": chunk });
    if more && let Some(last) = last {
        response["next_batch"] = json!(token(if forward {
            last
        } else {
            last.saturating_sub(1)
        }));
    }
    if let Some(from) = query.from {
        response["prev_batch"] = json!(from);
    }
    if query.recurse_given {
        response["recursion_depth"] = json!(if query.recurse { depth } else { 1 });
    }
    Ok(response)
}

pub async fn all(
    server: Arc<Server>,
    request: Ruma<get_relating_events::v1::Request>,
) -> Result<Value> {
    let user: OwnedUserId = request.owned_user()?;
    let body = &request.body;
    let query = Query {
        room_id: &body.room_id,
        event_id: &body.event_id,
        rel_type: None,
        event_type: None,
        from: body.from.as_deref(),
        to: body.to.as_deref(),
        dir: body.dir,
        limit: body.limit,
        recurse: body.recurse,
        recurse_given: query_has(&request.query, "recurse"),
    };
    relations(&server, &user, request.device().ok(), query).await
}

pub async fn by_type(
    server: Arc<Server>,
    request: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<Value> {
    let user: OwnedUserId = request.owned_user()?;
    let body = &request.body;
    let query = Query {
        room_id: &body.room_id,
        event_id: &body.event_id,
        rel_type: Some(body.rel_type.to_string()),
        event_type: None,
        from: body.from.as_deref(),
        to: body.to.as_deref(),
        dir: body.dir,
        limit: body.limit,
        recurse: body.recurse,
        recurse_given: query_has(&request.query, "recurse"),
    };
    relations(&server, &user, request.device().ok(), query).await
}

pub async fn by_type_and_event_type(
    server: Arc<Server>,
    request: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<Value> {
    let user: OwnedUserId = request.owned_user()?;
    let body = &request.body;
    let query = Query {
        room_id: &body.room_id,
        event_id: &body.event_id,
        rel_type: Some(body.rel_type.to_string()),
        event_type: Some(body.event_type.to_string()),
        from: body.from.as_deref(),
        to: body.to.as_deref(),
        dir: body.dir,
        limit: body.limit,
        recurse: body.recurse,
        recurse_given: query_has(&request.query, "recurse"),
    };
    relations(&server, &user, request.device().ok(), query).await
}

pub async fn threads(
    server: Arc<Server>,
    request: Ruma<get_threads::v1::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    let maps = &server.maps;
    readable_group(&server, &body.room_id, &user)?;
    let current = server.rooms.membership(maps, &body.room_id, &user)?;
    let limit = body
        .limit
        .map_or(10, |l| u64::from(l).clamp(1, 100) as usize);
    let mut before = match &body.from {
        Some(from) => parse_token(from)?,
        None => u64::MAX,
    };
    let participated_only = body.include == IncludeThreads::Participated;
    let ignored = crate::users::account_data::ignored_users(maps, &user)?;
    let mut chunk = Vec::new();
    let mut next = None;
    'pages: loop {
        let page = relations::threads(maps, &body.room_id, before, 50)?;
        if page.is_empty() {
            break;
        }
        for (activity, root_id) in &page {
            before = *activity;
            let Some(root) = server.rooms.pdu(maps, root_id)? else {
                continue;
            };
            let Some(meta) = server.rooms.event_meta(maps, root_id)? else {
                continue;
            };
            if !visibility::can_see(&server, &user, &root, &meta, current.as_ref())? {
                continue;
            }
            if participated_only && !relations::participated(maps, &root, &user)? {
                continue;
            }
            // Roots from ignored users are listed, but redacted (as the spec asks).
            let root = if ignored.contains(&root.sender) {
                redacted(&server, &root)?
            } else {
                root
            };
            if chunk.len() == limit {
                next = Some(*activity + 1);
                break 'pages;
            }
            chunk.push(format::client_event_for(
                &server,
                &root,
                Some(&meta),
                Some(&user),
                request.device().ok(),
                true,
            )?);
        }
    }
    let mut response = json!({ "chunk": chunk });
    if let Some(next) = next {
        response["next_batch"] = json!(token(next));
    }
    Ok(response)
}

/// The event as its room version redacts it (without changing what is stored).
fn redacted(
    server: &Server,
    pdu: &crate::rooms::pdu::Pdu,
) -> Result<std::sync::Arc<crate::rooms::pdu::Pdu>> {
    let version = server.rooms.version(&server.maps, &pdu.room_id)?;
    let rules = crate::rooms::version::rules(&version)?;
    let json = ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None)
        .map_err(|e| Error::internal(format_args!("redaction: {e}")))?;
    Ok(std::sync::Arc::new(crate::rooms::pdu::Pdu::from_json(
        pdu.event_id.clone(),
        json,
    )?))
}
