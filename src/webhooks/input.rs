//! Subscriptions as written by their authors (the admin API's JSON, the
//! CLI's flags): parsed, checked, and turned into what is stored.

use serde::Deserialize;
use serde_json::Value;

use super::message::{EVENT_TYPES, RUN_STATUSES};
use super::signing::SigningSecret;
use crate::backend::webhooks::{Format, Subscription};

/// Longest subscription name.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest subscription URL.
pub const MAX_URL_BYTES: usize = 2048;
/// Most flows or statuses one subscription may list.
pub const MAX_FILTER_ITEMS: usize = 100;

/// What may be set when creating (all of it) or updating (any of it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// A name people recognise it by.
    pub name: Option<String>,
    /// Where deliveries go.
    pub url: Option<String>,
    /// `whsec_…` to use that secret, `true` to have one generated, `null` for none.
    #[serde(default, deserialize_with = "present")]
    pub secret: Option<Value>,
    /// Event types, or `["*"]`.
    pub events: Option<Vec<String>>,
    /// Only these flows' events.
    pub flows: Option<Vec<String>>,
    /// Only `run.ended` events with these statuses.
    pub statuses: Option<Vec<String>>,
    /// `json` or `xml`.
    pub format: Option<String>,
    /// Deliver events (default true).
    pub enabled: Option<bool>,
}

/// Keeps an explicit `null` apart from a missing key: `Some(Value::Null)`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// What URLs a subscription may use.
#[derive(Debug, Clone, Copy)]
pub struct UrlRules {
    /// Plain `http://` is accepted.
    pub allow_http: bool,
    /// Loopback and private IP literals are accepted.
    pub allow_private: bool,
}

impl SubscriptionInput {
    /// Parses the admin API's JSON body.
    pub fn from_json(value: Value) -> Result<Self, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// A new subscription `id` created at `now` (RFC 3339), with its secret
    /// as written when it has one.
    pub fn create(
        self,
        id: String,
        now: &str,
        rules: UrlRules,
    ) -> Result<(Subscription, Option<String>), String> {
        let secret = match self.secret.clone() {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(SigningSecret::generate().reveal()),
            Some(Value::String(text)) => Some(
                SigningSecret::parse(&text)
                    .map_err(|e| format!("secret: {e}"))?
                    .reveal(),
            ),
            Some(_) => {
                return Err("secret must be a whsec_ string, true (generate one) or null".into());
            }
        };
        let mut subscription = Subscription {
            id,
            name: String::new(),
            url: String::new(),
            secrets: secret
                .iter()
                .map(|s| crate::backend::webhooks::StoredSecret {
                    secret: s.clone(),
                    expires_ms: None,
                })
                .collect(),
            events: vec!["*".into()],
            flows: Vec::new(),
            statuses: Vec::new(),
            format: Format::Json,
            enabled: true,
            disabled_reason: None,
            created_at: now.to_owned(),
            updated_at: now.to_owned(),
        };
        if self.name.is_none() {
            return Err("name is required".into());
        }
        if self.url.is_none() {
            return Err("url is required".into());
        }
        self.apply(&mut subscription, rules)?;
        Ok((subscription, secret))
    }

    /// Applies the fields given to `subscription`.
    pub fn apply(&self, subscription: &mut Subscription, rules: UrlRules) -> Result<(), String> {
        if let Some(name) = &self.name {
            let too_long = name.chars().count() > MAX_NAME_CHARS;
            let name = name.trim();
            if name.is_empty() || too_long {
                return Err(format!("name must be 1 to {MAX_NAME_CHARS} characters"));
            }
            if name.chars().any(char::is_control) {
                return Err("name must not hold control characters".into());
            }
            subscription.name = name.to_owned();
        }
        if let Some(url) = &self.url {
            subscription.url = check_url(url.trim(), rules)?;
        }
        if let Some(events) = &self.events {
            subscription.events = check_events(events.clone())?;
        }
        if let Some(flows) = &self.flows {
            subscription.flows = check_list("flows", flows.clone(), |flow| {
                crate::flow::is_valid_flow_id(flow)
                    .then_some(())
                    .ok_or_else(|| format!("flows: `{flow}` is not a flow id"))
            })?;
        }
        if let Some(statuses) = &self.statuses {
            subscription.statuses = check_list("statuses", statuses.clone(), |status| {
                RUN_STATUSES.contains(&status).then_some(()).ok_or_else(|| {
                    format!(
                        "statuses: `{status}` is not one of {}",
                        RUN_STATUSES.join(", ")
                    )
                })
            })?;
        }
        if let Some(format) = &self.format {
            subscription.format = match format.as_str() {
                "json" => Format::Json,
                "xml" => Format::Xml,
                other => return Err(format!("format `{other}` is not json or xml")),
            };
        }
        if let Some(enabled) = self.enabled {
            subscription.enabled = enabled;
            if enabled {
                subscription.disabled_reason = None;
            }
        }
        Ok(())
    }
}

/// Checks a delivery URL: https (or http where allowed), a host, no
/// credentials, not an address the private-network guard refuses.
pub fn check_url(text: &str, rules: UrlRules) -> Result<String, String> {
    if text.len() > MAX_URL_BYTES {
        return Err(format!("url is longer than {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("url `{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if rules.allow_http => {}
        "http" => {
            return Err(
                "url must be https:// (plain http is only allowed with webhooks.allow_http)".into(),
            );
        }
        other => return Err(format!("url scheme `{other}` is not https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("url has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "url must not carry credentials; give the subscription a secret and verify signatures instead"
                .into(),
        );
    }
    if url.fragment().is_some() {
        return Err("url must not have a #fragment".into());
    }
    crate::outbound::check_literal(&url, rules.allow_private).map_err(|e| e.to_string())?;
    Ok(url.to_string())
}

fn check_events(events: Vec<String>) -> Result<Vec<String>, String> {
    if events.len() > MAX_FILTER_ITEMS {
        return Err(format!("events may list at most {MAX_FILTER_ITEMS} items"));
    }
    if events.is_empty() {
        return Err("events must list at least one event type, or [\"*\"] for all".into());
    }
    let all = events.iter().any(|e| e == "*");
    let events = check_list("events", events, |event| {
        (event == "*" || EVENT_TYPES.contains(&event))
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "events: `{event}` is not an event type; use \"*\" or some of {}",
                    EVENT_TYPES.join(", ")
                )
            })
    })?;
    Ok(if all { vec!["*".into()] } else { events })
}

fn check_list(
    what: &str,
    mut items: Vec<String>,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, String> {
    if items.len() > MAX_FILTER_ITEMS {
        return Err(format!("{what} may list at most {MAX_FILTER_ITEMS} items"));
    }
    for item in &items {
        check(item)?;
    }
    items.sort();
    items.dedup();
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: UrlRules = UrlRules {
        allow_http: false,
        allow_private: false,
    };

    #[test]
    fn urls_must_be_public_https_without_credentials() {
        assert_eq!(
            check_url("https://hooks.example.com/in?x=1", RULES).unwrap(),
            "https://hooks.example.com/in?x=1"
        );
        for (url, problem) in [
            ("http://hooks.example.com/", "must be https"),
            ("ftp://hooks.example.com/", "not https"),
            ("https://user:pw@hooks.example.com/", "credentials"),
            ("https://127.0.0.1/", "private"),
            ("https://[::1]/", "private"),
            ("https://169.254.169.254/latest", "private"),
            ("not a url", "not a URL"),
        ] {
            let err = check_url(url, RULES).unwrap_err();
            assert!(err.contains(problem), "{url}: {err}");
        }
        let dev = UrlRules {
            allow_http: true,
            allow_private: true,
        };
        assert!(check_url("http://127.0.0.1:9/", dev).is_ok());
    }

    #[test]
    fn creation_fills_defaults_and_checks_every_field() {
        let input = |v: Value| SubscriptionInput::from_json(v).unwrap();
        let (sub, secret) = input(serde_json::json!({
            "name": " ops ", "url": "https://example.com/h", "secret": true
        }))
        .create("wh_1".into(), "2026-01-01T00:00:00Z", RULES)
        .unwrap();
        assert_eq!(sub.name, "ops");
        assert_eq!(sub.events, ["*"]);
        assert!(sub.enabled);
        assert!(secret.unwrap().starts_with("whsec_"));
        let (unsigned, none) =
            input(serde_json::json!({"name": "a", "url": "https://example.com"}))
                .create("wh_2".into(), "t", RULES)
                .unwrap();
        assert!(none.is_none() && unsigned.secrets.is_empty());
        for (body, problem) in [
            (
                serde_json::json!({"url": "https://e.com"}),
                "name is required",
            ),
            (
                serde_json::json!({"name": "a", "url": "https://e.com", "events": ["run.done"]}),
                "not an event type",
            ),
            (
                serde_json::json!({"name": "a", "url": "https://e.com", "statuses": ["ok"]}),
                "statuses",
            ),
            (
                serde_json::json!({"name": "a", "url": "https://e.com", "format": "yaml"}),
                "json or xml",
            ),
            (
                serde_json::json!({"name": "a", "url": "https://e.com", "secret": "hunter2"}),
                "whsec_",
            ),
            (
                serde_json::json!({"name": "a", "url": "https://e.com", "flows": ["../x"]}),
                "not a flow id",
            ),
        ] {
            let err = input(body.clone())
                .create("wh".into(), "t", RULES)
                .unwrap_err();
            assert!(err.contains(problem), "{body}: {err}");
        }
        let err = SubscriptionInput::from_json(serde_json::json!({"nme": "a"})).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
