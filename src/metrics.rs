//! Metrics in the Prometheus text format, served on `GET /metrics`.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `flowgate_requests_total` | counter | `flow` (`unknown` for flows not loaded), `status` |
//! | `flowgate_runs_total` | counter | `flow`, `status` (`succeeded`, `failed`, `timed_out`, `aborted`) |
//! | `flowgate_queue_depth` | gauge | runs waiting or in progress |
//! | `flowgate_queue_lag_seconds` | histogram | from acceptance to start of async runs |
//! | `flowgate_queue_lag_seconds_max` | gauge | the longest lag seen since the process started |
//! | `flowgate_run_records_lost_total` | counter | run records not written because the store was unavailable |
//! | `flowgate_webhook_deliveries_total` | counter | `outcome` (`succeeded`, `failed`, `skipped`): delivery attempts |
//! | `flowgate_webhook_delivery_lag_seconds` | histogram | from an event to its first delivery attempt |
//! | `flowgate_webhook_subscription_lag_seconds` | histogram | `subscription`: the same, for each subscription |
//! | `flowgate_webhook_attempt_duration_seconds` | histogram | `subscription`: how long each delivery attempt took, answer included |
//! | `flowgate_webhook_subscriptions_disabled_total` | counter | subscriptions disabled automatically after repeated failures |
//! | `flowgate_webhook_outbox_depth` | gauge | deliveries waiting for an attempt (sampled every few seconds) |
//! | `flowgate_webhook_step_events_withheld_total` | counter | step events not sent because their run had sent `MAX_STEP_EVENTS` (10,000) already |
//! | `flowgate_webhook_events_pending` | gauge | events stored with their runs and not yet turned into deliveries (sampled every few seconds) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the queue lag buckets, in seconds; 45 s is the start promise.
const LAG_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0,
];

/// A latency histogram over [`LAG_BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LAG_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(LAG_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.write_series(out, name, "");
    }

    /// The series' lines, each with `labels` (`key="value"`, or empty).
    fn write_series(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bucket, bound) in self.buckets.iter().zip(LAG_BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }

    fn max_seconds(&self) -> f64 {
        self.max_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Counters by flow, then by status. Counting a pair seen before allocates
/// nothing, so the request path only pays for a lock and a lookup.
#[derive(Debug)]
struct ByFlow<S>(Mutex<BTreeMap<String, BTreeMap<S, u64>>>);

impl<S> Default for ByFlow<S> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<S: Ord + std::fmt::Display> ByFlow<S> {
    fn add(&self, flow: &str, status: S) {
        let mut flows = self.0.lock().expect("metrics lock");
        if !flows.contains_key(flow) {
            flows.insert(flow.to_owned(), BTreeMap::new());
        }
        let statuses = flows.get_mut(flow).expect("inserted above");
        *statuses.entry(status).or_default() += 1;
    }

    /// One `name{flow="…",status="…"} n` line per counter.
    fn write(&self, out: &mut String, name: &str) {
        for (flow, statuses) in self.0.lock().expect("metrics lock").iter() {
            for (status, n) in statuses {
                let _ = writeln!(
                    out,
                    "{name}{{flow=\"{}\",status=\"{status}\"}} {n}",
                    escape(flow)
                );
            }
        }
    }
}

/// Most subscriptions given histograms of their own: as many as may exist
/// ([`crate::webhooks::MAX_SUBSCRIPTIONS`]; a test there keeps the two equal).
pub const MAX_SUBSCRIPTIONS_TRACKED: usize = 1000;

/// Histograms by subscription.
#[derive(Debug, Default)]
struct BySubscription(Mutex<BTreeMap<String, Histogram>>);

impl BySubscription {
    fn observe(&self, subscription: &str, value: Duration) {
        let mut all = self.0.lock().expect("metrics lock");
        if !all.contains_key(subscription) {
            if all.len() >= MAX_SUBSCRIPTIONS_TRACKED {
                return;
            }
            all.insert(subscription.to_owned(), Histogram::default());
        }
        all[subscription].observe(value);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (subscription, histogram) in self.0.lock().expect("metrics lock").iter() {
            let label = format!("subscription=\"{}\"", escape(subscription));
            histogram.write_series(out, name, &label);
        }
    }
}

/// The process's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    subscription_lag: BySubscription,
    attempt_duration: BySubscription,
    requests: ByFlow<u16>,
    runs: ByFlow<&'static str>,
    lag: Histogram,
    records_lost: AtomicU64,
    deliveries: [AtomicU64; 3],
    delivery_lag: Histogram,
    subscriptions_disabled: AtomicU64,
    outbox_depth: AtomicU64,
    events_pending: AtomicU64,
    step_events_withheld: AtomicU64,
}

/// How a webhook delivery attempt went, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Succeeded = 0,
    /// Anything else.
    Failed = 1,
    /// Not attempted: the subscription is disabled.
    Skipped = 2,
}

impl DeliveryOutcome {
    const ALL: [(DeliveryOutcome, &'static str); 3] = [
        (DeliveryOutcome::Succeeded, "succeeded"),
        (DeliveryOutcome::Failed, "failed"),
        (DeliveryOutcome::Skipped, "skipped"),
    ];
}

impl Metrics {
    /// Counts an answered trigger request.
    pub fn request(&self, flow: &str, status: u16) {
        self.requests.add(flow, status);
    }

    /// Counts an ended run.
    pub fn run(&self, flow: &str, state: crate::engine::RunState) {
        self.runs.add(flow, state.as_str());
    }

    /// Observes the time an async run waited in the queue.
    pub fn queue_lag(&self, lag: Duration) {
        self.lag.observe(lag);
    }

    /// Counts a webhook delivery attempt.
    pub fn delivery(&self, outcome: DeliveryOutcome) {
        self.deliveries[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Observes the time from an event to its first delivery attempt to
    /// `subscription`.
    pub fn delivery_lag(&self, subscription: &str, lag: Duration) {
        self.delivery_lag.observe(lag);
        self.subscription_lag.observe(subscription, lag);
    }

    /// Observes how long an attempt to `subscription` took.
    pub fn attempt_duration(&self, subscription: &str, took: Duration) {
        self.attempt_duration.observe(subscription, took);
    }

    /// Counts a subscription disabled after repeated failures.
    pub fn subscription_disabled(&self) {
        self.subscriptions_disabled.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the outbox depth last seen.
    pub fn outbox_depth(&self, depth: u64) {
        self.outbox_depth.store(depth, Ordering::Relaxed);
    }

    /// Counts a step event not sent: its run had sent as many as one may.
    pub fn step_events_withheld(&self) {
        self.step_events_withheld.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of stored events not yet fanned out, last seen.
    pub fn events_pending(&self, pending: u64) {
        self.events_pending.store(pending, Ordering::Relaxed);
    }

    /// Counts a run record that could not be written.
    pub fn record_lost(&self) {
        self.records_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics as Prometheus text; `queue_depth` is left out when unknown.
    ///
    /// Long because it is a list: one block per metric family, in the
    /// order of the table at the top of this module.
    pub fn render(&self, queue_depth: Option<u64>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP flowgate_requests_total Trigger requests answered, by flow and status.\n",
        );
        out.push_str("# TYPE flowgate_requests_total counter\n");
        self.requests.write(&mut out, "flowgate_requests_total");
        out.push_str("# HELP flowgate_runs_total Runs ended, by flow and outcome.\n");
        out.push_str("# TYPE flowgate_runs_total counter\n");
        self.runs.write(&mut out, "flowgate_runs_total");
        if let Some(depth) = queue_depth {
            out.push_str("# HELP flowgate_queue_depth Async runs waiting or in progress.\n");
            out.push_str("# TYPE flowgate_queue_depth gauge\n");
            let _ = writeln!(out, "flowgate_queue_depth {depth}");
        }
        self.lag.write(
            &mut out,
            "flowgate_queue_lag_seconds",
            "Time from acceptance to start of async runs.",
        );
        out.push_str(
            "# HELP flowgate_queue_lag_seconds_max Longest queue lag since the process started.\n",
        );
        out.push_str("# TYPE flowgate_queue_lag_seconds_max gauge\n");
        let _ = writeln!(
            out,
            "flowgate_queue_lag_seconds_max {}",
            self.lag.max_seconds()
        );
        out.push_str("# HELP flowgate_run_records_lost_total Run records not written because the store was unavailable.\n");
        out.push_str("# TYPE flowgate_run_records_lost_total counter\n");
        let _ = writeln!(
            out,
            "flowgate_run_records_lost_total {}",
            self.records_lost.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP flowgate_webhook_deliveries_total Webhook delivery attempts, by outcome.\n",
        );
        out.push_str("# TYPE flowgate_webhook_deliveries_total counter\n");
        for (outcome, name) in DeliveryOutcome::ALL {
            let _ = writeln!(
                out,
                "flowgate_webhook_deliveries_total{{outcome=\"{name}\"}} {}",
                self.deliveries[outcome as usize].load(Ordering::Relaxed)
            );
        }
        self.delivery_lag.write(
            &mut out,
            "flowgate_webhook_delivery_lag_seconds",
            "Time from an event to its first webhook delivery attempt.",
        );
        self.subscription_lag.write(
            &mut out,
            "flowgate_webhook_subscription_lag_seconds",
            "Time from an event to its first delivery attempt, by subscription.",
        );
        self.attempt_duration.write(
            &mut out,
            "flowgate_webhook_attempt_duration_seconds",
            "Time one webhook delivery attempt took, answer included, by subscription.",
        );
        for (name, kind, help, value) in [
            (
                "flowgate_webhook_subscriptions_disabled_total",
                "counter",
                "Subscriptions disabled automatically after repeated failures.",
                &self.subscriptions_disabled,
            ),
            (
                "flowgate_webhook_outbox_depth",
                "gauge",
                "Webhook deliveries waiting for an attempt.",
                &self.outbox_depth,
            ),
            (
                "flowgate_webhook_step_events_withheld_total",
                "counter",
                "Step events not sent: their run had sent as many as one run may.",
                &self.step_events_withheld,
            ),
            (
                "flowgate_webhook_events_pending",
                "gauge",
                "Events stored with their runs, not yet turned into deliveries.",
                &self.events_pending,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("signup", 200);
        m.request("signup", 200);
        m.run("signup", crate::engine::RunState::Failed);
        m.queue_lag(Duration::from_millis(30));
        m.queue_lag(Duration::from_secs(3));
        let text = m.render(Some(4));
        assert!(text.contains("flowgate_requests_total{flow=\"signup\",status=\"200\"} 2\n"));
        assert!(text.contains("flowgate_runs_total{flow=\"signup\",status=\"failed\"} 1\n"));
        assert!(text.contains("flowgate_queue_depth 4\n"));
        assert!(text.contains("flowgate_queue_lag_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("flowgate_queue_lag_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("flowgate_queue_lag_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("flowgate_queue_lag_seconds_count 2\n"));
        assert!(text.contains("flowgate_queue_lag_seconds_max 3\n"));
    }
}
