//! The admin API's request bodies, typed with the JSON Schema the document
//! publishes for them and read by checks that refuse exactly what that
//! schema refuses, so a client generated from the document is never
//! surprised.
//!
//! Durations in bodies are a whole number and one unit, `90d`, `24h`, `30m`
//! or `45s`, up to the route's bound; the schema's pattern spells the bound
//! out (see [`DurationRule::pattern`]).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

use crate::error::ApiError;

/// What a duration field accepts.
pub(super) struct DurationRule {
    /// The field's name, for errors.
    pub key: &'static str,
    /// The longest duration accepted.
    pub max: Duration,
    /// `0s` (and `0d`, …) is accepted.
    pub allow_zero: bool,
    /// A value to show in errors.
    pub example: &'static str,
}

/// Units a body's duration may use, longest first, with their seconds.
const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];

/// `grace` of `POST /flows/{id}/tokens/rotate`.
pub(super) const FLOW_GRACE: DurationRule = DurationRule {
    key: "grace",
    max: crate::control::MAX_GRACE,
    allow_zero: false,
    example: "24h",
};

/// `ttl` of `POST /flows/{id}/tokens`: at most ten years.
pub(super) const TOKEN_TTL: DurationRule = DurationRule {
    key: "ttl",
    max: crate::token::MAX_TTL,
    allow_zero: false,
    example: "90d",
};

/// `grace` of `POST /webhooks/{id}/rotate-secret`.
pub(super) const SECRET_GRACE: DurationRule = DurationRule {
    key: "grace",
    max: crate::webhooks::MAX_ROTATION_GRACE,
    allow_zero: true,
    example: "24h",
};

impl DurationRule {
    /// The duration `text` names, if this rule accepts it.
    pub fn parse(&self, text: &str) -> Option<Duration> {
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (number, unit) = text.split_at(split);
        if number.is_empty() || (number.len() > 1 && number.starts_with('0')) {
            return None;
        }
        let seconds = UNITS.iter().find(|(u, _)| *u == unit)?.1;
        let n: u64 = number.parse().ok()?;
        let total = Duration::from_secs(n.checked_mul(seconds)?);
        (total <= self.max && (self.allow_zero || n > 0)).then_some(total)
    }

    /// The field's value in `body`: absent or `null` is `None`.
    pub fn read(&self, body: &Value) -> Result<Option<Duration>, ApiError> {
        match body.get(self.key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => self.parse(text).map(Some).ok_or_else(|| self.refused()),
            Some(_) => Err(self.refused()),
        }
    }

    fn refused(&self) -> ApiError {
        ApiError::bad_request(format!(
            "{} must be a whole number and a unit (d, h, m or s) like \"{}\", {} to {}",
            self.key,
            self.example,
            if self.allow_zero { "0s" } else { "1s" },
            crate::config::readable_duration(self.max),
        ))
    }

    /// An ECMA-262 pattern matching exactly the texts [`Self::parse`]
    /// accepts: per unit, the whole numbers from 0 (or 1) to the bound in
    /// that unit, without leading zeros.
    pub fn pattern(&self) -> String {
        let from = u64::from(!self.allow_zero);
        let units: Vec<String> = UNITS
            .iter()
            .filter_map(|(unit, seconds)| {
                let most = self.max.as_secs() / seconds;
                (most >= from).then(|| format!("(?:{}){unit}", numbers_up_to(most, from)))
            })
            .collect();
        format!("^(?:{})$", units.join("|"))
    }

    /// The field's schema: a string of [`Self::pattern`], or null.
    fn schema(&self, description: &str) -> Schema {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .pattern(Some(self.pattern()))
            .description(Some(format!(
                "{description}: a whole number and a unit (d, h, m, s) like `{}`, at most {}",
                self.example,
                crate::config::readable_duration(self.max)
            )))
            .examples([Value::from(self.example)])
            .build()
            .into()
    }
}

/// A regular expression alternation for the whole numbers `from..=most`
/// (`from` is 0 or 1), written without leading zeros.
fn numbers_up_to(most: u64, from: u64) -> String {
    let digits: Vec<u8> = most.to_string().bytes().map(|b| b - b'0').collect();
    let len = digits.len();
    let mut alternatives = Vec::new();
    // Every number with fewer digits.
    for shorter in 1..len {
        alternatives.push(match shorter {
            1 => format!("[{from}-9]"),
            n => format!("[1-9][0-9]{{{}}}", n - 1),
        });
    }
    // As many digits: the same first i digits, then a smaller one, then any.
    for i in 0..len {
        let low = match (i, len) {
            (0, 1) => from as u8,
            (0, _) => 1,
            _ => 0,
        };
        let digit = digits[i];
        if digit > low {
            let prefix: String = digits[..i].iter().map(|d| char::from(b'0' + d)).collect();
            let class = if digit - 1 == low {
                low.to_string()
            } else {
                format!("[{low}-{}]", digit - 1)
            };
            let rest = match len - i - 1 {
                0 => String::new(),
                n => format!("[0-9]{{{n}}}"),
            };
            alternatives.push(format!("{prefix}{class}{rest}"));
        }
    }
    if most >= from {
        alternatives.push(most.to_string());
    }
    alternatives.join("|")
}

fn flow_grace() -> Schema {
    FLOW_GRACE.schema("how long tokens of the generation before keep working")
}

fn token_ttl() -> Schema {
    TOKEN_TTL.schema("the token's lifetime; without it the token does not expire")
}

fn secret_grace() -> Schema {
    SECRET_GRACE.schema("how long the previous secret keeps signing (default 24h; 0s stops it now)")
}

/// `POST /flows/{id}/tokens/rotate` (the body is optional).
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct RotateTokens {
    #[schema(schema_with = flow_grace)]
    grace: Option<String>,
}

/// `POST /flows/{id}/tokens` (the body is optional).
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct IssueToken {
    #[schema(schema_with = token_ttl)]
    ttl: Option<String>,
}

/// `POST /webhooks/{id}/rotate-secret` (the body is optional).
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct RotateSecret {
    #[schema(schema_with = secret_grace)]
    grace: Option<String>,
    /// The new secret, `whsec_` and the base64 of 16 to 64 random bytes; generated when absent.
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]{22,88}={0,2}$")]
    secret: Option<String>,
}

/// `POST /webhooks/{id}/recover` (the body is optional).
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct Recover {
    /// Send again what was skipped since this time; default: as far back as deliveries are kept.
    #[schema(format = DateTime, nullable = false)]
    since: Option<String>,
}

/// `POST /tokens/revoke`: the token itself, or its `jti`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Revoke {
    pub token: Option<String>,
    pub jti: Option<String>,
}

/// Longest `jti` a revocation names.
pub(super) const MAX_JTI_CHARS: usize = 128;

/// What a `jti` may hold: no control characters (Unicode `Cc`, what
/// [`char::is_control`] says), as the API document says.
const JTI_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

impl utoipa::PartialSchema for Revoke {
    fn schema() -> RefOr<Schema> {
        let fields = ObjectBuilder::new()
            .property(
                "token",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("the admin token to refuse")),
            )
            .property(
                "jti",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_JTI_CHARS))
                    .pattern(Some(JTI_PATTERN))
                    .description(Some(
                        "the token's id, as the audit log names it (no control characters)",
                    )),
            )
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ));
        let one_of_them = utoipa::openapi::schema::AnyOfBuilder::new()
            .item(ObjectBuilder::new().required("token"))
            .item(ObjectBuilder::new().required("jti"));
        utoipa::openapi::schema::AllOfBuilder::new()
            .item(fields)
            .item(one_of_them)
            .description(Some(
                "`{\"token\": \"…\"}` or `{\"jti\": \"…\"}`; with both, the token counts",
            ))
            .into()
    }
}

impl ToSchema for Revoke {}

/// `POST /webhooks`: a new subscription (`name` and `url` required).
pub(super) struct NewSubscription;

/// `PATCH /webhooks/{id}`: the fields to change (`null` leaves one as it is).
pub(super) struct SubscriptionChange;

impl utoipa::PartialSchema for NewSubscription {
    fn schema() -> RefOr<Schema> {
        subscription_schema(true).into()
    }
}
impl ToSchema for NewSubscription {}

impl utoipa::PartialSchema for SubscriptionChange {
    fn schema() -> RefOr<Schema> {
        subscription_schema(false).into()
    }
}
impl ToSchema for SubscriptionChange {}

/// A subscription's fields, as `SubscriptionInput` reads them: on creation
/// `name` and `url` are required strings; every other field may be `null`
/// (the default on creation, unchanged on update). Whether a URL is
/// reachable and public, a secret well encoded, a flow known, the schema
/// cannot say: those answer 422.
///
/// Long because it is declarative: one builder per field, in field order.
fn subscription_schema(create: bool) -> Schema {
    use crate::webhooks::input::{MAX_FILTER_ITEMS, MAX_NAME_CHARS, MAX_URL_BYTES};
    use crate::webhooks::message::{EVENT_TYPES, RUN_STATUSES};
    use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
    let kind = |t: Type, nullable: bool| -> SchemaType {
        if nullable {
            SchemaType::from_iter([t, Type::Null])
        } else {
            SchemaType::new(t)
        }
    };
    let optional = !create;
    let strings = |values: Vec<&str>, describe: &str, min: usize| {
        ArrayBuilder::new()
            .schema_type(kind(Type::Array, true))
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(values)),
            )
            .min_items(Some(min))
            .max_items(Some(MAX_FILTER_ITEMS))
            .description(Some(describe.to_owned()))
    };
    let mut events: Vec<&str> = vec!["*"];
    events.extend(EVENT_TYPES);
    let mut object = ObjectBuilder::new()
        .property(
            "name",
            ObjectBuilder::new()
                .schema_type(kind(Type::String, optional))
                .min_length(Some(1))
                .max_length(Some(MAX_NAME_CHARS))
                .description(Some("a name people recognise it by")),
        )
        .property(
            "url",
            ObjectBuilder::new()
                .schema_type(kind(Type::String, optional))
                .max_length(Some(MAX_URL_BYTES))
                .pattern(Some("^[Hh][Tt][Tt][Pp]([Ss])?://"))
                .description(Some(
                    "where deliveries are POSTed: https (http only with webhooks.allow_http), a public address",
                )),
        )
        .property(
            "events",
            strings(events, "event types, or [\"*\"] for every event", 1),
        )
        .property(
            "flows",
            ArrayBuilder::new()
                .schema_type(kind(Type::Array, true))
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[a-z0-9][a-z0-9_-]{0,63}$")),
                )
                .max_items(Some(MAX_FILTER_ITEMS))
                .description(Some("only these flows' events; empty: every flow")),
        )
        .property(
            "statuses",
            strings(
                RUN_STATUSES.to_vec(),
                "only run.ended events with these statuses; empty: every status",
                0,
            ),
        )
        .property(
            "format",
            ObjectBuilder::new()
                .schema_type(kind(Type::String, true))
                .enum_values(Some(["json", "xml"]))
                .description(Some("the payload format (default json)")),
        )
        .property(
            "enabled",
            ObjectBuilder::new()
                .schema_type(kind(Type::Boolean, true))
                .description(Some("deliver events (default true)")),
        )
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(
            false,
        )));
    if create {
        object = object
            .property(
                "secret",
                OneOfBuilder::new()
                    .item(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some("^whsec_[A-Za-z0-9+/]{22,88}={0,2}$")),
                    )
                    .item(ObjectBuilder::new().schema_type(Type::Boolean))
                    .item(ObjectBuilder::new().schema_type(Type::Null))
                    .description(Some(
                        "`whsec_…` to sign with that secret, `true` to have one generated, `false` or `null` for none",
                    )),
            )
            .required("name")
            .required("url");
    }
    object.build().into()
}

/// Refuses a body with a key other than `allowed`: a misspelt `ttl` must
/// not mint a token that never expires.
pub(super) fn only_keys(body: &Value, allowed: &[&str]) -> Result<(), ApiError> {
    let Some(object) = body.as_object() else {
        return Ok(());
    };
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::bad_request(format!(
            "unknown field `{}`; this body takes {}",
            unknown.chars().take(64).collect::<String>(),
            allowed
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => Ok(()),
    }
}

/// The `since` of a recovery: an RFC 3339 time, as ms since the epoch.
pub(super) fn read_since(body: &Value) -> Result<u64, ApiError> {
    only_keys(body, &["since"])?;
    match body.get("since") {
        None => Ok(0),
        Some(Value::String(text)) => super::rfc3339_ms(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "since `{}` is not an RFC 3339 time like 2026-01-31T12:00:00Z",
                text.chars().take(64).collect::<String>()
            ))
        }),
        Some(_) => Err(ApiError::bad_request("since must be an RFC 3339 time")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    #[test]
    fn ranges_are_spelled_without_leading_zeros() {
        assert_eq!(numbers_up_to(7, 0), "[0-6]|7");
        assert_eq!(numbers_up_to(7, 1), "[1-6]|7");
        assert_eq!(numbers_up_to(1, 1), "1");
        assert_eq!(
            numbers_up_to(365, 1),
            "[1-9]|[1-9][0-9]{1}|[1-2][0-9]{2}|3[0-5][0-9]{1}|36[0-4]|365"
        );
        assert_eq!(numbers_up_to(10, 0), "[0-9]|10");
        assert_eq!(
            numbers_up_to(168, 0),
            "[0-9]|[1-9][0-9]{1}|1[0-5][0-9]{1}|16[0-7]|168"
        );
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(FLOW_GRACE.parse("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(FLOW_GRACE.parse("365d"), Some(crate::control::MAX_GRACE));
        for refused in [
            "366d", "0s", "", "24", "h", "024h", "1h30m", "1 h", "-1h", "1H", "1ms",
        ] {
            assert_eq!(FLOW_GRACE.parse(refused), None, "{refused}");
        }
        assert_eq!(SECRET_GRACE.parse("0s"), Some(Duration::ZERO));
        assert_eq!(
            SECRET_GRACE.parse("168h"),
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(SECRET_GRACE.parse("169h"), None);
        assert_eq!(TOKEN_TTL.parse("3650d"), Some(TOKEN_TTL.max));
        assert_eq!(TOKEN_TTL.parse("99999999999999999999s"), None);
    }

    proptest! {
        /// Whatever the published pattern matches, the handler accepts.
        #[test]
        fn the_pattern_admits_only_what_parse_accepts(
            text in proptest::string::string_regex(&FLOW_GRACE.pattern()[1..FLOW_GRACE.pattern().len() - 1]).unwrap()
        ) {
            prop_assert!(FLOW_GRACE.parse(&text).is_some(), "{}", text);
        }

        /// A range's alternation spells only numbers in the range.
        #[test]
        fn ranges_hold_only_their_numbers(most in 1u64..10_000_000, from in 0u64..2, seed in any::<u64>()) {
            let pattern = format!("(?:{})", numbers_up_to(most, from));
            let strategy = proptest::string::string_regex(&pattern).unwrap();
            let mut runner = proptest::test_runner::TestRunner::new_with_rng(
                Default::default(),
                proptest::test_runner::TestRng::from_seed(
                    proptest::test_runner::RngAlgorithm::ChaCha,
                    &[seed.to_le_bytes(), [0; 8], [0; 8], [0; 8]].concat(),
                ),
            );
            for _ in 0..20 {
                let text = strategy.new_tree(&mut runner).unwrap().current();
                let n: u64 = text.parse().unwrap();
                prop_assert!(n >= from && n <= most, "{} not in {}..={}", text, from, most);
                prop_assert!(text == n.to_string(), "{} has a leading zero", text);
            }
        }
    }
}
