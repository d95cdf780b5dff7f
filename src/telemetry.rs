//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`);
//! `FLOWGATE_LOG_FORMAT=json` switches to one JSON object per line.
//!
//! In the text format every event is one line whatever its fields hold:
//! request-derived text (a `log` step's message, a header) cannot start a
//! line of its own, because control characters and line separators inside
//! an event are written escaped (`\n`, `\r`, `\x1b`, `\u{2028}`), and
//! neither can it reorder what a terminal shows: bidirectional controls
//! (`\u{202e}` and the rest) are escaped too. JSON lines escape control
//! characters by their format.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if std::env::var("FLOWGATE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().with_writer(std::io::stderr).try_init()
    } else {
        // Colours only on a terminal; elsewhere an escape byte is escaped too.
        let ansi = std::io::stderr().is_terminal();
        builder
            .with_ansi(ansi)
            .with_writer(move || OneLine { keep_escape: ansi })
            .try_init()
    };
}

/// Stderr that writes each event (one `write` of a whole line) with its
/// control characters escaped.
struct OneLine {
    keep_escape: bool,
}

impl Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(&escape_controls(buf, self.keep_escape))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `line` with control characters and line separators escaped, but its
/// final newline; `ESC` kept when `keep_escape` (the formatter's colours).
fn escape_controls(line: &[u8], keep_escape: bool) -> Cow<'_, [u8]> {
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (line, false),
    };
    let text = String::from_utf8_lossy(body);
    match escape_text(&text, keep_escape) {
        Cow::Borrowed(_) if matches!(text, Cow::Borrowed(_)) => Cow::Borrowed(line),
        escaped => {
            let mut out = escaped.into_owned();
            if newline {
                out.push('\n');
            }
            Cow::Owned(out.into_bytes())
        }
    }
}

/// `text` as a terminal may show it: what sender data could use to move
/// the cursor, rewrite or forge lines, or reorder them — control
/// characters (tab aside), line separators, bidirectional controls —
/// written escaped (`\x1b`, `\n`, `\u{202e}`).
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    escape_text(text, false)
}

fn escape_text(text: &str, keep_escape: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t' && !(keep_escape && c == '\x1b'))
            || matches!(c, '\u{2028}' | '\u{2029}')
            || is_bidi_control(c)
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The Unicode bidirectional formatting characters, which make a terminal
/// show text in another order than it was written.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidirectional_controls_are_escaped() {
        let line = "INFO name=\u{202e}gpj.exe\u{2066}x\u{2069}\n";
        assert_eq!(
            std::str::from_utf8(&escape_controls(line.as_bytes(), true)).unwrap(),
            "INFO name=\\u{202e}gpj.exe\\u{2066}x\\u{2069}\n"
        );
    }

    #[test]
    fn an_event_stays_one_line() {
        let line = "INFO flow log message=ok\nERROR forged line\r\x1b[31m\u{2028}\u{85}\tend\n";
        let escaped = escape_controls(line.as_bytes(), false);
        assert_eq!(
            std::str::from_utf8(&escaped).unwrap(),
            "INFO flow log message=ok\\nERROR forged line\\r\\x1b[31m\\u{2028}\\x85\tend\n"
        );
        assert_eq!(
            escape_controls("\x1b[2mINFO\x1b[0m plain\n".as_bytes(), true),
            Cow::Borrowed("\x1b[2mINFO\x1b[0m plain\n".as_bytes())
        );
    }
}
