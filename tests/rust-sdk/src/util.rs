//! Shared helpers: clients, registration, syncing, raw HTTP, waiting for decryption.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use matrix_sdk::{
    Client,
    config::SyncSettings,
    deserialized_responses::{TimelineEvent, TimelineEventKind},
    reqwest::{Method, Url},
    ruma::{
        EventId, OwnedUserId, RoomId,
        api::client::{account::register, uiaa},
    },
    sliding_sync::VersionBuilder,
};
use serde_json::Value;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Ctx {
    pub hs: Url,
    /// Upper bound for one wait-for-condition loop.
    pub wait: Duration,
}

/// A logged-in user with its own client (own in-memory state and crypto store).
pub struct User {
    pub client: Client,
    pub user_id: OwnedUserId,
    pub localpart: String,
}

pub fn rand_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s.truncate(n);
    s
}

/// A fresh client with in-memory stores. Sliding sync is set to native (MSC4186) explicitly;
/// whether the server *advertises* it is checked separately (see `room_list`).
pub async fn new_client(ctx: &Ctx) -> Result<Client> {
    Client::builder()
        .homeserver_url(ctx.hs.as_str())
        .sliding_sync_version_builder(VersionBuilder::Native)
        .build()
        .await
        .context("building the SDK client")
}

/// Registers `<prefix><random>` with m.login.dummy through the SDK and returns the logged-in
/// user (the SDK sets the session, which also creates its Olm machine).
pub async fn register(ctx: &Ctx, prefix: &str, device_name: &str) -> Result<User> {
    let client = new_client(ctx).await?;
    let localpart = format!("{prefix}{}", rand_hex(8));
    let mut request = register::v3::Request::new();
    request.username = Some(localpart.clone());
    request.password = Some(PASSWORD.to_owned());
    request.initial_device_display_name = Some(device_name.to_owned());
    let response = match client.matrix_auth().register(request.clone()).await {
        Ok(r) => r,
        Err(e) => {
            let Some(info) = e.as_uiaa_response() else {
                return Err(anyhow!(e)).context(format!("POST /register for {localpart}"));
            };
            let mut dummy = uiaa::Dummy::new();
            dummy.session = info.session.clone();
            request.auth = Some(uiaa::AuthData::Dummy(dummy));
            client
                .matrix_auth()
                .register(request)
                .await
                .with_context(|| format!("POST /register (m.login.dummy) for {localpart}"))?
        }
    };
    if client.user_id().is_none() {
        bail!("registration of {localpart} returned no access token / session");
    }
    Ok(User { client, user_id: response.user_id, localpart })
}

/// Logs `user_id` in as a new device on a fresh client.
pub async fn login(ctx: &Ctx, user_id: &OwnedUserId, device_name: &str) -> Result<Client> {
    let client = new_client(ctx).await?;
    client
        .matrix_auth()
        .login_username(user_id.as_str(), PASSWORD)
        .initial_device_display_name(device_name)
        .send()
        .await
        .with_context(|| format!("POST /login for {user_id}"))?;
    Ok(client)
}

/// One `/sync` (v3) continuing from the client's last token; the SDK also sends its pending
/// E2EE requests (keys upload/query/claim, to-device) before and after.
pub async fn sync(client: &Client, timeout: Duration) -> Result<()> {
    client
        .sync_once(SyncSettings::default().timeout(timeout))
        .await
        .with_context(|| format!("GET /sync for {}", who(client)))?;
    Ok(())
}

pub fn who(client: &Client) -> String {
    match (client.user_id(), client.device_id()) {
        (Some(u), Some(d)) => format!("{u} ({d})"),
        _ => "<logged out client>".to_owned(),
    }
}

/// Syncs `client` until `check` returns `Ok(Some(value))`; `Ok(None)` means "not yet". The last
/// "not yet" reason (from `Err` of the inner check) is reported on timeout.
pub async fn sync_until<T, F, Fut>(ctx: &Ctx, client: &Client, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    let deadline = Instant::now() + ctx.wait;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {:?} waiting for {what}; last state: {last}", ctx.wait);
        }
        sync(client, Duration::from_millis(1000)).await?;
    }
}

/// Text body of a (decrypted) timeline event.
pub fn body_of(event: &TimelineEvent) -> Option<String> {
    let content: Value = event.raw().get_field("content").ok().flatten()?;
    content.get("body").and_then(Value::as_str).map(str::to_owned)
}

/// Syncs `client` until the event `event_id` in `room_id` is fetched and decrypted by the
/// client's own Olm machine, then checks its plaintext body.
pub async fn wait_decrypted(
    ctx: &Ctx,
    client: &Client,
    room_id: &RoomId,
    event_id: &EventId,
    expected_body: &str,
) -> Result<()> {
    let what = format!("{} to decrypt {event_id}", who(client));
    let body = sync_until(ctx, client, &what, || async {
        let room = client.get_room(room_id).ok_or_else(|| format!("room {room_id} not known yet"))?;
        let event = room.event(event_id, None).await.map_err(|e| format!("GET /event: {e}"))?;
        match &event.kind {
            TimelineEventKind::Decrypted(_) => {
                body_of(&event).ok_or_else(|| "decrypted event has no content.body".to_owned())
            }
            TimelineEventKind::UnableToDecrypt { utd_info, .. } => {
                Err(format!("unable to decrypt: {:?}", utd_info.reason))
            }
            TimelineEventKind::PlainText { event } => {
                // Not an error to wait on: it will never become encrypted.
                Ok(format!("__PLAINTEXT__{}", event.json().get()))
            }
        }
    })
    .await?;
    if let Some(raw) = body.strip_prefix("__PLAINTEXT__") {
        bail!("{event_id} reached {} as a plaintext event (expected m.room.encrypted): {raw}", who(client));
    }
    if body != expected_body {
        bail!("{} decrypted {event_id} to body {body:?}, expected {expected_body:?}", who(client));
    }
    Ok(())
}

/// Percent-encodes one path segment.
pub fn enc(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One raw client-server request (bypassing the SDK); returns (status, JSON body).
pub async fn raw(
    ctx: &Ctx,
    method: Method,
    path_and_query: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let url = format!("{}{}", ctx.hs.as_str().trim_end_matches('/'), path_and_query);
    let http = matrix_sdk::reqwest::Client::new();
    let mut req = http.request(method.clone(), &url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(serde_json::to_vec(&b)?);
    }
    let resp = req.send().await.with_context(|| format!("{method} {path_and_query}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?;
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    Ok((status, json))
}

/// Logs in with raw HTTP (no SDK, no crypto): returns (access token, device id).
pub async fn raw_login(ctx: &Ctx, localpart: &str, device_id: &str) -> Result<(String, String)> {
    let (status, body) = raw(
        ctx,
        Method::POST,
        "/_matrix/client/v3/login",
        None,
        Some(serde_json::json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": localpart },
            "password": PASSWORD,
            "device_id": device_id,
            "initial_device_display_name": device_id,
        })),
    )
    .await?;
    if status != 200 {
        bail!("raw POST /login for {localpart} -> {status}: {body}");
    }
    let token = body["access_token"].as_str().context("login: no access_token")?.to_owned();
    let device = body["device_id"].as_str().context("login: no device_id")?.to_owned();
    Ok((token, device))
}
