//! `json.encode(value)` and `json.decode(text)`: pure, always present, bounded.

use crate::convert::{self, Bounds};
use mlua::{Lua, Table, Value};

/// Installs `json`.
pub fn register(lua: &Lua, bounds: Bounds, env: &Table) -> mlua::Result<()> {
    let module = lua.create_table()?;
    module.raw_set(
        "encode",
        lua.create_function(move |_, v: Value| {
            let json = convert::to_json(&v, bounds)?;
            serde_json::to_string(&json).map_err(mlua::Error::external)
        })?,
    )?;
    module.raw_set(
        "decode",
        lua.create_function(move |lua, text: mlua::String| {
            if text.as_bytes().len() as u64 > bounds.max_size {
                return Err(crate::policy_error(
                    "lua.result",
                    format!("JSON text larger than {} bytes", bounds.max_size),
                ));
            }
            let v: serde_json::Value = serde_json::from_slice(&text.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("json.decode: {e}")))?;
            convert::from_json(lua, &v)
        })?,
    )?;
    env.raw_set("json", crate::vm::readonly(lua, &module)?)?;
    Ok(())
}
