//! A small, tolerant HTML scanner for URL previews: OpenGraph `<meta>` tags, with `<title>`
//! and `<meta name="description">` as fallbacks. Not a full HTML parser: it only needs tags
//! and attributes, skips comments, scripts and styles, and never fails.

use serde_json::{Map, Value};

/// Longest value kept (characters); longer ones are cut.
const MAX_VALUE_CHARS: usize = 1000;
/// Most `og:` properties kept.
const MAX_PROPERTIES: usize = 64;

/// The text of a page: UTF-8 unless the `Content-Type` or a `<meta charset>` says Latin-1 /
/// Windows-1252 (decoded byte for byte; other charsets are read as UTF-8, lossily).
pub fn decode_text(bytes: &[u8], content_type: &str) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).to_ascii_lowercase();
    let declared = charset_of(&content_type.to_ascii_lowercase()).or_else(|| charset_of(&head));
    match declared.as_deref() {
        Some("iso-8859-1" | "latin1" | "latin-1" | "windows-1252" | "cp1252" | "us-ascii") => {
            bytes.iter().map(|&b| char::from(b)).collect()
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn charset_of(text: &str) -> Option<String> {
    let start = text.find("charset=")? + "charset=".len();
    let rest = text[start..].trim_start_matches(['"', '\'', ' ']);
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// OpenGraph properties of a page. `og:image` (and `og:url`) are made absolute against `base`.
pub fn opengraph(html: &str, base: &reqwest::Url) -> Map<String, Value> {
    let mut og = Map::new();
    let mut title: Option<String> = None;
    let mut description: Option<String> = None;
    let mut twitter: Map<String, Value> = Map::new();
    let lower = html.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(offset) = html.get(pos..).and_then(|rest| rest.find('<')) {
        let start = pos + offset;
        if html[start..].starts_with("<!--") {
            pos = lower[start + 4..]
                .find("-->")
                .map_or(html.len(), |end| start + 4 + end + 3);
            continue;
        }
        let Some(tag) = parse_tag(html, start) else {
            pos = start + 1;
            continue;
        };
        pos = tag.end;
        match tag.name.as_str() {
            "script" | "style" | "noscript" | "template" if !tag.closing => {
                let close = format!("</{}", tag.name);
                pos = lower[pos..]
                    .find(&close)
                    .map_or(html.len(), |end| pos + end);
            }
            "title" if !tag.closing && title.is_none() => {
                let end = lower[pos..].find("</title").map_or(html.len(), |e| pos + e);
                title = Some(clean(&html[pos..end]));
                pos = end;
            }
            "meta" => {
                let content = tag.attr("content").map(|c| clean(&c));
                let key = tag
                    .attr("property")
                    .or_else(|| tag.attr("name"))
                    .map(|k| k.trim().to_ascii_lowercase());
                let (Some(key), Some(content)) = (key, content) else {
                    continue;
                };
                if key.starts_with("og:") {
                    if og.len() < MAX_PROPERTIES && !og.contains_key(&key) {
                        og.insert(key, Value::String(content));
                    }
                } else if key == "description" {
                    description.get_or_insert(content);
                } else if key.starts_with("twitter:") && twitter.len() < MAX_PROPERTIES {
                    twitter.entry(key).or_insert(Value::String(content));
                }
            }
            _ => {}
        }
    }
    let fallback = |og: &mut Map<String, Value>, key: &str, value: Option<String>| {
        if !og.contains_key(key)
            && let Some(value) = value.filter(|v| !v.is_empty())
        {
            og.insert(key.to_owned(), Value::String(value));
        }
    };
    let tw = |key: &str| twitter.get(key).and_then(Value::as_str).map(str::to_owned);
    fallback(&mut og, "og:title", tw("twitter:title").or(title));
    fallback(
        &mut og,
        "og:description",
        description.or_else(|| tw("twitter:description")),
    );
    fallback(&mut og, "og:image", tw("twitter:image"));
    for key in ["og:image", "og:url"] {
        let absolute = og
            .get(key)
            .and_then(Value::as_str)
            .and_then(|v| base.join(v).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"));
        match absolute {
            Some(url) => {
                og.insert(key.to_owned(), Value::String(url.to_string()));
            }
            None => {
                og.remove(key);
            }
        }
    }
    for key in ["og:image:width", "og:image:height"] {
        if let Some(n) = og
            .get(key)
            .and_then(Value::as_str)
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            og.insert(key.to_owned(), Value::from(n));
        }
    }
    og
}

struct Tag {
    name: String,
    closing: bool,
    attrs: Vec<(String, String)>,
    /// Byte offset just after the `>`.
    end: usize,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<String> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// Parses the tag starting at `html[start] == '<'`; `None` if it is not a tag.
fn parse_tag(html: &str, start: usize) -> Option<Tag> {
    let bytes = html.as_bytes();
    let mut i = start + 1;
    let closing = bytes.get(i) == Some(&b'/');
    if closing {
        i += 1;
    }
    let name_start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
        i += 1;
    }
    if i == name_start {
        return None;
    }
    let name = html[name_start..i].to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        match bytes.get(i) {
            None => return None,
            Some(b'>') => {
                return Some(Tag {
                    name,
                    closing,
                    attrs,
                    end: i + 1,
                });
            }
            Some(_) => {}
        }
        let key_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let key = html[key_start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if bytes.get(i) == Some(&b'=') {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            match bytes.get(i) {
                Some(&quote @ (b'"' | b'\'')) => {
                    let value_start = i + 1;
                    let end = html[value_start..]
                        .find(char::from(quote))
                        .map(|e| value_start + e)?;
                    value = html[value_start..end].to_owned();
                    i = end + 1;
                }
                _ => {
                    let value_start = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                        i += 1;
                    }
                    value = html[value_start..i].to_owned();
                }
            }
        }
        // An empty key is a stray `=` (its value was consumed above, so we advance).
        if !key.is_empty() {
            attrs.push((key, value));
        }
    }
}

/// Entities decoded, whitespace collapsed, length capped.
fn clean(text: &str) -> String {
    let decoded = decode_entities(text);
    let collapsed = decoded.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(MAX_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|e| e + 1);
        let decoded = end.filter(|&e| rest[e..].starts_with(';')).and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> reqwest::Url {
        reqwest::Url::parse("https://example.org/blog/post.html").expect("url")
    }

    #[test]
    fn reads_opengraph() {
        let html = r#"<!doctype html><html><head>
            <title>Ignored &amp; title</title>
            <!-- <meta property="og:title" content="commented out"> -->
            <script>var s = '<meta property="og:title" content="in a script">';</script>
            <meta property="og:title" content="A &quot;great&quot; post &#x2764;">
            <meta property='og:description' content='Line one
                line two'>
            <META PROPERTY=og:image CONTENT=/img/cover.png>
            <meta property="og:image:width" content="640" />
            <meta property="og:title" content="second title is ignored">
            </head><body>hello</body></html>"#;
        let og = opengraph(html, &base());
        assert_eq!(og["og:title"], "A \"great\" post ❤");
        assert_eq!(og["og:description"], "Line one line two");
        assert_eq!(og["og:image"], "https://example.org/img/cover.png");
        assert_eq!(og["og:image:width"], 640);
    }

    #[test]
    fn falls_back_to_title_and_description() {
        let html = "<html><head><title>\n  Plain &lt;page&gt;  </title>\
                    <meta name=\"description\" content=\"About it\"></head></html>";
        let og = opengraph(html, &base());
        assert_eq!(og["og:title"], "Plain <page>");
        assert_eq!(og["og:description"], "About it");
        assert!(og.get("og:image").is_none());
    }

    #[test]
    fn never_fails_on_garbage() {
        for html in [
            "",
            "<",
            "<meta",
            "<meta content=\"x",
            "<title>unterminated",
            "<<<>>>&&&#;&#xZZ;&#99999999999;",
            "<!-- never closed",
            "<script>never closed",
            "<meta property=og:image content=\"javascript:alert(1)\">",
            "<a\u{0}b>é<title>ü</title>",
        ] {
            let og = opengraph(html, &base());
            assert!(og.get("og:image").is_none(), "{html}: {og:?}");
        }
    }

    #[test]
    fn long_values_are_cut() {
        let html = format!("<meta property=og:title content=\"{}\">", "a".repeat(5000));
        let og = opengraph(&html, &base());
        let title = og["og:title"].as_str().expect("title");
        assert!(title.chars().count() <= MAX_VALUE_CHARS + 1);
    }

    #[test]
    fn charsets() {
        assert_eq!(
            decode_text(b"caf\xe9", "text/html; charset=ISO-8859-1"),
            "café"
        );
        assert_eq!(decode_text("café".as_bytes(), "text/html"), "café");
        assert_eq!(
            decode_text(b"<meta charset=\"windows-1252\">caf\xe9", "text/html"),
            "<meta charset=\"windows-1252\">café"
        );
    }
}
