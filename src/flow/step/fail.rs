//! `fail`: ends the run as failed with the rendered `message` as its error.
//!
//! ```toml
//! [[steps]]
//! ref = "reject"
//! kind = "fail"
//! message = "unknown plan {{ web1.plan }}"
//! ```

use serde_json::Value;

use super::{Call, Keys, Kind, Runner, Site, StepFailure, message, render_message};
use crate::flow::load::FlowBuilder;
use crate::template::TemplateValue;

/// A `fail` step's config.
#[derive(Debug)]
pub struct Fail {
    /// The message template.
    pub message: TemplateValue,
}

impl Kind for Fail {
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Self {
        Self {
            message: message(b, keys, site),
        }
    }

    async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
        Err(StepFailure::fatal(
            render_message(&self.message, runner, call.scope).await?,
        ))
    }
}
