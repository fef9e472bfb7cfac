//! Requirements: what a pipeline needs from the runner that executes it.
//!
//! A requirement is at once a routing constraint (only a runner that has it may take the job)
//! and a permission (a core module exists in the job's Lua state only when required).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// A core module that must be granted explicitly. `log`, `env` and `json` are always present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum CoreModule {
    /// `process.run`: allow-listed binaries only.
    Process,
    /// `filesystem.*`: paths jailed beneath the job workspace.
    Filesystem,
    /// `http.*`: outbound requests under SSRF and rate policy.
    Http,
    /// `container.*` and stage `container = "image"`.
    Container,
}

impl CoreModule {
    /// Every grantable core module.
    pub const ALL: [CoreModule; 4] = [Self::Process, Self::Filesystem, Self::Http, Self::Container];

    /// The global name of the module in Lua, and its name in `requires`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Filesystem => "filesystem",
            Self::Http => "http",
            Self::Container => "container",
        }
    }
}

/// Names that are always present and must not be listed in `requires`.
pub const ALWAYS_PRESENT: [&str; 3] = ["log", "env", "json"];

/// Longest class key kept readable; longer ones are hashed.
pub const MAX_CLASS_KEY: usize = 200;

/// One entry of a `requires` list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Requirement {
    /// A core module such as `process`.
    Module {
        /// Which module.
        module: CoreModule,
    },
    /// A Lua plugin from `plugins/NAME.lua`, written `plugin.NAME`.
    Plugin {
        /// The plugin's name (`git` for `plugin.git`).
        name: String,
    },
    /// A runner label, written `label:key=value`.
    Label {
        /// Label key.
        key: String,
        /// Required value.
        value: String,
    },
}

/// Why a `requires` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// The entry names something Rivet does not know.
    #[error("unknown requirement `{text}`{hint}; known: process, filesystem, http, container, plugin.NAME, label:KEY=VALUE")]
    Unknown {
        /// The entry as written.
        text: String,
        /// A "did you mean" suffix, possibly empty.
        hint: String,
    },
    /// `log`, `env` and `json` are always there.
    #[error("`{text}` is always available and must not be listed in `requires`")]
    AlwaysPresent {
        /// The entry as written.
        text: String,
    },
    /// A plugin or label name with characters outside the allowed set.
    #[error("malformed requirement `{text}`: {why}")]
    Malformed {
        /// The entry as written.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_label_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Requirement {
    /// Parses one `requires` entry.
    pub fn parse(text: &str) -> Result<Self, RequirementError> {
        if let Some(module) = CoreModule::ALL.into_iter().find(|m| m.name() == text) {
            return Ok(Self::Module { module });
        }
        if ALWAYS_PRESENT.contains(&text) {
            return Err(RequirementError::AlwaysPresent { text: text.into() });
        }
        if let Some(name) = text.strip_prefix("plugin.") {
            if !is_name(name) {
                return Err(RequirementError::Malformed {
                    text: text.into(),
                    why: "a plugin name is lowercase letters, digits, `_` and `-`, starting with a letter",
                });
            }
            return Ok(Self::Plugin { name: name.into() });
        }
        if let Some(label) = text.strip_prefix("label:") {
            let Some((key, value)) = label.split_once('=') else {
                return Err(RequirementError::Malformed {
                    text: text.into(),
                    why: "write a label as label:KEY=VALUE",
                });
            };
            if !is_label_part(key) || !is_label_part(value) {
                return Err(RequirementError::Malformed {
                    text: text.into(),
                    why: "label keys and values are letters, digits, `_`, `-` and `.`",
                });
            }
            return Ok(Self::Label {
                key: key.into(),
                value: value.into(),
            });
        }
        let names = CoreModule::ALL.map(CoreModule::name);
        Err(RequirementError::Unknown {
            text: text.into(),
            hint: crate::suggest::hint(text, names),
        })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Module { module } => f.write_str(module.name()),
            Self::Plugin { name } => write!(f, "plugin.{name}"),
            Self::Label { key, value } => write!(f, "label:{key}={value}"),
        }
    }
}

/// A sorted, de-duplicated set of requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RequirementSet(pub BTreeSet<Requirement>);

impl RequirementSet {
    /// Whether a core module is in the set.
    pub fn has_module(&self, module: CoreModule) -> bool {
        self.0.contains(&Requirement::Module { module })
    }

    /// Plugin names in the set, sorted.
    pub fn plugins(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|r| match r {
            Requirement::Plugin { name } => Some(name.as_str()),
            _ => None,
        })
    }

    /// The canonical class key: entries sorted and joined with `,`; `any` when empty; longer
    /// than [`MAX_CLASS_KEY`] bytes, `h-` and the SHA-256 of that text (queue names and routing
    /// keys are limited to 255 bytes).
    pub fn class_key(&self) -> String {
        use sha2::Digest;
        if self.0.is_empty() {
            return "any".into();
        }
        let joined = self.to_strings().join(",");
        if joined.len() <= MAX_CLASS_KEY {
            return joined;
        }
        let digest = sha2::Sha256::digest(joined.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("h-{hex}")
    }

    /// The entries as written, sorted.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            Requirement::parse("process").unwrap(),
            Requirement::Module {
                module: CoreModule::Process
            }
        );
        assert_eq!(
            Requirement::parse("plugin.git").unwrap(),
            Requirement::Plugin { name: "git".into() }
        );
        assert_eq!(
            Requirement::parse("label:region=eu").unwrap(),
            Requirement::Label {
                key: "region".into(),
                value: "eu".into()
            }
        );
    }

    #[test]
    fn refuses_unknown_and_always_present() {
        let err = Requirement::parse("proces").unwrap_err().to_string();
        assert!(err.contains("did you mean `process`"), "{err}");
        assert!(matches!(
            Requirement::parse("log"),
            Err(RequirementError::AlwaysPresent { .. })
        ));
        assert!(matches!(
            Requirement::parse("plugin.../x"),
            Err(RequirementError::Malformed { .. })
        ));
        assert!(matches!(
            Requirement::parse("label:region"),
            Err(RequirementError::Malformed { .. })
        ));
    }

    #[test]
    fn class_key_is_canonical() {
        let a: RequirementSet = RequirementSet(
            ["process", "plugin.git", "process"]
                .iter()
                .map(|r| Requirement::parse(r).unwrap())
                .collect(),
        );
        let b: RequirementSet = RequirementSet(
            ["plugin.git", "process"]
                .iter()
                .map(|r| Requirement::parse(r).unwrap())
                .collect(),
        );
        assert_eq!(a.class_key(), b.class_key());
        assert_eq!(RequirementSet::default().class_key(), "any");
        let long = RequirementSet(
            (0..40)
                .map(|i| Requirement::parse(&format!("label:key{i}=value{i}")).unwrap())
                .collect(),
        );
        let key = long.class_key();
        assert!(key.starts_with("h-") && key.len() == 66, "{key}");
        assert_eq!(key, long.clone().class_key());
    }
}
