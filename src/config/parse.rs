//! Reading config values written as people write them (durations, socket
//! addresses, header names), and writing durations back the same way.
//! Each value is parsed once, at load, and a bad one names its key.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use serde::de::{Deserialize, Deserializer, Error};

/// `"30s"`, `"5m"`, `"7d"`, `"1h 30m"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| D::Error::custom(format!("`{text}` is not a duration like \"30s\": {e}")))
}

/// A list of durations.
pub fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            humantime::parse_duration(text).map_err(|e| {
                D::Error::custom(format!("`{text}` is not a duration like \"30s\": {e}"))
            })
        })
        .collect()
}

/// A [`duration`] above zero.
pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match duration(d)? {
        zero if zero.is_zero() => Err(D::Error::custom("must be above zero")),
        duration => Ok(duration),
    }
}

/// `"127.0.0.1:8080"`, `"[::]:8080"`.
pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| D::Error::custom(format!("`{text}` is not a host:port address")))
}

/// A list of header names, kept lower case.
pub fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| D::Error::custom(format!("`{name}` is not a header name")))
        })
        .collect()
}

/// A `keep` rule: `all`, `failed` or `none`.
pub fn keep<'de, D: Deserializer<'de>>(d: D) -> Result<crate::flow::Keep, D::Error> {
    let text = String::deserialize(d)?;
    crate::flow::Keep::parse(&text)
        .ok_or_else(|| D::Error::custom(format!("`{text}` must be all, failed or none")))
}

/// `duration` as a person writes it: `7 days`, `1 day 2h`, `90s`.
pub fn readable_duration(duration: std::time::Duration) -> String {
    // Whole days stay days: humantime would write 90 days as months.
    let secs = duration.as_secs();
    if duration.subsec_nanos() == 0 && secs >= 86_400 && secs.is_multiple_of(86_400) {
        let days = secs / 86_400;
        return format!("{days} day{}", if days == 1 { "" } else { "s" });
    }
    humantime::format_duration(duration)
        .to_string()
        .split(' ')
        .map(|part| {
            let unit = part.trim_start_matches(|c: char| c.is_ascii_digit());
            let number = &part[..part.len() - unit.len()];
            // Word units get a space; `h`, `m`, `s`, `ms` stay as they are.
            if unit.len() > 2 {
                format!("{number} {unit}")
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `url` as it may be shown: its password `[redacted]`, the values of
/// query parameters that may hold one (`password`, `secret`, `token` in
/// their name) too, and nothing after the scheme of a URL without a host
/// (a mistyped one could hold a password anywhere).
pub(super) fn shown_url(url: &str) -> String {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) if parsed.has_host() => parsed,
        Ok(parsed) => return format!("{}:[not shown]", parsed.scheme()),
        Err(_) => return "[unparsable url]".to_owned(),
    };
    let mut shown = format!("{}://", parsed.scheme());
    if !parsed.username().is_empty() || parsed.password().is_some() {
        shown.push_str(parsed.username());
        if parsed.password().is_some() {
            shown.push_str(":[redacted]");
        }
        shown.push('@');
    }
    shown.push_str(parsed.host_str().unwrap_or_default());
    if let Some(port) = parsed.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(parsed.path());
    if let Some(query) = parsed.query() {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if secret_name(key) => format!("{key}=[redacted]"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// Whether a query parameter's name says it holds a credential.
fn secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

#[cfg(test)]
mod shown_url_tests {
    use super::shown_url;

    #[test]
    fn no_password_is_shown_however_the_url_is_written() {
        for (url, shown) in [
            (
                "rediss://user:s3cret@cache.example:6380/0",
                "rediss://user:[redacted]@cache.example:6380/0",
            ),
            (
                "postgres://app:s3cret@db/flows?sslmode=require&password=s3cret",
                "postgres://app:[redacted]@db/flows?sslmode=require&password=[redacted]",
            ),
            ("postgres:/x:s3cret@h/fg", "postgres:[not shown]"),
            (
                "mysql://h/fg?Password=s3cret",
                "mysql://h/fg?Password=[redacted]",
            ),
            ("not a url s3cret", "[unparsable url]"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }
}
