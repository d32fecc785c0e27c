//! Simplified sliding sync (MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`),
//! in the form ruma 0.17 and matrix-rust-sdk speak: lists with `ranges`, `required_state`
//! as `[type, state_key]` pairs with `$LAZY` and `$ME`, `pos` and `timeout` in the query.
//!
//! The server keeps, per connection (user, device, `conn_id`), what it sent for each room and
//! with which room config. A response covers the rooms the lists' ranges and the subscriptions
//! select; a room is sent when it was never sent on the connection (`initial: true`), when it
//! changed since, or when its config grew. `pos` is `<stream position>_<generation>`; the last
//! few generations are kept so a retried request with the previous `pos` still works.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{
    OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::client::sync::sync_events::v5::{self, request},
    directory::RoomTypeFilter,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Map, Value, json};

use super::{format, v3};
use crate::{
    error::{Error, Result},
    rooms::{Membership, receipts},
    server::Server,
    users::account_data,
};

/// Event types that move a room up the list (the MSC's "proper" activity).
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// Generations of a connection's state kept for retried requests.
const KEPT_GENERATIONS: usize = 3;
/// The largest `timeline_limit` honoured.
const MAX_TIMELINE: usize = 100;

/// What was sent for one room on a connection.
#[derive(Clone, Debug)]
struct RoomSent {
    /// Stream position the room was last sent up to.
    position: u64,
    timeline_limit: usize,
    required_state: BTreeSet<(String, String)>,
}

#[derive(Clone, Debug, Default)]
struct ConnState {
    rooms: HashMap<OwnedRoomId, RoomSent>,
    list_counts: BTreeMap<String, usize>,
}

struct Connection {
    generations: VecDeque<(u64, Arc<ConnState>)>,
    next_generation: u64,
}

type ConnKey = (OwnedUserId, OwnedDeviceId, String);

#[derive(Default)]
pub struct Connections {
    conns: Mutex<HashMap<ConnKey, Connection>>,
}

impl Connections {
    fn state_at(&self, key: &ConnKey, generation: u64) -> Option<Arc<ConnState>> {
        let conns = self.conns.lock();
        conns
            .get(key)?
            .generations
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, s)| s.clone())
    }

    /// Stores a new generation and returns its number. A request without `pos` starts over.
    fn store(&self, key: ConnKey, state: ConnState, fresh: bool) -> u64 {
        let mut conns = self.conns.lock();
        if conns.len() > 10_000 {
            // Bound memory: drop an arbitrary connection (its client gets M_UNKNOWN_POS).
            if let Some(victim) = conns.keys().next().cloned() {
                conns.remove(&victim);
            }
        }
        let conn = conns.entry(key).or_insert_with(|| Connection {
            generations: VecDeque::new(),
            next_generation: 1,
        });
        if fresh {
            conn.generations.clear();
        }
        let generation = conn.next_generation;
        conn.next_generation += 1;
        conn.generations.push_back((generation, Arc::new(state)));
        while conn.generations.len() > KEPT_GENERATIONS {
            conn.generations.pop_front();
        }
        generation
    }
}

fn parse_pos(pos: &str) -> Result<(u64, u64)> {
    let unknown = || {
        Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN_POS",
            "Unknown position; start a new connection",
        )
    };
    let (position, generation) = pos.split_once('_').ok_or_else(unknown)?;
    Ok((
        position.parse().map_err(|_| unknown())?,
        generation.parse().map_err(|_| unknown())?,
    ))
}

/// One room of the user's server-side list.
struct Entry {
    room_id: OwnedRoomId,
    membership: Membership,
    bump: u64,
}

/// The combined config of the rules that select a room.
#[derive(Clone, Debug, Default)]
struct RoomConfig {
    timeline_limit: usize,
    required_state: BTreeSet<(String, String)>,
    lists: BTreeSet<String>,
}

impl RoomConfig {
    fn merge(&mut self, timeline_limit: usize, required_state: &[(StateEventType, String)]) {
        self.timeline_limit = self.timeline_limit.max(timeline_limit.min(MAX_TIMELINE));
        self.required_state.extend(
            required_state
                .iter()
                .map(|(t, k)| (t.to_string(), k.clone())),
        );
    }
}

/// The `spaces` filter of each list (list name -> space room ids), from the raw request.
pub fn space_filters(raw: &[u8]) -> BTreeMap<String, Vec<OwnedRoomId>> {
    let value: Value = serde_json::from_slice(raw).unwrap_or_default();
    value["lists"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, list)| {
            let spaces: Vec<OwnedRoomId> = list["filters"]["spaces"]
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().and_then(|s| OwnedRoomId::try_from(s).ok()))
                .collect();
            Some((name.clone(), spaces))
        })
        .collect()
}

/// The rooms a `spaces` filter admits: the children (`m.space.child` with `via`) of the
/// listed spaces.
fn space_children(server: &Server, spaces: &[OwnedRoomId]) -> Result<HashSet<OwnedRoomId>> {
    let maps = &server.maps;
    let mut out = HashSet::new();
    for space in spaces {
        if !server.rooms.exists(maps, space)? {
            continue;
        }
        let state = server
            .rooms
            .load_state(maps, server.rooms.current_group(maps, space)?)?;
        for pdu in server.rooms.state_events(maps, &state)? {
            if pdu.kind.to_string() == "m.space.child"
                && pdu.content_value()["via"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty())
                && let Some(child) = pdu
                    .state_key
                    .as_deref()
                    .and_then(|k| OwnedRoomId::try_from(k).ok())
            {
                out.insert(child);
            }
        }
    }
    Ok(out)
}

pub async fn sync(
    server: &Server,
    user: OwnedUserId,
    device: OwnedDeviceId,
    body: v5::Request,
    spaces: &BTreeMap<String, Vec<OwnedRoomId>>,
) -> Result<Value> {
    let space_rooms: BTreeMap<String, HashSet<OwnedRoomId>> = spaces
        .iter()
        .map(|(list, spaces)| Ok((list.clone(), space_children(server, spaces)?)))
        .collect::<Result<_>>()?;
    let conn_key: ConnKey = (
        user.clone(),
        device.clone(),
        body.conn_id.clone().unwrap_or_default(),
    );
    let (since, previous) = match &body.pos {
        Some(pos) => {
            let (position, generation) = parse_pos(pos)?;
            let state = server
                .sliding
                .state_at(&conn_key, generation)
                .ok_or_else(|| {
                    Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_UNKNOWN_POS",
                        "Unknown position; start a new connection",
                    )
                })?;
            (Some(position), state)
        }
        None => (None, Arc::new(ConnState::default())),
    };
    let presence = body.set_presence.as_str();
    if !matches!(presence, "online" | "offline" | "unavailable") {
        return Err(Error::invalid_param(
            "set_presence must be online, offline or unavailable",
        ));
    }
    crate::users::presence::touch(server, &user, presence)?;
    let ignored = account_data::ignored_users(&server.maps, &user)?;
    let timeout = if since.is_some() {
        body.timeout
            .unwrap_or_default()
            .min(Duration::from_secs(60))
    } else {
        Duration::ZERO
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut receiver = server.stream.subscribe(&user);
    let mut shutdown = server.shutdown.subscribe();
    loop {
        receiver.borrow_and_update();
        let now = server.stream.current();
        let ctx = Ctx {
            server,
            user: &user,
            device: &device,
            ignored: &ignored,
            since,
            now,
            space_rooms: &space_rooms,
        };
        let (mut response, state, has_data) = build(&ctx, &body, &previous)?;
        let expired = tokio::time::Instant::now() >= deadline;
        if has_data || since.is_none() || expired {
            let generation = server.sliding.store(conn_key, state, since.is_none());
            response.insert("pos".into(), json!(format!("{now}_{generation}")));
            if let Some(txn_id) = &body.txn_id {
                response.insert("txn_id".into(), json!(txn_id));
            }
            return Ok(Value::Object(response));
        }
        let woken = tokio::select! {
            changed = tokio::time::timeout_at(deadline, receiver.changed()) => changed.is_ok(),
            _ = shutdown.wait_for(|s| *s) => false,
        };
        if !woken {
            // Timed out (or shutting down): one last look, returned whatever it holds.
            let now = server.stream.current();
            let ctx = Ctx {
                server,
                user: &user,
                device: &device,
                ignored: &ignored,
                since,
                now,
                space_rooms: &space_rooms,
            };
            let (mut response, state, _) = build(&ctx, &body, &previous)?;
            let generation = server.sliding.store(conn_key, state, false);
            response.insert("pos".into(), json!(format!("{now}_{generation}")));
            return Ok(Value::Object(response));
        }
    }
}

struct Ctx<'a> {
    server: &'a Server,
    user: &'a UserId,
    device: &'a OwnedDeviceId,
    ignored: &'a BTreeSet<OwnedUserId>,
    since: Option<u64>,
    now: u64,
    /// Per list with a `spaces` filter: the rooms it admits.
    space_rooms: &'a BTreeMap<String, HashSet<OwnedRoomId>>,
}

fn build(
    ctx: &Ctx<'_>,
    body: &v5::Request,
    previous: &ConnState,
) -> Result<(Map<String, Value>, ConnState, bool)> {
    let server = ctx.server;
    let entries = room_list(ctx, previous)?;
    let direct = direct_rooms(server, ctx.user)?;
    let mut state = previous.clone();
    let mut has_data = false;

    // Lists: filter, count, select the ranges.
    let mut configs: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
    let mut lists = Map::new();
    for (name, list) in &body.lists {
        let filtered: Vec<&Entry> = entries
            .iter()
            .filter(|e| list_filter_allows(ctx, list.filters.as_ref(), e, &direct))
            .filter(|e| {
                ctx.space_rooms
                    .get(name)
                    .is_none_or(|allowed| allowed.contains(&e.room_id))
            })
            .collect();
        lists.insert(name.clone(), json!({ "count": filtered.len() }));
        if state.list_counts.insert(name.clone(), filtered.len()) != Some(filtered.len()) {
            has_data = true;
        }
        let limit = u64::from(list.room_details.timeline_limit) as usize;
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start) as usize, u64::from(*end) as usize);
            for entry in filtered
                .iter()
                .skip(start)
                .take(end.saturating_sub(start).saturating_add(1))
            {
                let config = configs.entry(entry.room_id.clone()).or_default();
                config.merge(limit, &list.room_details.required_state);
                config.lists.insert(name.clone());
            }
        }
    }
    // Subscriptions: rooms the user is (or was) in or invited to.
    let by_id: HashMap<&RoomId, &Entry> = entries.iter().map(|e| (&*e.room_id, e)).collect();
    for (room_id, subscription) in &body.room_subscriptions {
        if !by_id.contains_key(&**room_id) {
            continue;
        }
        configs.entry(room_id.clone()).or_default().merge(
            u64::from(subscription.timeline_limit) as usize,
            &subscription.required_state,
        );
    }

    // Rooms: initial, changed, or with a grown config.
    let mut rooms = Map::new();
    for (room_id, config) in &configs {
        let Some(entry) = by_id.get(&**room_id) else {
            continue;
        };
        let sent = previous.rooms.get(room_id);
        let grown = sent.is_some_and(|s| {
            config.timeline_limit > s.timeline_limit
                || !config.required_state.is_subset(&s.required_state)
        });
        let last = last_count(ctx, room_id)?;
        let changed =
            sent.is_none_or(|s| entry.membership.count > s.position || last > s.position || grown);
        if !changed {
            continue;
        }
        let room = room_result(ctx, entry, config, sent, grown, &direct)?;
        rooms.insert(room_id.to_string(), room);
        has_data = true;
        state.rooms.insert(
            room_id.clone(),
            RoomSent {
                position: ctx.now,
                timeline_limit: config.timeline_limit,
                required_state: config.required_state.clone(),
            },
        );
    }

    let selected: Vec<OwnedRoomId> = configs.keys().cloned().collect();
    let extensions = extensions(ctx, &body.extensions, &selected, &rooms)?;
    if extensions.values().any(|e| !is_empty_extension(e)) {
        has_data = true;
    }

    let mut response = Map::new();
    response.insert("lists".into(), Value::Object(lists));
    response.insert("rooms".into(), Value::Object(rooms));
    response.insert("extensions".into(), Value::Object(extensions));
    Ok((response, state, has_data))
}

fn last_count(ctx: &Ctx<'_>, room_id: &RoomId) -> Result<u64> {
    Ok(ctx
        .server
        .rooms
        .last_count(&ctx.server.maps, room_id)?
        .min(ctx.now))
}

/// The user's rooms, most recently active first: joined, invited, knocked, and left rooms
/// the user was removed from (kicked, banned) or that this connection already showed.
fn room_list(ctx: &Ctx<'_>, previous: &ConnState) -> Result<Vec<Entry>> {
    let server = ctx.server;
    let mut entries = Vec::new();
    for (room_id, membership) in server.rooms.rooms_of(&server.maps, ctx.user)? {
        if membership.count > ctx.now {
            continue;
        }
        let include = match membership.membership.as_str() {
            "join" | "invite" | "knock" => true,
            "leave" | "ban" => {
                let removed = server
                    .rooms
                    .pdu(&server.maps, &membership.event_id)?
                    .is_some_and(|event| {
                        event.sender != ctx.user && membership.last_join_count.is_some()
                    });
                removed || previous.rooms.contains_key(&room_id)
            }
            _ => false,
        };
        if !include {
            continue;
        }
        let bump = if membership.membership == "join" {
            bump_stamp(ctx, &room_id)?
        } else {
            membership.count
        };
        entries.push(Entry {
            room_id,
            membership,
            bump,
        });
    }
    entries.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(entries)
}

/// Stream position of the room's latest "proper" activity.
fn bump_stamp(ctx: &Ctx<'_>, room_id: &RoomId) -> Result<u64> {
    let server = ctx.server;
    let mut cursor = ctx.now;
    loop {
        let page = server
            .rooms
            .timeline_desc(&server.maps, room_id, 0, cursor, 20)?;
        let Some((last, _)) = page.last() else {
            return Ok(0);
        };
        for (count, pdu) in &page {
            if BUMP_TYPES.contains(&pdu.kind.to_string().as_str()) {
                return Ok(*count);
            }
        }
        if page.len() < 20 || *last <= 1 {
            return Ok(page.last().map_or(0, |(c, _)| *c));
        }
        cursor = last - 1;
    }
}

/// Rooms in the user's `m.direct` account data.
fn direct_rooms(server: &Server, user: &UserId) -> Result<HashSet<OwnedRoomId>> {
    let content = account_data::get(&server.maps, user, None, "m.direct")?.unwrap_or_default();
    Ok(content
        .as_object()
        .into_iter()
        .flat_map(|users| users.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|room| room.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()))
        .collect())
}

fn list_filter_allows(
    ctx: &Ctx<'_>,
    filters: Option<&request::ListFilters>,
    entry: &Entry,
    direct: &HashSet<OwnedRoomId>,
) -> bool {
    let Some(filters) = filters else { return true };
    let server = ctx.server;
    let maps = &server.maps;
    if let Some(is_dm) = filters.is_dm
        && direct.contains(&entry.room_id) != is_dm
    {
        return false;
    }
    if let Some(is_invite) = filters.is_invite
        && (entry.membership.membership == "invite") != is_invite
    {
        return false;
    }
    if let Some(is_encrypted) = filters.is_encrypted {
        let encrypted = server
            .rooms
            .current_state_event(maps, &entry.room_id, &StateEventType::RoomEncryption, "")
            .ok()
            .flatten()
            .is_some();
        if encrypted != is_encrypted {
            return false;
        }
    }
    if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
        let room_type = server
            .rooms
            .current_state_event(maps, &entry.room_id, &StateEventType::RoomCreate, "")
            .ok()
            .flatten()
            .and_then(|create| create.content_str("type"));
        let matches = |filter: &RoomTypeFilter| room_type.as_deref() == filter.as_str();
        if filters.not_room_types.iter().any(matches) {
            return false;
        }
        if !filters.room_types.is_empty() && !filters.room_types.iter().any(matches) {
            return false;
        }
    }
    true
}

/// One room of the response.
fn room_result(
    ctx: &Ctx<'_>,
    entry: &Entry,
    config: &RoomConfig,
    sent: Option<&RoomSent>,
    grown: bool,
    direct: &HashSet<OwnedRoomId>,
) -> Result<Value> {
    let server = ctx.server;
    let maps = &server.maps;
    let room_id = &entry.room_id;
    let initial = sent.is_none();
    let mut room = Map::new();
    if initial {
        room.insert("initial".into(), json!(true));
    }
    room.insert("bump_stamp".into(), json!(entry.bump));
    room.insert("membership".into(), json!(entry.membership.membership));
    if !config.lists.is_empty() {
        room.insert("lists".into(), json!(config.lists));
    }

    // Invited or knocking: stripped state only.
    if matches!(entry.membership.membership.as_str(), "invite" | "knock") {
        room.insert(
            "invite_state".into(),
            Value::Array(stripped_state(server, room_id, &entry.membership)?),
        );
        return Ok(Value::Object(room));
    }

    // Timeline: everything new since the room was last sent (or the newest events).
    let reader = v3::Reader {
        user: ctx.user,
        ignored: ctx.ignored,
        filter: None,
    };
    let upper = if entry.membership.membership == "join" {
        ctx.now
    } else {
        entry.membership.count.min(ctx.now)
    };
    let expand_timeline = grown && sent.is_some_and(|s| config.timeline_limit > s.timeline_limit);
    let from = match sent {
        Some(s) if !expand_timeline => s.position,
        _ => 0,
    };
    let timeline = v3::read_timeline(
        server,
        &reader,
        room_id,
        from,
        upper,
        config.timeline_limit,
        Some(&entry.membership),
    )?;
    if expand_timeline {
        room.insert("expanded_timeline".into(), json!(true));
    }
    let since = sent.map(|s| s.position).or(ctx.since).unwrap_or(upper);
    let num_live = timeline
        .events
        .iter()
        .filter(|(count, _)| *count > since && sent.is_some())
        .count();
    let events = timeline
        .events
        .iter()
        .map(|(_, pdu)| {
            let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
            format::client_event_for(
                server,
                pdu,
                meta.as_deref(),
                Some(ctx.user),
                Some(ctx.device),
                false,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    if !events.is_empty() || initial {
        room.insert("timeline".into(), Value::Array(events));
        let prev = timeline
            .events
            .first()
            .map_or(upper, |(count, _)| count.saturating_sub(1));
        room.insert("prev_batch".into(), json!(super::token(prev)));
        room.insert("limited".into(), json!(timeline.limited));
        room.insert("num_live".into(), json!(num_live));
    }

    // Required state: the matching current state (initial, or newly required), or what
    // changed since the room was last sent, plus lazy-loaded members.
    let group = server.rooms.group_at(maps, room_id, upper)?;
    let state_now = server.rooms.load_state(maps, group)?;
    let newly_required: BTreeSet<(String, String)> = match sent {
        Some(s) => config
            .required_state
            .difference(&s.required_state)
            .cloned()
            .collect(),
        None => config.required_state.clone(),
    };
    let previous_state = match sent {
        Some(s) => Some(
            server
                .rooms
                .load_state(maps, server.rooms.group_at(maps, room_id, s.position)?)?,
        ),
        None => None,
    };
    let lazy = config
        .required_state
        .iter()
        .any(|(t, k)| t == "m.room.member" && k == "$LAZY");
    let mut required = Vec::new();
    let mut included = HashSet::new();
    for pdu in server.rooms.state_events(maps, &state_now)? {
        let key = (
            pdu.kind.to_string(),
            pdu.state_key.clone().unwrap_or_default(),
        );
        let changed = match &previous_state {
            Some(before) => {
                let short = server.rooms.state.statekey_short(
                    maps,
                    &StateEventType::from(key.0.as_str()),
                    &key.1,
                )?;
                let short_event = server.rooms.state.event_short(maps, &pdu.event_id)?;
                short.and_then(|s| before.get(&s).copied()) != short_event
            }
            None => true,
        };
        let wanted_new = state_matches(&newly_required, &key, ctx.user);
        let wanted = state_matches(&config.required_state, &key, ctx.user);
        if wanted_new || (wanted && changed) {
            included.insert(pdu.event_id.clone());
            let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
            required.push(format::client_event(
                server,
                &pdu,
                meta.as_deref(),
                Some(ctx.device),
                false,
            )?);
        }
    }
    if lazy {
        // Members of the timeline's senders and targets.
        let mut users: BTreeSet<OwnedUserId> = BTreeSet::new();
        for (_, pdu) in &timeline.events {
            users.insert(pdu.sender.clone());
            if let Some(target) = pdu.state_user() {
                users.insert(target.to_owned());
            }
        }
        for member in users {
            let Some(pdu) = server.rooms.state_event(
                maps,
                &state_now,
                &StateEventType::RoomMember,
                member.as_str(),
            )?
            else {
                continue;
            };
            if included.insert(pdu.event_id.clone()) {
                let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
                required.push(format::client_event(
                    server,
                    &pdu,
                    meta.as_deref(),
                    Some(ctx.device),
                    false,
                )?);
            }
        }
    }
    if !required.is_empty() || initial {
        // The create event first: matrix-rust-sdk reads the room version (and in v12 the
        // creators) from it while it processes the rest of the state.
        required.sort_by_key(|event| event["type"] != "m.room.create");
        room.insert("required_state".into(), Value::Array(required));
    }

    // Name, avatar, heroes, counts.
    let name = server
        .rooms
        .state_event(maps, &state_now, &StateEventType::RoomName, "")?
        .and_then(|e| e.content_str("name"))
        .filter(|n| !n.is_empty());
    let name_changed =
        initial || state_key_changed(server, &state_now, previous_state.as_deref(), "m.room.name")?;
    if name_changed && let Some(name) = &name {
        room.insert("name".into(), json!(name));
    }
    let avatar_changed = initial
        || state_key_changed(
            server,
            &state_now,
            previous_state.as_deref(),
            "m.room.avatar",
        )?;
    if avatar_changed
        && let Some(avatar) = server
            .rooms
            .state_event(maps, &state_now, &StateEventType::RoomAvatar, "")?
            .and_then(|e| e.content_str("url"))
    {
        room.insert("avatar".into(), json!(avatar));
    }
    let members_changed = initial
        || timeline
            .events
            .iter()
            .any(|(_, p)| p.kind == TimelineEventType::RoomMember)
        || previous_state.is_none();
    if members_changed {
        let members = server.rooms.members(maps, room_id)?;
        let joined = members
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .count();
        let invited = members
            .iter()
            .filter(|(_, m)| m.membership == "invite")
            .count();
        room.insert("joined_count".into(), json!(joined));
        room.insert("invited_count".into(), json!(invited));
        if name.is_none() {
            room.insert(
                "heroes".into(),
                Value::Array(heroes(server, &state_now, &members, ctx.user)?),
            );
        }
    }
    if initial || direct.contains(room_id) {
        room.insert("is_dm".into(), json!(direct.contains(room_id)));
    }
    let read = receipts::read_up_to(maps, room_id, ctx.user);
    let counts = crate::push::unread_counts(maps, ctx.user, room_id, &read, true);
    room.insert("notification_count".into(), json!(counts.notifications));
    room.insert("highlight_count".into(), json!(counts.highlights));
    Ok(Value::Object(room))
}

/// Whether a state key is wanted by `required_state` pairs (`*` wildcards, `$ME`, and `$LAZY`
/// for members, which is handled separately).
fn state_matches(
    required: &BTreeSet<(String, String)>,
    (kind, key): &(String, String),
    user: &UserId,
) -> bool {
    required.iter().any(|(want_type, want_key)| {
        let type_ok = want_type == "*" || want_type == kind;
        let key_ok =
            want_key == "*" || want_key == key || (want_key == "$ME" && key == user.as_str());
        type_ok && key_ok && want_key != "$LAZY"
    })
}

fn state_key_changed(
    server: &Server,
    now: &crate::rooms::state::StateMap,
    before: Option<&crate::rooms::state::StateMap>,
    kind: &str,
) -> Result<bool> {
    let Some(before) = before else {
        return Ok(true);
    };
    let Some(short) =
        server
            .rooms
            .state
            .statekey_short(&server.maps, &StateEventType::from(kind), "")?
    else {
        return Ok(false);
    };
    Ok(now.get(&short) != before.get(&short))
}

/// Up to five other members (joined, then invited) to name an unnamed room.
fn heroes(
    server: &Server,
    state: &crate::rooms::state::StateMap,
    members: &[(OwnedUserId, Membership)],
    user: &UserId,
) -> Result<Vec<Value>> {
    let mut candidates: Vec<&(OwnedUserId, Membership)> = members
        .iter()
        .filter(|(u, m)| u != user && matches!(m.membership.as_str(), "join" | "invite"))
        .collect();
    candidates.sort_by_key(|(u, m)| (m.membership != "join", u.clone()));
    let mut heroes = Vec::new();
    for (hero, _) in candidates.into_iter().take(5) {
        let mut value = json!({ "user_id": hero });
        if let Some(member) = server.rooms.state_event(
            &server.maps,
            state,
            &StateEventType::RoomMember,
            hero.as_str(),
        )? {
            if let Some(name) = member.content_str("displayname") {
                value["displayname"] = json!(name);
            }
            if let Some(avatar) = member.content_str("avatar_url") {
                value["avatar_url"] = json!(avatar);
            }
        }
        heroes.push(value);
    }
    Ok(heroes)
}

fn stripped_state(
    server: &Server,
    room_id: &RoomId,
    membership: &Membership,
) -> Result<Vec<Value>> {
    if !server.rooms.exists(&server.maps, room_id)? {
        // Invited over federation into a room we are not in: the state the inviting server
        // sent, then the invite itself.
        let user = server
            .rooms
            .pdu(&server.maps, &membership.event_id)?
            .and_then(|p| p.state_key.clone())
            .and_then(|k| ruma::OwnedUserId::try_from(k).ok());
        let mut events = match &user {
            Some(user) => crate::federation::invite::stored_invite_state(server, room_id, user),
            None => Vec::new(),
        };
        if let Some(pdu) = server.rooms.pdu(&server.maps, &membership.event_id)? {
            events.push(format::stripped(&pdu));
        }
        return Ok(events);
    }
    let maps = &server.maps;
    let mut events = Vec::new();
    for kind in [
        StateEventType::RoomCreate,
        StateEventType::RoomJoinRules,
        StateEventType::RoomName,
        StateEventType::RoomAvatar,
        StateEventType::RoomCanonicalAlias,
        StateEventType::RoomEncryption,
        StateEventType::RoomTopic,
    ] {
        if let Some(pdu) = server.rooms.current_state_event(maps, room_id, &kind, "")? {
            events.push(format::stripped(&pdu));
        }
    }
    if let Some(pdu) = server.rooms.pdu(maps, &membership.event_id)? {
        events.push(format::stripped(&pdu));
    }
    Ok(events)
}

// ---- extensions -------------------------------------------------------------------------

fn extension_enabled(enabled: Option<bool>) -> bool {
    enabled.unwrap_or(false)
}

/// The rooms an extension covers: its own `rooms`/`lists` settings, or the selected rooms.
fn extension_rooms(
    selected: &[OwnedRoomId],
    lists: Option<&Vec<String>>,
    rooms: Option<&Vec<request::ExtensionRoomConfig>>,
    room_lists: &Map<String, Value>,
) -> Vec<OwnedRoomId> {
    if lists.is_none() && rooms.is_none() {
        return selected.to_vec();
    }
    let mut out: BTreeSet<OwnedRoomId> = BTreeSet::new();
    for room in rooms.into_iter().flatten() {
        match room {
            request::ExtensionRoomConfig::AllSubscribed => out.extend(selected.iter().cloned()),
            request::ExtensionRoomConfig::Room(id) => {
                out.insert(id.clone());
            }
            _ => {}
        }
    }
    for list in lists.into_iter().flatten() {
        if list == "*" {
            out.extend(selected.iter().cloned());
            continue;
        }
        for (room, value) in room_lists {
            let in_list = value
                .get("lists")
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|n| n == list.as_str()));
            if in_list && let Ok(room) = OwnedRoomId::try_from(room.as_str()) {
                out.insert(room);
            }
        }
    }
    out.into_iter().filter(|r| selected.contains(r)).collect()
}

fn extensions(
    ctx: &Ctx<'_>,
    config: &request::Extensions,
    selected: &[OwnedRoomId],
    rooms: &Map<String, Value>,
) -> Result<Map<String, Value>> {
    let server = ctx.server;
    let maps = &server.maps;
    let mut out = Map::new();

    if extension_enabled(config.to_device.enabled) {
        let acknowledged = config
            .to_device
            .since
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let limit = config
            .to_device
            .limit
            .map_or(100, |l| u64::from(l).clamp(1, 1000) as usize);
        let batch =
            crate::e2ee::to_device(server, ctx.user, ctx.device, acknowledged, ctx.now, limit)?;
        let next = batch
            .last
            .unwrap_or(acknowledged.max(if batch.more { 0 } else { ctx.now }));
        out.insert(
            "to_device".into(),
            json!({ "next_batch": next.to_string(), "events": batch.events }),
        );
    }
    if extension_enabled(config.e2ee.enabled) {
        let lists = match ctx.since {
            Some(since) => crate::e2ee::device_lists(server, ctx.user, since, ctx.now)?,
            None => Default::default(),
        };
        out.insert(
            "e2ee".into(),
            json!({
                "device_lists": { "changed": lists.changed, "left": lists.left },
                "device_one_time_keys_count": crate::e2ee::one_time_key_counts(server, ctx.user, ctx.device)?,
                "device_unused_fallback_key_types": crate::e2ee::unused_fallback_key_types(server, ctx.user, ctx.device)?,
            }),
        );
    }
    if extension_enabled(config.account_data.enabled) {
        let since = ctx.since.unwrap_or(0);
        let mut global = Vec::new();
        let mut by_room: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let covered = extension_rooms(
            selected,
            config.account_data.lists.as_ref(),
            config.account_data.rooms.as_ref(),
            rooms,
        );
        for (room, kind, content) in account_data::changes_since(maps, ctx.user, since)? {
            let event = json!({ "type": kind, "content": content });
            if room.is_empty() {
                global.push(event);
            } else if covered.iter().any(|r| r.as_str() == room) {
                by_room.entry(room).or_default().push(event);
            }
        }
        out.insert(
            "account_data".into(),
            json!({ "global": global, "rooms": by_room }),
        );
    }
    if extension_enabled(config.receipts.enabled) {
        let covered = extension_rooms(
            selected,
            config.receipts.lists.as_ref(),
            config.receipts.rooms.as_ref(),
            rooms,
        );
        let mut by_room = Map::new();
        for room_id in covered {
            // Rooms new to the connection get all their receipts; others the changes.
            let new_to_connection = rooms
                .get(room_id.as_str())
                .is_some_and(|r| r.get("initial").is_some());
            let entries = match (ctx.since, new_to_connection) {
                (Some(since), false) => receipts::changed(maps, &room_id, since, ctx.now)?,
                _ => receipts::all(maps, &room_id),
            };
            if let Some(event) = receipts::ephemeral_event(&entries, ctx.user) {
                by_room.insert(room_id.to_string(), event);
            }
        }
        out.insert("receipts".into(), json!({ "rooms": by_room }));
    }
    if extension_enabled(config.typing.enabled) {
        let covered = extension_rooms(
            selected,
            config.typing.lists.as_ref(),
            config.typing.rooms.as_ref(),
            rooms,
        );
        let mut by_room = Map::new();
        for room_id in covered {
            let (count, users) = server.typing.get(&room_id);
            let changed = ctx
                .since
                .is_none_or(|since| count > since && count <= ctx.now);
            if changed && (count > 0) {
                by_room.insert(
                    room_id.to_string(),
                    json!({ "type": "m.typing", "content": { "user_ids": users } }),
                );
            }
        }
        out.insert("typing".into(), json!({ "rooms": by_room }));
    }
    Ok(out)
}

/// Whether an extension's result carries nothing new (so it does not end a long-poll).
fn is_empty_extension(value: &Value) -> bool {
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    match value {
        Value::Object(object) => {
            if let Some(events) = object.get("events") {
                return empty(Some(events));
            }
            if object.contains_key("device_lists") {
                let lists = &object["device_lists"];
                return empty(lists.get("changed")) && empty(lists.get("left"));
            }
            object.iter().all(|(_, v)| empty(Some(v)))
        }
        other => empty(Some(other)),
    }
}
