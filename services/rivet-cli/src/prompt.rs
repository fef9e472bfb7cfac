//! Asking for a missing required input on a terminal: shared by local and remote runs.

use anyhow::{bail, Result};
use std::io::{BufRead, Write};

/// Asks for the value of input `name` on stderr and reads one line from stdin.
pub fn prompt(name: &str, decl: Option<&rivet_core::InputSpec>) -> Result<String> {
    let mut stderr = std::io::stderr();
    let ty = decl.map(|d| d.ty.name()).unwrap_or("string");
    let about = decl
        .and_then(|d| d.description.as_deref())
        .map(|d| format!(" — {d}"))
        .unwrap_or_default();
    write!(stderr, "{name} ({ty}){about}: ")?;
    stderr.flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        bail!("input `{name}` is required and none was given");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// The declared inputs that must be asked for: required, without a default, and not given.
pub fn missing<'a>(
    declared: &'a [rivet_core::InputSpec],
    given: &std::collections::BTreeMap<String, String>,
) -> Vec<&'a rivet_core::InputSpec> {
    declared
        .iter()
        .filter(|d| d.required && d.default.is_none() && !given.contains_key(&d.name))
        .collect()
}
