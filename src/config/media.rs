use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[media]`: uploaded files, thumbnails and URL previews.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Directory for media files (content-addressed: one file per distinct content, named by
    /// its SHA-256). Created on the first upload.
    pub path: PathBuf,
    /// Largest upload accepted, in bytes (advertised as `m.upload.size`). Larger uploads get
    /// `413 M_TOO_LARGE`, from `Content-Length` alone when the client sends it.
    pub max_upload_size: u64,
    /// How long an `mxc://` URI from `POST /_matrix/media/v1/create` waits for its content
    /// (`unused_expires_at`), in milliseconds. The spec recommends 24 hours.
    pub pending_upload_lifetime_ms: u64,
    /// Created but not yet uploaded (and not expired) URIs one user may hold; one more gets
    /// `429 M_LIMIT_EXCEEDED`.
    pub max_pending_uploads: usize,
    /// Longest a download or thumbnail request waits for content that is not uploaded yet
    /// (the client's `timeout_ms` is capped to this), in milliseconds.
    pub max_download_wait_ms: u64,
    /// Largest image, in pixels (width × height), decoded for a thumbnail. Larger images (or
    /// decompression bombs claiming to be) get `413 M_TOO_LARGE` without being decoded.
    pub max_image_pixels: u64,
    /// Whether `GET /_matrix/client/v1/media/preview_url` fetches pages. Off: `403 M_FORBIDDEN`.
    pub url_preview_enabled: bool,
    /// Address ranges (CIDR, e.g. `"203.0.113.0/24"`) URL previews never connect to, in
    /// addition to the built-in ones: loopback, private (RFC 1918), link-local, CGNAT,
    /// multicast, unspecified, reserved, IPv6 ULA, link-local, NAT64 and 6to4.
    pub url_preview_ip_range_denylist: Vec<String>,
    /// Address ranges URL previews may connect to even when a denylist (built-in or the one
    /// above) covers them, e.g. `["10.1.2.0/24"]` for an intranet.
    pub url_preview_ip_range_allowlist: Vec<String>,
    /// Largest page (or image) fetched for a preview, in bytes; larger: `502 M_TOO_LARGE`.
    pub url_preview_max_bytes: u64,
    /// Time limit for fetching a page for a preview (all redirects included), in ms.
    pub url_preview_timeout_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./sparks-media"),
            max_upload_size: 50 * 1024 * 1024,
            pending_upload_lifetime_ms: 24 * 60 * 60 * 1000,
            max_pending_uploads: 16,
            max_download_wait_ms: 60_000,
            max_image_pixels: 32_000_000,
            url_preview_enabled: true,
            url_preview_ip_range_denylist: Vec::new(),
            url_preview_ip_range_allowlist: Vec::new(),
            url_preview_max_bytes: 10 * 1024 * 1024,
            url_preview_timeout_ms: 10_000,
        }
    }
}

impl MediaConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_upload_size == 0 {
            return Err(ConfigError(
                "media.max_upload_size: must be greater than 0".into(),
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError("media.path: must not be empty".into()));
        }
        if self.pending_upload_lifetime_ms < 1000 {
            return Err(ConfigError(
                "media.pending_upload_lifetime_ms: must be at least 1000".into(),
            ));
        }
        if self.max_image_pixels == 0 {
            return Err(ConfigError(
                "media.max_image_pixels: must be greater than 0".into(),
            ));
        }
        if self.url_preview_max_bytes < 1024 {
            return Err(ConfigError(
                "media.url_preview_max_bytes: must be at least 1024".into(),
            ));
        }
        if self.url_preview_timeout_ms < 100 {
            return Err(ConfigError(
                "media.url_preview_timeout_ms: must be at least 100".into(),
            ));
        }
        for (key, list) in [
            (
                "url_preview_ip_range_denylist",
                &self.url_preview_ip_range_denylist,
            ),
            (
                "url_preview_ip_range_allowlist",
                &self.url_preview_ip_range_allowlist,
            ),
        ] {
            for range in list {
                range
                    .parse::<crate::cidr::IpRange>()
                    .map_err(|e| ConfigError(format!("media.{key}: {e}")))?;
            }
        }
        Ok(())
    }
}
