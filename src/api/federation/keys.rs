//! Signing keys over federation: our own (`GET /_matrix/key/v2/server`) and, as a notary,
//! other servers' (`GET /_matrix/key/v2/query/{serverName}`, `POST /_matrix/key/v2/query`),
//! countersigned by us.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::{CanonicalJsonObject, OwnedServerName, ServerName};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    federation::keys::our_document,
    server::Server,
};

pub async fn server_keys(State(server): State<Arc<Server>>) -> Result<Json<CanonicalJsonObject>> {
    Ok(Json(our_document(&server)?))
}

pub async fn query_one(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let name = OwnedServerName::try_from(name)
        .map_err(|e| Error::invalid_param(format!("server name: {e}")))?;
    Ok(Json(
        json!({ "server_keys": notarised(&server, &name).await }),
    ))
}

pub async fn query_batch(
    State(server): State<Arc<Server>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    let request: Value =
        serde_json::from_slice(&body).map_err(|_| Error::not_json("Body is not JSON"))?;
    let Some(wanted) = request["server_keys"].as_object() else {
        return Err(Error::bad_json("server_keys must be an object"));
    };
    if wanted.len() > 100 {
        return Err(Error::bad_json("At most 100 servers per query"));
    }
    let mut out = Vec::new();
    for name in wanted.keys() {
        let Ok(name) = OwnedServerName::try_from(name.as_str()) else {
            continue;
        };
        out.extend(notarised(&server, &name).await);
    }
    Ok(Json(json!({ "server_keys": out })))
}

/// The key documents we can vouch for: ours, or the server's as fetched, with our signature.
/// A server we cannot reach gets an empty list, as the spec says.
async fn notarised(server: &Arc<Server>, name: &ServerName) -> Vec<CanonicalJsonObject> {
    let document = if server.is_local(name) {
        our_document(server).ok()
    } else {
        match server.federation.keys.get(server, name).await {
            Ok(cached) => Some((*cached.document).clone()),
            Err(error) => {
                tracing::debug!(%name, %error, "notary: no keys");
                None
            }
        }
    };
    document
        .and_then(|mut document| {
            if !server.is_local(name) {
                sparks_federation::keys::notarise(
                    server.server_name(),
                    &server.signing_key,
                    &mut document,
                )
                .ok()?;
            }
            Some(document)
        })
        .into_iter()
        .collect()
}
