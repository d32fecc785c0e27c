//! The catalog: every map, declared once, with its key layout and the column family it lives in.
//!
//! Notation: `a, b -> v` means key = tuple (a, b) joined by `0xFF`; `count` and `group` are
//! big-endian `u64`; `json` is a serde_json document, `pdu` the event in canonical JSON.
//!
//! Maps are grouped into a few column families by access pattern (tiny account records,
//! large event bodies, timeline ranges ...). Within a family each map owns a one-byte namespace
//! that [`Map`] prepends to every key and strips from every key it returns, so code using a
//! map never sees it. Few families keep the first start fast: creating each family costs
//! RocksDB three fsyncs (directory, MANIFEST, OPTIONS).

use std::sync::Arc;

use super::{Db, Map};

/// A RocksDB column family.
pub struct Family {
    pub name: &'static str,
    /// Values are big-endian u64 counters raised with `Batch::raise` (merge operator `max`).
    pub merge_max_u64: bool,
    /// Memtable size in MiB: larger for families written on every event.
    pub write_buffer_mb: usize,
}

pub static FAMILIES: &[Family] = &[
    Family::new("global", true, 1),
    Family::new("accounts", false, 2),
    Family::new("account_data", false, 2),
    Family::new("rooms", false, 4),
    Family::new("membership", false, 2),
    Family::new("events", false, 16),
    Family::new("event_index", false, 16),
    Family::new("timeline", false, 8),
    Family::new("state", false, 4),
    Family::new("relations", false, 4),
    Family::new("receipts", false, 4),
    Family::new("push", false, 16),
    Family::new("media", false, 2),
    Family::new("directory", false, 2),
    // End-to-end encryption (issue 4): keys and device lists, to-device inboxes, key backups.
    Family::new("e2ee", false, 2),
    Family::new("to_device", false, 4),
    Family::new("backup", false, 2),
    // Federation (issue 5): other servers' keys.
    Family::new("federation", false, 2),
];

impl Family {
    const fn new(name: &'static str, merge_max_u64: bool, write_buffer_mb: usize) -> Self {
        Self {
            name,
            merge_max_u64,
            write_buffer_mb,
        }
    }
}

macro_rules! catalog {
    ($( $(#[doc = $doc:literal])* $name:ident in $family:literal = $ns:literal ;)*) => {
        /// Handles to every map in the catalog.
        pub struct Maps {
            $( $(#[doc = $doc])* pub $name: Map, )*
        }

        impl Maps {
            pub(super) fn new(db: &Arc<Db>) -> Self {
                Self { $( $name: Map { db: db.inner.clone(), family: $family, ns: $ns }, )* }
            }
        }

        /// (family, namespace) of every map, to check they are unique.
        #[cfg(test)]
        pub(super) static NAMESPACES: &[(&str, u8, &str)] = &[ $( ($family, $ns, stringify!($name)), )* ];
    };
}

catalog! {
    /// `name -> value`: server-wide singletons. `counter` and `short_counter` are max-merged
    /// u64s; `signing_key` is the PKCS#8 ed25519 key.
    global in "global" = 1;

    // ---- accounts ----
    /// `user_id -> argon2id PHC string`
    userid_password in "accounts" = 1;
    /// `user_id -> json {displayname, avatar_url, ...}`
    userid_profile in "accounts" = 2;
    /// `user_id -> ms timestamp`: deactivated accounts (kept so the ID is never reused).
    userid_deactivated in "accounts" = 3;
    /// `user_id, device_id -> json Device`
    userdeviceid_device in "accounts" = 4;
    /// `sha256(access_token) -> json Session {user_id, device_id, expires_at}`
    tokenhash_session in "accounts" = 5;
    /// `sha256(refresh_token) -> json {user_id, device_id}`
    refreshhash_session in "accounts" = 6;
    /// `sha256(openid_token) -> json {user_id, expires_at}`
    openidhash_user in "accounts" = 7;
    /// `user_id, filter_id -> json filter`
    userfilterid_filter in "accounts" = 8;
    /// `user_id, device_id, txn_id -> event_id`: idempotent sends.
    usertxn_eventid in "accounts" = 9;

    /// `user_id, room_id or "", type -> json {count, content}`
    useraccountdata in "account_data" = 1;
    /// `user_id, count -> json [room_id or "", type]`: account data changes in stream order.
    usercount_accountdata in "account_data" = 2;

    // ---- rooms ----
    /// `room_id -> json RoomMeta {room_version, ...}`
    roomid_meta in "rooms" = 1;
    /// `room_id -> json [event_id]`: forward extremities (the DAG's current leaves).
    roomid_extremities in "rooms" = 2;
    /// `room_id -> group`: the room's current state.
    roomid_stategroup in "rooms" = 3;
    /// `#alias:server -> json {room_id, creator}`
    alias_roomid in "rooms" = 4;
    /// `room_id, alias -> ()`
    roomid_alias in "rooms" = 5;
    /// `room_id -> ()`: rooms published in the room directory.
    roomid_published in "rooms" = 6;
    /// `delay_id -> json Delayed`: delayed events (MSC4140) waiting to be sent.
    delayid_delayed in "rooms" = 7;
    /// `delay_id -> json Finalised`: delayed events sent or cancelled (kept a week).
    delayid_finalised in "rooms" = 8;

    /// `room_id, user_id -> json Membership {membership, count, event_id}`
    roomuserid_membership in "membership" = 1;
    /// `user_id, room_id -> json Membership` (same as above, for listing a user's rooms)
    userroomid_membership in "membership" = 2;
    /// `user_id, room_id -> ()`: rooms the user forgot.
    userroomid_forgotten in "membership" = 3;

    // ---- events ----
    /// `event_id -> pdu`
    eventid_pdu in "events" = 1;
    /// `event_id -> json EventMeta {room_id, count, state_before, state_after, ...}`
    eventid_meta in "event_index" = 1;
    /// `event_id -> short`: interned event ids.
    eventid_short in "event_index" = 2;
    /// `short -> event_id`
    short_eventid in "event_index" = 3;
    /// `target_event_id, redaction_event_id -> ()`: redactions that arrived before their
    /// target (applied, if permitted, when it comes).
    target_redaction in "event_index" = 4;
    /// `room_id, count -> event_id`: the timeline in stream order.
    roomcount_eventid in "timeline" = 1;

    // ---- state ----
    /// `group -> diff`: a state snapshot as (parent, added, removed) over short ids.
    stategroup_diff in "state" = 1;
    /// `type, state_key -> short`: interned state keys.
    statekey_short in "state" = 2;
    /// `short -> type, state_key`
    short_statekey in "state" = 3;

    // ---- relations and threads ----
    /// `target_event_id, count -> json Relation`: every relation to an event, in stream order.
    relates in "relations" = 1;
    /// `target_event_id, sender, key -> event_id`: one reaction per user and key.
    annotation_key in "relations" = 2;
    /// `room_id, root_event_id -> count`: a thread's latest activity.
    roomthread_latest in "relations" = 3;
    /// `room_id, count, root_event_id -> ()`: threads by latest activity (for `/threads`).
    roomthread_activity in "relations" = 4;
    /// `root_event_id, user_id -> ()`: users who replied in a thread.
    thread_participant in "relations" = 5;

    // ---- receipts and presence ----
    /// `room_id, receipt_type, thread or "", user_id -> json Receipt`
    roomreceipt in "receipts" = 1;
    /// `room_id, count -> json [receipt_type, thread, user_id]`: receipt changes in stream order.
    roomcount_receipt in "receipts" = 2;
    /// `user_id -> json Presence`
    userid_presence in "receipts" = 3;
    /// `count -> user_id`: presence changes in stream order.
    count_presence in "receipts" = 4;
    /// `room_id, user_id, "main" or thread root -> count`: the user's own latest event there,
    /// which marks everything before it as read (an implicit receipt that nobody else sees).
    own_read in "receipts" = 5;

    // ---- push ----
    /// `room_id, count -> sender 0x00 flags | thread root | [0x00 actions]`: the notification
    /// every local member on the default rules whom the event does not name gets (count = the
    /// event's stream position), for unread counts and `/notifications` (see push::Stored).
    roomcount_notification in "push" = 1;
    /// `user_id, room_id, count -> flags | thread root | [0x00 actions]`: a member's own
    /// outcome where it can differ from the room's (custom rules, named in the event).
    userroomcount_notification in "push" = 2;
    /// `user_id, app_id, pushkey -> json Pusher`
    userpusher in "push" = 3;
    /// `count -> json report`: content and room reports for the server's admins.
    reports in "push" = 4;

    // ---- media ----
    /// `server_name, media_id -> json MediaMeta {sha256, size, content_type, filename,
    /// uploader, created_ts}`: uploaded content; the bytes are the file named by `sha256`
    /// in `[media] path`.
    mediaid_meta in "media" = 1;
    /// `server_name, media_id -> json Pending {uploader, created_ts, expires_at}`: ids from
    /// `POST /media/v1/create` whose content is not uploaded yet.
    mediaid_pending in "media" = 2;
    /// `user_id, media_id -> u64 expires_at`: a user's pending ids (for the per-user limit).
    userid_pendingmedia in "media" = 3;
    /// `server_name, media_id, u64 width, u64 height, method -> json Thumbnail {sha256, size,
    /// content_type, width, height}`: generated thumbnails, by requested size and method.
    mediaid_thumbnail in "media" = 4;
    /// `url, u64 hour -> json OpenGraph`: URL previews, by the hour they were fetched in.
    url_preview in "media" = 5;

    // ---- directory (issue 3: user directory) ----
    /// `term, user_id -> ()`: user directory search terms (the lowercased words of the user's
    /// localpart and display name); a prefix scan over `term` finds users.
    userdir_term in "directory" = 1;
    /// `user_id -> json {displayname, avatar_url, terms}`: a user's user directory entry.
    userdir_user in "directory" = 2;

    // ---- end-to-end encryption (issue 4) ----
    /// `user_id, device_id -> canonical json`: the device's keys as uploaded, without
    /// `unsigned` (added when served) and without the signatures from
    /// `/keys/signatures/upload` (kept in `key_signatures`, merged when served).
    devicekeys in "e2ee" = 1;
    /// `user_id, device_id, algorithm, u64 seq, key_id -> json key`: unclaimed one-time keys
    /// in upload order (`seq` numbers the device's upload calls); `key_id` is what follows
    /// `algorithm:` in the full key id.
    onetimekeys in "e2ee" = 2;
    /// `user_id, device_id, algorithm:key_id -> u64 seq`: which unclaimed key has an id
    /// (re-uploads of the same id are checked against it).
    onetimekey_ids in "e2ee" = 3;
    /// `user_id, device_id -> json OtkMeta {next_seq, counts, cursors}`: unclaimed key counts
    /// per algorithm and, per algorithm, the last claimed key, so a claim seeks past the
    /// deleted keys instead of walking their tombstones.
    onetimekey_meta in "e2ee" = 4;
    /// `user_id, device_id, algorithm -> json Fallback {key_id, key, used}`
    fallbackkeys in "e2ee" = 5;
    /// `user_id, "master" | "self_signing" | "user_signing" -> canonical json`: cross-signing
    /// keys as uploaded (signatures from `/keys/signatures/upload` are in `key_signatures`).
    crosssigning_keys in "e2ee" = 6;
    /// `target_user_id, target (device_id or master public key), signer_user_id, signer_key_id
    /// -> signature`: signatures uploaded with `/keys/signatures/upload`.
    key_signatures in "e2ee" = 7;
    /// `count -> user_id` or `count -> user_id, "self"`: device-list changes (devices, device
    /// keys, cross-signing keys) in stream order; `self` ones only concern the user's own
    /// devices (signatures of other users' keys).
    keychanges in "e2ee" = 8;

    /// `user_id, device_id, count, u64 seq -> json {type, sender, content}`: pending to-device
    /// messages in stream order, deleted once a sync token acknowledges them.
    todevice_messages in "to_device" = 1;
    /// `user_id, device_id -> count`: the device's messages up to here are deleted (reads seek
    /// past them rather than walking their tombstones).
    todevice_acked in "to_device" = 2;
    /// `sender user_id, sender device_id, txn_id -> count`: `/sendToDevice` transactions done.
    todevice_txns in "to_device" = 3;

    /// `user_id -> u64`: the last key backup version created (versions are never reused).
    backup_last in "backup" = 1;
    /// `user_id, u64 version -> json BackupVersion {algorithm, auth_data, etag, count}`
    backup_versions in "backup" = 2;
    /// `user_id, u64 version, room_id, session_id -> json KeyBackupData`
    backup_keys in "backup" = 3;

    // ---- federation ----
    /// `server_name -> json {document, expires_ts}`: another server's key document (checked:
    /// self-signed), trusted until `expires_ts`.
    servername_keys in "federation" = 1;
    /// `destination, count -> event_id`: PDUs waiting to be sent to a server (count = the
    /// event's stream position, so each destination gets them in order); deleted once the
    /// destination acknowledged the transaction.
    destination_pdus in "federation" = 2;
    /// `event_id -> reason`: PDUs received over federation that failed their checks (kept so
    /// they are not fetched and checked again).
    eventid_rejected in "federation" = 3;
    /// `room_id, user_id -> json [stripped state]`: what another server told us about a room
    /// it invited our user to (we are not in the room, so we have no state of our own).
    roomuser_invitestate in "federation" = 4;
    /// `destination, u64 seq -> json EDU`: EDUs that must not be lost (to-device messages,
    /// device list and signing key updates) waiting for a server; deleted once it
    /// acknowledged the transaction. (Typing, receipts and presence wait in memory.)
    destination_edus in "federation" = 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_unique_and_families_exist() {
        let mut seen = std::collections::HashSet::new();
        for (family, ns, name) in NAMESPACES {
            assert!(
                FAMILIES.iter().any(|f| f.name == *family),
                "{name}: unknown family {family}"
            );
            assert!(
                seen.insert((*family, *ns)),
                "{name}: namespace {ns} reused in {family}"
            );
        }
    }
}
