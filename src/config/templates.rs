//! `[templates]`: what rendering one template may cost.

use serde::Deserialize;

/// The most [`TemplatesConfig::fuel`] may be: about a second of one core,
/// and 1.2 GiB of data made.
pub const MAX_TEMPLATE_FUEL: u64 = 20_000_000;

/// `[templates]`: the budget of every render (steps, answers, headers).
/// Over budget, the step fails (or the answer is a `500 response_invalid`)
/// with an error naming the template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesConfig {
    /// Work one render may do: about one unit per template instruction and
    /// per 64 bytes of data it makes, so it bounds time and memory alike.
    pub fuel: u64,
    /// Bytes one render may produce.
    pub max_output_bytes: usize,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        let budget = crate::template::RenderBudget::default();
        Self {
            fuel: budget.fuel,
            max_output_bytes: budget.max_output_bytes,
        }
    }
}

impl TemplatesConfig {
    /// The budget each render gets.
    pub fn budget(&self) -> crate::template::RenderBudget {
        crate::template::RenderBudget {
            fuel: self.fuel,
            max_output_bytes: self.max_output_bytes,
        }
    }
}
