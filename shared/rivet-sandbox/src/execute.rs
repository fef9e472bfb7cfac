//! Runs one job inside the worker process: evaluate the definition, resolve inputs, load
//! plugins, grant modules, run the stages in order.

use crate::convert::Bounds;
use crate::definition::{self, Loaded};
use crate::events::{Event, Level, Source};
use crate::job::{JobRequest, Mode};
use crate::modules::{self, JobContext, Sink};
use crate::plugins;
use crate::vm::{new_vm, Vm};
use mlua::{Function, Lua, Table, Value};
use rivet_core::requirement::{CoreModule, Requirement, RequirementSet};
use rivet_core::{JobOutcome, StageOutcome};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Instant;

/// What the isolation step set up for this job.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// HOME for children.
    pub home: std::path::PathBuf,
    /// TMPDIR for children.
    pub tmp: std::path::PathBuf,
    /// Whether this process is pid 1 of a private pid namespace with its own `/proc`.
    pub pid_namespace: bool,
    /// Notes for the job log (what could not be isolated, and why).
    pub notes: Vec<String>,
    /// A host directory to remove when the job ends (fallback mode's HOME and TMPDIR).
    pub cleanup: Option<std::path::PathBuf>,
}

/// Runs `request` and returns how it ended. Every event goes to `sink`.
pub fn execute(
    request: JobRequest,
    sink: Rc<Sink>,
    isolation: Isolation,
    host: crate::host::HostChannel,
) -> JobOutcome {
    for note in &isolation.notes {
        sink.log(Level::Warn, Source::System, note);
    }
    let limits = request.policy.limits.clone();
    let vm = match new_vm(limits.definition_memory) {
        Ok(vm) => vm,
        Err(e) => {
            return JobOutcome::Failed {
                stage: None,
                error: format!("creating the Lua VM: {e}"),
            }
        }
    };
    let workspace = if request.mode == Mode::Run {
        match cap_std::fs::Dir::open_ambient_dir(&request.workspace, cap_std::ambient_authority()) {
            Ok(d) => Some(d),
            Err(e) => {
                return JobOutcome::Failed {
                    stage: None,
                    error: format!("opening workspace {}: {e}", request.workspace.display()),
                }
            }
        }
    } else {
        None
    };
    let ctx = Rc::new(JobContext {
        sink,
        budget: vm.budget.clone(),
        vars: Default::default(),
        inputs: Default::default(),
        stage_env: Default::default(),
        workspace,
        home: isolation.home,
        tmp: isolation.tmp,
        pid_namespace: isolation.pid_namespace,
        fs_usage: Default::default(),
        host,
        containers: Default::default(),
        process_granted: std::cell::Cell::new(false),
        request,
    });
    let outcome = match run(&vm, &ctx) {
        Ok(outcome) => outcome,
        Err(e) => JobOutcome::Failed {
            stage: None,
            error: ctx.lua_error(&e),
        },
    };
    // Never close the Lua state: `lua_close` runs finalizers, which no hook can interrupt (P11).
    // The worker process exits right after reporting, and the OS reclaims the memory.
    std::mem::forget(vm);
    outcome
}

fn run(vm: &Vm, ctx: &Rc<JobContext>) -> mlua::Result<JobOutcome> {
    let lua = &vm.lua;
    let req = &ctx.request;
    let limits = &req.policy.limits;
    let globals = lua.globals();
    let bounds = Bounds {
        max_depth: limits.max_value_depth,
        max_size: limits.max_value_size,
    };
    // The definition's top level sees only `log`/`print`/`warn` and `json`: no host access.
    modules::log::register(lua, ctx, &globals)?;
    modules::json::register(lua, bounds, &globals)?;

    let catalog: BTreeSet<String> = req.plugins.keys().cloned().collect();
    let loaded = match definition::evaluate(
        lua,
        &vm.budget,
        globals.clone(),
        &req.source,
        &req.file_name,
        limits,
        &catalog,
    ) {
        Ok(l) => l,
        Err(problems) => {
            let count = problems.len();
            ctx.sink.emit(&Event::Problems { problems });
            let error = format!(
                "{} is not a valid pipeline ({count} problem{})",
                req.file_name,
                plural(count)
            );
            return Ok(JobOutcome::Failed { stage: None, error });
        }
    };

    // Plugins, transitively; their requirements become grants.
    let (grants, plugin_tables) = match load_plugins(lua, ctx, &loaded.spec.requires, &globals) {
        Ok(x) => x,
        Err(error) => {
            ctx.sink.emit(&Event::Problems {
                problems: vec![rivet_core::Problem::new(None, error.clone())],
            });
            return Ok(JobOutcome::Failed { stage: None, error });
        }
    };
    ctx.sink.emit(&Event::Definition {
        spec: loaded.spec.clone(),
    });
    if req.mode == Mode::Lint {
        return Ok(JobOutcome::Succeeded);
    }

    match rivet_core::input::resolve(&loaded.spec.inputs, &req.inputs) {
        Ok(values) => *ctx.inputs.borrow_mut() = values,
        Err(errors) => {
            let count = errors.len();
            ctx.sink.emit(&Event::InputErrors { errors });
            return Ok(JobOutcome::Failed {
                stage: None,
                error: format!("{count} input error{}", plural(count)),
            });
        }
    }

    lua.set_memory_limit(usize::try_from(limits.memory).unwrap_or(usize::MAX))?;
    modules::env::register(lua, ctx, &globals)?;
    let process = grants.has_module(CoreModule::Process);
    let container = grants.has_module(CoreModule::Container);
    ctx.process_granted.set(process);
    if process || container {
        modules::process::register(lua, ctx, &globals)?;
    }
    if container {
        modules::container::register(lua, ctx, &globals)?;
    }
    if grants.has_module(CoreModule::Filesystem) {
        modules::filesystem::register(lua, ctx, &globals)?;
    }
    if grants.has_module(CoreModule::Http) {
        modules::http::register(lua, ctx, &globals)?;
    }
    install_require(lua, &globals, plugin_tables)?;
    // Tell the parent what this job may ask of it, before any stage (and so any child process
    // that could write to the event pipe) runs.
    ctx.sink.emit(&Event::Granted { grants });
    Ok(run_stages(ctx, &loaded))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Loads the plugins a requirement set names, and theirs, in the job VM. Returns every granted
/// requirement and the plugin modules by name.
fn load_plugins(
    lua: &Lua,
    ctx: &Rc<JobContext>,
    requires: &RequirementSet,
    globals: &Table,
) -> Result<(RequirementSet, BTreeMap<String, Table>), String> {
    let mut grants = requires.clone();
    let mut tables = BTreeMap::new();
    let mut queue: Vec<String> = requires.plugins().map(str::to_owned).collect();
    while let Some(name) = queue.pop() {
        if tables.contains_key(&name) {
            continue;
        }
        let source = ctx
            .request
            .plugins
            .get(&name)
            .ok_or_else(|| format!("unknown requirement `plugin.{name}`: no such plugin"))?;
        let (table, manifest) = plugins::load(lua, globals.clone(), &name, source)?;
        if ctx.request.mode == Mode::Run {
            for bin in &manifest.binaries {
                if !plugins::binary_met(bin, |b| ctx.request.binaries.contains_key(b)) {
                    return Err(format!(
                        "plugin `{name}` needs the program `{bin}`, which is not allowed by the policy or not installed"
                    ));
                }
            }
        }
        for req in manifest.requires.0 {
            if let Requirement::Plugin { name } = &req {
                queue.push(name.clone());
            }
            grants.0.insert(req);
        }
        globals
            .raw_set(plugins::global_name(&name), table.clone())
            .map_err(|e| e.to_string())?;
        tables.insert(name, table);
    }
    Ok((grants, tables))
}

/// `require("plugin.NAME")` returns a declared plugin's module; nothing else can be required.
fn install_require(
    lua: &Lua,
    globals: &Table,
    tables: BTreeMap<String, Table>,
) -> mlua::Result<()> {
    globals.raw_set(
        "require",
        lua.create_function(move |_, name: String| {
            let Some(plugin) = name.strip_prefix("plugin.") else {
                return Err(crate::policy_error(
                    "lua.require",
                    format!("require(\"{name}\"): only plugins can be required, as require(\"plugin.NAME\")"),
                ));
            };
            tables.get(plugin).cloned().ok_or_else(|| {
                crate::policy_error("plugin.undeclared", format!("`plugin.{plugin}` is not in this pipeline's `requires`"))
            })
        })?,
    )
}

fn run_stages(ctx: &Rc<JobContext>, loaded: &Loaded) -> JobOutcome {
    let limits = &ctx.request.policy.limits;
    let job_started = Instant::now();
    let stages: Table = match loaded.table.raw_get("stages") {
        Ok(t) => t,
        Err(e) => {
            return JobOutcome::Failed {
                stage: None,
                error: e.to_string(),
            }
        }
    };
    let mut failure: Option<JobOutcome> = None;
    let job_limit = loaded
        .spec
        .timeout
        .map_or(limits.job_timeout, |t| t.min(limits.job_timeout));
    for (index, spec) in loaded.spec.stages.iter().enumerate() {
        let name = spec.name.clone();
        if let Some(outcome) = &failure {
            let why = match outcome {
                JobOutcome::TimedOut { .. } => "an earlier stage timed out",
                _ => "an earlier stage failed",
            };
            ctx.sink.emit(&Event::StageFinished {
                index,
                name,
                outcome: StageOutcome::Skipped,
                duration_ms: 0,
                error: Some(why.into()),
            });
            continue;
        }
        let table: Table = match stages.raw_get(index + 1) {
            Ok(t) => t,
            Err(e) => {
                return JobOutcome::Failed {
                    stage: Some(name),
                    error: e.to_string(),
                }
            }
        };
        let job_left = job_limit.saturating_sub(job_started.elapsed());
        let stage_limit = spec.timeout.unwrap_or(limits.stage_timeout);
        let timeout = stage_limit.min(job_left);
        *ctx.sink.stage.borrow_mut() = Some(name.clone());
        *ctx.stage_env.borrow_mut() = spec.env.clone();
        if job_left < stage_limit {
            ctx.budget
                .arm_job_bound(limits.instructions, timeout, job_limit);
        } else {
            ctx.budget.arm(limits.instructions, timeout);
        }
        let started = Instant::now();

        if spec.has_condition {
            let run_it = table
                .raw_get::<Function>("condition")
                .and_then(|f| f.call::<Value>(()))
                .map(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
            match run_it {
                Ok(true) => {}
                Ok(false) => {
                    ctx.sink.emit(&Event::StageFinished {
                        index,
                        name,
                        outcome: StageOutcome::Skipped,
                        duration_ms: 0,
                        error: Some("its condition returned false".into()),
                    });
                    *ctx.sink.stage.borrow_mut() = None;
                    continue;
                }
                Err(e) => {
                    let error = format!("condition: {}", ctx.lua_error(&e));
                    failure = Some(finish_failed(ctx, index, &name, started, error));
                    continue;
                }
            }
        }

        ctx.sink.emit(&Event::StageStarted {
            index,
            name: name.clone(),
            timeout_ms: timeout.as_millis() as u64,
        });
        let result = match &spec.container {
            // The whole stage runs with its `process.run` calls inside this image.
            Some(image) => {
                let mut options = serde_json::Map::new();
                options.insert("image".into(), serde_json::Value::String(image.clone()));
                modules::container::enter_options(ctx, options).and_then(|handle| {
                    let ran = table
                        .raw_get::<Function>("script")
                        .and_then(|f| f.call::<()>(()));
                    let left = modules::container::leave(ctx, handle);
                    ran.and(left)
                })
            }
            None => table
                .raw_get::<Function>("script")
                .and_then(|f| f.call::<()>(())),
        };
        match result {
            Ok(()) => {
                ctx.sink.emit(&Event::StageFinished {
                    index,
                    name,
                    outcome: StageOutcome::Succeeded,
                    duration_ms: started.elapsed().as_millis() as u64,
                    error: None,
                });
            }
            Err(e) => {
                let error = ctx.lua_error(&e);
                failure = Some(finish_failed(ctx, index, &name, started, error));
            }
        }
        *ctx.sink.stage.borrow_mut() = None;
        *ctx.stage_env.borrow_mut() = BTreeMap::new();
    }
    failure.unwrap_or(JobOutcome::Succeeded)
}

fn finish_failed(
    ctx: &Rc<JobContext>,
    index: usize,
    name: &str,
    started: Instant,
    error: String,
) -> JobOutcome {
    let timed_out = ctx.budget.exhausted();
    let (outcome, stage_outcome, error) = match timed_out {
        Some(e) => {
            let error = if error.contains(&e.message()) {
                error
            } else {
                format!("{} ({error})", e.message())
            };
            (
                JobOutcome::TimedOut {
                    stage: Some(name.into()),
                    error: error.clone(),
                },
                StageOutcome::TimedOut,
                error,
            )
        }
        None => (
            JobOutcome::Failed {
                stage: Some(name.into()),
                error: error.clone(),
            },
            StageOutcome::Failed,
            error,
        ),
    };
    ctx.sink.log(
        Level::Error,
        Source::System,
        &format!(
            "stage `{name}` {}: {error}",
            stage_outcome_word(stage_outcome)
        ),
    );
    ctx.sink.emit(&Event::StageFinished {
        index,
        name: name.into(),
        outcome: stage_outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        error: Some(error),
    });
    outcome
}

fn stage_outcome_word(o: StageOutcome) -> &'static str {
    match o {
        StageOutcome::TimedOut => "timed out",
        _ => "failed",
    }
}
