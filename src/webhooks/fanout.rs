//! From events to deliveries: every lifecycle event this process announces
//! becomes one message, and one delivery per subscription that wants it,
//! stored in the outbox before anything is sent.
//!
//! The fan-out listens to the event bus only while there is at least one
//! subscription, so a gateway without subscriptions builds no events at
//! all. Events are taken in batches (whatever is waiting, up to
//! [`BATCH`]) and stored in one outbox write. A failed write, or events the
//! bus dropped because the fan-out fell behind, are logged and counted
//! (`flowgate_webhook_events_lost_total`); runs never wait for webhooks.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::message::{Message, Messages};
use super::{Webhooks, wants};
use crate::backend::now_ms;
use crate::backend::webhooks::{Attempt, Delivery, DeliveryState, Subscription, Trigger};
use crate::flow::SharedCatalog;
use crate::lifecycle::Lifecycle;
use crate::metrics::DeliveryOutcome;

/// Most events stored in one outbox write.
pub const BATCH: usize = 256;

/// The delivery of `message` to `sub`, carrying `payload`. Its id is
/// derived from both, so the same message stored twice is one delivery.
pub fn delivery_for(
    sub: &Subscription,
    message: &Message,
    trigger: Trigger,
    payload: String,
) -> Delivery {
    let digest = Sha256::digest(format!("{}\n{}", message.id, sub.id).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let skipped = trigger == Trigger::Auto && !sub.enabled;
    Delivery {
        id: uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string(),
        subscription: sub.id.clone(),
        message_id: message.id.clone(),
        event: message.event.to_owned(),
        flow: message.flow.as_ref().map(|(id, _)| id.clone()),
        payload,
        format: sub.format,
        trigger,
        attempts: 0,
        state: if skipped {
            DeliveryState::Skipped
        } else {
            DeliveryState::Pending
        },
        created_ms: message.at_ms,
        due_ms: message.at_ms,
    }
}

/// The log entry of a delivery skipped because its subscription is disabled.
pub fn skipped_attempt(sub: &Subscription, delivery: &Delivery) -> Attempt {
    Attempt {
        id: String::new(),
        delivery_id: delivery.id.clone(),
        message_id: delivery.message_id.clone(),
        event: delivery.event.clone(),
        flow: delivery.flow.clone(),
        attempt: 0,
        trigger: delivery.trigger,
        outcome: "skipped".into(),
        at: super::message::rfc3339(now_ms()),
        duration_ms: 0,
        url: sub.url.clone(),
        request_headers: Default::default(),
        payload: delivery.payload.clone(),
        response_status: 0,
        response_headers: Default::default(),
        response_body: String::new(),
        response_truncated: false,
        error: Some("not sent: the subscription is disabled; recover it to send".into()),
        next_attempt_at: None,
    }
}

/// Stores `deliveries`: pending ones in the outbox, skipped ones in the
/// log. Failures are logged and counted. When this process's dispatcher has
/// room, pending ones are stored leased to it and handed over directly;
/// should it die, the lease runs out and any dispatcher claims them.
pub async fn store(webhooks: &Webhooks, deliveries: Vec<Delivery>) {
    let (mut pending, skipped): (Vec<_>, Vec<_>) = deliveries
        .into_iter()
        .partition(|d| d.state == DeliveryState::Pending);
    // With a dispatcher here, as many as it has room for are stored leased
    // to it and handed over; the rest fall due at once for any dispatcher.
    let dispatching = webhooks.handoff_rx.lock().expect("handoff lock").is_none();
    let room = if dispatching {
        webhooks.handoff.capacity().min(pending.len())
    } else {
        0
    };
    let leased_until = now_ms() + webhooks.settings.lease().as_millis() as u64;
    for delivery in &mut pending[..room] {
        delivery.due_ms = leased_until;
    }
    if !pending.is_empty() {
        match webhooks.store.enqueue(&pending).await {
            Ok(new) => {
                if room < pending.len() {
                    webhooks.wake();
                }
                let new: std::collections::HashSet<String> = new.into_iter().collect();
                for delivery in pending.into_iter().take(room) {
                    // Stored by another replica first: it sends that one.
                    if new.contains(&delivery.id) {
                        let _ = webhooks.handoff.try_send(delivery);
                    }
                }
            }
            Err(e) => {
                webhooks.metrics.events_lost(pending.len() as u64);
                tracing::error!(error = %e, deliveries = pending.len(), "webhook deliveries lost: the outbox is unavailable");
            }
        }
    }
    let snapshot = webhooks.snapshot();
    for delivery in skipped {
        let Some(sub) = snapshot.get(&delivery.subscription) else {
            continue;
        };
        webhooks.metrics.delivery(DeliveryOutcome::Skipped);
        if let Err(e) = webhooks
            .store
            .finish(&delivery, Some(&skipped_attempt(sub, &delivery)))
            .await
        {
            webhooks.metrics.events_lost(1);
            tracing::error!(error = %e, "a skipped webhook delivery could not be logged");
        }
    }
}

/// Turns this process's events into deliveries until the bus closes.
pub async fn run(webhooks: Arc<Webhooks>, lifecycle: Arc<Lifecycle>, catalog: SharedCatalog) {
    let mut changed = webhooks.watch();
    let mut messages = Messages::default();
    loop {
        if webhooks.snapshot().subscriptions.is_empty() {
            if changed.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut events = lifecycle.subscribe();
        loop {
            tokio::select! {
                received = events.recv() => {
                    let first = match received {
                        Ok(event) => event,
                        Err(RecvError::Lagged(n)) => {
                            webhooks.metrics.events_lost(n);
                            tracing::error!(events = n, "webhook events lost: the fan-out fell behind the event bus");
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match events.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(TryRecvError::Lagged(n)) => webhooks.metrics.events_lost(n),
                            Err(_) => break,
                        }
                    }
                    let snapshot = webhooks.snapshot();
                    let catalog = catalog.get();
                    let mut deliveries = Vec::new();
                    for event in &batch {
                        let wanted = |event_type: &str| {
                            snapshot.subscriptions.iter().any(|(sub, _)| {
                                sub.events.iter().any(|e| e == "*" || e == event_type)
                            })
                        };
                        let Some(message) = messages.build_if(event, &catalog, wanted) else {
                            continue;
                        };
                        let mut bodies: [Option<String>; 2] = [None, None];
                        for (sub, _) in &snapshot.subscriptions {
                            if !wants(sub, &message) {
                                continue;
                            }
                            let body = bodies[sub.format as usize]
                                .get_or_insert_with(|| message.body(sub.format))
                                .clone();
                            deliveries.push(delivery_for(sub, &message, Trigger::Auto, body));
                        }
                    }
                    if !deliveries.is_empty() {
                        store(&webhooks, deliveries).await;
                    }
                }
                result = changed.changed() => {
                    if result.is_err() {
                        return;
                    }
                    if webhooks.snapshot().subscriptions.is_empty() {
                        break;
                    }
                }
            }
        }
    }
}
