use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[search]`: the full-text index behind `/search` (tantivy).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Directory of the search index; it belongs to the index (its files are replaced on a
    /// rebuild). Empty: `<database_path>-search`. Deleting it is safe: the index is rebuilt
    /// from the database in the background on the next start.
    pub path: PathBuf,
    /// How long a new event may wait before it is committed to the index, in milliseconds
    /// (a search commits pending events first, so it always finds what was sent before it).
    /// Longer batches more events per commit. 10–10000.
    pub commit_interval_ms: u64,
    /// Memory of the index writer in MiB (tantivy's minimum is 15). 15–1024.
    pub writer_memory_mb: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            commit_interval_ms: 1000,
            writer_memory_mb: 24,
        }
    }
}

impl SearchConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=10_000).contains(&self.commit_interval_ms) {
            return Err(ConfigError(
                "search.commit_interval_ms: must be between 10 and 10000".into(),
            ));
        }
        if !(15..=1024).contains(&self.writer_memory_mb) {
            return Err(ConfigError(
                "search.writer_memory_mb: must be between 15 and 1024".into(),
            ));
        }
        Ok(())
    }
}
