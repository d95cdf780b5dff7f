//! [`RunInput`] and its queued form.
//!
//! A queued run carries the trigger request with its raw body text. When the
//! body was JSON, the parsed body is left out of the queued form and parsed
//! again from the raw text on the way out: the queue then holds each payload
//! once, and the worker still sees the exact bytes that arrived.

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
    /// The `request` object of the template context.
    pub request: Arc<Value>,
    /// Where to pick up a run whose step is waiting for a retry.
    pub resume: Option<Resume>,
    /// The run this one replays, for a replay.
    pub replay_of: Option<String>,
}

/// Whether a `request` object's content type says JSON, so its body is the
/// raw text parsed as JSON.
pub fn is_json_request(request: &Value) -> bool {
    let Some(content_type) = request["headers"]["content-type"].as_str() else {
        return false;
    };
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json") || mime.to_ascii_lowercase().ends_with("+json")
}

#[derive(Serialize)]
struct Queued<'a> {
    run_id: &'a str,
    flow_id: &'a str,
    mode: &'a str,
    live: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a Value>,
    request: &'a Value,
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

impl Serialize for RunInput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let body_in_raw = is_json_request(&self.request) && self.request["raw"].is_string();
        Queued {
            run_id: &self.run_id,
            flow_id: &self.flow_id,
            mode: &self.mode,
            live: self.live,
            body: (!body_in_raw).then_some(&*self.body),
            request: &self.request,
            resume: self.resume.as_ref(),
            replay_of: self.replay_of.as_deref(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RunInput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let queued = Dequeued::deserialize(deserializer)?;
        let body = match queued.body {
            Some(body) => body,
            None => {
                let raw = queued.request["raw"].as_str().unwrap_or("");
                if raw.trim().is_empty() {
                    Value::Object(Default::default())
                } else {
                    serde_json::from_str(raw).map_err(serde::de::Error::custom)?
                }
            }
        };
        Ok(Self {
            run_id: queued.run_id,
            flow_id: queued.flow_id,
            mode: queued.mode,
            live: queued.live,
            body: Arc::new(body),
            request: Arc::new(queued.request),
            resume: queued.resume,
            replay_of: queued.replay_of,
        })
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
    use crate::trigger::body::{self, MAX_BODY_DEPTH};

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
            let Ok(parsed) = body::parse(Some(content_type), raw.as_bytes(), false) else {
                return Ok(());
            };
            prop_assert!(codec::nesting_depth(parsed.to_string().as_bytes()) <= MAX_BODY_DEPTH);
            let input = RunInput {
                run_id: "r".into(),
                flow_id: "f".into(),
                mode: "async".into(),
                live: true,
                body: Arc::new(parsed.clone()),
                request: Arc::new(json!({"headers": {"content-type": content_type}, "raw": raw})),
                resume: None,
                replay_of: None,
            };
            let text = codec::encode(&input).expect("an accepted body encodes");
            let back: RunInput = codec::decode(&text).expect("and decodes");
            prop_assert_eq!(&*back.body, &parsed);
            prop_assert_eq!(&*back.request, &*input.request);
            let wrapped = json!({"steps": [{"output": {"each": {"results": [{"x": parsed}]}}}]});
            let back: Value = codec::decode(&codec::encode(&wrapped).unwrap()).unwrap();
            prop_assert_eq!(back, wrapped);
        }
    }
}
