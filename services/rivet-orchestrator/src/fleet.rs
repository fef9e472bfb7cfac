//! The live fleet as Redis shows it, and whether a requirement set can be scheduled on it.
//!
//! A presence record is the runner's word: its labels count for nothing. Only runners with a
//! live registration count as live, with the labels an admin gave that registration (API-02).

use crate::AppState;
use redis::AsyncCommands;
use rivet_protocol::http::Schedulability;
use rivet_protocol::redis_keys::RunnerPresence;

/// Every runner with a live registration whose presence record has not expired, with its
/// registration's labels in place of whatever the record says.
pub async fn live_runners(state: &AppState) -> anyhow::Result<Vec<RunnerPresence>> {
    let presences = presences(state).await?;
    let registered = crate::db::registrations::live(&state.db).await?;
    Ok(presences
        .into_iter()
        .filter_map(|mut p| {
            let (_, labels) = registered.get(&p.id)?;
            p.labels = labels.clone();
            Some(p)
        })
        .collect())
}

/// Every presence record that has not expired, as written (labels included), of every runner
/// name ever registered, live or revoked.
///
/// Looked up by name, not by scanning Redis for presence keys: a scan walks the whole
/// keyspace, which holds a fence for every job of the last day (tens of millions of keys at
/// full speed). With per-runner Redis users only a registered name can have a presence record;
/// with shared ones a record under a name never registered is not listed (its starts are
/// refused all the same).
pub async fn presences(state: &AppState) -> anyhow::Result<Vec<RunnerPresence>> {
    let names = crate::db::registrations::names(&state.db).await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = names.iter().map(|n| state.keys.runner(n)).collect();
    let mut conn = state.redis.clone();
    let values: Vec<Option<String>> = conn.mget(&keys).await?;
    let mut runners: Vec<RunnerPresence> = values
        .into_iter()
        .flatten()
        .filter_map(|v| match serde_json::from_str::<RunnerPresence>(&v) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "Ignoring an unreadable runner presence record.");
                None
            }
        })
        .collect();
    runners.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(runners)
}

/// Whether any of `runners` (not draining) covers `requires`; if none does, what the closest one
/// lacks.
pub fn schedulability(requires: &[String], runners: &[RunnerPresence]) -> Schedulability {
    let active: Vec<&RunnerPresence> = runners.iter().filter(|r| !r.draining).collect();
    if active.is_empty() {
        return Schedulability {
            schedulable: false,
            missing: requires.to_vec(),
            reason: "no runner is online".into(),
        };
    }
    let best = active
        .iter()
        .map(|r| r.missing(requires))
        .min_by_key(Vec::len)
        .unwrap_or_default();
    if best.is_empty() {
        return Schedulability {
            schedulable: true,
            missing: Vec::new(),
            reason: "a live runner can take it".into(),
        };
    }
    let missing: Vec<String> = best.into_iter().map(str::to_owned).collect();
    Schedulability {
        schedulable: false,
        reason: format!("no live runner has: {}", missing.join(", ")),
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(id: &str, caps: &[&str], labels: &[(&str, &str)]) -> RunnerPresence {
        RunnerPresence {
            schema: 1,
            id: id.into(),
            capabilities: caps.iter().map(|s| (*s).to_owned()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            slots: 1,
            running: Vec::new(),
            draining: false,
            version: "0".into(),
            started_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn names_what_the_closest_runner_lacks() {
        let runners = [
            runner("a", &["process"], &[]),
            runner("b", &["process", "container.podman"], &[("region", "eu")]),
        ];
        let req = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(
            schedulability(&req(&["process", "container", "label:region=eu"]), &runners)
                .schedulable
        );
        let s = schedulability(
            &req(&["process", "plugin.git", "label:region=eu"]),
            &runners,
        );
        assert!(!s.schedulable);
        assert_eq!(s.missing, ["plugin.git"]);
        assert_eq!(s.reason, "no live runner has: plugin.git");
        assert_eq!(
            schedulability(&req(&["process"]), &[]).reason,
            "no runner is online"
        );
    }
}
