//! The content-addressed file store: every distinct content is one file named by the SHA-256 of
//! its bytes, `<path>/ab/cd/abcd…`. Identical uploads share a file. Files are written to
//! `<path>/tmp/` and renamed into place once complete, so a crash never leaves a partial file
//! under a content name.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::{fs, io::AsyncWriteExt};

use crate::error::{Error, Result};

pub struct Store {
    root: PathBuf,
}

/// A file in the store.
#[derive(Clone, Debug)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> Error {
    Error::internal(format_args!(
        "media store: {what} {}: {error}",
        path.display()
    ))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The path of a content, or `None` for a malformed hash (never from our own metadata).
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| {
            self.root
                .join(&sha256[0..2])
                .join(&sha256[2..4])
                .join(sha256)
        })
    }

    /// Removes temporary files a crash left behind (synchronous; called once at start).
    pub fn clean_tmp(&self) {
        let Ok(entries) = std::fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// A new temporary file to stream content into.
    pub async fn writer(&self) -> Result<Writer> {
        let dir = self.tmp_dir();
        fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error("creating", &dir, e))?;
        let path = dir.join(crate::server::rand_alnum(24));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_error("creating", &path, e))?;
        Ok(Writer {
            file: Some(file),
            path,
            hasher: Sha256::new(),
            size: 0,
            buffer: Vec::new(),
        })
    }

    /// Stores `bytes` (thumbnails, preview images).
    pub async fn put(&self, bytes: &[u8], sync: bool) -> Result<Stored> {
        let mut writer = self.writer().await?;
        writer.write(bytes).await?;
        writer.finish(self, sync).await
    }

    /// Opens a stored content for reading, checking it has the recorded size.
    pub async fn open(&self, stored: &Stored) -> Result<fs::File> {
        let path = self
            .path_of(&stored.sha256)
            .ok_or_else(|| Error::internal("media store: malformed content hash in metadata"))?;
        let file = fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::internal(format_args!(
                    "media store: content {} is missing",
                    path.display()
                ))
            } else {
                io_error("opening", &path, e)
            }
        })?;
        let len = file
            .metadata()
            .await
            .map_err(|e| io_error("reading metadata of", &path, e))?
            .len();
        if len != stored.size {
            return Err(Error::internal(format_args!(
                "media store: {} has {len} bytes, metadata says {}",
                path.display(),
                stored.size
            )));
        }
        Ok(file)
    }

    /// The first bytes of a stored content (to recognise its format).
    pub async fn read_head(&self, stored: &Stored, len: usize) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let file = self.open(stored).await?;
        let mut head = Vec::with_capacity(len);
        file.take(len as u64)
            .read_to_end(&mut head)
            .await
            .map_err(|e| Error::internal(format_args!("media store: reading: {e}")))?;
        Ok(head)
    }

    /// Reads a whole stored content (for thumbnailing).
    pub async fn read(&self, stored: &Stored) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut file = self.open(stored).await?;
        let mut bytes = Vec::with_capacity(usize::try_from(stored.size).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::internal(format_args!("media store: reading: {e}")))?;
        Ok(bytes)
    }
}

/// A content being written: hashed and counted as it streams in. Dropped unfinished, its
/// temporary file is removed.
pub struct Writer {
    file: Option<fs::File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    /// Small chunks (a request body arrives in pieces of a few KiB) are gathered into larger
    /// writes: each file write is a trip to tokio's blocking pool.
    buffer: Vec<u8>,
}

const WRITE_BUFFER: usize = 256 * 1024;

impl Writer {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(Error::internal("media store: write after finish"));
        };
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        if self.buffer.is_empty() && chunk.len() >= WRITE_BUFFER {
            return file
                .write_all(chunk)
                .await
                .map_err(|e| io_error("writing", &self.path, e));
        }
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(WRITE_BUFFER);
        }
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() >= WRITE_BUFFER {
            file.write_all(&self.buffer)
                .await
                .map_err(|e| io_error("writing", &self.path, e))?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Completes the content: renames it to its hash's path (unless an intact copy is already
    /// there). `sync` fsyncs the file and its directory first, for power-loss durability.
    pub async fn finish(mut self, store: &Store, sync: bool) -> Result<Stored> {
        let Some(mut file) = self.file.take() else {
            return Err(Error::internal("media store: finished twice"));
        };
        file.write_all(&self.buffer)
            .await
            .map_err(|e| io_error("writing", &self.path, e))?;
        self.buffer = Vec::new();
        file.flush()
            .await
            .map_err(|e| io_error("writing", &self.path, e))?;
        if sync {
            file.sync_all()
                .await
                .map_err(|e| io_error("syncing", &self.path, e))?;
        }
        drop(file);
        let sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
        let stored = Stored {
            sha256,
            size: self.size,
        };
        let target = store
            .path_of(&stored.sha256)
            .ok_or_else(|| Error::internal("media store: bad hash"))?;
        let intact = fs::metadata(&target)
            .await
            .is_ok_and(|m| m.len() == stored.size);
        if intact {
            // Same content already stored: the upload shares that file.
            let _ = fs::remove_file(&self.path).await;
        } else {
            let dir = target
                .parent()
                .ok_or_else(|| Error::internal("media store: path without parent"))?;
            fs::create_dir_all(dir)
                .await
                .map_err(|e| io_error("creating", dir, e))?;
            fs::rename(&self.path, &target)
                .await
                .map_err(|e| io_error("renaming into", &target, e))?;
            if sync && let Ok(dir) = fs::File::open(dir).await {
                let _ = dir.sync_all().await;
            }
        }
        self.path = PathBuf::new();
        Ok(stored)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
