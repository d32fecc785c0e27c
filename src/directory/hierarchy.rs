//! Space trees (`/rooms/{roomId}/hierarchy`): a depth-first walk over `m.space.child` links,
//! returning each room the requester may see, in the spec's child order.
//!
//! Pagination is stateless: the walk is deterministic for a given state, so the `from` token
//! is the number of rooms already returned plus the parameters that must not change. Rooms
//! this server does not know (remote, federation is later) and rooms the requester may not
//! see are skipped with their subtrees.

use std::collections::HashSet;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::accessible;
use crate::{
    error::{Error, Result},
    server::Server,
};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_MAX_DEPTH: usize = 10;
pub const MAX_DEPTH: usize = 20;

pub struct Query<'a> {
    pub root: &'a RoomId,
    pub suggested_only: bool,
    pub max_depth: Option<u64>,
    pub limit: Option<u64>,
    pub from: Option<&'a str>,
}

/// The response body of `/hierarchy`.
pub fn walk(server: &Server, user: &UserId, query: &Query<'_>) -> Result<Value> {
    let limit = match query.limit {
        Some(0) => return Err(Error::invalid_param("limit must be greater than zero")),
        Some(l) => (l as usize).min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let max_depth = query
        .max_depth
        .map_or(DEFAULT_MAX_DEPTH, |d| (d as usize).min(MAX_DEPTH));
    let offset = match query.from {
        Some(token) => parse_token(token, query.suggested_only, max_depth)?,
        None => 0,
    };
    let directory = &server.search.directory;
    let forbidden = || Error::forbidden("You are not allowed to view this room");
    let root_summary = directory
        .summary(server, query.root)?
        .ok_or_else(forbidden)?;
    if !accessible(server, Some(user), query.root, &root_summary)? {
        return Err(forbidden());
    }

    let mut rooms = Vec::new();
    let mut seen: HashSet<OwnedRoomId> = HashSet::new();
    let mut stack: Vec<(OwnedRoomId, usize)> = vec![(query.root.to_owned(), 0)];
    let wanted = offset.saturating_add(limit);
    let mut more = false;
    while let Some((room_id, depth)) = stack.pop() {
        if !seen.insert(room_id.clone()) {
            continue;
        }
        let Some(summary) = directory.summary(server, &room_id)? else {
            continue;
        };
        if depth > 0 && !accessible(server, Some(user), &room_id, &summary)? {
            continue;
        }
        if rooms.len() >= wanted {
            more = true;
            break;
        }
        let children: Vec<_> = summary
            .children
            .iter()
            .filter(|c| !query.suggested_only || c.suggested)
            .collect();
        if rooms.len() >= offset {
            let mut entry = summary.to_json(&room_id, true);
            entry.insert(
                "children_state".into(),
                Value::Array(children.iter().map(|c| c.stripped.clone()).collect()),
            );
            rooms.push(Value::Object(entry));
        } else {
            rooms.push(Value::Null);
        }
        if depth < max_depth {
            for child in children.iter().rev() {
                if !seen.contains(&child.room_id) {
                    stack.push((child.room_id.clone(), depth + 1));
                }
            }
        }
    }
    let page: Vec<Value> = rooms.into_iter().skip(offset).collect();
    let mut out = Map::new();
    out.insert("rooms".into(), Value::Array(page));
    if more {
        out.insert(
            "next_batch".into(),
            json!(token(wanted, query.suggested_only, max_depth)),
        );
    }
    Ok(Value::Object(out))
}

fn token(offset: usize, suggested_only: bool, max_depth: usize) -> String {
    format!("h{offset}_{}_{max_depth}", u8::from(suggested_only))
}

fn parse_token(token: &str, suggested_only: bool, max_depth: usize) -> Result<usize> {
    let invalid = || Error::invalid_param("Unknown pagination token `from`");
    let mut parts = token.strip_prefix('h').ok_or_else(invalid)?.split('_');
    let offset: usize = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    let suggested: u8 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    let depth: usize = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    if parts.next().is_some() {
        return Err(invalid());
    }
    if (suggested == 1) != suggested_only || depth != max_depth {
        return Err(Error::invalid_param(
            "suggested_only and max_depth cannot change on paginated requests",
        ));
    }
    Ok(offset)
}
