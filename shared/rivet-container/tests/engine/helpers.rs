//! Shared set-up: the real engine (Podman's API started by `scripts/podman-setup.sh`), a
//! policy, a workspace with a canary beside it, and a direct look at the engine's containers.

use bollard::query_parameters::ListContainersOptions;
use rivet_container::{ContainerCall, ContainerError, ContainerReply, Engine, JobContainers};
use rivet_core::policy::ContainerPolicy;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The engine's address: `RIVET_CONTAINER_HOST`, else the setup script's socket.
pub fn host() -> String {
    rivet_container::host_from_env()
}

/// One engine per test binary. Fails loudly, with the fix, when the API does not answer.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::connect(&host(), "rivet-container-tests").unwrap_or_else(|e| {
                panic!(
                    "the container engine is not reachable ({}); run `scripts/podman-setup.sh` (it starts Podman's API on {})",
                    e.describe(),
                    host()
                )
            })
        })
        .clone()
}

/// A policy allowing the local test images.
pub fn policy() -> ContainerPolicy {
    ContainerPolicy {
        images: vec!["rivet-test/*".into(), "python:3.11".into()],
        default_timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    }
}

/// A fresh workspace for `name`, and a canary file beside it (outside it).
pub struct Fixture {
    pub workspace: PathBuf,
    pub canary: PathBuf,
    pub job_id: String,
}

pub const CANARY: &str = "canary: untouched\n";

pub fn fixture(name: &str) -> Fixture {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("rivet-container-engine")
        .join(name);
    let _ = std::fs::remove_dir_all(&base);
    let workspace = base.join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let canary = base.join("canary.txt");
    std::fs::write(&canary, CANARY).unwrap();
    Fixture {
        workspace,
        canary,
        job_id: format!("test-{name}-{}", std::process::id()),
    }
}

impl Fixture {
    pub fn job(&self, policy: ContainerPolicy) -> JobContainers {
        engine().job(&self.job_id, self.workspace.clone(), policy)
    }

    pub fn assert_canary(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.canary).unwrap(),
            CANARY,
            "the canary outside the workspace changed"
        );
    }
}

/// Options from a JSON literal.
pub fn opts(v: Value) -> rivet_container::Options {
    v.as_object().cloned().expect("options are an object")
}

/// Runs `call`, collecting output lines as `out: ...` / `err: ...`.
pub fn call(
    job: &JobContainers,
    call: ContainerCall,
) -> (Result<ContainerReply, ContainerError>, Vec<String>) {
    let mut lines = Vec::new();
    let r = job.call(call, &mut |stream, line| {
        let tag = match stream {
            rivet_container::OutputStream::Stdout => "out",
            rivet_container::OutputStream::Stderr => "err",
        };
        lines.push(format!("{tag}: {line}"));
    });
    (r, lines)
}

pub fn run(
    job: &JobContainers,
    options: Value,
) -> (Result<ContainerReply, ContainerError>, Vec<String>) {
    call(
        job,
        ContainerCall::Run {
            options: opts(options),
        },
    )
}

/// The policy rule of an error, or a description of what it was instead.
pub fn rule(r: Result<ContainerReply, ContainerError>) -> String {
    match r {
        Err(ContainerError::Policy { rule, .. }) => rule.to_owned(),
        other => format!("not a policy violation: {other:?}"),
    }
}

/// Containers on the engine carrying `io.rivet.job=<job_id>`, asked directly of the API.
pub fn containers_of_job(job_id: &str) -> Vec<String> {
    let host = host();
    let path = host.trim_start_matches("unix://").to_owned();
    let job = job_id.to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let docker = bollard::Docker::connect_with_unix(
            &path,
            30,
            &bollard::ClientVersion {
                major_version: 1,
                minor_version: 41,
            },
        )
        .unwrap();
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("io.rivet.job={job}")],
            )])),
            ..Default::default()
        };
        docker
            .list_containers(Some(options))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    })
}

/// The exit code and stdout of a reply.
pub fn exited(r: Result<ContainerReply, ContainerError>) -> (i64, String) {
    match r {
        Ok(ContainerReply::Exited { code, stdout, .. }) => (code, stdout),
        other => panic!("expected an exit, got {other:?}"),
    }
}
