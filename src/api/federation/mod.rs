//! The server-server API, served on the federation listener (TLS). Every endpoint under
//! `/_matrix/federation` checks the caller's `X-Matrix` signature (in the [`Ruma`] extractor);
//! the key endpoints are public.
//!
//! [`Ruma`]: crate::api::ruma::Ruma

pub mod event;
pub mod keys;
pub mod media;
pub mod membership;
pub mod openid;
pub mod query;
pub mod transactions;
pub mod user;
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
        .route("/_matrix/key/v2/query", post(keys::query_batch))
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(media::thumbnail),
        );
    r = route(r, s, version::version);
    r = route_json(r, s, query::profile);
    r = route_json(r, s, query::directory);
    r = route_json(r, s, query::public_rooms);
    r = route_json(r, s, query::public_rooms_filtered);
    r = route_json(r, s, query::hierarchy);
    r = route(r, s, openid::userinfo);
    r = route_json(r, s, transactions::send);
    r = route_json(r, s, membership::make_join);
    r = route_json(r, s, membership::send_join_v2);
    r = route_json(r, s, membership::invite_v2);
    r = route_json(r, s, membership::make_leave);
    r = route_json(r, s, membership::send_leave_v2);
    r = route_json(r, s, membership::make_knock);
    r = route_json(r, s, membership::send_knock);
    r = route_json(r, s, event::event);
    r = route_json(r, s, event::state);
    r = route_json(r, s, event::state_ids);
    r = route_json(r, s, event::missing_events);
    r = route_json(r, s, event::backfill);
    r = route_json(r, s, event::event_auth);
    r = route_json(r, s, user::query);
    r = route_json(r, s, user::claim);
    r = route_json(r, s, user::devices);
    crate::api::router::finish(r, server)
}
