//! Loading `[[steps]]`: each step's common keys and its kind's own.

use super::*;

impl FlowBuilder<'_> {
    pub(super) fn steps(
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

    pub(super) fn step(
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

    pub(super) fn http(
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

    pub(super) fn expect(&mut self, node: &Spanned<Node>) -> Vec<StatusMatch> {
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
