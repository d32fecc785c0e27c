//! Uploads (direct and asynchronous) and finding media for downloads.

use std::time::Duration;

use futures::StreamExt;
use http::StatusCode;
use ruma::{ServerName, UserId};
use serde::{Deserialize, Serialize};

use super::{Media, MediaMeta, media_key, store::Stored, valid_media_id};
use crate::{
    error::{Error, Result},
    server::{Server, rand_alnum},
    storage::keys::{self, Key},
    users::now_ms,
};

/// A media id from `POST /create` whose content has not arrived (`mediaid_pending`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    uploader: String,
    created_ts: u64,
    expires_at: u64,
}

/// What a client sends with an upload.
pub struct Upload {
    pub content_type: String,
    pub filename: Option<String>,
    /// The `Content-Length` header, when present.
    pub declared_length: Option<u64>,
    pub body: axum::body::Body,
}

fn too_large(max: u64) -> Error {
    Error::too_large_closing(format!("Uploads may be at most {max} bytes"))
}

/// Releases an in-progress marker when the upload ends, however it ends.
struct InProgress<'a> {
    media: &'a Media,
    key: String,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.media.in_progress.lock().remove(&self.key);
    }
}

impl Media {
    /// `POST /_matrix/media/v1/create`: a new media id whose content comes later. Returns the
    /// id and when it expires unused.
    pub fn create(&self, server: &Server, user: &UserId) -> Result<(String, u64)> {
        let now = now_ms();
        let prefix = Key::new().s(user.as_str()).prefix();
        let mut live = Vec::new();
        let mut batch = server.db.batch();
        for (key, value) in server.maps.userid_pendingmedia.scan_prefix(prefix.clone()) {
            let expires_at = keys::u64_from(&value).unwrap_or(0);
            let media_id = keys::tail_str(&key, &prefix).unwrap_or_default().to_owned();
            if expires_at <= now {
                batch.delete(&server.maps.userid_pendingmedia, &key);
                batch.delete(
                    &server.maps.mediaid_pending,
                    media_key(server.server_name().as_str(), &media_id),
                );
            } else {
                live.push(expires_at);
            }
        }
        if live.len() >= self.config.max_pending_uploads {
            if !batch.is_empty() {
                server.db.commit(batch)?;
            }
            let soonest = live.iter().min().copied().unwrap_or(now);
            return Err(Error::limit_exceeded(soonest.saturating_sub(now).max(1000)));
        }
        let media_id = rand_alnum(24);
        let expires_at = now + self.config.pending_upload_lifetime_ms;
        let pending = Pending {
            uploader: user.to_string(),
            created_ts: now,
            expires_at,
        };
        batch.put(
            &server.maps.mediaid_pending,
            media_key(server.server_name().as_str(), &media_id),
            serde_json::to_vec(&pending)?,
        );
        batch.put(
            &server.maps.userid_pendingmedia,
            Key::new().s(user.as_str()).s(&media_id).build(),
            expires_at.to_be_bytes(),
        );
        server.db.commit(batch)?;
        Ok((media_id, expires_at))
    }

    /// `POST /upload` (`target` = `None`: a new media id) or `PUT /upload/{server}/{id}` (the
    /// id from `create`, by the user who created it). Returns the media id.
    pub async fn upload(
        &self,
        server: &Server,
        user: &UserId,
        target: Option<(&ServerName, &str)>,
        upload: Upload,
    ) -> Result<String> {
        let local = server.server_name().as_str();
        let mut guard = None;
        let media_id = match target {
            None => rand_alnum(24),
            Some((server_name, media_id)) => {
                if !server.is_local(server_name) {
                    return Err(Error::not_found(
                        "Unknown media ID: only this server's media ids can be uploaded to",
                    ));
                }
                if !valid_media_id(media_id) {
                    return Err(Error::not_found("Unknown media ID"));
                }
                // Marked in progress first, so the checks below cannot race another `PUT`.
                if !self.in_progress.lock().insert(media_id.to_owned()) {
                    return Err(cannot_overwrite(
                        "Another upload to this media ID is in progress",
                    ));
                }
                guard = Some(InProgress {
                    media: self,
                    key: media_id.to_owned(),
                });
                let key = media_key(local, media_id);
                if server.maps.mediaid_meta.contains(&key)? {
                    return Err(cannot_overwrite("Media already uploaded"));
                }
                let pending: Pending = match server.maps.mediaid_pending.get(&key)? {
                    Some(raw) => serde_json::from_slice(&raw)?,
                    None => return Err(Error::not_found("Unknown media ID")),
                };
                if pending.expires_at <= now_ms() {
                    return Err(Error::not_found("This media ID has expired"));
                }
                if pending.uploader != user.as_str() {
                    return Err(Error::forbidden(
                        "Only the user who created this media ID may upload to it",
                    ));
                }
                media_id.to_owned()
            }
        };

        let max = self.config.max_upload_size;
        if upload.declared_length.is_some_and(|len| len > max) {
            return Err(too_large(max));
        }
        let mut writer = self.store.writer().await?;
        let mut stream = upload.body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                Error::new(
                    StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Could not read the upload body",
                )
            })?;
            if writer.size() + chunk.len() as u64 > max {
                return Err(too_large(max));
            }
            writer.write(&chunk).await?;
        }
        let stored = writer
            .finish(&self.store, server.config.storage.sync_writes)
            .await?;

        let meta = MediaMeta {
            sha256: stored.sha256,
            size: stored.size,
            content_type: upload.content_type,
            filename: upload.filename,
            uploader: user.to_string(),
            created_ts: now_ms(),
        };
        let key = media_key(local, &media_id);
        let mut batch = server.db.batch();
        batch.put(&server.maps.mediaid_meta, &key, serde_json::to_vec(&meta)?);
        if target.is_some() {
            batch.delete(&server.maps.mediaid_pending, &key);
            batch.delete(
                &server.maps.userid_pendingmedia,
                Key::new().s(user.as_str()).s(&media_id).build(),
            );
        }
        server.db.commit(batch)?;
        drop(guard);
        self.uploads.send_modify(|n| *n = n.wrapping_add(1));
        Ok(media_id)
    }

    /// Stores content the server fetched itself (URL preview images) as new local media.
    pub async fn store_bytes(
        &self,
        server: &Server,
        user: &UserId,
        bytes: &[u8],
        content_type: String,
        filename: Option<String>,
    ) -> Result<(String, Stored)> {
        let stored = self
            .store
            .put(bytes, server.config.storage.sync_writes)
            .await?;
        let media_id = rand_alnum(24);
        let meta = MediaMeta {
            sha256: stored.sha256.clone(),
            size: stored.size,
            content_type,
            filename,
            uploader: user.to_string(),
            created_ts: now_ms(),
        };
        server.maps.mediaid_meta.put(
            &server.db,
            media_key(server.server_name().as_str(), &media_id),
            serde_json::to_vec(&meta)?,
        )?;
        Ok((media_id, stored))
    }

    /// Keeps content fetched from another server under its own `mxc://` server and id.
    pub async fn store_remote(
        &self,
        server: &Server,
        origin: &ServerName,
        media_id: &str,
        bytes: &[u8],
        content_type: String,
        filename: Option<String>,
    ) -> Result<MediaMeta> {
        let stored = self
            .store
            .put(bytes, server.config.storage.sync_writes)
            .await?;
        let meta = MediaMeta {
            sha256: stored.sha256.clone(),
            size: stored.size,
            content_type,
            filename,
            uploader: String::new(),
            created_ts: now_ms(),
        };
        server.maps.mediaid_meta.put(
            &server.db,
            media_key(origin.as_str(), media_id),
            serde_json::to_vec(&meta)?,
        )?;
        Ok(meta)
    }

    /// The metadata of `mxc://server_name/media_id`. Content announced by `create` but not
    /// uploaded yet is waited for, up to `wait` (capped by `max_download_wait_ms`): then
    /// `504 M_NOT_YET_UPLOADED`. Unknown or expired ids are `404 M_NOT_FOUND`.
    pub async fn find(
        &self,
        server: &Server,
        server_name: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<MediaMeta> {
        if !valid_media_id(media_id) {
            return Err(Error::not_found(
                "Media not found (media ids contain only A-Z, a-z, 0-9, _ and -)",
            ));
        }
        if !server.is_local(server_name) {
            // Cached from an earlier fetch, or fetched over federation now.
            let key = media_key(server_name.as_str(), media_id);
            if let Some(raw) = server.maps.mediaid_meta.get(&key)? {
                return Ok(serde_json::from_slice(&raw)?);
            }
            return crate::federation::media::fetch_remote(server, server_name, media_id).await;
        }
        let key = media_key(server_name.as_str(), media_id);
        let wait = wait.min(Duration::from_millis(self.config.max_download_wait_ms));
        let deadline = tokio::time::Instant::now() + wait;
        let mut uploads = self.uploads.subscribe();
        let mut shutdown = server.shutdown.subscribe();
        loop {
            // Marked seen before reading, so an upload committed after the read wakes us.
            uploads.borrow_and_update();
            if let Some(raw) = server.maps.mediaid_meta.get(&key)? {
                return Ok(serde_json::from_slice(&raw)?);
            }
            let pending = match server.maps.mediaid_pending.get(&key)? {
                Some(raw) => serde_json::from_slice::<Pending>(&raw)?,
                None => return Err(Error::not_found("Media not found")),
            };
            if pending.expires_at <= now_ms() {
                return Err(Error::not_found("Media not found (the upload never came)"));
            }
            if tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
                return Err(Error::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "M_NOT_YET_UPLOADED",
                    "Content has not yet been uploaded",
                ));
            }
            tokio::select! {
                _ = uploads.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => {}
            }
        }
    }
}

fn cannot_overwrite(message: &'static str) -> Error {
    Error::new(StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA", message)
}
