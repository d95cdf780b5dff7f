//! Body signatures for senders that sign instead of sending a token.
//!
//! Each scheme signs a prefix (timestamps, ids) plus the raw body bytes with
//! HMAC-SHA256; comparisons are constant time (`Mac::verify_slice`). Schemes
//! that sign a timestamp reject it outside the flow's tolerance.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::flow::{DigestEncoding, SignatureConfig, SignatureScheme};

type HmacSha256 = Hmac<Sha256>;

/// Why a signature did not verify; logged, never shown to the sender.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header the scheme needs is absent or unreadable.
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    /// The signed timestamp is outside the tolerance.
    #[error("the signed timestamp is outside the tolerance")]
    Stale,
    /// No signature matched.
    #[error("the signature does not match the body")]
    Mismatch,
    /// The flow's secret variable was not set at load.
    #[error("the flow's signature secret is not configured")]
    NoSecret,
}

/// Verifies the request's signature; `now` is seconds since the epoch.
///
/// One arm per scheme, each the few lines its provider documents.
pub fn verify(
    config: &SignatureConfig,
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(), SignatureError> {
    let secret = config
        .secret
        .as_ref()
        .ok_or(SignatureError::NoSecret)?
        .expose();
    let tolerance = config.tolerance.as_secs();
    match config.scheme {
        SignatureScheme::StandardWebhooks => {
            let id = header(headers, "webhook-id")?;
            let timestamp = header(headers, "webhook-timestamp")?;
            check_timestamp(timestamp, now, tolerance)?;
            let signatures = header(headers, "webhook-signature")?;
            let candidates = signatures
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|s| B64.decode(s).ok());
            any_matches(
                secret,
                &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
                candidates,
            )
        }
        SignatureScheme::Stripe => {
            let value = header(headers, "stripe-signature")?;
            let mut timestamp = None;
            let mut candidates = Vec::new();
            for part in value.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", t)) => timestamp = Some(t),
                    Some(("v1", sig)) => candidates.extend(hex::decode(sig).ok()),
                    _ => {}
                }
            }
            let timestamp =
                timestamp.ok_or(SignatureError::MissingHeader("stripe-signature t="))?;
            check_timestamp(timestamp, now, tolerance)?;
            any_matches(secret, &[timestamp.as_bytes(), b".", body], candidates)
        }
        SignatureScheme::Github => {
            let value = header(headers, "x-hub-signature-256")?;
            let sig = value
                .strip_prefix("sha256=")
                .and_then(|h| hex::decode(h).ok());
            any_matches(secret, &[body], sig)
        }
        SignatureScheme::Shopify => {
            let value = header(headers, "x-shopify-hmac-sha256")?;
            any_matches(secret, &[body], B64.decode(value.trim()).ok())
        }
        SignatureScheme::Slack => {
            let timestamp = header(headers, "x-slack-request-timestamp")?;
            check_timestamp(timestamp, now, tolerance)?;
            let value = header(headers, "x-slack-signature")?;
            let sig = value.strip_prefix("v0=").and_then(|h| hex::decode(h).ok());
            any_matches(secret, &[b"v0:", timestamp.as_bytes(), b":", body], sig)
        }
        SignatureScheme::HmacSha256 => {
            let value = headers
                .get(&config.header)
                .and_then(|v| v.to_str().ok())
                .ok_or(SignatureError::MissingHeader(
                    "the configured signature header",
                ))?;
            let digest = value
                .trim()
                .strip_prefix(config.prefix.as_str())
                .unwrap_or("");
            let sig = match config.encoding {
                DigestEncoding::Hex => hex::decode(digest).ok(),
                DigestEncoding::Base64 => B64.decode(digest).ok(),
            };
            any_matches(secret, &[body], sig)
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(SignatureError::MissingHeader(name))
}

fn check_timestamp(value: &str, now: u64, tolerance: u64) -> Result<(), SignatureError> {
    let ts: u64 = value.trim().parse().map_err(|_| SignatureError::Stale)?;
    if ts.abs_diff(now) > tolerance {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

fn any_matches(
    secret: &[u8],
    parts: &[&[u8]],
    candidates: impl IntoIterator<Item = Vec<u8>>,
) -> Result<(), SignatureError> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    for candidate in candidates {
        if mac.clone().verify_slice(&candidate).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;
    use crate::mac::hmac_sha256;
    use crate::secret::Secret;

    fn config(scheme: SignatureScheme, secret: &[u8]) -> SignatureConfig {
        SignatureConfig {
            scheme,
            secret_env: "TEST".into(),
            secret: Some(Secret::new(secret.to_vec())),
            tolerance: Duration::from_secs(300),
            header: http::HeaderName::from_static("x-signature"),
            encoding: DigestEncoding::Hex,
            prefix: String::new(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn standard_webhooks_spec_vector() {
        // The example from the Standard Webhooks specification.
        let secret = B64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let cfg = config(SignatureScheme::StandardWebhooks, &secret);
        let body = br#"{"test": 2432232314}"#;
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert_eq!(verify(&cfg, &h, body, 1614265330), Ok(()));
        assert_eq!(
            verify(&cfg, &h, b"{\"test\": 1}", 1614265330),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&cfg, &h, body, 1614265330 + 301),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn github_documentation_vector() {
        // The example from GitHub's "Validating webhook deliveries" page.
        let cfg = config(SignatureScheme::Github, b"It's a Secret to Everybody");
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(verify(&cfg, &h, b"Hello, World!", 0), Ok(()));
        assert_eq!(
            verify(&cfg, &h, b"Hello, World?", 0),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn slack_documentation_vector() {
        // The example from Slack's "Verifying requests from Slack" page.
        let cfg = config(SignatureScheme::Slack, b"8f742231b10e8888abcd99yyyzzz85a5");
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let h = headers(&[
            ("x-slack-request-timestamp", "1531420618"),
            (
                "x-slack-signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ]);
        assert_eq!(verify(&cfg, &h, body, 1531420618), Ok(()));
        assert_eq!(
            verify(&cfg, &h, &body[1..], 1531420618),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stripe_shopify_and_generic_hmac() {
        let secret = b"whsec_test_secret";
        let body = br#"{"id":"evt_1"}"#;
        let sig = hex::encode(hmac_sha256(secret, &[b"1700000000", b".", body]));
        let cfg = config(SignatureScheme::Stripe, secret);
        let h = headers(&[(
            "stripe-signature",
            &format!("t=1700000000,v1=deadbeef,v1={sig}"),
        )]);
        assert_eq!(verify(&cfg, &h, body, 1700000100), Ok(()));
        assert_eq!(
            verify(&cfg, &h, body, 1700000400),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(&cfg, &h, b"{}", 1700000100),
            Err(SignatureError::Mismatch)
        );

        let cfg = config(SignatureScheme::Shopify, b"shpss_secret");
        let h = headers(&[(
            "x-shopify-hmac-sha256",
            &B64.encode(hmac_sha256(b"shpss_secret", &[body])),
        )]);
        assert_eq!(verify(&cfg, &h, body, 0), Ok(()));
        assert_eq!(verify(&cfg, &h, b"x", 0), Err(SignatureError::Mismatch));

        let mut cfg = config(SignatureScheme::HmacSha256, b"k");
        cfg.prefix = "sha256=".into();
        let h = headers(&[(
            "x-signature",
            &format!("sha256={}", hex::encode(hmac_sha256(b"k", &[body]))),
        )]);
        assert_eq!(verify(&cfg, &h, body, 0), Ok(()));
        assert_eq!(
            verify(&cfg, &HeaderMap::new(), body, 0),
            Err(SignatureError::MissingHeader(
                "the configured signature header"
            ))
        );
    }
}
