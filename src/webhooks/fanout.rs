//! From messages to deliveries: one delivery per subscription that wants a
//! message, stored in the outbox before anything is sent. The messages
//! come from events stored with their transitions (see
//! [`super::outbox`]), or from a ping, a test or a subscription's disabling.

use sha2::{Digest, Sha256};

use super::Webhooks;
use super::message::Message;
use crate::backend::webhooks::{Attempt, Delivery, DeliveryState, Subscription, Trigger};
use crate::backend::{StorageError, now_ms};
use crate::metrics::DeliveryOutcome;

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
/// log. When this process's dispatcher has room, pending ones are stored
/// leased to it and handed over directly; should it die, the lease runs
/// out and any dispatcher claims them. On `Err` some may not be stored:
/// storing them again stores each once.
pub async fn store(webhooks: &Webhooks, deliveries: Vec<Delivery>) -> Result<(), StorageError> {
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
            Err(e) => return Err(e),
        }
    }
    let snapshot = webhooks.snapshot();
    for delivery in skipped {
        let Some(sub) = snapshot.get(&delivery.subscription) else {
            continue;
        };
        webhooks
            .store
            .finish(&delivery, Some(&skipped_attempt(sub, &delivery)))
            .await?;
        webhooks.metrics.delivery(DeliveryOutcome::Skipped);
    }
    Ok(())
}
