use serde::{Deserialize, Serialize};

/// `[storage]`: RocksDB tuning.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `fsync` the write-ahead log on every acknowledged write. Off: a write survives a crash of
    /// the process (`kill -9`) but not of the machine; on: survives power loss, slower.
    pub sync_writes: bool,
    /// Size of RocksDB's block cache in MiB.
    pub cache_mb: usize,
    /// How many room states (as maps) are kept in memory.
    pub state_cache_entries: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            sync_writes: false,
            cache_mb: 32,
            state_cache_entries: 1024,
        }
    }
}
