//! `for_each`: runs `steps` once per entry of the list `items` evaluates to,
//! with `item` and `loop` (`index`, `index0`, `first`, `last`, `length`) in
//! scope. The output is `{"results": [...]}`, one object of the nested steps'
//! outputs per item.
//!
//! ```toml
//! [[steps]]
//! ref = "each_line"
//! kind = "for_each"
//! items = "web1.lines"
//! steps = [{ ref = "post", kind = "http", url = "https://api.example.com/lines", body = "{{ item }}" }]
//! ```

use serde_json::{Value, json};

use super::{Call, Keys, Kind, Runner, Site, Step, StepFailure, load_steps};
use crate::flow::load::FlowBuilder;
use crate::template::to_json;

/// Most items a `for_each` step iterates over.
const MAX_ITEMS: usize = 10_000;

/// A `for_each` step's config.
#[derive(Debug)]
pub struct ForEach {
    /// Expression template name yielding a list.
    pub items: String,
    /// Steps run per item with `item` and `loop` in scope.
    pub steps: Vec<Step>,
}

impl Kind for ForEach {
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Self {
        let items = keys
            .required_string(b, "items")
            .map(|i| b.expression(&i, &format!("{}.items", site.pointer), site.allowed))
            .unwrap_or_default();
        let nodes = keys.required_steps(b, "steps").unwrap_or_default();
        let mut inner = site.allowed.clone();
        inner.insert("item".into());
        inner.insert("loop".into());
        let steps = load_steps(
            b,
            nodes,
            &format!("{}.steps", site.pointer),
            &mut inner,
            site.trigger_ref,
        );
        Self { items, steps }
    }

    async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
        let items = self.list(runner, &call).await?;
        *call.input = json!({ "items": items.len() });
        let length = items.len();
        let mut results = Vec::with_capacity(length);
        for (index0, item) in items.into_iter().enumerate() {
            let mut inner = call.scope.clone();
            inner.set("item", item);
            inner.set_json(
                "loop",
                json!({
                    "index": index0 + 1,
                    "index0": index0,
                    "first": index0 == 0,
                    "last": index0 + 1 == length,
                    "length": length,
                }),
            );
            let prefix = format!("{}[{index0}].", call.path);
            runner.run_steps(&self.steps, prefix, &mut inner).await?;
            let outputs: serde_json::Map<String, Value> = self
                .steps
                .iter()
                .filter_map(|s| inner.get(&s.ref_id).map(|v| (s.ref_id.clone(), to_json(&v))))
                .collect();
            results.push(Value::Object(outputs));
        }
        Ok(json!({ "results": results }))
    }
}

impl ForEach {
    /// The entries of `items`, at most [`MAX_ITEMS`]; none for null or undefined.
    async fn list<R: Runner>(
        &self,
        runner: &R,
        call: &Call<'_>,
    ) -> Result<Vec<minijinja::Value>, StepFailure> {
        let list = runner
            .env()
            .eval(&self.items, &call.scope.context())
            .await
            .map_err(StepFailure::template)?;
        if list.is_undefined() || list.is_none() {
            return Ok(Vec::new());
        }
        let items: Vec<minijinja::Value> = list
            .try_iter()
            .map_err(|_| StepFailure::fatal(format!("`items` is not a list (got {})", list.kind())))?
            .take(MAX_ITEMS + 1)
            .collect();
        if items.len() > MAX_ITEMS {
            return Err(StepFailure::fatal(format!(
                "`items` has more than {MAX_ITEMS} entries"
            )));
        }
        Ok(items)
    }
}
