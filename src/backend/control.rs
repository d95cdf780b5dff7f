//! Control-plane state shared by every replica: flow status overrides
//! (pause and unpause), token generations (rotation, with a grace period),
//! revoked admin tokens, console sessions, aborted runs, and the audit log
//! of every change.
//!
//! Every change goes through [`ControlStore::apply`], which stores the
//! change and its audit entry in one step and bumps a version number. A
//! replica keeps the whole state in memory (see [`crate::control`]) and
//! reloads it when the version moves: it is told at once through
//! [`ControlStore::watch`] and checks the version now and then in case a
//! notification was missed. Requests read only the in-memory copy.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{BoxFuture, StorageError};
use crate::flow::FlowStatus;

/// How long the audit log keeps entries.
pub const AUDIT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long an abort is remembered, for a worker that has not seen it yet.
pub const ABORT_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Most console sessions open at once; a sign-in beyond is refused until
/// some end or are revoked, so the state every replica holds stays small.
pub const MAX_SESSIONS: usize = 1_000;
/// Most console sessions open from one admin token or sign-in link: one
/// more ends the oldest of them, so no token can fill [`MAX_SESSIONS`].
pub const MAX_SESSIONS_PER_TOKEN: usize = 20;

/// The whole control state, as one replica caches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlState {
    /// Bumped by every change.
    pub version: u64,
    /// Status overrides by flow; a flow not here follows its file.
    pub statuses: HashMap<String, StatusOverride>,
    /// Token generations by flow; a flow not here is at generation 0.
    pub generations: HashMap<String, Generation>,
    /// Revoked admin token ids, with when their revocation may be forgotten
    /// (the token's own expiry, or never: `u64::MAX`), ms since the epoch.
    pub revoked: HashMap<String, u64>,
    /// Runs aborted in the last day, with when they were aborted (ms).
    pub aborted: HashMap<String, u64>,
    /// Console sessions not yet expired, by session id (revoked ones
    /// included: [`ControlState::revoked`] says which).
    pub sessions: HashMap<String, SessionEntry>,
}

/// A console session as the control state remembers it: enough to list it,
/// to end it, and to end it with the token it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionEntry {
    /// The session's id (its token's `jti`).
    pub id: String,
    /// Who: the admin token's or link's subject.
    pub subject: String,
    /// `ops`, `author` or `viewer`.
    pub role: String,
    /// When it opened, ms since the epoch.
    pub created_ms: u64,
    /// When it ends by itself, ms since the epoch.
    pub expires_ms: u64,
    /// What it was made from.
    pub source: SessionSource,
}

/// A console session as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    /// The session's id.
    pub id: String,
    /// Who is signed in.
    pub subject: String,
    /// With which role.
    pub role: String,
    /// When it opened, RFC 3339.
    pub created_at: String,
    /// When it ends by itself, RFC 3339.
    pub expires_at: String,
    /// What it was made from: `{"kind": "token" | "link", "jti": ...}`.
    /// Revoking that admin token ends the session.
    pub from: SessionSource,
}

impl From<SessionEntry> for SessionView {
    fn from(session: SessionEntry) -> Self {
        Self {
            id: session.id,
            subject: session.subject,
            role: session.role,
            created_at: rfc3339(session.created_ms),
            expires_at: rfc3339(session.expires_ms),
            from: session.source,
        }
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// What a console session was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionSource {
    /// `token` (a pasted admin token) or `link` (a one-time sign-in link).
    pub kind: String,
    /// That token's or link's `jti`: revoking an admin token ends every
    /// session made from it.
    pub jti: String,
}

/// A flow's stored status, which wins over the file's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusOverride {
    /// The status in force.
    #[serde(with = "flow_status")]
    pub status: FlowStatus,
    /// Who set it.
    pub by: String,
    /// When, RFC 3339.
    pub at: String,
}

/// A flow's token generation: tokens minted for an older one are refused,
/// except the one just before it during a grace period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The generation new tokens are minted for.
    pub current: u64,
    /// Until when (ms since the epoch) tokens of `current - 1` still work.
    pub grace_until_ms: Option<u64>,
}

impl Generation {
    /// The oldest generation accepted at `now_ms`.
    pub fn oldest_accepted(&self, now_ms: u64) -> u64 {
        match self.grace_until_ms {
            Some(until) if now_ms < until => self.current.saturating_sub(1),
            _ => self.current,
        }
    }
}

/// Who made a change: an admin token's subject and role, or `cli:<user>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The token's `sub`, or `cli:<os user>`.
    pub name: String,
    /// `ops`, `author`, `viewer`, or `cli`.
    pub role: String,
}

/// A change to the control state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Sets (or, with `None`, removes) a flow's status override.
    Status {
        /// The flow.
        flow: String,
        /// The status to hold; `None` follows the file again.
        status: Option<FlowStatus>,
    },
    /// Moves a flow to its next token generation.
    Rotate {
        /// The flow.
        flow: String,
        /// How long tokens of the generation before keep working.
        grace: Option<Duration>,
    },
    /// Refuses an admin token from now on.
    Revoke {
        /// The token's `jti`.
        jti: String,
        /// When the token expires anyway (ms), so the revocation can be forgotten then.
        until_ms: u64,
    },
    /// Remembers a console session that just opened.
    OpenSession(SessionEntry),
    /// Marks a run aborted, for whichever worker holds or will claim it.
    Abort {
        /// The run.
        run_id: String,
    },
    /// Nothing to store: the audit entry alone (a reload, a replay).
    Nothing,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The entry's id, in the order entries were written.
    pub id: String,
    /// When, RFC 3339.
    pub at: String,
    /// Who.
    pub actor: String,
    /// With which role.
    pub role: String,
    /// What: `flow.pause`, `flow.unpause`, `token.issue`, `token.rotate`,
    /// `token.revoke`, `session.open`, `session.revoke`, `flows.reload`,
    /// `run.replay`, `run.abort`.
    pub action: String,
    /// The flow it concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// The run it concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The state before, where it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// The state after, where it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

impl AuditDraft {
    /// The entry as stored, written at `at` (RFC 3339); the store gives
    /// it its id when read back.
    pub fn entry(&self, at: String) -> AuditEntry {
        AuditEntry {
            id: String::new(),
            at,
            actor: self.actor.name.clone(),
            role: self.actor.role.clone(),
            action: self.action.to_owned(),
            flow: self.flow.clone(),
            run: self.run.clone(),
            before: self.before.clone(),
            after: self.after.clone(),
        }
    }
}

/// An audit entry before the store gives it an id and a time.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    /// Who.
    pub actor: Actor,
    /// What (see [`AuditEntry::action`]).
    pub action: &'static str,
    /// The flow it concerns.
    pub flow: Option<String>,
    /// The run it concerns.
    pub run: Option<String>,
    /// The state before.
    pub before: Option<serde_json::Value>,
    /// The state after.
    pub after: Option<serde_json::Value>,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor's.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only about this flow.
    pub flow: Option<String>,
    /// Only written at or after this time (ms since the epoch).
    pub after_ms: Option<u64>,
    /// Only written before this time (ms since the epoch).
    pub before_ms: Option<u64>,
}

impl AuditFilter {
    /// Does `entry`, written at `at_ms`, pass?
    pub fn matches(&self, entry: &AuditEntry, at_ms: u64) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == entry.actor)
            && self.action.as_ref().is_none_or(|a| *a == entry.action)
            && self
                .flow
                .as_ref()
                .is_none_or(|f| entry.flow.as_ref() == Some(f))
            && self.after_ms.is_none_or(|t| at_ms >= t)
            && self.before_ms.is_none_or(|t| at_ms < t)
    }
}

/// One page of a list, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The entries.
    pub data: Vec<T>,
    /// Where the next page starts, when there is one.
    pub next_cursor: Option<String>,
}

/// Where control state lives.
pub trait ControlStore: Send + Sync {
    /// The current version; cheap, for the periodic check.
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// The whole state.
    fn load(&self) -> BoxFuture<'_, Result<ControlState, StorageError>>;

    /// Stores `change` and its audit entry in one step, bumps the version
    /// and tells every watcher. Returns the flow's generation after a
    /// [`Change::Rotate`], and the new version.
    fn apply<'a>(
        &'a self,
        change: &'a Change,
        audit: &'a AuditDraft,
    ) -> BoxFuture<'a, Result<Applied, StorageError>>;

    /// Audit entries passing `filter`, newest first, at most `limit`,
    /// starting after `cursor` (from an earlier page).
    fn audit<'a>(
        &'a self,
        filter: &'a AuditFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<AuditEntry>, StorageError>>;

    /// Subscribes to change notifications: the receiver gets `()` after
    /// each change anywhere, and ends when the subscription broke (call
    /// again to resubscribe). Notifications are best effort: callers check
    /// [`ControlStore::version`] now and then too.
    fn watch(&self) -> BoxFuture<'_, Result<mpsc::Receiver<()>, StorageError>>;
}

/// What [`ControlStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The version after the change.
    pub version: u64,
    /// The flow's generation, after a rotation.
    pub generation: Option<Generation>,
}

/// `FlowStatus` as written in flow files.
mod flow_status {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::flow::FlowStatus;

    pub fn serialize<S: Serializer>(status: &FlowStatus, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(status.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FlowStatus, D::Error> {
        let text = String::deserialize(d)?;
        FlowStatus::parse(&text).ok_or_else(|| D::Error::custom(format!("unknown status `{text}`")))
    }
}
