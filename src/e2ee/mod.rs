//! End-to-end encryption support: device keys, one-time and fallback keys, cross-signing,
//! signatures, device-list changes, to-device messages and key backup (issue 4).
//!
//! The server never sees plaintext; it stores and hands out keys exactly as clients uploaded
//! them, and tracks what changed so `/sync` can tell clients.

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedUserId, UserId};
use serde_json::Value;

use crate::{error::Result, server::Server};

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
pub fn device_lists(
    _server: &Server,
    _user: &UserId,
    _since: u64,
    _to: u64,
) -> Result<DeviceLists> {
    Ok(DeviceLists::default())
}

/// Unclaimed one-time keys of a device, per algorithm.
pub fn one_time_key_counts(
    _server: &Server,
    _user: &UserId,
    _device: &DeviceId,
) -> Result<BTreeMap<String, u64>> {
    Ok(BTreeMap::new())
}

/// Algorithms for which the device has an unused fallback key.
pub fn unused_fallback_key_types(
    _server: &Server,
    _user: &UserId,
    _device: &DeviceId,
) -> Result<Vec<String>> {
    Ok(Vec::new())
}

/// Deletes the device's to-device messages up to `acknowledged` (the client's token says it
/// has them), then returns up to `limit` messages after it, up to stream position `to`.
pub fn to_device(
    _server: &Server,
    _user: &UserId,
    _device: &DeviceId,
    _acknowledged: u64,
    _to: u64,
    _limit: usize,
) -> Result<ToDeviceBatch> {
    Ok(ToDeviceBatch::default())
}
