//! `log.debug/info/warn/error(...)`; `print` and `warn` are rebound here, so nothing a job
//! prints bypasses masking and caps (SEC-01, P17).

use super::JobContext;
use crate::events::{Level, Source};
use mlua::{Lua, MultiValue, Table, Value};
use std::rc::Rc;

/// Joins arguments the way `print` does: `tostring` of each, separated by tabs.
fn join(lua: &Lua, args: MultiValue) -> mlua::Result<String> {
    let tostring: mlua::Function = lua.globals().raw_get("tostring")?;
    let mut parts = Vec::with_capacity(args.len());
    for v in args {
        let s = match v {
            Value::String(s) => s.to_string_lossy(),
            other => tostring.call::<mlua::String>(other)?.to_string_lossy(),
        };
        parts.push(s);
    }
    Ok(parts.join("\t"))
}

/// Installs `log`, and rebinds `print` and `warn`.
pub fn register(lua: &Lua, ctx: &Rc<JobContext>, env: &Table) -> mlua::Result<()> {
    let log = lua.create_table()?;
    for (name, level) in [
        ("debug", Level::Debug),
        ("info", Level::Info),
        ("warn", Level::Warn),
        ("error", Level::Error),
    ] {
        let ctx = ctx.clone();
        log.raw_set(
            name,
            lua.create_function(move |lua, args: MultiValue| {
                let text = join(lua, args)?;
                ctx.sink.log(level, Source::Script, &text);
                Ok(())
            })?,
        )?;
    }
    env.raw_set("print", log.raw_get::<mlua::Function>("info")?)?;
    env.raw_set("warn", log.raw_get::<mlua::Function>("warn")?)?;
    env.raw_set("log", crate::vm::readonly(lua, &log)?)?;
    Ok(())
}
