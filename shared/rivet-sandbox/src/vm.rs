//! The hardened Lua VM (defences.md, "Minimal hardened VM recipe").
//!
//! Every job gets a fresh VM from [`new_vm`]: explicit standard libraries, a cleaned base
//! library, text-only chunks, a memory limit and a global instruction hook that checks an
//! instruction budget and a wall-clock deadline. Once the budget is spent the error is sticky:
//! the hook keeps raising it, and the wrapped `pcall`, `xpcall` and `coroutine.resume` re-raise it
//! on return, so no Lua code can swallow it (VM-08, VM-09).

use crate::policy_error;
use mlua::{
    ChunkMode, Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, Variadic,
    VmState,
};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often (in VM instructions) the hook runs.
const HOOK_EVERY: u32 = 1000;

/// Registry key of the original `next`, used by read-only views.
const REAL_NEXT: &str = "rivet.next";

/// Value of the `__metatable` field of locked metatables; `getmetatable` returns it.
pub const LOCKED: &str = "locked";

/// Why a budget ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// The instruction count reached its limit.
    Instructions(u64),
    /// The wall-clock deadline passed.
    Deadline(Duration),
    /// The job's own time limit (shorter than the stage's) ran out.
    JobDeadline(Duration),
}

impl Exhausted {
    /// The error text a pipeline author sees.
    pub fn message(&self) -> String {
        match self {
            Self::Instructions(n) => format!("instruction budget exceeded ({n} instructions)"),
            Self::Deadline(d) => format!("time limit exceeded ({})", crate::fmt_duration(*d)),
            Self::JobDeadline(d) => format!(
                "the job's time limit of {} was reached",
                crate::fmt_duration(*d)
            ),
        }
    }
}

/// The CPU and time budget of whatever the VM runs now (the definition, or one stage).
#[derive(Debug)]
pub struct Budget {
    limit: Cell<u64>,
    used: Cell<u64>,
    started: Cell<Instant>,
    timeout: Cell<Duration>,
    /// When the job's limit, not the stage's, sets the deadline: that limit (for the message).
    job_limit: Cell<Option<Duration>>,
    exhausted: std::cell::RefCell<Option<Exhausted>>,
}

impl Budget {
    fn new() -> Self {
        Self {
            limit: Cell::new(u64::MAX),
            used: Cell::new(0),
            started: Cell::new(Instant::now()),
            timeout: Cell::new(Duration::MAX),
            job_limit: Cell::new(None),
            exhausted: std::cell::RefCell::new(None),
        }
    }

    /// Like [`Budget::arm`], saying that the deadline is the job's limit `job_limit` running out.
    pub fn arm_job_bound(&self, instructions: u64, timeout: Duration, job_limit: Duration) {
        self.arm(instructions, timeout);
        self.job_limit.set(Some(job_limit));
    }

    fn deadline(&self) -> Exhausted {
        match self.job_limit.get() {
            Some(limit) => Exhausted::JobDeadline(limit),
            None => Exhausted::Deadline(self.timeout.get()),
        }
    }

    /// Starts a fresh budget of `instructions` and `timeout` from now.
    pub fn arm(&self, instructions: u64, timeout: Duration) {
        self.limit.set(instructions);
        self.used.set(0);
        self.started.set(Instant::now());
        self.timeout.set(timeout);
        self.job_limit.set(None);
        *self.exhausted.borrow_mut() = None;
    }

    /// Why the budget ran out, if it did.
    pub fn exhausted(&self) -> Option<Exhausted> {
        self.exhausted.borrow().clone()
    }

    /// Wall-clock time left before the deadline.
    pub fn time_left(&self) -> Duration {
        self.timeout
            .get()
            .saturating_sub(self.started.get().elapsed())
    }

    /// The wall-clock limit of the current budget.
    pub fn timeout(&self) -> Duration {
        self.timeout.get()
    }

    /// Marks the deadline as passed (a core module found it so while Lua was not running).
    pub fn expire_deadline(&self) {
        *self.exhausted.borrow_mut() = Some(self.deadline());
    }

    /// Called by the hook every [`HOOK_EVERY`] instructions.
    fn tick(&self) -> Result<(), Exhausted> {
        self.spend(u64::from(HOOK_EVERY))
    }

    /// Charges `n` instructions' worth of work done in C, where the hook cannot count it,
    /// and checks the deadline (`charge(0)` only checks).
    pub fn charge(&self, n: u64) -> mlua::Result<()> {
        self.spend(n).map_err(|e| mlua::Error::runtime(e.message()))
    }

    fn spend(&self, n: u64) -> Result<(), Exhausted> {
        if let Some(e) = self.exhausted() {
            return Err(e);
        }
        let used = self.used.get().saturating_add(n);
        self.used.set(used);
        let why = if used >= self.limit.get() {
            Exhausted::Instructions(self.limit.get())
        } else if self.started.get().elapsed() >= self.timeout.get() {
            self.deadline()
        } else {
            return Ok(());
        };
        *self.exhausted.borrow_mut() = Some(why.clone());
        Err(why)
    }

    /// An error to raise if the budget is spent.
    fn check(&self) -> mlua::Result<()> {
        match self.exhausted() {
            Some(e) => Err(mlua::Error::runtime(e.message())),
            None => Ok(()),
        }
    }
}

/// A fresh hardened VM and its budget.
#[derive(Debug)]
pub struct Vm {
    /// The Lua state. Never shared between jobs.
    pub lua: Lua,
    /// The budget the global hook enforces.
    pub budget: Rc<Budget>,
}

/// Standard libraries a job gets. `io`, `os`, `package` and `debug` are never loaded.
fn libs() -> StdLib {
    StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE
}

/// Base-library globals removed outright.
const REMOVED_GLOBALS: [&str; 3] = ["dofile", "loadfile", "require"];

/// Creates a hardened VM with a memory limit. Core modules are added by the caller.
pub fn new_vm(memory_limit: u64) -> mlua::Result<Vm> {
    let lua = Lua::new_with(libs(), LuaOptions::new())?;
    lua.set_memory_limit(usize::try_from(memory_limit).unwrap_or(usize::MAX))?;
    let budget = Rc::new(Budget::new());
    let hook_budget = budget.clone();
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            hook_budget
                .tick()
                .map_err(|e| mlua::Error::runtime(e.message()))?;
            Ok(VmState::Continue)
        },
    )?;
    harden(&lua, &budget)?;
    Ok(Vm { lua, budget })
}

fn harden(lua: &Lua, budget: &Rc<Budget>) -> mlua::Result<()> {
    let g = lua.globals();
    lua.set_named_registry_value(REAL_NEXT, g.raw_get::<Function>("next")?)?;
    for name in REMOVED_GLOBALS {
        g.raw_set(name, Value::Nil)?;
    }
    // `print` and `warn` are rebound by the log module; until then they do nothing visible.
    g.raw_set("print", Value::Nil)?;
    g.raw_set("warn", Value::Nil)?;

    let string: Table = g.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;
    // `string.rep` builds megabytes in C in one VM instruction, so a loop of them runs for
    // seconds between two hook calls (found by fuzzing the definition checker). Each call
    // checks the deadline first and charges its output to the budget after: one call is
    // bounded by the memory limit, and a loop of them by the budget. A call Lua refuses
    // (`resulting string too large`, `not enough memory`) costs nothing.
    let real_rep: Function = string.raw_get("rep")?;
    let rep_budget = budget.clone();
    string.raw_set(
        "rep",
        lua.create_function(move |_, args: MultiValue| {
            rep_budget.charge(0)?;
            let cost = rep_cost(&args);
            let out = real_rep.call::<MultiValue>(args)?;
            rep_budget.charge(cost)?;
            Ok(out)
        })?,
    )?;

    // Text-only `load` (VM-01). Lua runs a reader function in protected mode and returns its
    // error as a value, so a spent budget is re-raised after the call (VM-09).
    let real_load: Function = g.raw_get("load")?;
    let load_budget = budget.clone();
    g.raw_set(
        "load",
        lua.create_function(move |lua, args: Variadic<Value>| {
            load_budget.check()?;
            let mut args: Vec<Value> = args.into_iter().collect();
            match args.first() {
                Some(Value::String(s)) if s.as_bytes().first() == Some(&0x1b) => {
                    return Err(policy_error(
                        "lua.bytecode",
                        "load refuses precompiled bytecode; pass Lua source text",
                    ));
                }
                Some(Value::String(_)) | Some(Value::Function(_)) => {}
                _ => {
                    return Err(mlua::Error::runtime(
                        "bad argument #1 to 'load' (string or function expected)",
                    ))
                }
            }
            match args.get(2) {
                None | Some(Value::Nil) => {}
                Some(Value::String(m)) if m.as_bytes() == b"t" => {}
                Some(_) => {
                    return Err(policy_error(
                        "lua.bytecode",
                        "load only accepts mode \"t\" (text); binary chunks are refused",
                    ))
                }
            }
            if args.len() < 2 {
                args.push(Value::Nil);
            }
            let mode = Value::String(lua.create_string("t")?);
            if args.len() < 3 {
                args.push(mode);
            } else {
                args[2] = mode;
            }
            let out = real_load.call::<MultiValue>(MultiValue::from_iter(args));
            load_budget.check()?;
            out
        })?,
    )?;

    // `collectgarbage` only reports memory use.
    g.raw_set(
        "collectgarbage",
        lua.create_function(|lua, opt: Option<String>| match opt.as_deref() {
            Some("count") => Ok(lua.used_memory() as f64 / 1024.0),
            other => Err(policy_error(
                "lua.gc",
                format!(
                    "collectgarbage({:?}) is not allowed; only \"count\"",
                    other.unwrap_or("collect")
                ),
            )),
        })?,
    )?;

    // `setmetatable` refuses finalizers (VM-10) and `rawset` refuses locked tables.
    let real_setmetatable: Function = g.raw_get("setmetatable")?;
    g.raw_set(
        "setmetatable",
        lua.create_function(move |_, (t, mt): (Value, Value)| {
            if let Value::Table(mt) = &mt {
                if !mt.raw_get::<Value>("__gc")?.is_nil() {
                    return Err(policy_error(
                        "lua.gc",
                        "metatables with a __gc finalizer are not allowed",
                    ));
                }
            }
            real_setmetatable.call::<Value>((t, mt))
        })?,
    )?;
    let real_rawset: Function = g.raw_get("rawset")?;
    g.raw_set(
        "rawset",
        lua.create_function(move |_, (t, k, v): (Table, Value, Value)| {
            if is_locked(&t)? {
                return Err(policy_error("lua.readonly", "this table is read-only"));
            }
            real_rawset.call::<Table>((t, k, v))
        })?,
    )?;

    // Calls that can catch errors re-raise a spent budget, so `pcall` cannot swallow it.
    let real_pcall: Function = g.raw_get("pcall")?;
    g.raw_set("pcall", sticky(lua, budget, real_pcall)?)?;
    // The hook raises the budget error with hooks disabled (Lua clears `allowhook` while a
    // hook runs), and Lua calls the message handler before unwinding: a looping handler could
    // never be interrupted. Once the budget is spent the script's handler is skipped (VM-09).
    let sticky_xpcall = sticky(lua, budget, g.raw_get("xpcall")?)?;
    let handler_budget = budget.clone();
    g.raw_set(
        "xpcall",
        lua.create_function(move |lua, args: MultiValue| {
            let mut args: Vec<Value> = args.into_iter().collect();
            if let Some(Value::Function(handler)) = args.get(1).cloned() {
                let budget = handler_budget.clone();
                args[1] = Value::Function(lua.create_function(move |_, err: MultiValue| {
                    if budget.exhausted().is_some() {
                        return Ok(err);
                    }
                    handler.call::<MultiValue>(err)
                })?);
            }
            sticky_xpcall.call::<MultiValue>(MultiValue::from_iter(args))
        })?,
    )?;
    let coroutine: Table = g.raw_get("coroutine")?;
    for name in ["resume", "wrap", "close"] {
        let real: Function = coroutine.raw_get(name)?;
        coroutine.raw_set(name, sticky(lua, budget, real)?)?;
    }

    // Lock the string metatable: `getmetatable("")` returns a sentinel (VM-05).
    let string_mt: Table = lua
        .load("return getmetatable('')")
        .set_mode(ChunkMode::Text)
        .eval()?;
    string_mt.raw_set("__metatable", LOCKED)?;

    // Library tables become read-only views.
    for name in ["string", "table", "math", "utf8", "coroutine"] {
        let t: Table = g.raw_get(name)?;
        g.raw_set(name, readonly(lua, &t)?)?;
    }
    Ok(())
}

/// Bytes of output per instruction charged for `string.rep`.
const REP_BYTES_PER_INSTRUCTION: u64 = 64;

/// The budget `string.rep(s, n, sep)` is charged: its output size over
/// [`REP_BYTES_PER_INSTRUCTION`] (numbers as `s` count as their longest text form).
fn rep_cost(args: &MultiValue) -> u64 {
    let len = |v: Option<&Value>| -> u64 {
        match v {
            Some(Value::String(s)) => s.as_bytes().len() as u64,
            Some(Value::Integer(_) | Value::Number(_)) => 32,
            _ => 0,
        }
    };
    let n = match args.get(1) {
        Some(Value::Integer(i)) => u64::try_from(*i).unwrap_or(0),
        Some(Value::Number(f)) if *f > 0.0 => *f as u64,
        _ => 0,
    };
    let total = len(args.front())
        .saturating_mul(n)
        .saturating_add(len(args.get(2)).saturating_mul(n.saturating_sub(1)));
    total / REP_BYTES_PER_INSTRUCTION
}

/// Wraps `real` so that, after it returns, a spent budget is raised again.
fn sticky(lua: &Lua, budget: &Rc<Budget>, real: Function) -> mlua::Result<Function> {
    let budget = budget.clone();
    lua.create_function(move |_, args: MultiValue| {
        budget.check()?;
        let out = real.call::<MultiValue>(args);
        budget.check()?;
        out
    })
}

/// Whether `t` is a read-only view made by [`readonly`].
pub fn is_locked(t: &Table) -> mlua::Result<bool> {
    Ok(match t.metatable() {
        Some(mt) => {
            matches!(mt.raw_get::<Value>("__metatable")?, Value::String(s) if s.as_bytes() == LOCKED.as_bytes())
        }
        None => false,
    })
}

/// A read-only view of `t`: reads go through, writes raise `policy violation [lua.readonly]`,
/// and the metatable cannot be read or replaced.
pub fn readonly(lua: &Lua, t: &Table) -> mlua::Result<Table> {
    let proxy = lua.create_table()?;
    let mt = lua.create_table()?;
    mt.raw_set("__index", t.clone())?;
    mt.raw_set(
        "__newindex",
        lua.create_function(
            |_, (_t, k, _v): (Value, Value, Value)| -> mlua::Result<()> {
                let key = match &k {
                    Value::String(s) => s.to_string_lossy(),
                    other => other.type_name().to_string(),
                };
                Err(policy_error(
                    "lua.readonly",
                    format!("cannot assign `{key}`: this table is read-only"),
                ))
            },
        )?,
    )?;
    // `pairs` gets an iterator closure, never the backing table itself (it would be writable),
    // and uses the real `next`, not whatever the script put in the global.
    let inner = t.clone();
    mt.raw_set(
        "__pairs",
        lua.create_function(move |lua, _: Value| {
            let next: Function = match lua.named_registry_value::<Option<Function>>(REAL_NEXT)? {
                Some(f) => f,
                None => lua.globals().raw_get("next")?,
            };
            let inner = inner.clone();
            let iter = lua.create_function(move |_, (_, k): (Value, Value)| {
                next.call::<MultiValue>((inner.clone(), k))
            })?;
            Ok((iter, Value::Nil, Value::Nil))
        })?,
    )?;
    mt.raw_set(
        "__len",
        lua.create_function({
            let inner = t.clone();
            move |_, _: Value| Ok(inner.raw_len())
        })?,
    )?;
    mt.raw_set("__metatable", LOCKED)?;
    proxy.set_metatable(Some(mt))?;
    Ok(proxy)
}

/// Loads `source` as a text chunk named `name` with `env` as its environment.
pub fn load_text(lua: &Lua, source: &str, name: &str, env: Table) -> mlua::Result<Function> {
    if source.as_bytes().first() == Some(&0x1b) {
        return Err(policy_error(
            "lua.bytecode",
            "precompiled Lua bytecode is refused; submit source text",
        ));
    }
    lua.load(source)
        .set_name(format!("={name}"))
        .set_mode(ChunkMode::Text)
        .set_environment(env)
        .into_function()
}
