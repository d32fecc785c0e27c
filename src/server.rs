//! The server context handed to every handler: configuration, storage and services.
//!
//! Tenancy is a value: nothing here is a global, so several `Server`s could live in one process.

use std::sync::Arc;

use ruma::{OwnedServerName, signatures::Ed25519KeyPair};

use crate::{
    config::Config,
    error::{Error, Result},
    ratelimit::RateLimiter,
    rooms::Rooms,
    storage::{Db, Maps},
    sync::stream::Stream,
    users::{Users, uiaa::UiaaSessions},
};

pub struct Server {
    pub config: Config,
    pub db: Arc<Db>,
    pub maps: Maps,
    pub stream: Arc<Stream>,
    pub signing_key: Ed25519KeyPair,
    pub rooms: Rooms,
    pub users: Users,
    pub uiaa: UiaaSessions,
    pub ratelimit: RateLimiter,
    pub typing: crate::sync::typing::Typing,
    pub media: crate::media::Media,
    pub push: crate::push::Push,
    pub presence: crate::users::presence::PresenceTracker,
    /// Sliding sync connections and what each was sent.
    pub sliding: crate::sync::sliding::Connections,
    pub search: crate::search::Search,
    pub federation: crate::federation::Federation,
    /// Delayed events (MSC4140) and their timer.
    pub delayed: crate::rooms::delayed::DelayedEvents,
    /// The built-in SFU for meetings.
    pub rtc: crate::rtc::Rtc,
    pub started_at: std::time::Instant,
    /// Set once on SIGTERM/SIGINT; long-polls return when it flips.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl Server {
    pub fn open(config: Config) -> Result<Arc<Self>, String> {
        let (db, maps) = Db::open(&config.database_path, &config.storage)?;
        let signing_key = load_or_create_signing_key(&db, &maps).map_err(|e| e.to_string())?;
        let stream = Stream::new(&maps).map_err(|e| e.to_string())?;
        let rooms = Rooms::new(&maps, &config).map_err(|e| e.to_string())?;
        let ratelimit = RateLimiter::new(&config.ratelimit);
        let media = crate::media::Media::open(&config.media)?;
        let search = crate::search::Search::open(&config)?;
        let federation = crate::federation::Federation::new(&config)?;
        let rtc = crate::rtc::Rtc::new(&config.rtc);
        Ok(Arc::new(Self {
            config,
            db,
            maps,
            stream,
            signing_key,
            rooms,
            users: Users::new(),
            uiaa: UiaaSessions::default(),
            ratelimit,
            typing: Default::default(),
            media,
            push: Default::default(),
            presence: Default::default(),
            sliding: Default::default(),
            search,
            federation,
            rtc,
            delayed: Default::default(),
            started_at: std::time::Instant::now(),
            shutdown: tokio::sync::watch::Sender::new(false),
        }))
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.config.server_name
    }

    /// Whether an id (user, room alias ...) belongs to this server.
    pub fn is_local(&self, server: &ruma::ServerName) -> bool {
        server == self.config.server_name
    }
}

/// The server's ed25519 signing key: generated on first start and kept in the database.
fn load_or_create_signing_key(db: &Db, maps: &Maps) -> Result<Ed25519KeyPair> {
    let stored = maps.global.get(b"signing_key")?;
    let version = maps
        .global
        .get(b"signing_key_version")?
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default();
    let (der, version) = match (stored, version) {
        (Some(der), version) if !version.is_empty() => (der, version),
        _ => {
            let der = Ed25519KeyPair::generate();
            let version: String = rand_alnum(6);
            let mut batch = db.batch();
            batch.put(&maps.global, b"signing_key", &der[..]);
            batch.put(&maps.global, b"signing_key_version", version.as_bytes());
            db.commit(batch)?;
            (der.to_vec(), version)
        }
    };
    Ed25519KeyPair::from_der(&der, version)
        .map_err(|e| Error::internal(format_args!("signing key: {e}")))
}

/// Keys this server signed with before, published as `old_verify_keys` so signatures made
/// with them can still be checked.
pub fn old_signing_keys(maps: &Maps) -> Result<Vec<sparks_federation::keys::OldKey>> {
    let Some(raw) = maps.global.get(b"old_signing_keys")? else {
        return Ok(Vec::new());
    };
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&raw)?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            Some(sparks_federation::keys::OldKey {
                key_id: e["key_id"].as_str()?.to_owned(),
                key: e["key"].as_str()?.to_owned(),
                expired_ts: e["expired_ts"].as_u64()?,
            })
        })
        .collect())
}

/// Replaces the signing key (with the server stopped: the database is opened exclusively).
/// The old key moves to `old_verify_keys`, expired now. Returns the new key's id.
pub fn rotate_signing_key(config: &Config) -> Result<String, String> {
    let (db, maps) = Db::open(&config.database_path, &config.storage)?;
    let current = load_or_create_signing_key(&db, &maps).map_err(|e| e.to_string())?;
    let mut old: Vec<serde_json::Value> = match maps.global.get(b"old_signing_keys") {
        Ok(Some(raw)) => serde_json::from_slice(&raw).map_err(|e| e.to_string())?,
        Ok(None) => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    let public =
        ruma::serde::Base64::<ruma::serde::base64::Standard>::new(current.public_key().to_vec());
    old.push(serde_json::json!({
        "key_id": format!("ed25519:{}", current.version()),
        "key": public.encode(),
        "expired_ts": crate::users::now_ms(),
    }));
    let der = Ed25519KeyPair::generate();
    let version = rand_alnum(6);
    let mut batch = db.batch();
    batch.put(&maps.global, b"signing_key", &der[..]);
    batch.put(&maps.global, b"signing_key_version", version.as_bytes());
    batch.put(
        &maps.global,
        b"old_signing_keys",
        serde_json::to_vec(&old).map_err(|e| e.to_string())?,
    );
    db.commit(batch).map_err(|e| e.to_string())?;
    Ok(format!("ed25519:{version}"))
}

/// Random `[A-Za-z0-9]` string (tokens, device ids, session ids).
pub fn rand_alnum(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
