//! Signing keys: the document we publish, and other servers' keys, fetched from the server
//! itself (or a trusted notary), checked, cached in memory and in the database until they
//! expire.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{CanonicalJsonObject, OwnedServerName, ServerName};
use serde_json::{Value, json};
use sparks_federation::keys::{ServerKeys, now_ms, server_keys_document, verify_server_keys};

use crate::{
    error::{Error, Result},
    server::Server,
    storage::keys::Key,
};

/// Spec: a key is used for at most 7 days past its fetch, whatever `valid_until_ts` says.
const MAX_KEY_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Our key document, valid for `[federation] key_validity_ms`.
pub fn our_document(server: &Server) -> Result<CanonicalJsonObject> {
    let valid_until = now_ms().saturating_add(server.config.federation.key_validity_ms);
    let old = crate::server::old_signing_keys(&server.maps)?;
    server_keys_document(server.server_name(), &server.signing_key, &old, valid_until)
        .map_err(|e| Error::internal(format_args!("key document: {e}")))
}

/// A checked key document and the keys in it.
#[derive(Clone)]
pub struct Cached {
    pub keys: Arc<ServerKeys>,
    pub document: Arc<CanonicalJsonObject>,
    /// When we stop trusting it without fetching again.
    pub expires_ts: u64,
}

#[derive(Default)]
pub struct KeyCache {
    cached: Mutex<HashMap<OwnedServerName, Cached>>,
}

impl KeyCache {
    /// The keys of `origin`, fetched again if we have none, they expired, or `key_id` is not
    /// among them (the server may have rotated).
    pub async fn get_with_key(
        &self,
        server: &Server,
        origin: &ServerName,
        key_id: &str,
    ) -> Result<Arc<ServerKeys>> {
        if let Some(found) = self.usable(server, origin)?
            && found.keys.key_for(key_id, now_ms()).is_some()
        {
            return Ok(found.keys);
        }
        let fetched = self.fetch(server, origin).await?;
        if fetched.keys.key_for(key_id, now_ms()).is_none() {
            return Err(Error::forbidden(format!(
                "{origin} does not publish key {key_id}"
            )));
        }
        Ok(fetched.keys)
    }

    /// The keys of `origin` (any key), fetched if needed.
    pub async fn get(&self, server: &Server, origin: &ServerName) -> Result<Cached> {
        match self.usable(server, origin)? {
            Some(found) => Ok(found),
            None => self.fetch(server, origin).await,
        }
    }

    /// A cached (memory, then database) document that has not expired.
    fn usable(&self, server: &Server, origin: &ServerName) -> Result<Option<Cached>> {
        let now = now_ms();
        if let Some(found) = self.cached.lock().get(origin).cloned()
            && found.expires_ts > now
        {
            return Ok(Some(found));
        }
        let Some(raw) = server
            .maps
            .servername_keys
            .get(Key::new().s(origin.as_str()).build())?
        else {
            return Ok(None);
        };
        let stored: Value = serde_json::from_slice(&raw)?;
        let expires_ts = stored["expires_ts"].as_u64().unwrap_or(0);
        if expires_ts <= now {
            return Ok(None);
        }
        let document: CanonicalJsonObject = serde_json::from_value(stored["document"].clone())?;
        let keys = verify_server_keys(&document, Some(origin))
            .map_err(|e| Error::internal(format_args!("stored keys of {origin}: {e}")))?;
        let cached = Cached {
            keys: Arc::new(keys),
            document: Arc::new(document),
            expires_ts,
        };
        self.cached.lock().insert(origin.to_owned(), cached.clone());
        Ok(Some(cached))
    }

    /// Fetches from the origin, then from each trusted notary; keeps the first good answer.
    async fn fetch(&self, server: &Server, origin: &ServerName) -> Result<Cached> {
        let mut failures = Vec::new();
        match server
            .federation
            .client
            .get_unsigned(origin, "/_matrix/key/v2/server")
            .await
        {
            Ok(body) => match self.accept(server, origin, body) {
                Ok(cached) => return Ok(cached),
                Err(e) => failures.push(format!("{origin}: {}", e.message)),
            },
            Err(e) => failures.push(format!("{origin}: {}", e.message)),
        }
        for notary in &server.config.federation.trusted_key_servers {
            let Ok(notary) = OwnedServerName::try_from(notary.as_str()) else {
                continue;
            };
            match self.ask_notary(server, origin, &notary, &[]).await {
                Ok(cached) => return Ok(cached),
                Err(e) => failures.push(format!("notary {notary}: {}", e.message)),
            }
        }
        Err(Error::forbidden(format!(
            "no keys for {origin}: {}",
            failures.join("; ")
        )))
    }

    /// The keys of `origin`, or, when it cannot be reached (a server that left the network),
    /// as `notary` vouches for them: e.g. the server we join a room through, which checked
    /// that server's events itself. `key_ids` name the keys wanted (Synapse answers nothing
    /// for an empty criteria).
    pub async fn get_or_ask(
        &self,
        server: &Server,
        origin: &ServerName,
        notary: &ServerName,
        key_ids: &[String],
    ) -> Result<Cached> {
        match self.get(server, origin).await {
            Ok(cached) => Ok(cached),
            Err(direct) => self
                .ask_notary(server, origin, notary, key_ids)
                .await
                .map_err(|e| {
                    Error::forbidden(format!(
                        "{}; notary {notary}: {}",
                        direct.message, e.message
                    ))
                }),
        }
    }

    async fn ask_notary(
        &self,
        server: &Server,
        origin: &ServerName,
        notary: &ServerName,
        key_ids: &[String],
    ) -> Result<Cached> {
        let criteria: serde_json::Map<String, Value> = key_ids
            .iter()
            .map(|id| (id.clone(), json!({ "minimum_valid_until_ts": 0 })))
            .collect();
        let body = json!({ "server_keys": { origin.as_str(): criteria } });
        let answer = server
            .federation
            .client
            .send(
                server,
                notary,
                http::Method::POST,
                "/_matrix/key/v2/query",
                Some(&body),
            )
            .await?;
        for document in answer["server_keys"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if document["server_name"].as_str() == Some(origin.as_str())
                && let Ok(cached) = self.accept(server, origin, document)
            {
                return Ok(cached);
            }
        }
        Err(Error::forbidden("no valid keys"))
    }

    /// Checks a fetched document and keeps it.
    fn accept(&self, server: &Server, origin: &ServerName, body: Value) -> Result<Cached> {
        let document: CanonicalJsonObject = serde_json::from_value(body)
            .map_err(|e| Error::bad_json(format!("key document is not canonical JSON: {e}")))?;
        let keys = verify_server_keys(&document, Some(origin))
            .map_err(|e| Error::forbidden(e.to_string()))?;
        let now = now_ms();
        let expires_ts = keys
            .valid_until_ts
            .min(now.saturating_add(MAX_KEY_VALIDITY_MS));
        let cached = Cached {
            keys: Arc::new(keys),
            document: Arc::new(document),
            expires_ts,
        };
        let stored = json!({ "document": *cached.document, "expires_ts": expires_ts });
        server.maps.servername_keys.put(
            &server.db,
            Key::new().s(origin.as_str()).build(),
            serde_json::to_vec(&stored)?,
        )?;
        self.cached.lock().insert(origin.to_owned(), cached.clone());
        Ok(cached)
    }
}
