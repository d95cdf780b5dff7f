//! Templates: the minijinja environment, template values and the context.
//!
//! Every template a flow uses, from `templates/` or inline in a flow file, is
//! compiled once into one [`Environment`] when flows load. Request data only
//! ever enters as context values, so a body containing `{{ ... }}` renders as
//! literal text.
//!
//! A config value that is exactly one `{{ expression }}` is evaluated as an
//! expression and keeps its type (number, bool, list, object); any other
//! string renders as text. Expressions are compiled once, at load, as a
//! template `{% set __value = (expr) %}` whose variable is read back after
//! rendering; see [`expression_template`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{Environment, UndefinedBehavior, Value};

mod budget;
pub mod json;

pub use budget::{INLINE_FUEL, RenderBudget, Templates, heavy_renders};

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
    env.add_filter(json::IN_STRING_FILTER, json::in_string);
    env.add_filter(json::VALUE_FILTER, json::json_value);
    env.add_filter("tojson", json::tojson);
    env.add_filter("pprint", json::pprint);
    env
}

/// Describes a minijinja error without its location, which the caller reports itself.
pub fn describe(err: &minijinja::Error) -> String {
    if err.kind() == minijinja::ErrorKind::OutOfFuel {
        return "the render passed its work budget (templates.fuel)".to_owned();
    }
    if let Some(detail) = err.detail().filter(|d| d.starts_with(OVER_OUTPUT)) {
        return detail.to_owned();
    }
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
    /// A single `{{ expression }}`, by its [`expression_template`] name; keeps the value's type.
    Expr(String),
    /// A list of values.
    List(Vec<TemplateValue>),
    /// An object of values, in file order.
    Map(Vec<(String, TemplateValue)>),
}

impl TemplateValue {
    /// Renders the value against `ctx` with `env`'s fuel, its strings
    /// together at most `remaining` bytes (what is left is written back).
    /// Flows render through [`Templates::render`], which picks the thread.
    pub fn render_within(
        &self,
        env: &Env,
        ctx: &Value,
        remaining: &mut usize,
    ) -> Result<serde_json::Value, minijinja::Error> {
        Ok(match self {
            TemplateValue::Literal(v) => v.clone(),
            TemplateValue::Text(name) => {
                serde_json::Value::String(render_text(env, name, ctx, remaining)?)
            }
            TemplateValue::Expr(name) => {
                let value = to_json(&eval(env, name, ctx)?);
                let size = json_size(&value);
                if size > *remaining {
                    return Err(over_budget(name));
                }
                *remaining -= size;
                value
            }
            TemplateValue::List(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|item| item.render_within(env, ctx, remaining))
                    .collect::<Result<_, _>>()?,
            ),
            TemplateValue::Map(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (key, value) in entries {
                    map.insert(key.clone(), value.render_within(env, ctx, remaining)?);
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
            TemplateValue::Text(name) | TemplateValue::Expr(name) => {
                if let Ok(t) = env.get_template(name) {
                    names.extend(t.undeclared_variables(false));
                }
            }
            TemplateValue::List(items) => items.iter().for_each(|i| i.collect_names(env, names)),
            TemplateValue::Map(entries) => entries
                .iter()
                .for_each(|(_, v)| v.collect_names(env, names)),
        }
    }
}

/// Variable the expression templates assign their result to.
const EXPRESSION_RESULT: &str = "__value";

/// The template source that evaluates `expression` once compiled; register
/// it under a name and evaluate it with [`eval`].
pub fn expression_template(expression: &str) -> String {
    format!("{{% set {EXPRESSION_RESULT} = ({expression}) %}}")
}

/// Evaluates the expression template `name` against `ctx`.
pub fn eval(env: &Env, name: &str, ctx: &Value) -> Result<Value, minijinja::Error> {
    let captured = env.get_template(name)?.render_captured(ctx)?;
    Ok(captured
        .state()
        .lookup(EXPRESSION_RESULT)
        .unwrap_or(Value::UNDEFINED))
}

/// Renders the text template `name` against `ctx`, stopping as soon as
/// its output passes `remaining` bytes (what is left is written back).
pub fn render_text(
    env: &Env,
    name: &str,
    ctx: &Value,
    remaining: &mut usize,
) -> Result<String, minijinja::Error> {
    let mut out = BoundedOutput {
        text: Vec::new(),
        max: *remaining,
        overflowed: false,
    };
    match env.get_template(name)?.render_captured_to(ctx, &mut out) {
        Ok(_) => {
            *remaining -= out.text.len();
            // Templates write only text.
            Ok(String::from_utf8_lossy(&out.text).into_owned())
        }
        Err(_) if out.overflowed => Err(over_budget(name)),
        Err(e) => Err(e),
    }
}

/// How the error of a render whose output passed its budget begins.
const OVER_OUTPUT: &str = "the output of ";

/// The error for a render whose output passed its budget.
fn over_budget(name: &str) -> minijinja::Error {
    minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("{OVER_OUTPUT}{name} passed its budget (templates.max_output_bytes)"),
    )
}

/// A writer that refuses to hold more than `max` bytes.
struct BoundedOutput {
    text: Vec<u8>,
    max: usize,
    overflowed: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.max {
            self.overflowed = true;
            return Err(std::io::Error::other("over the output budget"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// About how many bytes `value` takes as JSON text, without writing it.
pub fn json_size(value: &serde_json::Value) -> usize {
    let mut size = 0;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        size += match value {
            serde_json::Value::String(s) => s.len() + 2,
            serde_json::Value::Array(items) => {
                stack.extend(items);
                items.len() + 2
            }
            serde_json::Value::Object(map) => {
                stack.extend(map.values());
                map.keys().map(|k| k.len() + 4).sum::<usize>() + 2
            }
            _ => 8,
        };
    }
    size
}

/// Converts a template value to JSON; undefined becomes `null`.
pub fn to_json(value: &Value) -> serde_json::Value {
    if value.is_undefined() {
        return serde_json::Value::Null;
    }
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Exposes JSON to templates without converting it up front: objects and
/// lists become views that convert only the parts a template touches, so a
/// large body costs nothing beyond the fields a flow reads.
pub fn json_value(root: Arc<serde_json::Value>) -> Value {
    match &*root {
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
            Value::from_object(JsonView {
                root,
                path: Vec::new(),
            })
        }
        scalar => scalar_value(scalar),
    }
}

fn scalar_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        _ => Value::from(()),
    }
}

#[derive(Debug, Clone)]
enum PathSegment {
    Key(String),
    Index(usize),
}

/// A JSON object or list inside a shared document, addressed by its path.
#[derive(Debug)]
struct JsonView {
    root: Arc<serde_json::Value>,
    path: Vec<PathSegment>,
}

impl JsonView {
    fn node(&self) -> &serde_json::Value {
        let mut node = &*self.root;
        for segment in &self.path {
            node = match (node, segment) {
                (serde_json::Value::Object(map), PathSegment::Key(key)) => &map[key.as_str()],
                (serde_json::Value::Array(items), PathSegment::Index(i)) => &items[*i],
                _ => unreachable!("paths are only built from existing children"),
            };
        }
        node
    }

    fn child(&self, segment: PathSegment, node: &serde_json::Value) -> Value {
        match node {
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                let mut path = self.path.clone();
                path.push(segment);
                Value::from_object(JsonView {
                    root: self.root.clone(),
                    path,
                })
            }
            scalar => scalar_value(scalar),
        }
    }
}

impl Object for JsonView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            serde_json::Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.node() {
            serde_json::Value::Object(map) => {
                let (key, value) = map.get_key_value(key.as_str()?)?;
                Some(self.child(PathSegment::Key(key.clone()), value))
            }
            serde_json::Value::Array(items) => {
                let index = key.as_usize()?;
                Some(self.child(PathSegment::Index(index), items.get(index)?))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            serde_json::Value::Object(map) => {
                Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect())
            }
            serde_json::Value::Array(items) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            serde_json::Value::Object(map) => Some(map.len()),
            serde_json::Value::Array(items) => Some(items.len()),
            _ => Some(0),
        }
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
    pub fn set_json(&mut self, name: &str, value: serde_json::Value) {
        self.set_shared_json(name, Arc::new(value));
    }

    /// Sets `name` to a shared JSON value, without copying it.
    pub fn set_shared_json(&mut self, name: &str, value: Arc<serde_json::Value>) {
        self.vars.insert(name.to_owned(), json_value(value));
    }

    /// Sets `name` to a template value.
    pub fn set(&mut self, name: &str, value: Value) {
        self.vars.insert(name.to_owned(), value);
    }

    /// Every variable but `except`, as JSON.
    pub fn outputs(&self, except: &[&str]) -> serde_json::Map<String, serde_json::Value> {
        self.vars
            .iter()
            .filter(|(name, _)| !except.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), to_json(value)))
            .collect()
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
        for (name, expr) in [
            ("double", "web1.n * 2"),
            ("tags", "web1.tags"),
            ("deep", "web1.nope.deeper"),
        ] {
            env.add_template_owned(name, expression_template(expr))
                .unwrap();
        }
        let mut scope = Scope::default();
        scope.set_json("web1", serde_json::json!({"n": 7, "tags": ["a"]}));
        let ctx = scope.context();
        let value = TemplateValue::Map(vec![
            ("n".into(), TemplateValue::Expr("double".into())),
            ("tags".into(), TemplateValue::Expr("tags".into())),
            ("text".into(), TemplateValue::Text("t".into())),
            ("missing".into(), TemplateValue::Expr("deep".into())),
        ]);
        assert_eq!(
            value.render_within(&env, &ctx, &mut 1024).unwrap(),
            serde_json::json!({"n": 14, "tags": ["a"], "text": "id-7", "missing": null})
        );
    }

    #[test]
    fn tojson_escapes_line_separators_like_every_other_json() {
        let mut env = new_environment();
        env.add_template_owned("t", "{{ v | tojson }}|{{ v | tojson(indent=2) }}")
            .unwrap();
        let mut scope = Scope::default();
        scope.set_json("v", serde_json::json!({"a": "x\u{2028}y\u{2029}<"}));
        let text = env
            .get_template("t")
            .unwrap()
            .render(scope.context())
            .unwrap();
        assert!(!text.contains(['\u{2028}', '\u{2029}', '<']), "{text}");
        assert!(text.contains("x\\u2028y\\u2029\\u003c"), "{text}");
        let (compact, pretty) = text.split_once('|').unwrap();
        let back: serde_json::Value = serde_json::from_str(compact).unwrap();
        assert_eq!(back["a"], "x\u{2028}y\u{2029}<");
        assert!(pretty.contains('\n'));
    }

    #[test]
    fn json_views_behave_like_values() {
        let mut env = new_environment();
        env.add_template_owned(
            "t",
            "{{ d.a.b[1] }} {{ d.list | length }} {{ d.list[-1].k }} {{ d | tojson }} {% for k in d.a %}{{ k }}{% endfor %} {{ d.missing.x }}",
        )
        .unwrap();
        let mut scope = Scope::default();
        scope.set_json(
            "d",
            serde_json::json!({"a": {"b": [1, 2]}, "list": [{"k": "x"}, {"k": "y"}]}),
        );
        assert_eq!(
            env.get_template("t")
                .unwrap()
                .render(scope.context())
                .unwrap(),
            r#"2 2 y {"a": {"b": [1, 2]}, "list": [{"k": "x"}, {"k": "y"}]} b "#
        );
        assert_eq!(
            to_json(&scope.get("d").unwrap()),
            serde_json::json!({"a": {"b": [1, 2]}, "list": [{"k": "x"}, {"k": "y"}]})
        );
    }
}
