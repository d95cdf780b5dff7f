//! Loading and validating `flows/*.toml` and `templates/`.
//!
//! Everything is checked up front and every problem is reported as
//! `path:line: message`: unknown keys, bad ids, duplicate refs, templates that
//! do not compile, statuses outside 100..=599, missing template files, and
//! template references to refs that no earlier step defines. A flow with any
//! problem is left out of the catalog; the others load.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, Method, StatusCode};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::template::json;

use super::spec::{FlowFile, Node, ResponseFile, SignatureFile, StepFile, TriggerFile};
use super::*;
use crate::secret::Secret;
use crate::template::{
    self, Env, RESERVED_NAMES, TemplateValue, describe, has_template_syntax, single_expression,
};

/// Default whole-run limit.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit of one `http` step attempt.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Values for signature `secret_env` names, consulted before the process
    /// environment (embedders and tests pass secrets here).
    pub secrets: HashMap<String, String>,
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
    for path in files {
        let shown = path.display().to_string();
        let source = match std::fs::read_to_string(&path) {
            Ok(source) => source,
            Err(e) => {
                problems.push(format!("{shown}: cannot read: {e}"));
                skipped.push(shown);
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
        let flow = builder.build(options.default_max_body_bytes);
        let (file_problems, file_warnings) = (builder.problems, builder.warnings);
        warnings.extend(file_warnings);
        match flow {
            Some(flow) if file_problems.is_empty() => {
                flows.insert(flow.id.clone(), Arc::new(flow));
            }
            _ => {
                problems.extend(file_problems);
                skipped.push(flow_id_of(&path).unwrap_or(shown));
            }
        }
    }
    LoadReport {
        catalog: Catalog {
            env: Arc::new(env),
            flows,
        },
        problems,
        warnings,
        skipped,
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

fn is_valid_flow_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct FlowBuilder<'a> {
    path: &'a Path,
    shown: String,
    source: &'a str,
    env: &'a mut Env,
    globals: &'a HashSet<String>,
    secrets: &'a HashMap<String, String>,
    problems: Vec<String>,
    warnings: Vec<String>,
    refs: HashSet<String>,
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

    fn problem(&mut self, offset: usize, message: impl std::fmt::Display) {
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

    fn duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
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

    fn build(&mut self, default_max_body: usize) -> Option<Flow> {
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
        let trigger_ref = trigger.ref_id.clone();

        let mut allowed: HashSet<String> = [trigger_ref.as_str(), "request", "run"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let steps = self.steps(&file.steps, "steps", &mut allowed, &trigger_ref);
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
        })
    }

    fn trigger(&mut self, spanned: &Spanned<TriggerFile>, default_max_body: usize) -> Trigger {
        let file = spanned.get_ref();
        let ref_id = file.ref_id.get_ref().clone();
        if !is_identifier(&ref_id) || RESERVED_NAMES.contains(&ref_id.as_str()) {
            self.problem(
                file.ref_id.span().start,
                format!(
                    "trigger ref `{ref_id}` must be an identifier (letters, digits, _) and not one of {}",
                    RESERVED_NAMES.join(", ")
                ),
            );
        }
        let mut methods = Vec::new();
        for m in file.methods.iter().flatten() {
            match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) if m.get_ref().chars().all(|c| c.is_ascii_alphabetic()) => {
                    methods.push(method)
                }
                _ => self.problem(
                    m.span().start,
                    format!("`{}` is not an HTTP method", m.get_ref()),
                ),
            }
        }
        if methods.is_empty() {
            if file.methods.is_some() {
                self.problem(
                    spanned.span().start,
                    "methods must list at least one method",
                );
            }
            methods.push(Method::POST);
        }
        let mode = match file
            .mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span().start))
        {
            None | Some(("sync", _)) => Mode::Sync,
            Some(("async", _)) => Mode::Async,
            Some((other, at)) => {
                self.problem(at, format!("mode `{other}` must be sync or async"));
                Mode::Sync
            }
        };
        let (mut bearer, mut query_token, mut wants_signature) = (false, false, false);
        match &file.auth {
            None => bearer = true,
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.problem(list.span().start, "auth must list at least one method");
                }
                for method in list.get_ref() {
                    match method.get_ref().as_str() {
                        "bearer" => bearer = true,
                        "query_token" => query_token = true,
                        "signature" => wants_signature = true,
                        other => self.problem(
                            method.span().start,
                            format!(
                                "auth method `{other}` must be bearer, signature or query_token"
                            ),
                        ),
                    }
                }
            }
        }
        let signature = match (&file.signature, wants_signature) {
            (Some(sig), true) => self.signature(sig),
            (None, true) => {
                self.problem(
                    spanned.span().start,
                    "auth lists \"signature\" but there is no [trigger.signature] table",
                );
                None
            }
            (Some(sig), false) => {
                self.problem(
                    sig.span().start,
                    "[trigger.signature] is set but auth does not list \"signature\"",
                );
                None
            }
            (None, false) => None,
        };
        let max_body_bytes = match &file.max_body_bytes {
            Some(n) if *n.get_ref() > 0 => *n.get_ref() as usize,
            Some(n) => {
                self.problem(n.span().start, "max_body_bytes must be above 0");
                default_max_body
            }
            None => default_max_body,
        };
        let mut cors_origins = Vec::new();
        for origin in file.cors_origins.iter().flatten() {
            let o = origin.get_ref();
            if o == "*" || o.starts_with("http://") || o.starts_with("https://") {
                cors_origins.push(o.trim_end_matches('/').to_owned());
            } else {
                self.problem(
                    origin.span().start,
                    format!("cors origin `{o}` must be \"*\" or start with http:// or https://"),
                );
            }
        }
        Trigger {
            ref_id,
            methods,
            mode,
            bearer,
            query_token,
            signature,
            max_body_bytes,
            accept_any: file.accept_any.unwrap_or(false),
            cors_origins,
            redact_headers: file
                .redact_headers
                .iter()
                .flatten()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            redact_query: file.redact_query.clone().unwrap_or_default(),
        }
    }

    fn signature(&mut self, spanned: &Spanned<SignatureFile>) -> Option<SignatureConfig> {
        let file = spanned.get_ref();
        let Some(scheme) = SignatureScheme::parse(file.scheme.get_ref()) else {
            self.problem(
                file.scheme.span().start,
                format!(
                    "signature scheme `{}` must be one of standard-webhooks, stripe, github, shopify, slack, hmac-sha256",
                    file.scheme.get_ref()
                ),
            );
            return None;
        };
        let tolerance = match &file.tolerance {
            Some(t) => self.duration(t, "tolerance")?,
            None => DEFAULT_SIGNATURE_TOLERANCE,
        };
        let generic = scheme == SignatureScheme::HmacSha256;
        for (key, present) in [
            ("header", file.header.as_ref().map(|h| h.span().start)),
            ("encoding", file.encoding.as_ref().map(|h| h.span().start)),
        ] {
            if let (Some(at), false) = (present, generic) {
                self.problem(
                    at,
                    format!("`{key}` only applies to the hmac-sha256 scheme"),
                );
            }
        }
        let header_name = file
            .header
            .as_ref()
            .map(|h| h.get_ref().to_ascii_lowercase())
            .unwrap_or_else(|| DEFAULT_HMAC_HEADER.into());
        let header = match HeaderName::from_bytes(header_name.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.problem(
                    spanned.span().start,
                    format!("`{header_name}` is not a header name"),
                );
                return None;
            }
        };
        let encoding = match file
            .encoding
            .as_ref()
            .map(|e| (e.get_ref().as_str(), e.span().start))
        {
            None | Some(("hex", _)) => DigestEncoding::Hex,
            Some(("base64", _)) => DigestEncoding::Base64,
            Some((other, at)) => {
                self.problem(at, format!("encoding `{other}` must be hex or base64"));
                return None;
            }
        };
        let secret_env = file.secret_env.get_ref().clone();
        let value = self
            .secrets
            .get(&secret_env)
            .cloned()
            .or_else(|| std::env::var(&secret_env).ok());
        let secret = match value {
            Some(value) if !value.is_empty() => match signing_secret(scheme, &value) {
                Ok(bytes) => Some(Secret::new(bytes)),
                Err(message) => {
                    self.problem(
                        file.secret_env.span().start,
                        format!("{secret_env}: {message}"),
                    );
                    None
                }
            },
            _ => {
                let line = self.line(file.secret_env.span().start);
                self.warnings.push(format!(
                    "{}:{line}: environment variable {secret_env} is not set: signature checks will fail",
                    self.shown
                ));
                None
            }
        };
        Some(SignatureConfig {
            scheme,
            secret_env,
            secret,
            tolerance,
            header,
            encoding,
            prefix: file.prefix.clone().unwrap_or_default(),
        })
    }

    fn response(
        &mut self,
        file: &ResponseFile,
        pointer: &str,
        allowed: &HashSet<String>,
        default_status: StatusCode,
    ) -> ResponseSpec {
        let status = match &file.status {
            None => StatusSource::Fixed(default_status),
            Some(node) => self.status(node, &format!("{pointer}.status"), allowed),
        };
        let (body, default_content_type) = match (&file.body, &file.body_inline) {
            (Some(_), Some(inline)) => {
                self.problem(inline.span().start, "set body or body_inline, not both");
                (None, "application/json")
            }
            (Some(name), None) => {
                let exists = self.env.get_template(name.get_ref()).is_ok();
                if exists {
                    let names =
                        TemplateValue::Text(name.get_ref().clone()).referenced_names(self.env);
                    self.check_names(&names, allowed, name.span().start);
                } else {
                    self.problem(
                        name.span().start,
                        format!(
                            "template `{}` does not exist under templates/ (or failed to compile)",
                            name.get_ref()
                        ),
                    );
                }
                (
                    Some(name.get_ref().clone()),
                    content_type_for(name.get_ref()),
                )
            }
            (None, Some(inline)) => {
                let name = format!("{}#{pointer}.body_inline", self.shown);
                let content_type = if json::looks_like_json(inline.get_ref()) {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                let declared = file
                    .headers
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case("content-type"))
                    .map(|(_, value)| value.get_ref().as_str());
                let at = inline.span().start;
                let source = match json::is_json_inline(inline.get_ref(), declared) {
                    true => json::rewrite(inline.get_ref()).map_err(|e| {
                        self.template_line_problem(at, e.line, e.message);
                    }),
                    false => Ok(inline.get_ref().clone()),
                };
                let ok = source.is_ok_and(|source| self.text_template(&name, &source, at, allowed));
                (ok.then_some(name), content_type)
            }
            (None, None) => (None, "application/json"),
        };
        let mut headers = Vec::new();
        for (key, value) in &file.headers {
            let Ok(header) = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes()) else {
                self.problem(value.span().start, format!("`{key}` is not a header name"));
                continue;
            };
            let name = format!("{}#{pointer}.headers.{key}", self.shown);
            if self.text_template(&name, value.get_ref(), value.span().start, allowed) {
                headers.push((header, name));
            }
        }
        let on_error = file.on_error.as_ref().map(|e| {
            let mut with_error = allowed.clone();
            with_error.insert("error".into());
            Box::new(self.response(
                e,
                &format!("{pointer}.on_error"),
                &with_error,
                StatusCode::INTERNAL_SERVER_ERROR,
            ))
        });
        ResponseSpec {
            status,
            body,
            headers,
            default_content_type,
            on_error,
        }
    }

    fn status(
        &mut self,
        node: &Spanned<Node>,
        pointer: &str,
        allowed: &HashSet<String>,
    ) -> StatusSource {
        let at = node.span().start;
        let fixed = match node.get_ref() {
            Node::Int(n) => Some(*n),
            Node::Str(s) => s.trim().parse::<i64>().ok(),
            _ => {
                self.problem(at, "status must be an integer or a template");
                return StatusSource::Fixed(StatusCode::OK);
            }
        };
        match (fixed, node.get_ref()) {
            (Some(n), _) => match u16::try_from(n).ok().filter(|n| (100..=599).contains(n)) {
                Some(code) => {
                    StatusSource::Fixed(StatusCode::from_u16(code).expect("checked range"))
                }
                None => {
                    self.problem(at, format!("status {n} is outside 100..=599"));
                    StatusSource::Fixed(StatusCode::OK)
                }
            },
            (None, Node::Str(source)) => {
                let name = format!("{}#{pointer}", self.shown);
                self.text_template(&name, source, at, allowed);
                StatusSource::Template(name)
            }
            (None, _) => StatusSource::Fixed(StatusCode::OK),
        }
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
    fn expression(
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

    fn template_value(
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

    fn object_value(
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

    fn steps(
        &mut self,
        files: &[StepFile],
        pointer: &str,
        allowed: &mut HashSet<String>,
        trigger_ref: &str,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        for file in files {
            let ref_id = file.ref_id.get_ref().clone();
            let at = file.ref_id.span().start;
            if !is_identifier(&ref_id)
                || RESERVED_NAMES.contains(&ref_id.as_str())
                || ref_id == trigger_ref
            {
                self.problem(
                    at,
                    format!(
                        "step ref `{ref_id}` must be an identifier and not the trigger ref or one of {}",
                        RESERVED_NAMES.join(", ")
                    ),
                );
            } else if !self.refs.insert(ref_id.clone()) {
                self.problem(at, format!("duplicate step ref `{ref_id}`"));
            }
            let step_pointer = format!("{pointer}.{ref_id}");
            if let Some(step) = self.step(file, &step_pointer, allowed, trigger_ref) {
                steps.push(step);
            }
            allowed.insert(ref_id);
        }
        steps
    }

    fn step(
        &mut self,
        file: &StepFile,
        pointer: &str,
        allowed: &mut HashSet<String>,
        trigger_ref: &str,
    ) -> Option<Step> {
        let kind = file.kind.get_ref().as_str();
        let kind_at = file.kind.span().start;
        let (keys, required): (&[&str], &[&str]) = match kind {
            "transform" => (&["set"], &["set"]),
            "http" => (
                &["method", "url", "headers", "query", "body", "expect"],
                &["url"],
            ),
            "branch" => (&["when", "then", "else"], &["when"]),
            "for_each" => (&["items", "steps"], &["items", "steps"]),
            "delay" => (&["duration"], &["duration"]),
            "log" | "fail" => (&["message"], &["message"]),
            other => {
                self.problem(
                    kind_at,
                    format!("step kind `{other}` must be one of transform, http, branch, for_each, delay, log, fail"),
                );
                return None;
            }
        };
        let present = file.present_keys();
        for (key, at) in &present {
            if !keys.contains(key) {
                self.problem(*at, format!("`{key}` is not a key of a `{kind}` step"));
            }
        }
        for key in required {
            if !present.iter().any(|(k, _)| k == key) {
                self.problem(kind_at, format!("a `{kind}` step needs `{key}`"));
            }
        }
        let condition = file
            .condition
            .as_ref()
            .map(|c| self.expression(c, &format!("{pointer}.if"), allowed));
        let on_error = match file
            .on_error
            .as_ref()
            .map(|o| (o.get_ref().as_str(), o.span().start))
        {
            None | Some(("stop", _)) => OnError::Stop,
            Some(("continue", _)) => OnError::Continue,
            Some((other, at)) => {
                self.problem(at, format!("on_error `{other}` must be stop or continue"));
                OnError::Stop
            }
        };
        let retry = match &file.retry {
            None => Retry::default(),
            Some(r) => {
                let attempts = *r.get_ref().attempts.get_ref();
                if !(1..=100).contains(&attempts) {
                    self.problem(
                        r.get_ref().attempts.span().start,
                        "retry attempts must be within 1..=100",
                    );
                }
                let backoff = match &r.get_ref().backoff {
                    Some(b) => self
                        .duration(b, "backoff")
                        .unwrap_or(Retry::default().backoff),
                    None => Retry::default().backoff,
                };
                Retry {
                    attempts: attempts.clamp(1, 100) as u32,
                    backoff,
                }
            }
        };
        let timeout = file
            .timeout
            .as_ref()
            .and_then(|t| self.duration(t, "timeout"));
        let action = match kind {
            "transform" => Action::Transform {
                set: self.object_value(&file.set, "set", pointer, allowed),
            },
            "http" => Action::Http(Box::new(self.http(file, pointer, allowed, timeout))),
            "branch" => {
                let when = file
                    .when
                    .as_ref()
                    .map(|w| self.expression(w, &format!("{pointer}.when"), allowed))
                    .unwrap_or_default();
                let before: HashSet<String> = self.refs.clone();
                let then = self.steps(
                    file.then.as_deref().unwrap_or_default(),
                    &format!("{pointer}.then"),
                    &mut allowed.clone(),
                    trigger_ref,
                );
                let otherwise = self.steps(
                    file.otherwise.as_deref().unwrap_or_default(),
                    &format!("{pointer}.else"),
                    &mut allowed.clone(),
                    trigger_ref,
                );
                // Refs from either branch may have run; later steps may use them.
                allowed.extend(self.refs.difference(&before).cloned().collect::<Vec<_>>());
                Action::Branch {
                    when,
                    then,
                    otherwise,
                }
            }
            "for_each" => {
                let items = file
                    .items
                    .as_ref()
                    .map(|i| self.expression(i, &format!("{pointer}.items"), allowed))
                    .unwrap_or_default();
                let mut inner = allowed.clone();
                inner.insert("item".into());
                inner.insert("loop".into());
                let steps = self.steps(
                    file.steps.as_deref().unwrap_or_default(),
                    &format!("{pointer}.steps"),
                    &mut inner,
                    trigger_ref,
                );
                Action::ForEach { items, steps }
            }
            "delay" => Action::Delay {
                duration: file
                    .duration
                    .as_ref()
                    .and_then(|d| self.duration(d, "duration"))
                    .unwrap_or_default(),
            },
            "log" | "fail" => {
                let message = match &file.message {
                    Some(m) => self.template_value(m, &format!("{pointer}.message"), allowed),
                    None => TemplateValue::Literal(serde_json::Value::Null),
                };
                if kind == "log" {
                    Action::Log { message }
                } else {
                    Action::Fail { message }
                }
            }
            _ => unreachable!("kinds are matched above"),
        };
        Some(Step {
            ref_id: file.ref_id.get_ref().clone(),
            condition,
            on_error,
            retry,
            timeout,
            action,
        })
    }

    fn http(
        &mut self,
        file: &StepFile,
        pointer: &str,
        allowed: &HashSet<String>,
        timeout: Option<Duration>,
    ) -> HttpAction {
        let method = match &file.method {
            None => Method::POST,
            Some(m) => match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) => method,
                Err(_) => {
                    self.problem(
                        m.span().start,
                        format!("`{}` is not an HTTP method", m.get_ref()),
                    );
                    Method::POST
                }
            },
        };
        let url = match &file.url {
            Some(u) if matches!(u.get_ref(), Node::Str(_)) => {
                self.template_value(u, &format!("{pointer}.url"), allowed)
            }
            Some(u) => {
                self.problem(u.span().start, "url must be a string");
                TemplateValue::Literal(serde_json::Value::Null)
            }
            None => TemplateValue::Literal(serde_json::Value::Null),
        };
        let headers = self.object_value(&file.headers, "headers", pointer, allowed);
        let query = self.object_value(&file.query, "query", pointer, allowed);
        let body = file
            .body
            .as_ref()
            .map(|b| self.template_value(b, &format!("{pointer}.body"), allowed));
        let expect = match &file.expect {
            None => vec![StatusMatch::Class(2)],
            Some(node) => self.expect(node),
        };
        HttpAction {
            method,
            url,
            headers,
            query,
            body,
            expect,
            timeout: timeout.unwrap_or(DEFAULT_HTTP_TIMEOUT),
        }
    }

    fn expect(&mut self, node: &Spanned<Node>) -> Vec<StatusMatch> {
        let items: Vec<&Spanned<Node>> = match node.get_ref() {
            Node::List(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut matches = Vec::new();
        for item in items {
            let parsed = match item.get_ref() {
                Node::Int(n) if (100..=599).contains(n) => Some(StatusMatch::Exact(*n as u16)),
                Node::Str(s) => {
                    let s = s.trim().to_ascii_lowercase();
                    match s.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()) {
                        Some(c) if (1..=5).contains(&c) => Some(StatusMatch::Class(c)),
                        _ => None,
                    }
                }
                _ => None,
            };
            match parsed {
                Some(m) => matches.push(m),
                None => self.problem(
                    item.span().start,
                    "expect entries must be statuses (200) or classes (\"2xx\")",
                ),
            }
        }
        matches
    }
}

fn default_response(status: StatusCode) -> ResponseSpec {
    ResponseSpec {
        status: StatusSource::Fixed(status),
        body: None,
        headers: Vec::new(),
        default_content_type: "application/json",
        on_error: None,
    }
}

/// Content type from a template's name: `x.json.j2` is JSON.
fn content_type_for(name: &str) -> &'static str {
    let base = [".j2", ".jinja2", ".jinja"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    match base.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("html" | "htm") => "text/html; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

/// The HMAC key for a scheme: Standard Webhooks secrets are `whsec_<base64>`.
fn signing_secret(scheme: SignatureScheme, value: &str) -> Result<Vec<u8>, String> {
    if scheme != SignatureScheme::StandardWebhooks {
        return Ok(value.as_bytes().to_vec());
    }
    let encoded = value.strip_prefix("whsec_").unwrap_or(value);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("a standard-webhooks secret must be whsec_<base64>: {e}"))
}
