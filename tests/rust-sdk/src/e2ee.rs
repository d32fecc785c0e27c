//! E2EE scenarios: two real SDK clients, each with its own Olm machine, exchange
//! Megolm-encrypted messages through the server.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::{
    Client, Room, RoomState,
    reqwest::Method,
    ruma::{
        OwnedDeviceId, OwnedEventId, OwnedRoomId, UserId,
        api::client::{room::create_room, uiaa},
        events::{
            InitialStateEvent, room::encryption::RoomEncryptionEventContent,
            room::message::RoomMessageEventContent,
        },
    },
};

use crate::util::{
    Ctx, PASSWORD, User, enc, rand_hex, raw, raw_login, register, sync, sync_until, who,
    wait_decrypted,
};

const MEGOLM: &str = "m.megolm.v1.aes-sha2";

/// Alice creates an encrypted room and invites Bob; Bob joins; both have synced the join.
async fn encrypted_room(ctx: &Ctx, alice: &User, bob: &User) -> Result<(OwnedRoomId, Room, Room)> {
    // First syncs upload each device's identity keys and one-time keys.
    for u in [alice, bob] {
        sync(&u.client, Duration::ZERO).await?;
        u.client.encryption().wait_for_e2ee_initialization_tasks().await;
    }
    let mut request = create_room::v3::Request::new();
    request.name = Some(format!("e2ee {}", rand_hex(4)));
    request.invite = vec![bob.user_id.clone()];
    request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
            .to_raw_any(),
    ];
    let room_a = alice.client.create_room(request).await.context("alice: createRoom")?;
    let room_id = room_a.room_id().to_owned();

    sync_until(ctx, &bob.client, "bob to see the invite", || async {
        match bob.client.get_room(&room_id).map(|r| r.state()) {
            Some(RoomState::Invited) | Some(RoomState::Joined) => Ok(()),
            other => Err(format!("room state {other:?}")),
        }
    })
    .await?;
    let room_b = bob.client.join_room_by_id(&room_id).await.context("bob: join")?;

    for (u, other) in [(alice, bob), (bob, alice)] {
        let what = format!("{} to see {} joined and the room encrypted", u.user_id, other.user_id);
        sync_until(ctx, &u.client, &what, || async {
            let room = u.client.get_room(&room_id).ok_or("room unknown")?;
            let member = room
                .get_member_no_sync(&other.user_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no member event")?;
            if member.membership().as_str() != "join" {
                return Err(format!("{} membership {}", other.user_id, member.membership()));
            }
            let encrypted = room.latest_encryption_state().await.map_err(|e| e.to_string())?;
            if !encrypted.is_encrypted() {
                return Err(format!("room encryption state {encrypted:?}"));
            }
            Ok(())
        })
        .await?;
    }
    Ok((room_id, room_a, room_b))
}

async fn send_text(room: &Room, sender: &Client, text: &str) -> Result<OwnedEventId> {
    let result = room
        .send(RoomMessageEventContent::text_plain(text))
        .await
        .with_context(|| format!("{} sending an encrypted message", who(sender)))?;
    ensure!(
        result.encryption_info.is_some(),
        "{}: the SDK sent {} unencrypted (it did not consider the room encrypted)",
        who(sender),
        result.response.event_id
    );
    Ok(result.response.event_id)
}

/// Raw `/messages`: the server must hold only `m.room.encrypted` Megolm events for these ids,
/// and none of the plaintexts anywhere in the response.
async fn check_server_holds_ciphertext(
    ctx: &Ctx,
    who_asks: &Client,
    room_id: &OwnedRoomId,
    events: &[(&OwnedEventId, &str)],
) -> Result<()> {
    let token = who_asks.access_token().context("no access token")?;
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(room_id.as_str()));
    let (status, body) = raw(ctx, Method::GET, &path, Some(&token), None).await?;
    ensure!(status == 200, "GET {path} -> {status}: {body}");
    let text = body.to_string();
    let chunk = body["chunk"].as_array().context("/messages: no chunk")?;
    for (event_id, plaintext) in events {
        ensure!(!text.contains(plaintext), "/messages response contains the plaintext {plaintext:?}");
        let event = chunk
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .with_context(|| format!("/messages has no event {event_id}"))?;
        ensure!(
            event["type"] == "m.room.encrypted",
            "server holds {event_id} as type {} (expected m.room.encrypted)",
            event["type"]
        );
        let content = &event["content"];
        ensure!(content["algorithm"] == MEGOLM, "{event_id} algorithm {}", content["algorithm"]);
        ensure!(
            content["ciphertext"].is_string() && content["session_id"].is_string(),
            "{event_id} content is not a Megolm payload: {content}"
        );
        ensure!(content.get("body").is_none(), "{event_id} content has a body: {content}");
    }
    Ok(())
}

/// (a) alice -> bob and bob -> alice, each decrypting with its own crypto.
pub async fn exchange(ctx: &Ctx) -> Result<()> {
    let alice = register(ctx, "alice", "alice sdk").await?;
    let bob = register(ctx, "bob", "bob sdk").await?;
    let (room_id, room_a, room_b) = encrypted_room(ctx, &alice, &bob).await?;

    let text1 = format!("hello bob, secret {}", rand_hex(8));
    let ev1 = send_text(&room_a, &alice.client, &text1).await?;
    wait_decrypted(ctx, &bob.client, &room_id, &ev1, &text1).await.context("bob decrypting alice's message")?;

    let text2 = format!("hi alice, secret reply {}", rand_hex(8));
    let ev2 = send_text(&room_b, &bob.client, &text2).await?;
    wait_decrypted(ctx, &alice.client, &room_id, &ev2, &text2)
        .await
        .context("alice decrypting bob's reply")?;

    check_server_holds_ciphertext(ctx, &alice.client, &room_id, &[(&ev1, &text1), (&ev2, &text2)]).await
}

/// Whether `client` (bob) currently knows `device` of `user` (not deleted).
async fn knows_device(client: &Client, user: &UserId, device: &OwnedDeviceId) -> Result<bool, String> {
    let devices =
        client.encryption().get_user_devices(user).await.map_err(|e| format!("get_user_devices: {e}"))?;
    Ok(devices.get(device).is_some_and(|d| !d.is_deleted()))
}

/// (a') a second device of alice, logged in later, receives the Megolm session of bob's next
/// message; deleting it (UIA password) reaches bob as a device-list change.
pub async fn second_device(ctx: &Ctx) -> Result<()> {
    let alice = register(ctx, "alice", "alice phone").await?;
    let bob = register(ctx, "bob", "bob sdk").await?;
    // Bob's raw observer device (no crypto): watches device_lists in plain /sync.
    let (observer_token, _) = raw_login(ctx, &bob.localpart, "OBSERVER").await?;
    let (room_id, room_a, room_b) = encrypted_room(ctx, &alice, &bob).await?;

    let text1 = format!("before the second device {}", rand_hex(6));
    let ev1 = send_text(&room_a, &alice.client, &text1).await?;
    wait_decrypted(ctx, &bob.client, &room_id, &ev1, &text1).await.context("bob decrypting alice's first message")?;

    // Alice logs in a second device.
    let alice2 = crate::util::login(ctx, &alice.user_id, "alice laptop").await?;
    let alice2_device = alice2.device_id().context("no device id")?.to_owned();
    sync(&alice2, Duration::ZERO).await?;
    alice2.encryption().wait_for_e2ee_initialization_tasks().await;

    // Bob must learn about it (device_lists.changed -> /keys/query) before he sends.
    let what = format!("bob to learn alice's new device {alice2_device} (device_lists.changed + /keys/query)");
    sync_until(ctx, &bob.client, &what, || async {
        if knows_device(&bob.client, &alice.user_id, &alice2_device).await? {
            Ok(())
        } else {
            let known: Vec<String> = bob
                .client
                .encryption()
                .get_user_devices(&alice.user_id)
                .await
                .map(|d| d.keys().map(|k| k.to_string()).collect())
                .unwrap_or_default();
            Err(format!("bob knows alice's devices {known:?}"))
        }
    })
    .await?;

    let text2 = format!("after the second device {}", rand_hex(6));
    let ev2 = send_text(&room_b, &bob.client, &text2).await?;
    wait_decrypted(ctx, &alice2, &room_id, &ev2, &text2)
        .await
        .context("alice's second device decrypting bob's new message")?;
    wait_decrypted(ctx, &alice.client, &room_id, &ev2, &text2)
        .await
        .context("alice's first device decrypting bob's new message")?;

    // Observer's position before the deletion.
    let (status, body) =
        raw(ctx, Method::GET, "/_matrix/client/v3/sync?timeout=0", Some(&observer_token), None).await?;
    ensure!(status == 200, "observer /sync -> {status}: {body}");
    let mut since = body["next_batch"].as_str().context("no next_batch")?.to_owned();

    // Alice (first device) deletes the second device with UIA (password).
    let devices = [alice2_device.clone()];
    match alice.client.delete_devices(&devices, None).await {
        Ok(_) => bail!("POST /delete_devices without auth succeeded (expected 401 with UIA flows)"),
        Err(e) => {
            let info = e.as_uiaa_response().with_context(|| {
                format!("POST /delete_devices without auth: expected a 401 UIA response, got {e}")
            })?;
            let mut password = uiaa::Password::new(
                uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(alice.user_id.to_string())),
                PASSWORD.to_owned(),
            );
            password.session = info.session.clone();
            alice
                .client
                .delete_devices(&devices, Some(uiaa::AuthData::Password(password)))
                .await
                .context("POST /delete_devices with m.login.password")?;
        }
    }
    let listed = alice.client.devices().await.context("GET /devices")?;
    ensure!(
        !listed.devices.iter().any(|d| d.device_id == alice2_device),
        "GET /devices still lists the deleted device {alice2_device}"
    );

    // Raw check: bob's observer sees alice in device_lists.changed.
    let deadline = std::time::Instant::now() + ctx.wait;
    let mut seen = Vec::new();
    loop {
        let path = format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(&since));
        let (status, body) = raw(ctx, Method::GET, &path, Some(&observer_token), None).await?;
        ensure!(status == 200, "observer /sync -> {status}: {body}");
        let changed: Vec<String> = body["device_lists"]["changed"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if changed.iter().any(|u| u == alice.user_id.as_str()) {
            break;
        }
        seen.extend(changed);
        since = body["next_batch"].as_str().context("no next_batch")?.to_owned();
        if std::time::Instant::now() >= deadline {
            bail!(
                "after alice deleted {alice2_device}, bob's raw /sync never listed {} in device_lists.changed (saw {seen:?})",
                alice.user_id
            );
        }
    }

    // SDK check: bob's crypto re-queries alice's keys and drops the deleted device.
    let what = format!("bob's SDK to drop alice's deleted device {alice2_device}");
    sync_until(ctx, &bob.client, &what, || async {
        if knows_device(&bob.client, &alice.user_id, &alice2_device).await? {
            Err("device still known (not deleted) in bob's crypto store".to_owned())
        } else {
            Ok(())
        }
    })
    .await?;

    check_server_holds_ciphertext(ctx, &bob.client, &room_id, &[(&ev1, &text1), (&ev2, &text2)]).await?;
    Ok(())
}
