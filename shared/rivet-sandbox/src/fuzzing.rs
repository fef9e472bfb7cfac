//! Fuzz targets, shared by the cargo-fuzz harness in `fuzz/` and the bounded `cargo test`
//! fallback in `tests/fuzz/`, so both exercise exactly the same code.
//!
//! Each target takes arbitrary bytes and must return normally: a panic, an abort or a run past
//! its limits is a finding. Not part of the crate's API for anything else.

use crate::convert::{to_json, Args, Bounds};
use crate::vm::new_vm;
use mlua::{Lua, Table, Value};
use rivet_core::policy::Limits;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Wall-clock slack on top of a limit before a run counts as "past its limits". CPU spent in
/// C (a pattern match) is not interruptible by hooks; in production the worker's parent kills
/// it, here it shows up as this check failing.
pub const SLACK: Duration = Duration::from_secs(2);

/// The limits the definition target evaluates under: the defaults, with a shorter deadline.
pub fn definition_limits() -> Limits {
    Limits {
        definition_timeout: Duration::from_millis(500),
        definition_instructions: 2_000_000,
        ..Limits::default()
    }
}

/// Target (a): arbitrary bytes as a pipeline definition. Evaluation must return a spec or
/// problems, never panic, and end within the definition limits.
pub fn definition(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let limits = definition_limits();
    let vm = new_vm(limits.definition_memory).expect("creating a VM with the default limits");
    let plugins: BTreeSet<String> = ["git", "slack"].iter().map(|s| (*s).to_owned()).collect();
    let started = Instant::now();
    let result = crate::definition::evaluate(
        &vm.lua,
        &vm.budget,
        vm.lua.globals(),
        source,
        "fuzz.lua",
        &limits,
        &plugins,
    );
    let took = started.elapsed();
    assert!(
        took <= limits.definition_timeout + SLACK,
        "evaluating a definition took {took:?}, past its {:?} limit",
        limits.definition_timeout
    );
    match result {
        Ok(loaded) => assert!(!loaded.spec.stages.is_empty(), "a valid spec has stages"),
        Err(problems) => assert!(!problems.is_empty(), "a failure names its problems"),
    }
}

/// Bounds the convert target checks against.
pub const CONVERT_BOUNDS: Bounds = Bounds {
    max_depth: 64,
    max_size: 1 << 20,
};

/// Target (b): a Lua value built from the bytes by a small stack machine (nested tables,
/// cycles, metatables with `__index`/`__pairs`/`__len`, strings that are not UTF-8, huge and
/// odd numbers), then converted the ways core modules convert their arguments. Nothing may
/// panic, and no metamethod may run on the host side.
pub fn convert(data: &[u8]) {
    let vm = new_vm(64 << 20).expect("creating a VM");
    vm.budget.arm(50_000_000, Duration::from_secs(5));
    let lua = &vm.lua;
    let Ok(value) = build(lua, data) else {
        return;
    };
    let trap_ran = || -> bool { lua.globals().raw_get::<bool>("trap_ran").unwrap_or(false) };
    let _ = to_json(&value, CONVERT_BOUNDS);
    if let Value::Table(t) = &value {
        if let Ok(args) = Args::new(
            t.clone(),
            "fuzz.call",
            &["command", "args", "env", "cwd", "timeout", "check", "1"],
        ) {
            let _ = args.string("command");
            let _ = args.string_list("args");
            let _ = args.string_map("env");
            let _ = args.number("timeout");
            let _ = args.boolean("check");
            let _ = args.string_max("cwd", 64);
        }
    }
    assert!(
        !trap_ran(),
        "a metamethod ran during a host-side conversion"
    );
}

/// Interprets `data` as a program that builds one value. Ops (low 4 bits of each byte):
/// push nil/true/false/integer/float/string, new table, set `t[k] = v`, append to a list,
/// wrap the top in a new table (nesting), make a cycle, attach a trapping metatable, dup.
fn build(lua: &Lua, data: &[u8]) -> mlua::Result<Value> {
    let trap = lua.create_function(|lua, _: mlua::MultiValue| {
        lua.globals().raw_set("trap_ran", true)?;
        Ok(Value::Nil)
    })?;
    let mut stack: Vec<Value> = Vec::new();
    let mut i = 0;
    let take = |n: usize, i: &mut usize| -> Vec<u8> {
        let end = (*i + n).min(data.len());
        let s = data[*i..end].to_vec();
        *i = end;
        s
    };
    while i < data.len() && stack.len() < 10_000 {
        let op = data[i];
        i += 1;
        match op & 0x0f {
            0 => stack.push(Value::Nil),
            1 => stack.push(Value::Boolean(op & 0x10 != 0)),
            2 => {
                let b = take(8, &mut i);
                let mut buf = [0u8; 8];
                buf[..b.len()].copy_from_slice(&b);
                stack.push(Value::Integer(i64::from_le_bytes(buf)));
            }
            3 => {
                let b = take(8, &mut i);
                let mut buf = [0u8; 8];
                buf[..b.len()].copy_from_slice(&b);
                stack.push(Value::Number(f64::from_le_bytes(buf)));
            }
            4 => {
                let n = usize::from(op >> 4) * 3;
                let s = take(n, &mut i);
                stack.push(Value::String(lua.create_string(&s)?));
            }
            5 => stack.push(Value::Table(lua.create_table()?)),
            6 => {
                // t[k] = v with (t, k, v) on top.
                if stack.len() >= 3 {
                    let v = stack.pop().expect("checked length");
                    let k = stack.pop().expect("checked length");
                    if let Some(Value::Table(t)) = stack.last() {
                        if !matches!(k, Value::Nil) && !matches!(k, Value::Number(n) if n.is_nan())
                        {
                            t.raw_set(k, v)?;
                        }
                    }
                }
            }
            7 => {
                if stack.len() >= 2 {
                    let v = stack.pop().expect("checked length");
                    if let Some(Value::Table(t)) = stack.last() {
                        t.raw_push(v)?;
                    }
                }
            }
            8 => {
                // Nest the top value `count` times (up to ~4000 per op, so deep values are
                // reachable with few bytes).
                let count = usize::from(take(1, &mut i).first().copied().unwrap_or(1)) * 16;
                let mut v = stack.pop().unwrap_or(Value::Nil);
                for _ in 0..count {
                    let t = lua.create_table()?;
                    t.raw_push(v)?;
                    v = Value::Table(t);
                }
                stack.push(v);
            }
            9 => {
                if let Some(Value::Table(t)) = stack.last() {
                    t.raw_set("self", t.clone())?;
                }
            }
            10 => {
                if let Some(Value::Table(t)) = stack.last() {
                    let mt: Table = lua.create_table()?;
                    for name in ["__index", "__pairs", "__len", "__tostring", "__newindex"] {
                        mt.raw_set(name, trap.clone())?;
                    }
                    t.set_metatable(Some(mt))?;
                }
            }
            11 => {
                if let Some(top) = stack.last().cloned() {
                    stack.push(top);
                }
            }
            12 => {
                let key =
                    ["command", "args", "env", "cwd", "timeout", "check"][usize::from(op >> 4) % 6];
                stack.push(Value::String(lua.create_string(key)?));
            }
            _ => {
                stack.pop();
            }
        }
    }
    Ok(stack.into_iter().next().unwrap_or(Value::Nil))
}
