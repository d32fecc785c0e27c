//! The catalog: every column family, declared once, with its key layout.
//!
//! Notation: `a, b -> v` means key = tuple (a, b) joined by `0xFF`; `count` and `group` are
//! big-endian `u64`; `json` is a serde_json document, `pdu` the event in canonical JSON.

use std::sync::Arc;

use super::{Db, Map};

pub struct Descriptor {
    pub name: &'static str,
    /// Values are big-endian u64 counters raised with `Batch::raise` (merge operator `max`).
    pub merge_max_u64: bool,
}

macro_rules! catalog {
    ($( $(#[doc = $doc:literal])* $name:ident $(: $merge:ident)? ;)*) => {
        pub static CATALOG: &[Descriptor] = &[
            $( Descriptor { name: stringify!($name), merge_max_u64: catalog!(@merge $($merge)?) }, )*
        ];

        /// Handles to every map in the catalog.
        pub struct Maps {
            $( $(#[doc = $doc])* pub $name: Map, )*
        }

        impl Maps {
            pub(super) fn new(db: &Arc<Db>) -> Self {
                Self { $( $name: Map { db: db.inner.clone(), name: stringify!($name) }, )* }
            }
        }
    };
    (@merge max) => { true };
    (@merge) => { false };
}

catalog! {
    /// `name -> value`: server-wide singletons. `counter` and `short_counter` are max-merged
    /// u64s; `signing_key` is the PKCS#8 ed25519 key.
    global: max;

    // ---- accounts ----
    /// `user_id -> argon2id PHC string`
    userid_password;
    /// `user_id -> json {displayname, avatar_url}`
    userid_profile;
    /// `user_id -> ms timestamp`: deactivated accounts (kept so the ID is never reused).
    userid_deactivated;
    /// `user_id, device_id -> json Device`
    userdeviceid_device;
    /// `sha256(access_token) -> json Session {user_id, device_id, expires_at}`
    tokenhash_session;
    /// `sha256(refresh_token) -> json {user_id, device_id}`
    refreshhash_session;
    /// `sha256(openid_token) -> json {user_id, expires_at}`
    openidhash_user;
    /// `user_id, filter_id -> json filter`
    userfilterid_filter;
    /// `user_id, room_id or "", type -> json {count, content}`
    useraccountdata;
    /// `user_id, count -> json [room_id or "", type]`: account data changes in stream order.
    usercount_accountdata;
    /// `user_id, device_id, txn_id -> event_id`: idempotent sends.
    usertxn_eventid;

    // ---- rooms and events ----
    /// `room_id -> json RoomMeta {room_version, ...}`
    roomid_meta;
    /// `event_id -> pdu`
    eventid_pdu;
    /// `event_id -> json EventMeta {room_id, count, state_before, state_after, ...}`
    eventid_meta;
    /// `room_id, count -> event_id`: the timeline in stream order.
    roomcount_eventid;
    /// `room_id -> json [event_id]`: forward extremities (the DAG's current leaves).
    roomid_extremities;
    /// `room_id -> group`: the room's current state.
    roomid_stategroup;
    /// `group -> diff`: a state snapshot as (parent, added, removed) over short ids.
    stategroup_diff;
    /// `type, state_key -> short`: interned state keys.
    statekey_short;
    /// `short -> type, state_key`
    short_statekey;
    /// `event_id -> short`: interned event ids.
    eventid_short;
    /// `short -> event_id`
    short_eventid;
    /// `room_id, user_id -> json Membership {membership, count, event_id}`
    roomuserid_membership;
    /// `user_id, room_id -> json Membership` (same as above, for listing a user's rooms)
    userroomid_membership;
    /// `user_id, room_id -> ()`: rooms the user forgot.
    userroomid_forgotten;
    /// `#alias:server -> json {room_id, creator}`
    alias_roomid;
    /// `room_id, alias -> ()`
    roomid_alias;
    /// `room_id -> ()`: rooms published in the room directory.
    roomid_published;
}
