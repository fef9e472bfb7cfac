//! Workers forked by the zygote (`worker/zygote.rs`): what each one holds, and what happens
//! when its handle, its zygote or a sibling goes away.

use super::helpers::*;
use rivet_core::JobOutcome;
use rivet_sandbox::events::{read_frame, write_frame, Event};
use rivet_sandbox::worker::{Launched, Launcher, Spawn, EXIT_BAD_REQUEST};
use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

fn launcher() -> Launcher {
    Launcher::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into())
}

/// A worker in fresh namespaces, remapped to `job_uid` where the zygote is root.
fn namespaced(job_uid: Option<u32>) -> Spawn {
    Spawn {
        namespaces: true,
        netns: None,
        job_uid,
    }
}

/// Reads `stdout` to its end on a thread, holding `stderr` open meanwhile (a worker whose
/// stderr is closed fails its first message there): the returned channel gets a value when
/// every copy of the stdout pipe's write end is closed, that is, when the worker is gone.
fn ended(mut stdout: std::fs::File, stderr: std::fs::File) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = stdout.read_to_end(&mut Vec::new());
        drop(stderr);
        let _ = tx.send(());
    });
    rx
}

/// Starts `launched` on a job that logs `ready` and then spins, run without namespaces so
/// that the launched process itself runs it, and returns the job once `ready` arrived: past
/// that line the worker runs job code, so its descriptors are as the job sees them.
fn running_job_code(launched: &mut Launched) -> Job {
    let mut spin = spinning_job();
    spin.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Off;
    start(launched, &spin).expect("the job's first line");
    spin
}

/// A job that logs `ready` and then spins.
fn spinning_job() -> Job {
    let mut spin = job("return { name = 'spin', stages = { { name = 'spin', script = function() log.info('ready') while true do end end } } }");
    spin.request.policy.limits.instructions = u64::MAX;
    spin
}

/// Sends `job` to the launched worker and waits for its `ready` line; the events up to the
/// worker's end if it never came.
fn start(launched: &mut Launched, job: &Job) -> Result<(), Vec<Event>> {
    write_frame(&mut launched.stdin, &job.request).unwrap();
    ready(launched)
}

/// Waits (30 s at most: then the worker's group is killed) for the launched worker's `ready`
/// line; the events up to the worker's end if it never came.
fn ready(launched: &mut Launched) -> Result<(), Vec<Event>> {
    let pid = launched.worker.pid;
    let (done, waiting) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if waiting.recv_timeout(Duration::from_secs(30)).is_err() {
            // SAFETY: killing the process group of the worker this test launched.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    });
    let result = ready_unbounded(launched);
    let _ = done.send(());
    watchdog.join().unwrap();
    result
}

fn ready_unbounded(launched: &mut Launched) -> Result<(), Vec<Event>> {
    let mut seen = Vec::new();
    loop {
        match read_frame::<Event>(&mut launched.stdout) {
            Ok(Some(Event::Log { line, .. })) if line == "ready" => return Ok(()),
            Ok(Some(event)) => seen.push(event),
            _ => return Err(seen),
        }
    }
}

/// The targets of a process's descriptors.
fn descriptors(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect()
}

/// A line of a process's `/proc/PID/status` (`Uid`, `Gid`, `Groups`), its fields joined by
/// single spaces.
fn status_field(pid: i32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let prefix = format!("{name}:");
    let line = status.lines().find(|l| l.starts_with(&prefix)).unwrap();
    line[prefix.len()..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `/proc/PID/` file with its whitespace collapsed.
fn proc_file(pid: i32, file: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Under a uid remap the zygote writes the worker's maps, to the uid the launcher named, and
/// says so over a socket the worker closes before job code runs: once the job runs, the
/// worker, pid 1 of its own pid namespace and the job's one process, holds no socket and is
/// the launcher's uid on the host.
#[test]
fn a_remapped_worker_runs_as_the_launchers_uid_and_holds_no_socket() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "a remap needs root");
    let launcher = launcher();
    let mut launched = launcher.launch(namespaced(Some(65534))).unwrap();
    let mut spin = spinning_job();
    spin.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Required;
    spin.request.policy.sandbox.job_uid = Some(65534);
    std::os::unix::fs::chown(&spin.request.workspace, Some(65534), Some(65534)).unwrap();
    start(&mut launched, &spin).unwrap_or_else(|events| panic!("the job did not run: {events:?}"));
    let worker = launched.worker.pid;
    assert_eq!(
        status_field(worker, "NSpid"),
        format!("{worker} 1"),
        "the worker is its pid namespace's pid 1"
    );
    let children =
        std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children")).unwrap();
    assert_eq!(children.trim(), "", "one process per job");
    let pid = worker;
    assert_eq!(status_field(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Gid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(proc_file(pid, "uid_map"), "0 65534 1");
    assert_eq!(proc_file(pid, "gid_map"), "0 65534 1");
    assert_eq!(proc_file(pid, "setgroups"), "deny");
    let fds = descriptors(pid);
    assert!(
        !fds.iter().any(|t| t.starts_with("socket:")),
        "the worker holds a socket: {fds:?}"
    );
    launched.worker.kill_and_wait().unwrap();
}

/// Workers started at once, each remapped to another uid: each gets its own launcher's uid.
#[test]
fn remapped_workers_started_at_once_each_get_their_launchers_uid() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "a remap needs root");
    let launcher = launcher();
    let mut workers: Vec<(u32, Launched, Job)> = [65534, 65533, 65532]
        .into_iter()
        .map(|uid| {
            let mut launched = launcher.launch(namespaced(Some(uid))).unwrap();
            let mut spin = spinning_job();
            spin.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Required;
            spin.request.policy.sandbox.job_uid = Some(uid);
            std::os::unix::fs::chown(&spin.request.workspace, Some(uid), Some(uid)).unwrap();
            // Every request is sent before any worker is waited for.
            write_frame(&mut launched.stdin, &spin.request).unwrap();
            (uid, launched, spin)
        })
        .collect();
    for (uid, launched, _) in &mut workers {
        ready(launched).unwrap_or_else(|events| panic!("uid {uid}: {events:?}"));
        let pid = launched.worker.pid;
        assert_eq!(proc_file(pid, "uid_map"), format!("0 {uid} 1"));
        assert_eq!(status_field(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    }
    for (_, launched, _) in workers {
        launched.worker.kill_and_wait().unwrap();
    }
}

/// A namespaced worker (pid 1 of its own pid namespace, so its parent is outside it) dies with
/// its zygote and runs no job code after, however its request and the zygote's death cross.
#[test]
fn a_namespaced_worker_dies_with_its_zygote_and_runs_no_job_code() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "a remap needs root");
    let launcher = launcher();
    let Launched {
        mut stdin,
        stdout,
        stderr,
        worker,
    } = launcher.launch(namespaced(Some(65534))).unwrap();
    let zygote = worker.zygote.pid();
    assert_eq!(
        stat_field(worker.pid, 1),
        zygote,
        "the zygote is its parent"
    );
    // Every event the worker still writes, once its stdout closes.
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut seen = Vec::new();
        while let Ok(Some(event)) = read_frame::<Event>(&mut stdout) {
            seen.push(event);
        }
        drop(stderr);
        let _ = tx.send(seen);
    });
    // SAFETY: killing the zygote this test started.
    unsafe { libc::kill(zygote, libc::SIGKILL) };
    // The request may find the worker gone already (a closed pipe), or alive and about to go.
    let mut spin = spinning_job();
    spin.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Required;
    spin.request.policy.sandbox.job_uid = Some(65534);
    let _ = write_frame(&mut stdin, &spin.request);
    let alive = rivet_sandbox::worker::pidfd(worker.pid).unwrap();
    assert!(
        rivet_sandbox::worker::readable_within(&alive, Duration::from_secs(10)),
        "the worker ends with its zygote"
    );
    let seen = events
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker's stdout closes");
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Log { line, .. } if line == "ready")),
        "job code ran after the zygote died: {seen:?}"
    );
    drop(stdin);
}

/// A network namespace the launcher lends holds the worker, made in it by the zygote, and not
/// the zygote, which joins it only for the `clone` (a zygote left in it would make every later
/// worker there, `network = "host"` ones included).
#[test]
fn a_lent_network_namespace_holds_the_worker_not_its_zygote() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "lending a namespace needs root"
    );
    let pool = rivet_sandbox::worker::NetworkNamespaces::default();
    let lease = pool.take().expect("root can make network namespaces");
    let ns = |path: String| std::fs::read_link(path).unwrap();
    let lent = ns(format!("/proc/self/fd/{}", lease.raw_fd()));
    let ours = ns("/proc/self/ns/net".into());
    assert_ne!(lent, ours);
    let launcher = launcher();
    let mut launched = launcher
        .launch(Spawn {
            namespaces: true,
            netns: Some(lease.raw_fd()),
            job_uid: Some(65534),
        })
        .unwrap();
    let mut spin = spinning_job();
    spin.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Required;
    spin.request.policy.sandbox.job_uid = Some(65534);
    std::os::unix::fs::chown(&spin.request.workspace, Some(65534), Some(65534)).unwrap();
    start(&mut launched, &spin).unwrap_or_else(|events| panic!("the job did not run: {events:?}"));
    let zygote = launched.worker.zygote.pid();
    assert_eq!(ns(format!("/proc/{}/ns/net", launched.worker.pid)), lent);
    assert_eq!(ns(format!("/proc/{zygote}/ns/net")), ours);
    // The next worker, without a lent namespace, is not made in it either.
    let mut plain = launcher.launch(Spawn::default()).unwrap();
    running_job_code(&mut plain);
    assert_eq!(ns(format!("/proc/{}/ns/net", plain.worker.pid)), ours);
    launched.worker.kill_and_wait().unwrap();
    plain.worker.kill_and_wait().unwrap();
    drop(lease);
}

/// The zygote maps a worker only to the uid its launcher named: a worker whose request asks for
/// a remap the launcher did not ask for fails, and says why.
#[test]
fn a_worker_is_not_mapped_to_a_uid_its_launcher_did_not_name() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "a remap needs root");
    let launcher = launcher();
    let mut launched = launcher.launch(namespaced(None)).unwrap();
    let mut spin = spinning_job();
    spin.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Required;
    spin.request.policy.sandbox.job_uid = Some(65534);
    let events = start(&mut launched, &spin).expect_err("the job must not run");
    let failed = failure(&events);
    assert!(
        failed
            .as_deref()
            .is_some_and(|e| e.contains("the launcher could not write the job's uid map")),
        "{events:?}"
    );
    launched.worker.kill_and_wait().unwrap();
}

/// A worker made otherwise than its request asks (here: without the namespaces its policy
/// requires) runs nothing and says why: the launcher derives both from the same request, so
/// this is a bug, never a reason to run a job less isolated.
#[test]
fn a_worker_made_without_the_namespaces_its_request_asks_for_runs_nothing() {
    let launcher = launcher();
    let mut launched = launcher.launch(Spawn::default()).unwrap();
    let mut spin = spinning_job();
    spin.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Required;
    let events = start(&mut launched, &spin).expect_err("the job must not run");
    let failed = failure(&events);
    assert!(
        failed
            .as_deref()
            .is_some_and(|e| e.contains("setting up the job sandbox failed")
                && e.contains("which its request does not ask for")),
        "{events:?}"
    );
    launched.worker.kill_and_wait().unwrap();
}

/// A launcher that never answers (a program that is no launcher, or one that hangs) fails the
/// start once it was given the pid timeout twice (it is replaced once), with an error that
/// says so, and does not hang the job. (`sleep` outlives both timeouts: a launcher that ended
/// instead would fail differently.)
#[test]
fn a_launcher_that_never_answers_fails_the_start_with_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("silent");
    // Written by another process: a script this (multi-threaded) process had open for writing
    // could be inherited by another test's child between its fork and its exec, and then
    // refused execution (ETXTBSY).
    let written = std::process::Command::new("sh")
        .arg("-c")
        .arg("printf '#!/bin/sh\\nexec sleep 5\\n' > \"$1\" && chmod 755 \"$1\"")
        .arg("sh")
        .arg(&script)
        .status()
        .unwrap();
    assert!(written.success());
    let launcher = Launcher::new(script).with_pid_timeout(Duration::from_millis(300));
    let Err(err) = launcher.launch(Spawn::default()) else {
        panic!("a worker from a launcher that never answers");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("did not answer within"), "{err}");
}

/// The error of the failure `events` end with, if they end so.
fn failure(events: &[Event]) -> Option<String> {
    events.iter().find_map(|e| match e {
        Event::Finished {
            outcome: JobOutcome::Failed { error, .. },
        } => Some(error.clone()),
        _ => None,
    })
}

/// A worker waiting for its request: its stdin (kept open), the signal of its end, its handle.
fn waiting_worker(
    launcher: &Launcher,
) -> (
    std::fs::File,
    mpsc::Receiver<()>,
    rivet_sandbox::worker::Worker,
) {
    let Launched {
        stdin,
        stdout,
        stderr,
        worker,
    } = launcher.launch(Spawn::default()).unwrap();
    (stdin, ended(stdout, stderr), worker)
}

fn stat_field(pid: i32, index: usize) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(index)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_forked_worker_holds_only_its_own_pipes_and_leads_its_own_group() {
    let launcher = launcher();
    // Two at once: the second must not hold the first one's descriptors, nor the zygote's.
    let first = launcher.launch(Spawn::default()).unwrap();
    let second = launcher.launch(Spawn::default()).unwrap();
    let zygote = first.worker.zygote.pid();
    assert_eq!(second.worker.zygote.pid(), zygote);
    // The zygote leads a group of its own: a signal to its parent's group (a Ctrl-C) must not
    // take it, and every running worker, down.
    assert_eq!(stat_field(zygote, 2), zygote);
    let mut workers = [first, second];
    for w in &mut workers {
        let pid = w.worker.pid;
        // The group is there as soon as the pid is known.
        assert_eq!(stat_field(pid, 2), pid);
        let job = running_job_code(w);
        // Its own three pipes, and the job's workspace (held by the filesystem module): nothing
        // of the zygote's (its control socket, other workers' sockets and pipes, pidfds).
        let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let target = std::fs::read_link(e.path()).unwrap();
                let fd = e.file_name().to_str().unwrap().parse().unwrap();
                (fd, target.to_string_lossy().into_owned())
            })
            .collect();
        fds.sort();
        let workspace = job.request.workspace.to_string_lossy().into_owned();
        assert!(
            fds.iter().all(|(fd, target)| match fd {
                0..=2 => target.starts_with("pipe:"),
                _ => *target == workspace,
            }) && fds.iter().filter(|(fd, _)| *fd <= 2).count() == 3,
            "worker {pid}: {fds:?}"
        );
        // Fields after the name: 1 is the parent's pid.
        assert_eq!(stat_field(pid, 1), zygote);
    }
    // A running worker is killed.
    for Launched {
        stdout,
        stderr,
        worker,
        ..
    } in workers
    {
        let status = worker.kill_and_wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        ended(stdout, stderr)
            .recv_timeout(Duration::from_secs(10))
            .expect("the killed worker's stdout closes");
    }
    // A worker that exits by itself keeps its own status: no request, so it exits 71.
    let (stdin, gone, worker) = waiting_worker(&launcher);
    drop(stdin);
    gone.recv_timeout(Duration::from_secs(10))
        .expect("the worker exits when its stdin closes");
    let status = worker.kill_and_wait().unwrap();
    assert_eq!(status.code(), Some(EXIT_BAD_REQUEST));
}

/// The handle that reaps a worker removes the scratch directory a worker without namespaces
/// keeps on the host (`/tmp/rivet-job-<pid>`) only when its job's uid owns it: the runner,
/// maybe root, deletes nothing of another user's found at that name.
#[test]
fn reaping_a_worker_removes_only_a_scratch_directory_its_job_owns() {
    use std::os::unix::fs::MetadataExt;
    let launcher = launcher();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for (owner, removed) in [(me, true), (me.wrapping_add(4242), false)] {
        if owner != me && me != 0 {
            continue; // only root can make a directory owned by someone else
        }
        // The worker waits for a request, so it makes nothing itself.
        let (stdin, _gone, worker) = waiting_worker(&launcher);
        let dir = std::path::PathBuf::from(format!("/tmp/rivet-job-{}", worker.pid));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("file"), "x").unwrap();
        std::os::unix::fs::chown(&dir, Some(owner), None).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), owner);
        worker.kill_and_wait().unwrap();
        drop(stdin);
        assert_eq!(!dir.exists(), removed, "owner {owner}, runner {me}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_dropped_handle_kills_its_worker() {
    let launcher = launcher();
    let (stdin, gone, worker) = waiting_worker(&launcher);
    drop(worker);
    gone.recv_timeout(Duration::from_secs(10))
        .expect("the worker is killed when its handle is dropped");
    drop(stdin);
}

#[test]
fn workers_die_with_their_zygote_and_the_next_worker_gets_a_new_one() {
    let launcher = launcher();
    let (stdin, gone, worker) = waiting_worker(&launcher);
    let old = worker.zygote.pid();
    // SAFETY: killing the zygote this test started.
    unsafe { libc::kill(old, libc::SIGKILL) };
    gone.recv_timeout(Duration::from_secs(10))
        .expect("the worker dies with its zygote");
    assert!(worker.kill_and_wait().is_err(), "nobody is left to reap it");
    drop(stdin);
    let next = launcher.launch(Spawn::default()).unwrap();
    assert_ne!(next.worker.zygote.pid(), old);
    assert!(next.worker.pid > 0);
}

#[test]
fn a_crashed_worker_retires_its_zygote() {
    let options = options();
    let ok = job("return { name = 'ok', stages = { { name = 'one', script = function() end } } }");
    let before = options.launcher.zygote().unwrap().pid();
    let run = ok.run_with(&options);
    assert!(
        matches!(run.outcome(), JobOutcome::Succeeded),
        "{:?}",
        run.outcome()
    );
    assert_eq!(options.launcher.zygote().unwrap().pid(), before);
    // The worker is killed by its own CPU limit: a crash, so its siblings' layout is retired.
    let mut crash = job("return { name = 'c', stages = { { name = 'spin', script = function() while true do end end } } }");
    crash.request.policy.process.max_cpu_seconds = 1;
    crash.request.policy.limits.instructions = u64::MAX;
    // The CPU limit, not the stage's deadline, ends it, however little CPU a loaded
    // machine leaves the worker.
    crash.request.policy.limits.stage_timeout = Duration::from_secs(120);
    let run = crash.run_with(&options);
    assert!(
        matches!(run.outcome(), JobOutcome::Crashed { .. }),
        "{:?}",
        run.outcome()
    );
    assert_ne!(options.launcher.zygote().unwrap().pid(), before);
}
