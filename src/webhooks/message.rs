//! Messages: what a delivery carries, built from the lifecycle's events
//! (see [`message_for`]), and their JSON and XML bodies.
//!
//! Every message has the same envelope:
//!
//! ```json
//! {"id": "msg_…", "type": "run.ended", "timestamp": "2026-01-01T00:00:00.000Z",
//!  "live_mode": true, "flow": {"id": "signup", "name": "Signup"}, "data": {…}}
//! ```
//!
//! `flow` is `null` for messages about no flow (`ping`, `webhook.disabled`).
//! Run and step events carry `data.sequence`: it grows along one run's
//! events (queued, started, steps, ended; a run executed again after a
//! worker died gets higher numbers), so a receiver can order events that
//! arrive out of order. Numbers have gaps; compare, do not count.
//!
//! The XML body carries the same fields (see [`to_xml`]).

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::backend::now_ms;
use crate::flow::{Catalog, FlowStatus};
use crate::lifecycle::{Event, FlowEvent, RunEvent};

/// Every event type a subscription can ask for (`"*"` asks for all).
pub const EVENT_TYPES: &[&str] = &[
    "ping",
    "test",
    "run.queued",
    "run.started",
    "run.ended",
    "step.started",
    "step.ended",
    "flow.created",
    "flow.updated",
    "flow.deleted",
    "flow.status_changed",
    "webhook.disabled",
];

/// Run statuses a subscription's `statuses` filter may name.
pub const RUN_STATUSES: &[&str] = &["succeeded", "failed", "timed_out", "aborted"];

/// One message, before it is written for a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `msg_…`: the `webhook-id`.
    pub id: String,
    /// The event type.
    pub event: &'static str,
    /// When it happened, ms since the epoch.
    pub at_ms: u64,
    /// False for draft flows and test events.
    pub live_mode: bool,
    /// The flow's id and name.
    pub flow: Option<(String, String)>,
    /// The run's status, for `run.ended` (what `statuses` filters on).
    pub status: Option<&'static str>,
    /// The event's own fields.
    pub data: Value,
}

impl Message {
    /// The envelope as a JSON value.
    pub fn envelope(&self) -> Value {
        let flow = match &self.flow {
            Some((id, name)) => json!({ "id": id, "name": name }),
            None => Value::Null,
        };
        json!({
            "id": self.id,
            "type": self.event,
            "timestamp": rfc3339(self.at_ms),
            "live_mode": self.live_mode,
            "flow": flow,
            "data": self.data,
        })
    }

    /// The body in `format`.
    pub fn body(&self, format: crate::backend::webhooks::Format) -> String {
        match format {
            crate::backend::webhooks::Format::Json => self.envelope().to_string(),
            crate::backend::webhooks::Format::Xml => to_xml(&self.envelope()),
        }
    }

    /// A `ping` to subscription `subscription`.
    pub fn ping(subscription: &str) -> Self {
        Self {
            id: random_id(),
            event: "ping",
            at_ms: now_ms(),
            live_mode: true,
            flow: None,
            status: None,
            data: json!({
                "message": "ping from flowgate: this endpoint will receive the events it subscribed to",
                "subscription_id": subscription,
            }),
        }
    }

    /// A `test` event: a realistic `run.ended` of a made-up run.
    pub fn test() -> Self {
        let now = now_ms();
        Self {
            id: random_id(),
            event: "test",
            at_ms: now,
            live_mode: false,
            flow: Some(("example".into(), "Example flow".into())),
            status: Some("succeeded"),
            data: json!({
                "run_id": "run_00000000000000000000000000",
                "status": "succeeded",
                "mode": "async",
                "started_at": rfc3339(now.saturating_sub(42)),
                "ended_at": rfc3339(now),
                "duration_ms": 42,
                "error": null,
                "cause": null,
                "sequence": 4_294_967_299u64,
            }),
        }
    }

    /// `webhook.disabled`: subscription `id` named `name` was disabled for `reason`.
    pub fn disabled(id: &str, name: &str, reason: &str) -> Self {
        Self {
            id: random_id(),
            event: "webhook.disabled",
            at_ms: now_ms(),
            live_mode: true,
            flow: None,
            status: None,
            data: json!({ "subscription_id": id, "name": name, "reason": reason }),
        }
    }
}

/// The message for `event`, the `sequence`-th of its run, happening at
/// `now` (ms); `None` for events no subscriber gets (a run waiting to retry
/// a step).
///
/// One arm per event type, each building that type's `data`.
pub fn message_for(event: &Event, sequence: u64, now: u64, catalog: &Catalog) -> Option<Message> {
    let event_type = event_type(event)?;
    let flow_of = |id: &str| {
        let flow = catalog.get(id);
        let name = flow.map_or_else(|| id.to_owned(), |f| f.name.clone());
        let live = flow.is_none_or(|f| f.status != FlowStatus::Draft);
        let mode = flow.map_or("async", |f| f.trigger.mode.as_str());
        (Some((id.to_owned(), name)), live, mode)
    };
    let (flow, live_mode, status, data) = match event {
        Event::Run(run) => {
            let (flow, live, mode) = flow_of(run_flow(run));
            let (status, data) = match run {
                RunEvent::Queued { run_id, .. } => (
                    None,
                    json!({ "run_id": run_id, "status": "queued", "mode": mode,
                            "queued_at": rfc3339(now), "sequence": sequence }),
                ),
                RunEvent::Started {
                    run_id, attempt, ..
                } => (
                    None,
                    json!({ "run_id": run_id, "status": "running", "mode": mode,
                            "attempt": attempt, "started_at": rfc3339(now),
                            "sequence": sequence }),
                ),
                RunEvent::StepStarted {
                    run_id, step, kind, ..
                } => (
                    None,
                    json!({ "run_id": run_id, "step": step, "kind": kind,
                            "started_at": rfc3339(now), "sequence": sequence }),
                ),
                RunEvent::StepEnded {
                    run_id,
                    step,
                    kind,
                    state,
                    duration_ms,
                    ..
                } => (
                    None,
                    json!({ "run_id": run_id, "step": step, "kind": kind,
                            "status": state.as_str(), "duration_ms": duration_ms,
                            "ended_at": rfc3339(now), "sequence": sequence }),
                ),
                RunEvent::RetryLater { .. } => return None,
                RunEvent::Ended {
                    run_id,
                    state,
                    duration,
                    error,
                    cause,
                    ..
                } => {
                    let duration_ms = duration.as_millis() as u64;
                    (
                        Some(state.as_str()),
                        json!({ "run_id": run_id, "status": state.as_str(), "mode": mode,
                                "started_at": rfc3339(now.saturating_sub(duration_ms)),
                                "ended_at": rfc3339(now), "duration_ms": duration_ms,
                                "error": error, "cause": cause, "sequence": sequence }),
                    )
                }
            };
            (flow, live, status, data)
        }
        Event::Flow(change) => {
            let id = match change {
                FlowEvent::Created { flow }
                | FlowEvent::Updated { flow }
                | FlowEvent::Deleted { flow }
                | FlowEvent::StatusChanged { flow, .. } => flow,
            };
            let (flow, live, mode) = flow_of(id);
            let mut data = Map::new();
            data.insert("flow_id".into(), json!(id));
            if let Some(loaded) = catalog.get(id) {
                data.insert("version".into(), json!(loaded.version));
                data.insert("mode".into(), json!(mode));
                data.insert("status".into(), json!(loaded.status.as_str()));
            }
            if let FlowEvent::StatusChanged { status, .. } = change {
                data.insert("status".into(), json!(status.as_str()));
            }
            (flow, live, None, Value::Object(data))
        }
    };
    Some(Message {
        id: message_id(event, event_type, sequence, catalog),
        event: event_type,
        at_ms: now,
        live_mode,
        flow,
        status,
        data,
    })
}

fn run_flow(event: &RunEvent) -> &str {
    match event {
        RunEvent::Queued { flow, .. }
        | RunEvent::Started { flow, .. }
        | RunEvent::StepStarted { flow, .. }
        | RunEvent::StepEnded { flow, .. }
        | RunEvent::RetryLater { flow, .. }
        | RunEvent::Ended { flow, .. } => flow,
    }
}

/// The webhook event type of `event`; `None` for events not sent.
pub fn event_type(event: &Event) -> Option<&'static str> {
    Some(match event {
        Event::Run(RunEvent::Queued { .. }) => "run.queued",
        Event::Run(RunEvent::Started { .. }) => "run.started",
        Event::Run(RunEvent::StepStarted { .. }) => "step.started",
        Event::Run(RunEvent::StepEnded { .. }) => "step.ended",
        Event::Run(RunEvent::RetryLater { .. }) => return None,
        Event::Run(RunEvent::Ended { .. }) => "run.ended",
        Event::Flow(FlowEvent::Created { .. }) => "flow.created",
        Event::Flow(FlowEvent::Updated { .. }) => "flow.updated",
        Event::Flow(FlowEvent::Deleted { .. }) => "flow.deleted",
        Event::Flow(FlowEvent::StatusChanged { .. }) => "flow.status_changed",
    })
}

/// A message id that is the same wherever the same event is announced, so
/// the outbox keeps one: a run's event by its run and sequence number, a
/// status change by the control version, a flow change by the flow's
/// content hash. A deleted flow has neither: its id is random.
fn message_id(event: &Event, event_type: &str, sequence: u64, catalog: &Catalog) -> String {
    let basis = match event {
        Event::Run(run) => format!("{event_type}:{}:{sequence}", run.run_id()),
        Event::Flow(FlowEvent::StatusChanged { flow, version, .. }) => {
            format!("{event_type}:{flow}:{version}")
        }
        Event::Flow(FlowEvent::Created { flow } | FlowEvent::Updated { flow }) => {
            match catalog.get(flow) {
                Some(loaded) => format!("{event_type}:{flow}:{}", loaded.version),
                None => return random_id(),
            }
        }
        Event::Flow(FlowEvent::Deleted { .. }) => return random_id(),
    };
    let digest = Sha256::digest(basis.as_bytes());
    format!("msg_{}", hex::encode(&digest[..13]))
}

/// A fresh `msg_…` id.
pub fn random_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// An RFC 3339 time (any offset) as ms since the epoch; times before the
/// epoch read as the epoch, which nothing stored precedes.
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// `ms` since the epoch as RFC 3339 with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The XML body of an envelope: the root element is `<event>`; each JSON
/// object key becomes a child element of that name (a key that is not a
/// plain XML name becomes `<field name="the key">`); array items become
/// `<item>` elements; `null` becomes an empty element with `nil="true"`;
/// booleans and numbers are their JSON text. Characters XML cannot carry
/// become U+FFFD.
pub fn to_xml(envelope: &Value) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    write_element(&mut out, "event", envelope);
    out
}

fn write_element(out: &mut String, key: &str, value: &Value) {
    let (open, close) = if is_xml_name(key) {
        (format!("<{key}"), format!("</{key}>"))
    } else {
        let mut open = String::from("<field name=\"");
        escape_into(&mut open, key);
        open.push('"');
        (open, "</field>".to_owned())
    };
    out.push_str(&open);
    match value {
        Value::Null => {
            out.push_str(" nil=\"true\"/>");
            return;
        }
        Value::Object(map) => {
            out.push('>');
            for (k, v) in map {
                write_element(out, k, v);
            }
        }
        Value::Array(items) => {
            out.push('>');
            for item in items {
                write_element(out, "item", item);
            }
        }
        Value::String(text) => {
            out.push('>');
            escape_into(out, text);
        }
        other => {
            out.push('>');
            out.push_str(&other.to_string());
        }
    }
    out.push_str(&close);
}

fn is_xml_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !key.to_ascii_lowercase().starts_with("xml")
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || matches!(c, '\u{FFFE}' | '\u{FFFF}') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RunState;

    #[test]
    fn xml_carries_the_envelope_and_parses() {
        let mut message = Message::test();
        message.data["error"] = json!("<script>&\"x\"\u{1}");
        message.data["weird key"] = json!([1, true, null]);
        let xml = to_xml(&message.envelope());
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "event");
        fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
            node.children()
                .find(|c| c.tag_name().name() == name)
                .unwrap_or_else(|| panic!("no <{name}>"))
        }
        assert_eq!(child(root, "id").text(), Some(message.id.as_str()));
        assert_eq!(child(root, "type").text(), Some("test"));
        assert_eq!(child(root, "live_mode").text(), Some("false"));
        assert_eq!(child(child(root, "flow"), "id").text(), Some("example"));
        let data = child(root, "data");
        assert_eq!(child(data, "status").text(), Some("succeeded"));
        assert_eq!(child(data, "error").text(), Some("<script>&\"x\"\u{FFFD}"));
        assert_eq!(child(data, "cause").attribute("nil"), Some("true"));
        let weird = data
            .children()
            .find(|c| c.attribute("name") == Some("weird key"))
            .unwrap();
        let items: Vec<_> = weird.children().filter(|c| c.is_element()).collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].text(), Some("true"));
    }

    #[test]
    fn a_run_event_carries_its_sequence_and_its_message_id_follows_it() {
        let catalog = Catalog::empty();
        let ended = Event::Run(RunEvent::Ended {
            run_id: "r".into(),
            flow: "f".into(),
            state: RunState::Failed,
            duration: std::time::Duration::from_millis(5),
            error: Some("boom".into()),
            cause: Some("a".into()),
        });
        let end = message_for(&ended, (1 << 32) | 3, now_ms(), &catalog).unwrap();
        assert_eq!(end.status, Some("failed"));
        assert_eq!(end.data["cause"], "a");
        assert_eq!(end.data["sequence"], (1u64 << 32) | 3);
        let again = message_for(&ended, (1 << 32) | 3, now_ms() + 5, &catalog).unwrap();
        assert_eq!(
            end.id, again.id,
            "the same event written twice is one message"
        );
        let retried = message_for(&ended, (2 << 32) | 3, now_ms(), &catalog).unwrap();
        assert_ne!(
            end.id, retried.id,
            "another execution's end is another message"
        );
        let waiting = Event::Run(RunEvent::RetryLater {
            run_id: "r".into(),
            flow: "f".into(),
            delay: std::time::Duration::from_secs(1),
        });
        assert!(message_for(&waiting, 0, now_ms(), &catalog).is_none());
    }

    #[test]
    fn the_same_status_change_seen_by_two_replicas_is_one_message() {
        let catalog = Catalog::empty();
        let change = |version| {
            Event::Flow(FlowEvent::StatusChanged {
                flow: "f".into(),
                status: FlowStatus::Paused,
                version,
            })
        };
        let id = |version| {
            message_for(&change(version), 0, now_ms(), &catalog)
                .unwrap()
                .id
        };
        assert_eq!(id(7), id(7));
        assert_ne!(id(7), id(8));
        assert!(id(7).starts_with("msg_"));
    }
}
