//! Turning a job's untrusted options into a container specification, and the host
//! configuration the runner imposes. Pure functions: no engine, no I/O.
//!
//! Every option a job passes is checked here, in the parent process. Keys outside the supported
//! set are refused with `container.hostconfig` (CTR-01); the host configuration is built from
//! the policy alone, never from anything the job sends. Image references are parsed strictly
//! and checked against `container.images` (CTR-03).

use crate::ContainerError;
use bollard::models::HostConfig;
use rivet_core::policy::{ContainerNetwork, ContainerPolicy};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Where the job's workspace appears inside every container.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Label holding the job id.
pub const LABEL_JOB: &str = "io.rivet.job";
/// Label holding the runner id.
pub const LABEL_RUNNER: &str = "io.rivet.runner";
/// Capabilities a container keeps; every other one is dropped. Enough to install packages and
/// change file owners as the image's root, nothing that reaches beyond the container.
pub const KEPT_CAPABILITIES: [&str; 8] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// Options of `container.run`.
pub const RUN_KEYS: [&str; 6] = ["image", "command", "args", "env", "workdir", "timeout"];
/// Options of the long-lived container of `container.with`.
pub const START_KEYS: [&str; 3] = ["image", "env", "workdir"];
/// Options of one command run in a started container.
pub const EXEC_KEYS: [&str; 5] = ["command", "args", "env", "workdir", "timeout"];

const MAX_ARGS: usize = 4096;
const MAX_ARG: usize = 128 << 10;
const MAX_ENV: usize = 1024;
const MAX_ENV_VALUE: usize = 32 << 10;
const MAX_IMAGE: usize = 255;

/// A job's options: a JSON object converted from its Lua table.
pub type Options = serde_json::Map<String, Value>;

/// An image reference that passed [`parse_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

impl ImageRef {
    /// The reference as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to run: the command line, environment, working directory and time limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// argv; `None` runs the image's default command.
    pub argv: Option<Vec<String>>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Absolute path inside the container (under the workspace mount).
    pub workdir: String,
    /// Wall-clock limit.
    pub timeout: Duration,
}

/// A checked `container.run` (or the start of a `container.with` container).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// The image.
    pub image: ImageRef,
    /// What to run in it.
    pub command: Command,
}

fn invalid(op: &str, message: impl std::fmt::Display) -> ContainerError {
    ContainerError::Invalid(format!("{op}: {message}"))
}

/// Refuses every key outside `supported`: host configuration is the runner's, never the job's.
pub fn check_keys(op: &str, options: &Options, supported: &[&str]) -> Result<(), ContainerError> {
    for key in options.keys() {
        if !supported.contains(&key.as_str()) {
            return Err(ContainerError::policy(
                "container.hostconfig",
                format!(
                    "`{key}` is not an option of {op} (supported: {}); privileges, devices, mounts, namespaces and resources are set by the runner's policy",
                    supported.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Parses `container.run` options.
pub fn parse_run(options: &Options, policy: &ContainerPolicy) -> Result<RunSpec, ContainerError> {
    const OP: &str = "container.run";
    check_keys(OP, options, &RUN_KEYS)?;
    let image = image_option(OP, options, policy)?;
    let command = parse_command(OP, options, policy, false)?;
    Ok(RunSpec { image, command })
}

/// Parses the options that start a `container.with` container: the image, and the environment
/// and working directory every command in it inherits.
pub fn parse_start(options: &Options, policy: &ContainerPolicy) -> Result<RunSpec, ContainerError> {
    const OP: &str = "container.with";
    check_keys(OP, options, &START_KEYS)?;
    let image = image_option(OP, options, policy)?;
    let command = parse_command(OP, options, policy, false)?;
    Ok(RunSpec { image, command })
}

/// Parses the options of a command run in a started container.
pub fn parse_exec(options: &Options, policy: &ContainerPolicy) -> Result<Command, ContainerError> {
    const OP: &str = "process.run in a container";
    check_keys(OP, options, &EXEC_KEYS)?;
    parse_command(OP, options, policy, true)
}

fn image_option(
    op: &str,
    options: &Options,
    policy: &ContainerPolicy,
) -> Result<ImageRef, ContainerError> {
    let image = match options.get("image") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid(op, "`image` must be a string")),
        None => return Err(invalid(op, "`image` is required")),
    };
    let image = parse_image(image)?;
    check_image_allowed(&image, policy)?;
    Ok(image)
}

fn parse_command(
    op: &str,
    options: &Options,
    policy: &ContainerPolicy,
    command_required: bool,
) -> Result<Command, ContainerError> {
    let mut argv: Option<Vec<String>> = match options.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => Some(strings(op, "command", items)?),
        Some(_) => {
            return Err(invalid(
                op,
                "`command` must be a string or a non-empty list of strings",
            ))
        }
    };
    match options.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let args = strings(op, "args", items)?;
            match &mut argv {
                Some(v) => v.extend(args),
                None if args.is_empty() => {}
                None => return Err(invalid(op, "`args` needs a `command`")),
            }
        }
        // An empty Lua table may arrive as an empty object.
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(_) => return Err(invalid(op, "`args` must be a list of strings")),
    }
    if command_required && argv.is_none() {
        return Err(invalid(op, "`command` is required"));
    }
    if let Some(v) = &argv {
        if v[0].is_empty() {
            return Err(invalid(op, "`command` must not be empty"));
        }
        if v.len() > MAX_ARGS || v.iter().any(|a| a.len() > MAX_ARG || a.contains('\0')) {
            return Err(invalid(
                op,
                format!(
                    "at most {MAX_ARGS} arguments of at most {MAX_ARG} bytes each, without NUL"
                ),
            ));
        }
    }
    let env = match options.get("env") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => parse_env(op, m)?,
        Some(Value::Array(items)) if items.is_empty() => Vec::new(),
        Some(_) => return Err(invalid(op, "`env` must be a table of NAME = \"value\"")),
    };
    let workdir = match options.get("workdir") {
        None | Some(Value::Null) => WORKSPACE_MOUNT.to_owned(),
        Some(Value::String(s)) => workdir(op, s)?,
        Some(_) => return Err(invalid(op, "`workdir` must be a string")),
    };
    let timeout = match options.get("timeout") {
        None | Some(Value::Null) => policy.default_timeout,
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(rivet_core::duration::seconds)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| invalid(op, "`timeout` must be a positive number of seconds"))?,
        Some(_) => {
            return Err(invalid(
                op,
                "`timeout` must be a positive number of seconds",
            ))
        }
    };
    Ok(Command {
        argv,
        env,
        workdir,
        timeout,
    })
}

fn strings(op: &str, key: &str, items: &[Value]) -> Result<Vec<String>, ContainerError> {
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(invalid(op, format!("`{key}` must hold strings only"))),
        })
        .collect()
}

fn parse_env(op: &str, m: &Options) -> Result<Vec<String>, ContainerError> {
    if m.len() > MAX_ENV {
        return Err(invalid(op, format!("at most {MAX_ENV} `env` entries")));
    }
    let mut out = Vec::with_capacity(m.len());
    for (name, value) in m {
        let ok_name = !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_name {
            return Err(invalid(
                op,
                format!("`env` name `{name}` must be letters, digits and `_`"),
            ));
        }
        let Value::String(value) = value else {
            return Err(invalid(
                op,
                format!("`env` value of `{name}` must be a string"),
            ));
        };
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(invalid(
                op,
                format!(
                    "`env` value of `{name}` is longer than {MAX_ENV_VALUE} bytes or contains NUL"
                ),
            ));
        }
        out.push(format!("{name}={value}"));
    }
    Ok(out)
}

/// A working directory: relative to the workspace, or an absolute path under the workspace
/// mount; never `..`.
fn workdir(op: &str, raw: &str) -> Result<String, ContainerError> {
    let rel = match raw.strip_prefix(WORKSPACE_MOUNT) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        _ if raw.starts_with('/') => {
            return Err(ContainerError::policy(
                "container.workdir",
                format!("`{raw}` is outside the workspace ({WORKSPACE_MOUNT})"),
            ))
        }
        _ => raw,
    };
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ContainerError::policy(
                    "container.workdir",
                    format!("`{raw}` leaves the workspace"),
                ))
            }
            p if p.contains('\0') => return Err(invalid(op, "`workdir` contains NUL")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        Ok(WORKSPACE_MOUNT.to_owned())
    } else {
        Ok(format!("{WORKSPACE_MOUNT}/{}", parts.join("/")))
    }
}

/// Parses an image reference strictly: `[registry[:port]/]name[/name...][:tag][@sha256:hex]`,
/// lower-case names, no spaces, no leading `-` (CTR-03: nothing that could pass for a flag).
pub fn parse_image(raw: &str) -> Result<ImageRef, ContainerError> {
    let bad = |why: &str| {
        ContainerError::policy(
            "container.image",
            format!("`{raw}` is not a valid image reference: {why}"),
        )
    };
    if raw.is_empty() || raw.len() > MAX_IMAGE {
        return Err(bad("it must be 1 to 255 characters"));
    }
    if raw
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("it contains spaces or control characters"));
    }
    if raw.starts_with('-') {
        return Err(bad("it starts with `-`"));
    }
    let (name_tag, digest) = match raw.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (raw, None),
    };
    if let Some(d) = digest {
        let hex = d
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are accepted"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the digest must be 64 lower-case hex digits"));
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(bad("the tag must be letters, digits, `_`, `.`, `-`"));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && is_registry(components[0]) {
        let host = components.remove(0);
        let (h, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let host_ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err(bad(
                "the registry must be a host name with an optional port",
            ));
        }
    }
    for c in &components {
        let ok = !c.is_empty()
            && c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(bad(
                "names are lower-case letters, digits and `.`, `_`, `-` between them",
            ));
        }
    }
    Ok(ImageRef(raw.to_owned()))
}

fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// The form two references are compared in: the default registry, `library/` and `localhost/`
/// dropped, `:latest` added when there is neither tag nor digest.
pub fn normalise(reference: &str) -> String {
    let mut r = reference;
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
        "localhost/",
    ] {
        if let Some(rest) = r.strip_prefix(prefix) {
            r = rest;
            break;
        }
    }
    let last = &r[r.rfind('/').map_or(0, |i| i + 1)..];
    if last.contains(':') || r.contains('@') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

/// Whether `container.images` allows `image`.
pub fn image_allowed(image: &ImageRef, patterns: &[String]) -> bool {
    let want = normalise(image.as_str());
    patterns.iter().any(|p| {
        if p == "*" {
            return true;
        }
        match p.strip_suffix('*') {
            Some(prefix) => {
                let prefix = normalise(prefix);
                let prefix = prefix.strip_suffix(":latest").unwrap_or(&prefix);
                want.starts_with(prefix)
            }
            None => normalise(p) == want,
        }
    })
}

/// Refuses an image the policy does not list.
pub fn check_image_allowed(
    image: &ImageRef,
    policy: &ContainerPolicy,
) -> Result<(), ContainerError> {
    if image_allowed(image, &policy.images) {
        return Ok(());
    }
    let listed = if policy.images.is_empty() {
        "the policy allows no image (container.images is empty)".to_owned()
    } else {
        format!("allowed: {}", policy.images.join(", "))
    };
    Err(ContainerError::policy(
        "container.image",
        format!("image `{image}` is not allowed by container.images; {listed}"),
    ))
}

/// The host configuration of every container: built from the policy alone. The workspace is
/// the only mount; nothing privileged, no host namespace, no device, all but a few
/// capabilities dropped, `no-new-privileges`, fixed memory, CPU and process limits.
pub fn host_config(policy: &ContainerPolicy, workspace: &Path) -> HostConfig {
    let memory = i64::try_from(policy.memory).unwrap_or(i64::MAX);
    let network = match policy.network {
        ContainerNetwork::None => "none",
        ContainerNetwork::Bridge => "bridge",
    };
    HostConfig {
        binds: Some(vec![format!(
            "{}:{WORKSPACE_MOUNT}:rw",
            workspace.display()
        )]),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(KEPT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        network_mode: Some(network.into()),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some((policy.cpus * 1e9) as i64),
        pids_limit: Some(policy.pids_limit),
        readonly_rootfs: Some(policy.read_only_rootfs),
        tmpfs: policy
            .read_only_rootfs
            .then(|| HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev,size=256m".to_owned())])),
        publish_all_ports: Some(false),
        auto_remove: Some(false),
        init: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Options {
        v.as_object().cloned().unwrap()
    }

    fn policy() -> ContainerPolicy {
        ContainerPolicy {
            images: vec!["python:3.11".into(), "rivet-test/*".into()],
            ..Default::default()
        }
    }

    fn rule(e: ContainerError) -> String {
        match e {
            ContainerError::Policy { rule, .. } => rule.to_owned(),
            other => format!("not a policy error: {other}"),
        }
    }

    #[test]
    fn images_parse_strictly() {
        for good in [
            "python:3.11",
            "rivet-test/busybox",
            "docker.io/library/python:3.11",
            "localhost:5000/a/b_c:v1.2-x",
            "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            parse_image(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "alpine --privileged",
            "--privileged",
            "-alpine",
            "Alpine",
            "alpine:",
            "a//b",
            "alpine\n",
            "alpine:../x",
            "alpine@md5:00",
            "",
        ] {
            assert_eq!(
                rule(parse_image(bad).unwrap_err()),
                "container.image",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_allow_list_compares_normalised_references() {
        let p = policy();
        let ok = |s: &str| image_allowed(&parse_image(s).unwrap(), &p.images);
        assert!(ok("python:3.11"));
        assert!(ok("docker.io/library/python:3.11"));
        assert!(ok("rivet-test/busybox"));
        assert!(ok("localhost/rivet-test/busybox:latest"));
        assert!(!ok("python:3.12"));
        assert!(!ok("python"));
        assert!(!ok("registry.attacker.example/50gb:latest"));
        assert!(!ok("rivet-testing/x"), "a prefix ends at its `/`");
        assert!(!image_allowed(&parse_image("python:3.11").unwrap(), &[]));
    }

    #[test]
    fn every_host_configuration_key_is_refused() {
        for key in [
            "privileged",
            "cap_add",
            "devices",
            "network_mode",
            "pid_mode",
            "userns_mode",
            "ipc_mode",
            "security_opt",
            "volumes",
            "binds",
            "mounts",
            "user",
            "entrypoint",
        ] {
            let mut o = opts(json!({"image": "python:3.11", "command": ["true"]}));
            o.insert(key.into(), json!(true));
            assert_eq!(
                rule(parse_run(&o, &policy()).unwrap_err()),
                "container.hostconfig",
                "{key}"
            );
        }
    }

    #[test]
    fn commands_env_and_workdir_are_checked() {
        let p = policy();
        let spec = parse_run(
            &opts(
                json!({"image": "python:3.11", "command": "pytest", "args": ["-q", "tests/"],
                         "env": {"CI": "1"}, "workdir": "src", "timeout": 5}),
            ),
            &p,
        )
        .unwrap();
        assert_eq!(spec.command.argv.unwrap(), ["pytest", "-q", "tests/"]);
        assert_eq!(spec.command.env, ["CI=1"]);
        assert_eq!(spec.command.workdir, "/workspace/src");
        assert_eq!(spec.command.timeout, Duration::from_secs(5));
        let err = |v: Value| parse_run(&opts(v), &p).unwrap_err();
        assert_eq!(
            rule(err(json!({"image": "python:3.11", "workdir": "../x"}))),
            "container.workdir"
        );
        assert_eq!(
            rule(err(json!({"image": "python:3.11", "workdir": "/etc"}))),
            "container.workdir"
        );
        assert_eq!(
            rule(err(json!({"image": "python:3.12"}))),
            "container.image"
        );
        assert!(matches!(
            err(json!({"image": "python:3.11", "env": {"A B": "x"}})),
            ContainerError::Invalid(_)
        ));
        assert!(matches!(
            err(json!({"image": "python:3.11", "timeout": -1})),
            ContainerError::Invalid(_)
        ));
        assert!(matches!(
            err(json!({"command": "true"})),
            ContainerError::Invalid(_)
        ));
        assert!(matches!(
            parse_exec(&opts(json!({"args": ["x"]})), &p).unwrap_err(),
            ContainerError::Invalid(_)
        ));
    }

    #[test]
    fn host_configuration_comes_from_the_policy_only() {
        let hc = host_config(&policy(), Path::new("/srv/ws"));
        assert_eq!(hc.binds.unwrap(), ["/srv/ws:/workspace:rw"]);
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.cap_drop.unwrap(), ["ALL"]);
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.security_opt.unwrap(), ["no-new-privileges"]);
        assert_eq!(hc.pids_limit, Some(512));
        assert_eq!(hc.nano_cpus, Some(1_000_000_000));
        assert!(hc.devices.is_none() && hc.pid_mode.is_none() && hc.userns_mode.is_none());
    }
}
