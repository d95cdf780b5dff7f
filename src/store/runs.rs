//! Run records: what the flow debugger shows for each run.
//!
//! A record is written when a run is accepted (async: `queued`), when a
//! worker starts it (`running`) and when it ends. Large values are cut to
//! [`MAX_VALUE_BYTES`] with a marker, so one huge payload cannot bloat the
//! history.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{RunError, RunInput, RunReport, StepTrace};
use crate::flow::Flow;

/// Largest stored size of one value (body, step input or output), in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// One run, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Flow id.
    pub flow: String,
    /// The flow file's content hash when the run was accepted.
    pub flow_version: String,
    /// `sync` or `async`.
    pub mode: String,
    /// False for draft flows.
    pub live: bool,
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out` or `aborted`.
    pub status: String,
    /// When the request arrived, RFC 3339.
    pub created_at: String,
    /// When execution started.
    pub started_at: Option<String>,
    /// When execution ended.
    pub ended_at: Option<String>,
    /// Executions so far: more than 1 after a step retry through the queue
    /// or a worker that died mid-run.
    pub attempt: u32,
    /// Executions started in a row that never ended (their worker died).
    #[serde(default)]
    pub interrupted: u32,
    /// When a run waiting to retry a step is due again.
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    /// Wall time of the last execution, in milliseconds.
    pub duration_ms: Option<u64>,
    /// The trigger request: method, path, query, headers (no authorization), raw body.
    pub request: Arc<Value>,
    /// The parsed body, as the flow saw it under its trigger ref.
    pub body: Arc<Value>,
    /// Each step execution.
    pub steps: Vec<StepTrace>,
    /// Messages of `log` steps.
    pub logs: Vec<String>,
    /// The answer sent (sync runs, and the immediate answer of async ones).
    pub response: Option<RecordedResponse>,
    /// Why the run failed.
    pub error: Option<RunError>,
}

/// An answer as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body, cut to [`MAX_VALUE_BYTES`].
    pub body: String,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl RunRecord {
    /// A record for a run that has not started.
    pub fn accepted(flow: &Flow, input: &RunInput, status: &str) -> Self {
        let created_at = input
            .request
            .get("received_at")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(now_rfc3339);
        Self {
            id: input.run_id.clone(),
            flow: flow.id.clone(),
            flow_version: flow.version.clone(),
            mode: input.mode.clone(),
            live: input.live,
            status: status.to_owned(),
            created_at,
            started_at: None,
            ended_at: None,
            attempt: 0,
            interrupted: 0,
            next_attempt_at: None,
            duration_ms: None,
            request: bounded_shared(&input.request),
            body: bounded_shared(&input.body),
            steps: Vec::new(),
            logs: Vec::new(),
            response: None,
            error: None,
        }
    }

    /// Marks the record as started now.
    pub fn start(&mut self) {
        self.status = "running".into();
        self.attempt += 1;
        self.interrupted += 1;
        self.next_attempt_at = None;
        self.started_at = Some(now_rfc3339());
    }

    /// Fills in how the run ended.
    pub fn finish(&mut self, report: &RunReport) {
        self.status = report.status.as_str().to_owned();
        self.interrupted = 0;
        if self.started_at.is_none() {
            self.started_at = Some(now_rfc3339());
            self.attempt += 1;
        }
        match &report.retry {
            Some(retry) => {
                self.ended_at = None;
                let due = SystemTime::now() + retry.delay;
                self.next_attempt_at = Some(humantime::format_rfc3339_millis(due).to_string());
            }
            None => self.ended_at = Some(now_rfc3339()),
        }
        self.duration_ms = Some(report.duration.as_millis() as u64);
        self.steps = report
            .steps
            .iter()
            .cloned()
            .map(|mut step| {
                step.input = bounded(step.input);
                step.output = bounded(step.output);
                step
            })
            .collect();
        self.logs = report.logs.clone();
        self.error = report.error.clone();
    }

    /// Records the answer sent.
    pub fn set_response(&mut self, status: u16, headers: Vec<(String, String)>, body: &[u8]) {
        let mut body = String::from_utf8_lossy(body).into_owned();
        if body.len() > MAX_VALUE_BYTES {
            let cut = floor_char_boundary(&body, MAX_VALUE_BYTES);
            let dropped = body.len() - cut;
            body.truncate(cut);
            body.push_str(&format!("…[truncated {dropped} bytes]"));
        }
        self.response = Some(RecordedResponse {
            status,
            headers,
            body,
        });
    }
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0)
}

/// A shared value as [`bounded`] would keep it, copied only when it must be cut.
fn bounded_shared(value: &Arc<Value>) -> Arc<Value> {
    if json_len(value) <= MAX_VALUE_BYTES {
        Arc::clone(value)
    } else {
        Arc::new(bounded(value.as_ref().clone()))
    }
}

/// `value` when its JSON fits in [`MAX_VALUE_BYTES`]; otherwise long strings
/// are cut and objects and lists too large even then become a marker string.
pub fn bounded(value: Value) -> Value {
    if json_len(&value) <= MAX_VALUE_BYTES {
        return value;
    }
    match value {
        Value::String(mut s) => {
            let cut = floor_char_boundary(&s, MAX_VALUE_BYTES);
            let dropped = s.len() - cut;
            s.truncate(cut);
            s.push_str(&format!("…[truncated {dropped} bytes]"));
            Value::String(s)
        }
        Value::Object(map) => whole_or_marker(Value::Object(
            map.into_iter().map(|(k, v)| (k, bounded(v))).collect(),
        )),
        Value::Array(items) => {
            whole_or_marker(Value::Array(items.into_iter().map(bounded).collect()))
        }
        other => other,
    }
}

fn whole_or_marker(value: Value) -> Value {
    let size = json_len(&value);
    if size > MAX_VALUE_BYTES * 2 {
        Value::String(format!("…[truncated: {size} bytes of JSON]"))
    } else {
        value
    }
}

/// Length of `value` as JSON, without building the text.
fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_are_cut_with_a_marker() {
        let big = "x".repeat(MAX_VALUE_BYTES + 10);
        let Value::String(cut) = bounded(Value::String(big)) else {
            panic!()
        };
        assert!(cut.ends_with("…[truncated 10 bytes]"));
        let many: Vec<Value> = (0..40_000).map(|i| serde_json::json!({"i": i})).collect();
        let Value::String(marker) = bounded(Value::Array(many)) else {
            panic!()
        };
        assert!(marker.starts_with("…[truncated: "), "{marker}");
        assert_eq!(
            bounded(serde_json::json!({"a": 1})),
            serde_json::json!({"a": 1})
        );
    }
}
