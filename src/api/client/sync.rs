//! `/sync` and filters.

use std::{sync::Arc, time::Duration};

use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::{self, v3::Filter},
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    server::Server,
    sync::{self, v3::SyncParams},
    users::filters,
};

pub async fn sync_v3(
    server: Arc<Server>,
    request: Ruma<sync_events::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let device = request.owned_device()?;
    let body = &request.body;
    let ignored = sync::v3::ignored_users(&server, &user)?;
    let filter = match &body.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(definition)) => definition.clone(),
        Some(Filter::FilterId(id)) => {
            let stored = filters::get(&server, &user, id)?
                .ok_or_else(|| Error::not_found("Unknown filter"))?;
            serde_json::from_value(stored)
                .map_err(|_| Error::invalid_param("Stored filter is invalid"))?
        }
        Some(_) => return Err(Error::invalid_param("Invalid filter")),
    };
    let token = body
        .since
        .as_deref()
        .map(sync::parse_sync_token)
        .transpose()?;
    let since = token.map(|t| t.position);
    let to_device_ack = token.map_or(0, |t| t.to_device.unwrap_or(t.position));
    let max = Duration::from_millis(server.config.limits.max_sync_timeout_ms);
    let params = SyncParams {
        user,
        device,
        since,
        to_device_ack,
        filter,
        full_state: body.full_state,
        use_state_after: body.use_state_after,
        timeout: body.timeout.unwrap_or_default().min(max),
        set_presence: body.set_presence.as_str().to_owned(),
        ignored,
    };
    sync::v3::sync(&server, params).await
}

pub async fn create(
    server: Arc<Server>,
    request: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let user = request.owned_user()?;
    if request.body.user_id != user {
        return Err(Error::forbidden("You may only create filters for yourself"));
    }
    let value = serde_json::to_value(&request.body.filter)?;
    let id = filters::create(&server, &user, &value)?;
    Ok(create_filter::v3::Response::new(id))
}

pub async fn get(server: Arc<Server>, request: Ruma<get_filter::v3::Request>) -> Result<Value> {
    let user = request.owned_user()?;
    if request.body.user_id != user {
        return Err(Error::forbidden("You may only read your own filters"));
    }
    let filter = filters::get(&server, &user, &request.body.filter_id)?
        .ok_or_else(|| Error::not_found("Unknown filter"))?;
    Ok(if filter.is_null() { json!({}) } else { filter })
}

/// Simplified sliding sync (MSC4186).
pub async fn sliding(
    server: Arc<Server>,
    request: Ruma<sync_events::v5::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let device = request.owned_device()?;
    // `spaces` list filters are in MSC4186 but not in ruma's request type: read them raw.
    let spaces = sync::sliding::space_filters(&request.json);
    sync::sliding::sync(&server, user, device, request.body, &spaces).await
}
