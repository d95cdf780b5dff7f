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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the queue lag buckets, in seconds; 45 s is the start promise.
const LAG_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0,
];

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

/// The process's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: ByFlow<u16>,
    runs: ByFlow<&'static str>,
    lag_buckets: [AtomicU64; LAG_BUCKETS.len()],
    lag_count: AtomicU64,
    lag_sum_micros: AtomicU64,
    lag_max_micros: AtomicU64,
    records_lost: AtomicU64,
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
        let seconds = lag.as_secs_f64();
        for (bucket, bound) in self.lag_buckets.iter().zip(LAG_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lag_count.fetch_add(1, Ordering::Relaxed);
        self.lag_sum_micros
            .fetch_add(lag.as_micros() as u64, Ordering::Relaxed);
        self.lag_max_micros
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a run record that could not be written.
    pub fn record_lost(&self) {
        self.records_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics as Prometheus text; `queue_depth` is left out when unknown.
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
        out.push_str(
            "# HELP flowgate_queue_lag_seconds Time from acceptance to start of async runs.\n",
        );
        out.push_str("# TYPE flowgate_queue_lag_seconds histogram\n");
        for (bucket, bound) in self.lag_buckets.iter().zip(LAG_BUCKETS) {
            let _ = writeln!(
                out,
                "flowgate_queue_lag_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.lag_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "flowgate_queue_lag_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.lag_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "flowgate_queue_lag_seconds_sum {sum}");
        let _ = writeln!(out, "flowgate_queue_lag_seconds_count {count}");
        out.push_str(
            "# HELP flowgate_queue_lag_seconds_max Longest queue lag since the process started.\n",
        );
        out.push_str("# TYPE flowgate_queue_lag_seconds_max gauge\n");
        let max = self.lag_max_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "flowgate_queue_lag_seconds_max {max}");
        out.push_str("# HELP flowgate_run_records_lost_total Run records not written because the store was unavailable.\n");
        out.push_str("# TYPE flowgate_run_records_lost_total counter\n");
        let _ = writeln!(
            out,
            "flowgate_run_records_lost_total {}",
            self.records_lost.load(Ordering::Relaxed)
        );
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
