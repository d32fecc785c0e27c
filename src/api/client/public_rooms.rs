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

/// Only this server's directory for now: another server's needs federation.
fn check_server(server: &Server, requested: Option<&ServerName>) -> Result<()> {
    match requested {
        Some(name) if !server.is_local(name) => Err(Error::not_found(
            "The room directories of other servers need federation, which is not supported yet",
        )),
        _ => Ok(()),
    }
}

pub async fn get(
    server: Arc<Server>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    check_server(&server, body.server.as_deref())?;
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
    check_server(&server, body.server.as_deref())?;
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
