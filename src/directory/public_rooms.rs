//! The public room directory (`/publicRooms`): rooms published through `createRoom`
//! (`visibility: public`) or `PUT /directory/list/room/{roomId}`, largest first.
//!
//! Published rooms are one key each in `roomid_published`; their summaries come from the
//! per-state-group cache, so a listing costs one scan plus one lookup per published room.

use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    server::Server,
};

/// Largest page, and the page size when the client gives no limit.
pub const MAX_LIMIT: usize = 500;

/// What a client asked for.
#[derive(Debug, Default)]
pub struct Query {
    pub limit: Option<u64>,
    pub since: Option<String>,
    /// Lowercased `generic_search_term`.
    pub search: Option<String>,
    /// `room_types`: `None` in the list stands for rooms without a type.
    pub room_types: Option<Vec<Option<String>>>,
}

/// The response body of `/publicRooms`.
pub fn list(server: &Server, query: &Query) -> Result<Value> {
    let offset = match &query.since {
        Some(token) => parse_token(token)?,
        None => 0,
    };
    let limit = query
        .limit
        .map_or(MAX_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT));
    let directory = &server.search.directory;
    let mut rooms = Vec::new();
    for (key, _) in server.maps.roomid_published.scan_prefix(Vec::new()) {
        let Some(room_id) = std::str::from_utf8(&key)
            .ok()
            .and_then(|s| ruma::OwnedRoomId::try_from(s).ok())
        else {
            continue;
        };
        let Some(summary) = directory.summary(server, &room_id)? else {
            continue;
        };
        // A room nobody is in any more cannot be joined through this server.
        if summary.num_joined_members == 0 {
            continue;
        }
        if let Some(term) = &query.search
            && !term.is_empty()
            && !summary.matches(term)
        {
            continue;
        }
        if let Some(types) = &query.room_types
            && !types.is_empty()
            && !types.contains(&summary.room_type)
        {
            continue;
        }
        rooms.push((room_id, summary));
    }
    rooms.sort_by(|(a_id, a), (b_id, b)| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then_with(|| a_id.cmp(b_id))
    });
    let total = rooms.len();
    let chunk: Vec<Value> = rooms
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(room_id, summary)| Value::Object(summary.to_json(room_id, false)))
        .collect();
    let mut out = Map::new();
    out.insert("chunk".into(), Value::Array(chunk));
    if offset.saturating_add(limit) < total {
        out.insert("next_batch".into(), json!(token(offset + limit)));
    }
    if offset > 0 {
        out.insert(
            "prev_batch".into(),
            json!(token(offset.saturating_sub(limit))),
        );
    }
    out.insert("total_room_count_estimate".into(), json!(total));
    Ok(Value::Object(out))
}

fn token(offset: usize) -> String {
    format!("p{offset}")
}

fn parse_token(token: &str) -> Result<usize> {
    token
        .strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::invalid_param("Invalid pagination token `since`"))
}
