//! (b) matrix-sdk-ui's `SyncService` / `RoomListService` over simplified sliding sync
//! (MSC4186): the room list shows the right rooms, order, names, latest events and counts.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use matrix_sdk::{
    Room,
    latest_events::LatestEventValue,
    ruma::{
        OwnedEventId, OwnedRoomId,
        api::client::{receipt::create_receipt::v3::ReceiptType, room::create_room},
        events::{receipt::ReceiptThread, room::message::RoomMessageEventContent},
    },
    sliding_sync::Version,
};
use matrix_sdk_ui::{
    eyeball_im::Vector,
    room_list_service::{RoomListItem, RoomListLoadingState, filters::new_filter_non_left},
    sync_service::{State as SyncState, SyncService},
};

use crate::util::{Ctx, body_of, login, rand_hex, register};

#[derive(Clone, Debug)]
struct Expect {
    room_id: OwnedRoomId,
    name: String,
    latest: String,
    notifications: u64,
    is_dm: bool,
}

async fn send(room: &Room, text: &str) -> Result<OwnedEventId> {
    let r = room
        .send(RoomMessageEventContent::text_plain(text))
        .await
        .with_context(|| format!("sending {text:?} to {}", room.room_id()))?;
    // Distinct origin_server_ts values keep the expected order unambiguous.
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(r.response.event_id)
}

fn latest_body(value: &LatestEventValue) -> String {
    match value {
        LatestEventValue::None => "<none>".to_owned(),
        LatestEventValue::Remote(event) => {
            body_of(event).unwrap_or_else(|| format!("<remote event without body: {}>", event.raw().json().get()))
        }
        LatestEventValue::RemoteInvite { .. } => "<invite>".to_owned(),
        other => format!("<local: {other:?}>"),
    }
}

/// Describes the current list against the expectation; Ok(()) when it matches.
async fn check(items: &Vector<RoomListItem>, expected: &[Expect], labels: &HashMap<OwnedRoomId, String>) -> std::result::Result<(), String> {
    let label = |id: &OwnedRoomId| labels.get(id).cloned().unwrap_or_else(|| id.to_string());
    let got: Vec<String> = items.iter().map(|i| label(&i.room_id().to_owned())).collect();
    let want: Vec<String> = expected.iter().map(|e| label(&e.room_id)).collect();
    if got != want {
        return Err(format!("room list order {got:?}, expected {want:?}"));
    }
    let mut problems = Vec::new();
    for (item, exp) in items.iter().zip(expected) {
        let l = label(&exp.room_id);
        let name = item.display_name().await.map(|n| n.to_string()).unwrap_or_else(|e| format!("<error {e}>"));
        if name != exp.name {
            problems.push(format!("{l}: display name {name:?}, expected {:?}", exp.name));
        }
        let latest = latest_body(&item.latest_event());
        if latest != exp.latest {
            problems.push(format!("{l}: latest event {latest:?}, expected {:?}", exp.latest));
        }
        // Element X shows the SDK's client-side counts (computed from read receipts and the
        // events it received). The server's notification_count is informational: Synapse
        // always sends 0 over sliding sync; a non-zero value must be right.
        let (msgs, notifs) = (item.num_unread_messages(), item.num_unread_notifications());
        if msgs != exp.notifications || notifs != exp.notifications {
            problems.push(format!(
                "{l}: client-side unread messages {msgs} / notifications {notifs}, expected {}",
                exp.notifications
            ));
        }
        let server = item.unread_notification_counts();
        if server.notification_count != 0 && server.notification_count != exp.notifications {
            problems.push(format!(
                "{l}: server notification_count {}, expected {} (or 0 as Synapse sends)",
                server.notification_count, exp.notifications
            ));
        }
        let is_dm = item.is_direct().await.unwrap_or(false);
        if is_dm != exp.is_dm {
            problems.push(format!("{l}: is_direct {is_dm}, expected {}", exp.is_dm));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

fn describe(items: &Vector<RoomListItem>, labels: &HashMap<OwnedRoomId, String>) -> String {
    items
        .iter()
        .map(|i| {
            let id = i.room_id().to_owned();
            format!(
                "{}[name={:?} latest={:?} notif={} unread_msgs={} recency={:?}]",
                labels.get(&id).cloned().unwrap_or_else(|| id.to_string()),
                i.cached_display_name().map(|n| n.to_string()),
                latest_body(&i.latest_event()),
                i.unread_notification_counts().notification_count,
                i.num_unread_messages(),
                i.recency_stamp()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn room_list(ctx: &Ctx) -> Result<()> {
    // ---- setup: carol (the viewer) and dave (the other user).
    let carol = register(ctx, "carol", "carol setup").await?;
    let dave = register(ctx, "dave", "dave sdk").await?;
    let dave_name = format!("Dave {}", rand_hex(4));
    dave.client.account().set_display_name(Some(&dave_name)).await.context("dave: set displayname")?;
    carol.client.account().set_display_name(Some("Carol Viewer")).await.context("carol: set displayname")?;
    let tag = rand_hex(4);
    let named = |name: &str, invite: bool| {
        let mut r = create_room::v3::Request::new();
        r.name = Some(name.to_owned());
        if invite {
            r.invite = vec![carol.user_id.clone()];
        }
        r
    };

    // Gamma (oldest activity): dave's room, carol joins and reads dave's message.
    let gamma = dave.client.create_room(named("Gamma", true)).await.context("dave: create Gamma")?;
    let gamma_id = gamma.room_id().to_owned();
    let carol_gamma = carol.client.join_room_by_id(&gamma_id).await.context("carol: join Gamma")?;
    let gamma_msg = format!("gamma: hello {tag}");
    let gamma_ev = send(&gamma, &gamma_msg).await?;
    carol_gamma
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, gamma_ev)
        .await
        .context("carol: read receipt in Gamma")?;

    // Beta: carol's own room with her own message (nothing unread).
    let beta = carol.client.create_room(named("Beta", false)).await.context("carol: create Beta")?;
    let beta_id = beta.room_id().to_owned();
    let beta_msg = format!("beta: my own note {tag}");
    send(&beta, &beta_msg).await?;

    // DM with dave (unnamed, is_direct, m.direct set by the SDK): one unread message.
    let mut dm_req = create_room::v3::Request::new();
    dm_req.invite = vec![dave.user_id.clone()];
    dm_req.is_direct = true;
    dm_req.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
    let dm = carol.client.create_room(dm_req).await.context("carol: create DM")?;
    let dm_id = dm.room_id().to_owned();
    let dave_dm = dave.client.join_room_by_id(&dm_id).await.context("dave: join DM")?;
    let dm_msg = format!("dm: hi carol {tag}");
    send(&dave_dm, &dm_msg).await?;

    // Alpha (newest activity): carol's room, dave joins and sends two messages.
    let mut alpha_req = create_room::v3::Request::new();
    alpha_req.name = Some("Alpha".to_owned());
    alpha_req.invite = vec![dave.user_id.clone()];
    let alpha = carol.client.create_room(alpha_req).await.context("carol: create Alpha")?;
    let alpha_id = alpha.room_id().to_owned();
    let dave_alpha = dave.client.join_room_by_id(&alpha_id).await.context("dave: join Alpha")?;
    send(&dave_alpha, &format!("alpha: one {tag}")).await?;
    let alpha_msg = format!("alpha: two {tag}");
    send(&dave_alpha, &alpha_msg).await?;

    let labels: HashMap<OwnedRoomId, String> = [
        (alpha_id.clone(), "Alpha".to_owned()),
        (beta_id.clone(), "Beta".to_owned()),
        (gamma_id.clone(), "Gamma".to_owned()),
        (dm_id.clone(), "DM".to_owned()),
    ]
    .into();
    let exp = |room_id: &OwnedRoomId, name: &str, latest: &str, notifications: u64, is_dm: bool| Expect {
        room_id: room_id.clone(),
        name: name.to_owned(),
        latest: latest.to_owned(),
        notifications,
        is_dm,
    };
    let mut expected = vec![
        exp(&alpha_id, "Alpha", &alpha_msg, 2, false),
        exp(&dm_id, &dave_name, &dm_msg, 1, true),
        exp(&beta_id, "Beta", &beta_msg, 0, false),
        exp(&gamma_id, "Gamma", &gamma_msg, 0, false),
    ];

    // ---- the viewer: a fresh login of carol, as Element X would start.
    let view = login(ctx, &carol.user_id, "carol element-x").await?;
    let mut problems = Vec::new();
    let versions = view.available_sliding_sync_versions().await;
    if !versions.iter().any(|v| matches!(v, Version::Native)) {
        problems.push(
            "GET /_matrix/client/versions does not advertise unstable_features[\"org.matrix.simplified_msc3575\"] = true: \
             Element X (SlidingSyncVersionBuilder::DiscoverNative) would refuse the server; this run forces native sliding sync"
                .to_owned(),
        );
    }

    let sync_service = SyncService::builder(view.clone()).build().await.context("building SyncService")?;
    let rls = sync_service.room_list_service();
    let all = rls.all_rooms().await.context("RoomListService::all_rooms")?;
    let mut loading = all.loading_state();
    let (stream, controller) = all.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(new_filter_non_left()));
    let mut stream = Box::pin(stream);
    sync_service.start().await;

    let state_err = |s: &SyncService| match s.state().get() {
        SyncState::Error(e) => Some(format!("SyncService entered Error: {e:#?}")),
        SyncState::Terminated => Some("SyncService terminated".to_owned()),
        _ => None,
    };

    // Loading state: NotLoaded -> Loaded.
    let deadline = Instant::now() + ctx.wait;
    loop {
        if let RoomListLoadingState::Loaded { maximum_number_of_rooms } = loading.get() {
            if maximum_number_of_rooms != Some(4) {
                bail!("room list loaded with maximum_number_of_rooms {maximum_number_of_rooms:?}, expected Some(4)");
            }
            break;
        }
        if let Some(e) = state_err(&sync_service) {
            bail!("{e}");
        }
        if Instant::now() >= deadline {
            bail!("room list never reached Loaded (state {:?})", loading.get());
        }
        let _ = tokio::time::timeout(Duration::from_millis(300), loading.next()).await;
    }

    let mut items: Vector<RoomListItem> = Vector::new();
    // Wait for the list to hold our four rooms in recency order (server bump_stamp order,
    // before any latest event is computed).
    let order: Vec<Expect> = expected.clone();
    wait_list(ctx, &sync_service, &mut stream, &mut items, &labels, "the 4 rooms in recency order", |items| {
        let got: Vec<_> = items.iter().map(|i| i.room_id().to_owned()).collect();
        let want: Vec<_> = order.iter().map(|e| e.room_id.clone()).collect();
        if got == want { Ok(()) } else { Err(format!("order {}", describe(items, &labels))) }
    })
    .await?;

    // Element X subscribes to the visible rooms, which also makes the SDK compute their
    // latest events.
    let ids: Vec<OwnedRoomId> = expected.iter().map(|e| e.room_id.clone()).collect();
    let id_refs: Vec<&matrix_sdk::ruma::RoomId> = ids.iter().map(|i| &**i).collect();
    rls.subscribe_to_rooms(&id_refs).await;

    wait_full(ctx, &sync_service, &mut stream, &mut items, &labels, &expected, "initial room list").await?;

    // ---- dave writes into the bottom room: it must move to the top with its new latest event.
    let moved_msg = format!("gamma: moved up {tag}");
    send(&gamma, &moved_msg).await?;
    let mut g = expected.pop().context("no gamma")?;
    g.latest = moved_msg;
    g.notifications = 1;
    expected.insert(0, g);
    wait_full(ctx, &sync_service, &mut stream, &mut items, &labels, &expected, "Gamma moved to the top after dave's message").await?;

    sync_service.stop().await;
    if !problems.is_empty() {
        bail!("entries, order, names, latest events and counts matched, but: {}", problems.join("; "));
    }
    Ok(())
}

type Diffs = Vec<matrix_sdk_ui::eyeball_im::VectorDiff<RoomListItem>>;

async fn wait_list<S, F>(
    ctx: &Ctx,
    sync_service: &SyncService,
    stream: &mut S,
    items: &mut Vector<RoomListItem>,
    labels: &HashMap<OwnedRoomId, String>,
    what: &str,
    mut check: F,
) -> Result<()>
where
    S: futures_util::Stream<Item = Diffs> + Unpin,
    F: FnMut(&Vector<RoomListItem>) -> std::result::Result<(), String>,
{
    let deadline = Instant::now() + ctx.wait;
    loop {
        let last = match check(items) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if let SyncState::Error(e) = sync_service.state().get() {
            bail!("SyncService entered Error while waiting for {what}: {e:#?}; list: {}", describe(items, labels));
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:?} waiting for {what}: {last}", ctx.wait);
        }
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Ok(Some(diffs)) => {
                for d in diffs {
                    d.apply(items);
                }
            }
            Ok(None) => bail!("room list stream ended while waiting for {what}"),
            Err(_) => {}
        }
    }
}

async fn wait_full<S>(
    ctx: &Ctx,
    sync_service: &SyncService,
    stream: &mut S,
    items: &mut Vector<RoomListItem>,
    labels: &HashMap<OwnedRoomId, String>,
    expected: &[Expect],
    what: &str,
) -> Result<()>
where
    S: futures_util::Stream<Item = Diffs> + Unpin,
{
    let deadline = Instant::now() + ctx.wait;
    loop {
        let last = match check(items, expected, labels).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if let SyncState::Error(e) = sync_service.state().get() {
            bail!("SyncService entered Error while waiting for {what}: {e:#?}; list: {}", describe(items, labels));
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:?} waiting for {what}: {last}; list: {}", ctx.wait, describe(items, labels));
        }
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Ok(Some(diffs)) => {
                for d in diffs {
                    d.apply(items);
                }
            }
            Ok(None) => bail!("room list stream ended while waiting for {what}"),
            Err(_) => {}
        }
    }
}
