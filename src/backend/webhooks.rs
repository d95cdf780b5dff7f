//! Outbound event webhooks as stored: subscriptions, the outbox of
//! deliveries waiting to be attempted, and the log of every attempt.
//!
//! The store is the durable half of delivery. An event becomes one
//! [`Delivery`] per matching subscription, written with
//! [`WebhookStore::enqueue`] before anything is sent. Dispatchers claim due
//! deliveries with a lease ([`WebhookStore::claim`] pushes their due time
//! past the lease), so a dispatcher that dies mid-attempt loses nothing: its
//! deliveries fall due again when the lease runs out. Each attempt ends with
//! [`WebhookStore::finish`], which appends the attempt to the subscription's
//! delivery log and reschedules or retires the delivery in one step.
//!
//! Delivery ids are derived from the message and the subscription, and
//! enqueueing an id already stored does nothing: an event announced by
//! several replicas (a pause every replica sees) is delivered once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::control::Page;
use super::{BoxFuture, StorageError};

/// A subscription: where to send which events, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `wh_…`, assigned at creation.
    pub id: String,
    /// A name people recognise it by.
    pub name: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Signing secrets, current first; `whsec_…`. Empty: deliveries are unsigned.
    #[serde(default)]
    pub secrets: Vec<StoredSecret>,
    /// Event types wanted; `["*"]` is every type.
    pub events: Vec<String>,
    /// Only events about these flows; empty is every flow.
    #[serde(default)]
    pub flows: Vec<String>,
    /// Only `run.ended` events with these statuses; empty is every status.
    #[serde(default)]
    pub statuses: Vec<String>,
    /// `json` or `xml`.
    pub format: Format,
    /// Whether events are delivered; a disabled subscription's events are
    /// logged as skipped.
    pub enabled: bool,
    /// Why it was disabled, when it was.
    #[serde(default)]
    pub disabled_reason: Option<DisabledReason>,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// When it last changed, RFC 3339.
    pub updated_at: String,
}

/// A signing secret as stored, with until when it still signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `whsec_<base64>`.
    pub secret: String,
    /// After this (ms since the epoch) the secret no longer signs; `None`: the current one.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// A subscription's payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `application/json`.
    #[default]
    Json,
    /// `application/xml`.
    Xml,
}

impl Format {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Xml => "xml",
        }
    }
}

/// Why a subscription is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisabledReason {
    /// When, RFC 3339.
    pub at: String,
    /// `failures` (disabled automatically) or `manual`.
    pub cause: String,
    /// What happened: the last attempt's status or error, or who disabled it.
    pub message: String,
}

/// Why a delivery was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// An event, delivered and retried automatically.
    Auto,
    /// Sent again on request.
    Manual,
    /// A `ping`, on creation or on request.
    Ping,
    /// A `test` event, on request.
    Test,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// A receiver answered 2xx.
    Succeeded,
    /// Every attempt failed.
    Failed,
    /// Its subscription was disabled; send it later with a recover.
    Skipped,
}

impl DeliveryState {
    /// The state as a table column holds it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
            DeliveryState::Skipped => "skipped",
        }
    }

    /// The state a column holds; anything unknown is pending (tried again).
    pub fn from_column(text: &str) -> Self {
        match text {
            "succeeded" => DeliveryState::Succeeded,
            "failed" => DeliveryState::Failed,
            "skipped" => DeliveryState::Skipped,
            _ => DeliveryState::Pending,
        }
    }
}

/// Orders subscriptions as every listing shows them: oldest first, then by id.
pub fn sort_subscriptions(subscriptions: &mut [(Subscription, u32)]) {
    subscriptions.sort_by(|a, b| {
        a.0.created_at
            .cmp(&b.0.created_at)
            .then(a.0.id.cmp(&b.0.id))
    });
}

/// One message for one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// A UUID, derived from the message and the subscription.
    pub id: String,
    /// The subscription.
    pub subscription: String,
    /// The message's `webhook-id`, `msg_…`.
    pub message_id: String,
    /// The event type.
    pub event: String,
    /// The flow the event is about.
    #[serde(default)]
    pub flow: Option<String>,
    /// The body as sent.
    pub payload: String,
    /// The payload's format.
    pub format: Format,
    /// Why it is sent.
    pub trigger: Trigger,
    /// Attempts made so far.
    pub attempts: u32,
    /// Where it stands.
    pub state: DeliveryState,
    /// When the event happened (ms since the epoch).
    pub created_ms: u64,
    /// When the next attempt is due (ms since the epoch).
    pub due_ms: u64,
}

/// What one attempt did: an entry of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// The log entry's id, in the order entries were written.
    #[serde(default)]
    pub id: String,
    /// The delivery (resend it with `POST /v1/admin/deliveries/{id}/resend`).
    pub delivery_id: String,
    /// The message's `webhook-id`.
    pub message_id: String,
    /// The event type.
    pub event: String,
    /// The flow the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// The attempt's number for this delivery, from 1 (0 for a skipped delivery).
    pub attempt: u32,
    /// `auto`, `manual`, `ping` or `test`.
    #[schema(value_type = String)]
    pub trigger: Trigger,
    /// `succeeded`, `failed` or `skipped`.
    pub outcome: String,
    /// When the attempt started, RFC 3339.
    pub at: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The URL it was sent to.
    pub url: String,
    /// The request's headers; signatures are removed.
    pub request_headers: BTreeMap<String, String>,
    /// The body sent.
    pub payload: String,
    /// The answer's status code; 0 when none came (network error, timeout, refused).
    pub response_status: u16,
    /// The answer's headers.
    pub response_headers: BTreeMap<String, String>,
    /// The answer's body, cut at 64 KiB.
    pub response_body: String,
    /// Whether the body was cut.
    pub response_truncated: bool,
    /// What went wrong, when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due, RFC 3339, if one will be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

/// An event owed to subscribers: written with the transition that caused
/// it (in the same transaction, or the same pipeline in the run's
/// partition), then turned into deliveries by a fan-out
/// ([`WebhookStore::claim_events`], [`WebhookStore::ack_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The message id, `msg_…`: an event written twice is kept once.
    pub id: String,
    /// Where a partitioned store keeps it: the run's id for a run's events
    /// (its partition), the message id otherwise.
    pub key: String,
    /// The message, encoded.
    pub message: String,
}

/// An event a fan-out claimed, leased to it until acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEvent {
    /// The message id.
    pub id: String,
    /// The message, encoded.
    pub message: String,
    /// Where the store found it (a partition), for the acknowledgement.
    pub place: usize,
}

/// What a subscription change decides, seeing the stored subscription (if
/// any) and every other one.
#[derive(Debug, Clone)]
pub enum Write {
    /// Store this version; with `reset_failures`, its failure count restarts at 0.
    Put {
        /// The subscription as it should be.
        subscription: Box<Subscription>,
        /// Restart the consecutive-failure count.
        reset_failures: bool,
    },
    /// Remove it, with its delivery log.
    Delete,
}

pub use crate::error::Refusal;

/// Decides a change from the stored subscription and the others; called
/// again when another writer got there first.
pub type Decide<'a> =
    dyn Fn(Option<&Subscription>, &[Subscription]) -> Result<Write, Refusal> + Send + Sync + 'a;

/// Where subscriptions, the outbox and the delivery log live.
pub trait WebhookStore: Send + Sync {
    /// Bumped by every subscription change; cheap, for the periodic check.
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// Every subscription, with its consecutive-failure count.
    fn subscriptions(&self) -> BoxFuture<'_, Result<Vec<(Subscription, u32)>, StorageError>>;

    /// Changes subscription `id` as `decide` says, atomically against
    /// concurrent changes; returns what was written.
    fn change<'a>(
        &'a self,
        id: &'a str,
        decide: &'a Decide<'a>,
    ) -> BoxFuture<'a, Result<Result<Write, Refusal>, StorageError>>;

    /// Stores deliveries not stored yet (by id): pending ones fall due at
    /// their `due_ms`, skipped ones wait for a recover. Returns the ids of
    /// those that were new.
    fn enqueue<'a>(
        &'a self,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>>;

    /// Up to `max` deliveries due at `now_ms`, leased for `lease`: nobody
    /// else claims them before it runs out.
    fn claim(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, StorageError>>;

    /// Puts claimed deliveries back in the outbox unattempted, each due at
    /// the time given (ms): their subscription has as many attempts in
    /// flight as it may. Deliveries no longer pending are left alone.
    fn defer<'a>(&'a self, due: &'a [(String, u64)]) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Ends an attempt: stores `delivery` as it stands now (pending with a
    /// new due time, or finished), appends `attempt` to its subscription's
    /// log when given, in one step.
    fn finish<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: Option<&'a Attempt>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// [`WebhookStore::finish`] after a real attempt, counting its outcome
    /// in the same step: a success resets the subscription's consecutive
    /// failures, a failure adds one. Returns the count.
    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: &'a Attempt,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<u32, StorageError>>;

    /// Delivery `id`, while it is kept.
    fn delivery<'a>(&'a self, id: &'a str)
    -> BoxFuture<'a, Result<Option<Delivery>, StorageError>>;

    /// Makes the skipped deliveries of `subscription` created at or after
    /// `since_ms` due now. Returns how many.
    fn recover<'a>(
        &'a self,
        subscription: &'a str,
        since_ms: u64,
    ) -> BoxFuture<'a, Result<usize, StorageError>>;

    /// The delivery log of `subscription`, newest first, at most `limit`
    /// entries, after `cursor`.
    fn attempts<'a>(
        &'a self,
        subscription: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<Attempt>, StorageError>>;

    /// Writes events on their own, for changes that write nothing else
    /// (a flow reloaded, a status change seen). An id already waiting is
    /// kept once.
    fn append_events<'a>(
        &'a self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Up to `max` events waiting to be fanned out, leased for `lease`:
    /// nobody else claims them before it runs out, and they come back if
    /// they are not acknowledged by then.
    fn claim_events(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedEvent>, StorageError>>;

    /// Forgets events whose deliveries are stored.
    fn ack_events<'a>(
        &'a self,
        events: &'a [ClaimedEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Events waiting to be fanned out.
    fn events_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// Deliveries waiting for an attempt (not skipped ones).
    fn outbox_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// Forgets log entries and skipped deliveries older than `before_ms`.
    fn prune(&self, before_ms: u64) -> BoxFuture<'_, Result<(), StorageError>>;
}
