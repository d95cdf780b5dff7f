//! TLS to PostgreSQL as libpq's `sslmode` says: `disable`; `allow` and
//! `prefer` (the default: TLS when the server offers it) and `require`
//! (TLS or nothing) encrypt without checking who answers, as libpq does;
//! `verify-ca` and `verify-full` also verify the server's certificate
//! against the system's roots (or the CA file `SSL_CERT_FILE` names), and
//! its host name. `tokio-postgres` knows only the first three words, so the
//! URL's `sslmode` is read here and the connector built to match.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the URL's `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Disable,
    Prefer,
    Require,
    Verify,
}

/// `url` without its `sslmode` parameter (which `tokio-postgres` may not
/// know), and what that parameter asked for.
pub(super) fn split_sslmode(url: &str) -> Result<(String, Mode), String> {
    // The query is cut apart as written, never decoded and encoded again,
    // so every other parameter (`options=-c%20…`) reaches tokio-postgres
    // byte for byte.
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Mode::Prefer));
    };
    let mut mode = Mode::Prefer;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "sslmode" {
            kept.push(pair);
            continue;
        }
        mode = match value {
            "disable" => Mode::Disable,
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" | "verify-full" => Mode::Verify,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(format!(
                    "sslmode `{}` is not one of disable, allow, prefer, require, verify-ca, verify-full",
                    shown.escape_debug()
                ));
            }
        };
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

impl Mode {
    /// The `sslmode` `tokio-postgres` is given.
    pub(super) fn ssl_mode(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::Verify => SslMode::Require,
        }
    }
}

/// The connector for `mode`.
pub(super) fn connector(mode: Mode) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if mode == Mode::Verify {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if roots.is_empty() {
            return Err(
                "sslmode verifies the server's certificate, but no trusted root certificates were found (set SSL_CERT_FILE to a CA file)"
                    .into(),
            );
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth()
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Encryption without checking the certificate, as libpq's `prefer` and
/// `require` do: the handshake's signatures are still checked, so the
/// session is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_as_libpq_does_and_taken_out_of_the_url() {
        let split = |url: &str| split_sslmode(url).unwrap();
        assert_eq!(
            split("postgres://u@h/db"),
            ("postgres://u@h/db".into(), Mode::Prefer)
        );
        assert_eq!(
            split("postgres://u@h/db?sslmode=verify-full"),
            ("postgres://u@h/db".into(), Mode::Verify)
        );
        assert_eq!(
            split("postgres://u@h/db?application_name=x&sslmode=require"),
            ("postgres://u@h/db?application_name=x".into(), Mode::Require)
        );
        assert_eq!(split("postgres://u@h/db?sslmode=allow").1, Mode::Prefer);
        assert_eq!(split("postgres://u@h/db?sslmode=disable").1, Mode::Disable);
        let refused = split_sslmode("postgres://u@h/db?sslmode=maybe").unwrap_err();
        assert!(refused.contains("`maybe`"), "{refused}");
        // Other parameters pass as written, percent-escapes and all.
        assert_eq!(
            split("postgres://u@h/db?sslmode=disable&options=-c%20statement_timeout%3D5000").0,
            "postgres://u@h/db?options=-c%20statement_timeout%3D5000"
        );
    }
}
