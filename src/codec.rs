//! JSON for everything flowgate stores: queue entries, run records, dead
//! letters and idempotency answers.
//!
//! Stored values wrap request bodies, and bodies may be nested up to
//! [`crate::trigger::body::MAX_BODY_DEPTH`] levels; wrapped in a run input, a
//! record or a step's output they go deeper than serde_json's own decoding
//! limit (128), so a value that encoded fine would no longer decode.
//! Decoding here is bounded by [`MAX_STORED_DEPTH`] instead: it measures the
//! text's nesting without recursion first, then decodes it without
//! serde_json's limit, which is safe because the depth is known to be
//! bounded. Encoding does not measure (it is on the request path): a body
//! the trigger accepted, inside any record or run input, stays well under
//! the bound, and anything deeper that were ever stored is refused on the
//! way out, where the queue dead-letters it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deepest nesting of objects and lists in a stored value: a body at
/// [`crate::trigger::body::MAX_BODY_DEPTH`] inside any realistic wrapping.
pub const MAX_STORED_DEPTH: usize = 256;

/// Why a value could not be stored or read back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    /// Nested deeper than [`MAX_STORED_DEPTH`].
    #[error("nested {0} levels deep; at most {MAX_STORED_DEPTH} can be stored")]
    TooDeep(usize),
    /// Not the JSON of the expected type.
    #[error("{0}")]
    Invalid(String),
}

/// `value` as JSON text.
pub fn encode(value: &impl Serialize) -> Result<String, CodecError> {
    serde_json::to_string(value).map_err(|e| CodecError::Invalid(e.to_string()))
}

/// Decodes what [`encode`] wrote; anything nested deeper than
/// [`MAX_STORED_DEPTH`] is refused before decoding starts.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, CodecError> {
    let depth = nesting_depth(text.as_bytes());
    if depth > MAX_STORED_DEPTH {
        return Err(CodecError::TooDeep(depth));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de).map_err(|e| CodecError::Invalid(e.to_string()))?;
    de.end().map_err(|e| CodecError::Invalid(e.to_string()))?;
    Ok(value)
}

/// The deepest nesting of `[` and `{` in JSON text, outside strings; a
/// single pass without recursion, whatever the text holds. String content,
/// most of a stored value, is skipped a word at a time.
pub fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                // To the closing quote: past every escaped character.
                i += 1;
                while let Some(at) = memchr::memchr2(b'"', b'\\', &text[i..]) {
                    i += at;
                    if text[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Largest stored size of one value (body, step input or output), in bytes
/// of JSON; [`bounded`] cuts what is larger.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// `value` when its JSON fits in [`MAX_VALUE_BYTES`]; otherwise long strings
/// are cut and objects and lists too large even then become a marker string.
pub fn bounded(value: Value) -> Value {
    if fits(&value) {
        return value;
    }
    match value {
        Value::String(mut s) => {
            let cut = floor_char_boundary(&s, MAX_VALUE_BYTES);
            let dropped = s.len() - cut;
            s.truncate(cut);
            s.push_str(&format!("…[truncated {dropped} bytes]"));
            Value::String(s)
        }
        Value::Object(map) => whole_or_marker(Value::Object(
            map.into_iter().map(|(k, v)| (k, bounded(v))).collect(),
        )),
        Value::Array(items) => {
            whole_or_marker(Value::Array(items.into_iter().map(bounded).collect()))
        }
        other => other,
    }
}

fn whole_or_marker(value: Value) -> Value {
    let size = json_len(&value);
    if size > MAX_VALUE_BYTES * 2 {
        Value::String(format!("…[truncated: {size} bytes of JSON]"))
    } else {
        value
    }
}

/// Whether `value`'s JSON fits in [`MAX_VALUE_BYTES`]. A rough upper bound
/// (every string byte escaped) settles typical payloads without writing any
/// JSON; only values near the limit are measured exactly.
pub(crate) fn fits(value: &Value) -> bool {
    json_len_bound(value) <= MAX_VALUE_BYTES || json_len(value) <= MAX_VALUE_BYTES
}

pub(crate) fn json_len_bound(value: &Value) -> usize {
    const ESCAPED: usize = 6; // `\u001f`
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => 2 + ESCAPED * s.len(),
        Value::Array(items) => 2 + items.iter().map(|v| json_len_bound(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| 3 + ESCAPED * k.len() + json_len_bound(v) + 1)
                .sum::<usize>()
        }
    }
}

/// Length of `value` as JSON, without building the text.
pub(crate) fn json_len(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// The largest char boundary of `text` at or before `at`.
pub(crate) fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(
            nesting_depth(br#"{"a": "[[[{", "b": [1, {"c": "\"]"}]}"#),
            3
        );
        assert_eq!(nesting_depth(b"42"), 0);
    }

    #[test]
    fn values_past_serde_json_s_own_limit_round_trip() {
        let text = nested(MAX_STORED_DEPTH);
        let value: Value = decode(&text).expect("decodes at the bound");
        assert_eq!(encode(&value).unwrap(), text);
        // Anything deeper is written, but refused on the way out.
        let mut deeper = value;
        for _ in 0..2 {
            deeper = Value::Array(vec![deeper]);
        }
        let written = encode(&deeper).unwrap();
        assert!(matches!(
            decode::<Value>(&written),
            Err(CodecError::TooDeep(d)) if d == MAX_STORED_DEPTH + 2
        ));
        assert!(matches!(
            decode::<Value>(&nested(MAX_STORED_DEPTH + 1)),
            Err(CodecError::TooDeep(_))
        ));
        assert!(matches!(
            decode::<Value>(&nested(100_000)),
            Err(CodecError::TooDeep(100_000))
        ));
        assert!(matches!(
            decode::<Value>("[1] x"),
            Err(CodecError::Invalid(_))
        ));
    }

    #[test]
    fn decoding_at_the_bound_fits_a_small_stack() {
        // Workers decode on runtime threads; half of tokio's default stack is plenty.
        let text = format!(
            "{}{}",
            r#"{"a":["#.repeat(MAX_STORED_DEPTH / 2),
            "]}".repeat(MAX_STORED_DEPTH / 2)
        );
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                let value: Value = decode(&text).unwrap();
                encode(&value).unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
