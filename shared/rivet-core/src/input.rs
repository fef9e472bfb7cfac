//! Pipeline inputs: their types, values, and resolution of what a user supplied against what a
//! definition declares.

use crate::definition::InputSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The type of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Any UTF-8 text.
    String,
    /// A finite number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl InputType {
    /// All types, for messages.
    pub const NAMES: [&'static str; 3] = ["string", "number", "boolean"];

    /// Parses a type name as written in a definition.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "string" => Some(Self::String),
            "number" => Some(Self::Number),
            "boolean" => Some(Self::Boolean),
            _ => None,
        }
    }

    /// The type's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Boolean => "boolean",
        }
    }

    /// Reads a command-line or form value as this type.
    pub fn parse_value(self, text: &str) -> Result<InputValue, String> {
        match self {
            Self::String => Ok(InputValue::String(text.to_owned())),
            Self::Number => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(InputValue::Number)
                .ok_or_else(|| format!("`{text}` is not a number")),
            Self::Boolean => match text.trim() {
                "true" | "yes" | "1" | "on" => Ok(InputValue::Boolean(true)),
                "false" | "no" | "0" | "off" => Ok(InputValue::Boolean(false)),
                _ => Err(format!("`{text}` is not a boolean (use true or false)")),
            },
        }
    }
}

/// A typed input value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum InputValue {
    /// A boolean.
    Boolean(bool),
    /// A number.
    Number(f64),
    /// A string.
    String(String),
}

impl InputValue {
    /// The value's type.
    pub fn ty(&self) -> InputType {
        match self {
            Self::String(_) => InputType::String,
            Self::Number(_) => InputType::Number,
            Self::Boolean(_) => InputType::Boolean,
        }
    }
}

impl fmt::Display for InputValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => write!(f, "{}", *n as i64),
            Self::Number(n) => write!(f, "{n}"),
            Self::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// One problem with one supplied input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InputError {
    /// The input's name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input `{}`: {}", self.field, self.message)
    }
}

/// Resolves supplied text values against the declared inputs: parses types, applies defaults,
/// checks `required` and `options`, and refuses undeclared names. Reports every problem at once.
pub fn resolve(
    declared: &[InputSpec],
    supplied: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, InputValue>, Vec<InputError>> {
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, _) in supplied
        .iter()
        .filter(|(n, _)| !declared.iter().any(|d| &d.name == *n))
    {
        let hint = crate::suggest::hint(name, declared.iter().map(|d| d.name.as_str()));
        errors.push(InputError {
            field: name.clone(),
            message: format!("is not declared by the pipeline{hint}"),
        });
    }
    for spec in declared {
        let value = match supplied.get(&spec.name) {
            Some(text) => match spec.ty.parse_value(text) {
                Ok(v) => v,
                Err(message) => {
                    errors.push(InputError {
                        field: spec.name.clone(),
                        message,
                    });
                    continue;
                }
            },
            None => match &spec.default {
                Some(default) => default.clone(),
                None if spec.required => {
                    errors.push(InputError {
                        field: spec.name.clone(),
                        message: "is required".into(),
                    });
                    continue;
                }
                None => continue,
            },
        };
        if let Some(options) = &spec.options {
            if !options.contains(&value) {
                let allowed = options
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.push(InputError {
                    field: spec.name.clone(),
                    message: format!("`{value}` is not one of the allowed values: {allowed}"),
                });
                continue;
            }
        }
        values.insert(spec.name.clone(), value);
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, ty: InputType) -> InputSpec {
        InputSpec {
            name: name.into(),
            ty,
            description: None,
            required: false,
            default: None,
            options: None,
        }
    }

    #[test]
    fn applies_defaults_parses_types_and_reports_everything() {
        let declared = vec![
            InputSpec {
                required: true,
                ..spec("repo_url", InputType::String)
            },
            InputSpec {
                default: Some(InputValue::String("main".into())),
                ..spec("branch", InputType::String)
            },
            spec("jobs", InputType::Number),
            InputSpec {
                options: Some(vec![
                    InputValue::String("dev".into()),
                    InputValue::String("prod".into()),
                ]),
                ..spec("target", InputType::String)
            },
        ];
        let ok = resolve(
            &declared,
            &[
                ("repo_url".to_string(), "u".to_string()),
                ("jobs".into(), "4".into()),
            ]
            .into_iter()
            .collect(),
        )
        .unwrap();
        assert_eq!(ok["branch"], InputValue::String("main".into()));
        assert_eq!(ok["jobs"], InputValue::Number(4.0));
        assert!(!ok.contains_key("target"));

        let errs = resolve(
            &declared,
            &[
                ("jobs".to_string(), "four".to_string()),
                ("brnach".into(), "x".into()),
                ("target".into(), "qa".into()),
            ]
            .into_iter()
            .collect(),
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 4, "{text:?}");
        assert!(text
            .iter()
            .any(|e| e.contains("`brnach`") && e.contains("did you mean `branch`")));
        assert!(text.iter().any(|e| e.contains("`repo_url`: is required")));
        assert!(text.iter().any(|e| e.contains("`four` is not a number")));
        assert!(text.iter().any(|e| e.contains("allowed values: dev, prod")));
    }

    #[test]
    fn booleans_accept_common_spellings() {
        assert_eq!(
            InputType::Boolean.parse_value("yes").unwrap(),
            InputValue::Boolean(true)
        );
        assert!(InputType::Boolean.parse_value("maybe").is_err());
        assert!(InputType::Number.parse_value("inf").is_err());
    }
}
