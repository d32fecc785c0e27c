//! The content repository: authenticated media (`/_matrix/client/v1/media/*`), uploads
//! (`/_matrix/media/v3/upload`, `/_matrix/media/v1/create`) and the deprecated unauthenticated
//! endpoints, which are frozen: no media is served through them (spec v1.11, "Client
//! behaviour"; all media here is uploaded after the freeze).
//!
//! Upload bodies are raw bytes, not JSON, so uploads have their own handlers instead of
//! [`Ruma`]; downloads and thumbnails use [`Ruma`] to parse and authenticate but answer with a
//! streamed file, not a ruma response.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Body,
    extract::{FromRequestParts, Query, RawPathParams, Request, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};
use http::{Method, header};
use ruma::{
    OwnedServerName, UInt,
    api::{
        IncomingRequest,
        client::{
            authenticated_media::{
                get_content, get_content_as_filename, get_content_thumbnail, get_media_config,
                get_media_preview,
            },
            media::{self as legacy, create_mxc_uri},
        },
    },
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::{
    api::ruma::{Ruma, access_token},
    error::{Error, Result},
    media::{
        MediaMeta, headers,
        store::Stored,
        thumbnail::{self, Thumbnail},
        upload::Upload,
    },
    server::Server,
    users::Session,
};

/// Registers `handler` on every path ruma lists for endpoint `R` (for handlers that do not
/// answer with `R`'s typed response: raw uploads and file downloads).
pub fn route_raw<R: IncomingRequest>(
    mut router: Router<Arc<Server>>,
    seen: &mut std::collections::HashSet<(Method, &'static str)>,
    handler: MethodRouter<Arc<Server>>,
) -> Router<Arc<Server>> {
    use ruma::api::path_builder::PathBuilder;
    for path in R::PATH_BUILDER.all_paths() {
        if seen.insert((R::METHOD, path)) {
            router = router.route(path, handler.clone());
        }
    }
    router
}

/// `GET` handler for the raw routes of `R`, parsing `R` with [`Ruma`].
pub fn get<R, F, Fut>(handler: F) -> MethodRouter<Arc<Server>>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: crate::api::ruma::AuthRequirement,
    F: Fn(Arc<Server>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response>> + Send + 'static,
{
    on(
        MethodFilter::GET,
        move |State(server): State<Arc<Server>>, request: Ruma<R>| {
            let handler = handler.clone();
            async move { handler(server, request).await }
        },
    )
}

fn authenticate(server: &Server, parts: &http::request::Parts) -> Result<Session> {
    let token = access_token(parts).ok_or_else(|| Error::missing_token("Missing access token"))?;
    server.users.authenticate(server, &token)
}

fn query(parts: &http::request::Parts) -> Result<HashMap<String, String>> {
    Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|_| Error::invalid_param("Invalid query string"))
}

fn upload_of(parts: &http::request::Parts, body: Body) -> Result<Upload> {
    let filename = query(parts)?
        .remove("filename")
        .and_then(|name| headers::clean_filename(&name));
    let declared_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Ok(Upload {
        content_type: headers::upload_content_type(parts.headers.get(header::CONTENT_TYPE)),
        filename,
        declared_length,
        body,
    })
}

/// `POST /_matrix/media/v3/upload`
pub async fn upload(State(server): State<Arc<Server>>, request: Request) -> Result<Json<Value>> {
    let (parts, body) = request.into_parts();
    let session = authenticate(&server, &parts)?;
    let upload = upload_of(&parts, body)?;
    let media_id = server
        .media
        .upload(&server, &session.user_id, None, upload)
        .await?;
    Ok(Json(json!({
        "content_uri": format!("mxc://{}/{media_id}", server.server_name())
    })))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
pub async fn upload_to(State(server): State<Arc<Server>>, request: Request) -> Result<Json<Value>> {
    let (mut parts, body) = request.into_parts();
    let session = authenticate(&server, &parts)?;
    let params = RawPathParams::from_request_parts(&mut parts, &server)
        .await
        .map_err(|_| Error::invalid_param("Invalid percent-encoding in the path"))?;
    let mut values = params.iter().map(|(_, v)| v.to_owned());
    let (Some(server_name), Some(media_id)) = (values.next(), values.next()) else {
        return Err(Error::invalid_param("Missing server name or media id"));
    };
    let server_name = OwnedServerName::try_from(server_name)
        .map_err(|_| Error::not_found("Unknown media ID: invalid server name"))?;
    let upload = upload_of(&parts, body)?;
    server
        .media
        .upload(
            &server,
            &session.user_id,
            Some((&server_name, &media_id)),
            upload,
        )
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/media/v1/create`
pub async fn create(
    server: Arc<Server>,
    request: Ruma<create_mxc_uri::v1::Request>,
) -> Result<create_mxc_uri::v1::Response> {
    let (media_id, expires_at) = server.media.create(&server, request.user()?)?;
    let uri = ruma::OwnedMxcUri::from(format!("mxc://{}/{media_id}", server.server_name()));
    let mut response = create_mxc_uri::v1::Response::new(uri);
    response.unused_expires_at = Some(ruma::MilliSecondsSinceUnixEpoch(
        UInt::new(expires_at).unwrap_or_default(),
    ));
    Ok(response)
}

fn upload_size(server: &Server) -> UInt {
    UInt::new(server.config.media.max_upload_size).unwrap_or(UInt::MAX)
}

/// `GET /_matrix/client/v1/media/config`
pub async fn config(
    server: Arc<Server>,
    _request: Ruma<get_media_config::v1::Request>,
) -> Result<get_media_config::v1::Response> {
    Ok(get_media_config::v1::Response::new(upload_size(&server)))
}

/// `GET /_matrix/media/v3/config` (deprecated, still served: it always required a token).
#[allow(deprecated)]
pub async fn config_legacy(
    server: Arc<Server>,
    _request: Ruma<legacy::get_media_config::v3::Request>,
) -> Result<legacy::get_media_config::v3::Response> {
    Ok(legacy::get_media_config::v3::Response::new(upload_size(
        &server,
    )))
}

/// `GET /_matrix/client/v1/media/preview_url`
pub async fn preview(
    server: Arc<Server>,
    request: Ruma<get_media_preview::v1::Request>,
) -> Result<Value> {
    let ts = request.body.ts.map(|ts| u64::from(ts.0));
    server
        .media
        .preview(&server, request.user()?, &request.body.url, ts)
        .await
}

/// `GET /_matrix/media/v3/preview_url` (deprecated, still served: it always required a token).
#[allow(deprecated)]
pub async fn preview_legacy(
    server: Arc<Server>,
    request: Ruma<legacy::get_media_preview::v3::Request>,
) -> Result<Value> {
    let ts = request.body.ts.map(|ts| u64::from(ts.0));
    server
        .media
        .preview(&server, request.user()?, &request.body.url, ts)
        .await
}

/// The deprecated unauthenticated downloads and thumbnails: frozen, per the spec, so media
/// uploaded after the freeze (all of it, here) is only served by the authenticated endpoints.
pub async fn frozen() -> Error {
    Error::not_found(
        "Unauthenticated media access is frozen: use /_matrix/client/v1/media/download or \
         /_matrix/client/v1/media/thumbnail with an access token",
    )
}

/// A stored file as a streamed response with the media headers.
async fn serve(
    server: &Server,
    stored: &Stored,
    content_type: &str,
    filename: Option<&str>,
    inline: bool,
) -> Result<Response> {
    let file = server.media.store().open(stored).await?;
    // Reads of up to 256 KiB: each is a trip to tokio's blocking pool.
    let chunk = usize::try_from(stored.size.clamp(1, 256 * 1024)).unwrap_or(256 * 1024);
    let body = Body::from_stream(futures::stream::unfold(file, move |mut file| async move {
        let mut buf = vec![0u8; chunk];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    }));
    let mut response = body.into_response();
    let headers_out = response.headers_mut();
    headers::apply(headers_out, content_type, filename, inline);
    headers_out.insert(header::CONTENT_LENGTH, stored.size.into());
    Ok(response)
}

async fn download_meta(
    server: &Server,
    server_name: &ruma::ServerName,
    media_id: &str,
    timeout: std::time::Duration,
) -> Result<MediaMeta> {
    server
        .media
        .find(server, server_name, media_id, timeout)
        .await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
pub async fn download(
    server: Arc<Server>,
    request: Ruma<get_content::v1::Request>,
) -> Result<Response> {
    let body = &request.body;
    let meta = download_meta(&server, &body.server_name, &body.media_id, body.timeout_ms).await?;
    serve(
        &server,
        &meta.stored(),
        &meta.content_type,
        meta.filename.as_deref(),
        true,
    )
    .await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub async fn download_as(
    server: Arc<Server>,
    request: Ruma<get_content_as_filename::v1::Request>,
) -> Result<Response> {
    let body = &request.body;
    let meta = download_meta(&server, &body.server_name, &body.media_id, body.timeout_ms).await?;
    serve(
        &server,
        &meta.stored(),
        &meta.content_type,
        Some(&body.filename),
        true,
    )
    .await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn thumbnail(
    server: Arc<Server>,
    request: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let body = &request.body;
    let method = match body.method.as_ref().map(|m| m.as_str()) {
        None | Some("scale") => thumbnail::Method::Scale,
        Some("crop") => thumbnail::Method::Crop,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown thumbnail method `{other}` (crop or scale)"
            )));
        }
    };
    let dimension = |v: UInt| u32::try_from(u64::from(v)).unwrap_or(u32::MAX);
    let meta = download_meta(&server, &body.server_name, &body.media_id, body.timeout_ms).await?;
    // Animated thumbnails are not generated: `animated=true` gets a still one, which the spec
    // allows ("if possible and supported").
    let thumb: Thumbnail = server
        .media
        .thumbnail(
            &server,
            (body.server_name.as_str(), &body.media_id),
            &meta,
            dimension(body.width),
            dimension(body.height),
            method,
        )
        .await?;
    serve(
        &server,
        &thumb.stored(),
        &thumb.content_type,
        Some(&thumb.filename()),
        true,
    )
    .await
}
