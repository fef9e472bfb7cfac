//! The container executor against the real engine (Podman's Docker-compatible API). Start it
//! with `scripts/podman-setup.sh`; these tests fail with that hint when it does not answer.

mod helpers;

use helpers::*;
use rivet_container::{ContainerCall, ContainerError, ContainerReply};
use serde_json::json;
use std::time::{Duration, Instant};

const BUSYBOX: &str = "rivet-test/busybox";

#[test]
fn run_streams_output_returns_the_exit_code_and_removes_the_container() {
    let fx = fixture("run-basic");
    let job = fx.job(policy());
    let (r, lines) = run(
        &job,
        json!({"image": BUSYBOX, "command": ["sh", "-c", "echo one; echo two >&2; echo three; exit 3"]}),
    );
    let Ok(ContainerReply::Exited {
        code,
        stdout,
        stderr,
        ..
    }) = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(code, 3);
    assert_eq!(stdout, "one\nthree\n");
    assert_eq!(stderr, "two\n");
    assert!(
        lines.contains(&"out: one".to_string()) && lines.contains(&"err: two".to_string()),
        "{lines:?}"
    );
    assert!(
        containers_of_job(&fx.job_id).is_empty(),
        "container.run leaves no container behind"
    );
    assert_eq!(job.live(), 0);
}

#[test]
fn the_workspace_is_the_only_host_path_and_it_is_writable() {
    let fx = fixture("workspace");
    std::fs::write(fx.workspace.join("in.txt"), "from the host\n").unwrap();
    let job = fx.job(policy());
    let (r, _) = run(
        &job,
        json!({"image": BUSYBOX, "command": ["sh", "-c", "cat in.txt; pwd; echo made > out.txt; ls /"], "workdir": "."}),
    );
    let (code, stdout) = exited(r);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("from the host\n/workspace\n"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(fx.workspace.join("out.txt")).unwrap(),
        "made\n"
    );
    fx.assert_canary();
}

#[test]
fn containers_run_unprivileged_without_network_and_with_limits() {
    let fx = fixture("hardening");
    let job = fx.job(policy());
    let script = "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ls /sys/class/net; \
                  cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; \
                  cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                  mount -t tmpfs x /mnt && echo MOUNTED";
    let (r, _) = run(
        &job,
        json!({"image": BUSYBOX, "command": ["sh", "-c", script]}),
    );
    let (_, out) = exited(r);
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE = 0x4fb.
    assert!(
        out.contains("CapEff:\t00000000000004fb"),
        "capabilities: {out}"
    );
    assert!(
        out.contains("CapBnd:\t00000000000004fb"),
        "bounding set: {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let nets: Vec<&str> = out
        .lines()
        .filter(|l| !l.contains(':') && !l.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(nets, ["lo"], "only loopback: {out}");
    assert!(out.contains("\n512\n"), "pids limit: {out}");
    assert!(
        out.contains(&format!("\n{}\n", 1u64 << 30)),
        "memory limit: {out}"
    );
    assert!(
        !out.contains("MOUNTED"),
        "mount needs CAP_SYS_ADMIN, which is dropped: {out}"
    );
}

/// CTR-01 at the executor: every host-configuration key is refused before anything is created.
#[test]
fn ctr01_host_configuration_keys_are_refused_and_nothing_is_created() {
    let fx = fixture("ctr01");
    let job = fx.job(policy());
    for (key, value) in [
        ("privileged", json!(true)),
        ("cap_add", json!(["SYS_ADMIN"])),
        ("devices", json!(["/dev/sda1"])),
        ("network_mode", json!("host")),
        ("pid_mode", json!("host")),
        ("userns_mode", json!("host")),
        (
            "security_opt",
            json!(["seccomp=unconfined", "apparmor=unconfined"]),
        ),
        ("volumes", json!({"/": "/host"})),
        ("binds", json!(["/:/host"])),
    ] {
        let mut options =
            opts(json!({"image": BUSYBOX, "command": ["sh", "-c", "id > /workspace/pwn"]}));
        options.insert(key.into(), value);
        let (r, _) = call(&job, ContainerCall::Run { options });
        assert_eq!(rule(r), "container.hostconfig", "{key}");
    }
    assert!(containers_of_job(&fx.job_id).is_empty());
    assert!(!fx.workspace.join("pwn").exists());
    fx.assert_canary();
    let (r, _) = run(&job, json!({"image": BUSYBOX, "command": ["true"]}));
    assert_eq!(
        exited(r).0,
        0,
        "the same job runs a normal container afterwards"
    );
}

/// CTR-03: untrusted registries, flag-like image strings, images missing with pulls off.
#[test]
fn ctr03_images_are_allow_listed_parsed_strictly_and_never_pulled() {
    let fx = fixture("ctr03");
    let job = fx.job(policy());
    for image in [
        "registry.attacker.example/50gb:latest",
        "alpine",
        "python:3.12",
    ] {
        let (r, _) = run(&job, json!({"image": image, "command": ["true"]}));
        assert_eq!(rule(r), "container.image", "{image}");
    }
    for image in [
        "alpine --privileged",
        "--privileged",
        "rivet-test/busybox --rm",
    ] {
        let (r, _) = run(&job, json!({"image": image, "command": ["id"]}));
        assert_eq!(rule(r), "container.image", "{image}");
    }
    let (r, _) = run(
        &job,
        json!({"image": "rivet-test/absent:1", "command": ["true"]}),
    );
    match r {
        Err(e @ ContainerError::MissingImage { .. }) => {
            assert!(e.to_string().contains("pulling images is off"), "{e}")
        }
        other => panic!("expected a missing-image error, got {other:?}"),
    }
    assert!(containers_of_job(&fx.job_id).is_empty());
    fx.assert_canary();
    let (r, _) = run(&job, json!({"image": BUSYBOX, "command": ["true"]}));
    assert_eq!(exited(r).0, 0);
}

/// CTR-03: a runaway container is stopped by its time limit and removed.
#[test]
fn ctr03_a_container_past_its_timeout_is_removed() {
    let fx = fixture("timeout");
    let job = fx.job(policy());
    let started = Instant::now();
    let (r, _) = run(
        &job,
        json!({"image": BUSYBOX, "command": ["sh", "-c", "while :; do :; done"], "timeout": 1}),
    );
    assert!(matches!(r, Err(ContainerError::TimedOut { .. })), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(containers_of_job(&fx.job_id).is_empty());
}

#[test]
fn output_past_the_cap_kills_the_container() {
    let fx = fixture("output-cap");
    let job = fx.job(rivet_core::policy::ContainerPolicy {
        max_output: 4096,
        ..policy()
    });
    let (r, _) = run(
        &job,
        json!({"image": BUSYBOX, "command": ["sh", "-c", "yes | head -c 1000000; sleep 30"]}),
    );
    assert_eq!(rule(r), "container.output");
    assert!(containers_of_job(&fx.job_id).is_empty());
}

#[test]
fn with_containers_exec_commands_and_only_their_own() {
    let fx = fixture("with");
    let job = fx.job(policy());
    let (r, _) = call(
        &job,
        ContainerCall::Start {
            options: opts(json!({"image": BUSYBOX, "env": {"GREETING": "hi"}})),
        },
    );
    let Ok(ContainerReply::Started { handle }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(containers_of_job(&fx.job_id), std::slice::from_ref(&handle));
    std::fs::create_dir_all(fx.workspace.join("sub")).unwrap();
    let (r, lines) = call(
        &job,
        ContainerCall::Exec {
            handle: handle.clone(),
            options: opts(
                json!({"command": "sh", "args": ["-c", "echo $GREETING $EXTRA; pwd; exit 4"], "env": {"EXTRA": "there"}, "workdir": "sub"}),
            ),
        },
    );
    assert_eq!(exited(r), (4, "hi there\n/workspace/sub\n".to_string()));
    assert_eq!(lines, ["out: hi there", "out: /workspace/sub"]);

    // Another job cannot use this handle, nor can a made-up one be used.
    let other = fixture("with-other").job(policy());
    let (r, _) = call(
        &other,
        ContainerCall::Exec {
            handle: handle.clone(),
            options: opts(json!({"command": "id"})),
        },
    );
    assert_eq!(rule(r), "container.handle");
    let (r, _) = call(
        &job,
        ContainerCall::Remove {
            handle: "0123abcd".into(),
        },
    );
    assert_eq!(rule(r), "container.handle");

    // A command past its timeout takes the container with it.
    let (r, _) = call(
        &job,
        ContainerCall::Exec {
            handle: handle.clone(),
            options: opts(json!({"command": ["sleep", "30"], "timeout": 1})),
        },
    );
    assert!(matches!(r, Err(ContainerError::TimedOut { .. })), "{r:?}");
    assert!(containers_of_job(&fx.job_id).is_empty());
    let (r, _) = call(
        &job,
        ContainerCall::Exec {
            handle,
            options: opts(json!({"command": "true"})),
        },
    );
    assert_eq!(
        rule(r),
        "container.handle",
        "a removed container cannot be used"
    );
}

#[test]
fn cleanup_removes_everything_and_refuses_later_calls() {
    let fx = fixture("cleanup");
    let job = fx.job(policy());
    for _ in 0..2 {
        let (r, _) = call(
            &job,
            ContainerCall::Start {
                options: opts(json!({"image": BUSYBOX})),
            },
        );
        assert!(matches!(r, Ok(ContainerReply::Started { .. })), "{r:?}");
    }
    assert_eq!(containers_of_job(&fx.job_id).len(), 2);
    assert_eq!(job.cleanup(), 2);
    assert!(containers_of_job(&fx.job_id).is_empty());
    let (r, _) = run(&job, json!({"image": BUSYBOX, "command": ["true"]}));
    assert!(matches!(r, Err(ContainerError::Closed)), "{r:?}");

    // Dropping the tracker removes what it holds too.
    let fx2 = fixture("cleanup-drop");
    let job2 = fx2.job(policy());
    let (r, _) = call(
        &job2,
        ContainerCall::Start {
            options: opts(json!({"image": BUSYBOX})),
        },
    );
    assert!(r.is_ok(), "{r:?}");
    drop(job2);
    assert!(containers_of_job(&fx2.job_id).is_empty());
}

#[test]
fn a_job_has_a_bounded_number_of_containers() {
    let fx = fixture("limit");
    let job = fx.job(rivet_core::policy::ContainerPolicy {
        max_containers: 1,
        ..policy()
    });
    let (r, _) = call(
        &job,
        ContainerCall::Start {
            options: opts(json!({"image": BUSYBOX})),
        },
    );
    assert!(r.is_ok(), "{r:?}");
    let (r, _) = call(
        &job,
        ContainerCall::Start {
            options: opts(json!({"image": BUSYBOX})),
        },
    );
    assert_eq!(rule(r), "container.limit");
    job.cleanup();
}

#[test]
fn a_runner_sweeps_what_a_dead_predecessor_left() {
    let fx = fixture("sweep");
    let engine =
        rivet_container::Engine::connect(&host(), &format!("sweep-test-{}", std::process::id()))
            .unwrap();
    let job = engine.job(&fx.job_id, fx.workspace.clone(), policy());
    let (r, _) = call(
        &job,
        ContainerCall::Start {
            options: opts(json!({"image": BUSYBOX})),
        },
    );
    assert!(r.is_ok(), "{r:?}");
    // The process that created it "dies": the tracker is leaked, never cleaned up.
    std::mem::forget(job);
    assert_eq!(containers_of_job(&fx.job_id).len(), 1);
    assert_eq!(engine.sweep_runner().unwrap(), 1);
    assert!(containers_of_job(&fx.job_id).is_empty());
}

#[test]
fn the_engine_says_what_it_is() {
    let engine = engine();
    assert_eq!(engine.capabilities()[0], "container");
    assert_eq!(
        engine.capabilities()[1],
        "container.podman",
        "the test machine runs Podman"
    );
    assert!(!engine.version().is_empty());
    let err = rivet_container::Engine::connect("unix:///nonexistent/podman.sock", "x").unwrap_err();
    assert!(
        err.describe().contains("does not answer"),
        "{}",
        err.describe()
    );
    let err = rivet_container::Engine::connect("tcp://127.0.0.1:2375", "x").unwrap_err();
    assert!(err.to_string().contains("unix socket"), "{err}");
}

#[test]
fn the_python_image_runs_pytest() {
    let fx = fixture("python");
    std::fs::create_dir_all(fx.workspace.join("tests")).unwrap();
    std::fs::write(
        fx.workspace.join("tests/test_x.py"),
        "def test_ok():\n    assert 1 + 1 == 2\n",
    )
    .unwrap();
    let job = fx.job(policy());
    let (r, _) = run(
        &job,
        json!({"image": "python:3.11", "command": "pytest", "args": ["-q", "-p", "no:cacheprovider", "tests/"]}),
    );
    match r {
        Err(ContainerError::MissingImage { .. }) => {
            panic!("python:3.11 is missing: run `scripts/podman-setup.sh --python`")
        }
        r => {
            let (code, out) = exited(r);
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("1 passed"), "{out}");
        }
    }
}

#[test]
fn policy_knobs_read_only_root_and_bridge_network_apply() {
    let fx = fixture("knobs");
    let job = fx.job(rivet_core::policy::ContainerPolicy {
        read_only_rootfs: true,
        network: rivet_core::policy::ContainerNetwork::Bridge,
        pids_limit: 64,
        ..policy()
    });
    let script = "touch /rootfile 2>/dev/null && echo ROOT-WRITABLE; touch /tmp/t && echo TMP-OK; \
                  touch /workspace/w && echo WS-OK; ls /sys/class/net; \
                  cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max";
    let (r, _) = run(
        &job,
        json!({"image": BUSYBOX, "command": ["sh", "-c", script]}),
    );
    let (_, out) = exited(r);
    assert!(
        !out.contains("ROOT-WRITABLE"),
        "the root filesystem is read-only: {out}"
    );
    assert!(out.contains("TMP-OK") && out.contains("WS-OK"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("eth")),
        "a bridge network has an interface: {out}"
    );
    assert!(out.contains("\n64\n"), "pids limit from the policy: {out}");
}
