//! Media: uploads, downloads, thumbnails, URL previews (issue 3).

use crate::config::MediaConfig;

pub struct Media {
    pub config: MediaConfig,
}

impl Media {
    pub fn open(config: &MediaConfig) -> Result<Self, String> {
        Ok(Self {
            config: config.clone(),
        })
    }
}
