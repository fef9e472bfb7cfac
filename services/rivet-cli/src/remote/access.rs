//! `rivet project create|ls` and `rivet token create|ls|revoke`: who may see what (API-01).
//! All need an admin token.

use super::table::{ago, now_ms, Table};
use super::{block_on, print_json, RemoteArgs};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rivet_protocol::http::{ProjectView, TokenView};
use uuid::Uuid;

/// `rivet project ...`.
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project: pipelines pushed and jobs run with its tokens belong to it.
    Create(NameArgs),
    /// List projects.
    Ls(PlainArgs),
}

/// `rivet token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token scoped to one project (`--project NAME`, default `default`): it can
    /// push and run pipelines and see and act on jobs of that project only. Prints the token
    /// once.
    Create(NameArgs),
    /// List tokens (revoked ones too), with their projects; never their secrets.
    Ls(PlainArgs),
    /// Revoke a token by id (`rivet token ls`).
    Revoke(RevokeArgs),
}

/// Arguments with a name.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The name.
    pub name: String,
    /// Print the orchestrator's answer as JSON (a new token's secret included).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of the listing commands.
#[derive(Debug, Args)]
pub struct PlainArgs {
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of `rivet token revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's id.
    pub id: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `rivet project ...`.
pub fn project(cmd: ProjectCommand) -> Result<i32> {
    block_on(async move {
        match cmd {
            ProjectCommand::Create(args) => {
                let project = args.remote.client()?.create_project(&args.name).await?;
                if args.json {
                    print_json(&project)?;
                } else {
                    println!("created project {} ({})", project.name, project.id);
                }
            }
            ProjectCommand::Ls(args) => {
                let projects = args.remote.client()?.projects().await?;
                if args.json {
                    print_json(&projects)?;
                } else {
                    print!("{}", projects_table(&projects, now_ms()).render());
                }
            }
        }
        Ok(0)
    })
}

/// Runs `rivet token ...`.
pub fn token(cmd: TokenCommand) -> Result<i32> {
    block_on(async move {
        match cmd {
            TokenCommand::Create(args) => {
                let token = args
                    .remote
                    .client()?
                    .create_token(&args.name, args.remote.project.as_deref())
                    .await?;
                if args.json {
                    print_json(&token)?;
                } else {
                    println!(
                        "created token {} ({}) for project {}",
                        token.name,
                        token.id,
                        token.project.as_deref().unwrap_or("-")
                    );
                    println!("token (shown once; use it as RIVET_TOKEN):");
                    println!("{}", token.secret.as_deref().unwrap_or_default());
                }
            }
            TokenCommand::Ls(args) => {
                let tokens = args.remote.client()?.tokens().await?;
                if args.json {
                    print_json(&tokens)?;
                } else {
                    print!("{}", tokens_table(&tokens, now_ms()).render());
                }
            }
            TokenCommand::Revoke(args) => {
                let id = Uuid::parse_str(&args.id)
                    .with_context(|| format!("`{}` is not a token id", args.id))?;
                args.remote.client()?.revoke_token(id).await?;
                if args.json {
                    print_json(&serde_json::json!({ "id": id, "revoked": true }))?;
                } else {
                    println!("revoked token {id}");
                }
            }
        }
        Ok(0)
    })
}

fn projects_table(projects: &[ProjectView], now: i64) -> Table {
    let mut t = Table::new(&["NAME", "ID", "CREATED"]);
    for p in projects {
        t.row([p.name.clone(), p.id.to_string(), ago(now, p.created_at_ms)]);
    }
    t
}

fn tokens_table(tokens: &[TokenView], now: i64) -> Table {
    let mut t = Table::new(&["NAME", "ID", "PROJECT", "STATUS", "CREATED"]);
    for k in tokens {
        t.row([
            k.name.clone(),
            k.id.to_string(),
            k.project.clone().unwrap_or_else(|| "(admin)".into()),
            if k.revoked_at_ms.is_some() {
                "revoked"
            } else {
                "active"
            }
            .into(),
            ago(now, k.created_at_ms),
        ]);
    }
    t
}
