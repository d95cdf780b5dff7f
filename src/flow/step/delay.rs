//! `delay`: waits `duration` (not in a dry run).
//!
//! ```toml
//! [[steps]]
//! ref = "settle"
//! kind = "delay"
//! duration = "2s"
//! ```

use std::time::Duration;

use serde_json::{Value, json};

use super::{Call, Keys, Kind, Runner, Site, StepFailure};
use crate::flow::load::FlowBuilder;

/// A `delay` step's config.
#[derive(Debug)]
pub struct Delay {
    /// How long to wait.
    pub duration: Duration,
}

impl Kind for Delay {
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, _: &mut Site<'_>) -> Self {
        Self {
            duration: keys
                .required_string(b, "duration")
                .and_then(|d| b.duration(&d, "duration"))
                .unwrap_or_default(),
        }
    }

    async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
        *call.input = json!({ "duration_ms": self.duration.as_millis() as u64 });
        if !runner.dry_run() {
            tokio::time::sleep(self.duration).await;
        }
        Ok(json!({}))
    }
}
