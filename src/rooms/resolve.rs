//! State resolution (room versions 2+, via ruma's `state_res::resolve`) for the points where
//! the DAG forks: the state before an event with several `prev_events`, and the room's
//! current state when it has several forward extremities. Only federation creates forks;
//! local events always extend every extremity.

use std::collections::{HashMap, HashSet};

use ruma::{
    OwnedEventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res,
    state_res::utils::event_id_set::EventIdSet,
};

use super::{pdu::PduRef, state::StateMap};
use crate::{
    error::{Error, Result},
    server::Server,
};

/// Walks `auth_events` from `start` (inclusive of what it reaches, exclusive of `start`).
pub fn auth_chain(server: &Server, start: &[OwnedEventId]) -> Result<HashSet<OwnedEventId>> {
    let mut seen = HashSet::new();
    let mut todo: Vec<OwnedEventId> = Vec::new();
    for id in start {
        if let Some(pdu) = server.rooms.pdu(&server.maps, id)? {
            todo.extend(pdu.auth_events.iter().cloned());
        }
    }
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(pdu) = server.rooms.pdu(&server.maps, &id)? {
            todo.extend(pdu.auth_events.iter().cloned());
        }
    }
    // Since room version 12 the create event is an implied auth event of every other event
    // (the room id names it), so it is not reached through `auth_events`: add it.
    if let Some(first) = start.first()
        && let Some(pdu) = server.rooms.pdu(&server.maps, first)?
        && let Some(meta) = server.rooms.meta(&server.maps, &pdu.room_id)?
        && !start.contains(&meta.create_event_id)
    {
        seen.insert(meta.create_event_id);
    }
    Ok(seen)
}

/// Our short-id state map as ruma's `(type, state_key) -> event id` map.
fn to_ruma(server: &Server, state: &StateMap) -> Result<state_res::StateMap<OwnedEventId>> {
    let maps = &server.maps;
    let mut out = HashMap::with_capacity(state.len());
    for (key, event) in state.iter() {
        let (kind, state_key) = server.rooms.state.statekey_of(maps, *key)?;
        out.insert(
            (kind, state_key),
            server.rooms.state.event_id_of(maps, *event)?,
        );
    }
    Ok(out)
}

/// Resolves several states of one room into one (identical inputs return at once).
pub fn resolve(server: &Server, rules: &RoomVersionRules, states: &[StateMap]) -> Result<StateMap> {
    match states {
        [] => return Ok(StateMap::default()),
        [only] => return Ok(only.clone()),
        [first, rest @ ..] if rest.iter().all(|s| s == first) => return Ok(first.clone()),
        _ => {}
    }
    let maps = &server.maps;
    let ruma_states = states
        .iter()
        .map(|s| to_ruma(server, s))
        .collect::<Result<Vec<_>>>()?;
    let auth_chains = ruma_states
        .iter()
        .map(|s| {
            auth_chain(server, &s.values().cloned().collect::<Vec<_>>())
                .map(|chain| chain.into_iter().collect::<EventIdSet<_>>())
        })
        .collect::<Result<Vec<_>>>()?;
    let fetch =
        |id: &ruma::EventId| -> Option<PduRef> { server.rooms.pdu(maps, id).ok().flatten() };
    let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| {
        conflicted_subgraph(server, conflicted)
            .ok()
            .map(|set| set.into_iter().collect::<EventIdSet<_>>())
    };
    let resolution_rules = rules
        .state_res
        .v2_rules()
        .ok_or_else(|| Error::internal("room version without state resolution v2"))?;
    let resolved = state_res::resolve(
        &rules.authorization,
        resolution_rules,
        ruma_states.iter(),
        auth_chains,
        fetch,
        subgraph,
    )
    .map_err(|e| Error::internal(format_args!("state resolution: {e}")))?;
    let mut out = StateMap::default();
    for ((kind, state_key), event_id) in resolved {
        let key = server.rooms.state.intern_statekey(
            &server.db,
            maps,
            &StateEventType::from(kind.to_string()),
            &state_key,
        )?;
        let Some(short) = server.rooms.state.event_short(maps, &event_id)? else {
            return Err(Error::internal(format_args!(
                "resolved state names unknown event {event_id}"
            )));
        };
        out.insert(key, short);
    }
    Ok(out)
}

/// The conflicted state subgraph (state resolution v2.1): events that are reachable through
/// `auth_events` from a conflicted event and themselves reach a conflicted event.
fn conflicted_subgraph(
    server: &Server,
    conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
) -> Result<HashSet<OwnedEventId>> {
    let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    let mut out = HashSet::new();
    for start in &targets {
        for id in auth_chain(server, std::slice::from_ref(start))? {
            if reaches_target(server, &id, &targets, &mut reaches)? {
                out.insert(id);
            }
        }
    }
    out.extend(targets);
    Ok(out)
}

fn reaches_target(
    server: &Server,
    id: &OwnedEventId,
    targets: &HashSet<OwnedEventId>,
    memo: &mut HashMap<OwnedEventId, bool>,
) -> Result<bool> {
    if targets.contains(id) {
        return Ok(true);
    }
    if let Some(known) = memo.get(id) {
        return Ok(*known);
    }
    // Mark first: auth graphs are acyclic, but a corrupt one must not recurse forever.
    memo.insert(id.clone(), false);
    let parents = server
        .rooms
        .pdu(&server.maps, id)?
        .map(|p| p.auth_events.clone())
        .unwrap_or_default();
    let mut found = false;
    for parent in &parents {
        if reaches_target(server, parent, targets, memo)? {
            found = true;
            break;
        }
    }
    memo.insert(id.clone(), found);
    Ok(found)
}
