//! Loading and validating `flows/*.toml` and `templates/`.
//!
//! Everything is checked up front and every problem is reported as
//! `path:line: message`: unknown keys, bad ids, duplicate refs, templates that
//! do not compile, statuses outside 100..=599, missing template files, and
//! template references to refs that no earlier step defines. A flow with any
//! problem is left out of the catalog; the others load.
//!
//! This file loads the catalog and the templates and builds each flow;
//! `trigger` and `response` load their sections of a flow file, and
//! [`crate::flow::step`] its steps.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, Method, StatusCode};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::template::json;

use super::spec::{FlowFile, Node, ResponseFile, SignatureFile, TriggerFile};
use super::*;

mod response;
mod trigger;

use self::response::default_response;
use crate::secret::Secret;
use crate::template::{
    self, Env, RESERVED_NAMES, TemplateValue, describe, has_template_syntax, single_expression,
};

/// Default whole-run limit.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default signature timestamp tolerance.
const DEFAULT_SIGNATURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Header the generic `hmac-sha256` scheme reads by default.
const DEFAULT_HMAC_HEADER: &str = "x-signature";

/// Where to load from.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The flows folder.
    pub flows_dir: PathBuf,
    /// The templates folder.
    pub templates_dir: PathBuf,
    /// Body limit for flows that set none.
    pub default_max_body_bytes: usize,
    /// Record keeping for flows that set none (`[runs]` of the config).
    pub default_records: crate::flow::RecordPolicy,
    /// Values for signature `secret_env` names, consulted before the process
    /// environment (embedders and tests pass secrets here).
    pub secrets: HashMap<String, String>,
    /// What each render may cost (`[templates]` of the config).
    pub render: template::RenderBudget,
}

/// What a load found.
#[derive(Debug)]
pub struct LoadReport {
    /// The valid flows and their templates.
    pub catalog: Catalog,
    /// Every problem, as `path:line: message`.
    pub problems: Vec<String>,
    /// Things that load but deserve a look (an unset signature secret).
    pub warnings: Vec<String>,
    /// Ids (or file names) of flows left out because of problems.
    pub skipped: Vec<String>,
    /// The problems of each flow left out, by id (or file name).
    pub problems_of: HashMap<String, Vec<String>>,
}

impl LoadReport {
    /// True when nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Loads every template and flow.
pub fn load_catalog(options: &LoadOptions) -> LoadReport {
    let mut env = template::new_environment();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    let mut problems_of: HashMap<String, Vec<String>> = HashMap::new();
    load_templates(&mut env, &options.templates_dir, &mut problems);
    let globals: HashSet<String> = env.globals().map(|(name, _)| name.to_owned()).collect();

    let mut flows = HashMap::new();
    let files = match toml_files(&options.flows_dir) {
        Ok(files) => files,
        Err(e) => {
            problems.push(format!(
                "{}: cannot read the flows folder: {e}",
                options.flows_dir.display()
            ));
            Vec::new()
        }
    };
    // Files are named from the project's folder (`flows/signup.toml`): the
    // names reach error messages, senders' included, and the server's own
    // paths have no business there.
    let project = options.flows_dir.parent().unwrap_or(Path::new(""));
    for path in files {
        let shown = path
            .strip_prefix(project)
            .unwrap_or(&path)
            .display()
            .to_string();
        let source = match std::fs::read_to_string(&path) {
            Ok(source) => source,
            Err(e) => {
                let problem = format!("{shown}: cannot read: {e}");
                problems.push(problem.clone());
                let id = flow_id_of(&path).unwrap_or_else(|| shown.clone());
                problems_of.insert(id.clone(), vec![problem]);
                skipped.push(id);
                continue;
            }
        };
        let mut builder = FlowBuilder {
            path: &path,
            shown: shown.clone(),
            source: &source,
            env: &mut env,
            globals: &globals,
            secrets: &options.secrets,
            problems: Vec::new(),
            warnings: Vec::new(),
            refs: HashSet::new(),
        };
        let flow = builder.build(options.default_max_body_bytes, options.default_records);
        let (file_problems, file_warnings) = (builder.problems, builder.warnings);
        warnings.extend(file_warnings);
        match flow {
            Some(flow) if file_problems.is_empty() => {
                flows.insert(flow.id.clone(), Arc::new(flow));
            }
            _ => {
                let id = flow_id_of(&path).unwrap_or(shown);
                problems.extend(file_problems.iter().cloned());
                problems_of.insert(id.clone(), file_problems);
                skipped.push(id);
            }
        }
    }
    LoadReport {
        catalog: Catalog {
            env: template::Templates::new(env, options.render),
            flows,
            kept: HashMap::new(),
            problems: HashMap::new(),
        },
        problems,
        warnings,
        skipped,
        problems_of,
    }
}

fn flow_id_of(path: &Path) -> Option<String> {
    path.file_stem().and_then(|s| s.to_str()).map(str::to_owned)
}

fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn load_templates(env: &mut Env, dir: &Path, problems: &mut Vec<String>) {
    let mut stack = vec![dir.to_path_buf()];
    let mut visited: HashSet<PathBuf> =
        HashSet::from([std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())]);
    let mut found = Vec::new();
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                // A folder is read once, so a link back to a parent cannot loop.
                if !visited.insert(std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone())) {
                    continue;
                }
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    for path in found {
        let name = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let source = match std::fs::read_to_string(&path) {
            Ok(source) => source,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        let source = match crate::template::json::is_json_name(&name) {
            true => match crate::template::json::rewrite(&source) {
                Ok(rewritten) => rewritten,
                Err(e) => {
                    problems.push(format!("{}:{}: {}", path.display(), e.line, e.message));
                    continue;
                }
            },
            false => source,
        };
        if let Err(e) = env.add_template_owned(name, source) {
            let line = e.line().unwrap_or(1);
            problems.push(format!("{}:{line}: {}", path.display(), describe(&e)));
        }
    }
}

/// Whether `id` is a valid flow id: `^[a-z0-9][a-z0-9_-]{0,63}$`.
pub fn is_valid_flow_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

pub(in crate::flow) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Builds one flow from its file, collecting every problem as `path:line`.
pub(in crate::flow) struct FlowBuilder<'a> {
    path: &'a Path,
    shown: String,
    source: &'a str,
    env: &'a mut Env,
    globals: &'a HashSet<String>,
    secrets: &'a HashMap<String, String>,
    problems: Vec<String>,
    warnings: Vec<String>,
    /// Every step ref defined so far in the flow.
    pub(in crate::flow) refs: HashSet<String>,
}

impl FlowBuilder<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.source.len());
        self.source.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    pub(in crate::flow) fn problem(&mut self, offset: usize, message: impl std::fmt::Display) {
        let line = self.line(offset);
        self.problems
            .push(format!("{}:{line}: {message}", self.shown));
    }

    /// Line of `template_line` inside a string value starting at `offset`.
    fn template_problem(&mut self, offset: usize, err: &minijinja::Error) {
        self.template_line_problem(offset, err.line().unwrap_or(1), describe(err));
    }

    /// A problem at `line` of the template whose source starts at `offset`.
    fn template_line_problem(&mut self, offset: usize, line: usize, message: String) {
        let mut line = self.line(offset) + line - 1;
        let rest = &self.source[offset.min(self.source.len())..];
        // A multi-line string's first newline is not part of the value.
        if rest.starts_with("\"\"\"\n") || rest.starts_with("'''\n") {
            line += 1;
        }
        self.problems
            .push(format!("{}:{line}: {message}", self.shown));
    }

    pub(in crate::flow) fn duration(
        &mut self,
        value: &Spanned<String>,
        key: &str,
    ) -> Option<Duration> {
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.problem(value.span().start, format!("{key} must be above zero"));
                None
            }
            Err(e) => {
                self.problem(
                    value.span().start,
                    format!(
                        "{key} `{}` is not a duration like \"30s\": {e}",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn build(
        &mut self,
        default_max_body: usize,
        default_records: crate::flow::RecordPolicy,
    ) -> Option<Flow> {
        let id = flow_id_of(self.path).unwrap_or_default();
        if !is_valid_flow_id(&id) {
            self.problem(
                0,
                format!("flow id `{id}` (the file name) must match ^[a-z0-9][a-z0-9_-]{{0,63}}$"),
            );
        }
        let file: FlowFile = match toml::from_str(self.source) {
            Ok(file) => file,
            Err(e) => {
                let offset = e.span().map(|s| s.start).unwrap_or(0);
                let message = e.message().trim_end().replace('\n', "; ");
                self.problem(offset, message);
                return None;
            }
        };
        let status = match file.status.as_ref() {
            None => FlowStatus::Draft,
            Some(s) => match s.get_ref().as_str() {
                "draft" => FlowStatus::Draft,
                "live" => FlowStatus::Live,
                "paused" => FlowStatus::Paused,
                other => {
                    self.problem(
                        s.span().start,
                        format!("status `{other}` must be draft, live or paused"),
                    );
                    FlowStatus::Draft
                }
            },
        };
        let timeout = match &file.timeout {
            Some(t) => self.duration(t, "timeout").unwrap_or(DEFAULT_RUN_TIMEOUT),
            None => DEFAULT_RUN_TIMEOUT,
        };
        let trigger = self.trigger(&file.trigger, default_max_body);
        let records = self.records(file.runs.as_ref(), default_records);
        let trigger_ref = trigger.ref_id.clone();

        let mut allowed: HashSet<String> = [trigger_ref.as_str(), "request", "run"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let steps = super::step::load_steps(self, file.steps, "steps", &mut allowed, &trigger_ref);
        let mut response_allowed = allowed;
        response_allowed.extend(self.refs.iter().cloned());
        // An async answer is rendered before any step runs.
        let (response_allowed, default_status) = match trigger.mode {
            Mode::Sync => (response_allowed, StatusCode::OK),
            Mode::Async => (
                [trigger_ref.as_str(), "request", "run"]
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                StatusCode::ACCEPTED,
            ),
        };
        let response = match &file.response {
            Some(r) => self.response(r, "response", &response_allowed, default_status),
            None => default_response(default_status),
        };
        let version = hex::encode(&Sha256::digest(self.source.as_bytes())[..6]);
        Some(Flow {
            name: file
                .name
                .map(Spanned::into_inner)
                .unwrap_or_else(|| id.clone()),
            id,
            status,
            timeout,
            version,
            path: self.path.to_path_buf(),
            trigger,
            response,
            steps,
            records,
        })
    }

    /// `[runs]`: which records to keep and how many, over the config's.
    fn records(
        &mut self,
        runs: Option<&super::spec::RunsFile>,
        default: crate::flow::RecordPolicy,
    ) -> crate::flow::RecordPolicy {
        let mut policy = default;
        let Some(runs) = runs else { return policy };
        if let Some(keep) = &runs.keep {
            match crate::flow::Keep::parse(keep.get_ref()) {
                Some(rule) => policy.keep = rule,
                None => self.problem(
                    keep.span().start,
                    format!("runs.keep `{}` must be all, failed or none", keep.get_ref()),
                ),
            }
        }
        if let Some(max) = &runs.max {
            match u64::try_from(*max.get_ref()) {
                Ok(0) => policy.max = None,
                Ok(n) => policy.max = Some(n),
                Err(_) => self.problem(
                    max.span().start,
                    "runs.max must be 0 (no cap) or more".to_owned(),
                ),
            }
        }
        policy
    }

    /// Compiles an inline text template; false when it has problems.
    fn text_template(
        &mut self,
        name: &str,
        source: &str,
        at: usize,
        allowed: &HashSet<String>,
    ) -> bool {
        if let Err(e) = self
            .env
            .add_template_owned(name.to_owned(), source.to_owned())
        {
            self.template_problem(at, &e);
            return false;
        }
        let names = TemplateValue::Text(name.to_owned()).referenced_names(self.env);
        self.check_names(&names, allowed, at)
    }

    fn check_names(
        &mut self,
        names: &HashSet<String>,
        allowed: &HashSet<String>,
        at: usize,
    ) -> bool {
        let mut unknown: Vec<&String> = names
            .iter()
            .filter(|n| !allowed.contains(*n) && !self.globals.contains(*n))
            .collect();
        unknown.sort();
        for name in &unknown {
            let mut known: Vec<&str> = allowed.iter().map(String::as_str).collect();
            known.sort_unstable();
            self.problem(
                at,
                format!(
                    "`{name}` is not defined here: no earlier step has ref `{name}` (defined: {})",
                    known.join(", ")
                ),
            );
        }
        unknown.is_empty()
    }

    /// Checks an expression (bare, or one `{{ ... }}`) and registers it as an
    /// expression template named after `pointer`; returns that name.
    pub(in crate::flow) fn expression(
        &mut self,
        value: &Spanned<String>,
        pointer: &str,
        allowed: &HashSet<String>,
    ) -> String {
        let raw = value.get_ref();
        let source = single_expression(raw).unwrap_or(raw.trim());
        let name = format!("{}#{pointer}", self.shown);
        // Compiled on its own first, so errors point into the author's text.
        if let Err(e) = self.env.compile_expression(source) {
            self.template_problem(value.span().start, &e);
            return name;
        }
        match self
            .env
            .add_template_owned(name.clone(), template::expression_template(source))
        {
            Ok(()) => {
                let names = TemplateValue::Expr(name.clone()).referenced_names(self.env);
                self.check_names(&names, allowed, value.span().start);
            }
            Err(e) => self.template_problem(value.span().start, &e),
        }
        name
    }

    pub(in crate::flow) fn template_value(
        &mut self,
        node: &Spanned<Node>,
        pointer: &str,
        allowed: &HashSet<String>,
    ) -> TemplateValue {
        let at = node.span().start;
        match node.get_ref() {
            Node::Str(text) if !has_template_syntax(text) => {
                TemplateValue::Literal(serde_json::Value::String(text.clone()))
            }
            Node::Str(text) => match single_expression(text) {
                Some(expr) => {
                    let spanned = Spanned::new(node.span(), expr.to_owned());
                    TemplateValue::Expr(self.expression(&spanned, pointer, allowed))
                }
                None => {
                    let name = format!("{}#{pointer}", self.shown);
                    self.text_template(&name, text, at, allowed);
                    TemplateValue::Text(name)
                }
            },
            Node::Int(n) => TemplateValue::Literal((*n).into()),
            Node::Float(f) => TemplateValue::Literal(serde_json::json!(f)),
            Node::Bool(b) => TemplateValue::Literal((*b).into()),
            Node::List(items) => TemplateValue::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.template_value(item, &format!("{pointer}[{i}]"), allowed))
                    .collect(),
            ),
            Node::Map(entries) => TemplateValue::Map(
                entries
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.template_value(v, &format!("{pointer}.{k}"), allowed),
                        )
                    })
                    .collect(),
            ),
        }
    }

    pub(in crate::flow) fn object_value(
        &mut self,
        node: &Option<Spanned<Node>>,
        key: &str,
        pointer: &str,
        allowed: &HashSet<String>,
    ) -> TemplateValue {
        match node {
            None => TemplateValue::Map(Vec::new()),
            Some(n) if matches!(n.get_ref(), Node::Map(_)) => {
                self.template_value(n, &format!("{pointer}.{key}"), allowed)
            }
            Some(n) => {
                self.problem(
                    n.span().start,
                    format!("`{key}` must be a table of templates"),
                );
                TemplateValue::Map(Vec::new())
            }
        }
    }
}
