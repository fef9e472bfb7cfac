//! Values crossing from Lua to Rust, read with raw access and bounded depth and size, so a
//! hostile value can neither run metamethods on the host side nor exhaust its stack (RES-05).

use crate::policy_error;
use mlua::{Table, Value};
use rivet_core::suggest;
use std::collections::BTreeMap;

/// Bounds for a conversion.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Deepest nesting of tables.
    pub max_depth: u32,
    /// Total table entries plus string bytes.
    pub max_size: u64,
}

struct Walk {
    bounds: Bounds,
    size: u64,
}

impl Walk {
    fn charge(&mut self, n: u64) -> mlua::Result<()> {
        self.size = self.size.saturating_add(n);
        if self.size > self.bounds.max_size {
            return Err(policy_error(
                "lua.result",
                format!("value larger than {} bytes", self.bounds.max_size),
            ));
        }
        Ok(())
    }

    fn value(&mut self, v: &Value, depth: u32) -> mlua::Result<serde_json::Value> {
        Ok(match v {
            Value::Nil => serde_json::Value::Null,
            Value::Boolean(b) => serde_json::Value::Bool(*b),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Number(n) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .ok_or_else(|| mlua::Error::runtime(format!("cannot convert {n} to JSON")))?,
            Value::String(s) => {
                let bytes = s.as_bytes();
                self.charge(bytes.len() as u64)?;
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            }
            Value::Table(t) => self.table(t, depth + 1)?,
            other => {
                return Err(mlua::Error::runtime(format!(
                    "cannot convert a {} value",
                    other.type_name()
                )))
            }
        })
    }

    fn table(&mut self, t: &Table, depth: u32) -> mlua::Result<serde_json::Value> {
        if depth > self.bounds.max_depth {
            return Err(policy_error(
                "lua.result",
                format!("nesting deeper than {}", self.bounds.max_depth),
            ));
        }
        let len = t.raw_len();
        let mut count = 0usize;
        let mut entries = Vec::new();
        for pair in t.clone().pairs::<Value, Value>() {
            let (k, v) = pair?;
            self.charge(1)?;
            count += 1;
            entries.push((k, v));
        }
        if len > 0 && count == len {
            let mut items = vec![serde_json::Value::Null; len];
            for (k, v) in &entries {
                let idx = match k {
                    Value::Integer(i) if *i >= 1 && (*i as usize) <= len => *i as usize - 1,
                    _ => return self.object(entries, depth),
                };
                items[idx] = self.value(v, depth)?;
            }
            return Ok(serde_json::Value::Array(items));
        }
        self.object(entries, depth)
    }

    fn object(
        &mut self,
        entries: Vec<(Value, Value)>,
        depth: u32,
    ) -> mlua::Result<serde_json::Value> {
        let mut map = serde_json::Map::new();
        for (k, v) in entries {
            let key = match &k {
                Value::String(s) => s.to_string_lossy(),
                Value::Integer(i) => i.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "cannot use a {} as a JSON key",
                        other.type_name()
                    )))
                }
            };
            let value = self.value(&v, depth)?;
            map.insert(key, value);
        }
        Ok(serde_json::Value::Object(map))
    }
}

/// Converts a Lua value to JSON with raw access, bounded depth and bounded size.
pub fn to_json(v: &Value, bounds: Bounds) -> mlua::Result<serde_json::Value> {
    Walk { bounds, size: 0 }.value(v, 0)
}

/// Converts JSON to a Lua value (`null` becomes `nil`). serde_json bounds the depth of what it
/// parses, so this recursion is bounded too.
pub fn from_json(lua: &mlua::Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, from_json(lua, item)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map {
                t.raw_set(k.as_str(), from_json(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}

/// Most entries accepted in a list or map argument of a core module.
pub const MAX_ARG_ENTRIES: usize = 4096;
/// Longest string accepted in an argument of a core module (bodies and stdin excepted).
pub const MAX_ARG_STRING: usize = 1 << 20;

/// A table of named arguments to a core-module call, read with raw access. Unknown keys are
/// refused with a "did you mean", so a typo never silently drops an option.
#[derive(Debug)]
pub struct Args {
    table: Table,
    call: &'static str,
}

impl Args {
    /// Wraps `table`, refusing keys not in `allowed`.
    pub fn new(table: Table, call: &'static str, allowed: &[&str]) -> mlua::Result<Self> {
        for pair in table.clone().pairs::<Value, Value>() {
            let (k, _) = pair?;
            match &k {
                Value::String(s) => {
                    let key = s.to_string_lossy();
                    if !allowed.contains(&key.as_str()) {
                        let hint = suggest::hint(&key, allowed.iter().copied());
                        return Err(mlua::Error::runtime(format!(
                            "{call}: unknown option `{key}`{hint}"
                        )));
                    }
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "{call}: options must be named (got a {} key)",
                        other.type_name()
                    )))
                }
            }
        }
        Ok(Self { table, call })
    }

    fn raw(&self, key: &str) -> mlua::Result<Value> {
        self.table.raw_get(key)
    }

    fn type_error(&self, key: &str, want: &str, got: &Value) -> mlua::Error {
        mlua::Error::runtime(format!(
            "{}: `{key}` must be {want}, got {}",
            self.call,
            got.type_name()
        ))
    }

    /// An optional string.
    pub fn string(&self, key: &str) -> mlua::Result<Option<String>> {
        self.string_max(key, MAX_ARG_STRING)
    }

    /// An optional string of at most `max` bytes.
    pub fn string_max(&self, key: &str, max: usize) -> mlua::Result<Option<String>> {
        match self.raw(key)? {
            Value::Nil => Ok(None),
            Value::String(s) => {
                let bytes = s.as_bytes();
                if bytes.len() > max {
                    return Err(mlua::Error::runtime(format!(
                        "{}: `{key}` is longer than {max} bytes",
                        self.call
                    )));
                }
                String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| {
                    mlua::Error::runtime(format!("{}: `{key}` is not valid UTF-8", self.call))
                })
            }
            Value::Integer(i) => Ok(Some(i.to_string())),
            Value::Number(n) => Ok(Some(n.to_string())),
            other => Err(self.type_error(key, "a string", &other)),
        }
    }

    /// A required string.
    pub fn required_string(&self, key: &str) -> mlua::Result<String> {
        self.string(key)?
            .ok_or_else(|| mlua::Error::runtime(format!("{}: `{key}` is required", self.call)))
    }

    /// An optional number.
    pub fn number(&self, key: &str) -> mlua::Result<Option<f64>> {
        match self.raw(key)? {
            Value::Nil => Ok(None),
            Value::Integer(i) => Ok(Some(i as f64)),
            Value::Number(n) => Ok(Some(n)),
            other => Err(self.type_error(key, "a number", &other)),
        }
    }

    /// An optional boolean.
    pub fn boolean(&self, key: &str) -> mlua::Result<Option<bool>> {
        match self.raw(key)? {
            Value::Nil => Ok(None),
            Value::Boolean(b) => Ok(Some(b)),
            other => Err(self.type_error(key, "a boolean", &other)),
        }
    }

    /// An optional list of strings (a sequence; nested tables are refused, not walked).
    pub fn string_list(&self, key: &str) -> mlua::Result<Vec<String>> {
        let t = match self.raw(key)? {
            Value::Nil => return Ok(Vec::new()),
            Value::Table(t) => t,
            other => return Err(self.type_error(key, "a list of strings", &other)),
        };
        let len = t.raw_len();
        if len > MAX_ARG_ENTRIES {
            return Err(mlua::Error::runtime(format!(
                "{}: `{key}` has more than {MAX_ARG_ENTRIES} entries",
                self.call
            )));
        }
        let mut out = Vec::with_capacity(len);
        let mut count = 0usize;
        for pair in t.clone().pairs::<Value, Value>() {
            let (k, _) = pair?;
            count += 1;
            if !matches!(k, Value::Integer(i) if i >= 1 && (i as usize) <= len) || count > len {
                return Err(mlua::Error::runtime(format!(
                    "{}: `{key}` must be a list (a sequence 1..n)",
                    self.call
                )));
            }
        }
        for i in 1..=len {
            match t.raw_get::<Value>(i)? {
                Value::String(s) => {
                    out.push(String::from_utf8(s.as_bytes().to_vec()).map_err(|_| {
                        mlua::Error::runtime(format!(
                            "{}: `{key}[{i}]` is not valid UTF-8",
                            self.call
                        ))
                    })?)
                }
                Value::Integer(n) => out.push(n.to_string()),
                Value::Number(n) => out.push(n.to_string()),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "{}: `{key}[{i}]` must be a string, got {}",
                        self.call,
                        other.type_name()
                    )))
                }
            }
        }
        Ok(out)
    }

    /// An optional map of string to string.
    pub fn string_map(&self, key: &str) -> mlua::Result<BTreeMap<String, String>> {
        let t = match self.raw(key)? {
            Value::Nil => return Ok(BTreeMap::new()),
            Value::Table(t) => t,
            other => return Err(self.type_error(key, "a table of strings", &other)),
        };
        let mut out = BTreeMap::new();
        for pair in t.clone().pairs::<Value, Value>() {
            let (k, v) = pair?;
            if out.len() >= MAX_ARG_ENTRIES {
                return Err(mlua::Error::runtime(format!(
                    "{}: `{key}` has more than {MAX_ARG_ENTRIES} entries",
                    self.call
                )));
            }
            let name = match k {
                Value::String(s) => s.to_string_lossy(),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "{}: `{key}` keys must be strings, got {}",
                        self.call,
                        other.type_name()
                    )))
                }
            };
            let value = match v {
                Value::String(s) => s.to_string_lossy(),
                Value::Integer(i) => i.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "{}: `{key}.{name}` must be a string, got {}",
                        self.call,
                        other.type_name()
                    )))
                }
            };
            out.insert(name, value);
        }
        Ok(out)
    }
}
