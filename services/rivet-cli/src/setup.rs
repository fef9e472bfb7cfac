//! What `lint` and `run` share: reading the definition, the policy and the plugins.

use anyhow::{bail, Context, Result};
use clap::Args;
use rivet_core::Policy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Plugins compiled into the binary, so `rivet run` works from any directory. A plugin of the
/// same name in the plugin directory takes precedence.
const BUILTIN_PLUGINS: &[(&str, &str)] = &[("git", include_str!("../../../plugins/git.lua"))];

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
    let policy = match &opts.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading policy {}", path.display()))?;
            Policy::from_toml(&text).with_context(|| format!("policy {}", path.display()))?
        }
        None => Policy::default(),
    };
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if meta.len() > policy.limits.max_source {
        bail!(
            "{} is larger than the limit of {} bytes (limits.max_source)",
            file.display(),
            policy.limits.max_source
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if bytes.first() == Some(&0x1b) {
        bail!("policy violation [lua.bytecode]: {} is precompiled Lua bytecode; Rivet runs source text only", file.display());
    }
    let source = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", file.display()))?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline.lua".into());

    let mut plugins: BTreeMap<String, String> = BUILTIN_PLUGINS
        .iter()
        .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
        .collect();
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
    if let Some(dir) = dir {
        let found = rivet_sandbox::plugins::read_dir(&dir)
            .with_context(|| format!("reading plugins in {}", dir.display()))?;
        plugins.extend(found);
    }
    Ok(Prepared {
        file_name,
        source,
        policy,
        plugins,
    })
}

/// Options to start workers from this executable.
pub fn worker_options() -> Result<rivet_sandbox::WorkerOptions> {
    rivet_sandbox::WorkerOptions::current_exe()
        .context("locating the rivet executable to start a sandbox worker")
}
