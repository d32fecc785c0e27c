//! Storage: typed maps over RocksDB column families. No Matrix logic lives here.
//!
//! Every column family is declared once in [`maps`] with its key layout. Keys are tuples joined
//! by `0xFF` (a byte that never occurs in UTF-8, so it cannot appear inside an identifier) with
//! big-endian integers, so a prefix scan over `(room_id, 0xFF)` walks one room in order.
//! Writes that belong together (all of one event) go into one [`Batch`], committed atomically
//! with the write-ahead log on: an acknowledged write survives `kill -9`.

pub mod keys;
pub mod maps;

use std::{path::Path, sync::Arc};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode,
    MergeOperands, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::{config::StorageConfig, error::Result};

pub use self::maps::Maps;

/// The database: one RocksDB instance and the catalog of maps opened in it.
pub struct Db {
    inner: Arc<DB>,
    write_options: WriteOptions,
}

impl Db {
    pub fn open(path: &Path, config: &StorageConfig) -> Result<(Arc<Self>, Maps), String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let cache = Cache::new_lru_cache(config.cache_mb.max(1) * 1024 * 1024)
            .map_err(|e| format!("cannot create the block cache: {e}"))?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(512);
        db_opts.set_keep_log_file_num(3);
        db_opts.increase_parallelism(2);
        // Small memtables (arena blocks are 1/8 of this) bounded in total: most maps are tiny,
        // and an idle server should stay within a few tens of MB.
        db_opts.set_db_write_buffer_size(96 << 20);
        db_opts.set_max_background_jobs(4);
        // The WAL is on by default; never disable it: it is what makes writes survive `kill -9`.
        let descriptors = maps::FAMILIES.iter().map(|family| {
            let mut opts = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            opts.set_block_based_table_factory(&table);
            opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            opts.set_write_buffer_size(family.write_buffer_mb << 20);
            // Bursts of writes should queue memtables and L0 files rather than stall senders:
            // RocksDB's slowdown sleeps writers in 1 ms steps, which caps throughput.
            opts.set_max_write_buffer_number(4);
            opts.set_level_zero_slowdown_writes_trigger(40);
            opts.set_level_zero_stop_writes_trigger(64);
            if family.merge_max_u64 {
                opts.set_merge_operator_associative("max_u64", merge_max_u64);
            }
            ColumnFamilyDescriptor::new(family.name, opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors)
            .map_err(|e| format!("cannot open database at {}: {e}", path.display()))?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(config.sync_writes);
        let db = Arc::new(Self {
            inner: Arc::new(db),
            write_options,
        });
        let maps = Maps::new(&db);
        Ok((db, maps))
    }

    pub fn batch(&self) -> Batch {
        Batch {
            inner: WriteBatch::default(),
        }
    }

    /// Atomically applies every write in the batch (one WAL record).
    pub fn commit(&self, batch: Batch) -> Result<()> {
        self.inner.write_opt(batch.inner, &self.write_options)?;
        Ok(())
    }

    /// Flushes memtables; used on clean shutdown so the next start replays no WAL.
    pub fn flush(&self) {
        for family in maps::FAMILIES {
            if let Some(cf) = self.inner.cf_handle(family.name) {
                let _ = self.inner.flush_cf(cf);
            }
        }
    }
}

/// `max(existing, operands...)` for big-endian `u64` values: counters that several concurrent
/// batches raise must never go backwards, whatever order the batches commit in.
fn merge_max_u64(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let max = existing
        .into_iter()
        .chain(operands.iter())
        .filter_map(keys::u64_from)
        .max()
        .unwrap_or(0);
    Some(max.to_be_bytes().to_vec())
}

/// Writes to apply together.
pub struct Batch {
    inner: WriteBatch,
}

impl Batch {
    pub fn put(&mut self, map: &Map, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.inner.put_cf(map.cf(), map.key(key.as_ref()), value);
    }

    pub fn delete(&mut self, map: &Map, key: impl AsRef<[u8]>) {
        self.inner.delete_cf(map.cf(), map.key(key.as_ref()));
    }

    /// Raises a `max_u64` counter (the map's family must have the `max` merge operator).
    pub fn raise(&mut self, map: &Map, key: impl AsRef<[u8]>, value: u64) {
        self.inner
            .merge_cf(map.cf(), map.key(key.as_ref()), value.to_be_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// One map: a namespace inside a column family (see [`maps`]).
#[derive(Clone)]
pub struct Map {
    db: Arc<DB>,
    family: &'static str,
    ns: u8,
}

pub type Entry = (Box<[u8]>, Box<[u8]>);

impl Map {
    fn cf(&self) -> &ColumnFamily {
        // Every family of the catalog is created at open (`create_missing_column_families`),
        // and maps are only constructed from the catalog, so the handle always exists.
        self.db
            .cf_handle(self.family)
            .expect("column family from the catalog is open")
    }

    /// The stored key: the map's namespace byte, then the key.
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(key.len() + 1);
        full.push(self.ns);
        full.extend_from_slice(key);
        full
    }

    /// A stored entry with the namespace byte removed from its key.
    fn strip((key, value): Entry) -> Entry {
        (key.get(1..).unwrap_or_default().into(), value)
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(), self.key(key.as_ref()))?)
    }

    pub fn contains(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(), self.key(key.as_ref()))?
            .is_some())
    }

    /// A single write outside any batch (for data that stands alone).
    pub fn put(&self, db: &Db, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = db.batch();
        batch.put(self, key, value);
        db.commit(batch)
    }

    pub fn delete(&self, db: &Db, key: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = db.batch();
        batch.delete(self, key);
        db.commit(batch)
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: Vec<u8>) -> impl Iterator<Item = Entry> + '_ {
        let prefix = self.key(&prefix);
        let mut opts = ReadOptions::default();
        if let Some(upper) = keys::prefix_upper_bound(&prefix) {
            opts.set_iterate_upper_bound(upper);
        }
        self.db
            .iterator_cf_opt(
                self.cf(),
                opts,
                IteratorMode::From(&prefix, Direction::Forward),
            )
            .map_while(Result::ok)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(Self::strip)
    }

    /// Entries with key `>= from` (forward) or `<= from` (backward) that start with `prefix`.
    pub fn scan_from(
        &self,
        prefix: Vec<u8>,
        from: Vec<u8>,
        forward: bool,
    ) -> impl Iterator<Item = Entry> + '_ {
        let prefix = self.key(&prefix);
        let from = self.key(&from);
        let direction = if forward {
            Direction::Forward
        } else {
            Direction::Reverse
        };
        let mut opts = ReadOptions::default();
        if forward {
            if let Some(upper) = keys::prefix_upper_bound(&prefix) {
                opts.set_iterate_upper_bound(upper);
            }
        } else {
            opts.set_iterate_lower_bound(prefix.clone());
        }
        self.db
            .iterator_cf_opt(self.cf(), opts, IteratorMode::From(&from, direction))
            .map_while(Result::ok)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(Self::strip)
    }

    /// The last entry (highest key) under `prefix`.
    pub fn last_with_prefix(&self, prefix: Vec<u8>) -> Option<Entry> {
        // The largest key under `prefix` sorts below `prefix` followed by 0xFF bytes longer
        // than any key we store.
        let mut from = prefix.clone();
        from.extend_from_slice(&[0xFF; 16]);
        self.scan_from(prefix, from, false).next()
    }
}
