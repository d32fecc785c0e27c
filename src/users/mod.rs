//! Accounts: passwords, devices and their tokens, profiles, account data, filters, UIA.

pub mod account_data;
pub mod filters;
pub mod presence;
pub mod uiaa;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    server::{Server, rand_alnum},
    storage::{Maps, keys::Key},
};

/// An authenticated request's identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// Milliseconds since the epoch; `None` for tokens that do not expire.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Custom profile fields (MSC4133 / spec v1.16 extended profiles).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub device_id: OwnedDeviceId,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub last_seen_ip: Option<String>,
    #[serde(default)]
    pub last_seen_ts: Option<u64>,
    /// Hash of the device's current access token.
    pub token_hash: String,
    #[serde(default)]
    pub refresh_hash: Option<String>,
}

/// Tokens handed to a client at login or registration.
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
    pub device_id: OwnedDeviceId,
}

pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Users {
    /// Bounds concurrent argon2 work: each hash takes ~19 MiB and a core, so a burst of
    /// registrations or logins queues instead of multiplying memory and starving requests.
    hashing: tokio::sync::Semaphore,
}

impl Default for Users {
    fn default() -> Self {
        Self::new()
    }
}

impl Users {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            hashing: tokio::sync::Semaphore::new(cores.max(1)),
        }
    }

    pub fn exists(&self, maps: &Maps, user: &UserId) -> Result<bool> {
        Ok(maps.userid_password.contains(user.as_bytes())?
            || maps.userid_deactivated.contains(user.as_bytes())?)
    }

    pub fn is_deactivated(&self, maps: &Maps, user: &UserId) -> Result<bool> {
        maps.userid_deactivated.contains(user.as_bytes())
    }

    /// Creates an account with an optional password and a display name equal to the localpart.
    pub async fn create(
        &self,
        server: &Server,
        user: &UserId,
        password: Option<&str>,
    ) -> Result<()> {
        let hash = match password {
            Some(password) => {
                let _permit = self.hashing.acquire().await.map_err(Error::internal)?;
                hash_password(password.to_owned()).await?
            }
            None => String::new(),
        };
        let profile = Profile {
            displayname: Some(user.localpart().to_owned()),
            ..Default::default()
        };
        let mut batch = server.db.batch();
        batch.put(
            &server.maps.userid_password,
            user.as_bytes(),
            hash.as_bytes(),
        );
        batch.put(
            &server.maps.userid_profile,
            user.as_bytes(),
            serde_json::to_vec(&profile)?,
        );
        server.db.commit(batch)
    }

    /// Whether `password` is the user's password (argon2id verification on a blocking thread).
    pub async fn check_password(&self, maps: &Maps, user: &UserId, password: &str) -> Result<bool> {
        let Some(stored) = maps.userid_password.get(user.as_bytes())? else {
            return Ok(false);
        };
        let stored = String::from_utf8(stored).unwrap_or_default();
        if stored.is_empty() {
            return Ok(false);
        }
        let password = password.to_owned();
        let _permit = self.hashing.acquire().await.map_err(Error::internal)?;
        tokio::task::spawn_blocking(move || {
            use argon2::{Argon2, PasswordHash, PasswordVerifier};
            PasswordHash::new(&stored).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .map_err(Error::internal)
    }

    pub async fn set_password(&self, server: &Server, user: &UserId, password: &str) -> Result<()> {
        let hash = {
            let _permit = self.hashing.acquire().await.map_err(Error::internal)?;
            hash_password(password.to_owned()).await?
        };
        server
            .maps
            .userid_password
            .put(&server.db, user.as_bytes(), hash.as_bytes())
    }

    /// Resolves an access token to its session. Expired refreshable tokens get `soft_logout`.
    pub fn authenticate(&self, server: &Server, token: &str) -> Result<Session> {
        let raw = server
            .maps
            .tokenhash_session
            .get(hash_token(token))?
            .ok_or_else(|| Error::unknown_token(false))?;
        let session: Session = serde_json::from_slice(&raw)?;
        if session.expires_at.is_some_and(|at| at <= now_ms()) {
            return Err(Error::unknown_token(true));
        }
        Ok(session)
    }

    /// Logs a device in: a new device (or a replaced token on an existing one).
    pub fn login(
        &self,
        server: &Server,
        user: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        refreshable: bool,
        client_ip: &str,
    ) -> Result<Tokens> {
        let maps = &server.maps;
        let device_id =
            device_id.unwrap_or_else(|| OwnedDeviceId::from(rand_alnum(10).to_uppercase()));
        let existing = self.device(maps, user, &device_id)?;
        let access_token = format!("spk_{}", rand_alnum(40));
        let (refresh_token, expires_in_ms) = if refreshable {
            (
                Some(format!("spr_{}", rand_alnum(40))),
                Some(server.config.limits.refreshable_access_token_lifetime_ms),
            )
        } else {
            (None, None)
        };
        let mut batch = server.db.batch();
        if let Some(existing) = &existing {
            batch.delete(&maps.tokenhash_session, &existing.token_hash);
            if let Some(refresh) = &existing.refresh_hash {
                batch.delete(&maps.refreshhash_session, refresh);
            }
        }
        let session = Session {
            user_id: user.to_owned(),
            device_id: device_id.clone(),
            expires_at: expires_in_ms.map(|ms| now_ms() + ms),
        };
        let token_hash = hash_token(&access_token);
        batch.put(
            &maps.tokenhash_session,
            &token_hash,
            serde_json::to_vec(&session)?,
        );
        let refresh_hash = refresh_token.as_deref().map(hash_token);
        if let Some(refresh_hash) = &refresh_hash {
            batch.put(
                &maps.refreshhash_session,
                refresh_hash,
                serde_json::to_vec(&session)?,
            );
        }
        let device = Device {
            device_id: device_id.clone(),
            display_name: display_name
                .or_else(|| existing.as_ref().and_then(|d| d.display_name.clone())),
            last_seen_ip: Some(client_ip.to_owned()),
            last_seen_ts: Some(now_ms()),
            token_hash,
            refresh_hash,
        };
        batch.put(
            &maps.userdeviceid_device,
            Key::new().s(user.as_str()).s(device_id.as_str()).build(),
            serde_json::to_vec(&device)?,
        );
        server.db.commit(batch)?;
        Ok(Tokens {
            access_token,
            refresh_token,
            expires_in_ms,
            device_id,
        })
    }

    /// Exchanges a refresh token for new tokens; the old refresh token stops working.
    pub fn refresh(&self, server: &Server, refresh_token: &str) -> Result<Tokens> {
        let maps = &server.maps;
        let raw = maps
            .refreshhash_session
            .get(hash_token(refresh_token))?
            .ok_or_else(|| Error::unknown_token(false))?;
        let session: Session = serde_json::from_slice(&raw)?;
        let device = self
            .device(maps, &session.user_id, &session.device_id)?
            .ok_or_else(|| Error::unknown_token(false))?;
        self.login(
            server,
            &session.user_id,
            Some(session.device_id),
            device.display_name,
            true,
            device.last_seen_ip.as_deref().unwrap_or(""),
        )
    }

    pub fn device(
        &self,
        maps: &Maps,
        user: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<Device>> {
        match maps
            .userdeviceid_device
            .get(Key::new().s(user.as_str()).s(device_id.as_str()).build())?
        {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    pub fn devices(&self, maps: &Maps, user: &UserId) -> Result<Vec<Device>> {
        maps.userdeviceid_device
            .scan_prefix(Key::new().s(user.as_str()).prefix())
            .map(|(_, value)| Ok(serde_json::from_slice(&value)?))
            .collect()
    }

    pub fn update_device(&self, server: &Server, user: &UserId, device: &Device) -> Result<()> {
        server.maps.userdeviceid_device.put(
            &server.db,
            Key::new()
                .s(user.as_str())
                .s(device.device_id.as_str())
                .build(),
            serde_json::to_vec(device)?,
        )
    }

    /// Deletes a device and invalidates its tokens.
    pub fn remove_device(
        &self,
        server: &Server,
        user: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        let maps = &server.maps;
        let Some(device) = self.device(maps, user, device_id)? else {
            return Ok(());
        };
        let mut batch = server.db.batch();
        batch.delete(&maps.tokenhash_session, &device.token_hash);
        if let Some(refresh) = &device.refresh_hash {
            batch.delete(&maps.refreshhash_session, refresh);
        }
        batch.delete(
            &maps.userdeviceid_device,
            Key::new().s(user.as_str()).s(device_id.as_str()).build(),
        );
        // End-to-end encryption (issue 4): the device's keys, one-time keys and pending
        // to-device messages go in the same batch; the removal is a device-list change that
        // wakes the user's room-mates once committed.
        let e2ee = crate::e2ee::remove_device(server, &mut batch, user, device_id)?;
        server.db.commit(batch)?;
        e2ee.finish(server);
        Ok(())
    }

    pub fn profile(&self, maps: &Maps, user: &UserId) -> Result<Profile> {
        match maps.userid_profile.get(user.as_bytes())? {
            Some(raw) => Ok(serde_json::from_slice(&raw)?),
            None => Ok(Profile::default()),
        }
    }

    pub fn set_profile(&self, server: &Server, user: &UserId, profile: &Profile) -> Result<()> {
        server
            .maps
            .userid_profile
            .put(&server.db, user.as_bytes(), serde_json::to_vec(profile)?)
    }

    /// An OpenID token a third party (e.g. the MatrixRTC service) can check with
    /// `/_matrix/federation/v1/openid/userinfo`.
    pub fn openid_token(&self, server: &Server, user: &UserId, lifetime_ms: u64) -> Result<String> {
        let token = rand_alnum(40);
        let record = serde_json::json!({ "user_id": user, "expires_at": now_ms() + lifetime_ms });
        server.maps.openidhash_user.put(
            &server.db,
            hash_token(&token),
            serde_json::to_vec(&record)?,
        )?;
        Ok(token)
    }

    pub fn openid_user(&self, maps: &Maps, token: &str) -> Result<Option<OwnedUserId>> {
        let Some(raw) = maps.openidhash_user.get(hash_token(token))? else {
            return Ok(None);
        };
        let record: serde_json::Value = serde_json::from_slice(&raw)?;
        if record["expires_at"]
            .as_u64()
            .is_none_or(|at| at <= now_ms())
        {
            return Ok(None);
        }
        Ok(record["user_id"]
            .as_str()
            .and_then(|s| OwnedUserId::try_from(s).ok()))
    }

    /// Marks the account deactivated: no password, no devices, no profile. The caller leaves rooms.
    pub fn deactivate(&self, server: &Server, user: &UserId) -> Result<()> {
        for device in self.devices(&server.maps, user)? {
            self.remove_device(server, user, &device.device_id)?;
        }
        let mut batch = server.db.batch();
        batch.delete(&server.maps.userid_password, user.as_bytes());
        batch.put(
            &server.maps.userid_deactivated,
            user.as_bytes(),
            now_ms().to_be_bytes(),
        );
        batch.put(&server.maps.userid_profile, user.as_bytes(), b"{}");
        server.db.commit(batch)
    }
}

async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::{Argon2, PasswordHash, PasswordHasher};
        let hash: Result<PasswordHash, _> = Argon2::default().hash_password(password.as_bytes());
        hash.map(|hash| hash.to_string())
            .map_err(|e| Error::internal(format_args!("argon2: {e}")))
    })
    .await
    .map_err(Error::internal)?
}
