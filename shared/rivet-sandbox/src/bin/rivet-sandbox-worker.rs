//! A bare sandbox worker executable, for hosts that do not re-execute themselves (and for this
//! crate's own tests). It only ever runs as a worker.

fn main() {
    rivet_sandbox::worker::maybe_run_worker();
    eprintln!("rivet-sandbox-worker: start me through rivet_sandbox::run_worker, not by hand");
    std::process::exit(2);
}
