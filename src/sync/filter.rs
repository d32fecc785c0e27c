//! Applying client filters (ruma's filter types) to events.

use ruma::api::client::filter::{Filter, FilterDefinition, RoomEventFilter};

use crate::rooms::pdu::Pdu;

/// `*` matches any sequence of characters, as the spec allows in `types`.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, tail)) => {
            let Some(rest) = value.strip_prefix(head) else {
                return false;
            };
            if tail.is_empty() {
                return true;
            }
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

fn type_allowed(types: &Option<Vec<String>>, not_types: &[String], kind: &str) -> bool {
    if not_types.iter().any(|t| glob_match(t, kind)) {
        return false;
    }
    types
        .as_ref()
        .is_none_or(|types| types.iter().any(|t| glob_match(t, kind)))
}

pub fn room_event_allowed(filter: &RoomEventFilter, pdu: &Pdu) -> bool {
    if filter.not_senders.contains(&pdu.sender) {
        return false;
    }
    if filter
        .senders
        .as_ref()
        .is_some_and(|senders| !senders.contains(&pdu.sender))
    {
        return false;
    }
    type_allowed(&filter.types, &filter.not_types, &pdu.kind.to_string())
}

pub fn room_allowed(filter: &FilterDefinition, room_id: &ruma::RoomId) -> bool {
    if filter.room.not_rooms.iter().any(|r| r == room_id) {
        return false;
    }
    filter
        .room
        .rooms
        .as_ref()
        .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

pub fn type_only_allowed(filter: &Filter, kind: &str) -> bool {
    type_allowed(&filter.types, &filter.not_types, kind)
}

pub fn room_type_allowed(filter: &RoomEventFilter, kind: &str) -> bool {
    type_allowed(&filter.types, &filter.not_types, kind)
}

pub fn lazy_members(filter: &RoomEventFilter) -> bool {
    !filter.lazy_load_options.is_disabled()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("m.room.*", "m.room.message"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("m.*.member", "m.room.member"));
        assert!(!glob_match("m.room.message", "m.room.messages"));
        assert!(!glob_match("m.call.*", "m.room.message"));
    }
}
