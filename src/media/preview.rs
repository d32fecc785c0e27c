//! URL previews: fetch a page, read its OpenGraph data, rehost its image as local media.
//!
//! SSRF protection: every address the fetcher connects to passes [`IpFilter`] — host names
//! through our own resolver (which returns only allowed addresses, so the connection goes to
//! an address that was checked: no DNS rebinding between check and connect), IP literals
//! before the request, and the peer address of each response once more. Redirects are
//! followed by hand (at most [`MAX_REDIRECTS`]), each hop checked the same way. Bodies are
//! capped at `url_preview_max_bytes` while streaming, and the whole fetch at
//! `url_preview_timeout_ms`. Results are cached for the hour (`url_preview`).

use std::{
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::StatusCode;
use reqwest::{Url, header};
use ruma::UserId;
use serde_json::{Map, Value};

use super::{Media, html};
use crate::cidr::{GuardedResolver, IpFilter, Refused};
use crate::{
    error::{Error, Result},
    server::Server,
    storage::keys::{self, Key},
    users::now_ms,
};

pub const MAX_REDIRECTS: usize = 5;
const HOUR_MS: u64 = 60 * 60 * 1000;
const MAX_URL_LEN: usize = 4096;
const USER_AGENT: &str = concat!(
    "Sparks/",
    env!("CARGO_PKG_VERSION"),
    " (Matrix homeserver; URL preview)"
);

pub struct Previewer {
    filter: Arc<IpFilter>,
    /// Built on first use: building a TLS client costs more than the whole server start.
    client: OnceLock<std::result::Result<reqwest::Client, String>>,
}

fn refused(what: impl std::fmt::Display) -> Error {
    Error::forbidden(format!("URL preview refused: {what}"))
}

fn fetch_failed(what: impl std::fmt::Display) -> Error {
    Error::new(
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        format!("Could not fetch the URL for a preview: {what}"),
    )
}

fn too_big(max: u64) -> Error {
    Error::new(
        StatusCode::BAD_GATEWAY,
        "M_TOO_LARGE",
        format!("The page is larger than this server previews ({max} bytes)"),
    )
}

/// A fetched resource.
struct Fetched {
    url: Url,
    content_type: String,
    body: Vec<u8>,
}

impl Previewer {
    pub fn new(filter: IpFilter) -> Self {
        Self {
            filter: Arc::new(filter),
            client: OnceLock::new(),
        }
    }

    fn client(&self, timeout: Duration) -> Result<&reqwest::Client> {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .dns_resolver(Arc::new(GuardedResolver::new(self.filter.clone())))
                    .connect_timeout(timeout)
                    .user_agent(USER_AGENT)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::internal(format_args!("URL preview client: {e}")))
    }

    /// Checks the parts of a URL we can check before connecting: scheme and IP literals.
    fn check_url(&self, url: &Url) -> Result<()> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_param(
                "Only http and https URLs can be previewed",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::invalid_param("The URL has no host"))?;
        // IP literals (`[::1]` with brackets); names are checked by the resolver.
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        match literal {
            Ok(ip) if !self.filter.allows(ip) => Err(refused(format_args!(
                "{ip} is not an address previews may reach"
            ))),
            _ => Ok(()),
        }
    }

    /// GET with redirects followed by hand, every hop checked; the body capped at `max`.
    async fn fetch(&self, url: Url, max: u64, timeout: Duration) -> Result<Fetched> {
        let client = self.client(timeout)?;
        let work = async {
            let mut url = url;
            for _ in 0..=MAX_REDIRECTS {
                self.check_url(&url)?;
                let mut response = client
                    .get(url.clone())
                    .header(
                        header::ACCEPT,
                        "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5",
                    )
                    .send()
                    .await
                    .map_err(|e| self.request_error(&e))?;
                if let Some(peer) = response.remote_addr()
                    && !self.filter.allows(peer.ip())
                {
                    return Err(refused(format_args!(
                        "{} is not an address previews may reach",
                        peer.ip()
                    )));
                }
                let status = response.status();
                if status.is_redirection() {
                    let location = response
                        .headers()
                        .get(header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .ok_or_else(|| fetch_failed(format!("{status} without a Location")))?;
                    url = url
                        .join(location)
                        .map_err(|_| fetch_failed("redirect to an invalid URL"))?;
                    continue;
                }
                if !status.is_success() {
                    return Err(fetch_failed(format!("the server answered {status}")));
                }
                if response.content_length().is_some_and(|len| len > max) {
                    return Err(too_big(max));
                }
                let content_type = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let mut body = Vec::new();
                while let Some(chunk) =
                    response.chunk().await.map_err(|e| self.request_error(&e))?
                {
                    if body.len() as u64 + chunk.len() as u64 > max {
                        return Err(too_big(max));
                    }
                    body.extend_from_slice(&chunk);
                }
                return Ok(Fetched {
                    url,
                    content_type,
                    body,
                });
            }
            Err(fetch_failed(format!("more than {MAX_REDIRECTS} redirects")))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| fetch_failed("timed out"))?
    }

    fn request_error(&self, error: &reqwest::Error) -> Error {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(refusal) = e.downcast_ref::<Refused>() {
                return refused(refusal);
            }
            source = e.source();
        }
        if error.is_timeout() {
            return fetch_failed("timed out");
        }
        if error.is_connect() {
            return fetch_failed("could not connect");
        }
        fetch_failed("the request failed")
    }
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn cache_key(url: &str, hour: u64) -> Vec<u8> {
    Key::new().s(url).n(hour).build()
}

impl Media {
    /// `GET /_matrix/client/v1/media/preview_url`: the OpenGraph data of `url` (cached for the
    /// hour), with `og:image` rehosted as local media.
    pub async fn preview(
        &self,
        server: &Server,
        user: &UserId,
        url: &str,
        ts: Option<u64>,
    ) -> Result<Value> {
        if !self.config.url_preview_enabled {
            return Err(Error::forbidden("URL previews are disabled on this server"));
        }
        if url.len() > MAX_URL_LEN {
            return Err(Error::invalid_param("The URL is too long"));
        }
        let mut parsed =
            Url::parse(url).map_err(|e| Error::invalid_param(format!("Invalid URL: {e}")))?;
        parsed.set_fragment(None);
        self.previewer.check_url(&parsed)?;
        let key_url = parsed.to_string();

        let now = now_ms();
        let hour = now / HOUR_MS;
        let wanted = ts.map_or(hour, |ts| ts.min(now) / HOUR_MS);
        for candidate in [wanted, hour] {
            if let Some(raw) = server
                .maps
                .url_preview
                .get(cache_key(&key_url, candidate))?
            {
                return Ok(serde_json::from_slice(&raw)?);
            }
        }

        let timeout = Duration::from_millis(self.config.url_preview_timeout_ms);
        let max = self.config.url_preview_max_bytes;
        let page = self.previewer.fetch(parsed, max, timeout).await?;
        let kind = essence(&page.content_type);
        let mut og = Map::new();
        if kind.starts_with("image/") {
            self.rehost_image(server, user, &page, &mut og).await;
        } else if kind == "text/html" || kind == "application/xhtml+xml" || kind.is_empty() {
            let text = html::decode_text(&page.body, &page.content_type);
            og = html::opengraph(&text, &page.url);
            let image_url = og
                .remove("og:image")
                .and_then(|v| v.as_str().and_then(|s| Url::parse(s).ok()));
            if let Some(image_url) = image_url {
                let max_image = max.min(self.config.max_upload_size);
                match self.previewer.fetch(image_url, max_image, timeout).await {
                    Ok(image) if essence(&image.content_type).starts_with("image/") => {
                        self.rehost_image(server, user, &image, &mut og).await;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "preview image not fetched"),
                }
            }
        }
        let preview = Value::Object(og);

        let mut batch = server.db.batch();
        let prefix = Key::new().s(&key_url).prefix();
        for (key, _) in server.maps.url_preview.scan_prefix(prefix) {
            if keys::tail_u64(&key).is_some_and(|h| h < hour) {
                batch.delete(&server.maps.url_preview, key);
            }
        }
        batch.put(
            &server.maps.url_preview,
            cache_key(&key_url, hour),
            serde_json::to_vec(&preview)?,
        );
        server.db.commit(batch)?;
        Ok(preview)
    }

    /// Stores a fetched image as local media and describes it in `og` (`og:image` as an
    /// `mxc://` URI, its size, type and dimensions). Failures leave `og` without an image.
    async fn rehost_image(
        &self,
        server: &Server,
        user: &UserId,
        image: &Fetched,
        og: &mut Map<String, Value>,
    ) {
        if image.body.len() as u64 > self.config.max_upload_size {
            return;
        }
        let content_type = essence(&image.content_type);
        let filename = image
            .url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .and_then(super::headers::clean_filename);
        match self
            .store_bytes(server, user, &image.body, content_type.clone(), filename)
            .await
        {
            Ok((media_id, stored)) => {
                og.insert(
                    "og:image".into(),
                    Value::String(format!("mxc://{}/{media_id}", server.server_name())),
                );
                og.insert("matrix:image:size".into(), Value::from(stored.size));
                og.insert("og:image:type".into(), Value::String(content_type));
                let dimensions = image::ImageReader::new(std::io::Cursor::new(&image.body))
                    .with_guessed_format()
                    .ok()
                    .and_then(|r| r.into_dimensions().ok());
                if let Some((width, height)) = dimensions {
                    og.insert("og:image:width".into(), Value::from(width));
                    og.insert("og:image:height".into(), Value::from(height));
                }
            }
            Err(error) => tracing::warn!(%error, "preview image not stored"),
        }
    }
}
