//! Request bodies: JSON, form, XML, text and empty, parsed by content type.

use std::io::Read;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Deepest nesting of objects and lists a body may have, whatever its
/// format: serde_json's own limit for JSON, applied to XML as well.
pub const MAX_BODY_DEPTH: usize = 127;

/// Most encodings stacked in one `Content-Encoding` header.
const MAX_ENCODINGS: usize = 2;

/// Undoes `Content-Encoding` (`gzip`, `deflate`, `br`, `identity`, or a
/// list of them), holding the decoded body to `limit` bytes: a compression
/// bomb is refused with 413 after decoding `limit` bytes, never more.
pub fn decode(encoding: Option<&str>, raw: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let Some(encoding) = encoding.map(str::trim).filter(|e| !e.is_empty()) else {
        return Ok(raw);
    };
    let codings: Vec<String> = encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| c != "identity")
        .collect();
    if codings.len() > MAX_ENCODINGS {
        return Err(unsupported_encoding(encoding));
    }
    let mut body = raw;
    // Applied in the order listed, so undone from the last.
    for coding in codings.iter().rev() {
        let reader: Box<dyn Read + '_> = match coding.as_str() {
            "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
            "deflate" => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
            "br" => Box::new(brotli_decompressor::Decompressor::new(&body[..], 4096)),
            _ => return Err(unsupported_encoding(coding)),
        };
        let mut decoded = Vec::new();
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut decoded)
            .map_err(|e| {
                ApiError::bad_request(format!("the {coding} body could not be decoded: {e}"))
            })?;
        if decoded.len() > limit {
            return Err(ApiError::new(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the decoded body is over this flow's limit of {limit} bytes"),
            ));
        }
        body = Bytes::from(decoded);
    }
    Ok(body)
}

fn unsupported_encoding(encoding: &str) -> ApiError {
    ApiError::new(
        http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "content-encoding `{encoding}` is not supported: send gzip, deflate, br or identity"
        ),
    )
}

/// Parses `raw` according to `content_type`. With `accept_any`, a type
/// flowgate cannot parse yields `null` (the body stays in `request.raw`).
pub fn parse(content_type: Option<&str>, raw: &[u8], accept_any: bool) -> Result<Value, ApiError> {
    parse_with_kind(content_type, raw, accept_any).map(|(value, _)| value)
}

/// As [`parse`], and whether the body was JSON: then `raw` is exactly the
/// value's JSON text (it parsed, whole, as the value).
pub fn parse_with_kind(
    content_type: Option<&str>,
    raw: &[u8],
    accept_any: bool,
) -> Result<(Value, bool), ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok((Value::Object(Map::new()), false));
    }
    let mime = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty());
    let other = |value: Result<Value, ApiError>| value.map(|v| (v, false));
    match mime.as_deref() {
        Some("application/json") => json(raw).map(|v| (v, true)),
        Some(m) if m.ends_with("+json") => json(raw).map(|v| (v, true)),
        Some("application/x-www-form-urlencoded") => other(Ok(form(raw))),
        Some("application/xml" | "text/xml") => other(xml(raw)),
        Some(m) if m.ends_with("+xml") => other(xml(raw)),
        Some(m) if m.starts_with("text/") => other(
            std::str::from_utf8(raw)
                .map(|s| Value::String(s.to_owned()))
                .map_err(|_| ApiError::bad_request("the text body is not valid UTF-8")),
        ),
        _ if accept_any => other(Ok(Value::Null)),
        // Senders that omit the header almost always send JSON.
        None => json(raw)
            .map(|v| (v, true))
            .map_err(|_| unsupported("no content-type")),
        Some(m) => Err(unsupported(m)),
    }
}

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "{what}: send application/json, application/x-www-form-urlencoded, application/xml, text/xml or text/*"
        ),
    )
}

fn json(raw: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Form fields as an object; a repeated field becomes a list.
fn form(raw: &[u8]) -> Value {
    let mut map = Map::new();
    for (key, value) in form_urlencoded::parse(raw) {
        let value = Value::String(value.into_owned());
        match map.get_mut(key.as_ref()) {
            Some(Value::Array(list)) => list.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                map.insert(key.into_owned(), value);
            }
        }
    }
    Value::Object(map)
}

/// XML as an object: `{root: {...}}`; attributes as `@name`, text of an
/// element with children or attributes as `#text`, repeated children as
/// lists. Nesting is counted as the resulting object's, against [`MAX_BODY_DEPTH`].
fn xml(raw: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| ApiError::bad_request("the XML body is not valid UTF-8"))?;
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid XML: {e}")))?;
    let root = doc.root_element();
    let mut map = Map::new();
    map.insert(root.tag_name().name().to_owned(), element(root, 2)?);
    Ok(Value::Object(map))
}

/// `node` as a value that would sit at `depth` (1 is the body itself).
fn element(node: roxmltree::Node<'_, '_>, depth: usize) -> Result<Value, ApiError> {
    let has_children = node.children().any(|c| c.is_element());
    if (has_children || node.attributes().next().is_some()) && depth > MAX_BODY_DEPTH {
        return Err(ApiError::bad_request(format!(
            "the XML body is nested too deeply: at most {MAX_BODY_DEPTH} levels of objects and lists"
        )));
    }
    let mut map = Map::new();
    for attr in node.attributes() {
        map.insert(
            format!("@{}", attr.name()),
            Value::String(attr.value().to_owned()),
        );
    }
    // A repeated child becomes a list: one level more, counted up front.
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for child in node.children().filter(|c| c.is_element()) {
        *seen.entry(child.tag_name().name()).or_default() += 1;
    }
    let mut text = String::new();
    for child in node.children() {
        if child.is_element() {
            let repeated = seen[child.tag_name().name()] > 1;
            let value = element(child, depth + 1 + usize::from(repeated))?;
            match map.get_mut(child.tag_name().name()) {
                Some(Value::Array(list)) => list.push(value),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, value]);
                }
                None => {
                    map.insert(child.tag_name().name().to_owned(), value);
                }
            }
        } else if let Some(t) = child.text() {
            text.push_str(t);
        }
    }
    let text = text.trim();
    if map.is_empty() {
        return Ok(Value::String(text.to_owned()));
    }
    if !text.is_empty() {
        map.insert("#text".into(), Value::String(text.to_owned()));
    }
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_each_supported_type() {
        assert_eq!(
            parse(
                Some("application/json; charset=utf-8"),
                br#"{"a":1}"#,
                false
            )
            .unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            parse(
                Some("application/x-www-form-urlencoded"),
                b"a=1&b=x+y&a=2",
                false
            )
            .unwrap(),
            json!({"a": ["1", "2"], "b": "x y"})
        );
        assert_eq!(
            parse(
                Some("text/xml"),
                br#"<order id="7"><item>a</item><item>b</item><note>hi</note></order>"#,
                false
            )
            .unwrap(),
            json!({"order": {"@id": "7", "item": ["a", "b"], "note": "hi"}})
        );
        assert_eq!(
            parse(Some("text/plain"), b"hello", false).unwrap(),
            json!("hello")
        );
        assert_eq!(parse(None, b"", false).unwrap(), json!({}));
        assert_eq!(parse(None, br#"[1]"#, false).unwrap(), json!([1]));
    }

    #[test]
    fn rejects_what_it_cannot_parse() {
        assert_eq!(
            parse(Some("application/json"), b"{", false)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse(Some("application/xml"), b"<a>", false)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse(Some("image/png"), b"\x89PNG", false)
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(
            parse(Some("image/png"), b"\x89PNG", true).unwrap(),
            Value::Null
        );
    }

    fn nested_xml(elements: usize) -> String {
        let open: String = (0..elements).map(|i| format!("<e{i}>")).collect();
        let close: String = (0..elements).rev().map(|i| format!("</e{i}>")).collect();
        format!("{open}x{close}")
    }

    #[test]
    fn every_format_has_the_same_depth_bound() {
        let json_ok = format!(
            "{}{}",
            "[".repeat(MAX_BODY_DEPTH),
            "]".repeat(MAX_BODY_DEPTH)
        );
        let json_deep = format!("[{json_ok}]");
        assert!(parse(Some("application/json"), json_ok.as_bytes(), false).is_ok());
        assert_eq!(
            parse(Some("application/json"), json_deep.as_bytes(), false)
                .unwrap_err()
                .status,
            400
        );
        // {e0: {e1: ... "x"}}: the body object plus one object per element but the last.
        let xml_ok = parse(
            Some("application/xml"),
            nested_xml(MAX_BODY_DEPTH).as_bytes(),
            false,
        )
        .expect("at the bound");
        assert_eq!(
            crate::codec::nesting_depth(xml_ok.to_string().as_bytes()),
            MAX_BODY_DEPTH
        );
        for elements in [MAX_BODY_DEPTH + 1, 3_400, 100_000] {
            let err = parse(Some("text/xml"), nested_xml(elements).as_bytes(), false).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(err.message.contains("nested too deeply"), "{}", err.message);
        }
        // Repeated children become lists, and lists count as a level.
        let listed = format!("<r>{0}{0}</r>", nested_xml(MAX_BODY_DEPTH - 1));
        assert_eq!(
            parse(Some("text/xml"), listed.as_bytes(), false)
                .unwrap_err()
                .status,
            400
        );
    }

    /// `{"event": "br", "n": 3}` and 3 MiB of spaces, brotli-encoded by the reference encoder.
    const BROTLI_SMALL: &[u8] = &[
        11, 11, 128, 123, 34, 101, 118, 101, 110, 116, 34, 58, 32, 34, 98, 114, 34, 44, 32, 34,
        110, 34, 58, 32, 51, 125, 3,
    ];
    const BROTLI_BOMB: &[u8] = &[
        155, 255, 255, 47, 248, 37, 64, 226, 177, 64, 32, 247, 254, 5,
    ];

    fn gzip(data: &[u8]) -> Bytes {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    #[test]
    fn encoded_bodies_are_decoded_within_the_limit() {
        let json = br#"{"a": 1}"#;
        assert_eq!(decode(Some("gzip"), gzip(json), 100).unwrap(), &json[..]);
        assert_eq!(
            decode(Some("identity"), Bytes::from_static(json), 100).unwrap(),
            &json[..]
        );
        let deflated = {
            use std::io::Write;
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(json).unwrap();
            Bytes::from(e.finish().unwrap())
        };
        assert_eq!(decode(Some("Deflate"), deflated, 100).unwrap(), &json[..]);
        assert_eq!(
            decode(Some("br"), Bytes::from_static(BROTLI_SMALL), 100).unwrap(),
            &br#"{"event": "br", "n": 3}"#[..]
        );
        for (encoding, bomb) in [
            ("br", Bytes::from_static(BROTLI_BOMB)),
            ("gzip", gzip(&vec![b' '; 3 * 1024 * 1024])),
        ] {
            let err = decode(Some(encoding), bomb, 1024 * 1024).unwrap_err();
            assert_eq!(err.status, 413, "{encoding}");
        }
        let err = decode(Some("zstd"), Bytes::from_static(b"x"), 100).unwrap_err();
        assert_eq!(err.status, 415);
        assert!(err.message.contains("`zstd`"), "{}", err.message);
        assert_eq!(
            decode(Some("gzip"), Bytes::from_static(b"not gzip"), 100)
                .unwrap_err()
                .status,
            400
        );
    }
}
