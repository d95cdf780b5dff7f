//! Standard Webhooks signatures for outbound deliveries.
//!
//! A delivery carries `webhook-id` (the message id), `webhook-timestamp`
//! (seconds since the epoch) and `webhook-signature`: `v1,<base64 of
//! HMAC-SHA256(id.timestamp.body)>`, one per signing secret, separated by
//! spaces, so a receiver holding either the new or the previous secret
//! during a rotation's grace verifies it. Secrets are written
//! `whsec_<base64>`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::mac::hmac_sha256;
use crate::secret::Secret;

/// Prefix of a written secret.
const PREFIX: &str = "whsec_";
/// Random bytes in a generated secret.
const GENERATED_BYTES: usize = 24;
/// Shortest and longest secret accepted, in bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// A subscription's signing secret; never printed.
#[derive(Clone)]
pub struct SigningSecret(Secret<Vec<u8>>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// Why a written secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret must be whsec_ followed by base64 of 16 to 64 bytes")]
pub struct BadSecret;

impl SigningSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; GENERATED_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source works");
        Self(Secret::new(bytes))
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, BadSecret> {
        let encoded = text.strip_prefix(PREFIX).ok_or(BadSecret)?;
        let bytes = B64.decode(encoded).map_err(|_| BadSecret)?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(BadSecret);
        }
        Ok(Self(Secret::new(bytes)))
    }

    /// The secret as written, `whsec_<base64>`: show it once, store it safely.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}", B64.encode(self.0.expose()))
    }

    /// `v1,<base64 signature>` of `body` sent as message `id` at `timestamp`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mac = hmac_sha256(
            self.0.expose(),
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        format!("v1,{}", B64.encode(mac))
    }
}

/// The `webhook-signature` header value: one signature per secret (the
/// current one first, then any still in their grace period).
pub fn signature_header(
    secrets: &[&SigningSecret],
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::flow::{DigestEncoding, SignatureConfig, SignatureScheme};
    use crate::inbound::signature::verify;

    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn the_published_test_vector() {
        let secret = SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, BODY),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    /// What a receiver configured with `secret` says about a delivery.
    fn receiver_accepts(secret: &SigningSecret, header: &str, body: &[u8]) -> bool {
        let config = SignatureConfig {
            scheme: SignatureScheme::StandardWebhooks,
            secret_env: "TEST".into(),
            secret: Some(Secret::new(secret.0.expose().clone())),
            tolerance: Duration::from_secs(300),
            header: http::HeaderName::from_static("webhook-signature"),
            encoding: DigestEncoding::Base64,
            prefix: String::new(),
        };
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("webhook-timestamp", HeaderValue::from_static("1700000000"));
        headers.insert("webhook-signature", HeaderValue::from_str(header).unwrap());
        verify(&config, &headers, body, 1_700_000_000).is_ok()
    }

    #[test]
    fn during_a_rotation_either_secret_verifies() {
        let (new, old, other) = (
            SigningSecret::generate(),
            SigningSecret::generate(),
            SigningSecret::generate(),
        );
        let header = signature_header(&[&new, &old], "msg_1", 1_700_000_000, BODY);
        assert_eq!(header.split(' ').count(), 2);
        assert!(receiver_accepts(&new, &header, BODY));
        assert!(receiver_accepts(&old, &header, BODY));
        assert!(!receiver_accepts(&other, &header, BODY));
        assert!(!receiver_accepts(&new, &header, b"{}"));
    }

    #[test]
    fn secrets_round_trip_and_never_print() {
        let secret = SigningSecret::generate();
        let written = secret.reveal();
        assert!(written.starts_with("whsec_"), "{written}");
        let again = SigningSecret::parse(&written).unwrap();
        assert_eq!(again.sign("m", 1, b"x"), secret.sign("m", 1, b"x"));
        assert_eq!(format!("{secret:?}"), "SigningSecret([redacted])");
        for bad in [
            "",
            "whsec_",
            "whsec_!!!",
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_YWJj",
        ] {
            assert_eq!(SigningSecret::parse(bad).unwrap_err(), BadSecret, "{bad}");
        }
    }
}
