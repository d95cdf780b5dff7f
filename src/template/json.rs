//! JSON answers that stay JSON whatever the data.
//!
//! A template whose answer is JSON is rewritten once, when it loads, so that
//! every `{{ expression }}` writes JSON for the place it stands in the
//! template's literal text:
//!
//! - inside a JSON string (`"id-{{ x }}"`), the value as escaped string
//!   content, without quotes (none and undefined write nothing);
//! - anywhere else (`{"n": {{ x }}}`), the value as JSON: strings quoted,
//!   numbers, `true`/`false`, `null` for none or undefined, lists and objects.
//!
//! So no value can close a string or add a key. An expression already
//! turned into JSON by the author (`| tojson`, or anything marked `| safe`)
//! is written as is outside strings. `<`, `>`, `&`, `'`, U+2028 and U+2029
//! are written as `\u` escapes, so an answer is also safe inside HTML.
//!
//! The place of each placeholder is followed through the literal text;
//! every branch of an `{% if %}` and every loop body must end in the JSON
//! string state it started in, or the template is reported at that line.

use minijinja::Value;

/// Filter that writes a value as JSON string content.
pub const IN_STRING_FILTER: &str = "flowgate_json_in_string";
/// Filter that writes a value as a JSON value.
pub const VALUE_FILTER: &str = "flowgate_json_value";

/// Why a JSON template cannot be followed, at a line of its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct JsonTemplateError {
    /// 1-based line in the template source.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Whether a template file name says its answer is JSON: `x.json`, `x.json.j2`.
pub fn is_json_name(name: &str) -> bool {
    let base = [".j2", ".jinja2", ".jinja"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    base.ends_with(".json")
}

/// Whether template text starts as JSON does, with `{` or `[` (and not
/// with a template tag such as `{{`).
pub fn looks_like_json(source: &str) -> bool {
    let trimmed = source.trim_start();
    trimmed.starts_with('[')
        || (trimmed.starts_with('{') && !trimmed[1..].starts_with(['{', '%', '#']))
}

/// Whether an inline body is JSON: its content type says so, or it
/// [`looks_like_json`].
pub fn is_json_inline(source: &str, content_type: Option<&str>) -> bool {
    looks_like_json(source)
        || content_type.is_some_and(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
}

/// Where the scan stands in the template's literal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    in_string: bool,
    /// Right after a backslash inside a string.
    escaped: bool,
}

impl Place {
    fn read(&mut self, text: &str) {
        for c in text.chars() {
            match (self.in_string, self.escaped, c) {
                (true, true, _) => self.escaped = false,
                (true, false, '\\') => self.escaped = true,
                (true, false, '"') => self.in_string = false,
                (false, _, '"') => self.in_string = true,
                _ => {}
            }
        }
    }
}

/// Tags that open a block whose body must end where it started.
const OPENERS: &[&str] = &[
    "if",
    "for",
    "macro",
    "call",
    "filter",
    "with",
    "autoescape",
    "block",
];

/// Rewrites `source` so each `{{ … }}` applies the filter for its place.
///
/// One scanner over the template text, its states in one place: splitting
/// it would scatter the state the placement decisions share.
pub fn rewrite(source: &str) -> Result<String, JsonTemplateError> {
    let mut out = String::with_capacity(source.len() + 64);
    let mut place = Place {
        in_string: false,
        escaped: false,
    };
    // Open blocks: their tag name, the place they started at, their line.
    let mut blocks: Vec<(&str, Place, usize)> = Vec::new();
    let mut rest = source;
    // The 1-based line where `rest` starts in `source`.
    let line_of = |rest: &str| {
        let before = &source.as_bytes()[..source.len() - rest.len()];
        memchr::memchr_iter(b'\n', before).count() + 1
    };
    while let Some(start) = next_tag(rest) {
        let (text, tag) = rest.split_at(start);
        place.read(text);
        out.push_str(text);
        let line = line_of(tag);
        let fail = |message: String| JsonTemplateError { line, message };
        match &tag[..2] {
            "{#" => {
                let end = tag.find("#}").map_or(tag.len(), |e| e + 2);
                out.push_str(&tag[..end]);
                rest = &tag[end..];
            }
            "{{" => {
                let end = tag_end(tag, "}}").ok_or_else(|| fail("`{{` is never closed".into()))?;
                let inner = &tag[2..end];
                let (open_ws, inner) = split_marker(inner, true);
                let (inner, close_ws) = split_marker(inner, false);
                if place.in_string && place.escaped {
                    return Err(fail(
                        "a placeholder right after a backslash in a JSON string".into(),
                    ));
                }
                let filter = match place.in_string {
                    true => IN_STRING_FILTER,
                    false => VALUE_FILTER,
                };
                out.push_str(&format!(
                    "{{{{{open_ws} ({}) | {filter} {close_ws}}}}}",
                    inner.trim()
                ));
                rest = &tag[end + 2..];
            }
            _ => {
                let end = tag_end(tag, "%}").ok_or_else(|| fail("`{%` is never closed".into()))?;
                let (_, inner) = split_marker(&tag[2..end], true);
                let (inner, _) = split_marker(inner, false);
                let word = inner.split_whitespace().next().unwrap_or("");
                out.push_str(&tag[..end + 2]);
                rest = &tag[end + 2..];
                if word == "raw" {
                    let close = find_endraw(rest)
                        .ok_or_else(|| fail("`{% raw %}` is never closed".into()))?;
                    place.read(&rest[..close]);
                    out.push_str(&rest[..close]);
                    rest = &rest[close..];
                    continue;
                }
                let block_set = word == "set" && !inner.contains('=');
                if OPENERS.contains(&word) || block_set {
                    blocks.push((word, place, line));
                } else if matches!(word, "elif" | "else") {
                    let Some((opener, started, _)) = blocks.last() else {
                        continue; // minijinja reports the stray tag itself
                    };
                    if *started != place {
                        return Err(fail(format!(
                            "the branch before this `{{% {word} %}}` of the `{{% {opener} %}}` ends {} a JSON string it started {}",
                            inside_or_outside(place),
                            inside_or_outside(*started)
                        )));
                    }
                } else if word.starts_with("end") {
                    let Some((opener, started, _)) = blocks.pop() else {
                        continue;
                    };
                    if started != place {
                        return Err(fail(format!(
                            "the `{{% {opener} %}}` block closed here ends {} a JSON string it started {}",
                            inside_or_outside(place),
                            inside_or_outside(started)
                        )));
                    }
                }
            }
        }
    }
    place.read(rest);
    out.push_str(rest);
    if place.in_string {
        return Err(JsonTemplateError {
            line: source.lines().count().max(1),
            message: "the template ends inside a JSON string".into(),
        });
    }
    Ok(out)
}

fn inside_or_outside(place: Place) -> &'static str {
    if place.in_string { "inside" } else { "outside" }
}

/// Byte offset of the next `{{`, `{%` or `{#`.
fn next_tag(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b'{' && matches!(bytes[i + 1], b'{' | b'%' | b'#'))
}

/// Offset of `close` ending the tag that starts `tag`, skipping string
/// literals of the expression.
fn tag_end(tag: &str, close: &str) -> Option<usize> {
    let bytes = tag.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 2;
    while i < bytes.len() {
        match (quote, bytes[i]) {
            (Some(_), b'\\') => i += 1,
            (Some(q), b) if b == q => quote = None,
            (None, b'"' | b'\'') => quote = Some(bytes[i]),
            (None, _) if tag[i..].starts_with(close) => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits a leading (`start`) or trailing whitespace-control marker off a tag's inside.
fn split_marker(inner: &str, start: bool) -> (&str, &str) {
    let marker = |c: char| c == '-' || c == '+';
    match start {
        true if inner.starts_with(marker) => (&inner[..1], &inner[1..]),
        true => ("", inner),
        false if inner.ends_with(marker) => (&inner[..inner.len() - 1], &inner[inner.len() - 1..]),
        false => (inner, ""),
    }
}

/// Offset of the `{% endraw %}` tag (any whitespace control) in `text`.
fn find_endraw(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find("{%") {
        let at = from + at;
        let inner = text[at + 2..].trim_start_matches(['-', '+']).trim_start();
        if inner.starts_with("endraw") {
            return Some(at);
        }
        from = at + 2;
    }
    None
}

/// The [`IN_STRING_FILTER`]: `value` as escaped JSON string content.
pub fn in_string(value: Value) -> Value {
    let text = if value.is_undefined() || value.is_none() {
        String::new()
    } else if let Some(s) = value.as_str() {
        s.to_owned()
    } else if value.kind() == minijinja::value::ValueKind::Bool {
        value.is_true().to_string()
    } else if matches!(
        value.kind(),
        minijinja::value::ValueKind::Map | minijinja::value::ValueKind::Seq
    ) {
        serde_json::to_string(&value).unwrap_or_default()
    } else {
        value.to_string()
    };
    let quoted = serde_json::to_string(&text).expect("strings always serialize");
    Value::from_safe_string(html_safe(&quoted[1..quoted.len() - 1]))
}

/// The [`VALUE_FILTER`]: `value` as a JSON value; text the author already
/// made JSON (marked safe) is written as is.
pub fn json_value(value: Value) -> Value {
    if value.is_safe() {
        return value;
    }
    let json = if value.is_undefined() || value.is_none() {
        "null".to_owned()
    } else {
        serde_json::to_string(&value).unwrap_or_else(|_| "null".to_owned())
    };
    Value::from_safe_string(html_safe(&json))
}

/// The `tojson` filter: minijinja's (`indent` = a number of spaces or
/// `true` for 2; `, ` and `: ` between items otherwise), with U+2028 and
/// U+2029 escaped too, as every other JSON flowgate writes, and written
/// within what is left of the render's work budget: a deep value indented
/// wide stops there instead of growing without bound.
pub fn tojson(
    state: &minijinja::State,
    value: &Value,
    indent: Option<Value>,
    args: minijinja::value::Kwargs,
) -> Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => args.get::<Option<Value>>("indent")?,
    };
    args.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(value) => match bool::try_from(value.clone()) {
            Ok(true) => Some(2),
            Ok(false) => None,
            Err(_) => Some(usize::try_from(value)?),
        },
    };
    let mut out = Capped::for_state(state);
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n.min(out.left)];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            serde::Serialize::serialize(
                value,
                &mut serde_json::Serializer::with_formatter(&mut out, formatter),
            )
        }
        None => serde::Serialize::serialize(
            value,
            &mut serde_json::Serializer::with_formatter(&mut out, Spaced),
        ),
    };
    let text = out.finish(state, written.map_err(|e| e.to_string()))?;
    Ok(Value::from_safe_string(html_safe(&text)))
}

/// The `pprint` filter: minijinja's (the value's debug form), written
/// within what is left of the render's work budget.
pub fn pprint(state: &minijinja::State, value: &Value) -> Result<String, minijinja::Error> {
    let mut out = Capped::for_state(state);
    let written = std::fmt::Write::write_fmt(&mut out, format_args!("{value:#?}"));
    out.finish(state, written.map_err(|e| e.to_string()))
}

/// Text written up to what the render's fuel can pay for (a unit per 64
/// bytes, as minijinja charges data), then refused.
struct Capped {
    text: Vec<u8>,
    left: usize,
    over: bool,
}

impl Capped {
    fn for_state(state: &minijinja::State) -> Self {
        let left = state.fuel_levels().map_or(usize::MAX, |(_, remaining)| {
            usize::try_from(remaining.saturating_mul(64)).unwrap_or(usize::MAX)
        });
        Self {
            text: Vec::new(),
            left,
            over: false,
        }
    }

    /// The text, paid for; an out-of-fuel error when it did not fit.
    fn finish(
        self,
        state: &minijinja::State,
        written: Result<(), String>,
    ) -> Result<String, minijinja::Error> {
        if self.over {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::OutOfFuel,
                "the value's text is larger than the work budget left",
            ));
        }
        written.map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))?;
        state.consume_fuel(self.text.len() as u64 / 64)?;
        Ok(String::from_utf8(self.text).unwrap_or_default())
    }

    fn take(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.left {
            self.over = true;
            return false;
        }
        self.left -= bytes.len();
        self.text.extend_from_slice(bytes);
        true
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.take(buf) {
            true => Ok(buf.len()),
            false => Err(std::io::Error::other("over the work budget")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        match self.take(s.as_bytes()) {
            true => Ok(()),
            false => Err(std::fmt::Error),
        }
    }
}

/// JSON with `, ` and `: ` between items, as minijinja's `tojson` writes it.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// JSON text with the characters that matter to HTML and JavaScript escaped;
/// in serialized JSON they only ever occur inside strings.
fn html_safe(json: &str) -> String {
    if !json.contains(['<', '>', '&', '\'', '\u{2028}', '\u{2029}']) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\'' => out.push_str("\\u0027"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_get_the_filter_of_their_place() {
        let seed = r#"{"valid": {% if res1.value == "myResult" %} "{{ res1.value }}" {% else %} false {% endif %}}"#;
        assert_eq!(
            rewrite(seed).unwrap(),
            r#"{"valid": {% if res1.value == "myResult" %} "{{ (res1.value) | flowgate_json_in_string }}" {% else %} false {% endif %}}"#
        );
        assert_eq!(
            rewrite(r#"{"a": {{- x -}}, "b": "{{ "}}" ~ y }}", "c": "\"{# c #}"}"#).unwrap(),
            r#"{"a": {{- (x) | flowgate_json_value -}}, "b": "{{ ("}}" ~ y) | flowgate_json_in_string }}", "c": "\"{# c #}"}"#
        );
        assert_eq!(
            rewrite("[{% raw %}\"{{ x }}{% endraw %}\"]").unwrap(),
            "[{% raw %}\"{{ x }}{% endraw %}\"]"
        );
    }

    #[test]
    fn branches_that_leave_a_string_open_are_reported_at_their_line() {
        let open = "{\"a\":\n{% if x %}\n\"{{ x }}\n{% else %}\nnull\n{% endif %}}";
        let err = rewrite(open).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("inside a JSON string"), "{err}");
        let looped = "[{% for i in xs %}\"{{ i }}{% endfor %}]";
        assert_eq!(rewrite(looped).unwrap_err().line, 1);
        assert!(rewrite("{\"a\": \"{{ x }}}").is_err());
    }

    #[test]
    fn json_names_and_inline_bodies() {
        assert!(is_json_name("a.json.j2") && is_json_name("a.json"));
        assert!(!is_json_name("a.xml.j2") && !is_json_name("a.jsonl"));
        assert!(is_json_inline(" {\"a\": 1}", None));
        assert!(is_json_inline("{{ x }}", Some("application/vnd.api+json")));
        assert!(!is_json_inline("ok {{ x }}", Some("text/plain")));
        assert!(!is_json_inline("{{ x }}", None) && !is_json_inline("{% if x %}", None));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::template::{Scope, new_environment};

    /// Text built to break JSON: quotes, backslashes, control characters,
    /// line separators, markup and template syntax, among anything else.
    fn hostile_text() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("\n\r\t\u{0}\u{1f}".to_owned()),
            Just("\u{2028}\u{2029}".to_owned()),
            Just("</script><!--".to_owned()),
            Just("{{ 7*7 }}{% if %}".to_owned()),
            Just("\", \"role\": \"admin\", \"x\": \"".to_owned()),
            any::<String>(),
        ];
        proptest::collection::vec(pieces, 0..6).prop_map(|p| p.concat())
    }

    fn hostile_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            hostile_text().prop_map(Json::String),
            any::<i64>().prop_map(|n| json!(n)),
            any::<bool>().prop_map(Json::Bool),
            Just(Json::Null),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::btree_map(hostile_text(), inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    /// What a value reads as inside a string: text as is, anything else as JSON.
    fn as_content(value: &Json) -> String {
        match value {
            Json::String(s) => s.clone(),
            Json::Null => String::new(),
            other => other.to_string(),
        }
    }

    proptest! {
        #[test]
        fn json_templates_render_valid_json_of_the_same_shape(v in hostile_value(), w in hostile_value()) {
            let template = r#"{"in": "id-{{ d.v }}", "bare": {{ d.v }}, "nested": {"k": ["{{ d.w }}", {{ d.w }}, "{{ d.missing }}"]}, "{{ d.v }}x": {% if d.w %}"{{ d.w }}"{% else %}{{ d.v }}{% endif %}}"#;
            let mut env = new_environment();
            env.add_template_owned("t.json", rewrite(template).unwrap()).unwrap();
            let mut scope = Scope::default();
            scope.set_json("d", json!({"v": v, "w": w}));
            let text = env.get_template("t.json").unwrap().render(scope.context()).unwrap();
            let out: Json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"));
            let truthy = match &w {
                Json::Null | Json::Bool(false) => false,
                Json::String(s) => !s.is_empty(),
                Json::Array(a) => !a.is_empty(),
                Json::Object(o) => !o.is_empty(),
                Json::Number(n) => n.as_f64() != Some(0.0),
                Json::Bool(true) => true,
            };
            let last = match truthy {
                true => Json::String(as_content(&w)),
                false => v.clone(),
            };
            let mut expected = serde_json::Map::new();
            expected.insert("in".into(), Json::String(format!("id-{}", as_content(&v))));
            expected.insert("bare".into(), v.clone());
            expected.insert("nested".into(), json!({"k": [as_content(&w), w.clone(), ""]}));
            expected.insert(format!("{}x", as_content(&v)), last);
            prop_assert_eq!(out, Json::Object(expected));
        }
    }
}
