//! [`RunInput`] and its queued form.
//!
//! A queued run carries the trigger request with its raw body text. When the
//! body was JSON, the parsed body is left out of the queued form and parsed
//! again from the raw text on the way out: the queue then holds each payload
//! once, and the worker still sees the exact bytes that arrived.
//!
//! [`RunInput::queued_parts`] splits the queued form further, for queues
//! that can store bytes beside the JSON: the raw text travels as it
//! arrived, with no JSON escaping on the request path.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Resume;

/// Everything a run needs besides the flow: serializable, so it can be queued.
#[derive(Debug, Clone)]
pub struct RunInput {
    /// The run id.
    pub run_id: String,
    /// The flow id.
    pub flow_id: String,
    /// `sync` or `async`.
    pub mode: String,
    /// False for draft flows.
    pub live: bool,
    /// The parsed request body, exposed under the trigger's ref-id.
    pub body: Arc<Value>,
    /// Whether `request.raw` is the body's JSON text: `body` was parsed,
    /// whole, from it. The queue and the run record then keep the text
    /// alone.
    pub raw_is_body: bool,
    /// The `request` object of the template context.
    pub request: Arc<Value>,
    /// Where to pick up a run whose step is waiting for a retry.
    pub resume: Option<Resume>,
    /// The run this one replays, for a replay.
    pub replay_of: Option<String>,
}

#[derive(Serialize)]
struct Queued<'a> {
    run_id: &'a str,
    flow_id: &'a str,
    mode: &'a str,
    live: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a Value>,
    request: RequestHead<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resume: Option<&'a Resume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_of: Option<&'a str>,
}

#[derive(Deserialize)]
struct Dequeued {
    run_id: String,
    flow_id: String,
    mode: String,
    live: bool,
    #[serde(default)]
    body: Option<Value>,
    request: Value,
    #[serde(default)]
    resume: Option<Resume>,
    #[serde(default)]
    replay_of: Option<String>,
}

/// The request object, whole or with its `raw` text left as `null` (its
/// place kept, so the object comes back in the same order).
struct RequestHead<'a> {
    request: &'a Value,
    without_raw: bool,
}

impl Serialize for RequestHead<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.request.as_object() {
            Some(fields) if self.without_raw => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    match key.as_str() {
                        "raw" => map.serialize_entry(key, &Value::Null)?,
                        _ => map.serialize_entry(key, value)?,
                    }
                }
                map.end()
            }
            _ => self.request.serialize(serializer),
        }
    }
}

impl RunInput {
    fn queued(&self, without_raw: bool) -> Queued<'_> {
        let body_in_raw = self.raw_is_body && self.request["raw"].is_string();
        Queued {
            run_id: &self.run_id,
            flow_id: &self.flow_id,
            mode: &self.mode,
            live: self.live,
            body: (!body_in_raw).then_some(&*self.body),
            request: RequestHead {
                request: &self.request,
                without_raw,
            },
            resume: self.resume.as_ref(),
            replay_of: self.replay_of.as_deref(),
        }
    }

    /// The queued form in two parts: JSON without the request's raw body
    /// text, and that text. [`RunInput::from_queued_parts`] reverses it.
    pub fn queued_parts(&self) -> Result<(String, Option<&str>), crate::codec::CodecError> {
        let raw = self.request["raw"].as_str();
        Ok((crate::codec::encode(&self.queued(raw.is_some()))?, raw))
    }

    /// The input [`RunInput::queued_parts`] split into `head` and `raw`.
    pub fn from_queued_parts(
        head: &str,
        raw: Option<String>,
    ) -> Result<Self, crate::codec::CodecError> {
        let mut queued: Dequeued = crate::codec::decode(head)?;
        if let (Some(raw), Some(slot)) = (raw, queued.request.get_mut("raw")) {
            *slot = Value::String(raw);
        }
        queued
            .into_input()
            .map_err(|e| crate::codec::CodecError::Invalid(e.to_string()))
    }
}

impl Serialize for RunInput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queued(false).serialize(serializer)
    }
}

impl Dequeued {
    fn into_input(self) -> Result<RunInput, serde_json::Error> {
        let (body, raw_is_body) = match self.body {
            Some(body) => (body, false),
            None => {
                let raw = self.request["raw"].as_str().unwrap_or("");
                if raw.trim().is_empty() {
                    (Value::Object(Default::default()), false)
                } else {
                    (serde_json::from_str(raw)?, true)
                }
            }
        };
        Ok(RunInput {
            run_id: self.run_id,
            flow_id: self.flow_id,
            mode: self.mode,
            live: self.live,
            body: Arc::new(body),
            raw_is_body,
            request: Arc::new(self.request),
            resume: self.resume,
            replay_of: self.replay_of,
        })
    }
}

impl<'de> Deserialize<'de> for RunInput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Dequeued::deserialize(deserializer)?
            .into_input()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(content_type: &str, raw: &str, body: Value) -> RunInput {
        RunInput {
            run_id: "r".into(),
            flow_id: "f".into(),
            mode: "async".into(),
            live: true,
            raw_is_body: content_type.contains("json") && !raw.trim().is_empty(),
            body: Arc::new(body),
            request: Arc::new(json!({"headers": {"content-type": content_type}, "raw": raw})),
            resume: None,
            replay_of: None,
        }
    }

    #[test]
    fn json_bodies_are_queued_once_and_come_back_whole() {
        let raw = "{ \"a\": [1, 2.5, \"x\"] }";
        let queued = input(
            "application/json; charset=utf-8",
            raw,
            json!({"a": [1, 2.5, "x"]}),
        );
        let text = serde_json::to_string(&queued).unwrap();
        assert!(!text.contains("\"body\""), "{text}");
        let back: RunInput = serde_json::from_str(&text).unwrap();
        assert_eq!(*back.body, json!({"a": [1, 2.5, "x"]}));
        assert_eq!(back.request["raw"], raw);

        let empty: RunInput = serde_json::from_str(
            &serde_json::to_string(&input("application/json", "", json!({}))).unwrap(),
        )
        .unwrap();
        assert_eq!(*empty.body, json!({}));
    }

    #[test]
    fn split_inputs_keep_the_raw_text_apart_and_entries_written_whole_still_read() {
        let raw = "{\"b\": \"\\\"quoted\\\"\", \"a\": 1}";
        let queued = input("application/json", raw, json!({"b": "\"quoted\"", "a": 1}));
        let (head, text) = queued.queued_parts().unwrap();
        assert_eq!(text, Some(raw));
        assert!(!head.contains("quoted"), "{head}");
        let back = RunInput::from_queued_parts(&head, text.map(str::to_owned)).unwrap();
        assert_eq!(*back.request, *queued.request, "same fields, same order");
        assert_eq!(*back.body, *queued.body);
        assert!(back.raw_is_body);
        // An entry written whole (before the split) reads as it did.
        let whole = serde_json::to_string(&queued).unwrap();
        let back = RunInput::from_queued_parts(&whole, None).unwrap();
        assert_eq!(*back.request, *queued.request);
        assert_eq!(*back.body, *queued.body);
    }

    #[test]
    fn other_bodies_are_queued_parsed() {
        let form = input(
            "application/x-www-form-urlencoded",
            "a=1",
            json!({"a": "1"}),
        );
        let back: RunInput = serde_json::from_str(&serde_json::to_string(&form).unwrap()).unwrap();
        assert_eq!(*back.body, json!({"a": "1"}));
    }
}

#[cfg(test)]
mod round_trip {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::codec;
    use crate::inbound::body::{self, MAX_BODY_DEPTH};

    /// Text with the characters that trouble encoders.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\"\\\\<>&'{}\\[\\]\u{0}-\u{1f}\u{2028}é]{0,12}",
        ]
    }

    /// A JSON body nested `depth` levels, each an object or a list.
    fn nested_json(kinds: &[bool], leaf: &str) -> String {
        let mut out = serde_json::to_string(leaf).unwrap();
        for &object in kinds.iter().rev() {
            out = match object {
                true => format!(r#"{{"k": {out}, "n": 1.5}}"#),
                false => format!("[{out}, null, true]"),
            };
        }
        out
    }

    /// XML nested `depth` elements; `twice` repeats an element (a list).
    fn nested_xml(depth: usize, twice: &[bool], leaf: &str) -> String {
        let escaped = leaf
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let mut out = escaped;
        for level in (0..depth).rev() {
            let element = format!("<e{level} a=\"{level}\">{out}</e{level}>");
            out = match twice.get(level).copied().unwrap_or(false) {
                true => format!("{element}{element}"),
                false => element,
            };
        }
        format!("<root>{out}</root>")
    }

    fn body_case() -> impl Strategy<Value = (&'static str, String)> {
        let depth = 0..=MAX_BODY_DEPTH + 3;
        prop_oneof![
            (
                proptest::collection::vec(any::<bool>(), depth.clone()),
                text()
            )
                .prop_map(|(kinds, leaf)| ("application/json", nested_json(&kinds, &leaf))),
            (
                depth,
                proptest::collection::vec(any::<bool>(), 0..8),
                text()
            )
                .prop_map(|(d, twice, leaf)| ("application/xml", nested_xml(d, &twice, &leaf))),
            proptest::collection::vec((text(), text()), 0..6).prop_map(|pairs| {
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &pairs {
                    form.append_pair(k, v);
                }
                ("application/x-www-form-urlencoded", form.finish())
            }),
            text().prop_map(|t| ("text/plain", t)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Anything the trigger accepts comes back from the queue encoding
        /// whole, and so does a record or step output wrapping it.
        #[test]
        fn accepted_bodies_round_trip_through_the_queue((content_type, raw) in body_case()) {
            let Ok((parsed, raw_is_body)) = body::parse_with_kind(Some(content_type), raw.as_bytes(), false) else {
                return Ok(());
            };
            prop_assert!(codec::nesting_depth(parsed.to_string().as_bytes()) <= MAX_BODY_DEPTH);
            let input = RunInput {
                run_id: "r".into(),
                flow_id: "f".into(),
                mode: "async".into(),
                live: true,
                body: Arc::new(parsed.clone()),
                raw_is_body,
                request: Arc::new(json!({"headers": {"content-type": content_type}, "raw": raw})),
                resume: None,
                replay_of: None,
            };
            let text = codec::encode(&input).expect("an accepted body encodes");
            let back: RunInput = codec::decode(&text).expect("and decodes");
            prop_assert_eq!(&*back.body, &parsed);
            prop_assert_eq!(&*back.request, &*input.request);
            prop_assert_eq!(back.raw_is_body, raw_is_body);
            // Split, as the Redis queue stores it: the same run comes back.
            let (head, raw_part) = input.queued_parts().expect("an accepted body encodes");
            let back = RunInput::from_queued_parts(&head, raw_part.map(str::to_owned)).expect("and decodes");
            prop_assert_eq!(&*back.body, &parsed);
            prop_assert_eq!(&*back.request, &*input.request);
            prop_assert_eq!(back.raw_is_body, raw_is_body);
            let wrapped = json!({"steps": [{"output": {"each": {"results": [{"x": parsed}]}}}]});
            let back: Value = codec::decode(&codec::encode(&wrapped).unwrap()).unwrap();
            prop_assert_eq!(back, wrapped);
        }
    }
}
