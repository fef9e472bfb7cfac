//! What `lint` and `run` share: reading the definition, the policy and the plugins.

use anyhow::{bail, Context, Result};
use clap::Args;
use rivet_core::Policy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Options shared by every command that evaluates a pipeline.
#[derive(Debug, Clone, Args)]
pub struct PipelineOptions {
    /// Sandbox policy file (TOML). Without it, the safe defaults apply (see docs/policy.md).
    #[arg(long, value_name = "FILE", env = "RIVET_POLICY")]
    pub policy: Option<PathBuf>,
    /// Directory of Lua plugins (`NAME.lua`). Default: `plugins/` beside the pipeline file if it
    /// exists, else the plugins built into rivet.
    #[arg(long, value_name = "DIR", env = "RIVET_PLUGIN_DIR")]
    pub plugins: Option<PathBuf>,
}

/// A definition ready to send to a worker.
#[derive(Debug)]
pub struct Prepared {
    /// File name for messages.
    pub file_name: String,
    /// Source text.
    pub source: String,
    /// The policy in force.
    pub policy: Policy,
    /// Plugin sources by name.
    pub plugins: BTreeMap<String, String>,
}

/// Reads the pipeline file, the policy and the plugins.
pub fn prepare(file: &Path, opts: &PipelineOptions) -> Result<Prepared> {
    let policy = rivet_sandbox::read_policy(opts.policy.as_deref()).map_err(anyhow::Error::msg)?;
    let source = read_source(file, policy.limits.max_source)?;
    let file_name = file_name(file);

    let dir = match &opts.plugins {
        Some(d) => {
            if !d.is_dir() {
                bail!("plugin directory {} does not exist", d.display());
            }
            Some(d.clone())
        }
        None => file
            .parent()
            .map(|p| p.join("plugins"))
            .filter(|p| p.is_dir()),
    };
    let plugins = rivet_sandbox::plugins::catalog(dir.as_deref()).with_context(|| match &dir {
        Some(d) => format!("reading plugins in {}", d.display()),
        None => "reading plugins".to_owned(),
    })?;
    Ok(Prepared {
        file_name,
        source,
        policy,
        plugins,
    })
}

/// Reads a definition as text, refusing files over `max_source` bytes and precompiled Lua
/// bytecode before anything evaluates or sends them.
pub fn read_source(file: &Path, max_source: u64) -> Result<String> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if meta.len() > max_source {
        bail!(
            "{} is larger than the limit of {max_source} bytes (limits.max_source)",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if bytes.first() == Some(&0x1b) {
        bail!("policy violation [lua.bytecode]: {} is precompiled Lua bytecode; Rivet runs source text only", file.display());
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", file.display()))
}

/// The file name a definition is known by in messages.
pub fn file_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline.lua".into())
}

/// Options to start workers from this executable.
pub fn worker_options() -> Result<rivet_sandbox::WorkerOptions> {
    let mut options = rivet_sandbox::WorkerOptions::current_exe()
        .context("locating the rivet executable to start a sandbox worker")?;
    // Container calls go to the engine at RIVET_CONTAINER_HOST, else to the first usual socket
    // that exists; the connection is made only when a job first uses `container`.
    let host = std::env::var("RIVET_CONTAINER_HOST").ok().or_else(|| {
        CONTAINER_SOCKETS
            .iter()
            .find(|p| Path::new(p).exists())
            .map(|p| format!("unix://{p}"))
    });
    if let Some(host) = host {
        let services = rivet_sandbox::HostServices::new(&Policy::default())
            .with_container_host(host, format!("cli-{}", std::process::id()));
        options.host = std::sync::Arc::new(services);
    }
    Ok(options)
}

/// Engine sockets tried, in order, when RIVET_CONTAINER_HOST is not set.
const CONTAINER_SOCKETS: [&str; 3] = [
    "/run/rivet-podman/podman.sock",
    "/run/podman/podman.sock",
    "/var/run/docker.sock",
];
