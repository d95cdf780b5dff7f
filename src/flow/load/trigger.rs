//! Loading `[trigger]` and `[trigger.signature]`: methods, mode, auth,
//! body limits, CORS, redaction and signature schemes.

use super::*;

impl FlowBuilder<'_> {
    pub(super) fn trigger(
        &mut self,
        spanned: &Spanned<TriggerFile>,
        default_max_body: usize,
    ) -> Trigger {
        let file = spanned.get_ref();
        let ref_id = file.ref_id.get_ref().clone();
        if !is_identifier(&ref_id) || RESERVED_NAMES.contains(&ref_id.as_str()) {
            self.problem(
                file.ref_id.span().start,
                format!(
                    "trigger ref `{ref_id}` must be an identifier (letters, digits, _) and not one of {}",
                    RESERVED_NAMES.join(", ")
                ),
            );
        }
        let methods = self.methods(spanned);
        let mode = self.mode(file);
        let (bearer, query_token, signature) = self.auth(spanned);
        let max_body_bytes = match &file.max_body_bytes {
            Some(n) if *n.get_ref() > 0 => *n.get_ref() as usize,
            Some(n) => {
                self.problem(n.span().start, "max_body_bytes must be above 0");
                default_max_body
            }
            None => default_max_body,
        };
        let cors_origins = self.cors_origins(file);
        Trigger {
            ref_id,
            methods,
            mode,
            bearer,
            query_token,
            signature,
            max_body_bytes,
            accept_any: file.accept_any.unwrap_or(false),
            cors_origins,
            redact_headers: file
                .redact_headers
                .iter()
                .flatten()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            redact_query: file.redact_query.clone().unwrap_or_default(),
        }
    }

    /// `methods`: HTTP methods, POST when not given.
    fn methods(&mut self, spanned: &Spanned<TriggerFile>) -> Vec<Method> {
        let file = spanned.get_ref();
        let mut methods = Vec::new();
        for m in file.methods.iter().flatten() {
            match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) if m.get_ref().chars().all(|c| c.is_ascii_alphabetic()) => {
                    methods.push(method)
                }
                _ => self.problem(
                    m.span().start,
                    format!("`{}` is not an HTTP method", m.get_ref()),
                ),
            }
        }
        if methods.is_empty() {
            if file.methods.is_some() {
                self.problem(
                    spanned.span().start,
                    "methods must list at least one method",
                );
            }
            methods.push(Method::POST);
        }
        methods
    }

    /// `mode`: sync (the default) or async.
    fn mode(&mut self, file: &TriggerFile) -> Mode {
        match file
            .mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span().start))
        {
            None | Some(("sync", _)) => Mode::Sync,
            Some(("async", _)) => Mode::Async,
            Some((other, at)) => {
                self.problem(at, format!("mode `{other}` must be sync or async"));
                Mode::Sync
            }
        }
    }

    /// `auth` and `[trigger.signature]`: whether a bearer token and a query
    /// token are accepted, and the signature scheme, when there is one.
    fn auth(&mut self, spanned: &Spanned<TriggerFile>) -> (bool, bool, Option<SignatureConfig>) {
        let file = spanned.get_ref();
        let (mut bearer, mut query_token, mut wants_signature) = (false, false, false);
        match &file.auth {
            None => bearer = true,
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.problem(list.span().start, "auth must list at least one method");
                }
                for method in list.get_ref() {
                    match method.get_ref().as_str() {
                        "bearer" => bearer = true,
                        "query_token" => query_token = true,
                        "signature" => wants_signature = true,
                        other => self.problem(
                            method.span().start,
                            format!(
                                "auth method `{other}` must be bearer, signature or query_token"
                            ),
                        ),
                    }
                }
            }
        }
        let signature = match (&file.signature, wants_signature) {
            (Some(sig), true) => self.signature(sig),
            (None, true) => {
                self.problem(
                    spanned.span().start,
                    "auth lists \"signature\" but there is no [trigger.signature] table",
                );
                None
            }
            (Some(sig), false) => {
                self.problem(
                    sig.span().start,
                    "[trigger.signature] is set but auth does not list \"signature\"",
                );
                None
            }
            (None, false) => None,
        };
        (bearer, query_token, signature)
    }

    /// `cors_origins`: `*` or http(s) origins, without a trailing slash.
    fn cors_origins(&mut self, file: &TriggerFile) -> Vec<String> {
        let mut cors_origins = Vec::new();
        for origin in file.cors_origins.iter().flatten() {
            let o = origin.get_ref();
            if o == "*" || o.starts_with("http://") || o.starts_with("https://") {
                cors_origins.push(o.trim_end_matches('/').to_owned());
            } else {
                self.problem(
                    origin.span().start,
                    format!("cors origin `{o}` must be \"*\" or start with http:// or https://"),
                );
            }
        }
        cors_origins
    }

    /// `[trigger.signature]`: the scheme and its keys. One check per key,
    /// each reporting at the key's line, in the order the table documents.
    pub(super) fn signature(
        &mut self,
        spanned: &Spanned<SignatureFile>,
    ) -> Option<SignatureConfig> {
        let file = spanned.get_ref();
        let Some(scheme) = SignatureScheme::parse(file.scheme.get_ref()) else {
            self.problem(
                file.scheme.span().start,
                format!(
                    "signature scheme `{}` must be one of standard-webhooks, stripe, github, shopify, slack, hmac-sha256",
                    file.scheme.get_ref()
                ),
            );
            return None;
        };
        let tolerance = match &file.tolerance {
            Some(t) => self.duration(t, "tolerance")?,
            None => DEFAULT_SIGNATURE_TOLERANCE,
        };
        let generic = scheme == SignatureScheme::HmacSha256;
        for (key, present) in [
            ("header", file.header.as_ref().map(|h| h.span().start)),
            ("encoding", file.encoding.as_ref().map(|h| h.span().start)),
        ] {
            if let (Some(at), false) = (present, generic) {
                self.problem(
                    at,
                    format!("`{key}` only applies to the hmac-sha256 scheme"),
                );
            }
        }
        let header_name = file
            .header
            .as_ref()
            .map(|h| h.get_ref().to_ascii_lowercase())
            .unwrap_or_else(|| DEFAULT_HMAC_HEADER.into());
        let header = match HeaderName::from_bytes(header_name.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.problem(
                    spanned.span().start,
                    format!("`{header_name}` is not a header name"),
                );
                return None;
            }
        };
        let encoding = match file
            .encoding
            .as_ref()
            .map(|e| (e.get_ref().as_str(), e.span().start))
        {
            None | Some(("hex", _)) => DigestEncoding::Hex,
            Some(("base64", _)) => DigestEncoding::Base64,
            Some((other, at)) => {
                self.problem(at, format!("encoding `{other}` must be hex or base64"));
                return None;
            }
        };
        let secret_env = file.secret_env.get_ref().clone();
        let value = self
            .secrets
            .get(&secret_env)
            .cloned()
            .or_else(|| std::env::var(&secret_env).ok());
        let secret = match value {
            Some(value) if !value.is_empty() => match signing_secret(scheme, &value) {
                Ok(bytes) => Some(Secret::new(bytes)),
                Err(message) => {
                    self.problem(
                        file.secret_env.span().start,
                        format!("{secret_env}: {message}"),
                    );
                    None
                }
            },
            _ => {
                let line = self.line(file.secret_env.span().start);
                self.warnings.push(format!(
                    "{}:{line}: environment variable {secret_env} is not set: signature checks will fail",
                    self.shown
                ));
                None
            }
        };
        Some(SignatureConfig {
            scheme,
            secret_env,
            secret,
            tolerance,
            header,
            encoding,
            prefix: file.prefix.clone().unwrap_or_default(),
        })
    }
}

/// The HMAC key for a scheme: Standard Webhooks secrets are `whsec_<base64>`.
fn signing_secret(scheme: SignatureScheme, value: &str) -> Result<Vec<u8>, String> {
    if scheme != SignatureScheme::StandardWebhooks {
        return Ok(value.as_bytes().to_vec());
    }
    let encoded = value.strip_prefix("whsec_").unwrap_or(value);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("a standard-webhooks secret must be whsec_<base64>: {e}"))
}
