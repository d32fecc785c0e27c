//! The server-server API, served on the federation listener (TLS). Every endpoint under
//! `/_matrix/federation` checks the caller's `X-Matrix` signature (in the [`Ruma`] extractor);
//! the key endpoints are public.
//!
//! [`Ruma`]: crate::api::ruma::Ruma

pub mod keys;
pub mod openid;
pub mod query;
pub mod version;

use std::{collections::HashSet, sync::Arc};

use axum::{
    Router,
    routing::{get, post},
};

use crate::{
    api::ruma::{route, route_json},
    server::Server,
};

/// The router of the federation listener.
pub fn router(server: Arc<Server>) -> Router {
    let mut seen = HashSet::new();
    let s = &mut seen;
    let mut r: Router<Arc<Server>> = Router::new()
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .route("/_matrix/key/v2/query/{server_name}", get(keys::query_one))
        .route("/_matrix/key/v2/query", post(keys::query_batch));
    r = route(r, s, version::version);
    r = route_json(r, s, query::profile);
    r = route_json(r, s, query::directory);
    r = route(r, s, openid::userinfo);
    crate::api::router::finish(r, server)
}
