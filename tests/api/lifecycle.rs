//! The run lifecycle as a subscriber to the event bus sees it.

use std::sync::Arc;
use std::time::Duration;

use flowgate::engine::RunState;
use flowgate::lifecycle::{Event, RunEvent};
use tokio::sync::broadcast;

use crate::helpers::*;

/// The events of run `run_id`, in order, up to and including its end.
async fn events_of(events: &mut broadcast::Receiver<Arc<Event>>, run_id: &str) -> Vec<RunEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("run {run_id} did not end; saw {seen:?}"))
            .unwrap();
        let Event::Run(event) = &*event else { continue };
        if event.run_id() == run_id {
            seen.push(event.clone());
            if matches!(event, RunEvent::Ended { .. }) {
                return seen;
            }
        }
    }
}

/// Each event's kind, and the state of an end.
fn shape(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            RunEvent::Queued { .. } => "queued".to_owned(),
            RunEvent::Started { attempt, .. } => format!("started#{attempt}"),
            RunEvent::StepStarted { step, .. } => format!("step:{step}"),
            RunEvent::StepEnded { step, state, .. } => format!("step:{step}:{}", state.as_str()),
            RunEvent::RetryLater { .. } => "retry_later".to_owned(),
            RunEvent::Ended { state, .. } => format!("ended:{state}"),
        })
        .collect()
}

async fn every_run_transition_is_published() {
    // The first call fails with 503, so the async run retries later once.
    let receiver = Receiver::start(&[503], Duration::ZERO).await;
    let async_flow = format!(
        "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"call\"\nkind = \"http\"\nurl = \"{}\"\nretry = {{ attempts = 2, backoff = \"200ms\" }}\n",
        receiver.url("/hook")
    );
    let sync_flow = "status = \"live\"\n[trigger]\nref = \"w\"\n[[steps]]\nref = \"no\"\nkind = \"fail\"\nmessage = \"nope\"\n";
    let app = spawn_app(&[("a", async_flow), ("s", sync_flow.to_owned())]).await;
    let mut events = app.app.lifecycle().subscribe();

    let failed = app.post_json("s", "{}").await;
    assert_eq!(failed.status(), 500);
    let sync_events = events_of(&mut events, &run_id(&failed)).await;
    assert_eq!(
        shape(&sync_events),
        ["started#1", "step:no", "step:no:failed", "ended:failed"]
    );
    let RunEvent::Ended { flow, error, .. } = &sync_events[3] else {
        unreachable!()
    };
    assert_eq!((flow.as_str(), error.as_deref()), ("s", Some("nope")));

    let accepted = app.post_json("a", "{}").await;
    assert_eq!(accepted.status(), 202);
    let async_events = events_of(&mut events, &run_id(&accepted)).await;
    // `queued` is announced by the gateway once the run is stored, and a
    // worker may claim it and announce `started` first: the two come from
    // different tasks, so only the worker's events have a fixed order.
    let mut shapes = shape(&async_events);
    let queued = shapes.iter().position(|s| s == "queued");
    assert!(
        queued.is_some_and(|at| at < shapes.len() - 1),
        "queued before the end: {shapes:?}"
    );
    shapes.retain(|s| s != "queued");
    assert_eq!(
        shapes,
        [
            "started#1",
            "step:call",
            "step:call:failed",
            "retry_later",
            "started#2",
            "step:call",
            "step:call:succeeded",
            "ended:succeeded"
        ]
    );
    assert!(matches!(
        async_events.last(),
        Some(RunEvent::Ended {
            state: RunState::Succeeded,
            ..
        })
    ));
}

crate::on_all_backends!(every_run_transition_is_published,);
