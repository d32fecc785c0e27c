//! `/search` `room_events`: runs the tantivy query, keeps the hits the user may see, and
//! builds results with context, groups, highlights and the next page's token.
//!
//! Scope: rooms the user is or was in (joined, invited, or left/banned after having joined),
//! narrowed by the filter's `rooms`/`not_rooms`; senders are restricted in the query too. Each
//! hit then passes the filter's type/url rules and history visibility
//! ([`crate::rooms::visibility::can_see`]), so a late joiner never sees what was said before
//! they could.
//!
//! Pagination tokens are opaque to clients: `r<n>` (rank order: `n` hits already consumed)
//! or `t<count>` (recent order: only hits below stream position `count`, so new messages do
//! not shift later pages).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::{
    DeviceId, OwnedRoomId, OwnedUserId, UserId,
    api::client::{
        filter::{RoomEventFilter, UrlFilter},
        search::search_events::v3::{Criteria, GroupingKey, OrderBy, SearchKeys},
    },
    events::StateEventType,
};
use serde_json::{Map, Value, json};
use tantivy::{
    DocAddress, DocId, Score, SegmentReader, TantivyDocument,
    collector::{Count, TopDocs},
    query::Query,
    schema::Value as _,
};

use super::index::{self, Scope};
use crate::{
    error::{Error, Result},
    rooms::{EventMeta, Membership, pdu::PduRef, visibility},
    server::Server,
    sync::{filter, format, token},
};

/// Results per page when the filter gives no limit, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 100;
/// Context events on each side at most.
pub const MAX_CONTEXT: usize = 50;
/// Raw hits examined per request at most (hits the user may not see are skipped).
const MAX_EXAMINED: usize = 2_000;
/// Deepest rank-ordered page (tokens beyond are not ours).
const MAX_OFFSET: usize = 1_000_000;

/// What the handler needs besides the JSON body.
pub struct Outcome {
    /// `search_categories.room_events` without `state`.
    pub body: Map<String, Value>,
    /// Rooms of the returned results (for `include_state`).
    pub rooms: Vec<OwnedRoomId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Rank,
    Recent,
}

enum Cursor {
    Offset(usize),
    Below(u64),
}

struct Hit {
    rank: f64,
    count: u64,
    pdu: PduRef,
    meta: std::sync::Arc<EventMeta>,
}

/// Runs a `room_events` search for `user`. Blocking (tantivy and RocksDB reads): call it from
/// a blocking thread.
pub fn room_events(
    server: &Server,
    user: &UserId,
    device: Option<&DeviceId>,
    criteria: &Criteria,
    next_batch: Option<&str>,
    with_context: bool,
) -> Result<Outcome> {
    let search = &server.search;
    let fields = *search.fields();
    let order = match &criteria.order_by {
        None | Some(OrderBy::Rank) => Order::Rank,
        Some(OrderBy::Recent) => Order::Recent,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown order_by {:?}; use rank or recent",
                other.as_str()
            )));
        }
    };
    let mut text_fields = Vec::new();
    for key in criteria.keys.as_deref().unwrap_or(&[
        SearchKeys::ContentBody,
        SearchKeys::ContentName,
        SearchKeys::ContentTopic,
    ]) {
        let field = match key {
            SearchKeys::ContentBody => fields.body,
            SearchKeys::ContentName => fields.name,
            SearchKeys::ContentTopic => fields.topic,
            other => {
                return Err(Error::invalid_param(format!(
                    "Unknown search key {:?}",
                    other.as_str()
                )));
            }
        };
        if !text_fields.contains(&field) {
            text_fields.push(field);
        }
    }
    let cursor = match next_batch {
        None => match order {
            Order::Rank => Cursor::Offset(0),
            Order::Recent => Cursor::Below(u64::MAX),
        },
        Some(token) => parse_token(token, order)?,
    };
    let filter = &criteria.filter;
    let limit = filter
        .limit
        .map_or(DEFAULT_LIMIT, |l| u64::from(l) as usize)
        .clamp(1, MAX_LIMIT);

    let memberships = scope_rooms(server, user, filter)?;
    let rooms: Vec<OwnedRoomId> = memberships.keys().cloned().collect();
    let clauses = index::parse(&criteria.search_term);
    let highlight_terms: BTreeSet<String> = clauses
        .iter()
        .filter(|c| !c.negated)
        .flat_map(|c| c.tokens.iter().cloned())
        .collect();
    let scope = |below: Option<u64>| Scope {
        rooms: &rooms,
        senders: filter.senders.as_deref(),
        not_senders: &filter.not_senders,
        below_count: below,
    };
    let Some(count_query) = index::build_query(&fields, &clauses, &text_fields, &scope(None))
    else {
        return Ok(empty(&highlight_terms));
    };
    let page_query = match cursor {
        Cursor::Below(below) if below != u64::MAX => {
            index::build_query(&fields, &clauses, &text_fields, &scope(Some(below)))
        }
        _ => None,
    };

    search.flush_for_search();
    let searcher = search.searcher();
    let internal = |e: tantivy::TantivyError| Error::internal(format_args!("search: {e}"));
    let total = searcher.search(&count_query, &Count).map_err(internal)?;
    let query: &dyn Query = page_query.as_deref().unwrap_or(&*count_query);

    let batch = (limit * 2).max(20);
    let mut offset = match cursor {
        Cursor::Offset(offset) => offset,
        Cursor::Below(_) => 0,
    };
    let mut results: Vec<Hit> = Vec::new();
    let mut examined = 0usize;
    let mut consumed = offset;
    let mut last_count = None;
    let mut more = false;
    'pages: loop {
        let recent = order == Order::Recent;
        let collector = TopDocs::with_limit(batch).and_offset(offset).tweak_score(
            move |segment: &SegmentReader| {
                let column = segment.fast_fields().u64("count").ok();
                move |doc: DocId, score: Score| {
                    let count = column.as_ref().and_then(|c| c.first(doc)).unwrap_or(0) as f64;
                    if recent {
                        (count, f64::from(score))
                    } else {
                        (f64::from(score), count)
                    }
                }
            },
        );
        let hits: Vec<((f64, f64), DocAddress)> =
            searcher.search(query, &collector).map_err(internal)?;
        let page_len = hits.len();
        for (i, (key, address)) in hits.into_iter().enumerate() {
            if results.len() == limit || examined >= MAX_EXAMINED {
                more = true;
                break 'pages;
            }
            examined += 1;
            consumed = offset + i + 1;
            let (rank, count) = if recent { (key.1, key.0) } else { key };
            last_count = Some(count as u64);
            let doc: TantivyDocument = searcher.doc(address).map_err(internal)?;
            let Some(event_id) = doc
                .get_first(fields.event_id)
                .and_then(|v| v.as_str())
                .and_then(|s| ruma::OwnedEventId::try_from(s).ok())
            else {
                continue;
            };
            if let Some(hit) = visible_hit(server, user, filter, &memberships, &event_id, rank)? {
                results.push(hit);
            }
        }
        if page_len < batch {
            break;
        }
        offset += page_len;
    }

    let next = if more {
        Some(match order {
            Order::Rank => format!("r{consumed}"),
            Order::Recent => format!("t{}", last_count.unwrap_or(0)),
        })
    } else {
        None
    };
    build(
        server,
        user,
        device,
        criteria,
        with_context,
        results,
        total,
        next,
        &highlight_terms,
    )
}

fn empty(highlights: &BTreeSet<String>) -> Outcome {
    let mut body = Map::new();
    body.insert("count".into(), json!(0));
    body.insert("highlights".into(), json!(highlights));
    body.insert("results".into(), json!([]));
    Outcome {
        body,
        rooms: Vec::new(),
    }
}

fn parse_token(token: &str, order: Order) -> Result<Cursor> {
    let invalid = || Error::invalid_param("Invalid next_batch token");
    match (order, token.get(..1), token.get(1..)) {
        (Order::Rank, Some("r"), Some(n)) => match n.parse::<usize>() {
            Ok(offset) if offset <= MAX_OFFSET => Ok(Cursor::Offset(offset)),
            _ => Err(invalid()),
        },
        (Order::Recent, Some("t"), Some(n)) => n.parse().map(Cursor::Below).map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

/// The rooms to search, with the user's membership in each: rooms the user is or was in.
fn scope_rooms(
    server: &Server,
    user: &UserId,
    filter: &RoomEventFilter,
) -> Result<HashMap<OwnedRoomId, Membership>> {
    let mut rooms = HashMap::new();
    for (room_id, membership) in server.rooms.rooms_of(&server.maps, user)? {
        let member = match membership.membership.as_str() {
            "join" | "invite" => true,
            "leave" | "ban" => membership.last_join_count.is_some(),
            _ => false,
        };
        if !member || filter.not_rooms.contains(&room_id) {
            continue;
        }
        if filter
            .rooms
            .as_ref()
            .is_some_and(|only| !only.contains(&room_id))
        {
            continue;
        }
        rooms.insert(room_id, membership);
    }
    Ok(rooms)
}

/// The hit as a result if the filter keeps it and the user may see it.
fn visible_hit(
    server: &Server,
    user: &UserId,
    filter: &RoomEventFilter,
    memberships: &HashMap<OwnedRoomId, Membership>,
    event_id: &ruma::EventId,
    rank: f64,
) -> Result<Option<Hit>> {
    let maps = &server.maps;
    let Some(pdu) = server.rooms.pdu(maps, event_id)? else {
        return Ok(None);
    };
    let Some(meta) = server.rooms.event_meta(maps, event_id)? else {
        return Ok(None);
    };
    if meta.redacted_by.is_some() || !event_allowed(filter, &pdu) {
        return Ok(None);
    }
    let Some(membership) = memberships.get(&pdu.room_id) else {
        return Ok(None);
    };
    if !visibility::can_see(server, user, &pdu, &meta, Some(membership))? {
        return Ok(None);
    }
    Ok(Some(Hit {
        rank,
        count: meta.count,
        pdu,
        meta,
    }))
}

fn event_allowed(filter: &RoomEventFilter, pdu: &crate::rooms::pdu::Pdu) -> bool {
    if !filter::room_event_allowed(filter, pdu) {
        return false;
    }
    let has_url = || pdu.content_value().get("url").is_some_and(Value::is_string);
    match &filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => has_url(),
        Some(UrlFilter::EventsWithoutUrl) => !has_url(),
        _ => true,
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    server: &Server,
    user: &UserId,
    device: Option<&DeviceId>,
    criteria: &Criteria,
    with_context: bool,
    results: Vec<Hit>,
    total: usize,
    next: Option<String>,
    highlight_terms: &BTreeSet<String>,
) -> Result<Outcome> {
    let mut highlights = highlight_terms.clone();
    let mut rooms: Vec<OwnedRoomId> = Vec::new();
    let mut out_results = Vec::with_capacity(results.len());
    let group_keys: Vec<&GroupingKey> = criteria
        .groupings
        .group_by
        .iter()
        .filter_map(|g| g.key.as_ref())
        .collect();
    let mut groups: BTreeMap<&str, BTreeMap<String, (usize, Vec<String>)>> = BTreeMap::new();
    for hit in &results {
        collect_highlights(&hit.pdu, highlight_terms, &mut highlights);
        if !rooms.contains(&hit.pdu.room_id) {
            rooms.push(hit.pdu.room_id.clone());
        }
        for key in &group_keys {
            let (name, value) = match key {
                GroupingKey::RoomId => ("room_id", hit.pdu.room_id.to_string()),
                GroupingKey::Sender => ("sender", hit.pdu.sender.to_string()),
                _ => continue,
            };
            let group = groups.entry(name).or_default();
            let order = group.len();
            group
                .entry(value)
                .or_insert_with(|| (order, Vec::new()))
                .1
                .push(hit.pdu.event_id.to_string());
        }
        let mut result = Map::new();
        result.insert("rank".into(), json!(hit.rank));
        result.insert(
            "result".into(),
            format::client_event(server, &hit.pdu, Some(&hit.meta), device, true)?,
        );
        if with_context {
            result.insert(
                "context".into(),
                context(server, user, device, criteria, hit)?,
            );
        }
        out_results.push(Value::Object(result));
    }
    let mut body = Map::new();
    body.insert("count".into(), json!(total));
    body.insert("highlights".into(), json!(highlights));
    body.insert("results".into(), Value::Array(out_results));
    if let Some(next) = next {
        body.insert("next_batch".into(), json!(next));
    }
    if !groups.is_empty() {
        let groups: Map<String, Value> = groups
            .into_iter()
            .map(|(name, values)| {
                let values: Map<String, Value> = values
                    .into_iter()
                    .map(|(value, (order, ids))| (value, json!({ "order": order, "results": ids })))
                    .collect();
                (name.to_owned(), Value::Object(values))
            })
            .collect();
        body.insert("groups".into(), Value::Object(groups));
    }
    Ok(Outcome { body, rooms })
}

/// Adds the words of the event's text that a query term matched as a prefix.
fn collect_highlights(
    pdu: &crate::rooms::pdu::Pdu,
    terms: &BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    let Some(text) = index::extract(pdu) else {
        return;
    };
    for part in [text.body, text.name, text.topic].into_iter().flatten() {
        for word in index::tokens(&part) {
            if out.len() >= 100 {
                return;
            }
            if terms.iter().any(|t| word.starts_with(t.as_str())) {
                out.insert(word);
            }
        }
    }
}

/// `context` of a result: visible events around it, pagination tokens, senders' profiles.
fn context(
    server: &Server,
    user: &UserId,
    device: Option<&DeviceId>,
    criteria: &Criteria,
    hit: &Hit,
) -> Result<Value> {
    let maps = &server.maps;
    let ctx = &criteria.event_context;
    let before_limit = (u64::from(ctx.before_limit) as usize).min(MAX_CONTEXT);
    let after_limit = (u64::from(ctx.after_limit) as usize).min(MAX_CONTEXT);
    let room_id = &hit.pdu.room_id;
    let current = server.rooms.membership(maps, room_id, user)?;
    let keep = |pdu: &PduRef| -> Result<bool> {
        if !filter::room_event_allowed(&criteria.filter, pdu) {
            return Ok(false);
        }
        let Some(meta) = server.rooms.event_meta(maps, &pdu.event_id)? else {
            return Ok(false);
        };
        visibility::can_see(server, user, pdu, &meta, current.as_ref())
    };
    let mut before = Vec::new();
    if before_limit > 0 && hit.count > 0 {
        let window =
            server
                .rooms
                .timeline_desc(maps, room_id, 0, hit.count - 1, before_limit * 4 + 20)?;
        for (count, pdu) in window {
            if before.len() == before_limit {
                break;
            }
            if keep(&pdu)? {
                before.push((count, pdu));
            }
        }
    }
    let mut after = Vec::new();
    if after_limit > 0 {
        let window = server.rooms.timeline_asc(
            maps,
            room_id,
            hit.count + 1,
            u64::MAX,
            after_limit * 4 + 20,
        )?;
        for (count, pdu) in window {
            if after.len() == after_limit {
                break;
            }
            if keep(&pdu)? {
                after.push((count, pdu));
            }
        }
    }
    let render = |events: &[(u64, PduRef)]| -> Result<Vec<Value>> {
        events
            .iter()
            .map(|(_, p)| {
                let meta = server.rooms.event_meta(maps, &p.event_id)?;
                format::client_event(server, p, meta.as_deref(), device, true)
            })
            .collect()
    };
    let start = before
        .last()
        .map_or(hit.count.saturating_sub(1), |(c, _)| c.saturating_sub(1));
    let end = after.last().map_or(hit.count, |(c, _)| *c);
    let mut out = Map::new();
    out.insert("start".into(), json!(token(start)));
    out.insert("end".into(), json!(token(end)));
    out.insert("events_before".into(), Value::Array(render(&before)?));
    out.insert("events_after".into(), Value::Array(render(&after)?));
    if ctx.include_profile {
        let state = server.rooms.load_state(maps, hit.meta.state_after)?;
        let senders: BTreeSet<&OwnedUserId> = std::iter::once(&hit.pdu.sender)
            .chain(before.iter().map(|(_, p)| &p.sender))
            .chain(after.iter().map(|(_, p)| &p.sender))
            .collect();
        let mut profiles = Map::new();
        for sender in senders {
            let Some(member) = server.rooms.state_event(
                maps,
                &state,
                &StateEventType::RoomMember,
                sender.as_str(),
            )?
            else {
                continue;
            };
            let mut profile = Map::new();
            if let Some(name) = member.content_str("displayname") {
                profile.insert("displayname".into(), json!(name));
            }
            if let Some(avatar) = member.content_str("avatar_url") {
                profile.insert("avatar_url".into(), json!(avatar));
            }
            profiles.insert(sender.to_string(), Value::Object(profile));
        }
        out.insert("profile_info".into(), Value::Object(profiles));
    }
    Ok(Value::Object(out))
}
