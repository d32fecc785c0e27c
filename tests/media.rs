//! The content repository over HTTP: uploads (direct and asynchronous), authenticated
//! downloads and thumbnails, the frozen legacy endpoints, security headers, content-addressed
//! storage, and URL previews with their SSRF protection.

mod common;

use std::{
    collections::HashMap,
    io::Cursor,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use common::{TestServer, User, assert_error};
use image::{DynamicImage, ImageFormat, RgbImage};
use parking_lot::Mutex;
use reqwest::{StatusCode, header};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V1: &str = "/_matrix/client/v1/media";
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; object-src 'self';";

/// A server whose media lives in its own temporary directory (`extra` goes into `[media]`).
struct MediaServer {
    server: TestServer,
    media_dir: tempfile::TempDir,
    http: reqwest::Client,
}

async fn start(extra_media: &str) -> MediaServer {
    let media_dir = tempfile::tempdir().expect("media dir");
    let config = format!(
        "[ratelimit]\nenabled = false\n[media]\npath = \"{}\"\n{extra_media}\n",
        media_dir.path().display()
    );
    MediaServer {
        server: TestServer::start_with(&config).await,
        media_dir,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    }
}

struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    bytes: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    fn pair(&self) -> (StatusCode, Value) {
        (self.status, self.json())
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

impl MediaServer {
    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            bytes: response.bytes().await.expect("body").to_vec(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.http.get(self.server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    async fn upload(
        &self,
        user: &User,
        bytes: &[u8],
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> Reply {
        let mut request = self
            .http
            .post(self.server.url("/_matrix/media/v3/upload"))
            .bearer_auth(&user.token)
            .body(bytes.to_vec());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(filename) = filename {
            request = request.query(&[("filename", filename)]);
        }
        self.send(request).await
    }

    /// Uploads and returns the `mxc://` URI's `server/media_id` part.
    async fn upload_ok(&self, user: &User, bytes: &[u8], content_type: &str) -> String {
        let reply = self.upload(user, bytes, Some(content_type), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        mxc_path(&reply.json()["content_uri"])
    }

    /// Content files in the store (everything but `tmp/`).
    fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|n| n != "tmp") {
                        walk(&path, out);
                    }
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.media_dir.path(), &mut out);
        out.sort();
        out
    }

    fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.media_dir.path().join("tmp")).map_or(0, |d| d.count())
    }
}

fn mxc_path(uri: &Value) -> String {
    uri.as_str()
        .and_then(|s| s.strip_prefix("mxc://"))
        .unwrap_or_else(|| panic!("not an mxc URI: {uri}"))
        .to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn assert_security_headers(reply: &Reply) {
    assert_eq!(reply.header("content-security-policy"), CSP);
    assert_eq!(reply.header("x-content-type-options"), "nosniff");
    assert_eq!(reply.header("cross-origin-resource-policy"), "cross-origin");
}

#[tokio::test]
async fn upload_and_download_round_trip() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let bytes = noise(300_000, 1);
    let reply = media
        .upload(&alice, &bytes, Some("text/plain"), Some("notes.txt"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    let uri = reply.json()["content_uri"]
        .as_str()
        .expect("uri")
        .to_owned();
    assert!(uri.starts_with("mxc://localhost/"), "{uri}");
    let path = mxc_path(&Value::String(uri));

    let reply = media
        .get(&format!("{V1}/download/{path}"), Some(&alice.token))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.bytes, bytes, "downloaded bytes differ");
    assert_eq!(reply.header("content-type"), "text/plain");
    assert_eq!(
        reply.header("content-disposition"),
        "inline; filename=\"notes.txt\""
    );
    assert_eq!(reply.header("content-length"), bytes.len().to_string());
    assert_security_headers(&reply);

    // The file name in the path replaces the uploaded one.
    let reply = media
        .get(
            &format!("{V1}/download/{path}/other%20name.txt"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.bytes, bytes);
    assert_eq!(
        reply.header("content-disposition"),
        "inline; filename=\"other name.txt\""
    );
    // Non-ASCII names are encoded per RFC 6266 / 8187.
    let reply = media
        .get(
            &format!("{V1}/download/{path}/gr%C3%BC%C3%9Fe.txt"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        reply.header("content-disposition"),
        "inline; filename=\"gr__e.txt\"; filename*=utf-8''gr%C3%BC%C3%9Fe.txt"
    );

    // Without a file name at upload, the header has none; without a type, octet-stream.
    let bob = media.server.register("bob").await;
    let reply = media.upload(&bob, b"raw bytes", None, None).await;
    let path = mxc_path(&reply.json()["content_uri"]);
    let reply = media
        .get(&format!("{V1}/download/{path}"), Some(&alice.token))
        .await;
    assert_eq!(reply.bytes, b"raw bytes");
    assert_eq!(reply.header("content-type"), "application/octet-stream");
    assert_eq!(reply.header("content-disposition"), "attachment");

    // An empty upload is content too.
    let path = media.upload_ok(&bob, b"", "text/plain").await;
    let reply = media
        .get(&format!("{V1}/download/{path}"), Some(&bob.token))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.bytes.is_empty());

    let reply = media.get(&format!("{V1}/config"), Some(&alice.token)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["m.upload.size"], 50 * 1024 * 1024);
}

#[tokio::test]
async fn identical_uploads_share_one_file() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let bob = media.server.register("bob").await;
    let bytes = noise(100_000, 2);
    let first = media.upload_ok(&alice, &bytes, "image/png").await;
    let second = media
        .upload(&bob, &bytes, Some("application/pdf"), Some("copy.pdf"))
        .await;
    let second = mxc_path(&second.json()["content_uri"]);
    assert_ne!(first, second, "each upload gets its own media id");
    let files = media.stored_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let hash = sha256_hex(&bytes);
    assert_eq!(
        files[0],
        media
            .media_dir
            .path()
            .join(&hash[0..2])
            .join(&hash[2..4])
            .join(&hash)
    );
    assert_eq!(media.tmp_files(), 0);
    // Each media id keeps its own type and name.
    let reply = media
        .get(&format!("{V1}/download/{second}"), Some(&alice.token))
        .await;
    assert_eq!(reply.bytes, bytes);
    assert_eq!(reply.header("content-type"), "application/pdf");
    assert_eq!(
        reply.header("content-disposition"),
        "attachment; filename=\"copy.pdf\""
    );
    let reply = media
        .get(&format!("{V1}/download/{first}"), Some(&alice.token))
        .await;
    assert_eq!(reply.header("content-type"), "image/png");

    media
        .upload_ok(&alice, &noise(100_000, 3), "image/png")
        .await;
    assert_eq!(media.stored_files().len(), 2);
}

#[tokio::test]
async fn v1_endpoints_require_authentication() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let path = media.upload_ok(&alice, b"secret", "text/plain").await;
    for endpoint in [
        format!("{V1}/config"),
        format!("{V1}/download/{path}"),
        format!("{V1}/download/{path}/x.txt"),
        format!("{V1}/thumbnail/{path}?width=32&height=32"),
        format!("{V1}/preview_url?url=https%3A%2F%2Fexample.org"),
        "/_matrix/media/v3/config".to_owned(),
        "/_matrix/media/v3/preview_url?url=https%3A%2F%2Fexample.org".to_owned(),
    ] {
        let reply = media.get(&endpoint, None).await;
        assert_error(&reply.pair(), 401, "M_MISSING_TOKEN");
        let reply = media.get(&endpoint, Some("not-a-token")).await;
        assert_error(&reply.pair(), 401, "M_UNKNOWN_TOKEN");
    }
    let reply = media
        .send(
            media
                .http
                .post(media.server.url("/_matrix/media/v3/upload"))
                .body("x"),
        )
        .await;
    assert_error(&reply.pair(), 401, "M_MISSING_TOKEN");
    let reply = media
        .send(
            media
                .http
                .post(media.server.url("/_matrix/media/v1/create")),
        )
        .await;
    assert_error(&reply.pair(), 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn uploads_over_the_limit_are_too_large() {
    let media = start("max_upload_size = 100000").await;
    let alice = media.server.register("alice").await;
    let reply = media.get(&format!("{V1}/config"), Some(&alice.token)).await;
    assert_eq!(reply.json()["m.upload.size"], 100_000);

    // Declared by Content-Length: refused without reading the body.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let response = fresh
        .post(media.server.url("/_matrix/media/v3/upload"))
        .bearer_auth(&alice.token)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(noise(150_000, 4))
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_error(&(status, body), 413, "M_TOO_LARGE");

    // Streamed (chunked, no length): aborted once it passes the limit.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", media.server.port))
        .await
        .expect("connect");
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        alice.token
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = noise(10_000, 5);
    for _ in 0..15 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        if stream.write_all(&piece).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("M_TOO_LARGE"), "{text}");

    // Nothing of the refused uploads is kept.
    assert!(media.stored_files().is_empty());
    assert_eq!(media.tmp_files(), 0);

    // Exactly the limit is fine.
    media
        .upload_ok(&alice, &noise(100_000, 6), "application/octet-stream")
        .await;
    assert_eq!(media.stored_files().len(), 1);
}

#[tokio::test]
async fn asynchronous_upload() {
    let media = start("max_pending_uploads = 3").await;
    let alice = media.server.register("alice").await;
    let bob = media.server.register("bob").await;
    let create = |user: &User| {
        media.send(
            media
                .http
                .post(media.server.url("/_matrix/media/v1/create"))
                .bearer_auth(&user.token),
        )
    };
    let reply = create(&alice).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    let body = reply.json();
    let path = mxc_path(&body["content_uri"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    let expires = body["unused_expires_at"]
        .as_u64()
        .expect("unused_expires_at");
    assert!(
        expires > now + 23 * 3600 * 1000 && expires < now + 25 * 3600 * 1000,
        "{expires}"
    );

    // Not uploaded yet: a short wait ends in 504 M_NOT_YET_UPLOADED.
    let reply = media
        .get(
            &format!("{V1}/download/{path}?timeout_ms=100"),
            Some(&alice.token),
        )
        .await;
    assert_error(&reply.pair(), 504, "M_NOT_YET_UPLOADED");
    let reply = media
        .get(
            &format!("{V1}/thumbnail/{path}?width=10&height=10&timeout_ms=50"),
            Some(&alice.token),
        )
        .await;
    assert_error(&reply.pair(), 504, "M_NOT_YET_UPLOADED");

    // A longer wait is answered as soon as the content arrives.
    let waiter = {
        let url = media
            .server
            .url(&format!("{V1}/download/{path}?timeout_ms=10000"));
        let token = alice.token.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("download");
            let status = response.status();
            let bytes = response.bytes().await.expect("body").to_vec();
            (status, bytes, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let put = |user: &User, path: &str, bytes: &[u8]| {
        media.send(
            media
                .http
                .put(
                    media
                        .server
                        .url(&format!("/_matrix/media/v3/upload/{path}")),
                )
                .bearer_auth(&user.token)
                .header(header::CONTENT_TYPE, "text/plain")
                .query(&[("filename", "late.txt")])
                .body(bytes.to_vec()),
        )
    };
    // Only the creator may upload.
    assert_error(
        &put(&bob, &path, b"intruder").await.pair(),
        403,
        "M_FORBIDDEN",
    );
    let reply = put(&alice, &path, b"finally here").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    assert_eq!(reply.json(), serde_json::json!({}));
    let (status, bytes, elapsed) = waiter.await.expect("waiter");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"finally here");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // Once uploaded, never again.
    assert_error(
        &put(&alice, &path, b"again").await.pair(),
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
    );
    let reply = media
        .get(&format!("{V1}/download/{path}"), Some(&bob.token))
        .await;
    assert_eq!(reply.bytes, b"finally here");
    assert_eq!(
        reply.header("content-disposition"),
        "inline; filename=\"late.txt\""
    );
    // Ids that were never created.
    assert_error(
        &put(&alice, "localhost/neverCreated", b"x").await.pair(),
        404,
        "M_NOT_FOUND",
    );
    let reply = media
        .get(
            &format!("{V1}/download/localhost/neverCreated?timeout_ms=5000"),
            Some(&alice.token),
        )
        .await;
    assert_error(&reply.pair(), 404, "M_NOT_FOUND");

    // At most `max_pending_uploads` pending ids per user.
    for _ in 0..3 {
        assert_eq!(create(&bob).await.status, StatusCode::OK);
    }
    assert_error(&create(&bob).await.pair(), 429, "M_LIMIT_EXCEEDED");
    assert_eq!(create(&alice).await.status, StatusCode::OK);
}

fn test_image(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    }))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let image = match format {
        ImageFormat::Gif => DynamicImage::ImageRgba8(image.to_rgba8()),
        _ => image.clone(),
    };
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .expect("encode test image");
    bytes
}

async fn thumbnail(media: &MediaServer, user: &User, path: &str, query: &str) -> Reply {
    media
        .get(&format!("{V1}/thumbnail/{path}?{query}"), Some(&user.token))
        .await
}

fn decoded(reply: &Reply) -> DynamicImage {
    image::load_from_memory(&reply.bytes).expect("thumbnail decodes")
}

#[tokio::test]
async fn thumbnails_of_each_format() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let source = test_image(200, 100);
    for (format, mime, thumb_mime) in [
        (ImageFormat::Png, "image/png", "image/png"),
        (ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (ImageFormat::Gif, "image/gif", "image/png"),
        (ImageFormat::WebP, "image/webp", "image/png"),
    ] {
        let path = media
            .upload_ok(&alice, &encode(&source, format), mime)
            .await;

        let reply = thumbnail(&media, &alice, &path, "width=32&height=32&method=crop").await;
        assert_eq!(reply.status, StatusCode::OK, "{mime}: {:?}", reply.json());
        assert_eq!(reply.header("content-type"), thumb_mime, "{mime}");
        assert!(
            reply
                .header("content-disposition")
                .starts_with("inline; filename=\"thumbnail."),
            "{}",
            reply.header("content-disposition")
        );
        assert_security_headers(&reply);
        let image = decoded(&reply);
        assert_eq!((image.width(), image.height()), (32, 32), "{mime} crop");

        let reply = thumbnail(&media, &alice, &path, "width=64&height=64&method=scale").await;
        assert_eq!(reply.status, StatusCode::OK, "{mime}");
        let image = decoded(&reply);
        assert_eq!((image.width(), image.height()), (64, 32), "{mime} scale");

        // Method defaults to scale.
        let reply = thumbnail(&media, &alice, &path, "width=100&height=100").await;
        let image = decoded(&reply);
        assert_eq!((image.width(), image.height()), (100, 50), "{mime} default");

        // Crop keeps the requested aspect ratio.
        let reply = thumbnail(&media, &alice, &path, "width=96&height=48&method=crop").await;
        let image = decoded(&reply);
        assert_eq!((image.width(), image.height()), (96, 48), "{mime} crop 2:1");

        // Never upscaled: an image no larger than asked comes back at its size (JPEG as it
        // is; formats that may be animated as a still PNG of their first frame).
        let reply = thumbnail(&media, &alice, &path, "width=400&height=300&method=scale").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), thumb_mime);
        if format == ImageFormat::Jpeg {
            assert_eq!(reply.bytes, encode(&source, format));
        }
        let image = decoded(&reply);
        assert_eq!(
            (image.width(), image.height()),
            (200, 100),
            "{mime} original"
        );

        // The animated flag is accepted; the thumbnail is a still image.
        let reply = thumbnail(
            &media,
            &alice,
            &path,
            "width=32&height=32&method=crop&animated=true",
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), thumb_mime);
    }
}

#[tokio::test]
async fn thumbnails_are_cached() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let bytes = encode(&test_image(300, 200), ImageFormat::Png);
    let path = media.upload_ok(&alice, &bytes, "image/png").await;
    let files_before = media.stored_files().len();
    let first = thumbnail(&media, &alice, &path, "width=50&height=50&method=crop").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(media.stored_files().len(), files_before + 1);

    // Spoil the original on disk (same size): a cached thumbnail does not need it...
    let hash = sha256_hex(&bytes);
    let original = media
        .media_dir
        .path()
        .join(&hash[0..2])
        .join(&hash[2..4])
        .join(&hash);
    std::fs::write(&original, vec![0u8; bytes.len()]).expect("overwrite");
    let second = thumbnail(&media, &alice, &path, "width=50&height=50&method=crop").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.bytes, first.bytes);
    assert_eq!(media.stored_files().len(), files_before + 1);
    // ... while a new size has to decode it, and now cannot.
    let other = thumbnail(&media, &alice, &path, "width=51&height=50&method=crop").await;
    assert_error(&other.pair(), 400, "M_UNKNOWN");
}

/// A PNG whose header claims `width` × `height` pixels, with almost no data behind it.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[tokio::test]
async fn thumbnail_errors() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let text = media.upload_ok(&alice, b"just text", "text/plain").await;
    let reply = thumbnail(&media, &alice, &text, "width=32&height=32").await;
    assert_error(&reply.pair(), 400, "M_UNKNOWN");
    // A type that lies does not matter: the bytes are what is decoded.
    let liar = media
        .upload_ok(&alice, b"not a png at all", "image/png")
        .await;
    let reply = thumbnail(&media, &alice, &liar, "width=32&height=32").await;
    assert_error(&reply.pair(), 400, "M_UNKNOWN");
    let truncated = encode(&test_image(100, 100), ImageFormat::Png);
    let truncated = media
        .upload_ok(&alice, &truncated[..truncated.len() / 2], "image/png")
        .await;
    let reply = thumbnail(&media, &alice, &truncated, "width=32&height=32").await;
    assert_error(&reply.pair(), 400, "M_UNKNOWN");

    // Decompression bombs are refused before decoding.
    let bomb = media
        .upload_ok(&alice, &png_bomb(30_000, 30_000), "image/png")
        .await;
    let reply = thumbnail(&media, &alice, &bomb, "width=32&height=32").await;
    assert_error(&reply.pair(), 413, "M_TOO_LARGE");

    let image = media
        .upload_ok(
            &alice,
            &encode(&test_image(64, 64), ImageFormat::Png),
            "image/png",
        )
        .await;
    for query in [
        "width=0&height=32",
        "width=32&height=32&method=stretch",
        "width=-1&height=32",
        "height=32",
        "width=abc&height=32",
    ] {
        let reply = thumbnail(&media, &alice, &image, query).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {:?}",
            reply.json()
        );
    }
    let reply = thumbnail(&media, &alice, "localhost/missing", "width=32&height=32").await;
    assert_error(&reply.pair(), 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn image_pixel_limit_is_configurable() {
    let media = start("max_image_pixels = 10000").await;
    let alice = media.server.register("alice").await;
    let big = media
        .upload_ok(
            &alice,
            &encode(&test_image(200, 100), ImageFormat::Png),
            "image/png",
        )
        .await;
    let reply = thumbnail(&media, &alice, &big, "width=32&height=32").await;
    assert_error(&reply.pair(), 413, "M_TOO_LARGE");
    let small = media
        .upload_ok(
            &alice,
            &encode(&test_image(100, 100), ImageFormat::Png),
            "image/png",
        )
        .await;
    let reply = thumbnail(&media, &alice, &small, "width=32&height=32").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn unsafe_types_are_attachments() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    for content_type in [
        "text/html",
        "text/html; charset=utf-8",
        "image/svg+xml",
        "application/javascript",
        "application/xhtml+xml",
        "text/xml",
    ] {
        let reply = media
            .upload(
                &alice,
                b"<script>alert(document.cookie)</script>",
                Some(content_type),
                Some("page.html"),
            )
            .await;
        let path = mxc_path(&reply.json()["content_uri"]);
        let reply = media
            .get(&format!("{V1}/download/{path}"), Some(&alice.token))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), content_type);
        assert_eq!(
            reply.header("content-disposition"),
            "attachment; filename=\"page.html\"",
            "{content_type}"
        );
        assert_security_headers(&reply);
    }
    for content_type in [
        "image/png",
        "video/mp4",
        "audio/ogg",
        "text/plain; charset=utf-8",
    ] {
        let path = media.upload_ok(&alice, b"data", content_type).await;
        let reply = media
            .get(&format!("{V1}/download/{path}"), Some(&alice.token))
            .await;
        assert_eq!(
            reply.header("content-disposition"),
            "inline",
            "{content_type}"
        );
    }
}

#[tokio::test]
async fn legacy_endpoints_are_frozen() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let image = encode(&test_image(64, 64), ImageFormat::Png);
    let path = media.upload_ok(&alice, &image, "image/png").await;
    // The media exists and is served by the authenticated endpoints ...
    let reply = media
        .get(&format!("{V1}/download/{path}"), Some(&alice.token))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // ... but not by the deprecated unauthenticated ones, with or without a token.
    for version in ["v3", "r0"] {
        for endpoint in [
            format!("/_matrix/media/{version}/download/{path}"),
            format!("/_matrix/media/{version}/download/{path}/file.png"),
            format!("/_matrix/media/{version}/thumbnail/{path}?width=32&height=32"),
        ] {
            for token in [None, Some(alice.token.as_str())] {
                let reply = media.get(&endpoint, token).await;
                assert_error(&reply.pair(), 404, "M_NOT_FOUND");
                assert!(reply.bytes != image);
            }
        }
    }
    // The legacy config and preview endpoints always needed a token; config still answers.
    let reply = media
        .get("/_matrix/media/v3/config", Some(&alice.token))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["m.upload.size"], 50 * 1024 * 1024);
}

#[tokio::test]
async fn remote_and_malformed_media_are_not_found() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let reply = media
        .get(
            &format!("{V1}/download/matrix.org/abcdef"),
            Some(&alice.token),
        )
        .await;
    assert_error(&reply.pair(), 404, "M_NOT_FOUND");
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("federation")),
        "{:?}",
        reply.json()
    );
    let reply = media
        .get(
            &format!("{V1}/thumbnail/matrix.org/abcdef?width=32&height=32"),
            Some(&alice.token),
        )
        .await;
    assert_error(&reply.pair(), 404, "M_NOT_FOUND");
    for id in ["..%2F..%2Fetc%2Fpasswd", "a.b", "%00", "a%20b"] {
        let reply = media
            .get(&format!("{V1}/download/localhost/{id}"), Some(&alice.token))
            .await;
        assert_error(&reply.pair(), 404, "M_NOT_FOUND");
    }
}

// ---------------------------------------------------------------- URL previews

/// A tiny HTTP/1.1 server on 127.0.0.1 for previews: fixed routes, counts hits per path.
struct Site {
    port: u16,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

const PAGE: &str = r#"<!DOCTYPE html>
<html><head>
<meta charset="utf-8">
<title>Fallback title</title>
<meta property="og:title" content="Sparks &amp; Matrix">
<meta property="og:description" content="A homeserver in one binary">
<meta property="og:type" content="article">
<meta property="og:image" content="/cover.png">
</head><body><p>Hello</p></body></html>"#;

impl Site {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let cover = encode(&test_image(120, 60), ImageFormat::Png);
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                let cover = cover.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    *counter.lock().entry(path.clone()).or_default() += 1;
                    let response = Site::respond(&path, port, &cover);
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { port, hits }
    }

    fn respond(path: &str, port: u16, cover: &[u8]) -> Vec<u8> {
        let ok = |content_type: &str, body: &[u8], length: bool| {
            let mut head =
                format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
            if length {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            let mut out = head.into_bytes();
            out.extend_from_slice(body);
            out
        };
        let redirect = |location: String| {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        };
        match path {
            "/page" => ok("text/html; charset=utf-8", PAGE.as_bytes(), true),
            "/cover.png" => ok("image/png", cover, true),
            "/photo" => ok("image/png", cover, true),
            "/plain" => ok("text/plain", b"nothing to see", true),
            "/redirect" => redirect("/page".to_owned()),
            "/redirect-denied" => redirect(format!("http://127.0.0.2:{port}/page")),
            "/redirect-loop" => redirect("/redirect-loop".to_owned()),
            "/big" => ok("text/html", &vec![b' '; 2 * 1024 * 1024], true),
            "/big-unsized" => ok("text/html", &vec![b' '; 2 * 1024 * 1024], false),
            _ => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().get(path).copied().unwrap_or(0)
    }
}

fn enc(s: &str) -> String {
    common::enc(s)
}

async fn preview(media: &MediaServer, user: &User, url: &str) -> Reply {
    media
        .get(
            &format!("{V1}/preview_url?url={}", enc(url)),
            Some(&user.token),
        )
        .await
}

const LOOPBACK_ALLOWED: &str =
    "url_preview_ip_range_allowlist = [\"127.0.0.1/32\"]\nurl_preview_max_bytes = 1048576";

#[tokio::test]
async fn preview_reads_opengraph() {
    let site = Site::start().await;
    let media = start(LOOPBACK_ALLOWED).await;
    let alice = media.server.register("alice").await;

    let reply = preview(&media, &alice, &site.url("/page")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    let og = reply.json();
    assert_eq!(og["og:title"], "Sparks & Matrix");
    assert_eq!(og["og:description"], "A homeserver in one binary");
    assert_eq!(og["og:type"], "article");
    assert_eq!(og["og:image:type"], "image/png");
    assert_eq!(og["og:image:width"], 120);
    assert_eq!(og["og:image:height"], 60);
    let cover = encode(&test_image(120, 60), ImageFormat::Png);
    assert_eq!(og["matrix:image:size"], cover.len());
    // The image is rehosted: og:image is an mxc URI to a copy.
    let image = mxc_path(&og["og:image"]);
    assert!(image.starts_with("localhost/"), "{image}");
    let reply = media
        .get(&format!("{V1}/download/{image}"), Some(&alice.token))
        .await;
    assert_eq!(reply.bytes, cover);
    assert_eq!(site.hits("/page"), 1);
    assert_eq!(site.hits("/cover.png"), 1);

    // Cached: the page is not fetched again (also through the legacy path).
    let again = preview(&media, &alice, &site.url("/page")).await;
    assert_eq!(again.json(), og);
    let legacy = media
        .get(
            &format!(
                "/_matrix/media/v3/preview_url?url={}",
                enc(&site.url("/page"))
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(legacy.json(), og);
    assert_eq!(site.hits("/page"), 1);

    // Redirects within allowed addresses are followed.
    let reply = preview(&media, &alice, &site.url("/redirect")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    assert_eq!(reply.json()["og:title"], "Sparks & Matrix");
    assert_eq!(site.hits("/redirect"), 1);

    // A URL that is an image previews as that image.
    let reply = preview(&media, &alice, &site.url("/photo")).await;
    assert_eq!(reply.json()["og:image:width"], 120);
    assert!(
        reply.json()["og:image"]
            .as_str()
            .is_some_and(|s| s.starts_with("mxc://"))
    );
    // Other types: an empty preview.
    let reply = preview(&media, &alice, &site.url("/plain")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({}));
}

#[tokio::test]
async fn preview_refuses_what_it_should() {
    let site = Site::start().await;
    let media = start(LOOPBACK_ALLOWED).await;
    let alice = media.server.register("alice").await;

    // A redirect to an address outside the allowlist (127.0.0.2 is loopback too).
    let reply = preview(&media, &alice, &site.url("/redirect-denied")).await;
    assert_error(&reply.pair(), 403, "M_FORBIDDEN");
    // Too many redirects.
    let reply = preview(&media, &alice, &site.url("/redirect-loop")).await;
    assert_error(&reply.pair(), 502, "M_UNKNOWN");
    assert_eq!(site.hits("/redirect-loop"), 6);
    // Larger than url_preview_max_bytes, declared or not.
    let reply = preview(&media, &alice, &site.url("/big")).await;
    assert_error(&reply.pair(), 502, "M_TOO_LARGE");
    let reply = preview(&media, &alice, &site.url("/big-unsized")).await;
    assert_error(&reply.pair(), 502, "M_TOO_LARGE");
    // Not http(s), or not a URL.
    for url in [
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "not a url",
        "http://",
    ] {
        let reply = preview(&media, &alice, url).await;
        assert_error(&reply.pair(), 400, "M_INVALID_PARAM");
    }
    let reply = media
        .get(&format!("{V1}/preview_url"), Some(&alice.token))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(site.hits("/page"), 0);
}

#[tokio::test]
async fn preview_refuses_loopback_by_default() {
    let site = Site::start().await;
    let media = start("").await;
    let alice = media.server.register("alice").await;
    for url in [
        site.url("/page"),
        format!("http://localhost:{}/page", site.port),
        format!("http://[::1]:{}/page", site.port),
        format!("http://[::ffff:127.0.0.1]:{}/page", site.port),
        format!("http://2130706433:{}/page", site.port),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://0.0.0.0/".to_owned(),
    ] {
        let reply = preview(&media, &alice, &url).await;
        assert_error(&reply.pair(), 403, "M_FORBIDDEN");
    }
    assert_eq!(site.hits("/page"), 0, "a refused address was contacted");

    let disabled = start("url_preview_enabled = false").await;
    let bob = disabled.server.register("bob").await;
    let reply = preview(&disabled, &bob, "https://example.org/").await;
    assert_error(&reply.pair(), 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn animated_images_get_still_thumbnails() {
    let media = start("").await;
    let alice = media.server.register("alice").await;
    let mut gif = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .expect("repeat");
        for shade in [0u8, 255] {
            let frame = image::RgbaImage::from_pixel(40, 30, image::Rgba([shade, 0, 0, 255]));
            encoder
                .encode_frame(image::Frame::new(frame))
                .expect("frame");
        }
    }
    let path = media.upload_ok(&alice, &gif, "image/gif").await;
    // Smaller than asked, but animated: not returned as it is, even with animated=true
    // (this server makes no animated thumbnails, which the spec allows).
    for query in [
        "width=64&height=64",
        "width=64&height=64&animated=false",
        "width=64&height=64&animated=true",
    ] {
        let reply = thumbnail(&media, &alice, &path, query).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}");
        assert_eq!(reply.header("content-type"), "image/png", "{query}");
        let image = decoded(&reply);
        assert_eq!((image.width(), image.height()), (40, 30));
    }
}
