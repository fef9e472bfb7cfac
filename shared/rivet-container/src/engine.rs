//! The bollard side: one [`Engine`] per process (a connection and a small runtime), one
//! [`JobContainers`] per worker, which owns what that worker created.
//!
//! Calls are synchronous for the caller (the parent of a worker is plain threads): each runs as
//! a task on the engine's runtime and reports output lines and its result over a channel.

use crate::spec::{self, Command, RunSpec, LABEL_JOB, LABEL_RUNNER};
use crate::{ContainerCall, ContainerError, ContainerReply};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptions,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures_util::{Stream, StreamExt};
use rivet_core::policy::{ContainerNetwork, ContainerPolicy};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

/// Label naming the [`JobContainers`] that created a container (one per worker).
pub const LABEL_OWNER: &str = "io.rivet.owner";
/// Docker API version spoken: Podman 4 answers up to 1.41, and Docker still accepts it.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Limit on one non-streaming API request.
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit on pulling an image, when the policy allows pulls at all.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest output line passed on; the rest of the line is dropped (the capture keeps it).
const MAX_LINE: usize = 64 << 10;
/// The long-lived command of a `container.with` container: sleep for 68 years. Both GNU and
/// busybox `sleep` accept it.
const KEEP_ALIVE: [&str; 2] = ["sleep", "2147483647"];

/// Which engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Podman's Docker-compatible API.
    Podman,
    /// Docker Engine.
    Docker,
}

/// Which stream an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A connection to a container engine.
#[derive(Debug)]
pub struct Engine {
    docker: Docker,
    /// Always `Some` until drop, which shuts it down without blocking (an engine may be dropped
    /// on an async thread, where a blocking runtime shutdown panics).
    rt_slot: Option<tokio::runtime::Runtime>,
    host: String,
    runner_id: String,
    kind: EngineKind,
    version: String,
}

fn engine_err(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> ContainerError {
    let action = action.into();
    move |err| ContainerError::Engine { action, err }
}

async fn api<T>(
    action: &str,
    fut: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, ContainerError> {
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Ok(r) => r.map_err(engine_err(action)),
        Err(_) => Err(ContainerError::Invalid(format!(
            "{action}: the container engine did not answer within {}s",
            API_TIMEOUT.as_secs()
        ))),
    }
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Engine {
    /// Connects to `host` (`unix:///run/rivet-podman/podman.sock`), checks that it answers and
    /// asks which engine it is. `runner_id` labels every container started through it.
    pub fn connect(host: &str, runner_id: &str) -> Result<Arc<Self>, ContainerError> {
        let Some(path) = host.strip_prefix("unix://") else {
            return Err(ContainerError::Invalid(format!(
                "container host `{host}` must be a unix socket, written unix:///path"
            )));
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rivet-container")
            .enable_all()
            .build()
            .map_err(|e| ContainerError::Invalid(format!("starting the container runtime: {e}")))?;
        match Self::probe(&rt, host, path) {
            Ok((docker, version)) => {
                let podman = version
                    .components
                    .iter()
                    .flatten()
                    .any(|c| c.name.to_ascii_lowercase().contains("podman"));
                Ok(Arc::new(Self {
                    docker,
                    rt_slot: Some(rt),
                    host: host.to_owned(),
                    runner_id: runner_id.to_owned(),
                    kind: if podman {
                        EngineKind::Podman
                    } else {
                        EngineKind::Docker
                    },
                    version: version.version.unwrap_or_default(),
                }))
            }
            Err(e) => {
                // Dropping a runtime blocks, which panics when `connect` was called from async
                // code (the runner's start-up probe, a test).
                rt.shutdown_background();
                Err(e)
            }
        }
    }

    /// Opens the client on `rt` and asks the engine for its version (5 s at most).
    fn probe(
        rt: &tokio::runtime::Runtime,
        host: &str,
        path: &str,
    ) -> Result<(Docker, bollard::models::SystemVersion), ContainerError> {
        // The client's own timeout would cut long waits and log streams; every call sets its own.
        let docker = Docker::connect_with_unix(path, 7 * 86_400, &API_VERSION).map_err(|err| {
            ContainerError::Unreachable {
                host: host.to_owned(),
                err,
            }
        })?;
        let unreachable = |err| ContainerError::Unreachable {
            host: host.to_owned(),
            err,
        };
        let probe = docker.clone();
        // Spawned and waited for over a channel rather than `block_on`, so connecting works
        // from any thread, an async one included.
        let (tx, rx) = mpsc::channel();
        rt.spawn(async move {
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                probe.ping().await?;
                probe.version().await
            })
            .await;
            let _ = tx.send(answer);
        });
        let version = rx
            .recv()
            .map_err(|_| ContainerError::Closed)?
            .map_err(|_| {
                ContainerError::Invalid(format!(
                    "the container engine at `{host}` did not answer within 5s"
                ))
            })?
            .map_err(unreachable)?;
        Ok((docker, version))
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt_slot
            .as_ref()
            .expect("the runtime is only taken when the engine is dropped")
    }

    /// Podman or Docker.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The engine's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The address connected to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The capabilities a runner advertises for this engine.
    pub fn capabilities(&self) -> [&'static str; 2] {
        match self.kind {
            EngineKind::Podman => ["container", "container.podman"],
            EngineKind::Docker => ["container", "container.docker"],
        }
    }

    /// Runs `fut` on the engine's runtime and waits for it from this (non-async) thread.
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        self.rt().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }

    /// Force-removes every container carrying `label=value`; returns how many.
    fn remove_labelled(&self, label: &str, value: &str) -> Result<usize, ContainerError> {
        let docker = self.docker.clone();
        let filter = format!("{label}={value}");
        self.block(async move {
            let options = ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("label".to_owned(), vec![filter])])),
                ..Default::default()
            };
            let list = api("listing containers", docker.list_containers(Some(options))).await?;
            let mut removed = 0;
            for c in list {
                if let Some(id) = c.id {
                    if force_remove(&docker, &id).await.is_ok() {
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .unwrap_or(Err(ContainerError::Closed))
    }

    /// Ids of the containers (running or not) labelled with `job_id`, on this engine.
    pub fn job_containers(&self, job_id: &str) -> Result<Vec<String>, ContainerError> {
        let docker = self.docker.clone();
        let filter = format!("{LABEL_JOB}={job_id}");
        self.block(async move {
            let options = ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("label".to_owned(), vec![filter])])),
                ..Default::default()
            };
            let list = api("listing containers", docker.list_containers(Some(options))).await?;
            Ok(list.into_iter().filter_map(|c| c.id).collect())
        })
        .unwrap_or(Err(ContainerError::Closed))
    }

    /// Removes every container of this runner: what a previous run left behind when it died.
    pub fn sweep_runner(&self) -> Result<usize, ContainerError> {
        self.remove_labelled(LABEL_RUNNER, &self.runner_id)
    }

    /// The containers of one worker: created on demand, removed by [`JobContainers::cleanup`].
    pub fn job(
        self: &Arc<Self>,
        job_id: &str,
        workspace: PathBuf,
        policy: ContainerPolicy,
    ) -> JobContainers {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let owner = format!(
            "{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        JobContainers {
            inner: Arc::new(Inner {
                engine: self.clone(),
                job_id: job_id.to_owned(),
                owner,
                workspace,
                policy,
                state: Mutex::new(State::default()),
            }),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(rt) = self.rt_slot.take() {
            rt.shutdown_background();
        }
    }
}

async fn force_remove(docker: &Docker, id: &str) -> Result<(), ContainerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match api(
        "removing a container",
        docker.remove_container(id, Some(options)),
    )
    .await
    {
        Err(ContainerError::Engine { err, .. }) if is_not_found(&err) => Ok(()),
        other => other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Created by `container.run`; removed when the call ends.
    Run,
    /// Started for `container.with`; `exec` and `remove` may name it.
    Started,
}

#[derive(Debug, Default)]
struct State {
    live: BTreeMap<String, Kind>,
    closed: bool,
    seq: u64,
}

#[derive(Debug)]
struct Inner {
    engine: Arc<Engine>,
    job_id: String,
    owner: String,
    workspace: PathBuf,
    policy: ContainerPolicy,
    state: Mutex<State>,
}

/// The containers of one worker. Every call is checked against the job's policy; everything
/// created is removed by [`cleanup`](Self::cleanup), which runs on drop too.
#[derive(Debug)]
pub struct JobContainers {
    inner: Arc<Inner>,
}

enum Progress {
    Line(OutputStream, String),
    Done(Result<ContainerReply, ContainerError>),
}

impl JobContainers {
    /// Performs `call`, passing each output line to `on_output` as it arrives.
    pub fn call(
        &self,
        call: ContainerCall,
        on_output: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<ContainerReply, ContainerError> {
        self.call_until(call, None, on_output)
    }

    /// Like [`call`](Self::call), but a command's time limit is cut to end by `deadline` (the
    /// stage's) when that comes first.
    pub fn call_until(
        &self,
        call: ContainerCall,
        deadline: Option<Instant>,
        on_output: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<ContainerReply, ContainerError> {
        let (tx, rx) = mpsc::channel::<Progress>();
        let inner = self.inner.clone();
        let done = tx.clone();
        self.inner.engine.rt().spawn(async move {
            let result = inner.call(call, deadline, &tx).await;
            let _ = done.send(Progress::Done(result));
        });
        loop {
            match rx.recv() {
                Ok(Progress::Line(stream, line)) => on_output(stream, &line),
                Ok(Progress::Done(result)) => return result,
                Err(_) => return Err(ContainerError::Closed),
            }
        }
    }

    /// How many containers of this job exist right now.
    pub fn live(&self) -> usize {
        self.inner.state.lock().map(|s| s.live.len()).unwrap_or(0)
    }

    /// Refuses further calls and force-removes every container this worker created (tracked,
    /// and by label, for one whose creation was still in flight). Returns how many were removed.
    pub fn cleanup(&self) -> usize {
        let ids: Vec<String> = match self.inner.state.lock() {
            Ok(mut s) => {
                s.closed = true;
                std::mem::take(&mut s.live).into_keys().collect()
            }
            Err(_) => Vec::new(),
        };
        let engine = &self.inner.engine;
        let docker = engine.docker.clone();
        let tracked = engine
            .block(async move {
                let mut n = 0;
                for id in ids {
                    if force_remove(&docker, &id).await.is_ok() {
                        n += 1;
                    }
                }
                n
            })
            .unwrap_or(0);
        let labelled = engine
            .remove_labelled(LABEL_OWNER, &self.inner.owner)
            .unwrap_or(0);
        tracked + labelled
    }
}

impl Drop for JobContainers {
    fn drop(&mut self) {
        let already = self.inner.state.lock().map(|s| s.closed).unwrap_or(true);
        if !already {
            self.cleanup();
        }
    }
}

/// Collects output: whole lines go to the caller, the capture is capped.
struct Capture<'a> {
    tx: &'a mpsc::Sender<Progress>,
    out: Vec<u8>,
    err: Vec<u8>,
    partial: [Vec<u8>; 2],
    max: usize,
    /// Bytes of stdout and stderr already captured, to pass over when the output is read again
    /// from its start (see [`Capture::read_again`]).
    skip: [usize; 2],
}

impl Capture<'_> {
    /// Feeds a chunk; `false` once the cap is passed.
    fn feed(&mut self, chunk: LogOutput) -> bool {
        let (stream, bytes) = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (OutputStream::Stdout, message)
            }
            LogOutput::StdErr { message } => (OutputStream::Stderr, message),
            LogOutput::StdIn { .. } => return true,
        };
        let idx = usize::from(stream == OutputStream::Stderr);
        let passed = self.skip[idx].min(bytes.len());
        self.skip[idx] -= passed;
        let bytes = bytes.slice(passed..);
        if self.out.len() + self.err.len() + bytes.len() > self.max {
            return false;
        }
        if idx == 0 {
            self.out.extend_from_slice(&bytes);
        } else {
            self.err.extend_from_slice(&bytes);
        }
        for &b in bytes.iter() {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial[idx]);
                self.emit(stream, &line);
            } else if self.partial[idx].len() < MAX_LINE {
                self.partial[idx].push(b);
            }
        }
        true
    }

    fn emit(&self, stream: OutputStream, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let _ = self.tx.send(Progress::Line(
            stream,
            String::from_utf8_lossy(line).into_owned(),
        ));
    }

    /// Prepares to read the output again from its start: what was captured so far is passed
    /// over, so no line reaches the caller twice.
    fn read_again(&mut self) {
        self.skip = [self.out.len(), self.err.len()];
    }

    fn finish(&mut self) {
        for (idx, stream) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
            let line = std::mem::take(&mut self.partial[idx]);
            if !line.is_empty() {
                self.emit(stream, &line);
            }
        }
    }
}

/// How streaming a command's output ended.
#[derive(Debug, PartialEq, Eq)]
enum Streamed {
    Ended,
    Overflow,
    TimedOut,
    /// A container's log stream failed: an error item, or text outside the stdout/stderr
    /// framing of a container without a terminal, which is the engine's own words (Podman
    /// writes an error into a log stream it has begun when the container's process is already
    /// gone). What came before it is kept; the output can be read again once the container
    /// has exited.
    Broken(String),
}

/// What a stream of output is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A container's logs: stored by the engine, so they can be read again.
    Logs,
    /// An exec's attached output: read once, as it comes.
    Exec,
}

/// How long a finished container's followed output may take to drain.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

async fn stream_output<S>(
    stream: S,
    capture: &mut Capture<'_>,
    deadline: Instant,
    source: Source,
) -> Streamed
where
    S: Stream<Item = Result<LogOutput, bollard::errors::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let read = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(LogOutput::Console { message }) if source == Source::Logs => {
                    return Streamed::Broken(String::from_utf8_lossy(&message).trim().to_owned());
                }
                Ok(chunk) => {
                    if !capture.feed(chunk) {
                        return Streamed::Overflow;
                    }
                }
                Err(e) if source == Source::Logs => return Streamed::Broken(e.to_string()),
                Err(_) => break,
            }
        }
        Streamed::Ended
    };
    match timeout_at(deadline.into(), read).await {
        Ok(s) => s,
        Err(_) => Streamed::TimedOut,
    }
}

impl Inner {
    async fn call(
        &self,
        call: ContainerCall,
        deadline: Option<Instant>,
        tx: &mpsc::Sender<Progress>,
    ) -> Result<ContainerReply, ContainerError> {
        let cap = |command: &mut Command| {
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                command.timeout = command.timeout.min(left.max(Duration::from_millis(1)));
            }
        };
        if self.state.lock().map(|s| s.closed).unwrap_or(true) {
            return Err(ContainerError::Closed);
        }
        match call {
            ContainerCall::Run { options } => {
                let mut spec = spec::parse_run(&options, &self.policy)?;
                cap(&mut spec.command);
                self.run(spec, tx).await
            }
            ContainerCall::Start { options } => {
                let spec = spec::parse_start(&options, &self.policy)?;
                self.ensure_image(&spec).await?;
                let id = self.create(&spec, true).await?;
                let docker = &self.engine.docker;
                if let Err(e) = api("starting a container", docker.start_container(&id, None)).await
                {
                    self.remove(&id).await;
                    return Err(e);
                }
                Ok(ContainerReply::Started { handle: id })
            }
            ContainerCall::Exec { handle, options } => {
                let mut command = spec::parse_exec(&options, &self.policy)?;
                cap(&mut command);
                self.check_handle(&handle)?;
                self.exec(&handle, command, tx).await
            }
            ContainerCall::Remove { handle } => {
                self.check_handle(&handle)?;
                self.remove(&handle).await;
                Ok(ContainerReply::Removed)
            }
        }
    }

    fn check_handle(&self, handle: &str) -> Result<(), ContainerError> {
        let ok = self
            .state
            .lock()
            .map(|s| s.live.get(handle) == Some(&Kind::Started))
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(ContainerError::policy(
                "container.handle",
                "this container was not started by this job, or it is gone",
            ))
        }
    }

    async fn ensure_image(&self, spec: &RunSpec) -> Result<(), ContainerError> {
        let docker = &self.engine.docker;
        let image = spec.image.as_str();
        match tokio::time::timeout(API_TIMEOUT, docker.inspect_image(image)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) if is_not_found(&err) => {}
            Ok(Err(err)) => return Err(engine_err(format!("inspecting image `{image}`"))(err)),
            Err(_) => {
                return Err(ContainerError::Invalid(format!(
                    "inspecting image `{image}`: the container engine did not answer"
                )))
            }
        }
        if !self.policy.pull {
            return Err(ContainerError::MissingImage {
                image: image.to_owned(),
            });
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = async {
            let mut progress = std::pin::pin!(docker.create_image(Some(options), None, None));
            while let Some(item) = progress.next().await {
                item.map_err(engine_err(format!("pulling image `{image}`")))?;
            }
            Ok(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(r) => r,
            Err(_) => Err(ContainerError::TimedOut {
                what: format!("pulling image `{image}`"),
                secs: PULL_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Creates a container and records it before anything can fail after it.
    async fn create(&self, spec: &RunSpec, keep_alive: bool) -> Result<String, ContainerError> {
        let name = {
            let mut s = self.state.lock().map_err(|_| ContainerError::Closed)?;
            if s.closed {
                return Err(ContainerError::Closed);
            }
            if s.live.len() >= self.policy.max_containers as usize {
                return Err(ContainerError::policy(
                    "container.limit",
                    format!(
                        "a job may have at most {} containers at once (container.max_containers)",
                        self.policy.max_containers
                    ),
                ));
            }
            s.seq += 1;
            format!("rivet-{}-{}", self.owner, s.seq)
        };
        let labels = HashMap::from([
            (LABEL_JOB.to_owned(), self.job_id.clone()),
            (LABEL_RUNNER.to_owned(), self.engine.runner_id.clone()),
            (LABEL_OWNER.to_owned(), self.owner.clone()),
        ]);
        let (entrypoint, cmd) = if keep_alive {
            (
                Some(vec![KEEP_ALIVE[0].to_owned()]),
                Some(vec![KEEP_ALIVE[1].to_owned()]),
            )
        } else {
            (None, spec.command.argv.clone())
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.to_string()),
            entrypoint,
            cmd,
            env: Some(spec.command.env.clone()),
            working_dir: Some(spec.command.workdir.clone()),
            labels: Some(labels),
            host_config: Some(spec::host_config(&self.policy, &self.workspace)),
            network_disabled: Some(self.policy.network == ContainerNetwork::None),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = api(
            &format!("creating a container from `{}`", spec.image),
            self.engine.docker.create_container(Some(options), body),
        )
        .await?;
        let id = created.id;
        let closed = {
            let mut s = self.state.lock().map_err(|_| ContainerError::Closed)?;
            if !s.closed {
                s.live.insert(
                    id.clone(),
                    if keep_alive { Kind::Started } else { Kind::Run },
                );
            }
            s.closed
        };
        if closed {
            // The job ended while the container was being created.
            let _ = force_remove(&self.engine.docker, &id).await;
            return Err(ContainerError::Closed);
        }
        Ok(id)
    }

    async fn remove(&self, id: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.live.remove(id);
        }
        if let Err(e) = force_remove(&self.engine.docker, id).await {
            tracing::warn!(container = %id, error = %e.describe(), "Removing a container failed.");
        }
    }

    async fn run(
        &self,
        spec: RunSpec,
        tx: &mpsc::Sender<Progress>,
    ) -> Result<ContainerReply, ContainerError> {
        self.ensure_image(&spec).await?;
        let id = self.create(&spec, false).await?;
        let result = self.run_created(&id, &spec, tx).await;
        self.remove(&id).await;
        result
    }

    async fn run_created(
        &self,
        id: &str,
        spec: &RunSpec,
        tx: &mpsc::Sender<Progress>,
    ) -> Result<ContainerReply, ContainerError> {
        let docker = &self.engine.docker;
        let started = Instant::now();
        let deadline = started + spec.command.timeout;
        api(
            &format!("starting a container from `{}`", spec.image),
            docker.start_container(id, None),
        )
        .await?;
        let logs = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut capture = self.capture(tx);
        let what = format!("container.run of `{}`", spec.image);
        // Follow the output and wait for the exit at once: Podman's followed log stream does not
        // always end when a short-lived container exits, so once the exit is known the output
        // gets a moment to drain and no more.
        let (streamed, code) = {
            let mut streaming = std::pin::pin!(stream_output(
                docker.logs(id, Some(logs)),
                &mut capture,
                deadline,
                Source::Logs
            ));
            let mut waiting = std::pin::pin!(self.wait(id, deadline, &what, spec.command.timeout));
            tokio::select! {
                // Overflow or timeout: the container is removed at once, not waited for.
                streamed = &mut streaming => match streamed {
                    // A broken stream is read again once the container has exited (below).
                    Streamed::Ended | Streamed::Broken(_) => (streamed, waiting.await),
                    other => (other, Ok(-1)),
                },
                code = &mut waiting => {
                    // A followed stream still open after the drain is not the end of the output:
                    // under load it can lag behind the exit, and what it had not delivered yet
                    // would be lost. The stored logs are read again below, past what it gave.
                    let streamed = match tokio::time::timeout(OUTPUT_DRAIN, &mut streaming).await {
                        Ok(streamed) => streamed,
                        Err(_) => Streamed::Broken(format!(
                            "the followed output was still open {OUTPUT_DRAIN:?} after the exit"
                        )),
                    };
                    (streamed, code)
                }
            }
        };
        // The followed stream failed (Podman, when a short-lived container exits before its
        // log stream reads it) or did not end after the exit: the container has exited now, so
        // its stored logs are read again, past what was already captured. (When waiting for the exit failed, that error
        // is the answer, as it was before.)
        let streamed = match (streamed, &code) {
            (Streamed::Broken(_), Err(_)) => Streamed::Ended,
            (Streamed::Broken(words), Ok(_)) => {
                tracing::debug!(container = %id, engine = %words, "The followed output failed; reading it again.");
                capture.read_again();
                let stored = LogsOptionsBuilder::default()
                    .follow(false)
                    .stdout(true)
                    .stderr(true)
                    .build();
                stream_output(
                    docker.logs(id, Some(stored)),
                    &mut capture,
                    deadline,
                    Source::Logs,
                )
                .await
            }
            (other, _) => other,
        };
        capture.finish();
        self.check_streamed(streamed, &what, spec.command.timeout)?;
        let code = code?;
        Ok(ContainerReply::Exited {
            code,
            stdout: String::from_utf8_lossy(&capture.out).into_owned(),
            stderr: String::from_utf8_lossy(&capture.err).into_owned(),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    fn capture<'a>(&self, tx: &'a mpsc::Sender<Progress>) -> Capture<'a> {
        Capture {
            tx,
            out: Vec::new(),
            err: Vec::new(),
            partial: [Vec::new(), Vec::new()],
            max: usize::try_from(self.policy.max_output).unwrap_or(usize::MAX),
            skip: [0, 0],
        }
    }

    fn check_streamed(
        &self,
        streamed: Streamed,
        what: &str,
        limit: Duration,
    ) -> Result<(), ContainerError> {
        match streamed {
            Streamed::Ended => Ok(()),
            Streamed::Overflow => Err(ContainerError::policy(
                "container.output",
                format!(
                    "{what} wrote more than {} bytes of output (container.max_output); its container was removed",
                    self.policy.max_output
                ),
            )),
            Streamed::TimedOut => Err(ContainerError::TimedOut {
                what: what.to_owned(),
                secs: limit.as_secs().max(1),
            }),
            Streamed::Broken(words) => Err(ContainerError::Output(format!(
                "the container engine did not return the output of {what}: {words}"
            ))),
        }
    }

    async fn wait(
        &self,
        id: &str,
        deadline: Instant,
        what: &str,
        limit: Duration,
    ) -> Result<i64, ContainerError> {
        let docker = &self.engine.docker;
        let mut waiting = std::pin::pin!(docker.wait_container(id, None));
        match timeout_at(deadline.into(), waiting.next()).await {
            Err(_) => Err(ContainerError::TimedOut {
                what: what.to_owned(),
                secs: limit.as_secs().max(1),
            }),
            Ok(Some(Ok(r))) => Ok(r.status_code),
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => {
                Ok(code)
            }
            Ok(Some(Err(err))) => Err(engine_err(format!("waiting for {what}"))(err)),
            Ok(None) => {
                let info =
                    api("inspecting a container", docker.inspect_container(id, None)).await?;
                Ok(info.state.and_then(|s| s.exit_code).unwrap_or(-1))
            }
        }
    }

    async fn exec(
        &self,
        handle: &str,
        command: Command,
        tx: &mpsc::Sender<Progress>,
    ) -> Result<ContainerReply, ContainerError> {
        let docker = &self.engine.docker;
        let started = Instant::now();
        let deadline = started + command.timeout;
        let argv = command.argv.clone().unwrap_or_default();
        let what = format!(
            "`{}` in a container",
            argv.first().map_or("", String::as_str)
        );
        let exec = api(
            "creating an exec",
            docker.create_exec(
                handle,
                CreateExecOptions {
                    attach_stdin: Some(false),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    env: Some(command.env.clone()),
                    cmd: Some(argv.clone()),
                    working_dir: Some(command.workdir.clone()),
                    privileged: Some(false),
                    ..Default::default()
                },
            ),
        )
        .await?;
        let output = match api("starting an exec", docker.start_exec(&exec.id, None)).await? {
            StartExecResults::Attached { output, .. } => output,
            StartExecResults::Detached => {
                return Err(ContainerError::Invalid(
                    "the engine detached an exec that was meant to be attached".into(),
                ))
            }
        };
        let mut capture = self.capture(tx);
        let streamed = stream_output(output, &mut capture, deadline, Source::Exec).await;
        capture.finish();
        if let Err(e) = self.check_streamed(streamed, &what, command.timeout) {
            // An exec cannot be killed on its own through the API: the container goes.
            self.remove(handle).await;
            return Err(e);
        }
        // The exit code can lag the end of the output a little.
        let code = loop {
            let info = api("inspecting an exec", docker.inspect_exec(&exec.id)).await?;
            if info.running != Some(true) {
                break info.exit_code.unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                self.remove(handle).await;
                return Err(ContainerError::TimedOut {
                    what,
                    secs: command.timeout.as_secs().max(1),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok(ContainerReply::Exited {
            code,
            stdout: String::from_utf8_lossy(&capture.out).into_owned(),
            stderr: String::from_utf8_lossy(&capture.err).into_owned(),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> Result<LogOutput, bollard::errors::Error> {
        Ok(LogOutput::StdOut {
            message: s.as_bytes().to_vec().into(),
        })
    }

    fn err(s: &str) -> Result<LogOutput, bollard::errors::Error> {
        Ok(LogOutput::StdErr {
            message: s.as_bytes().to_vec().into(),
        })
    }

    fn console(s: &str) -> Result<LogOutput, bollard::errors::Error> {
        Ok(LogOutput::Console {
            message: s.as_bytes().to_vec().into(),
        })
    }

    fn capture(tx: &mpsc::Sender<Progress>) -> Capture<'_> {
        Capture {
            tx,
            out: Vec::new(),
            err: Vec::new(),
            partial: [Vec::new(), Vec::new()],
            max: 1 << 20,
            skip: [0, 0],
        }
    }

    fn lines(rx: &mpsc::Receiver<Progress>) -> Vec<String> {
        rx.try_iter()
            .filter_map(|p| match p {
                Progress::Line(_, l) => Some(l),
                Progress::Done(_) => None,
            })
            .collect()
    }

    /// Podman writes an error into a container's log stream when the container is gone before
    /// the stream reads it: that text is not the container's output. Read again from the start,
    /// the stored output is captured once, every line passed on once.
    #[tokio::test]
    async fn a_broken_log_stream_is_read_again_without_repeating_a_line() {
        let (tx, rx) = mpsc::channel();
        let mut capture = capture(&tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        let engine_words = r#"{"cause":"no such process","response":500}"#;
        let followed = futures_util::stream::iter(vec![out("one\ntw"), console(engine_words)]);
        let streamed = stream_output(followed, &mut capture, deadline, Source::Logs).await;
        assert_eq!(streamed, Streamed::Broken(engine_words.into()));
        assert_eq!(lines(&rx), ["one"]);

        capture.read_again();
        let stored = futures_util::stream::iter(vec![out("one\n"), err("oops\n"), out("two\n")]);
        let streamed = stream_output(stored, &mut capture, deadline, Source::Logs).await;
        capture.finish();
        assert_eq!(streamed, Streamed::Ended);
        assert_eq!(capture.out, b"one\ntwo\n");
        assert_eq!(capture.err, b"oops\n");
        assert_eq!(lines(&rx), ["oops", "two"]);
    }

    /// An exec's attached output cannot be read again: there, text outside the framing is kept
    /// as stdout, as before.
    #[tokio::test]
    async fn an_exec_keeps_unframed_text_as_stdout() {
        let (tx, rx) = mpsc::channel();
        let mut capture = capture(&tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        let attached = futures_util::stream::iter(vec![console("raw\n")]);
        let streamed = stream_output(attached, &mut capture, deadline, Source::Exec).await;
        assert_eq!(streamed, Streamed::Ended);
        assert_eq!(lines(&rx), ["raw"]);
    }
}
