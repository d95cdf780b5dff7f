//! `transform`: renders `set`, a table of templates, into the step's output.
//!
//! ```toml
//! [[steps]]
//! ref = "calc"
//! kind = "transform"
//! set = { total = "{{ web1.price * web1.qty }}", currency = "EUR" }
//! ```

use serde_json::Value;

use super::{Call, Keys, Kind, Runner, Site, StepFailure};
use crate::flow::load::FlowBuilder;
use crate::template::TemplateValue;

/// A `transform` step's config.
#[derive(Debug)]
pub struct Transform {
    /// The values to render (an object).
    pub set: TemplateValue,
}

impl Kind for Transform {
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Self {
        let set = keys.required_node(b, "set");
        Self {
            set: b.object_value(&set, "set", &site.pointer, site.allowed),
        }
    }

    async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
        runner
            .env()
            .render(&self.set, &call.scope.context())
            .await
            .map_err(StepFailure::template)
    }
}
