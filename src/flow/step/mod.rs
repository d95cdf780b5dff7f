//! Steps: the keys every step has (`ref`, `if`, `on_error`, `retry`,
//! `timeout`) and the registry of step kinds.
//!
//! Each kind is one file in this folder that owns its config keys, their
//! validation (every problem reported as `path:line`) and what the step does
//! when it runs. Adding a kind means writing that file and adding its line to
//! the `kinds!` registry below; nothing else names kinds.
//!
//! A kind runs against a `Runner`, which the engine provides: the template
//! environment, outbound HTTP, the run log and nested steps. So the flow
//! model does not depend on the engine that executes it.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;
use toml::Spanned;

use super::load::{FlowBuilder, is_identifier};
use super::spec::Node;
use crate::outbound::HttpClient;
use crate::template::{self, RESERVED_NAMES, Scope, TemplateValue, Templates};

/// Declares every step kind: `module => Type`, where `module` is both the
/// file and the kind's name in flow files, and `Type` implements [`Kind`].
macro_rules! kinds {
    ($($module:ident => $variant:ident),* $(,)?) => {
        $(
            mod $module;
            pub use $module::$variant;
        )*

        /// A step kind with its config (boxed: kinds differ much in size).
        #[derive(Debug)]
        pub enum Action {
            $(
                #[doc = concat!("A `", stringify!($module), "` step.")]
                $variant(Box<$variant>),
            )*
        }

        impl Action {
            /// Every kind name, as written in flow files.
            pub const KINDS: &'static [&'static str] = &[$(stringify!($module)),*];

            /// The kind name as written in flow files.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Action::$variant(_) => stringify!($module),)*
                }
            }

            fn load(kind: &str, b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Option<Self> {
                Some(match kind {
                    $(stringify!($module) => Action::$variant(Box::new($variant::load(b, keys, site))),)*
                    _ => return None,
                })
            }

            /// One attempt of the step.
            pub(crate) async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
                match self {
                    $(Action::$variant(kind) => kind.run(runner, call).await,)*
                }
            }
        }
    };
}

kinds! {
    transform => Transform,
    http => Http,
    branch => Branch,
    for_each => ForEach,
    delay => Delay,
    log => Log,
    fail => Fail,
}

/// One step.
#[derive(Debug)]
pub struct Step {
    /// The step's ref: its output appears as `{{ <ref>.… }}`.
    pub ref_id: String,
    /// Expression template name; the step is skipped unless it is true.
    pub condition: Option<String>,
    /// What a failure of this step does to the run.
    pub on_error: OnError,
    /// Attempts and backoff.
    pub retry: Retry,
    /// Limit of one attempt.
    pub timeout: Option<Duration>,
    /// What the step does.
    pub action: Action,
}

/// `on_error`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail the run.
    Stop,
    /// Record the error as the step's output and go on.
    Continue,
}

/// `retry = { attempts, backoff }`
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Total attempts, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Duration::from_secs(1),
        }
    }
}

/// What one step kind is: how it loads from its keys and how it runs.
pub(in crate::flow) trait Kind: Sized + Sync {
    /// Reads the kind's own keys from `keys`, reporting problems to `b`.
    /// Keys left unread afterwards are reported as not belonging to the kind.
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Self;

    /// One attempt of the step.
    fn run<R: Runner>(
        &self,
        runner: &mut R,
        call: Call<'_>,
    ) -> impl Future<Output = Result<Value, StepFailure>> + Send;
}

/// What a running step can use: the engine's side of a step.
pub(crate) trait Runner: Send + Sync {
    /// The template environment of the run's catalog.
    fn env(&self) -> &Templates;
    /// True for a dry run: no outbound calls, no waiting.
    fn dry_run(&self) -> bool;
    /// The SSRF-guarded outbound client.
    fn http(&self) -> &HttpClient;
    /// Appends `message` to the run's log.
    fn log(&mut self, path: &str, message: String);
    /// Runs nested steps, their paths starting with `prefix`.
    fn run_steps<'a>(
        &'a mut self,
        steps: &'a [Step],
        prefix: String,
        scope: &'a mut Scope,
    ) -> Pin<Box<dyn Future<Output = Result<(), StepFailure>> + Send + 'a>>;
}

/// One step attempt's place in the run.
pub(crate) struct Call<'a> {
    /// Where the step sits, e.g. `notify` or `each_item[2].post`.
    pub path: &'a str,
    /// The run's variables; nested steps add their outputs here.
    pub scope: &'a mut Scope,
    /// Receives the rendered config the step acts on, for its trace.
    pub input: &'a mut Value,
}

/// Why one step attempt failed.
#[derive(Debug)]
pub(crate) struct StepFailure {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed (timeouts, 5xx, 429).
    pub retryable: bool,
    /// What the step produced anyway (an unexpected HTTP answer).
    pub output: Value,
}

impl StepFailure {
    /// A failure another attempt would not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            output: Value::Null,
        }
    }

    /// A template that failed to render.
    pub fn template(err: minijinja::Error) -> Self {
        Self::fatal(template::describe_at(&err))
    }
}

/// Where a step is being loaded: what its templates may name.
pub(in crate::flow) struct Site<'s> {
    /// The step's place for template names, e.g. `steps.notify`.
    pub pointer: String,
    /// Names the step's templates may use; a kind with nested steps extends it.
    pub allowed: &'s mut HashSet<String>,
    /// The trigger's ref, which no step may take.
    pub trigger_ref: &'s str,
    /// The step's `timeout`, if set.
    pub timeout: Option<Duration>,
}

/// A step's keys as written, taken one by one by whoever reads them.
pub(in crate::flow) struct Keys {
    kind: String,
    kind_at: usize,
    entries: Vec<(String, Spanned<Node>)>,
}

impl Keys {
    /// Takes `key`, whatever its type.
    pub fn node(&mut self, key: &str) -> Option<Spanned<Node>> {
        let index = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(index).1)
    }

    /// Takes `key`, reporting it missing.
    pub fn required_node(&mut self, b: &mut FlowBuilder<'_>, key: &str) -> Option<Spanned<Node>> {
        let node = self.node(key);
        if node.is_none() {
            b.problem(
                self.kind_at,
                format!("a `{}` step needs `{key}`", self.kind),
            );
        }
        node
    }

    /// Takes `key`, which must be a string.
    pub fn string(&mut self, b: &mut FlowBuilder<'_>, key: &str) -> Option<Spanned<String>> {
        let node = self.node(key)?;
        string_of(b, node, key)
    }

    /// Takes `key`, which must be a string, reporting it missing.
    pub fn required_string(
        &mut self,
        b: &mut FlowBuilder<'_>,
        key: &str,
    ) -> Option<Spanned<String>> {
        let node = self.required_node(b, key)?;
        string_of(b, node, key)
    }

    /// Takes `key`, which must be a list of step tables.
    pub fn steps(&mut self, b: &mut FlowBuilder<'_>, key: &str) -> Option<Vec<Spanned<Node>>> {
        let node = self.node(key)?;
        let at = node.span().start;
        match node.into_inner() {
            Node::List(items) if items.iter().all(|i| matches!(i.get_ref(), Node::Map(_))) => {
                Some(items)
            }
            _ => {
                b.problem(at, format!("`{key}` must be a list of steps"));
                None
            }
        }
    }

    /// Takes `key`, which must be a list of step tables, reporting it missing.
    pub fn required_steps(
        &mut self,
        b: &mut FlowBuilder<'_>,
        key: &str,
    ) -> Option<Vec<Spanned<Node>>> {
        if !self.entries.iter().any(|(k, _)| k == key) {
            self.required_node(b, key);
            return None;
        }
        self.steps(b, key)
    }

    /// Reports every key nobody took.
    fn finish(self, b: &mut FlowBuilder<'_>) {
        for (key, node) in self.entries {
            b.problem(
                node.span().start,
                format!("`{key}` is not a key of a `{}` step", self.kind),
            );
        }
    }
}

fn string_of(b: &mut FlowBuilder<'_>, node: Spanned<Node>, key: &str) -> Option<Spanned<String>> {
    let span = node.span();
    match node.into_inner() {
        Node::Str(s) => Some(Spanned::new(span, s)),
        _ => {
            b.problem(span.start, format!("`{key}` must be a string"));
            None
        }
    }
}

/// Loads a list of steps; `pointer` names their place (`steps`,
/// `steps.check.then`), and each step's ref joins `allowed` for the steps
/// after it.
pub(in crate::flow) fn load_steps(
    b: &mut FlowBuilder<'_>,
    nodes: Vec<Spanned<Node>>,
    pointer: &str,
    allowed: &mut HashSet<String>,
    trigger_ref: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for node in nodes {
        let at = node.span().start;
        let Node::Map(entries) = node.into_inner() else {
            b.problem(at, "a step must be a table");
            continue;
        };
        let mut keys = Keys {
            kind: String::new(),
            kind_at: at,
            entries,
        };
        let Some(ref_id) = keys.string(b, "ref") else {
            b.problem(at, "a step needs `ref`");
            continue;
        };
        let ref_at = ref_id.span().start;
        let ref_id = ref_id.into_inner();
        if !is_identifier(&ref_id)
            || RESERVED_NAMES.contains(&ref_id.as_str())
            || ref_id == trigger_ref
        {
            b.problem(
                ref_at,
                format!(
                    "step ref `{ref_id}` must be an identifier and not the trigger ref or one of {}",
                    RESERVED_NAMES.join(", ")
                ),
            );
        } else if !b.refs.insert(ref_id.clone()) {
            b.problem(ref_at, format!("duplicate step ref `{ref_id}`"));
        }
        let step_pointer = format!("{pointer}.{ref_id}");
        if let Some(step) = load_step(b, keys, ref_id.clone(), step_pointer, allowed, trigger_ref) {
            steps.push(step);
        }
        allowed.insert(ref_id);
    }
    steps
}

fn load_step(
    b: &mut FlowBuilder<'_>,
    mut keys: Keys,
    ref_id: String,
    pointer: String,
    allowed: &mut HashSet<String>,
    trigger_ref: &str,
) -> Option<Step> {
    let Some(kind) = keys.string(b, "kind") else {
        b.problem(keys.kind_at, format!("step `{ref_id}` needs `kind`"));
        return None;
    };
    keys.kind_at = kind.span().start;
    keys.kind = kind.get_ref().clone();
    if !Action::KINDS.contains(&kind.get_ref().as_str()) {
        b.problem(
            keys.kind_at,
            format!(
                "step kind `{}` must be one of {}",
                kind.get_ref(),
                Action::KINDS.join(", ")
            ),
        );
        return None;
    }
    let condition = keys
        .string(b, "if")
        .map(|c| b.expression(&c, &format!("{pointer}.if"), allowed));
    let on_error = match keys.string(b, "on_error") {
        None => OnError::Stop,
        Some(o) => match o.get_ref().as_str() {
            "stop" => OnError::Stop,
            "continue" => OnError::Continue,
            other => {
                b.problem(
                    o.span().start,
                    format!("on_error `{other}` must be stop or continue"),
                );
                OnError::Stop
            }
        },
    };
    let retry = keys.node("retry").map(|r| retry(b, r)).unwrap_or_default();
    let timeout = keys
        .string(b, "timeout")
        .and_then(|t| b.duration(&t, "timeout"));
    let mut site = Site {
        pointer,
        allowed,
        trigger_ref,
        timeout,
    };
    let action = Action::load(&kind.into_inner(), b, &mut keys, &mut site)?;
    keys.finish(b);
    Some(Step {
        ref_id,
        condition,
        on_error,
        retry,
        timeout,
        action,
    })
}

/// `retry = { attempts = 3, backoff = "2s" }`
fn retry(b: &mut FlowBuilder<'_>, node: Spanned<Node>) -> Retry {
    let at = node.span().start;
    let Node::Map(entries) = node.into_inner() else {
        b.problem(
            at,
            "`retry` must be a table like { attempts = 3, backoff = \"2s\" }",
        );
        return Retry::default();
    };
    let mut keys = Keys {
        kind: String::new(),
        kind_at: at,
        entries,
    };
    let attempts = match keys.node("attempts") {
        Some(n) => match n.get_ref() {
            Node::Int(a) if (1..=100).contains(a) => *a as u32,
            _ => {
                b.problem(n.span().start, "retry attempts must be within 1..=100");
                1
            }
        },
        None => {
            b.problem(at, "`retry` needs `attempts`");
            1
        }
    };
    let backoff = keys
        .string(b, "backoff")
        .and_then(|s| b.duration(&s, "backoff"))
        .unwrap_or(Retry::default().backoff);
    for (key, node) in keys.entries {
        b.problem(
            node.span().start,
            format!("`{key}` is not a key of `retry` (attempts, backoff)"),
        );
    }
    Retry { attempts, backoff }
}

/// `message`, the template `log` and `fail` render.
fn message(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> TemplateValue {
    match keys.required_node(b, "message") {
        Some(m) => b.template_value(&m, &format!("{}.message", site.pointer), site.allowed),
        None => TemplateValue::Literal(Value::Null),
    }
}

/// Renders `message` as text: strings as they are, other values as JSON.
async fn render_message<R: Runner>(
    message: &TemplateValue,
    runner: &R,
    scope: &Scope,
) -> Result<String, StepFailure> {
    match runner.env().render(message, &scope.context()).await {
        Ok(Value::String(s)) => Ok(s),
        Ok(other) => Ok(other.to_string()),
        Err(e) => Err(StepFailure::template(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::flow::{LoadOptions, load_catalog};

    /// Loads one flow file whose `[[steps]]` are `steps`; returns the problems.
    fn problems(steps: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("flows")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        let source = format!("status = \"live\"\n[trigger]\nref = \"web1\"\n{steps}");
        std::fs::write(dir.path().join("flows/f.toml"), source).unwrap();
        let report = load_catalog(&LoadOptions {
            flows_dir: dir.path().join("flows"),
            templates_dir: dir.path().join("templates"),
            default_max_body_bytes: 1024,
            default_records: Default::default(),
            secrets: HashMap::new(),
            render: Default::default(),
        });
        report
            .problems
            .iter()
            .map(|p| p.rsplit_once("f.toml:").unwrap().1.to_owned())
            .collect()
    }

    #[test]
    fn every_kind_loads_from_its_own_keys() {
        let found = problems(
            r#"
[[steps]]
ref = "t"
kind = "transform"
set = { a = "{{ web1.x }}" }
[[steps]]
ref = "h"
kind = "http"
method = "put"
url = "https://example.com/{{ t.a }}"
expect = [200, "4xx"]
retry = { attempts = 3, backoff = "1s" }
[[steps]]
ref = "b"
kind = "branch"
when = "h.status == 200"
then = [{ ref = "l", kind = "log", message = "yes" }]
else = [{ ref = "f", kind = "fail", message = "no" }]
[[steps]]
ref = "e"
kind = "for_each"
items = "web1.items"
steps = [{ ref = "d", kind = "delay", duration = "1ms" }]
"#,
        );
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn runs_keep_and_max_are_checked_where_written() {
        let found = problems("[runs]\nkeep = \"some\"\nmax = -1\n");
        assert_eq!(
            found,
            [
                "5: runs.keep `some` must be all, failed or none",
                "6: runs.max must be 0 (no cap) or more"
            ]
        );
        assert_eq!(
            problems("[runs]\nkeep = \"failed\"\nmax = 0\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn problems_name_the_line_of_the_key() {
        let found = problems(
            r#"
[[steps]]
ref = "t"
kind = "transform"
set = { a = 1 }
url = "http://x"

[[steps]]
ref = "h"
kind = "http"
method = 5

[[steps]]
ref = "b"
kind = "branch"
when = "true"
then = [{ ref = "inner", kind = "log", message = "x", items = "y" }]
else = "not steps"

[[steps]]
kind = "log"
message = "x"

[[steps]]
ref = "r"
kind = "log"
message = "x"
retry = { attempts = 0, wait = "1s" }

[[steps]]
ref = "k"
kind = "sleep"
"#,
        );
        // Lines count from the flow file's first line; the steps start at line 4.
        for expected in [
            "9: `url` is not a key of a `transform` step",
            "14: `method` must be a string",
            "13: a `http` step needs `url`",
            "20: `items` is not a key of a `log` step",
            "21: `else` must be a list of steps",
            "23: a step needs `ref`",
            "31: retry attempts must be within 1..=100",
            "31: `wait` is not a key of `retry` (attempts, backoff)",
            "35: step kind `sleep` must be one of transform, http, branch, for_each, delay, log, fail",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "missing `{expected}` in {found:#?}"
            );
        }
        assert_eq!(found.len(), 9, "{found:#?}");
    }
}
