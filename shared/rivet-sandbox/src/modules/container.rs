//! `container.run{image, command, args, env, workdir, timeout, check}`, `container.with(image, fn)`
//! and the stage field `container = "image"`.
//!
//! The worker never talks to the container engine: every operation is a host call that the
//! parent checks against its own copy of the policy (`rivet-container`): which keys are
//! accepted (CTR-01), which images (CTR-03), the host configuration, limits, and which
//! containers belong to this job. This side only shapes the request and the result.
//!
//! Inside `container.with` (and a container stage) `process.run` runs its command in that
//! container. There the image is the boundary: any program of the image may run, but the
//! command must still be a bare name and every argument is passed as argv, never to a shell.

use super::JobContext;
use crate::convert::{to_json, Args, Bounds};
use crate::host::{CallError, ContainerCall, ContainerReply, HostCall, HostResponse};
use crate::policy_error;
use mlua::{Function, Lua, MultiValue, Table, Value};
use rivet_core::policy::is_program_name;
use serde_json::{Map, Value as Json};
use std::rc::Rc;

/// Options of `process.run` that mean something inside a container.
const PROCESS_OPTIONS: [&str; 7] = ["command", "args", "env", "cwd", "timeout", "stdin", "check"];

/// A failed call as a Lua error: the parent's message as it is (policy violations keep their
/// `policy violation [container.rule]: ...` form).
fn lua_error(e: CallError) -> mlua::Error {
    mlua::Error::runtime(e.message)
}

fn call(ctx: &JobContext, call: ContainerCall) -> mlua::Result<ContainerReply> {
    let budget = ctx.budget.time_left();
    match ctx.host.call(&ctx.sink, budget, HostCall::Container(call)) {
        Ok(HostResponse::Container(reply)) => Ok(reply),
        Ok(other) => Err(mlua::Error::runtime(format!(
            "container: unexpected answer from the parent: {other:?}"
        ))),
        Err(e) => Err(lua_error(e)),
    }
}

fn bounds(ctx: &JobContext) -> Bounds {
    let limits = &ctx.request.policy.limits;
    Bounds {
        max_depth: limits.max_value_depth,
        max_size: limits.max_value_size,
    }
}

/// A Lua options table as the JSON object the parent checks; `check` is taken out (it is
/// decided here, after the answer).
fn options(ctx: &JobContext, what: &str, table: Table) -> mlua::Result<(Map<String, Json>, bool)> {
    let check = match table.raw_get::<Value>("check")? {
        Value::Nil => true,
        Value::Boolean(b) => b,
        other => {
            return Err(mlua::Error::runtime(format!(
                "{what}: `check` must be a boolean, got {}",
                other.type_name()
            )))
        }
    };
    let mut map = match to_json(&Value::Table(table), bounds(ctx))? {
        Json::Object(m) => m,
        Json::Array(a) if a.is_empty() => Map::new(),
        _ => {
            return Err(mlua::Error::runtime(format!(
                "{what}: options must be a table of named fields"
            )))
        }
    };
    map.remove("check");
    Ok((map, check))
}

/// The `{code, stdout, stderr, duration_ms}` table of an exit; an error when `check` is on and
/// the code is not 0.
fn exit_table(lua: &Lua, reply: ContainerReply, check: bool, what: &str) -> mlua::Result<Table> {
    let ContainerReply::Exited {
        code,
        stdout,
        stderr,
        duration_ms,
    } = reply
    else {
        return Err(mlua::Error::runtime(format!(
            "{what}: unexpected answer from the parent: {reply:?}"
        )));
    };
    if check && code != 0 {
        return Err(mlua::Error::runtime(format!(
            "{what} exited with code {code}"
        )));
    }
    let t = lua.create_table()?;
    t.raw_set("code", code)?;
    t.raw_set("stdout", stdout)?;
    t.raw_set("stderr", stderr)?;
    t.raw_set("duration_ms", duration_ms)?;
    Ok(t)
}

fn run(lua: &Lua, ctx: &JobContext, opts: Table) -> mlua::Result<Table> {
    let (options, check) = options(ctx, "container.run", opts)?;
    let image = options
        .get("image")
        .and_then(Json::as_str)
        .unwrap_or("?")
        .to_owned();
    let reply = call(ctx, ContainerCall::Run { options })?;
    exit_table(lua, reply, check, &format!("container `{image}`"))
}

/// Starts a long-lived container for `image` (a string, or `{image=, env=, workdir=}`) and makes
/// it the one `process.run` uses until [`leave`].
pub fn enter(ctx: &JobContext, image: Value) -> mlua::Result<String> {
    let options = match image {
        Value::String(s) => {
            let mut m = Map::new();
            m.insert("image".into(), Json::String(s.to_str()?.to_owned()));
            m
        }
        Value::Table(t) => options(ctx, "container.with", t)?.0,
        other => {
            return Err(mlua::Error::runtime(format!(
                "container.with: the first argument must be an image name or a table, got {}",
                other.type_name()
            )))
        }
    };
    enter_options(ctx, options)
}

/// Starts a long-lived container from `container.with` options and enters it.
pub fn enter_options(ctx: &JobContext, options: Map<String, Json>) -> mlua::Result<String> {
    match call(ctx, ContainerCall::Start { options })? {
        ContainerReply::Started { handle } => {
            ctx.containers.borrow_mut().push(handle.clone());
            Ok(handle)
        }
        other => Err(mlua::Error::runtime(format!(
            "container.with: unexpected answer from the parent: {other:?}"
        ))),
    }
}

/// Leaves and removes the container [`enter`] started.
pub fn leave(ctx: &JobContext, handle: String) -> mlua::Result<()> {
    ctx.containers.borrow_mut().retain(|h| h != &handle);
    call(ctx, ContainerCall::Remove { handle }).map(|_| ())
}

fn with(ctx: &JobContext, image: Value, f: Function) -> mlua::Result<MultiValue> {
    let handle = enter(ctx, image)?;
    let result = f.call::<MultiValue>(());
    // Removed on error too; the parent removes it anyway when the job ends.
    let left = leave(ctx, handle);
    let values = result?;
    left?;
    Ok(values)
}

/// `process.run` inside the current container: a command run with exec, output streamed.
pub fn process_run(
    lua: &Lua,
    ctx: &Rc<JobContext>,
    handle: &str,
    opts: Table,
) -> mlua::Result<Table> {
    let args = Args::new(opts, "process.run", &PROCESS_OPTIONS)?;
    let command = args.required_string("command")?;
    if !is_program_name(&command) {
        return Err(policy_error(
            "process.binary",
            format!("`{command}` is not a bare program name; paths and relative names are refused"),
        ));
    }
    if args.string("stdin")?.is_some() {
        return Err(mlua::Error::runtime(
            "process.run: `stdin` is not supported inside a container",
        ));
    }
    let check = args.boolean("check")?.unwrap_or(true);
    let mut options = Map::new();
    options.insert("command".into(), Json::String(command.clone()));
    options.insert(
        "args".into(),
        Json::Array(
            args.string_list("args")?
                .into_iter()
                .map(Json::String)
                .collect(),
        ),
    );
    let env = args.string_map("env")?;
    let mut merged: Map<String, Json> = ctx
        .stage_env
        .borrow()
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    merged.extend(env.into_iter().map(|(k, v)| (k, Json::String(v))));
    options.insert("env".into(), Json::Object(merged));
    if let Some(cwd) = args.string("cwd")? {
        // Lexically inside the workspace; the parent maps it under the workspace mount.
        let path = super::filesystem::check_path(&cwd)?;
        options.insert("workdir".into(), Json::String(path.display().to_string()));
    }
    if let Some(t) = args.number("timeout")? {
        options.insert("timeout".into(), Json::from(t));
    }
    let reply = call(
        ctx,
        ContainerCall::Exec {
            handle: handle.to_owned(),
            options,
        },
    )?;
    exit_table(
        lua,
        reply,
        check,
        &format!("process `{command}` (in a container)"),
    )
}

/// Installs `container`.
pub fn register(lua: &Lua, ctx: &Rc<JobContext>, env: &Table) -> mlua::Result<()> {
    let m = lua.create_table()?;
    let c = ctx.clone();
    m.raw_set(
        "run",
        lua.create_function(move |lua, opts: Table| run(lua, &c, opts))?,
    )?;
    let c = ctx.clone();
    m.raw_set(
        "with",
        lua.create_function(move |_, (image, f): (Value, Function)| with(&c, image, f))?,
    )?;
    env.raw_set("container", crate::vm::readonly(lua, &m)?)?;
    Ok(())
}
