//! How deliveries are made: [`WebhookSettings`], from the `[webhooks]`
//! config section (and `http.allow_private_networks`).

use std::time::Duration;

use super::dispatch;
use super::input::UrlRules;

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Accept plain `http://` URLs.
    pub allow_http: bool,
    /// Let deliveries reach loopback and private addresses.
    pub allow_private: bool,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// Waits between failed attempts of an event.
    pub retry_schedule: Vec<Duration>,
    /// How long deliveries and their log are kept.
    pub retention: Duration,
    /// Extra CA certificates (PEM) trusted for deliveries.
    pub ca_pem: Option<Vec<u8>>,
    /// Attempts one process makes at once to any one subscription.
    pub per_subscription: usize,
}

impl WebhookSettings {
    /// The settings in `config`, without reading `webhooks.ca_file` yet
    /// (see [`WebhookSettings::load_ca`]).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let webhooks = &config.webhooks;
        Self {
            allow_http: webhooks.allow_http,
            allow_private: config.http.allow_private_networks,
            timeout: webhooks.timeout,
            retry_schedule: webhooks.retry_schedule.clone(),
            retention: webhooks.delivery_retention,
            ca_pem: None,
            per_subscription: webhooks.max_in_flight_per_subscription,
        }
    }

    /// Reads the PEM certificates of `webhooks.ca_file`, when set.
    pub fn load_ca(
        &mut self,
        config: &crate::config::Config,
    ) -> Result<(), crate::config::ConfigError> {
        if config.webhooks.ca_file.is_empty() {
            return Ok(());
        }
        let path = config.resolve(std::path::Path::new(&config.webhooks.ca_file));
        let fail = |problem: String| {
            crate::config::ConfigError::new(format!(
                "webhooks.ca_file: {}: {problem}",
                path.display()
            ))
        };
        let pem = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            Ok(_) => return Err(fail("holds no PEM certificate".into())),
            Err(e) => return Err(fail(format!("not PEM certificates: {e}"))),
        }
        self.ca_pem = Some(pem);
        Ok(())
    }

    /// How long a claimed delivery is held: the attempt timeout plus a margin.
    pub fn lease(&self) -> Duration {
        self.timeout + dispatch::LEASE_MARGIN
    }

    pub(super) fn url_rules(&self) -> UrlRules {
        UrlRules {
            allow_http: self.allow_http,
            allow_private: self.allow_private,
        }
    }
}
