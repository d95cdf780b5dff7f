//! HMAC-SHA256 over a message given in parts: the one primitive behind the
//! senders' body signatures ([`crate::inbound::signature`]) and the
//! outbound deliveries' Standard Webhooks signatures
//! ([`crate::webhooks::signing`]).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// HMAC-SHA256 with key `secret` over `parts` written one after another.
pub fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}
