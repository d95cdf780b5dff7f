//! Request bodies: JSON, form, XML, text and empty, parsed by content type.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Deepest nesting of objects and lists a body may have, whatever its
/// format: serde_json's own limit for JSON, applied to XML as well.
pub const MAX_BODY_DEPTH: usize = 127;

/// Parses `raw` according to `content_type`. With `accept_any`, a type
/// flowgate cannot parse yields `null` (the body stays in `request.raw`).
pub fn parse(content_type: Option<&str>, raw: &[u8], accept_any: bool) -> Result<Value, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
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
    match mime.as_deref() {
        Some("application/json") => json(raw),
        Some(m) if m.ends_with("+json") => json(raw),
        Some("application/x-www-form-urlencoded") => Ok(form(raw)),
        Some("application/xml" | "text/xml") => xml(raw),
        Some(m) if m.ends_with("+xml") => xml(raw),
        Some(m) if m.starts_with("text/") => std::str::from_utf8(raw)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| ApiError::bad_request("the text body is not valid UTF-8")),
        _ if accept_any => Ok(Value::Null),
        // Senders that omit the header almost always send JSON.
        None => json(raw).map_err(|_| unsupported("no content-type")),
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
}
