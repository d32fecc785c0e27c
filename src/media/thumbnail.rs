//! Thumbnails: PNG, JPEG, GIF (first frame) and WebP images, cropped or scaled per the spec,
//! encoded as JPEG (for JPEG sources) or PNG, and cached by requested size and method.
//!
//! The spec's rules: never upscale; never return less than asked unless the image is smaller;
//! an image no larger than the requested size is returned as it is (JPEG; formats that may be
//! animated get their first frame, since animated thumbnails are not made). `scale` keeps the aspect
//! ratio and fits the requested box; `crop` returns the requested aspect ratio, cut from the
//! centre.

use std::{collections::HashMap, io::Cursor, sync::Arc};

use http::StatusCode;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, metadata::Orientation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Media, MediaMeta, store::Stored};
use crate::{
    error::{Error, Result},
    server::Server,
    storage::keys::Key,
};

/// Requested sizes above this are treated as this (a bound on work and cache size).
pub const MAX_SIDE: u32 = 2048;
/// Cached thumbnails per media id; requests for further sizes are answered but not cached.
const MAX_CACHED_PER_MEDIA: usize = 32;
const JPEG_QUALITY: u8 = 82;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// A thumbnail ready to serve (`mediaid_thumbnail`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Thumbnail {
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}

impl Thumbnail {
    pub fn stored(&self) -> Stored {
        Stored {
            sha256: self.sha256.clone(),
            size: self.size,
        }
    }

    /// `thumbnail.png` / `thumbnail.jpg` ..., for `Content-Disposition`.
    pub fn filename(&self) -> String {
        let ext = match self.content_type.as_str() {
            "image/jpeg" => "jpg",
            "image/gif" => "gif",
            "image/webp" => "webp",
            _ => "png",
        };
        format!("thumbnail.{ext}")
    }
}

/// Serialises generation of one thumbnail (a second identical request waits and then reads the
/// cache) and bounds concurrent decoding (each may hold a large image in memory).
pub struct Thumbnailer {
    locks: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
    decoding: tokio::sync::Semaphore,
}

impl Thumbnailer {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            locks: Mutex::new(HashMap::new()),
            decoding: tokio::sync::Semaphore::new(cores.clamp(1, 4)),
        }
    }
}

impl Default for Thumbnailer {
    fn default() -> Self {
        Self::new()
    }
}

/// What to do with an image of a given size for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Serve the image as it is (it is no larger than asked).
    Original,
    /// Cut the region `(x, y, width, height)`, then resize it to `(to_width, to_height)`.
    Render {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        to_width: u32,
        to_height: u32,
    },
}

fn round_div(a: u64, b: u64) -> u32 {
    u32::try_from((a + b / 2) / b.max(1))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The spec's semantics for an image of `(w, h)` and a request `(tw, th)` (all non-zero).
pub fn plan(w: u32, h: u32, tw: u32, th: u32, method: Method) -> Plan {
    if w <= tw && h <= th {
        return Plan::Original;
    }
    let (w64, h64, tw64, th64) = (u64::from(w), u64::from(h), u64::from(tw), u64::from(th));
    match method {
        Method::Scale => {
            // Fit inside (tw, th), keeping the aspect ratio.
            let (to_width, to_height) = if tw64 * h64 <= th64 * w64 {
                (tw, round_div(tw64 * h64, w64).min(h))
            } else {
                (round_div(th64 * w64, h64).min(w), th)
            };
            Plan::Render {
                x: 0,
                y: 0,
                width: w,
                height: h,
                to_width,
                to_height,
            }
        }
        Method::Crop => {
            // The largest centred region with the requested aspect ratio ...
            let (cw, ch) = if tw64 * h64 <= th64 * w64 {
                (round_div(h64 * tw64, th64).min(w), h)
            } else {
                (w, round_div(w64 * th64, tw64).min(h))
            };
            // ... scaled down to the requested size when it is larger (never up).
            let (to_width, to_height) = if cw > tw { (tw, th) } else { (cw, ch) };
            Plan::Render {
                x: (w - cw) / 2,
                y: (h - ch) / 2,
                width: cw,
                height: ch,
                to_width,
                to_height,
            }
        }
    }
}

fn cannot_thumbnail(detail: impl std::fmt::Display) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
        format!("Cannot generate thumbnails for the requested content: {detail}"),
    )
}

/// The formats we thumbnail, recognised from the bytes (never from the claimed type).
fn sniff(head: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(head).ok()? {
        format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {
            Some(format)
        }
        _ => None,
    }
}

/// The outcome of [`render`]: the original is fine, or a new encoded image.
pub enum Rendered {
    Original {
        width: u32,
        height: u32,
    },
    Encoded {
        bytes: Vec<u8>,
        content_type: &'static str,
        width: u32,
        height: u32,
    },
}

/// Decodes (within `max_pixels`), crops/scales and encodes. Pure CPU work: run it off the
/// async threads.
pub fn render(
    bytes: &[u8],
    format: ImageFormat,
    tw: u32,
    th: u32,
    method: Method,
    max_pixels: u64,
) -> Result<Rendered> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(u32::from(u16::MAX));
    limits.max_image_height = Some(u32::from(u16::MAX));
    // Room for the decoded image (up to 8 bytes a pixel for 16-bit RGBA) and decoder buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(10).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(cannot_thumbnail("the image is empty"));
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(Error::too_large(format!(
            "The image is too large to thumbnail ({w}×{h} pixels; the limit is {max_pixels})"
        )));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (w, h) = if turned { (h, w) } else { (w, h) };
    let Plan::Render {
        x,
        y,
        width,
        height,
        to_width,
        to_height,
    } = plan(w, h, tw, th, method)
    else {
        // No larger than asked: the original, as the spec says, when it is a still image
        // that needs no rotation. GIF, WebP and PNG may be animated, and an animated
        // thumbnail is only allowed when asked for (and we make none): those get their
        // first frame, re-encoded at full size.
        if format == ImageFormat::Jpeg && orientation == Orientation::NoTransforms {
            return Ok(Rendered::Original {
                width: w,
                height: h,
            });
        }
        return encode(decode(decoder, orientation)?, format);
    };
    let mut image = decode(decoder, orientation)?;
    if (x, y, width, height) != (0, 0, w, h) {
        image = image.crop_imm(x, y, width, height);
    }
    if (to_width, to_height) != (width, height) {
        image = image.thumbnail_exact(to_width, to_height);
    }
    encode(image, format)
}

fn decode_error(error: image::ImageError) -> Error {
    match error {
        image::ImageError::Limits(e) => {
            Error::too_large(format!("The image is too large to thumbnail: {e}"))
        }
        other => cannot_thumbnail(other),
    }
}

fn decode(decoder: impl ImageDecoder, orientation: Orientation) -> Result<DynamicImage> {
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// JPEG stays JPEG (photos); everything else becomes PNG (keeps transparency).
fn encode(image: DynamicImage, source: ImageFormat) -> Result<Rendered> {
    let (width, height) = (image.width(), image.height());
    let mut bytes = Vec::new();
    let content_type = if source == ImageFormat::Jpeg {
        let rgb = DynamicImage::ImageRgb8(image.into_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY);
        rgb.write_with_encoder(encoder)
            .map_err(|e| Error::internal(format_args!("thumbnail: encoding JPEG: {e}")))?;
        "image/jpeg"
    } else {
        let image = match image {
            DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => image,
            DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) => image,
            other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.into_rgba8()),
            other => DynamicImage::ImageRgb8(other.into_rgb8()),
        };
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|e| Error::internal(format_args!("thumbnail: encoding PNG: {e}")))?;
        "image/png"
    };
    Ok(Rendered::Encoded {
        bytes,
        content_type,
        width,
        height,
    })
}

fn mime_of(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Gif => "image/gif",
        ImageFormat::WebP => "image/webp",
        _ => "application/octet-stream",
    }
}

impl Media {
    /// A thumbnail of local media (already found), generated once per size and method and then
    /// served from the cache.
    pub async fn thumbnail(
        &self,
        server: &Server,
        media: (&str, &str),
        meta: &MediaMeta,
        width: u32,
        height: u32,
        method: Method,
    ) -> Result<Thumbnail> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_param(
                "Thumbnail width and height must be positive",
            ));
        }
        let (width, height) = (width.min(MAX_SIDE), height.min(MAX_SIDE));
        let key = Key::new()
            .s(media.0)
            .s(media.1)
            .n(u64::from(width))
            .n(u64::from(height))
            .s(method.as_str())
            .build();
        if let Some(cached) = self.cached_thumbnail(server, &key)? {
            return Ok(cached);
        }
        let lock = self
            .thumbnailer
            .locks
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let result = async {
            let _generating = lock.lock().await;
            // Generated while we waited?
            if let Some(cached) = self.cached_thumbnail(server, &key)? {
                return Ok(cached);
            }
            self.generate(server, media, meta, &key, width, height, method)
                .await
        }
        .await;
        {
            let mut locks = self.thumbnailer.locks.lock();
            if Arc::strong_count(&lock) <= 2 {
                locks.remove(&key);
            }
        }
        result
    }

    fn cached_thumbnail(&self, server: &Server, key: &[u8]) -> Result<Option<Thumbnail>> {
        match server.maps.mediaid_thumbnail.get(key)? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn generate(
        &self,
        server: &Server,
        media: (&str, &str),
        meta: &MediaMeta,
        key: &[u8],
        width: u32,
        height: u32,
        method: Method,
    ) -> Result<Thumbnail> {
        let stored = meta.stored();
        // Recognised from the first bytes, so a large video is not read for nothing.
        let head = self.store.read_head(&stored, 64).await?;
        let format = sniff(&head).ok_or_else(|| {
            cannot_thumbnail("only PNG, JPEG, GIF and WebP images have thumbnails")
        })?;
        let bytes = self.store.read(&stored).await?;
        let max_pixels = self.config.max_image_pixels;
        let rendered = {
            let _permit = self
                .thumbnailer
                .decoding
                .acquire()
                .await
                .map_err(|_| Error::internal("thumbnail semaphore closed"))?;
            tokio::task::spawn_blocking(move || {
                render(&bytes, format, width, height, method, max_pixels)
            })
            .await
            .map_err(|e| Error::internal(format_args!("thumbnail task: {e}")))??
        };
        let thumbnail = match rendered {
            Rendered::Original { width, height } => Thumbnail {
                sha256: stored.sha256,
                size: stored.size,
                content_type: mime_of(format).to_owned(),
                width,
                height,
            },
            Rendered::Encoded {
                bytes,
                content_type,
                width,
                height,
            } => {
                let stored = self
                    .store
                    .put(&bytes, server.config.storage.sync_writes)
                    .await?;
                Thumbnail {
                    sha256: stored.sha256,
                    size: stored.size,
                    content_type: content_type.to_owned(),
                    width,
                    height,
                }
            }
        };
        let cached = server
            .maps
            .mediaid_thumbnail
            .scan_prefix(Key::new().s(media.0).s(media.1).prefix())
            .take(MAX_CACHED_PER_MEDIA)
            .count();
        if cached < MAX_CACHED_PER_MEDIA {
            server
                .maps
                .mediaid_thumbnail
                .put(&server.db, key, serde_json::to_vec(&thumbnail)?)?;
        }
        Ok(thumbnail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_to(w: u32, h: u32, tw: u32, th: u32, method: Method) -> (u32, u32) {
        match plan(w, h, tw, th, method) {
            Plan::Original => (w, h),
            Plan::Render {
                to_width,
                to_height,
                ..
            } => (to_width, to_height),
        }
    }

    #[test]
    fn scale_fits_the_box() {
        assert_eq!(render_to(200, 100, 64, 64, Method::Scale), (64, 32));
        assert_eq!(render_to(100, 200, 64, 64, Method::Scale), (32, 64));
        assert_eq!(render_to(800, 600, 320, 240, Method::Scale), (320, 240));
        assert_eq!(render_to(1000, 10, 100, 100, Method::Scale), (100, 1));
        // Never upscaled: small images are returned as they are.
        assert_eq!(plan(50, 40, 64, 64, Method::Scale), Plan::Original);
        assert_eq!(plan(64, 64, 64, 64, Method::Crop), Plan::Original);
    }

    #[test]
    fn crop_has_the_requested_aspect() {
        assert_eq!(render_to(200, 100, 32, 32, Method::Crop), (32, 32));
        assert_eq!(render_to(200, 100, 96, 48, Method::Crop), (96, 48));
        assert_eq!(
            plan(200, 100, 32, 32, Method::Crop),
            Plan::Render {
                x: 50,
                y: 0,
                width: 100,
                height: 100,
                to_width: 32,
                to_height: 32
            }
        );
        // Larger than one side: cropped to the aspect ratio without scaling.
        assert_eq!(render_to(100, 50, 64, 64, Method::Crop), (50, 50));
        assert_eq!(render_to(100, 50, 40, 60, Method::Crop), (33, 50));
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let image = DynamicImage::new_rgba8(w, h);
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .expect("encode");
        bytes
    }

    #[test]
    fn renders_and_refuses_bombs() {
        let source = png(300, 200);
        let Ok(Rendered::Encoded {
            width,
            height,
            content_type,
            ..
        }) = render(&source, ImageFormat::Png, 96, 96, Method::Crop, 1_000_000)
        else {
            panic!("expected a thumbnail");
        };
        assert_eq!((width, height, content_type), (96, 96, "image/png"));
        let error = render(&source, ImageFormat::Png, 96, 96, Method::Crop, 1000)
            .err()
            .expect("too large");
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Garbage claiming to be PNG is a 400, not a panic.
        let error = render(
            b"\x89PNG\r\n\x1a\nxx",
            ImageFormat::Png,
            1,
            1,
            Method::Crop,
            10,
        )
        .err()
        .expect("garbage");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
    }
}
