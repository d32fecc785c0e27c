//! To-device messages: `/sendToDevice` and each device's inbox.
//!
//! A send takes one stream position; each recipient device gets the message under
//! `(user, device, position, seq)`, so a device reads its inbox in send order. Messages stay until
//! a sync token acknowledges them (the client's next request carries it), so a lost response
//! loses nothing; a sync hands out at most `limit` at a time and its token then says how far it
//! got (`_t` in `/sync` tokens).

use ruma::{DeviceId, OwnedUserId, UserId, to_device::DeviceIdOrAllDevices};
use serde_json::{Value, json};

use super::ToDeviceBatch;
use crate::{
    error::{Error, Result},
    server::Server,
    storage::{
        Batch,
        keys::{Key, u64_from},
    },
};

/// One `(user, device-or-*, content)` of a send.
pub type Message<'a> = (&'a UserId, &'a DeviceIdOrAllDevices, &'a str);

fn inbox(user: &UserId, device: &DeviceId) -> Vec<u8> {
    Key::new().s(user.as_str()).s(device.as_str()).prefix()
}

/// Queues `content` of `event_type` for each recipient device; a repeated `txn_id` of the same
/// device is a no-op. Users of other servers are skipped (federation comes later).
pub fn send(
    server: &Server,
    sender: &UserId,
    sender_device: &DeviceId,
    event_type: &str,
    txn_id: &str,
    messages: &[Message<'_>],
) -> Result<()> {
    let maps = &server.maps;
    let mut contents = Vec::with_capacity(messages.len());
    for (_, _, raw) in messages {
        match serde_json::from_str::<Value>(raw) {
            Ok(content @ Value::Object(_)) => contents.push(content),
            _ => return Err(Error::bad_json("Each message must be a JSON object")),
        }
    }
    let txn_key = Key::new()
        .s(sender.as_str())
        .s(sender_device.as_str())
        .s(txn_id)
        .build();
    let _guard = super::lock(&[sender.as_str(), sender_device.as_str(), "to_device"]);
    if maps.todevice_txns.contains(&txn_key)? {
        return Ok(());
    }
    let mut batch = server.db.batch();
    let pending = server.stream.next(maps, &mut batch);
    let count = pending.count();
    let mut seq = 0u64;
    let mut woken: Vec<OwnedUserId> = Vec::new();
    let mut remote = Vec::new();
    for ((user, target, _), content) in messages.iter().zip(contents) {
        if !server.is_local(user.server_name()) {
            // Users of other servers get it through their server (sent after the commit).
            if server.is_local(sender.server_name()) {
                let device = match target {
                    DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
                    DeviceIdOrAllDevices::DeviceId(device) => device.to_string(),
                };
                remote.push(((*user).to_owned(), device, content));
            }
            continue;
        }
        let devices = match target {
            DeviceIdOrAllDevices::AllDevices => server
                .users
                .devices(maps, user)?
                .into_iter()
                .map(|d| d.device_id)
                .collect(),
            DeviceIdOrAllDevices::DeviceId(device) => {
                if server.users.device(maps, user, device)?.is_some() {
                    vec![device.clone()]
                } else {
                    Vec::new()
                }
            }
        };
        let event = json!({ "type": event_type, "sender": sender, "content": content });
        let bytes = serde_json::to_vec(&event)?;
        for device in devices {
            let mut key = inbox(user, &device);
            key.extend_from_slice(&count.to_be_bytes());
            key.push(crate::storage::keys::SEP);
            key.extend_from_slice(&seq.to_be_bytes());
            seq += 1;
            batch.put(&maps.todevice_messages, key, &bytes);
        }
        if !woken.iter().any(|u| u == *user) {
            woken.push((*user).to_owned());
        }
    }
    batch.put(&maps.todevice_txns, txn_key, count.to_be_bytes());
    server.db.commit(batch)?;
    pending.finish(woken);
    if !remote.is_empty() {
        // The message id is unique per sender: device and transaction id.
        let message_id = format!("{sender_device}:{txn_id}");
        crate::federation::e2ee::send_to_device(server, sender, event_type, &message_id, &remote)?;
    }
    Ok(())
}

/// Deletes the device's messages up to `acknowledged`, then returns up to `limit` of those after
/// it, up to position `to`. Messages of one position (one send) are never split between
/// batches, as the next token acknowledges whole positions.
pub fn deliver(
    server: &Server,
    user: &UserId,
    device: &DeviceId,
    acknowledged: u64,
    to: u64,
    limit: usize,
) -> Result<ToDeviceBatch> {
    let maps = &server.maps;
    let prefix = inbox(user, device);
    let plen = prefix.len();
    let count_of = |key: &[u8]| key.get(plen..plen + 8).and_then(u64_from);
    // A token cannot acknowledge what is not visible yet.
    let acknowledged = acknowledged.min(to);
    let acked_key = Key::new().s(user.as_str()).s(device.as_str()).build();
    let deleted = maps
        .todevice_acked
        .get(&acked_key)?
        .as_deref()
        .and_then(u64_from)
        .unwrap_or(0);
    if acknowledged > deleted {
        let mut batch = server.db.batch();
        let mut from = prefix.clone();
        from.extend_from_slice(&(deleted + 1).to_be_bytes());
        for (key, _) in maps.todevice_messages.scan_from(prefix.clone(), from, true) {
            if count_of(&key).is_none_or(|count| count > acknowledged) {
                break;
            }
            batch.delete(&maps.todevice_messages, key);
        }
        // Written only when something was deleted: most syncs have nothing to acknowledge.
        if !batch.is_empty() {
            batch.put(&maps.todevice_acked, &acked_key, acknowledged.to_be_bytes());
            server.db.commit(batch)?;
        }
    }
    let mut from = prefix.clone();
    from.extend_from_slice(&(acknowledged.max(deleted) + 1).to_be_bytes());
    let mut out = ToDeviceBatch::default();
    for (key, value) in maps.todevice_messages.scan_from(prefix, from, true) {
        let Some(count) = count_of(&key) else {
            continue;
        };
        if count > to {
            break;
        }
        if out.events.len() >= limit.max(1) && out.last != Some(count) {
            out.more = true;
            break;
        }
        out.events.push(serde_json::from_slice(&value)?);
        out.last = Some(count);
    }
    Ok(out)
}

/// Deletes a device's inbox and transaction ids (part of the device's removal).
pub(super) fn delete_device(
    server: &Server,
    batch: &mut Batch,
    user: &UserId,
    device: &DeviceId,
) -> Result<()> {
    let maps = &server.maps;
    let acked_key = Key::new().s(user.as_str()).s(device.as_str()).build();
    let deleted = maps
        .todevice_acked
        .get(&acked_key)?
        .as_deref()
        .and_then(u64_from)
        .unwrap_or(0);
    let prefix = inbox(user, device);
    let mut from = prefix.clone();
    from.extend_from_slice(&(deleted + 1).to_be_bytes());
    for (key, _) in maps.todevice_messages.scan_from(prefix.clone(), from, true) {
        batch.delete(&maps.todevice_messages, key);
    }
    batch.delete(&maps.todevice_acked, acked_key);
    for (key, _) in maps.todevice_txns.scan_prefix(prefix) {
        batch.delete(&maps.todevice_txns, key);
    }
    Ok(())
}
