//! What one render may cost, and where it runs.
//!
//! Every render has a work budget (minijinja's fuel: about one unit per
//! instruction and per 64 bytes of data made, so it bounds both time and
//! memory) and an output budget in bytes. A render first runs where it is
//! asked for, with a small share of the work budget, which is all that
//! nearly every template needs; one that spends that share is run again
//! from the start on the blocking thread pool with the whole budget, at
//! most [`heavy_renders`] at a time, so a costly template never holds up the
//! threads that serve requests and health checks. Rendering has no side
//! effects, so running it again changes nothing but the cost.

use std::sync::{Arc, OnceLock};

use minijinja::{Error, ErrorKind, Value};
use tokio::sync::Semaphore;

use super::{Env, TemplateValue};

/// Work a render may do where it is asked for, before it moves to the
/// blocking pool: a few hundred microseconds at most.
pub const INLINE_FUEL: u64 = 20_000;

/// What one render may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderBudget {
    /// Work units (minijinja fuel) one render may spend.
    pub fuel: u64,
    /// Bytes one render may produce (the text of a template, or all the
    /// strings of a rendered value together).
    pub max_output_bytes: usize,
}

impl Default for RenderBudget {
    fn default() -> Self {
        Self {
            fuel: 1_000_000,
            max_output_bytes: 1024 * 1024,
        }
    }
}

/// How many costly renders run at once on the blocking pool; more wait.
pub fn heavy_renders() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn heavy() -> &'static Semaphore {
    static HEAVY: OnceLock<Semaphore> = OnceLock::new();
    HEAVY.get_or_init(|| Semaphore::new(heavy_renders()))
}

/// The templates of one load, ready to render within their budget.
#[derive(Clone)]
pub struct Templates {
    full: Arc<Env>,
    inline: Arc<Env>,
    budget: RenderBudget,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Templates {
    type Target = Env;

    fn deref(&self) -> &Env {
        &self.full
    }
}

impl Templates {
    /// `env`'s templates, each render within `budget`.
    pub fn new(mut env: Env, budget: RenderBudget) -> Self {
        env.set_fuel(Some(budget.fuel));
        let mut inline = env.clone();
        inline.set_fuel(Some(INLINE_FUEL.min(budget.fuel)));
        Self {
            full: Arc::new(env),
            inline: Arc::new(inline),
            budget,
        }
    }

    /// The budget each render has.
    pub fn budget(&self) -> RenderBudget {
        self.budget
    }

    /// Renders `value` against `ctx`.
    pub async fn render(
        &self,
        value: &TemplateValue,
        ctx: &Value,
    ) -> Result<serde_json::Value, Error> {
        if let TemplateValue::Literal(v) = value {
            return Ok(v.clone());
        }
        let max = self.budget.max_output_bytes;
        match value.render_within(&self.inline, ctx, &mut { max }) {
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {}
            done => return done,
        }
        let (value, ctx) = (value.clone(), ctx.clone());
        self.heavy(move |env| value.render_within(env, &ctx, &mut { max }))
            .await
    }

    /// Renders the text template `name` against `ctx`.
    pub async fn render_text(&self, name: &str, ctx: &Value) -> Result<String, Error> {
        let max = self.budget.max_output_bytes;
        match super::render_text(&self.inline, name, ctx, &mut { max }) {
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {}
            done => return done,
        }
        let (name, ctx) = (name.to_owned(), ctx.clone());
        self.heavy(move |env| super::render_text(env, &name, &ctx, &mut { max }))
            .await
    }

    /// Evaluates the expression template `name` against `ctx`.
    pub async fn eval(&self, name: &str, ctx: &Value) -> Result<Value, Error> {
        match super::eval(&self.inline, name, ctx) {
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {}
            done => return done,
        }
        let (name, ctx) = (name.to_owned(), ctx.clone());
        self.heavy(move |env| super::eval(env, &name, &ctx)).await
    }

    /// Runs `render` with the whole budget on the blocking pool, once a
    /// slot is free. Dropping the future (a step's timeout) stops the
    /// wait; a render already started ends by itself within its budget.
    async fn heavy<T: Send + 'static>(
        &self,
        render: impl FnOnce(&Env) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = heavy().acquire().await.expect("never closed");
        let env = self.full.clone();
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            render(&env)
        })
        .await;
        done.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                "the render stopped unexpectedly",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{Scope, new_environment};

    fn templates(name: &str, source: &str, budget: RenderBudget) -> Templates {
        let mut env = new_environment();
        env.add_template_owned(name.to_owned(), source.to_owned())
            .unwrap();
        Templates::new(env, budget)
    }

    fn ctx() -> Value {
        let mut scope = Scope::default();
        scope.set_json("web1", serde_json::json!({"n": 3000}));
        scope.context()
    }

    #[tokio::test]
    async fn a_render_past_the_inline_share_finishes_on_the_pool_with_the_same_text() {
        let t = templates(
            "t",
            "{% for i in range(web1.n) %}{{ i % 10 }}{% endfor %}",
            RenderBudget::default(),
        );
        let text = t.render_text("t", &ctx()).await.unwrap();
        assert_eq!(text.len(), 3000);
        assert!(text.starts_with("0123456789"));
        // Over the inline share, so it ran again with the whole budget.
        let mut remaining = usize::MAX;
        let inline = crate::template::render_text(&t.inline, "t", &ctx(), &mut remaining);
        assert_eq!(inline.unwrap_err().kind(), ErrorKind::OutOfFuel);
    }

    #[tokio::test]
    async fn work_over_budget_fails_naming_the_template() {
        let t = templates(
            "flows/f.toml#steps.t.set.x",
            "{% for i in range(web1.n) %}{% for j in range(web1.n) %}x{% endfor %}{% endfor %}",
            RenderBudget {
                fuel: 100_000,
                max_output_bytes: usize::MAX,
            },
        );
        let e = t
            .render_text("flows/f.toml#steps.t.set.x", &ctx())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfFuel);
        let described = crate::template::describe_at(&e);
        assert!(
            described.contains("flows/f.toml#steps.t.set.x:1")
                && described.contains("work budget (templates.fuel)"),
            "{described}"
        );
    }

    #[tokio::test]
    async fn filters_that_write_a_whole_value_stop_at_the_budget() {
        // A list nested 100 deep, 50 times over: small as data, huge when
        // indented wide or printed for debugging.
        let mut deep = serde_json::json!(1);
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let budget = RenderBudget {
            fuel: 100_000,
            max_output_bytes: 1024 * 1024,
        };
        for (source, copies) in [
            ("{{ v | tojson(indent=100000) | length }}", 50),
            ("{{ v | pprint | length }}", 200),
        ] {
            let t = templates("t", source, budget);
            let mut scope = Scope::default();
            scope.set_json("v", serde_json::Value::Array(vec![deep.clone(); copies]));
            let started = std::time::Instant::now();
            let e = t.render_text("t", &scope.context()).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::OutOfFuel, "{source}: {e}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{source}"
            );
        }
        // Within the budget they write what minijinja's own filters do.
        let t = templates(
            "t",
            "{{ v | tojson }}|{{ v | tojson(indent=2) }}|{{ v | pprint }}",
            RenderBudget::default(),
        );
        let mut scope = Scope::default();
        scope.set_json("v", serde_json::json!({"a": [1, "x<"]}));
        let text = t.render_text("t", &scope.context()).await.unwrap();
        let mut parts = text.split('|');
        assert_eq!(parts.next().unwrap(), r#"{"a": [1, "x\u003c"]}"#);
        assert_eq!(
            parts.next().unwrap(),
            "{\n  \"a\": [\n    1,\n    \"x\\u003c\"\n  ]\n}"
        );
        let debug = parts.next().unwrap();
        assert!(debug.contains("'a'"), "{debug}");
    }

    #[tokio::test]
    async fn output_over_budget_fails_naming_the_template_for_text_and_values() {
        let budget = RenderBudget {
            fuel: 10_000_000,
            max_output_bytes: 1000,
        };
        let t = templates("big", "{{ 'x' * 1001 }}", budget);
        let e = t.render_text("big", &ctx()).await.unwrap_err();
        assert!(e.to_string().contains("output of big passed"), "{e}");
        let fits = templates("ok", "{{ 'x' * 1000 }}", budget);
        assert_eq!(fits.render_text("ok", &ctx()).await.unwrap().len(), 1000);
        // A value's strings count together.
        let mut env = new_environment();
        env.add_template_owned("half", "{{ 'y' * 600 }}").unwrap();
        let t = Templates::new(env, budget);
        let value = TemplateValue::Map(vec![
            ("a".into(), TemplateValue::Text("half".into())),
            ("b".into(), TemplateValue::Text("half".into())),
        ]);
        let e = t.render(&value, &ctx()).await.unwrap_err();
        assert!(e.to_string().contains("output of half passed"), "{e}");
    }
}
