//! The control plane as one replica sees it: an in-memory copy of the
//! shared control state (pauses, token generations, revoked admin tokens,
//! aborted runs), kept current, and the changes ops and authors make.
//!
//! Requests read only the copy, so a pause or a rotation adds no store round
//! trip to a trigger request. The copy is reloaded when the store says the
//! version moved: at once on a change notification, and in any case within
//! [`CHECK_EVERY`], which bounds how long a missed notification delays a
//! change. A change made here (through the admin API or the CLI) is applied
//! to the copy at once too.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::backend::StorageError;
use crate::backend::control::{
    Actor, Applied, AuditDraft, Change, ControlState, ControlStore, Generation, MAX_SESSIONS,
    MAX_SESSIONS_PER_TOKEN, SessionEntry,
};
use crate::error::Refusal;
use crate::flow::{Flow, FlowStatus, SharedCatalog};
use crate::lifecycle::{FlowEvent, Lifecycle};

/// Longest grace period a rotation may give the generation before.
pub const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// How often the version is checked, in case a notification was missed.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Wait before subscribing again after the notification channel broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// One replica's copy of the control state.
pub struct Control {
    store: Arc<dyn ControlStore>,
    state: RwLock<Arc<ControlState>>,
    loaded: watch::Sender<Option<u64>>,
    events: Option<(Arc<Lifecycle>, SharedCatalog)>,
}

impl Control {
    /// A copy of `store`'s state, empty until [`Control::refresh`] or
    /// [`Control::keep_current`] loads it.
    pub fn new(store: Arc<dyn ControlStore>) -> Self {
        Self {
            store,
            state: RwLock::new(Arc::new(ControlState::default())),
            loaded: watch::channel(None).0,
            events: None,
        }
    }

    /// Publishes `flow.status_changed` on `lifecycle`'s bus whenever this
    /// copy sees a flow's status change (a pause or unpause made anywhere);
    /// `catalog` gives the file's status when an override is removed.
    pub fn with_events(mut self, lifecycle: Arc<Lifecycle>, catalog: SharedCatalog) -> Self {
        self.events = Some((lifecycle, catalog));
        self
    }

    /// The current copy.
    pub fn state(&self) -> Arc<ControlState> {
        self.state.read().expect("control lock poisoned").clone()
    }

    /// True once the state was loaded from the store.
    pub fn is_loaded(&self) -> bool {
        self.loaded.borrow().is_some()
    }

    /// Told the version each time the copy changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.loaded.subscribe()
    }

    /// `flow`'s status: the stored override, or the file's.
    pub fn status(&self, flow: &Flow) -> FlowStatus {
        // Read in place: a trigger request asks this, so no clone.
        self.state
            .read()
            .expect("control lock poisoned")
            .statuses
            .get(&flow.id)
            .map_or(flow.status, |o| o.status)
    }

    /// `flow_id`'s token generation.
    pub fn generation(&self, flow_id: &str) -> Generation {
        self.state
            .read()
            .expect("control lock poisoned")
            .generations
            .get(flow_id)
            .copied()
            .unwrap_or_default()
    }

    /// Has the admin token `jti` been revoked?
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.state().revoked.contains_key(jti)
    }

    /// The console session `id`, while it is open: opened here or on
    /// another replica, not expired, not revoked, and the admin token or
    /// sign-in link it was made from not revoked either.
    pub fn session(&self, id: &str) -> Option<SessionEntry> {
        let state = self.state.read().expect("control lock poisoned");
        state
            .sessions
            .get(id)
            .filter(|session| is_open(&state, session, crate::backend::now_ms()))
            .cloned()
    }

    /// Every open console session, newest first.
    pub fn sessions(&self) -> Vec<SessionEntry> {
        let state = self.state();
        let now = crate::backend::now_ms();
        let mut open: Vec<SessionEntry> = state
            .sessions
            .values()
            .filter(|session| is_open(&state, session, now))
            .cloned()
            .collect();
        open.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        open
    }

    /// Remembers `session`, which `actor` just opened, on every replica.
    /// Refused while [`MAX_SESSIONS`] are open.
    pub async fn open_session(&self, session: SessionEntry, actor: &Actor) -> Result<(), Refusal> {
        let open = self.sessions();
        // The same token's oldest sessions give way first (newest first).
        let mut same: Vec<&SessionEntry> = open
            .iter()
            .filter(|s| s.source.jti == session.source.jti)
            .collect();
        while same.len() >= MAX_SESSIONS_PER_TOKEN {
            let oldest = same.pop().expect("not empty");
            let mut audit = draft(actor, "session.revoke");
            audit.before = Some(json!({ "session": oldest.id, "subject": oldest.subject }));
            audit.after = Some(json!({ "superseded_by": session.id }));
            let change = Change::Revoke {
                jti: oldest.id.clone(),
                until_ms: oldest.expires_ms,
            };
            self.apply(change, audit).await?;
        }
        if self.sessions().len() >= MAX_SESSIONS {
            return Err(Refusal::Busy {
                code: "too_many_sessions",
                message: format!(
                    "{MAX_SESSIONS} console sessions are open already; revoke some (flowgate sessions list) or wait for them to end"
                ),
            });
        }
        let mut audit = draft(actor, "session.open");
        audit.after = Some(json!({
            "session": session.id,
            "role": session.role,
            "from": session.source.kind,
        }));
        self.apply(Change::OpenSession(session), audit).await?;
        Ok(())
    }

    /// Ends the console session `id` on every replica, on behalf of `actor`.
    pub async fn revoke_session(&self, id: &str, actor: &Actor) -> Result<(), Refusal> {
        let session = self
            .session(id)
            .ok_or_else(|| Refusal::NotFound("no open console session has that id".into()))?;
        let mut audit = draft(actor, "session.revoke");
        audit.before = Some(json!({ "session": session.id, "subject": session.subject }));
        let change = Change::Revoke {
            jti: session.id,
            until_ms: session.expires_ms,
        };
        self.apply(change, audit).await?;
        Ok(())
    }

    /// Has run `run_id` been aborted?
    pub fn is_aborted(&self, run_id: &str) -> bool {
        self.state().aborted.contains_key(run_id)
    }

    /// Loads the state from the store now.
    pub async fn refresh(&self) -> Result<(), StorageError> {
        let state = self.store.load().await?;
        self.install(state, false);
        Ok(())
    }

    /// Installs `state`. Loads can finish out of order, so an older version
    /// is ignored, unless `over_newer`: the store itself went back (it lost
    /// its data, or was replaced), and what it holds now is what counts.
    fn install(&self, state: ControlState, over_newer: bool) {
        let version = state.version;
        let was_loaded = self.is_loaded();
        let previous = {
            let mut current = self.state.write().expect("control lock poisoned");
            if was_loaded && current.version >= version && !over_newer {
                return;
            }
            std::mem::replace(&mut *current, Arc::new(state))
        };
        self.loaded.send_replace(Some(version));
        if was_loaded {
            self.announce_status_changes(&previous);
        }
    }

    fn announce_status_changes(&self, previous: &ControlState) {
        let Some((lifecycle, catalog)) = &self.events else {
            return;
        };
        let current = self.state();
        let flows: std::collections::BTreeSet<&String> = previous
            .statuses
            .keys()
            .chain(current.statuses.keys())
            .collect();
        let catalog = catalog.get();
        for flow in flows {
            let before = previous.statuses.get(flow).map(|o| o.status);
            let after = current.statuses.get(flow).map(|o| o.status);
            if before == after {
                continue;
            }
            let Some(status) = after.or_else(|| catalog.get(flow).map(|f| f.status)) else {
                continue;
            };
            tracing::info!(flow = %flow, status = status.as_str(), "flow status changed");
            lifecycle.flow_changed(FlowEvent::StatusChanged {
                flow: flow.clone(),
                status,
                version: current.version,
            });
        }
    }

    /// Keeps the copy current until the task is dropped: reloads on every
    /// change notification, and checks the version every [`CHECK_EVERY`].
    pub async fn keep_current(self: Arc<Self>) {
        tokio::join!(self.clone().follow_notifications(), self.check_versions());
    }

    async fn check_versions(self: Arc<Self>) {
        let consequence = "cannot read the control state; pauses and rotations made elsewhere wait until it answers";
        crate::backend::keep_copy_current(CHECK_EVERY, consequence, || self.ensure_current()).await;
    }

    /// Makes the copy at least as new as this call: reads the store's
    /// version, and the state only when it changed.
    ///
    /// A store whose version is below this copy's went back (a Redis that
    /// restarted without persistence, a flush, a failover to a replica that
    /// was behind): its state replaces this copy whole, or every change made
    /// after it would be ignored until its version caught up.
    pub async fn ensure_current(&self) -> Result<(), StorageError> {
        let version = self.store.version().await?;
        let installed = self.state().version;
        if self.is_loaded() && version == installed {
            return Ok(());
        }
        let went_back = self.is_loaded() && version < installed;
        if went_back {
            tracing::warn!(
                from = installed,
                to = version,
                "the control state's version went back: the store lost data or was replaced; reloading it whole"
            );
        }
        let state = self.store.load().await?;
        self.install(state, went_back);
        Ok(())
    }

    async fn follow_notifications(self: Arc<Self>) {
        loop {
            match self.store.watch().await {
                Ok(mut changes) => {
                    // Anything changed while unsubscribed is picked up now.
                    let _ = self.refresh().await;
                    while changes.recv().await.is_some() {
                        if let Err(e) = self.refresh().await {
                            tracing::warn!(error = %e, "cannot load the control state");
                        }
                    }
                    tracing::debug!("control notifications ended; subscribing again");
                }
                Err(e) => tracing::debug!(error = %e, "cannot subscribe to control notifications"),
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }

    /// Makes `change` on behalf of `actor`, with its audit entry, and
    /// applies it to this copy at once.
    pub async fn apply(&self, change: Change, audit: AuditDraft) -> Result<Applied, StorageError> {
        let applied = self.store.apply(&change, &audit).await?;
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "cannot reload the control state after a change");
        }
        Ok(applied)
    }

    /// Pauses `flow` (or unpauses it, with `paused` false) on every replica.
    /// Unpausing removes the override, so the file's status holds again;
    /// a flow whose file says `paused` is unpaused to `live`.
    pub async fn set_paused(
        &self,
        flow: &Flow,
        paused: bool,
        actor: &Actor,
    ) -> Result<StatusChange, StorageError> {
        let before = self.status(flow);
        let stored = match (paused, flow.status) {
            (true, _) => Some(FlowStatus::Paused),
            (false, FlowStatus::Paused) => Some(FlowStatus::Live),
            (false, _) => None,
        };
        let after = stored.unwrap_or(flow.status);
        let mut audit = draft(actor, if paused { "flow.pause" } else { "flow.unpause" });
        audit.flow = Some(flow.id.clone());
        audit.before = Some(json!({ "status": before.as_str() }));
        audit.after = Some(json!({ "status": after.as_str() }));
        let change = Change::Status {
            flow: flow.id.clone(),
            status: stored,
        };
        self.apply(change, audit).await?;
        Ok(StatusChange { before, after })
    }

    /// Moves `flow_id` to its next token generation: older tokens fail on
    /// every replica, except the generation just before during `grace`
    /// (at most [`MAX_GRACE`]; longer is cut to it).
    pub async fn rotate(
        &self,
        flow_id: &str,
        grace: Option<Duration>,
        actor: &Actor,
    ) -> Result<Generation, StorageError> {
        let before = self.generation(flow_id);
        let mut audit = draft(actor, "token.rotate");
        audit.flow = Some(flow_id.to_owned());
        audit.before = Some(json!({ "generation": before.current }));
        audit.after = Some(json!({
            "generation": before.current + 1,
            "grace": grace.map(crate::config::readable_duration),
        }));
        let change = Change::Rotate {
            flow: flow_id.to_owned(),
            grace: grace.map(|g| g.min(MAX_GRACE)),
        };
        let applied = self.apply(change, audit).await?;
        Ok(applied.generation.unwrap_or(Generation {
            current: before.current + 1,
            grace_until_ms: None,
        }))
    }

    /// Writes to the audit log that `actor` minted a sender token for
    /// `flow_id` at `generation`, expiring after `ttl` (the token itself is
    /// never stored).
    pub async fn record_issue(
        &self,
        flow_id: &str,
        generation: u64,
        ttl: Option<Duration>,
        actor: &Actor,
    ) -> Result<(), StorageError> {
        let mut audit = draft(actor, "token.issue");
        audit.flow = Some(flow_id.to_owned());
        audit.after = Some(json!({
            "generation": generation,
            "expires_in": ttl.map(crate::config::readable_duration),
        }));
        self.apply(Change::Nothing, audit).await.map(|_| ())
    }

    /// Refuses admin token `jti` on every replica from now on; `until_ms`
    /// is when it expires anyway (`u64::MAX` for never).
    pub async fn revoke(
        &self,
        jti: &str,
        until_ms: u64,
        actor: &Actor,
    ) -> Result<(), StorageError> {
        let mut audit = draft(actor, "token.revoke");
        // The sessions made from it end with it: the audit names them.
        let ended: Vec<String> = self
            .sessions()
            .into_iter()
            .filter(|s| s.source.jti == jti)
            .map(|s| s.id)
            .collect();
        audit.after = Some(if ended.is_empty() {
            json!({ "jti": jti })
        } else {
            json!({ "jti": jti, "sessions_ended": ended })
        });
        let change = Change::Revoke {
            jti: jti.to_owned(),
            until_ms,
        };
        self.apply(change, audit).await.map(|_| ())
    }

    /// The store, for reads the copy does not hold (the audit log).
    pub fn store(&self) -> &Arc<dyn ControlStore> {
        &self.store
    }
}

/// Whether `session` is open at `now_ms` in `state`.
fn is_open(state: &ControlState, session: &SessionEntry, now_ms: u64) -> bool {
    session.expires_ms > now_ms
        && !state.revoked.contains_key(&session.id)
        && !state.revoked.contains_key(&session.source.jti)
}

/// A flow's status before and after a pause or unpause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    /// Before.
    pub before: FlowStatus,
    /// After.
    pub after: FlowStatus,
}

/// An audit draft for `action` by `actor`.
pub fn draft(actor: &Actor, action: &'static str) -> AuditDraft {
    AuditDraft {
        actor: actor.clone(),
        action,
        flow: None,
        run: None,
        before: None,
        after: None,
    }
}
