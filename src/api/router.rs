//! The router: every endpoint, the fallbacks (`404`/`405 M_UNRECOGNIZED`), CORS, request logs.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use http::{Method, header};
use ruma::api::client as c;
use tower_http::cors::{Any, CorsLayer};

use super::{
    client::{
        account, account_data, alias, device, directory, discovery, membership, message, presence,
        profile, push, receipt, relations, report, room, session, state, sync, tag, typing,
    },
    federation,
    ruma::{route, route_json},
};
use crate::{error::Error, server::Server};

pub fn build(server: Arc<Server>) -> Router {
    let mut seen: HashSet<(Method, &'static str)> = HashSet::new();
    let s = &mut seen;
    let mut r = Router::new();

    // Discovery
    r = route_json(r, s, discovery::versions);
    r = route_json(r, s, discovery::capabilities);
    r = route_json(r, s, discovery::login_types);
    r = route_json(r, s, discovery::rtc_transports);

    // Accounts and sessions
    r = route(r, s, account::register);
    r = route(r, s, account::available);
    r = route(r, s, account::token_validity);
    r = route(r, s, account::whoami);
    r = route(r, s, account::change_password);
    r = route(r, s, account::deactivate);
    r = route(r, s, account::openid_token);
    r = route(r, s, account::threepids);
    r = route(r, s, account::thirdparty_protocols);
    r = route(r, s, session::login);
    r = route(r, s, session::logout);
    r = route(r, s, session::logout_all);
    r = route(r, s, session::refresh);
    r = route(r, s, device::list);
    r = route(r, s, device::get);
    r = route(r, s, device::update);
    r = route(r, s, device::delete);
    r = route(r, s, device::delete_many);
    r = route_json(r, s, profile::get);
    r = route_json(r, s, profile::get_field);
    r = route_json(r, s, profile::set_field);
    r = route_json(r, s, profile::delete_field);
    r = route(r, s, account_data::set_global);
    r = route_json(r, s, account_data::get_global);
    r = route(r, s, account_data::set_room);
    r = route_json(r, s, account_data::get_room);
    r = route(r, s, sync::create);
    r = route_json(r, s, sync::get);

    // Rooms
    r = route(r, s, room::create);
    r = route(r, s, room::upgrade);
    r = route_json(r, s, room::event);
    r = route(r, s, room::list_aliases);
    r = route(r, s, room::timestamp_to_event);
    r = route(r, s, alias::create);
    r = route(r, s, alias::get);
    r = route(r, s, alias::delete);
    r = route(r, s, directory::get);
    r = route(r, s, directory::set);
    r = route(r, s, membership::join_by_id);
    r = route(r, s, membership::join);
    r = route(r, s, membership::knock);
    r = route(r, s, membership::leave);
    r = route(r, s, membership::invite);
    r = route(r, s, membership::kick);
    r = route(r, s, membership::ban);
    r = route(r, s, membership::unban);
    r = route(r, s, membership::forget);
    r = route(r, s, membership::joined);
    r = route_json(r, s, membership::joined_members);
    r = route_json(r, s, membership::members);
    r = route_json(r, s, state::all);
    r = route_json(r, s, state::one);
    r = route_json(r, s, state::send);
    r = route_json(r, s, message::send);
    r = route(r, s, message::redact);
    r = route_json(r, s, message::messages);
    r = route_json(r, s, message::context);
    r = route(r, s, typing::set);
    r = route_json(r, s, relations::all);
    r = route_json(r, s, relations::by_type);
    r = route_json(r, s, relations::by_type_and_event_type);
    r = route_json(r, s, relations::threads);
    r = route(r, s, receipt::create);
    r = route(r, s, receipt::read_markers);
    r = route(r, s, presence::set);
    r = route_json(r, s, presence::get);
    r = route(r, s, tag::create);
    r = route(r, s, tag::delete);
    r = route_json(r, s, tag::get);
    r = route(r, s, report::event);
    r = route(r, s, report::room);
    r = route_json(r, s, push::all);
    r = route_json(r, s, push::global);
    r = route_json(r, s, push::get);
    r = route(r, s, push::set);
    r = route(r, s, push::delete);
    r = route(r, s, push::get_enabled);
    r = route(r, s, push::set_enabled);
    r = route(r, s, push::get_actions);
    r = route(r, s, push::set_actions);
    r = route_json(r, s, push::pushers_list);
    r = route_json(r, s, push::pushers_set);
    r = route_json(r, s, push::notifications);
    r = route_json(r, s, sync::sync_v3);
    r = route_json(r, s, sync::sliding);

    // State events with an empty state key may be addressed without the trailing segment.
    for version in ["r0", "v3"] {
        for suffix in ["", "/"] {
            let path: &'static str = Box::leak(
                format!("/_matrix/client/{version}/rooms/{{room_id}}/state/{{event_type}}{suffix}")
                    .into_boxed_str(),
            );
            r = r.route(
                path,
                axum::routing::get(|State(server): State<Arc<Server>>, req: super::ruma::Ruma<c::state::get_state_event_for_key::v3::Request>| async move {
                    state::one(server, req).await.map(Json)
                })
                .put(|State(server): State<Arc<Server>>, req: super::ruma::Ruma<c::state::send_state_event::v3::Request>| async move {
                    state::send(server, req).await.map(Json)
                }),
            );
        }
    }

    // Media (issue 3)
    #[allow(deprecated)]
    {
        use super::client::media as m;
        use axum::routing::{post, put};
        use ruma::api::client::{authenticated_media as am, media as lm};
        r = route(r, s, m::config);
        r = route(r, s, m::config_legacy);
        r = route(r, s, m::create);
        r = route_json(r, s, m::preview);
        r = route_json(r, s, m::preview_legacy);
        r = m::route_raw::<lm::create_content::v3::Request>(r, s, post(m::upload));
        r = m::route_raw::<lm::create_content_async::v3::Request>(r, s, put(m::upload_to));
        r = m::route_raw::<am::get_content::v1::Request>(r, s, m::get(m::download));
        r = m::route_raw::<am::get_content_as_filename::v1::Request>(r, s, m::get(m::download_as));
        r = m::route_raw::<am::get_content_thumbnail::v1::Request>(r, s, m::get(m::thumbnail));
        // Deprecated unauthenticated downloads: frozen (404 M_NOT_FOUND).
        r = m::route_raw::<lm::get_content::v3::Request>(r, s, get(m::frozen));
        r = m::route_raw::<lm::get_content_as_filename::v3::Request>(r, s, get(m::frozen));
        r = m::route_raw::<lm::get_content_thumbnail::v3::Request>(r, s, get(m::frozen));
    }

    // Search, room directory, user directory, spaces (issue 3)
    {
        use super::client::{public_rooms, search, space, user_directory};
        r = route_json(r, s, search::search);
        r = route_json(r, s, public_rooms::get);
        r = route_json(r, s, public_rooms::post);
        r = route_json(r, s, user_directory::search);
        r = route_json(r, s, space::hierarchy);
        r = route_json(r, s, space::summary);
        // MSC3266's first unstable path, still used by some clients.
        r = r.route(
            "/_matrix/client/unstable/im.nheko.summary/summary/{room_id_or_alias}",
            get(
                |State(server): State<Arc<Server>>,
                 req: super::ruma::Ruma<c::room::get_summary::v1::Request>| async move {
                    space::summary(server, req).await.map(Json)
                },
            ),
        );
    }

    // End-to-end encryption (issue 4)
    {
        use super::client::{backup, keys, to_device};
        r = route_json(r, s, keys::upload);
        r = route_json(r, s, keys::query);
        r = route_json(r, s, keys::claim);
        r = route(r, s, keys::changes);
        r = route_json(r, s, keys::signing_upload);
        r = route_json(r, s, keys::signatures_upload);
        r = route(r, s, to_device::send);
        r = route_json(r, s, backup::create_version);
        r = route_json(r, s, backup::latest_version);
        r = route_json(r, s, backup::get_version);
        r = route_json(r, s, backup::update_version);
        r = route_json(r, s, backup::delete_version);
        r = route_json(r, s, backup::put_keys);
        r = route_json(r, s, backup::put_room_keys);
        r = route_json(r, s, backup::put_session_key);
        r = route_json(r, s, backup::get_keys);
        r = route_json(r, s, backup::get_room_keys);
        r = route_json(r, s, backup::get_session_key);
        r = route_json(r, s, backup::delete_keys);
        r = route_json(r, s, backup::delete_room_keys);
        r = route_json(r, s, backup::delete_session_key);
    }

    // Federation endpoints that are served on the client listener for now.
    r = route(r, s, federation::openid::userinfo);

    // The built-in SFU's LiveKit signalling.
    r = super::rtc::routes(r);
    r = super::rtc::jwt::routes(r);
    // Delayed events (MSC4140).
    r = super::client::delayed::routes(r);

    r = r
        .route("/health", get(|| async { "OK" }))
        .route(
            "/.well-known/matrix/client",
            get(|State(server): State<Arc<Server>>| async move {
                Json(discovery::well_known_client(&server))
            }),
        )
        .route(
            "/.well-known/matrix/server",
            get(|State(server): State<Arc<Server>>| async move {
                Json(discovery::well_known_server(&server))
            }),
        );
    finish(r, server)
}

/// The fallbacks (`404`/`405 M_UNRECOGNIZED`), request logs, panic catching and CORS every
/// listener's router gets.
pub fn finish(r: Router<Arc<Server>>, server: Arc<Server>) -> Router {
    let r = r
        .fallback(|| async { Error::unrecognized("Unrecognized request") })
        .method_not_allowed_fallback(|| async { Error::method_not_allowed() });

    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-requested-with"),
        ]);

    r.layer(middleware::from_fn(log_request))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("handler panicked");
                Error::unknown("Internal server error").into_response()
            },
        ))
        .layer(cors)
        .with_state(server)
}

static REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// One log line per request: id, method, path (never the query: it may hold a token), status,
/// latency.
async fn log_request(request: Request, next: Next) -> Response {
    let id = REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let start = Instant::now();
    let span = tracing::info_span!("request", id, %method, path = %path);
    let response = {
        let _enter = span.enter();
        drop(_enter);
        tracing::Instrument::instrument(next.run(request), span.clone()).await
    };
    let status = response.status().as_u16();
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    if path != "/health" {
        tracing::info!(parent: &span, status, latency_ms = format_args!("{latency_ms:.2}"), client = ?client, "handled");
    }
    response
}
