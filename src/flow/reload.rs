//! Reloading flows and templates while serving: a new catalog from the
//! files, except that a flow whose new version fails validation keeps its
//! last good version (with the templates it was validated against).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::{Catalog, LoadOptions, load_catalog};

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReloadSummary {
    /// Flows that appeared.
    pub created: Vec<String>,
    /// Flows whose file changed and whose new version now serves.
    pub updated: Vec<String>,
    /// Flows whose file is gone.
    pub deleted: Vec<String>,
    /// Flows whose new version failed validation: the last good one still serves.
    pub kept: Vec<String>,
    /// Every problem, as `path:line: message`.
    pub problems: Vec<String>,
}

/// Loads the files again on top of `current`: returns the catalog to serve and what changed.
pub fn reload(current: &Catalog, options: &LoadOptions) -> (Catalog, ReloadSummary) {
    let report = load_catalog(options);
    let mut catalog = report.catalog;
    let mut summary = ReloadSummary {
        problems: report.problems,
        ..ReloadSummary::default()
    };
    for id in &report.skipped {
        if let Some(old) = current.get(id) {
            catalog.flows.insert(id.clone(), old.clone());
            catalog.kept.insert(id.clone(), current.env_of(id).clone());
            let problems = report.problems_of.get(id).cloned().unwrap_or_default();
            catalog.problems.insert(id.clone(), problems);
            summary.kept.push(id.clone());
        }
    }
    let new_ids: HashMap<&String, &Arc<super::Flow>> = catalog.flows.iter().collect();
    for (id, flow) in &new_ids {
        match current.get(id) {
            None => summary.created.push((*id).clone()),
            Some(old) if !catalog.kept.contains_key(*id) && old.version != flow.version => {
                summary.updated.push((*id).clone())
            }
            Some(_) => {}
        }
    }
    for id in current.flows.keys() {
        if !catalog.flows.contains_key(id) {
            summary.deleted.push(id.clone());
        }
    }
    for list in [
        &mut summary.created,
        &mut summary.updated,
        &mut summary.deleted,
        &mut summary.kept,
    ] {
        list.sort();
    }
    (catalog, summary)
}
