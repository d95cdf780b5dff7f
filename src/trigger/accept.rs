//! Accepting an async run: its answer rendered, then the run queued with
//! its first record; the sender hears nothing before the queue holds it.

use http::Response;
use serde_json::json;

use super::Trigger;
use crate::engine::{Engine, RunInput, RunState};
use crate::error::{ApiError, Body};
use crate::flow::{Catalog, Flow};
use crate::inbound::{record_response, response, set_run_id_header};
use crate::record::RunRecord;

/// Seconds a sender is asked to wait when the queue cannot take a run.
const QUEUE_RETRY_AFTER_SECS: u64 = 5;

impl Trigger {
    /// Queues an async run, then answers; nothing is answered as accepted
    /// unless the queue stored the run.
    pub(super) async fn accept_async(
        &self,
        catalog: &Catalog,
        flow: &Flow,
        input: &RunInput,
    ) -> Result<Response<Body>, ApiError> {
        // The answer sees no step output, so it is rendered first and stored with
        // the run; nothing is sent before the queue holds the run.
        let scope = Engine::initial_scope(flow, input, RunState::Queued);
        let mut response = response::render(
            &flow.response,
            catalog.env_of(&flow.id),
            &scope.context(),
            || json!({ "run_id": input.run_id, "status": "queued" }).to_string(),
        )
        .await
        .map_err(|e| e.with_run_id(&input.run_id))?;
        set_run_id_header(&mut response, &input.run_id);
        let (response, record) =
            record_response(RunRecord::accepted(flow, input, RunState::Queued), response).await;
        if let Err(e) = self.app.transitions.queued(input, &record).await {
            tracing::error!(error = %e, run_id = %input.run_id, "async run refused: queue unavailable");
            return Err(ApiError::queue_unavailable(QUEUE_RETRY_AFTER_SECS));
        }
        Ok(response)
    }
}
