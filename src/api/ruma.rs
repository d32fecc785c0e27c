//! The bridge between axum and ruma's endpoint types: [`Ruma<R>`] extracts and authenticates a
//! request of endpoint `R`, [`route`] registers a handler on every path ruma knows for `R`.

use std::{collections::HashSet, future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::{Bytes, BytesMut};
use http::{Method, header};
use ruma::{
    OwnedDeviceId, OwnedUserId, UserId,
    api::{
        IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional,
            NoAccessToken, NoAuthentication,
        },
        error::{DeserializationError, FromHttpRequestError},
    },
};

use crate::{
    error::{Error, Result},
    server::Server,
    users::Session,
};

/// How an endpoint authenticates, per ruma's `Authentication` type.
pub trait AuthRequirement {
    const KIND: AuthKind;
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    None,
    Required,
    Optional,
    /// Federation request signatures (the federation listener handles these).
    Server,
}

impl AuthRequirement for NoAuthentication {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthRequirement for NoAccessToken {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthRequirement for AccessToken {
    const KIND: AuthKind = AuthKind::Required;
}
impl AuthRequirement for AccessTokenOptional {
    const KIND: AuthKind = AuthKind::Optional;
}
impl AuthRequirement for AppserviceToken {
    const KIND: AuthKind = AuthKind::Required;
}
impl AuthRequirement for AppserviceTokenOptional {
    const KIND: AuthKind = AuthKind::Optional;
}
impl AuthRequirement for ruma::api::federation::authentication::ServerSignatures {
    const KIND: AuthKind = AuthKind::Server;
}

/// A parsed, authenticated request for endpoint `R`.
pub struct Ruma<R> {
    pub body: R,
    pub session: Option<Session>,
    pub client: SocketAddr,
    /// The raw JSON body, for the few handlers that need fields ruma does not model.
    pub json: Bytes,
    /// The raw query string, for parameters whose presence matters (ruma only gives values).
    pub query: String,
    /// The server that signed a federation request (endpoints with `X-Matrix` auth).
    pub origin: Option<ruma::OwnedServerName>,
}

impl<R> Ruma<R> {
    /// The origin server of a federation request.
    pub fn origin(&self) -> Result<&ruma::ServerName> {
        self.origin
            .as_deref()
            .ok_or_else(|| Error::forbidden("Not a signed federation request"))
    }

    /// The authenticated user (only `None` on endpoints without required auth).
    pub fn user(&self) -> Result<&UserId> {
        self.session
            .as_ref()
            .map(|s| &*s.user_id)
            .ok_or_else(|| Error::missing_token("Missing access token"))
    }

    pub fn device(&self) -> Result<&ruma::DeviceId> {
        self.session
            .as_ref()
            .map(|s| &*s.device_id)
            .ok_or_else(|| Error::missing_token("Missing access token"))
    }

    pub fn owned_user(&self) -> Result<OwnedUserId> {
        self.user().map(ToOwned::to_owned)
    }

    pub fn owned_device(&self) -> Result<OwnedDeviceId> {
        self.device().map(ToOwned::to_owned)
    }
}

/// The access token from `Authorization: Bearer` or the deprecated `access_token` query parameter.
pub fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(value) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    parts.uri.query().and_then(|query| {
        form_pairs(query)
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v)
    })
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(k)?, percent_decode(v)?))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Reads a body up to the configured cap: `413 M_TOO_LARGE` from `Content-Length` alone when it
/// is over the cap, or as soon as a streamed body passes it.
pub async fn read_body(
    server: &Server,
    parts: &http::request::Parts,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        // Answered without reading the body, so the connection cannot be reused.
        return Err(Error::too_large_closing(format!(
            "Request body is larger than {limit} bytes"
        )));
    }
    let _ = server;
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large || error.to_string().contains("length limit") {
            Error::too_large_closing(format!("Request body is larger than {limit} bytes"))
        } else {
            Error::bad_json("Could not read the request body")
        }
    })
}

impl<R> FromRequest<Arc<Server>> for Ruma<R>
where
    R: IncomingRequest + Send,
    R::Authentication: AuthRequirement,
{
    type Rejection = Error;

    async fn from_request(request: Request, server: &Arc<Server>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |c| c.0);
        let mut path_args: Vec<String> =
            match RawPathParams::from_request_parts(&mut parts, server).await {
                Ok(params) => params.iter().map(|(_, v)| v.to_owned()).collect(),
                Err(_) => return Err(Error::invalid_param("Invalid percent-encoding in the path")),
            };
        // Routes registered without a trailing parameter (state events with an empty state
        // key: `/state/{type}` and `/state/{type}/`) get it as the empty string.
        let expected = <R as ruma::api::Metadata>::_path_parameters().len();
        while path_args.len() < expected {
            path_args.push(String::new());
        }
        let token = access_token(&parts);
        let body = read_body(server, &parts, body, server.config.limits.max_request_body).await?;

        let origin = match <R::Authentication as AuthRequirement>::KIND {
            AuthKind::Server => Some(
                crate::federation::authenticate(
                    server,
                    &parts.method,
                    &parts.uri,
                    &parts.headers,
                    &body,
                )
                .await?,
            ),
            _ => None,
        };
        let session = match (<R::Authentication as AuthRequirement>::KIND, token) {
            (AuthKind::Required, None) => return Err(Error::missing_token("Missing access token")),
            (AuthKind::Required | AuthKind::Optional, Some(token)) => {
                Some(server.users.authenticate(server, &token)?)
            }
            _ => None,
        };

        // Parsed fully (not skimmed): numbers out of range, lone surrogates and nesting deeper
        // than serde_json's limit are not JSON any later step can use.
        if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            return Err(Error::not_json("Request body is not valid JSON"));
        }

        // An empty body on POST/PUT means `{}` (clients omit it for e.g. `/join`, as Synapse allows).
        let body = if body.is_empty() && matches!(parts.method, Method::POST | Method::PUT) {
            Bytes::from_static(b"{}")
        } else {
            body
        };
        let query = parts.uri.query().unwrap_or_default().to_owned();
        precheck(&parts, &body)?;
        let request = http::Request::from_parts(parts, &body[..]);
        let path_refs: Vec<&str> = path_args.iter().map(String::as_str).collect();
        // ruma's deserialisers can panic on some malformed input (e.g. a login body without
        // `type`); that is a bad request, not a server error.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            R::try_from_http_request(request, &path_refs)
        }))
        .map_err(|_| Error::bad_json("Malformed request body"))?
        .map_err(map_parse_error)?;
        Ok(Self {
            body: parsed,
            session,
            client,
            json: body,
            query,
            origin,
        })
    }
}

/// Checks ruma's deserialisers do not handle gracefully (they would panic).
fn precheck(parts: &http::request::Parts, body: &[u8]) -> Result<()> {
    // `LoginInfo` indexes the body by `type` without checking it exists.
    if parts.method == Method::POST && parts.uri.path().ends_with("/login") {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if !value.get("type").is_some_and(serde_json::Value::is_string) {
            return Err(Error::bad_json("Login requires a `type`"));
        }
    }
    Ok(())
}

fn map_parse_error(error: FromHttpRequestError) -> Error {
    match error {
        FromHttpRequestError::MethodMismatch { .. } => Error::method_not_allowed(),
        FromHttpRequestError::Deserialization(error) => match error {
            DeserializationError::Json(e) => Error::bad_json(format!("Invalid request body: {e}")),
            DeserializationError::Ident(e) => {
                Error::invalid_param(format!("Invalid identifier: {e}"))
            }
            DeserializationError::Query(e) => {
                Error::invalid_param(format!("Invalid query parameter: {e}"))
            }
            other => Error::invalid_param(format!("Invalid request: {other}")),
        },
        other => Error::bad_json(format!("Invalid request: {other}")),
    }
}

/// A ruma response as an axum response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => response
                .map(|body| axum::body::Body::from(body.freeze()))
                .into_response(),
            Err(error) => {
                Error::internal(format_args!("response serialisation: {error}")).into_response()
            }
        }
    }
}

/// Registers `handler` for every path (stable and unstable) ruma lists for endpoint `R`.
pub fn route<R, F, Fut>(
    mut router: Router<Arc<Server>>,
    seen: &mut HashSet<(Method, &'static str)>,
    handler: F,
) -> Router<Arc<Server>>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthRequirement,
    R::OutgoingResponse: Send,
    F: Fn(Arc<Server>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
{
    use ruma::api::path_builder::PathBuilder;
    let filter = MethodFilter::try_from(R::METHOD).unwrap_or(MethodFilter::GET);
    for path in R::PATH_BUILDER.all_paths() {
        if !seen.insert((R::METHOD, path)) {
            continue;
        }
        let handler = handler.clone();
        let method_router = on(
            filter,
            move |axum::extract::State(server): axum::extract::State<Arc<Server>>,
                  request: Ruma<R>| {
                let handler = handler.clone();
                async move { handler(server, request).await.map(RumaResponse) }
            },
        );
        router = router.route(path, method_router);
    }
    router
}

/// Registers a handler whose response is plain JSON (for responses built from stored JSON,
/// like `/sync`, rather than ruma's typed responses).
pub fn route_json<R, F, Fut>(
    mut router: Router<Arc<Server>>,
    seen: &mut HashSet<(Method, &'static str)>,
    handler: F,
) -> Router<Arc<Server>>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthRequirement,
    F: Fn(Arc<Server>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<serde_json::Value>> + Send + 'static,
{
    use ruma::api::path_builder::PathBuilder;
    let filter = MethodFilter::try_from(R::METHOD).unwrap_or(MethodFilter::GET);
    for path in R::PATH_BUILDER.all_paths() {
        if !seen.insert((R::METHOD, path)) {
            continue;
        }
        let handler = handler.clone();
        let method_router = on(
            filter,
            move |axum::extract::State(server): axum::extract::State<Arc<Server>>,
                  request: Ruma<R>| {
                let handler = handler.clone();
                async move { handler(server, request).await.map(axum::Json) }
            },
        );
        router = router.route(path, method_router);
    }
    router
}
