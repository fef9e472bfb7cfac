//! The parent's handler for `http.*` calls (runs in the runner or CLI process, never in the
//! worker).
//!
//! Per hop (the first request and every redirect): scheme, URL credentials, metadata names and
//! the host allow-list; the job's token bucket and the runner's gate; then the host is resolved
//! and **every** address checked by range ([`destination`]); the connection is pinned to the
//! checked address (`ClientBuilder::resolve`), so a second DNS answer cannot swap it. Redirects
//! are followed here, at most `max_redirects`. Bodies and headers are capped both ways.

use super::destination;
use super::limit::{Busy, Gate, TokenBucket};
use super::{CallError, CallErrorKind};
use reqwest::Url;
use rivet_core::policy::HttpPolicy;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use url::Host;

/// One HTTP request as the worker asks for it. Nothing in it is trusted: the parent checks
/// every field against its own policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Header fields in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    #[serde(default, with = "b64_opt")]
    pub body: Option<Vec<u8>>,
    /// The call's own timeout in milliseconds, if it set one.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The final response (after redirects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    /// The URL that answered (after redirects).
    pub url: String,
}

/// Runner-wide HTTP state: concurrency and requests per second across all jobs, and the extra
/// certificate authorities `https` trusts.
#[derive(Debug)]
pub(crate) struct RunnerLimits {
    gate: Gate,
    /// `http.ca_certificates`, parsed once (or why they could not be).
    roots: Result<Vec<reqwest::Certificate>, String>,
}

impl RunnerLimits {
    pub(crate) fn new(policy: &HttpPolicy) -> Self {
        Self {
            gate: Gate::new(policy.runner_concurrency, policy.runner_per_second),
            roots: load_roots(policy),
        }
    }
}

/// Reads and parses `http.ca_certificates`: every file must hold at least one PEM certificate.
pub fn load_roots(policy: &HttpPolicy) -> Result<Vec<reqwest::Certificate>, String> {
    let mut roots = Vec::new();
    for path in &policy.ca_certificates {
        let pem = std::fs::read(path)
            .map_err(|e| format!("http.ca_certificates: reading {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("http.ca_certificates: {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "http.ca_certificates: {} holds no PEM certificate",
                path.display()
            ));
        }
        roots.extend(certs);
    }
    Ok(roots)
}

/// One job's HTTP limits: its token bucket (every hop takes a token).
#[derive(Debug)]
pub(crate) struct JobLimits {
    bucket: Mutex<TokenBucket>,
}

impl JobLimits {
    pub(crate) fn new(policy: &HttpPolicy) -> Self {
        Self {
            bucket: Mutex::new(TokenBucket::new(
                f64::from(policy.job_burst),
                policy.job_per_second,
            )),
        }
    }
}

/// What a call needs from the parent.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub(crate) policy: &'a HttpPolicy,
    pub(crate) runner: &'a RunnerLimits,
    pub(crate) job: &'a JobLimits,
}

/// Methods a job may use.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Header fields Rivet sets itself; a job may not: the connection is pinned and framed by the
/// parent, and `Host` must name the host that was checked.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

/// Headers dropped when a redirect leaves the origin they were meant for.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// `scheme://host:port` of `url`: what messages name (never the path or query, which often
/// carry tokens, e.g. a Slack webhook).
pub fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks the request's method, headers and body against the policy.
fn validate(policy: &HttpPolicy, req: &HttpRequest) -> Result<(), CallError> {
    if !METHODS.contains(&req.method.as_str()) {
        return Err(CallError::failed(format!(
            "http: method `{}` is not supported (use one of {})",
            req.method,
            METHODS.join(", ")
        )));
    }
    if req.headers.len() > policy.max_headers as usize {
        return Err(CallError::policy(
            "http.size",
            format!(
                "{} request headers, more than the {} allowed (http.max_headers)",
                req.headers.len(),
                policy.max_headers
            ),
        ));
    }
    let mut bytes = 0u64;
    for (name, value) in &req.headers {
        if !is_token(name) {
            return Err(CallError::failed(format!(
                "http: `{}` is not a valid header name",
                name.escape_debug()
            )));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(CallError::failed(format!(
                "http: the value of header `{name}` contains CR, LF or NUL"
            )));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(CallError::failed(format!(
                "http: header `{name}` is set by Rivet and cannot be given"
            )));
        }
        bytes += (name.len() + value.len()) as u64;
    }
    if bytes > policy.max_header_bytes {
        return Err(CallError::policy(
            "http.size",
            format!(
                "request headers of {bytes} bytes, more than the {} allowed (http.max_header_bytes)",
                policy.max_header_bytes
            ),
        ));
    }
    if let Some(body) = &req.body {
        if body.len() as u64 > policy.max_request {
            return Err(CallError::policy(
                "http.size",
                format!(
                    "a request body of {} bytes, more than the {} allowed (http.max_request)",
                    body.len(),
                    policy.max_request
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a URL's scheme, credentials and host name, before any lookup.
fn check_url(policy: &HttpPolicy, url: &Url) -> Result<(), CallError> {
    if !policy.schemes.iter().any(|s| s == url.scheme()) {
        return Err(CallError::policy(
            "http.scheme",
            format!(
                "scheme `{}` is not allowed (http.schemes: {})",
                url.scheme(),
                policy.schemes.join(", ")
            ),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(CallError::policy(
            "http.url",
            format!(
                "credentials in the URL ({}://user:password@...) are refused; pass an `Authorization` header instead",
                url.scheme()
            ),
        ));
    }
    let host = match url.host() {
        Some(Host::Domain(d)) => destination::canonical_name(d),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(CallError::failed("http: the URL has no host")),
    };
    if destination::is_metadata_name(&host) {
        return Err(CallError::policy(
            "http.destination",
            format!("`{host}` is a cloud metadata service"),
        ));
    }
    if !destination::host_allowed(policy, &host) {
        return Err(CallError::policy(
            "http.host",
            format!(
                "`{host}` is not in the allowed hosts (http.hosts: {})",
                policy.hosts.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Resolves the URL's host (a literal is itself) within the deadline.
fn resolve(url: &Url, deadline: Instant) -> Result<Vec<IpAddr>, CallError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let name = match url.host() {
        Some(Host::Ipv4(ip)) => return Ok(vec![IpAddr::V4(ip)]),
        Some(Host::Ipv6(ip)) => return Ok(vec![IpAddr::V6(ip)]),
        Some(Host::Domain(d)) => d.to_owned(),
        None => return Err(CallError::failed("http: the URL has no host")),
    };
    // `localhost` and `*.localhost` are loopback by definition (RFC 6761), however the system
    // resolver spells or fails them (`localhost.` often does not resolve at all).
    let canonical = destination::canonical_name(&name);
    if canonical == "localhost" || canonical.ends_with(".localhost") {
        return Ok(vec![
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]);
    }
    // getaddrinfo cannot be cancelled: run it on its own thread and stop waiting at the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let lookup = name.clone();
    std::thread::spawn(move || {
        let result = (lookup.as_str(), port)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>());
        let _ = tx.send(result);
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(CallError::failed(format!(
            "http: `{name}` has no addresses"
        ))),
        Ok(Err(e)) => Err(CallError::failed(format!(
            "http: cannot resolve `{name}`: {e}"
        ))),
        Err(_) => Err(CallError::timeout(format!(
            "http: resolving `{name}` timed out"
        ))),
    }
}

/// Resolves and checks every address of the URL's host; returns the one to connect to. A name
/// with any refused address is refused whole (a split answer is how rebinding starts).
fn destination(
    policy: &HttpPolicy,
    cidrs: &[rivet_core::cidr::Cidr],
    url: &Url,
    deadline: Instant,
) -> Result<IpAddr, CallError> {
    let addrs = resolve(url, deadline)?;
    let host = url.host_str().unwrap_or_default();
    let mut chosen = None;
    for ip in addrs {
        match destination::check(policy, cidrs, ip) {
            Ok(ip) => {
                chosen.get_or_insert(ip);
            }
            Err(range) => {
                let shown = destination::normalize(ip);
                let via = if host.trim_matches(['[', ']']) == shown.to_string() {
                    String::new()
                } else {
                    format!(" (`{host}` resolves to it)")
                };
                return Err(CallError::policy(
                    "http.destination",
                    format!(
                        "{} {shown}{via} is not reachable from jobs",
                        range.describe()
                    ),
                ));
            }
        }
    }
    chosen.ok_or_else(|| CallError::failed(format!("http: `{host}` has no addresses")))
}

fn cause_chain(err: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s);
        }
        cur = e.source();
    }
    text
}

/// A request error as the job sees it: the origin, never the path.
fn request_error(url: &Url, err: reqwest::Error) -> CallError {
    let origin = origin(url);
    let why = cause_chain(&err);
    let why = if why.is_empty() { err.to_string() } else { why };
    // The error text may quote the URL; keep only the origin.
    let why = why.replace(url.as_str(), &origin);
    if err.is_timeout() {
        CallError::timeout(format!("http: {origin} timed out ({why})"))
    } else if err.is_connect() {
        CallError::failed(format!("http: cannot connect to {origin}: {why}"))
    } else {
        CallError::failed(format!("http: request to {origin} failed: {why}"))
    }
}

/// One hop: connect to the checked address only, send, read the answer under the caps.
async fn send(
    policy: &HttpPolicy,
    roots: &[reqwest::Certificate],
    url: &Url,
    ip: IpAddr,
    method: &reqwest::Method,
    headers: &[(String, String)],
    body: Option<&Vec<u8>>,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), CallError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .user_agent(concat!("rivet/", env!("CARGO_PKG_VERSION")));
    for root in roots {
        builder = builder.add_root_certificate(root.clone());
    }
    if let Some(Host::Domain(name)) = url.host() {
        // Pin the connection to the address that was checked: no second lookup, no rebinding.
        let port = url.port_or_known_default().unwrap_or(80);
        builder = builder.resolve(name, SocketAddr::new(ip, port));
    }
    let client = builder
        .build()
        .map_err(|e| CallError::failed(format!("http: building the client: {e}")))?;
    let mut req = client.request(method.clone(), url.clone());
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    if let Some(body) = body {
        req = req.body(body.clone());
    }
    let mut resp = req.send().await.map_err(|e| request_error(url, e))?;
    let status = resp.status().as_u16();
    let mut out_headers = Vec::new();
    let mut header_bytes = 0u64;
    for (name, value) in resp.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        header_bytes += (name.as_str().len() + value.len()) as u64;
        out_headers.push((name.as_str().to_owned(), value));
    }
    if out_headers.len() > policy.max_headers as usize || header_bytes > policy.max_header_bytes {
        return Err(CallError::policy(
            "http.size",
            format!(
                "{} answered with {} header fields ({header_bytes} bytes), more than allowed (http.max_headers, http.max_header_bytes)",
                origin(url),
                out_headers.len()
            ),
        ));
    }
    let cap = policy.max_response;
    let too_big = || {
        CallError::policy(
            "http.size",
            format!(
                "the response from {} is larger than {cap} bytes (http.max_response); reading stopped there",
                origin(url)
            ),
        )
    };
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| request_error(url, e))? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, out_headers, body))
}

/// Runs one `http` call: validate, then per hop check scheme, host, rate and resolved
/// destination, connect to the checked address, and follow redirects (each one a new hop).
pub(crate) fn handle(
    cx: &Context<'_>,
    request: HttpRequest,
    deadline: Instant,
) -> Result<HttpResponse, CallError> {
    let policy = cx.policy;
    let mut request = request;
    request.method = request.method.to_ascii_uppercase();
    validate(policy, &request)?;
    let roots = cx
        .runner
        .roots
        .as_deref()
        .map_err(|e| CallError::failed(format!("http: {e}")))?;
    let cidrs = policy
        .cidrs()
        .map_err(|e| CallError::failed(format!("http: {e}")))?;
    let own = request
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(policy.default_timeout)
        .min(policy.max_timeout);
    let started = Instant::now();
    let (deadline, stage_limited) = if started + own <= deadline {
        (started + own, false)
    } else {
        (deadline, true)
    };
    let timed_out = || {
        if stage_limited {
            CallError::timeout("http: the stage ran out of time while the request was running")
        } else {
            CallError::timeout(format!(
                "http: the request timed out after {}",
                crate::fmt_duration(own)
            ))
        }
    };
    let mut url = Url::parse(&request.url).map_err(|e| {
        CallError::failed(format!("http: `{}` is not a valid URL: {e}", request.url))
    })?;
    let mut method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| CallError::failed("http: invalid method"))?;
    let mut headers = request.headers;
    let mut body = request.body;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CallError::failed(format!("http: starting the I/O runtime: {e}")))?;
    let mut hops = 0u32;
    let result = loop {
        if let Err(e) = check_url(policy, &url) {
            break Err(e);
        }
        let taken = cx
            .job
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take();
        if !taken {
            break Err(CallError::policy(
                "http.rate",
                format!(
                    "this job made more than {} requests at a rate above {}/s (http.job_burst, http.job_per_second; redirects count)",
                    policy.job_burst, policy.job_per_second
                ),
            ));
        }
        let permit = match cx.runner.gate.enter(deadline) {
            Ok(p) => p,
            Err(busy) => {
                let what = match busy {
                    Busy::Concurrency => format!(
                        "all {} of this runner's request slots stayed busy (http.runner_concurrency)",
                        policy.runner_concurrency
                    ),
                    Busy::Rate => format!(
                        "this runner is at its rate of {}/s across jobs (http.runner_per_second)",
                        policy.runner_per_second
                    ),
                };
                break Err(CallError::policy("http.rate", what));
            }
        };
        let ip = match destination(policy, &cidrs, &url, deadline) {
            Ok(ip) => ip,
            Err(e) => break Err(e),
        };
        let sent = runtime.block_on(async {
            tokio::time::timeout_at(
                tokio::time::Instant::from_std(deadline),
                send(policy, roots, &url, ip, &method, &headers, body.as_ref()),
            )
            .await
        });
        drop(permit);
        let (status, resp_headers, resp_body) = match sent {
            Err(_) => break Err(timed_out()),
            Ok(Err(e)) if e.kind == CallErrorKind::Timeout => break Err(timed_out()),
            Ok(Err(e)) => break Err(e),
            Ok(Ok(answer)) => answer,
        };
        let location = resp_headers
            .iter()
            .find(|(n, _)| n == "location")
            .map(|(_, v)| v.clone());
        let next = match (status, location) {
            (301 | 302 | 303 | 307 | 308, Some(loc)) => loc,
            _ => {
                break Ok(HttpResponse {
                    status,
                    headers: resp_headers,
                    body: resp_body,
                    url: url.to_string(),
                })
            }
        };
        if hops >= policy.max_redirects {
            break Err(CallError::policy(
                "http.redirect",
                format!(
                    "more than {} redirects (http.max_redirects), last from {}",
                    policy.max_redirects,
                    origin(&url)
                ),
            ));
        }
        hops += 1;
        let next = match url.join(&next) {
            Ok(u) => u,
            Err(e) => {
                break Err(CallError::failed(format!(
                    "http: {} redirected to an invalid location: {e}",
                    origin(&url)
                )))
            }
        };
        if next.origin() != url.origin() {
            headers.retain(|(n, _)| !CREDENTIAL_HEADERS.contains(&n.to_ascii_lowercase().as_str()));
        }
        let to_get =
            status == 303 || (matches!(status, 301 | 302) && method == reqwest::Method::POST);
        if to_get && method != reqwest::Method::HEAD {
            method = reqwest::Method::GET;
            body = None;
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        }
        url = next;
    };
    // A lookup thread may still be running; never wait for it.
    runtime.shutdown_background();
    result
}

/// Bytes as base64 in JSON frames (bodies need not be UTF-8).
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => super::b64::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}
