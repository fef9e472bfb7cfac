//! `rivet pipeline push|ls|show`: definitions stored on the orchestrator, one version per push.

use super::table::{ago, fields, list, now_ms, Table};
use super::{block_on, print_json, RemoteArgs};
use crate::setup::{file_name, read_source};
use anyhow::Result;
use clap::{Args, Subcommand};
use rivet_protocol::http::{PipelineSummary, PipelineView, PushPipeline};
use std::path::PathBuf;

/// `rivet pipeline ...`.
#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Push a definition: the orchestrator checks it (every problem is listed, as `rivet lint`
    /// does) and stores it as the pipeline's next version.
    Push(PushArgs),
    /// List pipelines with their latest version.
    Ls(LsArgs),
    /// Show a version of a pipeline: requirements, inputs and stages.
    Show(ShowArgs),
}

/// Arguments of `rivet pipeline push`.
#[derive(Debug, Args)]
#[command(
    after_long_help = "Exit status: 0 when the definition was stored, 1 when it has problems (each printed as FILE:LINE: message), 2 when the file cannot be read or the orchestrator refuses otherwise."
)]
pub struct PushArgs {
    /// The pipeline definition (a Lua file returning a table).
    pub file: PathBuf,
    /// The pipeline's name, as `rivet run NAME` will use it (letters, digits, `-`, `_`).
    /// Default: the definition's `name`, lower-cased, spaces as `-`.
    #[arg(long)]
    pub name: Option<String>,
    /// Print the stored version (or the error with its problems) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of `rivet pipeline ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of `rivet pipeline show`.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct ShowArgs {
    /// The pipeline's name.
    pub name: String,
    /// This version instead of the latest.
    #[arg(long, value_name = "N")]
    pub version: Option<i32>,
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `rivet pipeline ...`.
pub fn run(cmd: PipelineCommand) -> Result<i32> {
    match cmd {
        PipelineCommand::Push(args) => push(args),
        PipelineCommand::Ls(args) => block_on(async move {
            let pipelines = args.remote.client()?.pipelines().await?;
            if args.json {
                print_json(&pipelines)?;
            } else if pipelines.is_empty() {
                println!("no pipelines yet: push one with `rivet pipeline push FILE`");
            } else {
                print!("{}", summary_table(&pipelines, now_ms()).render());
            }
            Ok(0)
        }),
        PipelineCommand::Show(args) => block_on(async move {
            let view = args
                .remote
                .client()?
                .pipeline(&args.name, args.version)
                .await?;
            if args.json {
                print_json(&view)?;
            } else {
                print!("{}", describe(&view, now_ms()));
            }
            Ok(0)
        }),
    }
}

fn push(args: PushArgs) -> Result<i32> {
    // The same checks as a local run, before anything leaves the machine: the orchestrator
    // refuses bytecode too, but it should never be sent.
    let limit = rivet_core::Policy::default().limits.max_source;
    let source = read_source(&args.file, limit)?;
    let body = PushPipeline {
        name: args.name.clone(),
        file_name: file_name(&args.file),
        source,
    };
    let display = args.file.display().to_string();
    block_on(async move {
        let client = args.remote.client()?;
        match client.push_pipeline(&body).await {
            Ok(view) => {
                if args.json {
                    print_json(&view)?;
                } else {
                    println!("{}", pushed_line(&view));
                }
                Ok(0)
            }
            Err(err) if err.has_code("invalid_definition") => {
                let error = err.api().expect("an error with a code is an API error");
                if args.json {
                    print_json(error)?;
                } else {
                    if error.problems.is_empty() {
                        println!("{display}: {}", error.message);
                    }
                    for p in &error.problems {
                        println!("{}", p.render(&display));
                    }
                    let n = error.problems.len().max(1);
                    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
                }
                Ok(1)
            }
            Err(err) => Err(err.into()),
        }
    })
}

fn pushed_line(view: &PipelineView) -> String {
    let spec = &view.definition;
    format!(
        "pushed {} version {}: \"{}\", {} stage{}, {} input{}, requires: {}",
        view.name,
        view.version,
        spec.name,
        spec.stages.len(),
        if spec.stages.len() == 1 { "" } else { "s" },
        spec.inputs.len(),
        if spec.inputs.len() == 1 { "" } else { "s" },
        if view.requires.is_empty() {
            "nothing".into()
        } else {
            list(&view.requires)
        }
    )
}

fn summary_table(pipelines: &[PipelineSummary], now: i64) -> Table {
    let mut t = Table::new(&["NAME", "VERSION", "DISPLAY NAME", "UPDATED"]);
    for p in pipelines {
        t.row([
            p.name.clone(),
            p.latest_version.to_string(),
            p.display_name.clone(),
            ago(now, p.updated_at_ms),
        ]);
    }
    t
}

/// A pipeline version for people: what it is, its inputs, its stages.
fn describe(view: &PipelineView, now: i64) -> String {
    let spec = &view.definition;
    let mut head = vec![
        (
            "pipeline",
            format!("{} (version {})", view.name, view.version),
        ),
        ("display name", spec.name.clone()),
    ];
    if let Some(d) = &spec.description {
        head.push(("description", d.clone()));
    }
    head.push(("pushed", ago(now, view.created_at_ms)));
    head.push(("requires", list(&view.requires)));
    head.push(("class", view.class_key.clone()));
    let mut out = fields(&head);

    out.push_str("\ninputs\n");
    if spec.inputs.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut t = Table::new(&[
            "NAME",
            "TYPE",
            "REQUIRED",
            "DEFAULT",
            "OPTIONS",
            "DESCRIPTION",
        ])
        .indent(2);
        for i in &spec.inputs {
            let options: Vec<String> = i
                .options
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            t.row([
                i.name.clone(),
                i.ty.name().to_owned(),
                if i.required { "yes" } else { "no" }.to_owned(),
                i.default
                    .as_ref()
                    .map_or_else(|| "-".into(), ToString::to_string),
                list(&options),
                i.description.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&t.render());
    }

    out.push_str("\nstages\n");
    let mut t = Table::new(&["#", "NAME", "TIMEOUT", "CONDITION", "CONTAINER"]).indent(2);
    for (n, s) in spec.stages.iter().enumerate() {
        t.row([
            (n + 1).to_string(),
            s.name.clone(),
            s.timeout
                .map_or_else(|| "default".into(), rivet_sandbox::fmt_duration),
            if s.has_condition { "yes" } else { "-" }.to_owned(),
            s.container.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_core::{InputSpec, InputType, InputValue, PipelineSpec, StageSpec};

    fn view() -> PipelineView {
        let stage = |name: &str| StageSpec {
            name: name.into(),
            container: None,
            has_condition: false,
            timeout: None,
            env: Default::default(),
            line: None,
        };
        PipelineView {
            project: "default".into(),
            name: "build-and-test".into(),
            version: 3,
            definition: PipelineSpec {
                name: "Build and Test".into(),
                description: None,
                timeout: None,
                queue_timeout: None,
                retries: Default::default(),
                requires: Default::default(),
                inputs: vec![
                    InputSpec {
                        name: "branch".into(),
                        ty: InputType::String,
                        description: Some("what to build".into()),
                        required: false,
                        default: Some(InputValue::String("main".into())),
                        options: None,
                    },
                    InputSpec {
                        name: "level".into(),
                        ty: InputType::Number,
                        description: None,
                        required: true,
                        default: None,
                        options: Some(vec![InputValue::Number(1.0), InputValue::Number(2.0)]),
                    },
                ],
                stages: vec![
                    StageSpec {
                        timeout: Some(std::time::Duration::from_secs(600)),
                        has_condition: true,
                        ..stage("test")
                    },
                    stage("report"),
                ],
            },
            class_key: "plugin.git+process".into(),
            requires: vec!["plugin.git".into(), "process".into()],
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_version_shows_its_inputs_and_stages() {
        assert_eq!(
            describe(&view(), 120_000),
            "pipeline      build-and-test (version 3)\n\
             display name  Build and Test\n\
             pushed        2m ago\n\
             requires      plugin.git, process\n\
             class         plugin.git+process\n\
             \n\
             inputs\n  \
               NAME    TYPE    REQUIRED  DEFAULT  OPTIONS  DESCRIPTION\n  \
               branch  string  no        main     -        what to build\n  \
               level   number  yes       -        1, 2\n\
             \n\
             stages\n  \
               #  NAME    TIMEOUT  CONDITION  CONTAINER\n  \
               1  test    10m      yes        -\n  \
               2  report  default  -          -\n"
        );
    }

    #[test]
    fn a_push_and_the_list_are_one_line_per_pipeline() {
        assert_eq!(
            pushed_line(&view()),
            "pushed build-and-test version 3: \"Build and Test\", 2 stages, 2 inputs, requires: plugin.git, process"
        );
        let summary = PipelineSummary {
            name: "hello".into(),
            latest_version: 12,
            display_name: "Hello".into(),
            updated_at_ms: 0,
        };
        assert_eq!(
            summary_table(&[summary], 3_600_000).render(),
            "NAME   VERSION  DISPLAY NAME  UPDATED\nhello  12       Hello         1h ago\n"
        );
    }
}
