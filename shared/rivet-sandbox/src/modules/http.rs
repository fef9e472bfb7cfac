//! `http.request{method, url, headers, body, timeout}`, `http.get(url[, opts])`,
//! `http.post(url, body[, opts])` → `{status=, headers=, body=, url=}`.
//!
//! The worker has no network: each call is a host call answered by the parent, which checks
//! every hop against its own copy of the policy (`host/http.rs`). This side only reads the Lua
//! arguments (raw, bounded) and turns the answer into a table. A non-2xx status is an answer,
//! not an error; policy refusals, connection failures and timeouts are errors.

use super::JobContext;
use crate::convert::Args;
use crate::events::{Level, Source};
use crate::host::http::HttpRequest;
use crate::host::{CallErrorKind, HostCall, HostResponse};
use mlua::{Lua, Table, Value};
use std::rc::Rc;
use std::time::Duration;

const REQUEST_OPTIONS: [&str; 5] = ["method", "url", "headers", "body", "timeout"];
const GET_OPTIONS: [&str; 2] = ["headers", "timeout"];

/// The body argument: any Lua string (bytes), or nil.
fn body_arg(call: &str, value: Value, max: u64) -> mlua::Result<Option<Vec<u8>>> {
    match value {
        Value::Nil => Ok(None),
        Value::String(s) => {
            let bytes = s.as_bytes().to_vec();
            if bytes.len() as u64 > max {
                return Err(crate::policy_error(
                    "http.size",
                    format!(
                        "a request body of {} bytes, more than the {max} allowed (http.max_request)",
                        bytes.len()
                    ),
                ));
            }
            Ok(Some(bytes))
        }
        other => Err(mlua::Error::runtime(format!(
            "{call}: `body` must be a string (use json.encode for tables), got {}",
            other.type_name()
        ))),
    }
}

fn timeout_arg(call: &str, args: &Args) -> mlua::Result<Option<u64>> {
    match args.number("timeout")? {
        None => Ok(None),
        Some(secs) => rivet_core::duration::seconds(secs)
            .filter(|d| !d.is_zero())
            .map(|d| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            .ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "{call}: `timeout` must be a positive number of seconds"
                ))
            }),
    }
}

fn perform(lua: &Lua, ctx: &JobContext, request: HttpRequest) -> mlua::Result<Table> {
    let left = ctx.budget.time_left();
    if left.is_zero() {
        ctx.budget.expire_deadline();
        return Err(mlua::Error::runtime(
            "http: the stage has no time left for a request",
        ));
    }
    let method = request.method.to_ascii_uppercase();
    let origin = reqwest::Url::parse(&request.url)
        .map(|u| crate::host::http::origin(&u))
        .unwrap_or_else(|_| "?".into());
    let started = std::time::Instant::now();
    let answer = ctx.host.call(&ctx.sink, left, HostCall::Http(request));
    let response = match answer {
        Ok(HostResponse::Http(r)) => r,
        Ok(other) => {
            return Err(mlua::Error::runtime(format!(
                "http: unexpected answer from the parent: {other:?}"
            )))
        }
        Err(e) => {
            if e.kind == CallErrorKind::Timeout
                && ctx.budget.time_left() < Duration::from_millis(50)
            {
                ctx.budget.expire_deadline();
            }
            return Err(mlua::Error::runtime(e.message));
        }
    };
    ctx.sink.log(
        Level::Debug,
        Source::System,
        &format!(
            "http: {method} {origin} answered {} ({} bytes, {} ms)",
            response.status,
            response.body.len(),
            started.elapsed().as_millis()
        ),
    );
    let out = lua.create_table()?;
    out.raw_set("status", response.status)?;
    let headers = lua.create_table()?;
    for (name, value) in &response.headers {
        let joined = match headers.raw_get::<Option<String>>(name.as_str())? {
            Some(prev) => format!("{prev}, {value}"),
            None => value.clone(),
        };
        headers.raw_set(name.as_str(), joined)?;
    }
    out.raw_set("headers", headers)?;
    out.raw_set("body", lua.create_string(&response.body)?)?;
    out.raw_set("url", response.url)?;
    Ok(out)
}

fn request(lua: &Lua, ctx: &JobContext, opts: Table) -> mlua::Result<Table> {
    let call = "http.request";
    let body = body_arg(
        call,
        opts.raw_get("body")?,
        ctx.request.policy.http.max_request,
    )?;
    let args = Args::new(opts, call, &REQUEST_OPTIONS)?;
    let req = HttpRequest {
        method: args.string("method")?.unwrap_or_else(|| "GET".into()),
        url: args.required_string("url")?,
        headers: args.string_map("headers")?.into_iter().collect(),
        body,
        timeout_ms: timeout_arg(call, &args)?,
    };
    perform(lua, ctx, req)
}

fn simple(
    lua: &Lua,
    ctx: &JobContext,
    call: &'static str,
    method: &str,
    url: String,
    body: Option<Vec<u8>>,
    opts: Option<Table>,
) -> mlua::Result<Table> {
    let (headers, timeout_ms) = match opts {
        Some(t) => {
            let args = Args::new(t, call, &GET_OPTIONS)?;
            (
                args.string_map("headers")?.into_iter().collect(),
                timeout_arg(call, &args)?,
            )
        }
        None => (Vec::new(), None),
    };
    perform(
        lua,
        ctx,
        HttpRequest {
            method: method.into(),
            url,
            headers,
            body,
            timeout_ms,
        },
    )
}

/// Installs `http`.
pub fn register(lua: &Lua, ctx: &Rc<JobContext>, env: &Table) -> mlua::Result<()> {
    let m = lua.create_table()?;
    let c = ctx.clone();
    m.raw_set(
        "request",
        lua.create_function(move |lua, opts: Table| request(lua, &c, opts))?,
    )?;
    let c = ctx.clone();
    m.raw_set(
        "get",
        lua.create_function(move |lua, (url, opts): (String, Option<Table>)| {
            simple(lua, &c, "http.get", "GET", url, None, opts)
        })?,
    )?;
    let c = ctx.clone();
    m.raw_set(
        "post",
        lua.create_function(
            move |lua, (url, body, opts): (String, Value, Option<Table>)| {
                let body = body_arg("http.post", body, c.request.policy.http.max_request)?;
                simple(lua, &c, "http.post", "POST", url, body, opts)
            },
        )?,
    )?;
    env.raw_set("http", crate::vm::readonly(lua, &m)?)?;
    Ok(())
}
