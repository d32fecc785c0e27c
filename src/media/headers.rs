//! Response headers for served media: content type, disposition (RFC 6266) and the security
//! headers the spec recommends.

use http::{HeaderMap, HeaderValue, header};

/// The content types the spec allows with `Content-Disposition: inline` ("Serving inline
/// content"); everything else is served as an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

pub const OCTET_STREAM: &str = "application/octet-stream";

const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; object-src 'self';";

/// The essence of a content type: `type/subtype`, lowercase, without parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether content of this type may be served `inline` (anything else, e.g. `text/html`,
/// `image/svg+xml` or `application/javascript`, is an attachment).
pub fn is_inline_safe(content_type: &str) -> bool {
    INLINE_TYPES.contains(&essence(content_type).as_str())
}

/// The content type to store for an upload: the client's `Content-Type` if it is a plausible
/// `type/subtype[; params]` header value, else `application/octet-stream` (the spec's default).
pub fn upload_content_type(value: Option<&HeaderValue>) -> String {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return OCTET_STREAM.to_owned();
    };
    let value = value.trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let plausible = value.len() <= 255
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence(value)
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s));
    if plausible {
        value.to_owned()
    } else {
        OCTET_STREAM.to_owned()
    }
}

/// A stored file name: control characters removed, at most 255 bytes; empty means none.
pub fn clean_filename(name: &str) -> Option<String> {
    let mut cleaned: String = name.chars().filter(|c| !c.is_control()).collect();
    if cleaned.len() > 255 {
        let mut end = 255;
        while !cleaned.is_char_boundary(end) {
            end -= 1;
        }
        cleaned.truncate(end);
    }
    let cleaned = cleaned.trim().to_owned();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// `inline` or `attachment`, with the file name per RFC 6266: a plain `filename="..."` when
/// the name is printable ASCII without quotes or backslashes, else an ASCII fallback plus
/// `filename*=utf-8''<percent-encoded>` (RFC 8187).
pub fn content_disposition(inline: bool, filename: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    let Some(name) = filename.and_then(clean_filename) else {
        return kind.to_owned();
    };
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        return format!("{kind}; filename=\"{name}\"");
    }
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{fallback}\"; filename*=utf-8''{encoded}")
}

/// Content type, disposition and security headers for served media. `inline` is only honoured
/// for types on the spec's allow-list.
pub fn apply(headers: &mut HeaderMap, content_type: &str, filename: Option<&str>, inline: bool) {
    let inline = inline && is_inline_safe(content_type);
    let content_type =
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(OCTET_STREAM));
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Ok(value) = HeaderValue::from_str(&content_disposition(inline, filename)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    // A media id's content never changes once uploaded; only the requesting user may cache it.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_allow_list() {
        assert!(is_inline_safe("image/png"));
        assert!(is_inline_safe("Text/Plain; charset=utf-8"));
        assert!(is_inline_safe("video/mp4"));
        assert!(!is_inline_safe("text/html"));
        assert!(!is_inline_safe("image/svg+xml"));
        assert!(!is_inline_safe("application/javascript"));
        assert!(!is_inline_safe("application/octet-stream"));
        assert!(!is_inline_safe(""));
    }

    #[test]
    fn content_types_are_checked() {
        let hv = |s: &str| HeaderValue::from_str(s).expect("header");
        assert_eq!(upload_content_type(None), OCTET_STREAM);
        assert_eq!(upload_content_type(Some(&hv("image/png"))), "image/png");
        assert_eq!(
            upload_content_type(Some(&hv("text/plain; charset=utf-8"))),
            "text/plain; charset=utf-8"
        );
        assert_eq!(upload_content_type(Some(&hv("nonsense"))), OCTET_STREAM);
        assert_eq!(upload_content_type(Some(&hv("a b/c"))), OCTET_STREAM);
        assert_eq!(upload_content_type(Some(&hv(""))), OCTET_STREAM);
    }

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition(true, None), "inline");
        assert_eq!(content_disposition(false, Some("")), "attachment");
        assert_eq!(
            content_disposition(true, Some("cat.png")),
            "inline; filename=\"cat.png\""
        );
        assert_eq!(
            content_disposition(false, Some("a \"b\".txt")),
            "attachment; filename=\"a _b_.txt\"; filename*=utf-8''a%20%22b%22.txt"
        );
        assert_eq!(
            content_disposition(true, Some("Grüße 日本.txt")),
            "inline; filename=\"Gr__e __.txt\"; filename*=utf-8''Gr%C3%BC%C3%9Fe%20%E6%97%A5%E6%9C%AC.txt"
        );
        // Header injection is impossible: control characters are dropped.
        assert_eq!(
            content_disposition(true, Some("a\r\nSet-Cookie: x")),
            "inline; filename=\"aSet-Cookie: x\""
        );
        for name in ["x\u{7f}y", "日本", "\"", "a\\b", &"é".repeat(300)] {
            assert!(HeaderValue::from_str(&content_disposition(true, Some(name))).is_ok());
        }
    }
}
