//! Outbound event webhooks: telling other systems about runs and flows.
//!
//! - [`input`]: subscriptions as their authors write them, checked.
//! - [`message`]: messages built from the lifecycle's events, their JSON and XML bodies.
//! - [`signing`]: Standard Webhooks signatures.
//! - [`outbox`]: events written with the run transitions that cause them, fanned out into deliveries.
//! - [`fanout`]: deliveries for the matching subscriptions, stored in the outbox.
//! - [`dispatch`]: claims due deliveries and attempts them, with retries and auto-disable.
//! - `settings`: [`WebhookSettings`], from the config.
//! - `limits`: how many subscriptions a flow and an installation may have.
//!
//! [`Webhooks`] is the one service the admin API, the CLI and the running
//! processes use: it keeps an in-memory copy of the subscriptions (checked
//! against the store's version every second, refreshed at once after a
//! change made here), and makes every change with its audit entry.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};

use crate::backend::control::{Actor, AuditDraft, Change, ControlStore, Page};
use crate::backend::webhooks::{
    Attempt, Decide, Delivery, DeliveryState, DisabledReason, Refusal, StoredSecret, Subscription,
    WebhookStore, Write,
};
use crate::backend::{StorageError, now_ms};
use crate::metrics::Metrics;

pub mod dispatch;
pub mod fanout;
pub mod input;
mod limits;
pub mod message;
pub mod outbox;
mod settings;
pub mod signing;

use self::input::SubscriptionInput;
use self::limits::check_limit;
use self::message::{Message, rfc3339};
pub use self::settings::WebhookSettings;

/// At most this many subscriptions may name one flow (one with no flow
/// filter names every flow).
pub const MAX_PER_FLOW: usize = 5;
/// Subscriptions one installation may hold in all (each is loaded by every
/// process and looked at for every event).
pub const MAX_SUBSCRIPTIONS: usize = 1000;
/// Consecutive failed attempts after which a subscription is disabled.
pub const DISABLE_AFTER: u32 = 4;
/// How long a rotated-out secret keeps signing, unless asked otherwise.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Longest rotation grace accepted.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the copy of the subscriptions is checked against the store.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A subscription as the admin API shows it: never its secrets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    /// `wh_…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where deliveries go.
    pub url: String,
    /// Whether deliveries are signed.
    pub has_secret: bool,
    /// Event types, or `["*"]`.
    pub events: Vec<String>,
    /// Only these flows' events (empty: all).
    pub flows: Vec<String>,
    /// Only `run.ended` events with these statuses (empty: all).
    pub statuses: Vec<String>,
    /// `json` or `xml`.
    pub format: String,
    /// Whether events are delivered.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<DisabledReason>,
    /// Failed attempts in a row.
    pub consecutive_failures: u32,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

impl SubscriptionView {
    fn new(sub: &Subscription, failures: u32) -> Self {
        Self {
            id: sub.id.clone(),
            name: sub.name.clone(),
            url: sub.url.clone(),
            has_secret: !sub.secrets.is_empty(),
            events: sub.events.clone(),
            flows: sub.flows.clone(),
            statuses: sub.statuses.clone(),
            format: sub.format.as_str().to_owned(),
            enabled: sub.enabled,
            disabled_reason: sub.disabled_reason.clone(),
            consecutive_failures: failures,
            created_at: sub.created_at.clone(),
            updated_at: sub.updated_at.clone(),
        }
    }
}

/// The subscriptions as one process last read them.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store's version they were read at.
    pub version: u64,
    /// Every subscription with its consecutive-failure count.
    pub subscriptions: Vec<(Subscription, u32)>,
}

impl Snapshot {
    /// Subscription `id`.
    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions
            .iter()
            .map(|(s, _)| s)
            .find(|s| s.id == id)
    }
}

/// Does `sub` want `message`? (Enabled or not: a disabled subscription's
/// events are kept as skipped.)
pub fn wants(sub: &Subscription, message: &Message) -> bool {
    let event_ok = sub.events.iter().any(|e| e == "*" || e == message.event);
    let flow_ok = sub.flows.is_empty()
        || message
            .flow
            .as_ref()
            .is_some_and(|(id, _)| sub.flows.contains(id));
    let status_ok = sub.statuses.is_empty()
        || message.event != "run.ended"
        || message
            .status
            .is_some_and(|s| sub.statuses.iter().any(|x| x == s));
    event_ok && flow_ok && status_ok
}

/// The webhook service of one process.
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    control: Arc<dyn ControlStore>,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    snapshot: RwLock<Arc<Snapshot>>,
    changed: watch::Sender<u64>,
    wake: Notify,
    /// Deliveries this process stored already leased to itself, straight
    /// to its dispatcher (no claim round trip).
    handoff: mpsc::Sender<Delivery>,
    handoff_rx: std::sync::Mutex<Option<mpsc::Receiver<Delivery>>>,
    /// Told when this process stored events, for its fan-out.
    events_written: Notify,
    /// When the copy of the subscriptions was last read (ms; the read's start).
    read_ms: std::sync::atomic::AtomicU64,
}

impl Webhooks {
    /// The service over `store`, auditing into `control`.
    pub fn new(
        store: Arc<dyn WebhookStore>,
        control: Arc<dyn ControlStore>,
        settings: WebhookSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (handoff, handoff_rx) = mpsc::channel(dispatch::HANDOFF);
        Self {
            store,
            control,
            settings,
            metrics,
            snapshot: RwLock::default(),
            changed: watch::channel(0).0,
            wake: Notify::new(),
            handoff,
            handoff_rx: std::sync::Mutex::new(Some(handoff_rx)),
            events_written: Notify::new(),
            read_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The settings deliveries follow.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.store
    }

    /// The subscriptions as last read.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("webhooks lock").clone()
    }

    /// Reads the subscriptions again.
    pub async fn refresh(&self) -> Result<(), StorageError> {
        let started = now_ms();
        let version = self.store.version().await?;
        let subscriptions = self.store.subscriptions().await?;
        *self.snapshot.write().expect("webhooks lock") = Arc::new(Snapshot {
            version,
            subscriptions,
        });
        self.read_ms
            .fetch_max(started, std::sync::atomic::Ordering::Relaxed);
        self.changed.send_replace(version);
        Ok(())
    }

    /// Makes the copy at least as new as this call: reads the store's
    /// version, and the subscriptions only when it changed.
    pub async fn ensure_current(&self) -> Result<(), StorageError> {
        let started = now_ms();
        let version = self.store.version().await?;
        if version != self.snapshot().version || version == 0 {
            return self.refresh().await;
        }
        self.read_ms
            .fetch_max(started, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// When the copy of the subscriptions was last read from the store (ms).
    pub fn snapshot_read_ms(&self) -> u64 {
        self.read_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tells this process's fan-out that events were stored.
    pub fn wake_fan_out(&self) {
        self.events_written.notify_one();
    }

    /// Waits until this process stores events, or `timeout`.
    pub async fn wait_for_events(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.events_written.notified()).await;
    }

    /// Told after every refresh.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Keeps the copy current until the task is dropped.
    pub async fn keep_current(self: Arc<Self>) {
        let consequence =
            "cannot read the webhook subscriptions; changes made elsewhere wait until it answers";
        crate::backend::keep_copy_current(CHECK_EVERY, consequence, || self.ensure_current()).await;
    }

    /// The deliveries handed straight to this process's dispatcher; the
    /// first caller (the dispatcher) gets them.
    fn take_handoff(&self) -> Option<mpsc::Receiver<Delivery>> {
        self.handoff_rx.lock().expect("handoff lock").take()
    }

    /// Wakes this process's dispatcher: something fell due.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Every subscription.
    pub async fn list(&self) -> Result<Vec<SubscriptionView>, Refusal> {
        self.refresh().await?;
        Ok(self
            .snapshot()
            .subscriptions
            .iter()
            .map(|(s, n)| SubscriptionView::new(s, *n))
            .collect())
    }

    /// Subscription `id`.
    pub async fn get(&self, id: &str) -> Result<SubscriptionView, Refusal> {
        self.refresh().await?;
        self.snapshot()
            .subscriptions
            .iter()
            .find(|(s, _)| s.id == id)
            .map(|(s, n)| SubscriptionView::new(s, *n))
            .ok_or_else(|| not_found(id))
    }

    /// Creates a subscription from `input` and pings it; returns it with
    /// its secret as written (shown this once).
    pub async fn create(
        &self,
        input: SubscriptionInput,
        known_flows: &[String],
        actor: &Actor,
    ) -> Result<(SubscriptionView, Option<String>), Refusal> {
        let id = format!("wh_{}", uuid::Uuid::now_v7().simple());
        let (subscription, secret) = input
            .create(id.clone(), &rfc3339(now_ms()), self.settings.url_rules())
            .map_err(invalid)?;
        let decide = |current: Option<&Subscription>, others: &[Subscription]| {
            if current.is_some() {
                return Err(Refusal::Conflict {
                    code: "exists",
                    message: format!("subscription {id} exists"),
                });
            }
            check_limit(&subscription, others, known_flows)?;
            Ok(Write::Put {
                subscription: Box::new(subscription.clone()),
                reset_failures: true,
            })
        };
        let written = self.put(&id, &decide).await?;
        self.audit(actor, "webhook.create", None, Some(&written))
            .await;
        self.ping_subscription(&written, crate::backend::webhooks::Trigger::Ping)
            .await?;
        Ok((SubscriptionView::new(&written, 0), secret))
    }

    /// Changes the fields `input` gives.
    pub async fn update(
        &self,
        id: &str,
        input: SubscriptionInput,
        known_flows: &[String],
        actor: &Actor,
    ) -> Result<SubscriptionView, Refusal> {
        if input.secret.is_some() {
            return Err(invalid(
                "a secret cannot be changed by an update; use rotate-secret".into(),
            ));
        }
        let rules = self.settings.url_rules();
        let now = rfc3339(now_ms());
        let enabling = input.enabled == Some(true);
        let decide = |current: Option<&Subscription>, others: &[Subscription]| {
            let current = current.ok_or_else(|| Refusal::NotFound(not_found_text(id)))?;
            let mut next = current.clone();
            input.apply(&mut next, rules).map_err(invalid)?;
            next.updated_at = now.clone();
            check_limit(&next, others, known_flows)?;
            Ok(Write::Put {
                subscription: Box::new(next),
                reset_failures: enabling && !current.enabled,
            })
        };
        let before = self.snapshot().get(id).cloned();
        let result = self.put(id, &decide).await;
        let written = result?;
        self.audit(actor, "webhook.update", before.as_ref(), Some(&written))
            .await;
        Ok(self.view(&written))
    }

    /// Enables or disables subscription `id`; enabling resets its failure count.
    pub async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
        actor: &Actor,
    ) -> Result<SubscriptionView, Refusal> {
        let now = rfc3339(now_ms());
        let decide = |current: Option<&Subscription>, _: &[Subscription]| {
            let mut next = current
                .ok_or_else(|| Refusal::NotFound(not_found_text(id)))?
                .clone();
            next.enabled = enabled;
            next.disabled_reason = (!enabled).then(|| DisabledReason {
                at: now.clone(),
                cause: "manual".into(),
                message: format!("disabled by {}", actor.name),
            });
            next.updated_at = now.clone();
            Ok(Write::Put {
                subscription: Box::new(next),
                reset_failures: enabled,
            })
        };
        let before = self.snapshot().get(id).cloned();
        let written = self.put(id, &decide).await?;
        let action = if enabled {
            "webhook.enable"
        } else {
            "webhook.disable"
        };
        self.audit(actor, action, before.as_ref(), Some(&written))
            .await;
        Ok(self.view(&written))
    }

    /// Deletes subscription `id`, which must be disabled.
    pub async fn delete(&self, id: &str, actor: &Actor) -> Result<(), Refusal> {
        let decide = |current: Option<&Subscription>, _: &[Subscription]| match current {
            None => Err(Refusal::NotFound(not_found_text(id))),
            Some(sub) if sub.enabled => Err(Refusal::Conflict {
                code: "subscription_enabled",
                message: format!(
                    "subscription {id} is enabled; disable it first (POST /v1/admin/webhooks/{id}/disable), then delete it"
                ),
            }),
            Some(_) => Ok(Write::Delete),
        };
        let before = self.snapshot().get(id).cloned();
        self.change(id, &decide).await?;
        self.audit(actor, "webhook.delete", before.as_ref(), None)
            .await;
        Ok(())
    }

    /// Sends subscription `id` a `ping` (or, with `test`, a `test` event) now.
    pub async fn send(&self, id: &str, test: bool, actor: &Actor) -> Result<String, Refusal> {
        self.refresh().await?;
        let sub = self
            .snapshot()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))?;
        let trigger = if test {
            crate::backend::webhooks::Trigger::Test
        } else {
            crate::backend::webhooks::Trigger::Ping
        };
        let delivery = self.ping_subscription(&sub, trigger).await?;
        let action = if test { "webhook.test" } else { "webhook.ping" };
        self.audit_about(actor, action, &sub.id, json!({ "delivery_id": delivery }))
            .await;
        Ok(delivery)
    }

    /// A new signing secret for subscription `id` (the one given, or a
    /// generated one); the old one keeps signing for `grace`. Returns the
    /// new secret as written, and when the old one stops.
    pub async fn rotate_secret(
        &self,
        id: &str,
        secret: Option<&str>,
        grace: Duration,
        actor: &Actor,
    ) -> Result<(String, Option<String>), Refusal> {
        if grace > MAX_ROTATION_GRACE {
            return Err(invalid(format!(
                "grace is at most {}",
                crate::config::readable_duration(MAX_ROTATION_GRACE)
            )));
        }
        let new = match secret {
            Some(text) => {
                signing::SigningSecret::parse(text).map_err(|e| invalid(format!("secret: {e}")))?
            }
            None => signing::SigningSecret::generate(),
        }
        .reveal();
        let now = now_ms();
        let until = now.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        let decide = |current: Option<&Subscription>, _: &[Subscription]| {
            let mut next = current
                .ok_or_else(|| Refusal::NotFound(not_found_text(id)))?
                .clone();
            let mut secrets = vec![StoredSecret {
                secret: new.clone(),
                expires_ms: None,
            }];
            // The current secret signs on through the grace; older ones keep
            // what they had left, and expired ones go.
            for old in &next.secrets {
                let expires = old.expires_ms.unwrap_or(until).min(until);
                if expires > now {
                    secrets.push(StoredSecret {
                        secret: old.secret.clone(),
                        expires_ms: Some(expires),
                    });
                }
            }
            next.secrets = secrets;
            next.updated_at = rfc3339(now);
            Ok(Write::Put {
                subscription: Box::new(next),
                reset_failures: false,
            })
        };
        let written = self.put(id, &decide).await?;
        self.audit_about(
            actor,
            "webhook.rotate_secret",
            id,
            json!({ "grace_seconds": grace.as_secs() }),
        )
        .await;
        let previous_until = (written.secrets.len() > 1).then(|| rfc3339(until));
        Ok((new, previous_until))
    }

    /// Sends again the deliveries subscription `id` skipped while disabled,
    /// since `since_ms`. Returns how many.
    pub async fn recover(&self, id: &str, since_ms: u64, actor: &Actor) -> Result<usize, Refusal> {
        self.refresh().await?;
        let sub = self
            .snapshot()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))?;
        if !sub.enabled {
            return Err(Refusal::Conflict {
                code: "subscription_disabled",
                message: format!("subscription {id} is disabled; enable it before recovering"),
            });
        }
        let n = self.store.recover(id, since_ms).await?;
        self.wake();
        self.audit_about(
            actor,
            "webhook.recover",
            id,
            json!({ "since": rfc3339(since_ms), "deliveries": n }),
        )
        .await;
        Ok(n)
    }

    /// Sends delivery `id` again now, as a manual attempt.
    pub async fn resend(&self, id: &str, actor: &Actor) -> Result<(), Refusal> {
        let mut delivery = self.store.delivery(id).await?.ok_or_else(|| {
            Refusal::NotFound(format!(
                "no delivery {id} (or it is older than the delivery retention)"
            ))
        })?;
        self.refresh().await?;
        if self.snapshot().get(&delivery.subscription).is_none() {
            return Err(not_found(&delivery.subscription));
        }
        delivery.state = DeliveryState::Pending;
        delivery.trigger = crate::backend::webhooks::Trigger::Manual;
        delivery.due_ms = now_ms();
        self.store.finish(&delivery, None).await?;
        self.wake();
        let subscription = delivery.subscription.clone();
        self.audit_about(
            actor,
            "webhook.resend",
            &subscription,
            json!({ "delivery_id": id }),
        )
        .await;
        Ok(())
    }

    /// The delivery log of subscription `id`, newest first.
    pub async fn attempts(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Attempt>, Refusal> {
        self.refresh().await?;
        if self.snapshot().get(id).is_none() {
            return Err(not_found(id));
        }
        Ok(self.store.attempts(id, cursor, limit).await?)
    }

    /// Prunes deliveries older than the retention every `every`, until dropped.
    pub async fn keep_pruned(self: Arc<Self>, every: Duration) {
        loop {
            let cutoff = now_ms().saturating_sub(
                u64::try_from(self.settings.retention.as_millis()).unwrap_or(u64::MAX),
            );
            if let Err(e) = self.store.prune(cutoff).await {
                tracing::warn!(error = %e, "could not prune the webhook delivery log");
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn ping_subscription(
        &self,
        sub: &Subscription,
        trigger: crate::backend::webhooks::Trigger,
    ) -> Result<String, Refusal> {
        let message = match trigger {
            crate::backend::webhooks::Trigger::Test => Message::test(),
            _ => Message::ping(&sub.id),
        };
        let delivery = fanout::delivery_for(sub, &message, trigger, message.body(sub.format));
        let id = delivery.id.clone();
        self.store.enqueue(std::slice::from_ref(&delivery)).await?;
        self.wake();
        Ok(id)
    }

    fn view(&self, sub: &Subscription) -> SubscriptionView {
        let failures = self
            .snapshot()
            .subscriptions
            .iter()
            .find(|(s, _)| s.id == sub.id)
            .map_or(0, |(_, n)| *n);
        SubscriptionView::new(sub, failures)
    }

    /// Changes subscription `id` to what `decide` puts.
    async fn put(&self, id: &str, decide: &Decide<'_>) -> Result<Subscription, Refusal> {
        self.change(id, decide).await?.ok_or_else(|| not_found(id))
    }

    /// Changes subscription `id`; returns what was stored (`None` after a delete).
    async fn change(&self, id: &str, decide: &Decide<'_>) -> Result<Option<Subscription>, Refusal> {
        let written = match self.store.change(id, decide).await? {
            Ok(Write::Put { subscription, .. }) => Some(*subscription),
            Ok(Write::Delete) => None,
            Err(refusal) => return Err(refusal),
        };
        self.refresh().await?;
        Ok(written)
    }

    /// Disables subscription `id` after repeated failures: stores why,
    /// audits it, counts it and tells the other subscriptions.
    async fn auto_disable(&self, id: &str, reason: String) -> Result<(), StorageError> {
        let now = rfc3339(now_ms());
        let decide = |current: Option<&Subscription>, _: &[Subscription]| match current {
            Some(sub) if sub.enabled => {
                let mut next = sub.clone();
                next.enabled = false;
                next.disabled_reason = Some(DisabledReason {
                    at: now.clone(),
                    cause: "failures".into(),
                    message: reason.clone(),
                });
                next.updated_at = now.clone();
                Ok(Write::Put {
                    subscription: Box::new(next),
                    reset_failures: false,
                })
            }
            _ => Err(Refusal::NotFound("already disabled or gone".into())),
        };
        let before = self.snapshot().get(id).cloned();
        let Ok(Write::Put { subscription, .. }) = self.store.change(id, &decide).await? else {
            return Ok(());
        };
        self.refresh().await?;
        self.metrics.subscription_disabled();
        tracing::warn!(subscription = %id, reason = %reason, "webhook subscription disabled after repeated failures");
        let system = Actor {
            name: "flowgate".into(),
            role: "system".into(),
        };
        self.audit(
            &system,
            "webhook.auto_disable",
            before.as_ref(),
            Some(&subscription),
        )
        .await;
        let message = Message::disabled(id, &subscription.name, &reason);
        let snapshot = self.snapshot();
        let deliveries: Vec<_> = snapshot
            .subscriptions
            .iter()
            .map(|(s, _)| s)
            .filter(|s| s.id != id && wants(s, &message))
            .map(|s| {
                fanout::delivery_for(
                    s,
                    &message,
                    crate::backend::webhooks::Trigger::Auto,
                    message.body(s.format),
                )
            })
            .collect();
        if let Err(e) = fanout::store(self, deliveries).await {
            tracing::error!(error = %e, subscription = %id, "webhook.disabled deliveries not stored");
        }
        Ok(())
    }

    async fn audit(
        &self,
        actor: &Actor,
        action: &'static str,
        before: Option<&Subscription>,
        after: Option<&Subscription>,
    ) {
        let view = |s: &Subscription| serde_json::to_value(SubscriptionView::new(s, 0)).ok();
        let draft = AuditDraft {
            actor: actor.clone(),
            action,
            flow: None,
            run: None,
            before: before.and_then(view),
            after: after.and_then(view),
        };
        self.write_audit(draft).await;
    }

    async fn audit_about(
        &self,
        actor: &Actor,
        action: &'static str,
        id: &str,
        mut detail: serde_json::Value,
    ) {
        detail["subscription_id"] = json!(id);
        let draft = AuditDraft {
            actor: actor.clone(),
            action,
            flow: None,
            run: None,
            before: None,
            after: Some(detail),
        };
        self.write_audit(draft).await;
    }

    async fn write_audit(&self, draft: AuditDraft) {
        if let Err(e) = self.control.apply(&Change::Nothing, &draft).await {
            tracing::warn!(error = %e, action = draft.action, "could not write an audit entry");
        }
    }
}

fn not_found_text(id: &str) -> String {
    format!("no webhook subscription {id}")
}

fn not_found(id: &str) -> Refusal {
    Refusal::NotFound(not_found_text(id))
}

/// A subscription change that is not valid (422 `invalid_subscription`).
fn invalid(message: String) -> Refusal {
    Refusal::Invalid {
        code: "invalid_subscription",
        message,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subscription_that_may_exist_gets_its_own_histograms() {
        assert_eq!(
            crate::metrics::MAX_SUBSCRIPTIONS_TRACKED,
            super::MAX_SUBSCRIPTIONS
        );
    }
}
