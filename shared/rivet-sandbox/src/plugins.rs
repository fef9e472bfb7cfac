//! Lua plugins: `plugins/NAME.lua`, loaded as text into the job's VM and nothing else.
//!
//! A plugin file returns a table: `requires` (core modules and other plugins it needs),
//! `binaries` (programs it runs, so a runner advertises `plugin.NAME` only when they exist),
//! `description`, and its functions. Its top level runs with no core modules; its functions see
//! the modules the job was granted when they are called.

use crate::vm::{load_text, readonly};
use mlua::{Lua, Table, Value};
use rivet_core::requirement::{Requirement, RequirementSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What a plugin declares about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The plugin's name (`git`).
    pub name: String,
    /// Its requirements.
    pub requires: RequirementSet,
    /// Programs it runs through `process`. An entry `a|b|c` is met by any one of them (a plugin
    /// that works with whichever of several tools the runner has).
    pub binaries: Vec<String>,
    /// What it does.
    pub description: Option<String>,
}

/// Plugins compiled into every Rivet binary, so a pipeline runs from any directory. A plugin of
/// the same name in a plugin directory takes precedence.
pub const BUILTIN: &[(&str, &str)] = &[
    ("git", include_str!("../../../plugins/git.lua")),
    ("slack", include_str!("../../../plugins/slack.lua")),
    (
        "docker-compose",
        include_str!("../../../plugins/docker-compose.lua"),
    ),
];

/// The built-in plugins, then those of `dir` (if given) over them.
pub fn catalog(dir: Option<&Path>) -> std::io::Result<BTreeMap<String, String>> {
    let mut plugins: BTreeMap<String, String> = BUILTIN
        .iter()
        .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
        .collect();
    if let Some(dir) = dir {
        plugins.extend(read_dir(dir)?);
    }
    Ok(plugins)
}

/// Reads every `*.lua` in `dir` into a name → source map. Names that are not valid plugin names
/// are skipped with an error, never loaded.
pub fn read_dir(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().and_then(|e| e.to_str()) != Some("lua") || stem.ends_with("_test") {
            continue;
        }
        if Requirement::parse(&format!("plugin.{stem}")).is_err() {
            continue;
        }
        out.insert(stem.to_owned(), std::fs::read_to_string(&path)?);
    }
    Ok(out)
}

/// Whether a `binaries` entry (`git`, or alternatives `docker-compose|podman-compose`) is met
/// by `available`.
pub fn binary_met(entry: &str, available: impl Fn(&str) -> bool) -> bool {
    entry.split('|').any(available)
}

/// The global name a plugin is injected as: `docker-compose` becomes `docker_compose`.
pub fn global_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Evaluates a plugin's source in `lua` with `env` and reads its manifest. Returns the
/// read-only module table and the manifest.
pub fn load(lua: &Lua, env: Table, name: &str, source: &str) -> Result<(Table, Manifest), String> {
    let file = format!("plugins/{name}.lua");
    let value = load_text(lua, source, &file, env)
        .and_then(|f| f.call::<Value>(()))
        .map_err(|e| format!("plugin `{name}`: {}", crate::describe_error(&e)))?;
    let Value::Table(module) = value else {
        return Err(format!(
            "plugin `{name}`: {file} must return a table (it returned {})",
            value.type_name()
        ));
    };
    let mut requires = RequirementSet::default();
    if let Value::Table(list) = module
        .raw_get::<Value>("requires")
        .map_err(|e| e.to_string())?
    {
        for i in 1..=list.raw_len() {
            let text: String = list
                .raw_get(i)
                .map_err(|_| format!("plugin `{name}`: requires[{i}] must be a string"))?;
            let req = Requirement::parse(&text).map_err(|e| format!("plugin `{name}`: {e}"))?;
            requires.0.insert(req);
        }
    }
    let mut binaries = Vec::new();
    if let Value::Table(list) = module
        .raw_get::<Value>("binaries")
        .map_err(|e| e.to_string())?
    {
        for i in 1..=list.raw_len() {
            let b: String = list
                .raw_get(i)
                .map_err(|_| format!("plugin `{name}`: binaries[{i}] must be a string"))?;
            if !b.split('|').all(rivet_core::policy::is_program_name) {
                return Err(format!(
                    "plugin `{name}`: binaries[{i}] `{b}` must be a bare program name, or names separated by `|`"
                ));
            }
            binaries.push(b);
        }
    }
    let description = module
        .raw_get::<Option<String>>("description")
        .ok()
        .flatten();
    let view = readonly(lua, &module).map_err(|e| e.to_string())?;
    Ok((
        view,
        Manifest {
            name: name.to_owned(),
            requires,
            binaries,
            description,
        },
    ))
}

/// Reads a plugin's manifest by evaluating its file in a fresh hardened VM under the definition
/// limits, in this process. For operator-installed plugin files (runner start-up), never for
/// pipeline code. The VM is never closed (no finalizer can run).
pub fn manifest(
    name: &str,
    source: &str,
    limits: &rivet_core::policy::Limits,
) -> Result<Manifest, String> {
    let vm =
        crate::vm::new_vm(limits.definition_memory).map_err(|e| format!("plugin `{name}`: {e}"))?;
    vm.budget
        .arm(limits.definition_instructions, limits.definition_timeout);
    let globals = vm.lua.globals();
    let result = load(&vm.lua, globals, name, source).map(|(_, m)| m);
    std::mem::forget(vm);
    result
}
