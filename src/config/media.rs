use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[media]`: uploaded files, thumbnails and URL previews.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Directory for media files (content-addressed). Created if missing.
    pub path: PathBuf,
    /// Largest upload accepted, in bytes (advertised as `m.upload.size`).
    pub max_upload_size: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./sparks-media"),
            max_upload_size: 50 * 1024 * 1024,
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
        Ok(())
    }
}
