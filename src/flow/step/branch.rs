//! `branch`: runs the `then` steps when `when` is true, else the `else` steps.
//!
//! ```toml
//! [[steps]]
//! ref = "route"
//! kind = "branch"
//! when = "web1.amount > 100"
//! then = [{ ref = "big", kind = "log", message = "large order" }]
//! else = [{ ref = "small", kind = "log", message = "small order" }]
//! ```
//!
//! Refs defined in either branch may be used by later steps (they are
//! undefined when their branch did not run).

use serde_json::{Value, json};

use super::{Call, Keys, Kind, Runner, Site, Step, StepFailure, load_steps};
use crate::flow::load::FlowBuilder;


/// A `branch` step's config.
#[derive(Debug)]
pub struct Branch {
    /// Condition expression template name.
    pub when: String,
    /// Steps when true.
    pub then: Vec<Step>,
    /// Steps when false.
    pub otherwise: Vec<Step>,
}

impl Kind for Branch {
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Self {
        let when = keys
            .required_string(b, "when")
            .map(|w| b.expression(&w, &format!("{}.when", site.pointer), site.allowed))
            .unwrap_or_default();
        let then = keys.steps(b, "then").unwrap_or_default();
        let otherwise = keys.steps(b, "else").unwrap_or_default();
        let before = b.refs.clone();
        let then = load_steps(
            b,
            then,
            &format!("{}.then", site.pointer),
            &mut site.allowed.clone(),
            site.trigger_ref,
        );
        let otherwise = load_steps(
            b,
            otherwise,
            &format!("{}.else", site.pointer),
            &mut site.allowed.clone(),
            site.trigger_ref,
        );
        site.allowed.extend(b.refs.difference(&before).cloned());
        Self {
            when,
            then,
            otherwise,
        }
    }

    async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
        let taken = runner
            .env()
            .eval(&self.when, &call.scope.context())
            .await
            .map_err(StepFailure::template)?
            .is_true();
        let (steps, label) = match taken {
            true => (&self.then, "then"),
            false => (&self.otherwise, "else"),
        };
        *call.input = json!({ "when": taken });
        let prefix = format!("{}.{label}.", call.path);
        runner.run_steps(steps, prefix, call.scope).await?;
        Ok(json!({ "taken": label }))
    }
}
