//! `GET /_matrix/federation/v1/media/download/{mediaId}` and `.../thumbnail/{mediaId}`: our
//! users' media for other servers, as `multipart/mixed` (metadata, then the bytes).

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Query, Request, State},
    response::{IntoResponse, Response},
};
use http::header;

use crate::{
    error::{Error, Result},
    media::thumbnail,
    server::Server,
};

/// The origin must sign the request like any other federation request.
async fn authenticate(server: &Arc<Server>, request: Request) -> Result<()> {
    // Only the head matters (a GET has no body); `Body` is not `Sync`, so it is dropped first.
    let (parts, _) = request.into_parts();
    crate::federation::authenticate(server, &parts.method, &parts.uri, &parts.headers, &[])
        .await
        .map(|_| ())
}

fn timeout(query: &HashMap<String, String>) -> Duration {
    let ms = query
        .get("timeout_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    Duration::from_millis(ms)
}

fn multipart_response(content_type: &str, filename: Option<&str>, bytes: &[u8]) -> Response {
    let (multipart_type, body) = crate::federation::media::multipart(content_type, filename, bytes);
    let mut response = Body::from(body).into_response();
    if let Ok(value) = multipart_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

pub async fn download(
    State(server): State<Arc<Server>>,
    Path(media_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response> {
    authenticate(&server, request).await?;
    let meta = server
        .media
        .find(&server, server.server_name(), &media_id, timeout(&query))
        .await?;
    let bytes = server.media.store().read(&meta.stored()).await?;
    Ok(multipart_response(
        &meta.content_type,
        meta.filename.as_deref(),
        &bytes,
    ))
}

pub async fn thumbnail(
    State(server): State<Arc<Server>>,
    Path(media_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response> {
    authenticate(&server, request).await?;
    let dimension = |name: &str| -> Result<u32> {
        query
            .get(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::missing_param(format!("{name} is required")))
    };
    let method = match query.get("method").map(String::as_str) {
        None | Some("scale") => thumbnail::Method::Scale,
        Some("crop") => thumbnail::Method::Crop,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown thumbnail method `{other}` (crop or scale)"
            )));
        }
    };
    let meta = server
        .media
        .find(&server, server.server_name(), &media_id, timeout(&query))
        .await?;
    let thumb = server
        .media
        .thumbnail(
            &server,
            (server.server_name().as_str(), &media_id),
            &meta,
            dimension("width")?,
            dimension("height")?,
            method,
        )
        .await?;
    let bytes = server.media.store().read(&thumb.stored()).await?;
    Ok(multipart_response(
        &thumb.content_type,
        Some(&thumb.filename()),
        &bytes,
    ))
}
