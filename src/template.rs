//! Templates: the minijinja environment, template values and the context.
//!
//! Every template a flow uses, from `templates/` or inline in a flow file, is
//! compiled once into one [`Environment`] when flows load. Request data only
//! ever enters as context values, so a body containing `{{ ... }}` renders as
//! literal text.
//!
//! A config value that is exactly one `{{ expression }}` is evaluated as an
//! expression and keeps its type (number, bool, list, object); any other
//! string renders as text.

use std::collections::{BTreeMap, HashSet};

use minijinja::{Environment, UndefinedBehavior, Value};

/// The template environment shared by all flows of one load.
pub type Env = Environment<'static>;

/// Names every template sees besides step refs and the trigger ref.
pub const RESERVED_NAMES: &[&str] = &["request", "run", "error", "item", "loop"];

/// A new environment with flowgate's settings.
pub fn new_environment() -> Env {
    let mut env = Environment::new();
    // Chainable: `{{ web1.customer.email }}` renders empty when `customer` is
    // missing, as flow authors expect from n8n-style expressions.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    // Booleans print as JSON does (`true`), not Python-style (`True`): answers
    // are mostly JSON, and flow authors come from JavaScript-flavoured tools.
    env.set_formatter(|out, state, value| {
        if value.kind() == minijinja::value::ValueKind::Bool
            && *state.auto_escape() == minijinja::AutoEscape::None
        {
            let text = if value.is_true() { "true" } else { "false" };
            return out.write_str(text).map_err(Into::into);
        }
        minijinja::escape_formatter(out, state, value)
    });
    env
}

/// Describes a minijinja error without its location, which the caller reports itself.
pub fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// Describes a render error with the template name and line it happened at.
pub fn describe_at(err: &minijinja::Error) -> String {
    match (err.name(), err.line()) {
        (Some(name), Some(line)) => format!("{} (at {name}:{line})", describe(err)),
        _ => describe(err),
    }
}

/// If `text` is exactly one `{{ expression }}`, the expression.
pub fn single_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    let has_more = ["{{", "}}", "{%", "%}", "{#"]
        .iter()
        .any(|m| inner.contains(m));
    (!has_more && !inner.trim().is_empty()).then_some(inner.trim())
}

/// True when `text` contains template syntax at all.
pub fn has_template_syntax(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// A config value whose strings are templates.
#[derive(Debug, Clone)]
pub enum TemplateValue {
    /// A value with no template syntax, used as is.
    Literal(serde_json::Value),
    /// A text template, by its name in the environment.
    Text(String),
    /// A single `{{ expression }}`, by its source; keeps the value's type.
    Expr(String),
    /// A list of values.
    List(Vec<TemplateValue>),
    /// An object of values, in file order.
    Map(Vec<(String, TemplateValue)>),
}

impl TemplateValue {
    /// Renders the value against `ctx`.
    pub fn render(&self, env: &Env, ctx: &Value) -> Result<serde_json::Value, minijinja::Error> {
        Ok(match self {
            TemplateValue::Literal(v) => v.clone(),
            TemplateValue::Text(name) => {
                serde_json::Value::String(env.get_template(name)?.render(ctx)?)
            }
            TemplateValue::Expr(source) => to_json(&eval(env, source, ctx)?),
            TemplateValue::List(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|item| item.render(env, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            TemplateValue::Map(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (key, value) in entries {
                    map.insert(key.clone(), value.render(env, ctx)?);
                }
                serde_json::Value::Object(map)
            }
        })
    }

    /// Names of context variables the value refers to.
    pub fn referenced_names(&self, env: &Env) -> HashSet<String> {
        let mut names = HashSet::new();
        self.collect_names(env, &mut names);
        names
    }

    fn collect_names(&self, env: &Env, names: &mut HashSet<String>) {
        match self {
            TemplateValue::Literal(_) => {}
            TemplateValue::Text(name) => {
                if let Ok(t) = env.get_template(name) {
                    names.extend(t.undeclared_variables(false));
                }
            }
            TemplateValue::Expr(source) => names.extend(expression_names(env, source)),
            TemplateValue::List(items) => items.iter().for_each(|i| i.collect_names(env, names)),
            TemplateValue::Map(entries) => entries
                .iter()
                .for_each(|(_, v)| v.collect_names(env, names)),
        }
    }
}

/// Evaluates an expression against `ctx`.
pub fn eval(env: &Env, source: &str, ctx: &Value) -> Result<Value, minijinja::Error> {
    env.compile_expression(source)?.eval(ctx)
}

/// Names of context variables an expression refers to.
pub fn expression_names(env: &Env, source: &str) -> HashSet<String> {
    env.compile_expression(source)
        .map(|e| e.undeclared_variables(false))
        .unwrap_or_default()
}

/// Converts a template value to JSON; undefined becomes `null`.
pub fn to_json(value: &Value) -> serde_json::Value {
    if value.is_undefined() {
        return serde_json::Value::Null;
    }
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Converts JSON to a template value directly (faster than going through serde).
pub fn from_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(from_json).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.as_str(), from_json(v)))
            .collect(),
    }
}

/// The variables a run's templates see: the trigger ref, `request`, `run` and
/// step outputs by ref.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    vars: BTreeMap<String, Value>,
}

impl Scope {
    /// Sets `name` to a JSON value.
    pub fn set_json(&mut self, name: &str, value: &serde_json::Value) {
        self.vars
            .insert(name.to_owned(), Value::from(minijinja::value::Serde(value)));
    }

    /// Sets `name` to a template value.
    pub fn set(&mut self, name: &str, value: Value) {
        self.vars.insert(name.to_owned(), value);
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.vars.get(name).cloned()
    }

    /// The scope as a template context.
    pub fn context(&self) -> Value {
        Value::from(self.vars.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_expression_is_recognised() {
        assert_eq!(single_expression("{{ web1.amount }}"), Some("web1.amount"));
        assert_eq!(single_expression(" {{- a + 1 -}} "), Some("a + 1"));
        assert_eq!(single_expression("id-{{ a }}"), None);
        assert_eq!(single_expression("{{ a }} and {{ b }}"), None);
        assert_eq!(single_expression("plain"), None);
    }

    #[test]
    fn expressions_keep_types_and_text_renders() {
        let mut env = new_environment();
        env.add_template_owned("t", "id-{{ web1.n }}").unwrap();
        let mut scope = Scope::default();
        scope.set_json("web1", &serde_json::json!({"n": 7, "tags": ["a"]}));
        let ctx = scope.context();
        let value = TemplateValue::Map(vec![
            ("n".into(), TemplateValue::Expr("web1.n * 2".into())),
            ("tags".into(), TemplateValue::Expr("web1.tags".into())),
            ("text".into(), TemplateValue::Text("t".into())),
            (
                "missing".into(),
                TemplateValue::Expr("web1.nope.deeper".into()),
            ),
        ]);
        assert_eq!(
            value.render(&env, &ctx).unwrap(),
            serde_json::json!({"n": 14, "tags": ["a"], "text": "id-7", "missing": null})
        );
    }
}
