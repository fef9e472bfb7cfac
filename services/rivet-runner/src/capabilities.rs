//! What this runner can do: the core modules of this build, `plugin.NAME` for every plugin whose
//! own requirements (binaries included) are met, and labels.

use rivet_core::policy::Limits;
use rivet_core::requirement::{CoreModule, Requirement};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Core modules this build provides.
/// `http` is served by the runner itself (the parent of each worker), so every runner has it.
pub const CORE: [CoreModule; 3] = [
    CoreModule::Process,
    CoreModule::Filesystem,
    CoreModule::Http,
];

/// What [`detect`] found.
#[derive(Debug, Default)]
pub struct Detected {
    /// Capabilities to advertise.
    pub capabilities: Vec<String>,
    /// Why each plugin that is not advertised was left out.
    pub notes: Vec<String>,
    /// For each plugin whose manifest could be read, the plugins it requires.
    pub needs: BTreeMap<String, Vec<String>>,
}

/// Capabilities, why each plugin that is not advertised was left out, and which plugins each
/// plugin requires.
pub fn detect(
    plugins: &BTreeMap<String, String>,
    binaries: &BTreeMap<String, PathBuf>,
    labels: &BTreeMap<String, String>,
    limits: &Limits,
    engine: &[&str],
) -> Detected {
    let mut caps: BTreeSet<String> = CORE.iter().map(|m| m.name().to_owned()).collect();
    // `container` (and which engine) only when an engine answered at start.
    caps.extend(engine.iter().map(|c| (*c).to_owned()));
    let mut notes = Vec::new();
    let mut manifests = BTreeMap::new();
    for (name, source) in plugins {
        match rivet_sandbox::plugins::manifest(name, source, limits) {
            Ok(m) => {
                manifests.insert(name.clone(), m);
            }
            Err(e) => notes.push(format!("plugin.{name} is not advertised: {e}")),
        }
    }
    // A plugin may need another plugin: add plugins until nothing changes.
    loop {
        let mut added = false;
        for (name, m) in &manifests {
            let cap = format!("plugin.{name}");
            if caps.contains(&cap) {
                continue;
            }
            let requirements_met = m.requires.0.iter().all(|r| match r {
                Requirement::Module { module } => caps.contains(module.name()),
                Requirement::Plugin { name } => caps.contains(&format!("plugin.{name}")),
                Requirement::Label { key, value } => labels.get(key) == Some(value),
            });
            let binaries_met = m
                .binaries
                .iter()
                .all(|b| rivet_sandbox::plugins::binary_met(b, |one| binaries.contains_key(one)));
            if requirements_met && binaries_met {
                caps.insert(cap);
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    for (name, m) in &manifests {
        if !caps.contains(&format!("plugin.{name}")) {
            let missing: Vec<String> = m
                .requires
                .0
                .iter()
                .map(ToString::to_string)
                .filter(|r| !caps.contains(r) && !r.starts_with("label:"))
                .chain(
                    m.binaries
                        .iter()
                        .filter(|b| {
                            !rivet_sandbox::plugins::binary_met(b, |one| binaries.contains_key(one))
                        })
                        .map(|b| format!("binary `{b}`")),
                )
                .collect();
            notes.push(format!(
                "plugin.{name} is not advertised: missing {}",
                missing.join(", ")
            ));
        }
    }
    let needs = manifests
        .iter()
        .map(|(name, m)| {
            let plugins = m.requires.0.iter().filter_map(|r| match r {
                Requirement::Plugin { name } => Some(name.clone()),
                _ => None,
            });
            (name.clone(), plugins.collect())
        })
        .collect();
    Detected {
        capabilities: caps.into_iter().collect(),
        notes,
        needs,
    }
}

/// The plugin sources a job may load: the plugins its requirements name and, transitively, the
/// plugins their manifests require. The worker loads exactly these (a definition can only
/// `require` a plugin it declares), so the rest of the catalog is not sent with the job.
pub fn for_job(
    requires: &[String],
    plugins: &BTreeMap<String, String>,
    needs: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut queue: Vec<&str> = requires
        .iter()
        .filter_map(|r| r.strip_prefix("plugin."))
        .collect();
    while let Some(name) = queue.pop() {
        if out.contains_key(name) {
            continue;
        }
        if let Some(source) = plugins.get(name) {
            out.insert(name.to_owned(), source.clone());
        }
        queue.extend(needs.get(name).into_iter().flatten().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_need_their_requirements_and_binaries() {
        let plugins: BTreeMap<String, String> = [
            (
                "git".to_string(),
                "return { requires = {'process'}, binaries = {'git'} }".to_string(),
            ),
            (
                "deploy".to_string(),
                "return { requires = {'plugin.git', 'process'} }".to_string(),
            ),
            (
                "gpu".to_string(),
                "return { requires = {'process'}, binaries = {'nvidia-smi'} }".to_string(),
            ),
            ("broken".to_string(), "return 42".to_string()),
            (
                "either".to_string(),
                "return { requires = {'process'}, binaries = {'nvidia-smi|git'} }".to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let binaries: BTreeMap<String, PathBuf> =
            [("git".to_string(), PathBuf::from("/usr/bin/git"))]
                .into_iter()
                .collect();
        let Detected {
            capabilities: caps,
            notes,
            needs,
        } = detect(
            &plugins,
            &binaries,
            &BTreeMap::new(),
            &Limits::default(),
            &[],
        );
        assert_eq!(
            caps,
            [
                "filesystem",
                "http",
                "plugin.deploy",
                "plugin.either",
                "plugin.git",
                "process"
            ]
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("plugin.gpu") && n.contains("binary `nvidia-smi`")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("plugin.broken")),
            "{notes:?}"
        );
        assert_eq!(needs["deploy"], ["git"]);
        assert!(needs["git"].is_empty() && !needs.contains_key("broken"));
        // A job gets the plugins it names and what they need, nothing else.
        let sent = for_job(
            &["process".into(), "plugin.deploy".into()],
            &plugins,
            &needs,
        );
        assert_eq!(sent.keys().collect::<Vec<_>>(), ["deploy", "git"]);
        assert_eq!(sent["git"], plugins["git"]);
        assert!(for_job(&["process".into()], &plugins, &needs).is_empty());
        let caps = detect(
            &plugins,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &Limits::default(),
            &[],
        )
        .capabilities;
        assert_eq!(
            caps,
            ["filesystem", "http", "process"],
            "without git, neither git nor what needs it"
        );
    }

    #[test]
    fn container_is_advertised_only_with_an_engine() {
        let plugins: BTreeMap<String, String> = [(
            "compose".to_string(),
            "return { requires = {'container'} }".to_string(),
        )]
        .into_iter()
        .collect();
        let none = BTreeMap::new();
        let no_labels = BTreeMap::new();
        let caps = detect(&plugins, &none, &no_labels, &Limits::default(), &[]).capabilities;
        assert_eq!(caps, ["filesystem", "http", "process"]);
        let caps = detect(
            &plugins,
            &none,
            &no_labels,
            &Limits::default(),
            &["container", "container.podman"],
        )
        .capabilities;
        assert_eq!(
            caps,
            [
                "container",
                "container.podman",
                "filesystem",
                "http",
                "plugin.compose",
                "process"
            ]
        );
    }
}
