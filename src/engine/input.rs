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
