//! Delayed events (MSC4140), unstable prefix `org.matrix.msc4140`:
//!
//! - scheduling: `?org.matrix.msc4140.delay=<ms>` on `PUT /rooms/{id}/send/...` and
//!   `PUT /rooms/{id}/state/...` (see [`requested_delay`]) answers `{delay_id}`;
//! - `POST /delayed_events/{delay_id}/{restart|cancel|send}` (the delay id is the capability,
//!   so an access token is optional) and the older `POST /delayed_events/{delay_id}` with
//!   `{"action": ...}`;
//! - `GET /delayed_events[?status=scheduled|finalised][&delay_id=...]`: `{scheduled,
//!   finalised}`, plus `delayed_events` (the scheduled ones) for clients of the first draft.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ruma::OwnedUserId;
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    rooms::delayed::Action,
    server::Server,
};

const PREFIX: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";

pub fn routes(r: Router<Arc<Server>>) -> Router<Arc<Server>> {
    r.route(PREFIX, get(list))
        .route(&format!("{PREFIX}/{{delay_id}}"), post(update_with_body))
        .route(
            &format!("{PREFIX}/{{delay_id}}/{{action}}"),
            post(update_in_path),
        )
}

/// The delay a send asks for (`org.matrix.msc4140.delay`), if any.
pub fn requested_delay(query: &str) -> Result<Option<u64>> {
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("org.matrix.msc4140.delay=") {
            return value.parse::<u64>().map(Some).map_err(|_| {
                Error::invalid_param("org.matrix.msc4140.delay must be milliseconds")
            });
        }
    }
    Ok(None)
}

/// The authenticated user, when the request carries an access token (a wrong one is refused).
fn optional_user(server: &Server, headers: &HeaderMap) -> Result<Option<OwnedUserId>> {
    let Some(token) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Ok(None);
    };
    Ok(Some(
        server.users.authenticate(server, token.trim())?.user_id,
    ))
}

fn required_user(server: &Server, headers: &HeaderMap) -> Result<OwnedUserId> {
    optional_user(server, headers)?.ok_or_else(|| Error::missing_token("Missing access token"))
}

async fn update_in_path(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path((delay_id, action)): Path<(String, String)>,
) -> Response {
    let result = async {
        let owner = optional_user(&server, &headers)?;
        let action = Action::parse(&action)?;
        server
            .delayed
            .update(&server, &delay_id, owner.as_deref(), action)
            .await
    }
    .await;
    respond(result.map(|()| json!({})))
}

async fn update_with_body(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path(delay_id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let owner = required_user(&server, &headers)?;
        let body: Value =
            serde_json::from_slice(&body).map_err(|_| Error::not_json("Body is not JSON"))?;
        let action = body["action"]
            .as_str()
            .ok_or_else(|| Error::missing_param("action"))?;
        let action = Action::parse(action)?;
        server
            .delayed
            .update(&server, &delay_id, Some(&owner), action)
            .await
    }
    .await;
    respond(result.map(|()| json!({})))
}

async fn list(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = (|| {
        let user = required_user(&server, &headers)?;
        let (mut scheduled, mut finalised) = server.delayed.list(&server, &user)?;
        if let Some(id) = query.get("delay_id") {
            scheduled.retain(|d| &d.delay_id == id);
            finalised.retain(|f| &f.delayed_event.delay_id == id);
        }
        match query.get("status").map(String::as_str) {
            Some("scheduled") => finalised.clear(),
            Some("finalised") => scheduled.clear(),
            Some(other) => {
                return Err(Error::invalid_param(format!(
                    "status must be 'scheduled' or 'finalised', not {other:?}"
                )));
            }
            None => {}
        }
        Ok(json!({
            "scheduled": scheduled,
            "finalised": finalised,
            "delayed_events": scheduled,
        }))
    })();
    respond(result)
}

fn respond(result: Result<Value>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}
