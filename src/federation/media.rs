//! Media across servers (authenticated media, Matrix 1.11): another server's content fetched
//! over `GET /_matrix/federation/v1/media/download/{mediaId}` (a `multipart/mixed` answer:
//! JSON metadata, then the bytes or a `Location` to fetch them from) and kept like local
//! media under its `mxc://` server and id; and the same answers for other servers asking us.

use ruma::ServerName;

use crate::{
    error::{Error, Result},
    media::MediaMeta,
    server::Server,
};

/// Fetches `mxc://{origin}/{media_id}` over federation and stores it locally. The caller has
/// checked it is not cached.
pub async fn fetch_remote(
    server: &Server,
    origin: &ServerName,
    media_id: &str,
) -> Result<MediaMeta> {
    if !super::enabled(server) {
        return Err(Error::not_found(
            "Media on other servers needs federation, which this server does not do",
        ));
    }
    let max = server.media.config.max_upload_size;
    let path = format!(
        "/_matrix/federation/v1/media/download/{}",
        super::encode(media_id)
    );
    let (content_type, body) = server
        .federation
        .client
        .get_bytes(server, origin, &path, max.saturating_add(64 * 1024))
        .await?;
    let boundary = boundary(&content_type)
        .ok_or_else(|| super::remote_error(origin, "media answer is not multipart/mixed"))?;
    let parts = split_multipart(&body, &boundary)
        .ok_or_else(|| super::remote_error(origin, "malformed multipart media answer"))?;
    let media = parts
        .get(1)
        .ok_or_else(|| super::remote_error(origin, "media answer without content"))?;
    let (bytes, part_type, filename) = match header(&media.headers, "location") {
        Some(location) => {
            let (fetched_type, bytes) = server
                .federation
                .client
                .get_url(&location, max)
                .await
                .map_err(|e| super::remote_error(origin, e.message))?;
            (bytes, fetched_type, None)
        }
        None => (
            media.body.clone(),
            header(&media.headers, "content-type").unwrap_or_default(),
            header(&media.headers, "content-disposition").and_then(|d| filename_of(&d)),
        ),
    };
    if bytes.len() as u64 > max {
        return Err(Error::too_large(
            "Remote media is larger than this server accepts",
        ));
    }
    let content_type = if part_type.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        part_type
    };
    server
        .media
        .store_remote(server, origin, media_id, &bytes, content_type, filename)
        .await
}

/// A `multipart/mixed` body for other servers: `{}` metadata, then the content.
pub fn multipart(content_type: &str, filename: Option<&str>, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = crate::server::rand_alnum(32);
    let mut out = Vec::with_capacity(bytes.len() + 256);
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n").as_bytes(),
    );
    out.extend_from_slice(format!("--{boundary}\r\nContent-Type: {content_type}\r\n").as_bytes());
    let disposition = crate::media::headers::content_disposition(false, filename);
    out.extend_from_slice(format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/mixed; boundary={boundary}"), out)
}

struct Part {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn boundary(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    if !lower.starts_with("multipart/mixed") {
        return None;
    }
    content_type.split(';').find_map(|param| {
        let (key, value) = param.trim().split_once('=')?;
        key.eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The parts of a multipart body (RFC 2046), headers lowercased.
fn split_multipart(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut positions = Vec::new();
    let mut i = 0;
    while let Some(found) = find(&body[i..], &delimiter) {
        positions.push(i + found);
        i += found + delimiter.len();
    }
    let mut parts = Vec::new();
    for pair in positions.windows(2) {
        let mut start = pair[0] + delimiter.len();
        // Skip the line break after the delimiter.
        if body.get(start..start + 2) == Some(b"\r\n") {
            start += 2;
        } else if body.get(start) == Some(&b'\n') {
            start += 1;
        }
        let mut end = pair[1];
        // The line break before the next delimiter belongs to it.
        if end >= 2 && &body[end - 2..end] == b"\r\n" {
            end -= 2;
        } else if end >= 1 && body[end - 1] == b'\n' {
            end -= 1;
        }
        let part = body.get(start..end)?;
        let (head, content) = match find(part, b"\r\n\r\n") {
            Some(split) => (&part[..split], &part[split + 4..]),
            None => match find(part, b"\n\n") {
                Some(split) => (&part[..split], &part[split + 2..]),
                None => (&part[..0], part),
            },
        };
        let headers = String::from_utf8_lossy(head)
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect();
        parts.push(Part {
            headers,
            body: content.to_vec(),
        });
    }
    (!parts.is_empty()).then_some(parts)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn filename_of(disposition: &str) -> Option<String> {
    disposition.split(';').find_map(|param| {
        let (key, value) = param.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("filename")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_round_trip() {
        let (content_type, body) = multipart("image/png", Some("a.png"), b"\x89PNG\r\n--x\r\n");
        let boundary = boundary(&content_type).expect("boundary");
        let parts = split_multipart(&body, &boundary).expect("parts");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, b"{}");
        assert_eq!(parts[1].body, b"\x89PNG\r\n--x\r\n");
        assert_eq!(
            header(&parts[1].headers, "content-type").as_deref(),
            Some("image/png")
        );
    }
}
