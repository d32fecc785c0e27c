//! Media: uploads, downloads, thumbnails, URL previews (issue 3).
//!
//! - [`store`]: the bytes, content-addressed on disk under `[media] path`.
//! - metadata in the `media` column family (`mediaid_meta`, `mediaid_pending`, ...; see
//!   `storage/maps.rs`), keyed by `(server_name, media_id)`.
//! - [`upload`]: direct and asynchronous (`create` then `PUT`) uploads, and finding media for a
//!   download, waiting for content that is announced but not uploaded yet.
//! - [`thumbnail`]: decoding, crop/scale, encoding, cached per size and method.
//! - [`preview`]: URL previews (OpenGraph) behind an SSRF guard ([`crate::cidr`]).
//! - [`headers`]: content type, disposition and security headers of served media.
//!
//! Only local media exists for now: media of other servers needs federation.

pub mod headers;
mod html;
pub mod preview;
pub mod store;
pub mod thumbnail;
pub mod upload;

use std::collections::HashSet;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use self::store::{Store, Stored};
use crate::{config::MediaConfig, storage::keys::Key};

pub struct Media {
    pub config: MediaConfig,
    store: Store,
    /// Raised after every completed upload; downloads waiting for pending media watch it.
    uploads: tokio::sync::watch::Sender<u64>,
    /// Media ids whose asynchronous upload is being received (a second `PUT` gets 409).
    in_progress: Mutex<HashSet<String>>,
    thumbnailer: thumbnail::Thumbnailer,
    previewer: preview::Previewer,
}

/// An uploaded content (`mediaid_meta`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaMeta {
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub uploader: String,
    pub created_ts: u64,
}

impl MediaMeta {
    pub fn stored(&self) -> Stored {
        Stored {
            sha256: self.sha256.clone(),
            size: self.size,
        }
    }
}

/// The key of a media id in the `mediaid_*` maps.
pub fn media_key(server_name: &str, media_id: &str) -> Vec<u8> {
    Key::new().s(server_name).s(media_id).build()
}

/// Whether a media id is well-formed: the spec allows `A-Za-z0-9_-` only, which also rules
/// out path traversal.
pub fn valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= 255
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Media {
    /// Prepares the service. Nothing is created on disk until the first upload.
    pub fn open(config: &MediaConfig) -> Result<Self, String> {
        let filter = crate::cidr::IpFilter::new(
            &config.url_preview_ip_range_denylist,
            &config.url_preview_ip_range_allowlist,
        )
        .map_err(|e| format!("media: {e}"))?;
        let store = Store::new(config.path.clone());
        store.clean_tmp();
        Ok(Self {
            config: config.clone(),
            store,
            uploads: tokio::sync::watch::Sender::new(0),
            in_progress: Mutex::new(HashSet::new()),
            thumbnailer: thumbnail::Thumbnailer::new(),
            previewer: preview::Previewer::new(filter),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}
