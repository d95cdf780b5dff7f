//! Loading `[response]` (and `[response.on_error]`): status, body template, headers, content type.

use super::*;

impl FlowBuilder<'_> {
    /// `[response]`: status, headers and body. One check per key, each
    /// reporting at the key's line, in the order the table documents.
    pub(super) fn response(
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

    pub(super) fn status(
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
}

pub(super) fn default_response(status: StatusCode) -> ResponseSpec {
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
