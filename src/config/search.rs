use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[search]`: the full-text index behind `/search`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Directory of the search index. Empty: `<database_path>-search`.
    pub path: PathBuf,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
        }
    }
}

impl SearchConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
