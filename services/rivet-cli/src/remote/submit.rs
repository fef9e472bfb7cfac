//! `rivet run NAME`: queue a run of a pipeline on the orchestrator, say whether a runner can
//! take it, and with `--follow` stream its logs until it ends.

use super::follow::{self, Follow};
use super::table::list;
use super::{block_on, print_json, print_json_line};
use crate::prompt::{missing, prompt};
use crate::run::{collect_inputs, RunArgs};
use anyhow::{bail, Result};
use rivet_client::ClientError;
use rivet_protocol::http::{CreateRun, JobView};
use std::io::IsTerminal;

/// Runs `rivet run NAME`.
pub fn run(args: RunArgs) -> Result<i32> {
    let local_only = [
        (!args.secrets.is_empty(), "--secret"),
        (args.workspace.is_some(), "--workspace"),
        (args.keep_workspace, "--keep-workspace"),
    ];
    if let Some((_, flag)) = local_only.iter().find(|(given, _)| *given) {
        bail!(
            "{flag} applies to local runs only, and `{}` names a pipeline on the orchestrator \
             (a local file needs a path that exists, contains a `/` or ends in `.lua`)",
            args.target
        );
    }
    let mut inputs = collect_inputs(&args.inputs)?;
    let interactive = std::io::stdin().is_terminal() && !args.json;
    let name = args.target.clone();
    block_on(async move {
        let client = args.remote.client()?;
        let mut version = args.version;
        if interactive {
            // Ask for what is missing before queueing, against the version that will run.
            let view = client
                .pipeline(&name, version)
                .await
                .map_err(|e| unknown_pipeline(e, &name))?;
            for decl in missing(&view.definition.inputs, &inputs) {
                let value = prompt(&decl.name, Some(decl))?;
                inputs.insert(decl.name.clone(), value);
            }
            version = Some(view.version);
        }
        let body = CreateRun { inputs, version };
        let job = match client.create_run(&name, &body).await {
            Ok(job) => job,
            Err(err) if err.has_code("invalid_inputs") => {
                let error = err.api().expect("an error with a code is an API error");
                if args.json {
                    print_json(error)?;
                } else {
                    for field in &error.fields {
                        println!("error: {field}");
                    }
                    if error.fields.is_empty() {
                        println!("error: {}", error.message);
                    }
                }
                return Ok(1);
            }
            Err(err) => return Err(unknown_pipeline(err, &name)),
        };
        if args.json {
            if args.follow {
                print_json_line(&job)?;
            } else {
                print_json(&job)?;
            }
        } else {
            println!("{}", queued_line(&job));
            if let Some(warning) = unschedulable_warning(&job) {
                eprintln!("{warning}");
            }
        }
        if !args.follow {
            return Ok(0);
        }
        let opts = Follow {
            attempt: None,
            json: args.json,
        };
        let end = follow::follow(&client, job.id, opts).await?;
        follow::print_end(&end, None, args.json)
    })
}

/// A 404 for `rivet run NAME` may be a file name without `.lua`: say how the argument was read.
fn unknown_pipeline(err: ClientError, name: &str) -> anyhow::Error {
    if err.status() == Some(404) {
        anyhow::anyhow!(
            "{err}\nhint: `{name}` was taken as a pipeline name on the orchestrator (see \
             `rivet pipeline ls`); to run a local file, give a path that exists or ends in `.lua`"
        )
    } else {
        err.into()
    }
}

fn queued_line(job: &JobView) -> String {
    format!(
        "job {} queued: {} version {}",
        job.id, job.pipeline, job.pipeline_version
    )
}

/// When no live runner can take the job: why, and what is missing.
fn unschedulable_warning(job: &JobView) -> Option<String> {
    let s = job.schedulability.as_ref().filter(|s| !s.schedulable)?;
    let mut text = format!("warning: no runner can take this job now: {}", s.reason);
    if !s.missing.is_empty() {
        text.push_str(&format!("\n  missing capabilities: {}", list(&s.missing)));
    }
    text.push_str("\n  it stays queued until a runner that has them comes online");
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_protocol::http::{ApiError, JobState, Schedulability};
    use uuid::Uuid;

    fn job(schedulability: Option<Schedulability>) -> JobView {
        JobView {
            project: "default".into(),
            id: Uuid::nil(),
            pipeline: "deploy".into(),
            pipeline_version: 4,
            state: JobState::Queued,
            attempt: 1,
            inputs: Default::default(),
            class_key: "k".into(),
            requires: vec!["container".into(), "process".into()],
            created_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            outcome: None,
            runner_id: None,
            schedulability,
            attempts: Vec::new(),
        }
    }

    #[test]
    fn a_queued_job_names_itself_and_what_keeps_it_waiting() {
        assert_eq!(
            queued_line(&job(None)),
            "job 00000000-0000-0000-0000-000000000000 queued: deploy version 4"
        );
        let fine = Schedulability {
            schedulable: true,
            missing: Vec::new(),
            reason: "a live runner can take it".into(),
        };
        assert_eq!(unschedulable_warning(&job(Some(fine))), None);
        let stuck = Schedulability {
            schedulable: false,
            missing: vec!["container".into()],
            reason: "no live runner has: container".into(),
        };
        assert_eq!(
            unschedulable_warning(&job(Some(stuck))).unwrap(),
            "warning: no runner can take this job now: no live runner has: container\n  \
             missing capabilities: container\n  \
             it stays queued until a runner that has them comes online"
        );
    }

    #[test]
    fn an_unknown_name_hints_at_the_file_rule() {
        let not_found = ClientError::Api {
            method: "POST".into(),
            path: "/api/v1/pipelines/build/runs".into(),
            status: 404,
            error: Box::new(ApiError {
                code: "not_found".into(),
                message: "no pipeline `build`".into(),
                fields: Vec::new(),
                problems: Vec::new(),
            }),
        };
        let text = unknown_pipeline(not_found, "build").to_string();
        assert!(
            text.starts_with("no pipeline `build` (404 not_found)\nhint:"),
            "{text}"
        );
        assert!(text.contains("ends in `.lua`"), "{text}");
    }
}
