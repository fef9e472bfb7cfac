//! `compose/docker-compose.yml` cannot run here (no container engine), so this checks that it
//! parses and says what a deployment needs: every service healthy before its dependants start,
//! and only environment variables the binaries actually read.

use clap::CommandFactory;
use serde_yaml_ng::Value;
use std::collections::BTreeSet;

fn compose() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compose/docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("compose/docker-compose.yml exists");
    let mut v: Value = serde_yaml_ng::from_str(&text).expect("the compose file is valid YAML");
    v.apply_merge().expect("merge keys resolve");
    // Merge keys nest one level (services use `<<: *runner` and `environment: { <<: ... }`).
    let services = v.get_mut("services").unwrap().as_mapping_mut().unwrap();
    for (_, svc) in services.iter_mut() {
        svc.apply_merge().unwrap();
        if let Some(env) = svc.get_mut("environment") {
            env.apply_merge().unwrap();
        }
    }
    v
}

fn env_names(cmd: clap::Command) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(env_names(sub.clone()));
    }
    out
}

#[test]
fn the_compose_file_describes_a_healthy_deployment() {
    let v = compose();
    let services = v["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for want in [
        "postgres",
        "redis",
        "rabbitmq",
        "orchestrator",
        "runner-1",
        "runner-2",
        "runner-3",
    ] {
        assert!(names.contains(want), "missing service {want}");
    }
    for (name, svc) in services {
        assert!(
            svc.get("healthcheck").is_some(),
            "{name:?} has no health check"
        );
    }
    assert!(services[&Value::from("rabbitmq")]["image"]
        .as_str()
        .unwrap()
        .contains("management"));
    let orch = &services[&Value::from("orchestrator")];
    for dep in ["postgres", "redis", "rabbitmq"] {
        assert_eq!(
            orch["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy"),
            "orchestrator waits for {dep}"
        );
    }

    let orchestrator_env = env_names(rivet_orchestrator::Cli::command());
    let runner_env = env_names(rivet_runner::Config::command());
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let known = match name {
            "orchestrator" => &orchestrator_env,
            n if n.starts_with("runner-") => {
                assert_eq!(
                    svc["depends_on"]["orchestrator"]["condition"].as_str(),
                    Some("service_healthy")
                );
                assert!(
                    svc.get("privileged").is_none(),
                    "runners are never privileged"
                );
                // API-02: a runner's identity and labels come from its registration.
                let env = &svc["environment"];
                for needed in ["RIVET_URL", "RIVET_RUNNER_TOKEN"] {
                    assert!(env.get(needed).is_some(), "{name} does not set {needed}");
                }
                assert!(
                    env.get("RIVET_LABELS").is_none(),
                    "{name} declares its own labels; an admin assigns them"
                );
                // API-03: a runner's broker and Redis users come from its registration; it holds
                // no credentials of its own.
                for url in ["RIVET_AMQP_URL", "RIVET_REDIS_URL"] {
                    let url = env[url].as_str().expect("a service URL");
                    assert!(!url.contains('@'), "{name} holds credentials: {url}");
                }
                &runner_env
            }
            _ => continue,
        };
        for key in svc["environment"].as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            if key.starts_with("RIVET_") {
                assert!(
                    known.contains(key),
                    "{name} sets {key}, which it does not read"
                );
            }
        }
    }
}
