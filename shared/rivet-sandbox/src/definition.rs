//! Evaluates a pipeline definition under tight limits and validates its shape, reporting every
//! problem at once with the line in the file where Lua (or the source text) knows it.

use crate::vm::{load_text, Budget};
use mlua::{Function, Lua, Table, Value};
use rivet_core::definition::{
    RetryOn, RetrySpec, INPUT_KEYS, MAX_RETRIES, PIPELINE_KEYS, RETRY_KEYS, STAGE_KEYS,
};
use rivet_core::policy::Limits;
use rivet_core::requirement::{Requirement, RequirementSet};
use rivet_core::suggest;
use rivet_core::{InputSpec, InputType, InputValue, PipelineSpec, Problem, StageSpec};
use std::collections::{BTreeMap, BTreeSet};

/// A definition that evaluated and validated: its shape, and the table holding its functions.
#[derive(Debug)]
pub struct Loaded {
    /// The validated shape.
    pub spec: PipelineSpec,
    /// The returned table (stage scripts and conditions live here).
    pub table: Table,
}

/// Evaluates `source` in `lua` with `env` as its environment and validates the result.
/// `plugins` names the plugins that exist, for checking `plugin.NAME` requirements.
pub fn evaluate(
    lua: &Lua,
    budget: &Budget,
    env: Table,
    source: &str,
    file_name: &str,
    limits: &Limits,
    plugins: &BTreeSet<String>,
) -> Result<Loaded, Vec<Problem>> {
    if source.len() as u64 > limits.max_source {
        return Err(vec![Problem::new(
            None,
            format!("the file is larger than {} bytes", limits.max_source),
        )]);
    }
    budget.arm(limits.definition_instructions, limits.definition_timeout);
    let value = load_text(lua, source, file_name, env)
        .and_then(|f| f.call::<Value>(()))
        .map_err(|e| vec![problem_from_error(&e, budget, file_name)])?;
    let Value::Table(table) = value else {
        return Err(vec![Problem::new(
            None,
            format!(
                "the file must return a table describing the pipeline (it returned {})",
                value.type_name()
            ),
        )]);
    };
    let mut v = Validator {
        source,
        problems: Vec::new(),
    };
    let spec = v.pipeline(&table, plugins);
    if v.problems.is_empty() {
        if let Some(spec) = spec {
            return Ok(Loaded { spec, table });
        }
    }
    let mut problems = v.problems;
    problems.sort_by_key(|p| p.line.unwrap_or(u32::MAX));
    Err(problems)
}

/// Turns a Lua error raised while loading or evaluating into a problem with its line.
pub fn problem_from_error(err: &mlua::Error, budget: &Budget, file_name: &str) -> Problem {
    if let Some(e) = budget.exhausted() {
        return Problem::new(None, format!("evaluating the definition: {}", e.message()));
    }
    let text = crate::describe_error(err);
    let prefix = format!("{file_name}:");
    if let Some(rest) = text.strip_prefix(&prefix) {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(line) = digits.parse::<u32>() {
            let message = rest[digits.len()..].trim_start_matches(':').trim_start();
            return Problem::new(Some(line), message.to_owned());
        }
    }
    Problem::new(None, text)
}

/// The line of the script function of a stage, or of any Lua function.
pub fn function_line(f: &Function) -> Option<u32> {
    f.info().line_defined.and_then(|l| u32::try_from(l).ok())
}

struct Validator<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn push(&mut self, line: Option<u32>, message: String) {
        self.problems.push(Problem::new(line, message));
    }

    /// The line where `key = ` is written, choosing the occurrence nearest `near`.
    fn key_line(&self, key: &str, near: Option<u32>) -> Option<u32> {
        let mut best: Option<u32> = None;
        for (idx, line) in self.source.lines().enumerate() {
            let n = idx as u32 + 1;
            let mut from = 0;
            while let Some(pos) = line[from..].find(key) {
                let start = from + pos;
                let end = start + key.len();
                from = end;
                let before_ok = start == 0 || {
                    let c = line.as_bytes()[start - 1];
                    !(c.is_ascii_alphanumeric() || c == b'_')
                };
                let after = line[end..].trim_start();
                let after_ok = (after.starts_with('=') && !after.starts_with("=="))
                    || after.starts_with("\"]")
                    || after.starts_with("']");
                if before_ok && after_ok {
                    best = match (best, near) {
                        (None, _) => Some(n),
                        (Some(b), Some(near)) if n.abs_diff(near) < b.abs_diff(near) => Some(n),
                        (b, _) => b,
                    };
                }
            }
        }
        best
    }

    /// The first line holding the string literal `"text"` or `'text'`.
    fn literal_line(&self, text: &str) -> Option<u32> {
        let (dq, sq) = (format!("\"{text}\""), format!("'{text}'"));
        self.source
            .lines()
            .position(|l| l.contains(&dq) || l.contains(&sq))
            .map(|i| i as u32 + 1)
    }

    fn keys(&mut self, t: &Table, allowed: &[&str], path: &str, near: Option<u32>) {
        for pair in t.clone().pairs::<Value, Value>() {
            let Ok((k, _)) = pair else { continue };
            match k {
                Value::String(s) => {
                    let key = s.to_string_lossy();
                    if !allowed.contains(&key.as_str()) {
                        let hint = suggest::hint(&key, allowed.iter().copied());
                        let line = self.key_line(&key, near);
                        let at = if path.is_empty() {
                            String::new()
                        } else {
                            format!("{path}: ")
                        };
                        self.push(line, format!("{at}unknown key `{key}`{hint}"));
                    }
                }
                other => {
                    let at = if path.is_empty() {
                        "the pipeline table".to_owned()
                    } else {
                        format!("`{path}`")
                    };
                    self.push(
                        near,
                        format!(
                            "{at} has a {} key; only named keys are allowed",
                            other.type_name()
                        ),
                    );
                }
            }
        }
    }

    fn string(&mut self, t: &Table, key: &str, path: &str, near: Option<u32>) -> Option<String> {
        match t.raw_get::<Value>(key).unwrap_or(Value::Nil) {
            Value::Nil => None,
            Value::String(s) => match s.to_str() {
                Ok(s) => Some(s.to_owned()),
                Err(_) => {
                    let line = self.key_line(key, near);
                    self.push(line, format!("{path}{key}: must be valid UTF-8 text"));
                    None
                }
            },
            other => {
                let line = self.key_line(key, near);
                self.push(
                    line,
                    format!("{path}{key}: must be a string, got {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A positive duration at `t[key]`: seconds (number) or text like `"5m"`; `zero_ok` also
    /// allows zero (a backoff).
    fn duration(
        &mut self,
        t: &Table,
        key: &str,
        path: &str,
        near: Option<u32>,
        zero_ok: bool,
    ) -> Option<std::time::Duration> {
        let bad = |this: &mut Self, msg: String| {
            this.push(this.key_line(key, near), msg);
            None
        };
        match t.raw_get::<Value>(key).unwrap_or(Value::Nil) {
            Value::Nil => None,
            Value::Integer(i) if i > 0 || (zero_ok && i == 0) => {
                Some(std::time::Duration::from_secs(i as u64))
            }
            Value::Number(x) if x > 0.0 => rivet_core::duration::seconds(x),
            Value::String(s) => match rivet_core::duration::parse_duration(&s.to_string_lossy()) {
                Ok(d) if !d.is_zero() || zero_ok => Some(d),
                Ok(_) => bad(self, format!("{path}`{key}` must be positive")),
                Err(e) => bad(self, format!("{path}`{key}`: {e}")),
            },
            other => bad(
                self,
                format!(
                    "{path}`{key}` must be a positive number of seconds or a string like \"5m\", got {}",
                    display_value(&other)
                ),
            ),
        }
    }

    /// `retries = {count = N, on = {...}, backoff = "5s"}`.
    fn retries(&mut self, t: &Table) -> Option<RetrySpec> {
        let r = match t.raw_get::<Value>("retries").unwrap_or(Value::Nil) {
            Value::Nil => return None,
            Value::Table(r) => r,
            other => {
                self.push(
                    self.key_line("retries", None),
                    format!(
                        "retries: must be a table like {{count = 2, on = {{\"lost\"}}, backoff = \"5s\"}}, got {}",
                        other.type_name()
                    ),
                );
                return None;
            }
        };
        let line = self.key_line("retries", None);
        self.keys(&r, &RETRY_KEYS, "retries.", line);
        let count = match r.raw_get::<Value>("count").unwrap_or(Value::Nil) {
            Value::Nil => RetrySpec::default().count,
            Value::Integer(i) if (0..=i64::from(MAX_RETRIES)).contains(&i) => i as u32,
            other => {
                self.push(
                    line,
                    format!(
                        "retries.count: must be a whole number from 0 to {MAX_RETRIES}, got {}",
                        display_value(&other)
                    ),
                );
                0
            }
        };
        let mut on = Vec::new();
        match r.raw_get::<Value>("on").unwrap_or(Value::Nil) {
            Value::Nil => on = RetrySpec::default().on,
            Value::Table(list) => {
                for (i, item) in sequence(&list).into_iter().enumerate() {
                    let text = match &item {
                        Value::String(s) => s.to_string_lossy(),
                        other => {
                            self.push(
                                line,
                                format!(
                                    "retries.on[{}]: must be a string, got {}",
                                    i + 1,
                                    other.type_name()
                                ),
                            );
                            continue;
                        }
                    };
                    match RetryOn::parse(&text) {
                        Some(reason) => on.push(reason),
                        None => {
                            let hint = suggest::hint(&text, RetryOn::WORDS.iter().copied());
                            self.push(
                                line,
                                format!(
                                    "retries.on[{}]: `{text}` is not an outcome that can be retried{hint} (one of: {})",
                                    i + 1,
                                    RetryOn::WORDS.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
            other => self.push(
                line,
                format!(
                    "retries.on: must be a list such as {{\"lost\", \"failed\"}}, got {}",
                    other.type_name()
                ),
            ),
        }
        let backoff = self
            .duration(&r, "backoff", "retries.", line, true)
            .unwrap_or_default();
        Some(RetrySpec { count, on, backoff })
    }

    fn pipeline(&mut self, t: &Table, plugins: &BTreeSet<String>) -> Option<PipelineSpec> {
        self.keys(t, &PIPELINE_KEYS, "", None);
        let name = self.string(t, "name", "", None);
        match name.as_deref() {
            None => self.push(None, "`name` is required: a non-empty string".into()),
            Some(n) if n.trim().is_empty() => self.push(
                self.key_line("name", None),
                "`name` must not be empty".into(),
            ),
            Some(_) => {}
        }
        let description = self.string(t, "description", "", None);
        let requires = self.requires(t, plugins);
        let inputs = self.inputs(t);
        let stages = self.stages(t, &requires);
        let timeout = self.duration(t, "timeout", "", None, false);
        let queue_timeout = self.duration(t, "queue_timeout", "", None, false);
        let retries = self.retries(t).unwrap_or_default();
        Some(PipelineSpec {
            name: name?,
            description,
            requires,
            inputs,
            stages,
            timeout,
            queue_timeout,
            retries,
        })
    }

    fn requires(&mut self, t: &Table, plugins: &BTreeSet<String>) -> RequirementSet {
        let mut set = RequirementSet::default();
        let list = match t.raw_get::<Value>("requires").unwrap_or(Value::Nil) {
            Value::Nil => return set,
            Value::Table(l) => l,
            other => {
                self.push(
                    self.key_line("requires", None),
                    format!(
                        "requires: must be a list of strings, got {}",
                        other.type_name()
                    ),
                );
                return set;
            }
        };
        let line = self.key_line("requires", None);
        for (i, item) in sequence(&list).into_iter().enumerate() {
            let Value::String(s) = item else {
                self.push(
                    line,
                    format!(
                        "requires[{}]: must be a string, got {}",
                        i + 1,
                        item.type_name()
                    ),
                );
                continue;
            };
            let text = s.to_string_lossy();
            match Requirement::parse(&text) {
                Ok(Requirement::Plugin { name }) if !plugins.contains(&name) => {
                    let hint = suggest::hint(&name, plugins.iter().map(String::as_str));
                    let known = plugins
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.push(
                        line,
                        format!("unknown requirement `{text}`: no plugin named `{name}`{hint} (available: {known})"),
                    );
                }
                Ok(r) => {
                    set.0.insert(r);
                }
                Err(e) => self.push(line, format!("requires[{}]: {e}", i + 1)),
            }
        }
        if list.raw_len() != count(&list) {
            self.push(
                line,
                "requires: must be a list (a sequence 1..n), not a table with other keys".into(),
            );
        }
        set
    }

    fn inputs(&mut self, t: &Table) -> Vec<InputSpec> {
        let mut out = Vec::new();
        let table = match t.raw_get::<Value>("inputs").unwrap_or(Value::Nil) {
            Value::Nil => return out,
            Value::Table(x) => x,
            other => {
                self.push(
                    self.key_line("inputs", None),
                    format!(
                        "inputs: must be a table of input declarations, got {}",
                        other.type_name()
                    ),
                );
                return out;
            }
        };
        for pair in table.clone().pairs::<Value, Value>() {
            let Ok((k, v)) = pair else { continue };
            let Value::String(k) = k else {
                self.push(
                    self.key_line("inputs", None),
                    format!(
                        "inputs: keys must be input names, got a {} key",
                        k.type_name()
                    ),
                );
                continue;
            };
            let name = k.to_string_lossy();
            let line = self.key_line(&name, None);
            if !is_identifier(&name) {
                self.push(line, format!("inputs.{name}: an input name is letters, digits and `_`, not starting with a digit"));
                continue;
            }
            let Value::Table(decl) = v else {
                self.push(
                    line,
                    format!(
                        "inputs.{name}: must be a table like {{type = \"string\"}}, got {}",
                        v.type_name()
                    ),
                );
                continue;
            };
            if let Some(spec) = self.input(&name, &decl, line) {
                out.push(spec);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn input(&mut self, name: &str, decl: &Table, line: Option<u32>) -> Option<InputSpec> {
        let path = format!("inputs.{name}.");
        self.keys(decl, &INPUT_KEYS, &format!("inputs.{name}"), line);
        let ty = match self.string(decl, "type", &path, line) {
            None => InputType::String,
            Some(t) => {
                match InputType::parse(&t) {
                    Some(ty) => ty,
                    None => {
                        let hint = suggest::hint(&t, InputType::NAMES);
                        self.push(self.key_line("type", line), format!("{path}type: unknown type `{t}`{hint}; use string, number or boolean"));
                        return None;
                    }
                }
            }
        };
        let description = self.string(decl, "description", &path, line);
        let required = match decl.raw_get::<Value>("required").unwrap_or(Value::Nil) {
            Value::Nil => false,
            Value::Boolean(b) => b,
            other => {
                self.push(
                    self.key_line("required", line),
                    format!(
                        "{path}required: must be true or false, got {}",
                        other.type_name()
                    ),
                );
                false
            }
        };
        let default = match decl.raw_get::<Value>("default").unwrap_or(Value::Nil) {
            Value::Nil => None,
            v => match input_value(&v) {
                Some(value) if value.ty() == ty => Some(value),
                Some(value) => {
                    self.push(
                        self.key_line("default", line),
                        format!(
                            "{path}default: `{value}` is a {} but the input's type is {}",
                            value.ty().name(),
                            ty.name()
                        ),
                    );
                    None
                }
                None => {
                    self.push(
                        self.key_line("default", line),
                        format!(
                            "{path}default: must be a {}, got {}",
                            ty.name(),
                            v.type_name()
                        ),
                    );
                    None
                }
            },
        };
        let options = match decl.raw_get::<Value>("options").unwrap_or(Value::Nil) {
            Value::Nil => None,
            Value::Table(list) => {
                let mut values = Vec::new();
                for item in sequence(&list) {
                    match input_value(&item) {
                        Some(v) if v.ty() == ty => values.push(v),
                        _ => self.push(
                            self.key_line("options", line),
                            format!(
                                "{path}options: every option must be a {}, got {}",
                                ty.name(),
                                item.type_name()
                            ),
                        ),
                    }
                }
                if values.is_empty() {
                    self.push(
                        self.key_line("options", line),
                        format!("{path}options: must list at least one allowed value"),
                    );
                }
                Some(values)
            }
            other => {
                self.push(
                    self.key_line("options", line),
                    format!("{path}options: must be a list, got {}", other.type_name()),
                );
                None
            }
        };
        if let (Some(d), Some(opts)) = (&default, &options) {
            if !opts.is_empty() && !opts.contains(d) {
                self.push(
                    self.key_line("default", line),
                    format!("{path}default: `{d}` is not one of the options"),
                );
            }
        }
        Some(InputSpec {
            name: name.to_owned(),
            ty,
            description,
            required,
            default,
            options,
        })
    }

    fn stages(&mut self, t: &Table, requires: &RequirementSet) -> Vec<StageSpec> {
        let mut out = Vec::new();
        let list = match t.raw_get::<Value>("stages").unwrap_or(Value::Nil) {
            Value::Table(l) => l,
            Value::Nil => {
                self.push(None, "`stages` is required: a list of stages".into());
                return out;
            }
            other => {
                self.push(
                    self.key_line("stages", None),
                    format!(
                        "stages: must be a list of stages, got {}",
                        other.type_name()
                    ),
                );
                return out;
            }
        };
        let items = sequence(&list);
        if items.is_empty() {
            self.push(
                self.key_line("stages", None),
                "stages: the pipeline needs at least one stage".into(),
            );
        }
        if list.raw_len() != count(&list) {
            self.push(
                self.key_line("stages", None),
                "stages: must be a list (a sequence 1..n), not a table with other keys".into(),
            );
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let n = i + 1;
            let Value::Table(stage) = item else {
                self.push(
                    self.key_line("stages", None),
                    format!("stages[{n}]: must be a table, got {}", item.type_name()),
                );
                continue;
            };
            let script = stage.raw_get::<Value>("script").unwrap_or(Value::Nil);
            let line = match &script {
                Value::Function(f) => function_line(f),
                _ => match stage.raw_get::<Value>("name") {
                    Ok(Value::String(n)) => self.literal_line(&n.to_string_lossy()),
                    _ => None,
                },
            };
            let path = format!("stages[{n}]");
            self.keys(&stage, &STAGE_KEYS, &path, line);
            let name = self.string(&stage, "name", &format!("{path}."), line);
            let label = match &name {
                Some(nm) => format!("stage `{nm}`"),
                None => path.clone(),
            };
            match &name {
                None => self.push(line, format!("{path}: `name` is required")),
                Some(nm) if nm.trim().is_empty() => {
                    self.push(line, format!("{path}: `name` must not be empty"))
                }
                Some(nm) => {
                    if let Some(first) = seen.insert(nm.clone(), n) {
                        self.push(
                            line,
                            format!("{path}: duplicate stage name `{nm}` (also stages[{first}])"),
                        );
                    }
                }
            }
            match &script {
                Value::Function(_) => {}
                Value::Nil => self.push(line, format!("{label}: `script` is required: a function")),
                other => self.push(
                    self.key_line("script", line),
                    format!(
                        "{label}: `script` must be a function, got {}",
                        other.type_name()
                    ),
                ),
            }
            let has_condition = match stage.raw_get::<Value>("condition").unwrap_or(Value::Nil) {
                Value::Nil => false,
                Value::Function(_) => true,
                other => {
                    self.push(
                        self.key_line("condition", line),
                        format!(
                            "{label}: `condition` must be a function, got {}",
                            other.type_name()
                        ),
                    );
                    false
                }
            };
            let container = self.string(&stage, "container", &format!("{label}: "), line);
            if container.is_some() && !requires.has_module(rivet_core::CoreModule::Container) {
                self.push(
                    self.key_line("container", line),
                    format!("{label}: uses `container` but the pipeline does not list \"container\" in `requires`"),
                );
            }
            let timeout = self.duration(&stage, "timeout", &format!("{label}: "), line, false);
            let env = self.stage_env(&stage, &label, line);
            if let Some(name) = name {
                out.push(StageSpec {
                    name,
                    container,
                    has_condition,
                    timeout,
                    env,
                    line,
                });
            }
        }
        out
    }

    fn stage_env(
        &mut self,
        stage: &Table,
        label: &str,
        line: Option<u32>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let table = match stage.raw_get::<Value>("env").unwrap_or(Value::Nil) {
            Value::Nil => return env,
            Value::Table(t) => t,
            other => {
                self.push(
                    self.key_line("env", line),
                    format!(
                        "{label}: `env` must be a table of strings, got {}",
                        other.type_name()
                    ),
                );
                return env;
            }
        };
        for pair in table.pairs::<Value, Value>() {
            let Ok((k, v)) = pair else { continue };
            let name = match k {
                Value::String(s) if is_identifier(&s.to_string_lossy()) => s.to_string_lossy(),
                other => {
                    self.push(
                        self.key_line("env", line),
                        format!(
                            "{label}: `env` keys must be variable names, got {}",
                            display_value(&other)
                        ),
                    );
                    continue;
                }
            };
            match v {
                Value::String(s) => {
                    env.insert(name, s.to_string_lossy());
                }
                Value::Integer(i) => {
                    env.insert(name, i.to_string());
                }
                Value::Number(x) => {
                    env.insert(name, x.to_string());
                }
                Value::Boolean(b) => {
                    env.insert(name, b.to_string());
                }
                other => self.push(
                    self.key_line(&name, line),
                    format!(
                        "{label}: env.{name} must be a string, got {}",
                        other.type_name()
                    ),
                ),
            }
        }
        env
    }
}

/// Entries 1..n of a sequence, read raw.
fn sequence(t: &Table) -> Vec<Value> {
    (1..=t.raw_len())
        .map(|i| t.raw_get::<Value>(i).unwrap_or(Value::Nil))
        .collect()
}

/// Number of entries in a table, read raw.
fn count(t: &Table) -> usize {
    t.clone().pairs::<Value, Value>().count()
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fn input_value(v: &Value) -> Option<InputValue> {
    match v {
        Value::String(s) => Some(InputValue::String(s.to_string_lossy())),
        Value::Integer(i) => Some(InputValue::Number(*i as f64)),
        Value::Number(n) if n.is_finite() => Some(InputValue::Number(*n)),
        Value::Boolean(b) => Some(InputValue::Boolean(*b)),
        _ => None,
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => other.type_name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::new_vm;

    fn check(source: &str) -> Result<PipelineSpec, Vec<Problem>> {
        let vm = new_vm(32 << 20).unwrap();
        let plugins: BTreeSet<String> = ["git".to_string()].into_iter().collect();
        let env = vm.lua.globals();
        evaluate(
            &vm.lua,
            &vm.budget,
            env,
            source,
            "pipeline.lua",
            &Limits::default(),
            &plugins,
        )
        .map(|l| l.spec)
    }

    fn messages(source: &str) -> Vec<String> {
        check(source)
            .unwrap_err()
            .iter()
            .map(|p| p.render("pipeline.lua"))
            .collect()
    }

    const SEED: &str = r#"return {
  name = "Build and Deploy",
  description = "...",
  requires = {"plugin.git", "plugin.git", "container"},
  inputs = {
    repo_url = {type = "string", description = "...", required = true},
    branch   = {type = "string", default = "main"},
  },
  stages = {
    {name = "checkout", script = function() git.clone({url = env.get("repo_url"), branch = env.get("branch")}) end},
    {name = "test", container = "python:3.11", script = function() process.run({command = "pytest", args = {"tests/"}}) end},
  },
}"#;

    #[test]
    fn the_seed_definition_validates_as_written() {
        let spec = check(SEED).unwrap();
        assert_eq!(spec.name, "Build and Deploy");
        assert_eq!(spec.requires.class_key(), "container,plugin.git");
        assert_eq!(spec.inputs.len(), 2);
        assert_eq!(spec.inputs[0].name, "branch");
        assert_eq!(
            spec.inputs[0].default,
            Some(InputValue::String("main".into()))
        );
        assert!(spec.inputs[1].required);
        assert_eq!(
            spec.stages
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["checkout", "test"]
        );
        assert_eq!(spec.stages[1].container.as_deref(), Some("python:3.11"));
        assert_eq!(spec.stages[0].line, Some(10));
    }

    #[test]
    fn reports_every_problem_at_once_with_lines_and_hints() {
        let src = r#"return {
  nmae = "x",
  requires = {"proces", "plugin.gti", "log"},
  inputs = {
    count = {type = "number", default = "three"},
    mode = {type = "string", options = {"a", "b"}, default = "c"},
    flag = {type = "bool"},
  },
  stages = {
    {name = "one", scrpit = function() end},
    {name = "one", script = function() end, timeout = "soon"},
    {name = "two", script = "not a function", container = "alpine"},
  },
}"#;
        let all = messages(src);
        let text = all.join("\n");
        let expect = [
            "pipeline.lua:2: unknown key `nmae` (did you mean `name`?)",
            "unknown requirement `proces` (did you mean `process`?)",
            "no plugin named `gti` (did you mean `git`?)",
            "`log` is always available",
            "pipeline.lua:5: inputs.count.default: `three` is a string but the input's type is number",
            "pipeline.lua:6: inputs.mode.default: `c` is not one of the options",
            "pipeline.lua:7: inputs.flag.type: unknown type `bool` (did you mean `boolean`?)",
            "pipeline.lua:10: stages[1]: unknown key `scrpit` (did you mean `script`?)",
            "pipeline.lua:10: stage `one`: `script` is required",
            "pipeline.lua:11: stages[2]: duplicate stage name `one` (also stages[1])",
            "pipeline.lua:11: stage `one`: `timeout`: `soon` is not a duration",
            "pipeline.lua:12: stage `two`: `script` must be a function, got string",
            "stage `two`: uses `container` but the pipeline does not list \"container\" in `requires`",
            "pipeline.lua: `name` is required: a non-empty string",
        ];
        for e in expect {
            assert!(text.contains(e), "missing {e:?} in:\n{text}");
        }
    }

    #[test]
    fn syntax_and_runtime_errors_carry_their_line() {
        assert_eq!(
            messages("return {\n name = \n}"),
            ["pipeline.lua:3: unexpected symbol near '}'"]
        );
        assert_eq!(
            messages("local x = nil\nreturn x.y"),
            ["pipeline.lua:2: attempt to index a nil value (local 'x')"]
        );
        assert!(messages("return 42")[0]
            .contains("must return a table describing the pipeline (it returned integer)"));
    }

    #[test]
    fn the_top_level_is_budgeted_and_has_no_host_access() {
        let looped = messages("while true do end");
        assert!(
            looped[0].contains("instruction budget exceeded"),
            "{looped:?}"
        );
        let no_process = messages("process.run{command='id'}; return {}");
        assert!(
            no_process[0].contains("attempt to index a nil value (global 'process')"),
            "{no_process:?}"
        );
        let bytecode = messages("\x1bLua");
        assert!(
            bytecode[0].contains("policy violation [lua.bytecode]"),
            "{bytecode:?}"
        );
    }

    #[test]
    fn refuses_metamethod_tricks_in_the_definition_table() {
        // Values are read raw: an __index that would supply `stages` is never called.
        let src = "return setmetatable({name = 'x'}, {__index = function() error('called') end})";
        let text = messages(src).join("\n");
        assert!(text.contains("`stages` is required"), "{text}");
        assert!(!text.contains("called"), "{text}");
    }
}
