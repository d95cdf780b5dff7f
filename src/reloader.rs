//! Hot reload: flows and templates are loaded again when their files
//! change (watched, debounced), on SIGHUP, and on `POST /v1/admin/reload`.
//!
//! A reload swaps the whole catalog at once, so a request sees one
//! consistent load; runs in progress finish on the flow version they
//! started with (they hold it). A flow whose change fails validation keeps
//! serving its last good version, and the problems are logged as
//! `path:line`; other flows' good changes still apply. Each change is
//! published on the event bus as `flow.created`, `flow.updated` or
//! `flow.deleted`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{Mutex, mpsc};

use crate::flow::reload::{ReloadSummary, reload};
use crate::flow::{LoadOptions, SharedCatalog};
use crate::lifecycle::{FlowEvent, Lifecycle};

/// Quiet time after a file change before reloading, so an editor's or a
/// deploy's burst of writes becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Loads flows again and swaps them in.
pub struct Reloader {
    catalog: SharedCatalog,
    options: LoadOptions,
    lifecycle: Arc<Lifecycle>,
    running: Mutex<()>,
}

/// How often the folders are checked when the system cannot notify.
const POLL: Duration = Duration::from_secs(1);

/// `watcher` watching every one of `folders`.
fn watch_with<W: Watcher>(watcher: notify::Result<W>, folders: &[PathBuf]) -> notify::Result<W> {
    let mut watcher = watcher?;
    for folder in folders {
        watcher.watch(folder, RecursiveMode::Recursive)?;
    }
    Ok(watcher)
}

impl Reloader {
    /// Reloads `catalog` from the folders in `options`, announcing through `lifecycle`.
    pub fn new(catalog: SharedCatalog, options: LoadOptions, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            catalog,
            options,
            lifecycle,
            running: Mutex::new(()),
        }
    }

    /// Reloads now; one reload at a time.
    pub async fn reload(&self) -> ReloadSummary {
        let _one_at_a_time = self.running.lock().await;
        let current = self.catalog.get();
        let options = self.options.clone();
        let loaded = tokio::task::spawn_blocking(move || reload(&current, &options)).await;
        let (catalog, summary) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the flows in service stay");
                return ReloadSummary::default();
            }
        };
        for problem in &summary.problems {
            tracing::error!("{problem}");
        }
        self.catalog.replace(catalog);
        tracing::info!(
            created = ?summary.created,
            updated = ?summary.updated,
            deleted = ?summary.deleted,
            kept = ?summary.kept,
            "flows reloaded"
        );
        if !summary.kept.is_empty() {
            tracing::warn!(kept = ?summary.kept, "changes that fail validation are not served; the last good version of these flows still is");
        }
        let events = [
            (
                &summary.created,
                (|flow| FlowEvent::Created { flow }) as fn(String) -> FlowEvent,
            ),
            (&summary.updated, |flow| FlowEvent::Updated { flow }),
            (&summary.deleted, |flow| FlowEvent::Deleted { flow }),
        ];
        for (flows, event) in events {
            for flow in flows {
                self.lifecycle.flow_changed(event(flow.clone()));
            }
        }
        summary
    }

    /// Reloads whenever a file under the flows or templates folder changes,
    /// until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let (tx, mut changes) = mpsc::unbounded_channel();
        let on_event = move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        };
        let folders: [PathBuf; 2] = [
            self.options.flows_dir.clone(),
            self.options.templates_dir.clone(),
        ];
        // Kernel notifications where they can be had; where not (a full
        // inotify table, some network file systems), the folders are polled.
        let _watcher: Box<dyn Watcher + Send> = match watch_with(
            notify::recommended_watcher(on_event.clone()),
            &folders,
        ) {
            Ok(watcher) => Box::new(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the flow files for changes; checking them every {POLL:?} instead");
                let polled = notify::PollWatcher::new(
                    on_event,
                    notify::Config::default().with_poll_interval(POLL),
                );
                match watch_with(polled, &folders) {
                    Ok(watcher) => Box::new(watcher),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check the flow files for changes; reload with SIGHUP or POST /v1/admin/reload");
                        return;
                    }
                }
            }
        };
        while changes.recv().await.is_some() {
            // Wait for the burst to end.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {}
            self.reload().await;
        }
    }

    /// Reloads on every SIGHUP, until the task is dropped.
    #[cfg(unix)]
    pub async fn on_hangup(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading flows");
            self.reload().await;
        }
    }

    /// Reloads on every SIGHUP (not on this platform).
    #[cfg(not(unix))]
    pub async fn on_hangup(self: Arc<Self>) {}
}
