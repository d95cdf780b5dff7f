//! Run records: what the flow debugger shows for each run.
//!
//! A record is written when a run is accepted (async: `queued`), when a
//! worker starts it (`running`) and when it ends. Large values are cut to
//! [`MAX_VALUE_BYTES`] with a marker, so one huge payload cannot bloat the
//! history, and a whole record is held to its flow's
//! [`RecordPolicy::max_bytes`] (`runs.max_record_bytes`): past it, the
//! largest values give way to markers first, then the last step traces,
//! and [`RunRecord::cut`] says what went and how large it was.
//!
//! Which records are kept is each flow's [`RecordPolicy`]: all of them,
//! only those of runs that went wrong, or none, and at most so many per
//! flow. A run in progress always keeps its record: the queue and the
//! debugger need it until the run ends.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{RunError, RunInput, RunReport, RunState, StepTrace};
use crate::flow::{Flow, Keep, RecordPolicy};

pub use crate::codec::MAX_VALUE_BYTES;
use crate::codec::{bounded, fits, floor_char_boundary, json_len, json_len_bound};
/// Room a step trace takes besides its input and output (path, kind,
/// times), a generous estimate.
const STEP_OVERHEAD: usize = 400;
/// Room a record takes besides its values (ids, times, status), a generous
/// estimate.
const RECORD_OVERHEAD: usize = 2048;

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
    pub status: RunState,
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
    /// Wall time of the whole run, in milliseconds: from its first start to
    /// its end, retries and the waits between them included (each step
    /// trace keeps its own).
    pub duration_ms: Option<u64>,
    /// The trigger request: method, path, query, headers (no authorization),
    /// and the raw body unless it was JSON (then `body` holds the same data).
    pub request: RecordedRequest,
    /// The parsed body, as the flow saw it under its trigger ref.
    #[serde(skip_serializing_if = "body_spliced")]
    pub body: Arc<Value>,
    /// Each step execution.
    pub steps: Vec<StepTrace>,
    /// Messages of `log` steps.
    pub logs: Vec<String>,
    /// The answer sent (sync runs, and the immediate answer of async ones).
    pub response: Option<RecordedResponse>,
    /// Why the run failed.
    pub error: Option<RunError>,
    /// The run this one replays (`flowgate runs replay`, `POST /v1/admin/runs/{id}/replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// Values left out to keep the record within its flow's
    /// `runs.max_record_bytes`, each where it was and how large.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<CutValue>,
    /// Whether and how this record is kept when written: its flow's policy
    /// where the writer knows the flow, otherwise kept with no count cap.
    #[serde(skip)]
    pub policy: RecordPolicy,
}

/// A value a record left out for its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutValue {
    /// Where it was, as a JSON pointer into the record (`/steps/3/output`);
    /// `/steps/12-` for step traces left out from the 13th on.
    pub at: String,
    /// Its size as JSON, in bytes.
    pub bytes: usize,
}

/// Whether a record in `status` is kept under `policy`: always while the
/// run is in progress, and after it as [`RecordPolicy::keep`] says.
fn keeps(policy: &RecordPolicy, status: RunState) -> bool {
    match status {
        RunState::Queued | RunState::Running | RunState::Waiting => true,
        RunState::Succeeded => policy.keep == Keep::All,
        RunState::Failed | RunState::TimedOut | RunState::Aborted => policy.keep != Keep::None,
    }
}

thread_local! {
    /// Set while [`RunRecord::encode`] writes a record whose body it puts
    /// in as the sender's text: the derived encoding then leaves it out.
    static BODY_SPLICED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn body_spliced(_: &Arc<Value>) -> bool {
    BODY_SPLICED.with(std::cell::Cell::get)
}

/// Clears [`BODY_SPLICED`] when dropped, even if encoding panicked.
struct SplicingBody;

impl SplicingBody {
    fn start() -> Self {
        BODY_SPLICED.with(|flag| flag.set(true));
        SplicingBody
    }
}

impl Drop for SplicingBody {
    fn drop(&mut self) {
        BODY_SPLICED.with(|flag| flag.set(false));
    }
}

/// The trigger request of a record. Its `raw` body text is left out of the
/// stored record when the body was JSON: the parsed `body` holds the same
/// data, and the run history would otherwise keep every payload twice.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    value: Arc<Value>,
    omit_raw: bool,
}

impl RecordedRequest {
    /// The sender's JSON text of the body, when the body is exactly that
    /// text parsed (`omit_raw`) and the text was kept whole.
    fn body_text(&self) -> Option<&str> {
        if !self.omit_raw {
            return None;
        }
        let text = self.value.get("raw")?.as_str()?.trim();
        (!text.is_empty() && text.len() <= MAX_VALUE_BYTES).then_some(text)
    }
}

impl std::ops::Deref for RecordedRequest {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.value
    }
}

impl Serialize for RecordedRequest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.value.as_object() {
            Some(fields) if self.omit_raw => {
                let mut map = serializer.serialize_map(None)?;
                for (key, value) in fields.iter().filter(|(key, _)| *key != "raw") {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
            _ => self.value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RecordedRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            value: Arc::new(Value::deserialize(deserializer)?),
            omit_raw: false,
        })
    }
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

use crate::clock::now_rfc3339;

impl RunRecord {
    /// A record for a run that has not started.
    pub fn accepted(flow: &Flow, input: &RunInput, status: RunState) -> Self {
        let created_at = input
            .request
            .get("received_at")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(now_rfc3339);
        let request = RecordedRequest {
            omit_raw: input.raw_is_body,
            value: bounded_shared(&input.request),
        };
        // A body stored as the sender's text (see `encode`) is bounded by
        // that text's length, with no need to measure the value.
        let body = match request.body_text() {
            Some(_) => Arc::clone(&input.body),
            None => bounded_shared(&input.body),
        };
        Self {
            id: input.run_id.clone(),
            flow: flow.id.clone(),
            flow_version: flow.version.clone(),
            mode: input.mode.clone(),
            live: input.live,
            status,
            created_at,
            started_at: None,
            ended_at: None,
            attempt: 0,
            interrupted: 0,
            next_attempt_at: None,
            duration_ms: None,
            request,
            body,
            steps: Vec::new(),
            logs: Vec::new(),
            response: None,
            error: None,
            replay_of: input.replay_of.clone(),
            cut: Vec::new(),
            policy: flow.records,
        }
    }

    /// The record as stored: its JSON text. A JSON body that fits in
    /// [`MAX_VALUE_BYTES`] is written as the sender's own text, which is the
    /// same data ([`RunInput::raw_is_body`]: it parsed, whole, as the body)
    /// and costs a copy instead of a second encoding.
    pub fn encode(&self) -> Result<String, crate::codec::CodecError> {
        let Some(text) = self.request.body_text() else {
            return crate::codec::encode(self);
        };
        let rest = {
            let _splicing = SplicingBody::start();
            crate::codec::encode(self)?
        };
        // `rest` is the object without `body`, never empty (`id` is always
        // there): the body goes in as its first member.
        let mut out = String::with_capacity(rest.len() + text.len() + 9);
        out.push_str("{\"body\":");
        out.push_str(text);
        out.push(',');
        out.push_str(&rest[1..]);
        Ok(out)
    }

    /// Whether this record is kept when written, by its policy.
    pub fn kept(&self) -> bool {
        keeps(&self.policy, self.status)
    }

    /// Marks the run as given up on, for `reason`.
    pub fn abort(&mut self, reason: &str) {
        self.status = RunState::Aborted;
        self.ended_at = Some(now_rfc3339());
        self.error = Some(RunError {
            step: None,
            message: reason.to_owned(),
        });
    }

    /// Marks the record as started now (its `started_at` stays the first
    /// execution's).
    pub fn start(&mut self) {
        self.status = RunState::Running;
        self.attempt += 1;
        self.interrupted += 1;
        self.next_attempt_at = None;
        if self.started_at.is_none() {
            self.started_at = Some(now_rfc3339());
        }
    }

    /// Fills in how the run ended.
    pub fn finish(&mut self, report: &RunReport) {
        // A run waiting for a retry is queued again.
        self.status = match report.status {
            RunState::Waiting => RunState::Queued,
            state => state,
        };
        self.interrupted = 0;
        if self.started_at.is_none() {
            // A sync run's record is written once, at its end: it started
            // when its execution did.
            self.started_at = Some(humantime::format_rfc3339_millis(report.started_at).to_string());
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
        // Traces are bounded value by value as each step ends.
        self.steps = report.steps.clone();
        self.logs = report.logs.clone();
        self.error = report.error.clone();
        self.fit();
    }

    /// Holds the record to [`RecordPolicy::max_bytes`]: the largest values
    /// become markers until it fits, then the last step traces go; each cut
    /// is listed in [`RunRecord::cut`].
    pub fn fit(&mut self) {
        let cap = self.policy.max_bytes;
        // A generous estimate settles nearly every record without measuring.
        let estimate = RECORD_OVERHEAD
            + json_len_bound(&self.request)
            + json_len_bound(&self.body)
            + self.response.as_ref().map_or(0, |r| 6 * r.body.len() + 512)
            + self.logs.iter().map(|l| 6 * l.len() + 3).sum::<usize>()
            + self
                .steps
                .iter()
                .map(|s| STEP_OVERHEAD + json_len_bound(&s.input) + json_len_bound(&s.output))
                .sum::<usize>();
        if estimate <= cap {
            return;
        }
        let mut slots: Vec<(usize, Slot)> = Vec::new();
        let body_size = match self.request.body_text() {
            Some(text) => text.len(),
            None => json_len(&self.body),
        };
        slots.push((body_size, Slot::Body));
        if let Some(response) = &self.response {
            slots.push((response.body.len() + 2, Slot::Response));
        }
        for (i, log) in self.logs.iter().enumerate() {
            slots.push((log.len() + 2, Slot::Log(i)));
        }
        for (i, step) in self.steps.iter().enumerate() {
            slots.push((json_len(&step.input), Slot::StepInput(i)));
            slots.push((json_len(&step.output), Slot::StepOutput(i)));
        }
        let values: usize = slots.iter().map(|(size, _)| size).sum();
        let request = json_len(&self.request);
        let mut total = RECORD_OVERHEAD + request + values + STEP_OVERHEAD * self.steps.len();
        slots.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
        for (size, slot) in slots {
            if total <= cap || size <= CUT_MARKER_BYTES {
                break;
            }
            self.replace_with_marker(&slot, cut_marker(size));
            total = total - size + CUT_MARKER_BYTES;
            self.cut.push(CutValue {
                at: slot.pointer(),
                bytes: size,
            });
        }
        // Still over: many steps. The last traces go, the first are kept.
        if total > cap {
            self.drop_last_steps(total, cap);
        }
    }

    /// Puts `marker` where `slot` was.
    fn replace_with_marker(&mut self, slot: &Slot, marker: String) {
        match *slot {
            Slot::Body => {
                // The sender's text goes too: it is the same data.
                self.body = Arc::new(Value::String(marker));
                if self.request.omit_raw {
                    self.request.omit_raw = false;
                    let mut value = self.request.value.as_ref().clone();
                    if let Some(raw) = value.get_mut("raw") {
                        *raw = Value::Null;
                    }
                    self.request.value = Arc::new(value);
                }
            }
            Slot::Response => {
                if let Some(response) = &mut self.response {
                    response.body = marker;
                }
            }
            Slot::Log(i) => self.logs[i] = marker,
            Slot::StepInput(i) => self.steps[i].input = Value::String(marker),
            Slot::StepOutput(i) => self.steps[i].output = Value::String(marker),
        }
    }

    /// Leaves out the last step traces until the record, `total` bytes
    /// now, fits in `cap`; the first are kept.
    fn drop_last_steps(&mut self, total: usize, cap: usize) {
        let mut kept = 0;
        let mut used = total
            - self
                .steps
                .iter()
                .map(|s| STEP_OVERHEAD + json_len(&s.input) + json_len(&s.output))
                .sum::<usize>();
        for step in &self.steps {
            let size = STEP_OVERHEAD + json_len(&step.input) + json_len(&step.output);
            if used + size > cap {
                break;
            }
            used += size;
            kept += 1;
        }
        let dropped: usize = self.steps[kept..]
            .iter()
            .map(|s| STEP_OVERHEAD + json_len(&s.input) + json_len(&s.output))
            .sum();
        self.steps.truncate(kept);
        self.cut.push(CutValue {
            at: format!("/steps/{kept}-"),
            bytes: dropped,
        });
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
        self.fit();
    }
}

/// A value of a record that can be cut.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Body,
    Response,
    Log(usize),
    StepInput(usize),
    StepOutput(usize),
}

impl Slot {
    /// Where the value is, as a JSON pointer into the record.
    fn pointer(self) -> String {
        match self {
            Slot::Body => "/body".to_owned(),
            Slot::Response => "/response/body".to_owned(),
            Slot::Log(i) => format!("/logs/{i}"),
            Slot::StepInput(i) => format!("/steps/{i}/input"),
            Slot::StepOutput(i) => format!("/steps/{i}/output"),
        }
    }
}

/// Most bytes a [`cut_marker`] takes.
const CUT_MARKER_BYTES: usize = 80;

/// What stands in for a value cut to keep its record within its cap.
fn cut_marker(size: usize) -> String {
    format!("…[cut: {size} bytes; the record is over runs.max_record_bytes]")
}

/// A shared value as [`bounded`] would keep it, copied only when it must be cut.
fn bounded_shared(value: &Arc<Value>) -> Arc<Value> {
    if fits(value) {
        Arc::clone(value)
    } else {
        Arc::new(bounded(value.as_ref().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_with(raw: &str, omit_raw: bool, body: Value) -> RunRecord {
        let mut record: RunRecord = serde_json::from_value(serde_json::json!({
            "id": "r1", "flow": "f", "flow_version": "v", "mode": "sync", "live": true,
            "status": "succeeded", "created_at": "2026-01-01T00:00:00.000Z",
            "started_at": null, "ended_at": null, "attempt": 1, "duration_ms": 3,
            "request": {}, "body": null, "steps": [], "logs": [],
            "response": null, "error": null,
        }))
        .unwrap();
        record.request = RecordedRequest {
            value: Arc::new(serde_json::json!({"method": "POST", "raw": raw})),
            omit_raw,
        };
        record.body = Arc::new(body);
        record
    }

    #[test]
    fn a_json_body_is_stored_as_sent_and_reads_back_the_same() {
        let raw = " {\"z\": 1,\n \"a\": [\"x\\\"y\", 2.5e3]} ";
        let body: Value = serde_json::from_str(raw).unwrap();
        let record = record_with(raw, true, body.clone());
        let text = record.encode().unwrap();
        assert!(
            text.starts_with(&format!("{{\"body\":{},", raw.trim())),
            "{text}"
        );
        let back: RunRecord = crate::codec::decode(&text).unwrap();
        assert_eq!(*back.body, body);
        assert_eq!(back.id, "r1");
        assert!(back.request.get("raw").is_none(), "the text is kept once");
        // Everything else encodes the body as usual, the flag cleared.
        let plain = serde_json::to_string(&record).unwrap();
        assert!(
            plain.contains(r#""body":{"z":1,"a":["x\"y",2500.0]}"#),
            "{plain}"
        );
    }

    #[test]
    fn other_bodies_are_encoded_as_values() {
        // Not the body's JSON text (a text body, say): encoded as the value.
        let record = record_with("hello", false, Value::String("hello".into()));
        let text = record.encode().unwrap();
        let back: RunRecord = crate::codec::decode(&text).unwrap();
        assert_eq!(*back.body, Value::String("hello".into()));
        assert_eq!(back.request["raw"], "hello");
        // An empty JSON body has no text to splice.
        let empty = record_with("  ", true, serde_json::json!({}));
        let back: RunRecord = crate::codec::decode(&empty.encode().unwrap()).unwrap();
        assert_eq!(*back.body, serde_json::json!({}));
    }

    fn trace(i: usize, output: Value) -> StepTrace {
        StepTrace {
            path: format!("s{i}"),
            kind: "transform".into(),
            status: crate::engine::StepState::Succeeded,
            input: Value::Null,
            output,
            error: None,
            attempts: 1,
            started_at: "2026-01-01T00:00:00.000Z".into(),
            duration_ms: 1,
        }
    }

    #[test]
    fn a_record_over_its_cap_cuts_the_largest_values_then_the_last_steps() {
        let raw = format!("{{\"pad\": \"{}\"}}", "b".repeat(20_000));
        let body: Value = serde_json::from_str(&raw).unwrap();
        let mut record = record_with(&raw, true, body);
        record.policy.max_bytes = 70_000;
        record.steps = (0..4)
            .map(|i| trace(i, Value::String("o".repeat(10_000 * (i + 1)))))
            .collect();
        record.fit();
        let text = record.encode().unwrap();
        assert!(text.len() <= 70_000, "{}", text.len());
        // The two largest outputs went; the body and the small ones stayed.
        let at: Vec<&str> = record.cut.iter().map(|c| c.at.as_str()).collect();
        assert_eq!(at, ["/steps/3/output", "/steps/2/output"]);
        assert_eq!(record.cut[0].bytes, 40_002);
        let back: RunRecord = crate::codec::decode(&text).unwrap();
        assert!(
            back.steps[3]
                .output
                .as_str()
                .unwrap()
                .starts_with("…[cut: 40002 bytes")
        );
        assert_eq!(back.steps[0].output.as_str().unwrap().len(), 10_000);
        assert_eq!(back.body["pad"].as_str().unwrap().len(), 20_000);
        assert_eq!(back.cut, record.cut, "the list is stored");

        // Thousands of small steps: the last ones go, and the list says so.
        let mut many = record_with("{}", true, serde_json::json!({}));
        many.policy.max_bytes = 100_000;
        many.steps = (0..2_000).map(|i| trace(i, Value::from(i))).collect();
        many.fit();
        assert!(many.encode().unwrap().len() <= 100_000);
        let last = many.cut.last().unwrap();
        assert_eq!(last.at, format!("/steps/{}-", many.steps.len()));
        assert!(many.steps.len() > 50, "{}", many.steps.len());

        // Small records are left alone.
        let mut small = record_with("{}", true, serde_json::json!({}));
        small.steps = vec![trace(0, Value::from(1))];
        small.fit();
        assert!(small.cut.is_empty());
    }

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
