//! The sandbox policy: what a job may run, touch and spend. Read from TOML; every field has a
//! safe default, and unknown keys are refused so a typo never silently weakens a rule.

use crate::duration::serde_human;
use serde::{de, Deserialize, Deserializer, Serialize};
use std::time::Duration;

/// Environment variable names that no policy can allow for child processes: each one changes
/// which code a program loads or runs, or where its configuration comes from (PROC-04).
pub const ENV_DENY: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "SHELL",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "LD_*",
    "DYLD_*",
    "GCONV_PATH",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "MALLOC_*",
    "GLIBC_TUNABLES",
    "GIT_*",
    "SSH_*",
    "NODE_OPTIONS",
    "NODE_PATH",
    "NPM_CONFIG_*",
    "PYTHON*",
    "PERL5*",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "RUSTC_WRAPPER",
    "RUSTC",
    "CARGO_HOME",
    "CARGO_BUILD_RUSTC*",
    "CARGO_TARGET_*_RUNNER",
    "*_PROXY",
    "*_proxy",
    "CURL_HOME",
    "WGETRC",
    "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "GPG_*",
    "GNUPGHOME",
];

/// The whole policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// VM and job limits.
    pub limits: Limits,
    /// The `process` module.
    pub process: ProcessPolicy,
    /// The `filesystem` module.
    pub filesystem: FilesystemPolicy,
    /// The `http` module (enforced by the parent process, never by the worker).
    pub http: HttpPolicy,
    /// Job log caps.
    pub log: LogPolicy,
    /// The worker process's OS-level isolation.
    pub sandbox: SandboxPolicy,
    /// The `container` module.
    pub container: ContainerPolicy,
}

/// Limits on the Lua VM and on the job as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Lua heap limit for a job's VM.
    #[serde(with = "bytes")]
    pub memory: u64,
    /// Lua instructions a single stage may execute.
    pub instructions: u64,
    /// Wall-clock limit for the whole job.
    #[serde(with = "serde_human")]
    pub job_timeout: Duration,
    /// Wall-clock limit for a stage that sets no `timeout`.
    #[serde(with = "serde_human")]
    pub stage_timeout: Duration,
    /// How long past a soft deadline the worker process gets before it is SIGKILLed.
    #[serde(with = "serde_human")]
    pub kill_grace: Duration,
    /// Lua heap limit while evaluating a definition (lint, and the top level of a job).
    #[serde(with = "bytes")]
    pub definition_memory: u64,
    /// Instructions the top level of a definition may execute.
    pub definition_instructions: u64,
    /// Wall-clock limit for evaluating a definition.
    #[serde(with = "serde_human")]
    pub definition_timeout: Duration,
    /// Largest accepted definition source.
    #[serde(with = "bytes")]
    pub max_source: u64,
    /// Deepest nesting of a value crossing from Lua to Rust.
    pub max_value_depth: u32,
    /// Most table entries and string bytes in one value crossing from Lua to Rust.
    #[serde(with = "bytes")]
    pub max_value_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 256 << 20,
            instructions: 1_000_000_000,
            job_timeout: Duration::from_secs(3600),
            stage_timeout: Duration::from_secs(1800),
            kill_grace: Duration::from_secs(2),
            definition_memory: 32 << 20,
            definition_instructions: 10_000_000,
            definition_timeout: Duration::from_secs(2),
            max_source: 1 << 20,
            max_value_depth: 64,
            max_value_size: 16 << 20,
        }
    }
}

/// What `process.run` may start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessPolicy {
    /// Bare program names that may be run. Each is resolved once, in `search_path`, to an
    /// absolute path; a user-supplied `PATH` or a path in `command` is never used.
    pub allow: Vec<String>,
    /// Absolute directories searched, in order, when resolving `allow`; also the children's `PATH`.
    pub search_path: Vec<String>,
    /// Variable names (a trailing or leading `*` is a wildcard; `*` alone allows any name) a job
    /// may pass to a child.
    /// Names in [`ENV_DENY`] are refused whatever this says.
    pub env_allow: Vec<String>,
    /// Timeout for a call that sets none.
    #[serde(with = "serde_human")]
    pub default_timeout: Duration,
    /// Bytes of stdout plus stderr one call may produce before it is killed.
    #[serde(with = "bytes")]
    pub max_output: u64,
    /// `RLIMIT_NPROC` for the worker and its children.
    pub max_processes: u64,
    /// `RLIMIT_NOFILE` for the worker and its children.
    pub max_open_files: u64,
    /// `RLIMIT_AS` for the worker and its children.
    #[serde(with = "bytes")]
    pub max_address_space: u64,
    /// `RLIMIT_FSIZE`: the largest file the worker or a child may write.
    #[serde(with = "bytes")]
    pub max_file_size: u64,
    /// `RLIMIT_CPU` seconds for the worker and for each child.
    pub max_cpu_seconds: u64,
    /// Transports git children may use (`protocol.allow` is `never` for every other one).
    /// `file` (local paths) is allowed for commands a job runs, never for submodules. `ext`
    /// (which runs a command) can never be listed.
    pub git_protocols: Vec<String>,
}

/// Transports `process.git_protocols` may name.
pub const GIT_PROTOCOLS: [&str; 5] = ["https", "http", "ssh", "git", "file"];

impl Default for ProcessPolicy {
    fn default() -> Self {
        let allow = [
            "echo",
            "true",
            "false",
            "cat",
            "ls",
            "pwd",
            "test",
            "mkdir",
            "cp",
            "mv",
            "rm",
            "touch",
            "grep",
            "sed",
            "head",
            "tail",
            "wc",
            "sort",
            "uname",
            "date",
            "sleep",
            "tar",
            "gzip",
            "sha256sum",
            "diff",
            "find",
            "git",
            "make",
            "cargo",
            "rustc",
            "python3",
            "pytest",
            "node",
            "npm",
            "go",
        ];
        Self {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            search_path: ["/usr/local/bin", "/usr/bin", "/bin"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            env_allow: [
                "CI",
                "RIVET_*",
                "LANG",
                "LC_*",
                "TZ",
                "TERM",
                "NO_COLOR",
                "RUST_LOG",
                "RUST_BACKTRACE",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            default_timeout: Duration::from_secs(600),
            max_output: 16 << 20,
            max_processes: 512,
            max_open_files: 1024,
            max_address_space: 8 << 30,
            max_file_size: 4 << 30,
            max_cpu_seconds: 3600,
            git_protocols: GIT_PROTOCOLS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// Size caps of the `filesystem` module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemPolicy {
    /// Largest file `filesystem.read` returns.
    #[serde(with = "bytes")]
    pub max_read: u64,
    /// Largest single `write` or `append`.
    #[serde(with = "bytes")]
    pub max_write: u64,
    /// Bytes a job may write through the module in total.
    #[serde(with = "bytes")]
    pub max_total_write: u64,
    /// Files and directories a job may create through the module.
    pub max_entries: u64,
    /// Entries one `list` returns.
    pub max_list: u64,
}

impl Default for FilesystemPolicy {
    fn default() -> Self {
        Self {
            max_read: 64 << 20,
            max_write: 64 << 20,
            max_total_write: 1 << 30,
            max_entries: 100_000,
            max_list: 10_000,
        }
    }
}

/// What `http.*` may reach and spend. Every check runs in the parent process (the runner or
/// the CLI), on the address the name resolved to, hop by hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpPolicy {
    /// URL schemes a request may use (`https`, `http`).
    pub schemes: Vec<String>,
    /// Host names a request may reach: `api.example.com`, or `*.slack.com` for any subdomain.
    /// Empty: any host (the destination checks still apply).
    pub hosts: Vec<String>,
    /// Allow loopback destinations (127.0.0.0/8, ::1).
    pub allow_loopback: bool,
    /// Allow private destinations (RFC 1918, CGNAT 100.64/10, unique-local fc00::/7).
    pub allow_private: bool,
    /// Networks allowed whatever their range (`127.0.0.1/32`, `10.1.0.0/16`).
    pub allow_cidrs: Vec<String>,
    /// Redirects followed per call; each hop is checked again.
    pub max_redirects: u32,
    /// Largest response body; reading stops there (`[http.size]`).
    #[serde(with = "bytes")]
    pub max_response: u64,
    /// Largest request body.
    #[serde(with = "bytes")]
    pub max_request: u64,
    /// Most request (and response) header fields.
    pub max_headers: u32,
    /// Most bytes of request (and response) header names and values together.
    #[serde(with = "bytes")]
    pub max_header_bytes: u64,
    /// Timeout of a call that sets none.
    #[serde(with = "serde_human")]
    pub default_timeout: Duration,
    /// Longest timeout a call may ask for.
    #[serde(with = "serde_human")]
    pub max_timeout: Duration,
    /// Requests (redirect hops included) a job may make at once before its bucket is empty.
    pub job_burst: u32,
    /// Requests per second a job's bucket refills.
    pub job_per_second: f64,
    /// Requests in flight at once across all jobs of a runner (a call waits for a free slot).
    pub runner_concurrency: u32,
    /// Requests per second across all jobs of a runner (a call waits for a token).
    pub runner_per_second: f64,
    /// PEM files of certificate authorities `https` trusts besides the built-in Mozilla roots
    /// (an internal CA). Read once by the runner (or `rivet run`) at start; an unreadable file
    /// or one without a certificate stops it there.
    pub ca_certificates: Vec<std::path::PathBuf>,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            schemes: vec!["https".into(), "http".into()],
            hosts: Vec::new(),
            allow_loopback: false,
            allow_private: false,
            allow_cidrs: Vec::new(),
            max_redirects: 5,
            max_response: 8 << 20,
            max_request: 8 << 20,
            max_headers: 64,
            max_header_bytes: 64 << 10,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            job_burst: 20,
            job_per_second: 5.0,
            runner_concurrency: 16,
            runner_per_second: 50.0,
            ca_certificates: Vec::new(),
        }
    }
}

/// Caps on what a job can log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogPolicy {
    /// Longest line; longer lines are cut with a marker.
    #[serde(with = "bytes")]
    pub max_line: u64,
    /// Lines per job; past it one truncation marker is logged and the rest dropped.
    pub max_lines: u64,
    /// Bytes per job, likewise.
    #[serde(with = "bytes")]
    pub max_bytes: u64,
}

impl Default for LogPolicy {
    fn default() -> Self {
        Self {
            max_line: 16 << 10,
            max_lines: 200_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Whether the worker gets fresh namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// Use namespaces where the kernel allows; say so in the log when it does not.
    Auto,
    /// Refuse to run a job without them.
    Required,
    /// Never use them (rlimits and process groups only).
    Off,
}

/// Network access of the worker and its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A fresh network namespace with nothing in it but a loopback device.
    None,
    /// The host's network.
    Host,
}

/// OS-level isolation of the worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxPolicy {
    /// User, pid, mount, IPC, UTS (and network) namespaces.
    pub namespaces: NamespaceMode,
    /// Network access.
    pub network: NetworkMode,
    /// The host uid (and gid) a job's processes run as: uid 0 inside its user namespace is this
    /// uid outside. Unset: the uid of the process starting the worker. A runner running as root
    /// sets 65534 (`nobody`) unless told otherwise, and gives each job's workspace to it;
    /// otherwise a job would be host root for every file and socket permission. Applies only
    /// when the worker starts as root.
    pub job_uid: Option<u32>,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        Self {
            namespaces: NamespaceMode::Auto,
            network: NetworkMode::None,
            job_uid: None,
        }
    }
}

/// Network of a job's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerNetwork {
    /// No network at all: only a loopback device.
    None,
    /// The engine's default bridge: outbound traffic is possible (no egress filter yet).
    Bridge,
}

/// What the `container` module may start, and with what resources. The host configuration of
/// every container is built by the parent process from this; a job cannot add to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerPolicy {
    /// Image references a job may use: `python:3.11`, `rivet-test/*` (a trailing `*` matches
    /// any rest), or `*`. Empty (the default): no image.
    pub images: Vec<String>,
    /// Whether an image missing on the runner may be pulled. Default: never.
    pub pull: bool,
    /// Network of the containers.
    pub network: ContainerNetwork,
    /// Memory limit of each container (swap included).
    #[serde(with = "bytes")]
    pub memory: u64,
    /// CPUs each container may use (`1.5` = one and a half cores).
    pub cpus: f64,
    /// Processes (threads included) each container may run.
    pub pids_limit: i64,
    /// Whether containers get a read-only root filesystem (the workspace and a `/tmp` tmpfs stay
    /// writable).
    pub read_only_rootfs: bool,
    /// Timeout of a `container.run` or of one command run in a container, when the call sets
    /// none.
    #[serde(with = "serde_human")]
    pub default_timeout: Duration,
    /// Bytes of stdout plus stderr one call may produce before its container is killed.
    #[serde(with = "bytes")]
    pub max_output: u64,
    /// Containers a job may have at the same time.
    pub max_containers: u32,
}

impl Default for ContainerPolicy {
    fn default() -> Self {
        Self {
            images: Vec::new(),
            pull: false,
            network: ContainerNetwork::None,
            memory: 1 << 30,
            cpus: 1.0,
            pids_limit: 512,
            read_only_rootfs: false,
            default_timeout: Duration::from_secs(600),
            max_output: 16 << 20,
            max_containers: 4,
        }
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or not this shape.
    #[error("{0}")]
    Parse(#[source] toml::de::Error),
    /// Parsed, but a value makes no sense.
    #[error("invalid policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// Parses and checks a policy file.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(PolicyError::Parse)?;
        policy.check()?;
        Ok(policy)
    }

    /// Checks values that types alone do not constrain.
    pub fn check(&self) -> Result<(), PolicyError> {
        for name in &self.process.allow {
            if !is_program_name(name) {
                return Err(PolicyError::Invalid(format!(
                    "process.allow entry `{name}` must be a bare program name (no `/`), not a path"
                )));
            }
        }
        for dir in &self.process.search_path {
            if !dir.starts_with('/') || dir.contains(':') {
                return Err(PolicyError::Invalid(format!(
                    "process.search_path entry `{dir}` must be an absolute directory without `:`"
                )));
            }
        }
        for pattern in &self.process.env_allow {
            let core = pattern.trim_matches('*');
            if pattern == "*" {
                continue;
            }
            if core.is_empty() || !core.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(PolicyError::Invalid(format!(
                    "process.env_allow entry `{pattern}` must be a variable name, optionally with a leading or trailing `*`"
                )));
            }
        }
        let c = &self.container;
        for pattern in &c.images {
            let core = pattern.strip_suffix('*').unwrap_or(pattern);
            if pattern != "*"
                && (core.is_empty()
                    || core.contains('*')
                    || !core.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
                    }))
            {
                return Err(PolicyError::Invalid(format!(
                    "container.images entry `{pattern}` must be an image reference, optionally ending in `*`, or `*`"
                )));
            }
        }
        if !(c.cpus > 0.0 && c.cpus <= 1024.0) || c.pids_limit < 16 || c.memory < (16 << 20) {
            return Err(PolicyError::Invalid(
                "container.cpus must be in (0, 1024], container.pids_limit at least 16 and container.memory at least 16MiB".into(),
            ));
        }
        if c.max_containers == 0 || c.default_timeout.is_zero() {
            return Err(PolicyError::Invalid(
                "container.max_containers and container.default_timeout must be positive".into(),
            ));
        }
        for proto in &self.process.git_protocols {
            if !GIT_PROTOCOLS.contains(&proto.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "process.git_protocols entry `{proto}` is not one of {} (`ext` runs commands and is never allowed)",
                    GIT_PROTOCOLS.join(", ")
                )));
            }
        }
        self.http.check()?;
        if self.limits.max_value_depth == 0 || self.limits.instructions == 0 {
            return Err(PolicyError::Invalid("limits must be positive".into()));
        }
        Ok(())
    }
}

impl HttpPolicy {
    /// The parsed `allow_cidrs`.
    pub fn cidrs(&self) -> Result<Vec<crate::cidr::Cidr>, PolicyError> {
        self.allow_cidrs
            .iter()
            .map(|c| {
                c.parse()
                    .map_err(|e| PolicyError::Invalid(format!("http.allow_cidrs: {e}")))
            })
            .collect()
    }

    fn check(&self) -> Result<(), PolicyError> {
        for s in &self.schemes {
            if s != "http" && s != "https" {
                return Err(PolicyError::Invalid(format!(
                    "http.schemes entry `{s}`: only \"http\" and \"https\" are supported"
                )));
            }
        }
        for h in &self.hosts {
            let name = h.strip_prefix("*.").unwrap_or(h);
            let ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
            if !ok {
                return Err(PolicyError::Invalid(format!(
                    "http.hosts entry `{h}` must be a host name, optionally starting with `*.`"
                )));
            }
        }
        self.cidrs()?;
        let rates = [self.job_per_second, self.runner_per_second];
        if self.job_burst == 0
            || self.runner_concurrency == 0
            || rates.iter().any(|r| !r.is_finite() || *r <= 0.0)
        {
            return Err(PolicyError::Invalid(
                "http rate limits (job_burst, job_per_second, runner_concurrency, runner_per_second) must be positive".into(),
            ));
        }
        if self.default_timeout.is_zero() || self.max_timeout.is_zero() {
            return Err(PolicyError::Invalid(
                "http timeouts must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Whether `name` is a bare program name such as `git` or `python3`.
pub fn is_program_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Whether `pattern` (`NAME`, `PREFIX*` or `*SUFFIX`) matches `name`.
pub fn env_pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        if let Some(infix) = prefix.strip_prefix('*') {
            return name.contains(infix);
        }
        return name.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return name.ends_with(suffix);
    }
    pattern == name
}

/// Reads sizes written as a number of bytes or as `"16MiB"`, `"64KiB"`, `"1GiB"`, `"512B"`.
mod bytes {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    pub fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                de::Error::custom(format!(
                    "`{t}` is not a size (write bytes, or e.g. \"64KiB\", \"16MiB\", \"1GiB\")"
                ))
            }),
        }
    }

    pub fn parse(text: &str) -> Option<u64> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let n: u64 = t[..split].parse().ok()?;
        let factor: u64 = match t[split..].trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
    }

    #[test]
    fn reads_human_values() {
        let p = Policy::from_toml(
            "[limits]\nmemory = \"64MiB\"\nstage_timeout = \"5m\"\n[process]\nallow = [\"sh\"]\n[sandbox]\nnetwork = \"host\"\n",
        )
        .unwrap();
        assert_eq!(p.limits.memory, 64 << 20);
        assert_eq!(p.limits.stage_timeout, Duration::from_secs(300));
        assert_eq!(p.process.allow, vec!["sh".to_string()]);
        assert_eq!(p.sandbox.network, NetworkMode::Host);
    }

    #[test]
    fn reads_the_container_section_and_refuses_bad_values() {
        let p = Policy::from_toml(
            "[container]\nimages = [\"python:3.11\", \"rivet-test/*\"]\nnetwork = \"bridge\"\nmemory = \"512MiB\"\ncpus = 0.5\n",
        )
        .unwrap();
        assert_eq!(p.container.images, ["python:3.11", "rivet-test/*"]);
        assert_eq!(p.container.network, ContainerNetwork::Bridge);
        assert_eq!(p.container.memory, 512 << 20);
        assert!(!p.container.pull, "pulls stay off unless asked for");
        for bad in [
            "[container]\nimages = [\"alpine --privileged\"]\n",
            "[container]\nimages = [\"*/x\"]\n",
            "[container]\ncpus = 0\n",
            "[container]\npids_limit = -1\n",
            "[container]\nprivileged = true\n",
        ] {
            assert!(Policy::from_toml(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn refuses_typos_and_paths() {
        let typo = Policy::from_toml("[process]\nalow = [\"sh\"]\n")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("unknown field `alow`"), "{typo}");
        let path = Policy::from_toml("[process]\nallow = [\"/bin/sh\"]\n")
            .unwrap_err()
            .to_string();
        assert!(path.contains("bare program name"), "{path}");
        assert!(Policy::from_toml("[limits]\nmemory = \"lots\"\n").is_err());
    }

    #[test]
    fn http_section() {
        let p = Policy::from_toml(
            "[http]\nallow_cidrs = [\"127.0.0.1/32\"]\nhosts = [\"*.slack.com\"]\nmax_response = \"1MiB\"\n",
        )
        .unwrap();
        assert_eq!(p.http.max_response, 1 << 20);
        assert_eq!(p.http.cidrs().unwrap().len(), 1);
        let bad = Policy::from_toml("[http]\nallow_cidrs = [\"localhost\"]\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("http.allow_cidrs"), "{bad}");
        assert!(Policy::from_toml("[http]\nschemes = [\"ftp\"]\n").is_err());
        assert!(Policy::from_toml("[http]\njob_per_second = 0\n").is_err());
    }

    #[test]
    fn env_patterns() {
        assert!(env_pattern_matches("LC_*", "LC_ALL"));
        assert!(env_pattern_matches("*_PROXY", "HTTPS_PROXY"));
        assert!(env_pattern_matches("CI", "CI"));
        assert!(!env_pattern_matches("CI", "CIX"));
        assert!(env_pattern_matches("PYTHON*", "PYTHONPATH"));
    }
}
