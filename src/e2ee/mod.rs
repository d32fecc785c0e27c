//! End-to-end encryption support: device keys, one-time and fallback keys, cross-signing,
//! signatures, device-list changes, to-device messages and key backup (issue 4).
//!
//! The server never sees plaintext; it stores and hands out keys exactly as clients uploaded
//! them, and tracks what changed so `/sync` can tell clients.
//!
//! - [`keys`]: `/keys/upload` and `/keys/query` (device keys kept as canonical JSON, so every
//!   client's signature check sees the bytes the device signed);
//! - [`claim`]: one-time and fallback keys, `/keys/claim` (each one-time key handed out once);
//! - [`cross_signing`]: master, self-signing and user-signing keys, `/keys/signatures/upload`;
//! - [`device_lists`]: who changed, for `/sync` and `/keys/changes`;
//! - [`to_device`]: `/sendToDevice` and per-device inboxes, deleted once acknowledged;
//! - [`backup`]: server-side key backups (`/room_keys/...`).
//!
//! Device-list changes take a stream position (`keychanges`) and wake the user and everyone
//! sharing a room with them, so long-polling syncs return.

pub mod backup;
pub mod claim;
pub mod cross_signing;
pub mod device_lists;
pub mod keys;
pub mod signing;
pub mod to_device;

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
};

use http::StatusCode;
use parking_lot::{Mutex, MutexGuard};
use ruma::{DeviceId, OwnedUserId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    server::Server,
    storage::{Batch, keys::Key},
    sync::stream::Pending,
};

/// Device-list changes for `/sync` and `/keys/changes`.
#[derive(Debug, Default)]
pub struct DeviceLists {
    /// Users (sharing a room with the requester) whose devices or cross-signing keys changed,
    /// or who newly share a room.
    pub changed: Vec<OwnedUserId>,
    /// Users who no longer share any room with the requester.
    pub left: Vec<OwnedUserId>,
}

/// To-device messages for one device, from a sync.
#[derive(Debug, Default)]
pub struct ToDeviceBatch {
    pub events: Vec<Value>,
    /// Stream position of the last message returned (what the next token acknowledges).
    pub last: Option<u64>,
    /// Whether more messages are waiting beyond this batch.
    pub more: bool,
}

/// Device-list changes for `user` in the stream window `(since, to]`.
pub fn device_lists(server: &Server, user: &UserId, since: u64, to: u64) -> Result<DeviceLists> {
    device_lists::changes(server, user, since, to)
}

/// Unclaimed one-time keys of a device, per algorithm.
pub fn one_time_key_counts(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
) -> Result<BTreeMap<String, u64>> {
    claim::counts(server, user, device)
}

/// Algorithms for which the device has an unused fallback key.
pub fn unused_fallback_key_types(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
) -> Result<Vec<String>> {
    claim::unused_fallback_key_types(server, user, device)
}

/// Deletes the device's to-device messages up to `acknowledged` (the client's token says it
/// has them), then returns up to `limit` messages after it, up to stream position `to`.
pub fn to_device(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
    acknowledged: u64,
    to: u64,
    limit: usize,
) -> Result<ToDeviceBatch> {
    to_device::deliver(server, user, device, acknowledged, to, limit)
}

/// Everything end-to-end encryption keeps about a device, deleted in the caller's batch
/// (`Users::remove_device`): its keys, one-time and fallback keys, signatures of it, pending
/// to-device messages and transaction ids. The removal counts as a device-list change; call
/// [`DeviceRemoval::finish`] after committing the batch.
pub fn remove_device(
    server: &Server,
    batch: &mut Batch,
    user: &UserId,
    device: &DeviceId,
) -> Result<DeviceRemoval> {
    // Held until the batch is committed, so a concurrent upload or claim cannot write a key
    // back for the device being deleted.
    let guard = lock(&[user.as_str(), device.as_str()]);
    keys::delete_device(server, batch, user, device)?;
    claim::delete_device(server, batch, user, device)?;
    to_device::delete_device(server, batch, user, device)?;
    let change = KeyChange::record(server, batch, user, false);
    Ok(DeviceRemoval {
        change,
        _guard: guard,
    })
}

/// Records a change of `user`'s device list that happened elsewhere (a device renamed: its
/// display name is served with its keys) and wakes the users who track it.
pub fn device_list_changed(server: &Server, user: &UserId) -> Result<()> {
    let mut batch = server.db.batch();
    let change = KeyChange::record(server, &mut batch, user, false);
    server.db.commit(batch)?;
    change.finish(server);
    Ok(())
}

/// A device removal in progress (see [`remove_device`]).
pub struct DeviceRemoval {
    change: KeyChange,
    _guard: MutexGuard<'static, ()>,
}

impl DeviceRemoval {
    /// After the commit: wakes the user and everyone sharing a room with them.
    pub fn finish(self, server: &Server) {
        let DeviceRemoval { change, _guard } = self;
        drop(_guard);
        change.finish(server);
    }
}

/// A device-list change being written: a stream position recorded in `keychanges` in the
/// batch. Finish it after the commit to wake the users who should look at the change.
pub struct KeyChange {
    pending: Pending,
    user: OwnedUserId,
    private: bool,
}

impl KeyChange {
    /// Records a change of `user`'s devices or keys. `private` changes (signatures the user made
    /// of other users' keys, the user-signing key) only concern the user's own devices.
    pub fn record(server: &Server, batch: &mut Batch, user: &UserId, private: bool) -> Self {
        let pending = server.stream.next(&server.maps, batch);
        let value = if private {
            Key::new().s(user.as_str()).s(PRIVATE).build()
        } else {
            user.as_bytes().to_vec()
        };
        batch.put(
            &server.maps.keychanges,
            pending.count().to_be_bytes(),
            value,
        );
        Self {
            pending,
            user: user.to_owned(),
            private,
        }
    }

    pub fn finish(self, server: &Server) {
        if !self.private {
            // Other servers sharing a room with the user hear of it too.
            crate::federation::e2ee::announce_device_change(
                server,
                &self.user,
                self.pending.count(),
            );
        }
        let users = if self.private {
            vec![self.user.clone()]
        } else {
            crate::users::presence::room_mates(server, &self.user).unwrap_or_else(|error| {
                tracing::warn!(%error, "device-list change: could not list room mates");
                vec![self.user.clone()]
            })
        };
        self.pending.finish(users);
    }
}

/// The marker of a private change in `keychanges`.
const PRIVATE: &str = "self";

/// Lock stripes serialising the read-modify-write sequences of one device's keys (uploads and
/// claims: each one-time key is handed out once), one user's cross-signing keys and backups, and
/// one device's `/sendToDevice` transactions. They hold no data, so being process-wide (rather
/// than per `Server`) only means two servers in one process could wait on each other. Only one
/// stripe is ever held at a time, and never across an `.await`.
static LOCKS: [Mutex<()>; 64] = [const { Mutex::new(()) }; 64];

/// The stripe for a key made of `parts` (e.g. `[user, device]`).
pub(crate) fn lock(parts: &[&str]) -> MutexGuard<'static, ()> {
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    let index = (hasher.finish() % LOCKS.len() as u64) as usize;
    LOCKS[index].lock()
}

/// `400 M_INVALID_SIGNATURE`.
pub(crate) fn invalid_signature(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", message)
}
