//! The public room directory (issue 3): `GET`/`POST /publicRooms`.

use std::sync::Arc;

use ruma::{
    ServerName,
    api::client::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::{RoomNetwork, RoomTypeFilter},
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    directory::public_rooms::{self, Query},
    error::{Error, Result},
    server::Server,
};

/// Another server's directory, asked over federation with the client's query (`None` when
/// the request is for ours).
async fn remote(
    server: &Server,
    requested: Option<&ServerName>,
    query: Value,
) -> Result<Option<Value>> {
    let Some(name) = requested.filter(|name| !server.is_local(name)) else {
        return Ok(None);
    };
    if !crate::federation::enabled(server) {
        return Err(Error::not_found(
            "Other servers' directories need federation, which this server does not do",
        ));
    }
    let answer = server
        .federation
        .client
        .send(
            server,
            name,
            http::Method::POST,
            "/_matrix/federation/v1/publicRooms",
            Some(&query),
        )
        .await?;
    Ok(Some(answer))
}

pub async fn get(
    server: Arc<Server>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    let mut remote_query = json!({});
    if let Some(limit) = body.limit {
        remote_query["limit"] = json!(limit);
    }
    if let Some(since) = &body.since {
        remote_query["since"] = json!(since);
    }
    if let Some(answer) = remote(&server, body.server.as_deref(), remote_query).await? {
        return Ok(answer);
    }
    let query = Query {
        limit: body.limit.map(u64::from),
        since: body.since.clone(),
        ..Query::default()
    };
    public_rooms::list(&server, &query)
}

pub async fn post(
    server: Arc<Server>,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    if body
        .server
        .as_deref()
        .is_some_and(|name| !server.is_local(name))
    {
        // The client's own body, minus `server`, is the federation query.
        let mut remote_query: Value = serde_json::from_slice(&request.json).unwrap_or_default();
        if let Some(object) = remote_query.as_object_mut() {
            object.remove("server");
        }
        if let Some(answer) = remote(&server, body.server.as_deref(), remote_query).await? {
            return Ok(answer);
        }
    }
    if let RoomNetwork::ThirdParty(_) = body.room_network {
        // No bridges publish third-party networks here.
        return Ok(json!({ "chunk": [], "total_room_count_estimate": 0 }));
    }
    let room_types = (!body.filter.room_types.is_empty()).then(|| {
        body.filter
            .room_types
            .iter()
            .map(|t| match t {
                RoomTypeFilter::Default => None,
                other => other.as_str().map(str::to_owned),
            })
            .collect()
    });
    let query = Query {
        limit: body.limit.map(u64::from),
        since: body.since.clone(),
        search: body
            .filter
            .generic_search_term
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase),
        room_types,
    };
    public_rooms::list(&server, &query)
}
