//! `env.get(name)` and `env.set(name, value)`: a job-scoped map only. The runner's own
//! environment is never visible (SEC-04).

use super::JobContext;
use crate::policy_error;
use mlua::{Lua, Table, Value};
use rivet_core::InputValue;
use std::rc::Rc;

/// Longest value `env.set` accepts.
const MAX_VALUE: usize = 64 << 10;
/// Most variables `env.set` may create.
const MAX_VARS: usize = 1024;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Installs `env`.
pub fn register(lua: &Lua, ctx: &Rc<JobContext>, env: &Table) -> mlua::Result<()> {
    let module = lua.create_table()?;
    let get_ctx = ctx.clone();
    module.raw_set(
        "get",
        lua.create_function(move |lua, name: String| -> mlua::Result<Value> {
            let ctx = &get_ctx;
            // Stage env, then values set by earlier stages, then inputs, secrets, metadata.
            if let Some(v) = ctx.stage_env.borrow().get(&name) {
                return Ok(Value::String(lua.create_string(v)?));
            }
            if let Some(v) = ctx.vars.borrow().get(&name) {
                return Ok(Value::String(lua.create_string(v)?));
            }
            if let Some(v) = ctx.inputs.borrow().get(&name) {
                return Ok(match v {
                    InputValue::String(s) => Value::String(lua.create_string(s)?),
                    InputValue::Number(n) if n.fract() == 0.0 && n.abs() < 9e15 => {
                        Value::Integer(*n as i64)
                    }
                    InputValue::Number(n) => Value::Number(*n),
                    InputValue::Boolean(b) => Value::Boolean(*b),
                });
            }
            if let Some(v) = ctx
                .request
                .secrets
                .get(&name)
                .or_else(|| ctx.request.metadata.get(&name))
            {
                return Ok(Value::String(lua.create_string(v)?));
            }
            Ok(Value::Nil)
        })?,
    )?;
    let set_ctx = ctx.clone();
    module.raw_set(
        "set",
        lua.create_function(move |_, (name, value): (String, Value)| {
            let ctx = &set_ctx;
            if !valid_name(&name) {
                return Err(mlua::Error::runtime(format!(
                    "env.set: `{name}` is not a valid name (letters, digits and `_`, not starting with a digit)"
                )));
            }
            if name.starts_with("RIVET_") || ctx.request.secrets.contains_key(&name) {
                return Err(policy_error("env.readonly", format!("`{name}` is set by Rivet and cannot be changed")));
            }
            let text = match value {
                Value::String(s) => s.to_str()?.to_owned(),
                Value::Integer(i) => i.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Boolean(b) => b.to_string(),
                Value::Nil => {
                    ctx.vars.borrow_mut().remove(&name);
                    return Ok(());
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "env.set: value must be a string, number or boolean, got {}",
                        other.type_name()
                    )))
                }
            };
            if text.len() > MAX_VALUE {
                return Err(policy_error("env.size", format!("value of `{name}` is longer than {MAX_VALUE} bytes")));
            }
            let mut vars = ctx.vars.borrow_mut();
            if vars.len() >= MAX_VARS && !vars.contains_key(&name) {
                return Err(policy_error("env.size", format!("a job may set at most {MAX_VARS} variables")));
            }
            vars.insert(name, text);
            Ok(())
        })?,
    )?;
    env.raw_set("env", crate::vm::readonly(lua, &module)?)?;
    Ok(())
}
