//! The dispatcher: claims due deliveries from the outbox and attempts them.
//!
//! Each process runs one. It claims up to the number of free attempt slots
//! (at most [`CONCURRENCY`] attempts at once), leased for the attempt
//! timeout plus [`LEASE_MARGIN`]: a dispatcher that dies mid-attempt leaves
//! its deliveries to fall due again when the lease runs out, so every
//! delivery is attempted at least once. It polls every [`POLL`] and is woken
//! at once when this process stores a delivery.
//!
//! No subscription has more than `webhooks.max_in_flight_per_subscription`
//! attempts in flight from one process. A claimed delivery whose
//! subscription is at that limit waits here for the next free slot when
//! that should come within [`MAX_QUEUED_WAIT`] (its place in line times the
//! subscription's recent attempt time); otherwise it goes back to the
//! outbox unattempted, due when its turn is likely to come. So a slow
//! receiver's backlog never takes the slots, or the claims, that other
//! subscriptions need, and a fast receiver's burst never waits for a poll.
//!
//! An attempt is a POST of the stored payload with the Standard Webhooks
//! headers (signed with every secret still in force). A 2xx answer is a
//! success; anything else — 3xx (redirects are not followed), 4xx, 5xx,
//! a timeout, a refused address, a DNS, TLS or connection error — is a
//! failure. An event's failed attempt is retried after the next wait of the
//! retry schedule, or after the receiver's `Retry-After` when that is
//! longer (at most [`MAX_RETRY_AFTER`]); after the last wait it is given up.
//! Pings, test events and manual resends are attempted once. Every attempt,
//! whatever carried it, counts toward the subscription's consecutive
//! failures; at [`super::DISABLE_AFTER`] the subscription is disabled.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use super::Webhooks;
use super::message::rfc3339;
use super::signing::{SigningSecret, signature_header};
use crate::backend::now_ms;
use crate::backend::webhooks::{Attempt, Delivery, DeliveryState, Format, Subscription, Trigger};
use crate::metrics::DeliveryOutcome;
use crate::outbound::SendError;

/// Attempts one process makes at once.
pub const CONCURRENCY: usize = 256;
/// Deliveries handed straight to the dispatcher that may wait for a slot.
pub const HANDOFF: usize = 1024;
/// Time a claim holds beyond the attempt timeout.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// How often the outbox is checked for due deliveries.
pub const POLL: Duration = Duration::from_millis(200);
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The most of a response body kept in the log.
pub const MAX_LOGGED_BODY: usize = 64 * 1024;
/// Attempts of one process being recorded at once, their answers in.
const RECORDING: usize = 1024;
/// How often the outbox depth is sampled for the metrics.
const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// The shortest a delivery put back for its subscription's turn waits.
const MIN_DEFER: Duration = Duration::from_millis(100);

/// The longest a claimed delivery waits here for its subscription's turn;
/// one expected to wait longer goes back to the outbox.
const MAX_QUEUED_WAIT: Duration = Duration::from_secs(2);
/// Most deliveries waiting here for one subscription's turn.
const MAX_QUEUED: usize = 256;
/// When a subscription's attempts have not ended yet, how long the
/// deliveries beyond its first round wait before they are looked at again.
const UNKNOWN_TURN: Duration = Duration::from_secs(1);

/// Attempts in flight, deliveries waiting their turn, and how long attempts
/// take, by subscription.
#[derive(Default)]
struct Turns {
    by_subscription: Mutex<HashMap<String, Turn>>,
}

#[derive(Default)]
struct Turn {
    /// Attempts in flight from this process.
    running: usize,
    /// Claimed deliveries waiting for one of those to end.
    waiting: std::collections::VecDeque<Delivery>,
    /// Recent attempt time, smoothed, in ms.
    typical_ms: f64,
}

/// Where a claimed delivery goes.
enum Placed {
    /// Its subscription has a free slot: attempt it now.
    Start(Delivery),
    /// It waits here for its subscription's next free slot.
    Queued,
    /// Back to the outbox, due at this time (ms).
    Later(Delivery, u64),
}

impl Turns {
    /// Places `delivery` for its subscription, which may have `limit`
    /// attempts in flight.
    fn place(&self, delivery: Delivery, limit: usize) -> Placed {
        let mut all = self.by_subscription.lock().expect("turns lock");
        let turn = all.entry(delivery.subscription.clone()).or_default();
        if turn.running < limit {
            turn.running += 1;
            return Placed::Start(delivery);
        }
        if turn.typical_ms == 0.0 {
            // No attempt has ended yet, so how long they take is unknown:
            // one round waits here, the rest look again in a while.
            if turn.waiting.len() < limit {
                turn.waiting.push_back(delivery);
                return Placed::Queued;
            }
            return Placed::Later(delivery, now_ms() + UNKNOWN_TURN.as_millis() as u64);
        }
        // Rounds of `limit` attempts before this one's turn.
        let rounds = (turn.waiting.len() + 1).div_ceil(limit) as f64;
        let wait = Duration::from_secs_f64((rounds * turn.typical_ms / 1000.0).min(60.0));
        if wait <= MAX_QUEUED_WAIT && turn.waiting.len() < MAX_QUEUED {
            turn.waiting.push_back(delivery);
            return Placed::Queued;
        }
        let due = now_ms() + wait.max(MIN_DEFER).as_millis() as u64;
        Placed::Later(delivery, due)
    }

    /// Ends an attempt to `subscription` that took `took`: the next
    /// delivery waiting for its turn, which takes over the slot, if any.
    fn end(&self, subscription: &str, took: Duration) -> Option<Delivery> {
        let mut all = self.by_subscription.lock().expect("turns lock");
        let turn = all.get_mut(subscription)?;
        let ms = took.as_secs_f64() * 1000.0;
        turn.typical_ms = if turn.typical_ms == 0.0 {
            ms
        } else {
            0.8 * turn.typical_ms + 0.2 * ms
        };
        if let Some(next) = turn.waiting.pop_front() {
            return Some(next);
        }
        turn.running = turn.running.saturating_sub(1);
        // An idle subscription keeps its attempt time for its next burst;
        // the idle ones of subscriptions long gone are let go now and then.
        if all.len() > 2 * super::MAX_SUBSCRIPTIONS {
            all.retain(|_, turn| turn.running > 0);
        }
        None
    }
}

/// Attempts deliveries for one process.
pub struct Dispatcher {
    webhooks: Arc<Webhooks>,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    turns: Turns,
    /// Told when an attempt ends, so deliveries put back can be looked at again.
    ended: tokio::sync::Notify,
    /// Attempts whose answer came and whose record is being written; when
    /// all are taken, the next attempt waits (the store sets the pace).
    recording: Arc<Semaphore>,
}

impl Dispatcher {
    /// A dispatcher for `webhooks`' outbox.
    pub fn new(webhooks: Arc<Webhooks>) -> Self {
        let settings = webhooks.settings();
        let mut builder = crate::outbound::guarded_builder(settings.allow_private)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout);
        if let Some(pem) = &settings.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
                builder = builder.add_root_certificate(cert);
            }
        }
        Self {
            client: builder
                .build()
                .expect("the webhook client config is static"),
            webhooks,
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
            turns: Turns::default(),
            ended: tokio::sync::Notify::new(),
            recording: Arc::new(Semaphore::new(RECORDING)),
        }
    }

    /// Of `claimed`, those whose subscription has an attempt slot free
    /// (each taking it). The others wait here for their subscription's
    /// next slot when that should come soon, or go back to the outbox, due
    /// when their turn is likely to come.
    async fn take_turns(&self, claimed: Vec<Delivery>) -> Vec<Delivery> {
        let limit = self.webhooks.settings().per_subscription.max(1);
        let mut startable = Vec::with_capacity(claimed.len());
        let mut later = Vec::new();
        for delivery in claimed {
            match self.turns.place(delivery, limit) {
                Placed::Start(delivery) => startable.push(delivery),
                Placed::Queued => {}
                Placed::Later(delivery, due) => later.push((delivery.id, due)),
            }
        }
        if later.is_empty() {
            return startable;
        }
        if let Err(e) = self.webhooks.store.defer(&later).await {
            // They stay leased and fall due when the lease runs out.
            tracing::warn!(error = %e, "could not put deliveries back for their turn");
        }
        startable
    }

    /// Attempts `delivery` (its subscription's slot taken) in a task of its
    /// own, holding `slot`; then the deliveries of the same subscription
    /// that wait for that slot, one after another.
    fn spawn_attempt(
        self: &Arc<Self>,
        delivery: Delivery,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut next = Some(delivery);
            while let Some(delivery) = next {
                let subscription = delivery.subscription.clone();
                let started = Instant::now();
                let Ok(recording) = this.recording.clone().acquire_owned().await else {
                    break;
                };
                // The receiver's slot is free once its answer is in; the
                // attempt is recorded meanwhile.
                let (sent, answered) = tokio::sync::oneshot::channel();
                let attempt = this.clone();
                tokio::spawn(async move {
                    attempt.attempt(delivery, sent).await;
                    drop(recording);
                });
                let _ = answered.await;
                next = this.turns.end(&subscription, started.elapsed());
            }
            drop(slot);
            this.ended.notify_waiters();
        });
    }

    /// Claims and attempts deliveries until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        if let Some(handoff) = self.webhooks.take_handoff() {
            tokio::spawn(self.clone().take_handed_over(handoff));
        }
        let lease = self.webhooks.settings().lease();
        let mut depth_sampled = Instant::now() - DEPTH_EVERY;
        loop {
            if depth_sampled.elapsed() >= DEPTH_EVERY {
                depth_sampled = Instant::now();
                if let Ok(depth) = self.webhooks.store.outbox_depth().await {
                    self.webhooks.metrics.outbox_depth(depth);
                }
                if let Ok(pending) = self.webhooks.store.events_depth().await {
                    self.webhooks.metrics.events_pending(pending);
                }
            }
            let free = self.slots.available_permits();
            if free == 0 {
                // Wait for a slot, without holding it.
                drop(self.slots.acquire().await);
                continue;
            }
            let claimed = match self.webhooks.store.claim(now_ms(), lease, free).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim webhook deliveries");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let full = claimed.len() == free;
            let startable = self.take_turns(claimed).await;
            let progressed = !startable.is_empty();
            for delivery in startable {
                let Ok(slot) = self.slots.clone().acquire_owned().await else {
                    return;
                };
                self.spawn_attempt(delivery, slot);
            }
            if !full || !progressed {
                tokio::select! {
                    () = self.webhooks.wake.notified() => {}
                    () = self.ended.notified(), if !progressed => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// Attempts the deliveries this process stored leased to itself.
    async fn take_handed_over(self: Arc<Self>, mut handoff: tokio::sync::mpsc::Receiver<Delivery>) {
        let mut batch = Vec::new();
        // Whatever has arrived is looked at together, so the deliveries put
        // back for their subscription's turn cost one write.
        while handoff.recv_many(&mut batch, HANDOFF).await > 0 {
            let now = now_ms();
            // One that waited past its lease may have been claimed already.
            batch.retain(|delivery| delivery.due_ms > now);
            for delivery in self.take_turns(std::mem::take(&mut batch)).await {
                let Ok(slot) = self.slots.clone().acquire_owned().await else {
                    return;
                };
                self.spawn_attempt(delivery, slot);
            }
        }
    }

    /// Makes one attempt of `delivery` and records it; `sent` is told
    /// when the receiver's answer is in (or no request is made).
    pub async fn attempt(&self, mut delivery: Delivery, sent: tokio::sync::oneshot::Sender<()>) {
        let webhooks = &self.webhooks;
        let mut snapshot = webhooks.snapshot();
        let stale = match snapshot.get(&delivery.subscription) {
            // Perhaps created a moment ago elsewhere.
            None => true,
            // Perhaps enabled a moment ago elsewhere (an `enable` and a
            // `recover` from the CLI, back to back).
            Some(sub) => delivery.trigger == Trigger::Auto && !sub.enabled,
        };
        if stale {
            let _ = webhooks.ensure_current().await;
            snapshot = webhooks.snapshot();
        }
        let Some(sub) = snapshot.get(&delivery.subscription) else {
            delivery.state = DeliveryState::Failed;
            if let Err(e) = webhooks.store.finish(&delivery, None).await {
                tracing::warn!(error = %e, "could not drop a delivery of a deleted subscription");
            }
            return;
        };
        if delivery.trigger == Trigger::Auto && !sub.enabled {
            delivery.state = DeliveryState::Skipped;
            webhooks.metrics.delivery(DeliveryOutcome::Skipped);
            let attempt = super::fanout::skipped_attempt(sub, &delivery);
            if let Err(e) = webhooks.store.finish(&delivery, Some(&attempt)).await {
                tracing::warn!(error = %e, "could not log a skipped delivery");
            }
            return;
        }
        if delivery.attempts == 0 {
            let lag = now_ms().saturating_sub(delivery.created_ms);
            delivery.due_ms = now_ms();
            webhooks
                .metrics
                .delivery_lag(&sub.id, Duration::from_millis(lag));
        }
        delivery.attempts += 1;
        let mut attempt = self.send(sub, &delivery).await;
        let _ = sent.send(());
        webhooks
            .metrics
            .attempt_duration(&sub.id, Duration::from_millis(attempt.duration_ms));
        let succeeded = attempt.outcome == "succeeded";
        let retry_after = attempt_retry_after(&attempt);
        delivery.state = if succeeded {
            DeliveryState::Succeeded
        } else {
            match self.next_wait(&delivery, retry_after) {
                Some(wait) => {
                    delivery.due_ms = now_ms() + wait.as_millis() as u64;
                    attempt.next_attempt_at = Some(rfc3339(delivery.due_ms));
                    DeliveryState::Pending
                }
                None => DeliveryState::Failed,
            }
        };
        webhooks.metrics.delivery(if succeeded {
            DeliveryOutcome::Succeeded
        } else {
            DeliveryOutcome::Failed
        });
        self.record(&delivery, &attempt, succeeded, &sub.id).await;
    }

    /// Records the attempt in the delivery log; a subscription whose
    /// failures in a row reach [`super::DISABLE_AFTER`] is disabled.
    async fn record(&self, delivery: &Delivery, attempt: &Attempt, succeeded: bool, sub: &str) {
        let webhooks = &self.webhooks;
        match webhooks
            .store
            .record_attempt(delivery, attempt, succeeded)
            .await
        {
            Ok(failures) if failures >= super::DISABLE_AFTER => {
                let last = match (&attempt.error, attempt.response_status) {
                    (Some(error), 0) => error.clone(),
                    (_, status) => format!("HTTP {status}"),
                };
                let reason = format!(
                    "{failures} consecutive failed attempts; the last at {}: {last}",
                    attempt.at
                );
                if let Err(e) = webhooks.auto_disable(sub, reason).await {
                    tracing::warn!(error = %e, "could not disable a failing subscription");
                }
            }
            Ok(_) => {}
            // Unrecorded: the lease runs out and the delivery is attempted again.
            Err(e) => {
                tracing::warn!(error = %e, delivery = %delivery.id, "could not record a webhook attempt")
            }
        }
    }

    /// The wait before the next attempt, or `None` when this was the last.
    fn next_wait(&self, delivery: &Delivery, retry_after: Option<Duration>) -> Option<Duration> {
        if delivery.trigger != Trigger::Auto {
            return None;
        }
        let schedule = &self.webhooks.settings().retry_schedule;
        let wait = *schedule.get(delivery.attempts as usize - 1)?;
        Some(match retry_after {
            Some(asked) => wait.max(asked.min(MAX_RETRY_AFTER)),
            None => wait,
        })
    }

    async fn send(&self, sub: &Subscription, delivery: &Delivery) -> Attempt {
        let started = Instant::now();
        let at = now_ms();
        let timestamp = at / 1000;
        let content_type = match delivery.format {
            Format::Json => "application/json",
            Format::Xml => "application/xml",
        };
        let mut headers = BTreeMap::new();
        headers.insert("content-type".to_owned(), content_type.to_owned());
        headers.insert("webhook-id".to_owned(), delivery.message_id.clone());
        headers.insert("webhook-timestamp".to_owned(), timestamp.to_string());
        let secrets: Vec<SigningSecret> = sub
            .secrets
            .iter()
            .filter(|s| s.expires_ms.is_none_or(|until| until > at))
            .filter_map(|s| SigningSecret::parse(&s.secret).ok())
            .collect();
        let signature = (!secrets.is_empty()).then(|| {
            let refs: Vec<&SigningSecret> = secrets.iter().collect();
            signature_header(
                &refs,
                &delivery.message_id,
                timestamp,
                delivery.payload.as_bytes(),
            )
        });
        let mut attempt = Attempt {
            id: String::new(),
            delivery_id: delivery.id.clone(),
            message_id: delivery.message_id.clone(),
            event: delivery.event.clone(),
            flow: delivery.flow.clone(),
            attempt: delivery.attempts,
            trigger: delivery.trigger,
            outcome: "failed".into(),
            at: rfc3339(at),
            duration_ms: 0,
            url: sub.url.clone(),
            request_headers: headers.clone(),
            payload: delivery.payload.clone(),
            response_status: 0,
            response_headers: BTreeMap::new(),
            response_body: String::new(),
            response_truncated: false,
            error: None,
            next_attempt_at: None,
        };
        if signature.is_some() {
            attempt
                .request_headers
                .insert("webhook-signature".into(), "[removed]".into());
        }
        let result = self
            .exchange(sub, delivery, &headers, signature.as_deref(), &mut attempt)
            .await;
        attempt.duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) if (200..300).contains(&attempt.response_status) => {
                attempt.outcome = "succeeded".into();
            }
            Ok(()) if (300..400).contains(&attempt.response_status) => {
                attempt.error = Some(format!(
                    "HTTP {}: redirects are not followed; point the subscription at the final URL",
                    attempt.response_status
                ));
            }
            Ok(()) => {
                attempt.error = Some(format!(
                    "HTTP {}: only 2xx answers count as delivered",
                    attempt.response_status
                ));
            }
            Err(e) => attempt.error = Some(e.to_string()),
        }
        attempt
    }

    async fn exchange(
        &self,
        sub: &Subscription,
        delivery: &Delivery,
        headers: &BTreeMap<String, String>,
        signature: Option<&str>,
        attempt: &mut Attempt,
    ) -> Result<(), SendError> {
        let url = reqwest::Url::parse(&sub.url)
            .map_err(|e| SendError::Refused(format!("invalid url: {e}")))?;
        crate::outbound::check_literal(&url, self.webhooks.settings().allow_private)
            .map_err(|e| SendError::Refused(e.to_string()))?;
        let mut request = self.client.post(url).body(delivery.payload.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(signature) = signature {
            request = request.header("webhook-signature", signature);
        }
        let mut response = request.send().await.map_err(SendError::from_reqwest)?;
        attempt.response_status = response.status().as_u16();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            attempt
                .response_headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(SendError::from_reqwest)? {
            let room = MAX_LOGGED_BODY.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                attempt.response_truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        attempt.response_body = String::from_utf8_lossy(&body).into_owned();
        Ok(())
    }
}

/// The receiver's `Retry-After`, in seconds or as an HTTP date.
fn attempt_retry_after(attempt: &Attempt) -> Option<Duration> {
    let value = attempt.response_headers.get("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}
