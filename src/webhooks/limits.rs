//! The limits on subscriptions: at most [`MAX_PER_FLOW`] may name one flow
//! (one without a flow filter names every flow), and [`MAX_SUBSCRIPTIONS`]
//! in all. Checked inside the store's change, against concurrent writers.

use super::{MAX_PER_FLOW, MAX_SUBSCRIPTIONS};
use crate::backend::webhooks::{Refusal, Subscription};

/// Refuses `candidate` when a flow it names (every flow, without a flow
/// filter) already has [`MAX_PER_FLOW`] subscriptions among `others`.
pub(super) fn check_limit(
    candidate: &Subscription,
    others: &[Subscription],
    known_flows: &[String],
) -> Result<(), Refusal> {
    if others.len() >= MAX_SUBSCRIPTIONS {
        return Err(Refusal::Conflict {
            code: "too_many_subscriptions",
            message: format!(
                "there are {} subscriptions, the most one installation holds; delete unused ones first",
                others.len()
            ),
        });
    }
    let covers = |sub: &Subscription, flow: &str| {
        sub.flows.is_empty() || sub.flows.iter().any(|f| f == flow)
    };
    let flows: Vec<&str> = if candidate.flows.is_empty() {
        let every_flow = others.iter().filter(|s| s.flows.is_empty()).count();
        if every_flow >= MAX_PER_FLOW {
            return Err(Refusal::Conflict {
                code: "too_many_subscriptions",
                message: format!(
                    "{every_flow} subscriptions already receive every flow's events; at most {MAX_PER_FLOW} may name one flow"
                ),
            });
        }
        known_flows
            .iter()
            .map(String::as_str)
            .chain(
                others
                    .iter()
                    .flat_map(|s| s.flows.iter().map(String::as_str)),
            )
            .collect()
    } else {
        candidate.flows.iter().map(String::as_str).collect()
    };
    for flow in flows {
        let count = others.iter().filter(|s| covers(s, flow)).count();
        if count >= MAX_PER_FLOW {
            return Err(Refusal::Conflict {
                code: "too_many_subscriptions",
                message: format!(
                    "flow `{flow}` already has {count} subscriptions; at most {MAX_PER_FLOW} may name one flow (a subscription without a flow filter names every flow)"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sub(id: &str, flows: &[&str]) -> Subscription {
        serde_json::from_value(json!({
            "id": id, "name": id, "url": "https://example.com/", "events": ["*"],
            "flows": flows, "format": "json", "enabled": true,
            "created_at": "t", "updated_at": "t",
        }))
        .unwrap()
    }

    #[test]
    fn a_flow_takes_five_subscriptions_and_an_installation_a_thousand() {
        let known = vec!["a".to_owned(), "b".to_owned()];
        let four_on_a: Vec<_> = (0..4).map(|n| sub(&format!("s{n}"), &["a"])).collect();
        assert!(check_limit(&sub("new", &["a"]), &four_on_a, &known).is_ok());
        let mut five = four_on_a.clone();
        five.push(sub("all", &[]));
        for candidate in [sub("new", &["a"]), sub("new", &[]), sub("new", &["b", "a"])] {
            let refused = check_limit(&candidate, &five, &known).unwrap_err();
            assert!(matches!(
                refused,
                Refusal::Conflict {
                    code: "too_many_subscriptions",
                    ..
                }
            ));
        }
        assert!(check_limit(&sub("new", &["b"]), &five, &known).is_ok());
        let many: Vec<_> = (0..MAX_SUBSCRIPTIONS)
            .map(|n| sub(&format!("s{n}"), &[&format!("f{n}")]))
            .collect();
        let refused = check_limit(&sub("new", &["z"]), &many, &known).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("the most one installation holds")
        );
    }
}
