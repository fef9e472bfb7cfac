//! Workers forked by the zygote (`worker/zygote.rs`): what each one holds, and what happens
//! when its handle, its zygote or a sibling goes away.

use super::helpers::*;
use rivet_core::JobOutcome;
use rivet_sandbox::worker::{Launched, Launcher, EXIT_BAD_REQUEST};
use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

fn launcher() -> Launcher {
    Launcher::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into())
}

/// Reads `stdout` to its end on a thread: the returned channel gets a value when every copy
/// of the pipe's write end is closed, that is, when the worker is gone.
fn ended(mut stdout: std::fs::File) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = stdout.read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    rx
}

/// Waits until worker `pid` is blocked reading its stdin (its request), which it does only
/// once its descriptors are arranged. Nothing signals that; `/proc/PID/syscall` shows it.
fn wait_reading_stdin(pid: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        // `read` is syscall 0 on x86_64 and its first argument the descriptor.
        if now.starts_with("0 0x0 ") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker {pid} never waited for its request: {now}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
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
        worker,
        ..
    } = launcher.launch(None).unwrap();
    (stdin, ended(stdout), worker)
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
    let first = launcher.launch(None).unwrap();
    let second = launcher.launch(None).unwrap();
    let zygote = first.worker.zygote.pid();
    assert_eq!(second.worker.zygote.pid(), zygote);
    // The zygote leads a group of its own: a signal to its parent's group (a Ctrl-C) must not
    // take it, and every running worker, down.
    assert_eq!(stat_field(zygote, 2), zygote);
    for w in [&first, &second] {
        let pid = w.worker.pid;
        // The group is there as soon as the pid is known.
        assert_eq!(stat_field(pid, 2), pid);
        wait_reading_stdin(pid);
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        assert_eq!(fds, ["0", "1", "2"], "worker {pid}");
        // Fields after the name: 1 is the parent's pid.
        assert_eq!(stat_field(pid, 1), zygote);
    }
    // A worker that exits by itself keeps its own status: no request, so it exits 71.
    let Launched {
        stdin,
        stdout,
        worker,
        ..
    } = first;
    drop(stdin);
    ended(stdout)
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker exits when its stdin closes");
    let status = worker.kill_and_wait().unwrap();
    assert_eq!(status.code(), Some(EXIT_BAD_REQUEST));
    // One still waiting is killed.
    let Launched { stdout, worker, .. } = second;
    let status = worker.kill_and_wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    ended(stdout)
        .recv_timeout(Duration::from_secs(10))
        .expect("the killed worker's stdout closes");
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
    let next = launcher.launch(None).unwrap();
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
    let run = crash.run_with(&options);
    assert!(
        matches!(run.outcome(), JobOutcome::Crashed { .. }),
        "{:?}",
        run.outcome()
    );
    assert_ne!(options.launcher.zygote().unwrap().pid(), before);
}
