//! `log`: renders `message` into the run's log (and the gateway's log).
//!
//! ```toml
//! [[steps]]
//! ref = "note"
//! kind = "log"
//! message = "order {{ web1.order_id }} received"
//! ```

use serde_json::{Value, json};

use super::{Call, Keys, Kind, Runner, Site, StepFailure, message, render_message};
use crate::flow::load::FlowBuilder;
use crate::template::TemplateValue;

/// A `log` step's config.
#[derive(Debug)]
pub struct Log {
    /// The message template.
    pub message: TemplateValue,
}

impl Kind for Log {
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Self {
        Self {
            message: message(b, keys, site),
        }
    }

    async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
        let message = render_message(&self.message, runner, call.scope).await?;
        runner.log(call.path, message.clone());
        Ok(json!({ "message": message }))
    }
}
