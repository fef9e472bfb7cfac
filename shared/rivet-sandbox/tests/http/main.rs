//! The `http` core module, end to end: a pipeline in a real worker process calls `http.*`, its
//! parent checks and performs the request against a real HTTP server on a loopback address,
//! and the answer comes back into Lua. The test servers listen on 127.0.0.2 and the policy
//! allows exactly that address (`http.allow_cidrs`); 127.0.0.1 stays forbidden, so a redirect
//! there must be refused.

#[allow(dead_code)]
#[path = "../security/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../security/server.rs"]
mod server;

use helpers::*;
use rivet_core::{JobOutcome, Policy};
use server::{Answer, Server};
use std::time::Duration;

/// Where the allowed test servers listen.
const ALLOWED_IP: &str = "127.0.0.2";

fn http_policy() -> Policy {
    let mut p = policy(&[]);
    p.http.allow_cidrs = vec![format!("{ALLOWED_IP}/32")];
    p
}

fn run_http(policy: &Policy, script: &str) -> Job {
    let ws = workspace("http");
    run_job(policy, &pipeline_requiring(&["http"], script), ws.path())
}

#[test]
fn get_returns_status_headers_and_body() {
    let srv = Server::start(ALLOWED_IP, |_| {
        Answer::Reply(
            200,
            vec![("X-Answer".into(), "yes".into())],
            b"hello".to_vec(),
        )
    });
    let job = run_http(
        &http_policy(),
        &format!(
            r#"local r = http.get({url}, {{headers = {{["X-Asked"] = "1"}}}})
assert(r.status == 200, "status " .. tostring(r.status))
assert(r.headers["x-answer"] == "yes", "header " .. tostring(r.headers["x-answer"]))
assert(r.body == "hello", "body " .. tostring(r.body))
log.info("got " .. r.status .. " " .. r.body)"#,
            url = lua_str(&srv.url("/greeting?x=1"))
        ),
    );
    assert_succeeded(&job, "GET");
    assert!(job
        .lines(rivet_sandbox::events::Source::Script)
        .contains(&"got 200 hello"));
    let req = srv.next_request();
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/greeting?x=1");
    assert_eq!(req.header("x-asked"), Some("1"));
}

#[test]
fn post_and_request_send_bodies_and_a_non_2xx_status_is_an_answer() {
    let srv = Server::start(ALLOWED_IP, |req| {
        Answer::Reply(
            418,
            Vec::new(),
            format!("{} teapot", req.method).into_bytes(),
        )
    });
    let job = run_http(
        &http_policy(),
        &format!(
            r#"local r = http.post({url}, "payload\0bytes", {{headers = {{["Content-Type"] = "text/plain"}}}})
assert(r.status == 418 and r.body == "POST teapot", r.status .. " " .. r.body)
local p = http.request{{method = "put", url = {url}, body = "second", timeout = 5}}
assert(p.status == 418 and p.body == "PUT teapot", p.status .. " " .. p.body)"#,
            url = lua_str(&srv.url("/things"))
        ),
    );
    assert_succeeded(&job, "POST and PUT");
    let post = srv.next_request();
    assert_eq!(
        (post.method.as_str(), post.path.as_str()),
        ("POST", "/things")
    );
    assert_eq!(post.body, b"payload\0bytes");
    assert_eq!(post.header("content-type"), Some("text/plain"));
    let put = srv.next_request();
    assert_eq!(
        (put.method.as_str(), put.body.as_slice()),
        ("PUT", &b"second"[..])
    );
}

#[test]
fn a_call_timeout_ends_the_request_and_a_stage_deadline_bounds_it() {
    let srv = Server::start(ALLOWED_IP, |_| Answer::Hang);
    let url = lua_str(&srv.url("/slow"));
    let job = run_http(
        &http_policy(),
        &format!("http.get({url}, {{timeout = 0.3}})"),
    );
    assert_failed_with(&job, "timed out after 300ms", "call timeout");
    assert!(
        job.report.duration < Duration::from_secs(2),
        "{:?}",
        job.report.duration
    );

    // No call timeout: the stage's 2 s limit bounds the call, and the worker (not the parent's
    // hard kill) reports the stage as timed out.
    let job = run_http(&http_policy(), &format!("http.get({url})"));
    assert!(
        matches!(job.report.outcome, JobOutcome::TimedOut { .. })
            && !job.error().contains("worker was killed"),
        "expected the stage to time out in the worker\n{}",
        job.describe()
    );
    assert_follow_up(&http_policy());
}

#[test]
fn response_size_is_capped_with_and_without_a_length() {
    let mut p = http_policy();
    p.http.max_response = 1024;
    let framed = Server::start(ALLOWED_IP, |_| Answer::ok(&"x".repeat(4096)));
    let unframed = Server::start(ALLOWED_IP, |_| Answer::Unframed(200, vec![b'y'; 64 << 10]));
    let small = Server::start(ALLOWED_IP, |_| Answer::ok(&"z".repeat(1024)));
    for srv in [&framed, &unframed] {
        let job = run_http(&p, &format!("http.get({})", lua_str(&srv.url("/big"))));
        assert_rule(&job, "http.size", "a body over the cap");
    }
    let job = run_http(
        &p,
        &format!(
            "assert(#http.get({}).body == 1024)",
            lua_str(&small.url("/exact"))
        ),
    );
    assert_succeeded(&job, "a body exactly at the cap");
    let job = run_http(
        &p,
        &format!(
            "http.post({}, string.rep(\"b\", 9 * 1024 * 1024))",
            lua_str(&small.url("/upload"))
        ),
    );
    assert_rule(&job, "http.size", "a request body over the cap");
}

#[test]
fn redirects_are_followed_and_every_hop_is_checked() {
    let forbidden = Server::start("127.0.0.1", |_| Answer::ok("internal"));
    let forbidden_url = forbidden.url("/admin");
    let srv = Server::start(ALLOWED_IP, move |req| match req.path.as_str() {
        "/start" => Answer::redirect(302, "/landed"),
        "/landed" => Answer::ok("landed"),
        "/see-other" => Answer::redirect(303, "/landed"),
        "/to-loopback" => Answer::redirect(307, &forbidden_url),
        "/to-metadata" => Answer::redirect(302, "http://169.254.169.254/latest/meta-data/"),
        "/to-ftp" => Answer::redirect(302, "ftp://127.0.0.2/x"),
        _ => Answer::redirect(302, "/loop"),
    });
    let job = run_http(
        &http_policy(),
        &format!(
            r#"local r = http.get({start})
assert(r.status == 200 and r.body == "landed", r.status .. " " .. r.body)
assert(r.url:sub(-7) == "/landed", r.url)
local s = http.post({see}, "data")
assert(s.status == 200 and s.body == "landed")"#,
            start = lua_str(&srv.url("/start")),
            see = lua_str(&srv.url("/see-other")),
        ),
    );
    assert_succeeded(&job, "redirects followed");
    let seen: Vec<(String, String)> = srv
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    for want in [
        ("GET", "/start"),
        ("GET", "/landed"),
        ("POST", "/see-other"),
    ] {
        assert!(
            seen.iter().any(|(m, p)| m == want.0 && p == want.1),
            "{want:?} not in {seen:?}"
        );
    }
    // 303 turns the POST into a GET of the new location.
    assert_eq!(
        seen.iter()
            .filter(|(m, p)| m == "GET" && p == "/landed")
            .count(),
        2
    );

    let cases = [
        ("/to-loopback", "http.destination", "loopback 127.0.0.1"),
        (
            "/to-metadata",
            "http.destination",
            "cloud metadata 169.254.169.254",
        ),
        ("/to-ftp", "http.scheme", "`ftp`"),
        ("/loop", "http.redirect", "more than 5 redirects"),
    ];
    for (path, rule, detail) in cases {
        let job = run_http(
            &http_policy(),
            &format!("http.get({})", lua_str(&srv.url(path))),
        );
        assert_rule(&job, rule, path);
        assert!(job.error().contains(detail), "{path}: {}", job.error());
    }
    assert_eq!(
        forbidden.connections(),
        0,
        "a redirect reached the loopback server"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let srv = Server::start(ALLOWED_IP, |_| Answer::ok("fine"));
    let url = lua_str(&srv.url("/"));
    let cases: Vec<(String, &str)> = vec![
        (
            format!("http.request{{method = \"TRACE\", url = {url}}}"),
            "method `TRACE` is not supported",
        ),
        (
            format!("http.get({url}, {{headers = {{X = \"a\\r\\nInjected: 1\"}}}})"),
            "contains CR, LF or NUL",
        ),
        (
            format!("http.get({url}, {{headers = {{[\"Bad Name\"] = \"v\"}}}})"),
            "is not a valid header name",
        ),
        (
            format!("http.get({url}, {{headers = {{Host = \"evil.example\"}}}})"),
            "is set by Rivet",
        ),
        ("http.get(\"not a url\")".into(), "is not a valid URL"),
        (
            format!("http.get({url}, {{tiemout = 1}})"),
            "unknown option `tiemout`",
        ),
        (
            format!("http.request{{url = {url}, body = {{}}}}"),
            "`body` must be a string",
        ),
        (
            format!("http.get({url}, {{timeout = -1}})"),
            "`timeout` must be a positive number",
        ),
        (
            "http.get(\"http://user:pw@127.0.0.2/\")".into(),
            "policy violation [http.url]",
        ),
        (
            "http.get(\"file:///etc/passwd\")".into(),
            "policy violation [http.scheme]",
        ),
    ];
    for (script, needle) in cases {
        let job = run_http(&http_policy(), &script);
        assert_failed_with(&job, needle, &script);
    }
    assert_eq!(srv.connections(), 0, "a refused call reached the server");
}

#[test]
fn host_allow_list_and_grant_are_enforced() {
    let srv = Server::start(ALLOWED_IP, |_| Answer::ok("fine"));
    let mut p = http_policy();
    p.http.hosts = vec!["*.example.com".into()];
    let job = run_http(&p, &format!("http.get({})", lua_str(&srv.url("/"))));
    assert_rule(&job, "http.host", "host not in http.hosts");
    assert!(job.error().contains("`127.0.0.2`"), "{}", job.error());

    // Without `http` in `requires` the module does not exist.
    let ws = workspace("http");
    let job = run_job(
        &http_policy(),
        &pipeline_requiring(
            &["process"],
            &format!("http.get({})", lua_str(&srv.url("/"))),
        ),
        ws.path(),
    );
    assert_failed_with(
        &job,
        "attempt to index a nil value (global 'http')",
        "not granted",
    );
    assert_eq!(srv.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// plugin.slack, with a local server standing in for Slack's webhook endpoint
// ---------------------------------------------------------------------------------------------

const WEBHOOK_PATH: &str = "/services/T000/B000/hooksecretXYZ123";

fn slack_job(srv: &Server, policy: &Policy, script: &str) -> Job {
    let ws = workspace("slack");
    let secrets =
        std::collections::BTreeMap::from([("SLACK_WEBHOOK".to_owned(), srv.url(WEBHOOK_PATH))]);
    run_job_with_secrets(
        policy,
        &pipeline_requiring(&["plugin.slack"], script),
        ws.path(),
        secrets,
    )
}

#[test]
fn slack_notify_posts_json_to_the_webhook() {
    let srv = Server::start(ALLOWED_IP, |_| Answer::ok("ok"));
    let job = slack_job(
        &srv,
        &http_policy(),
        r##"local answer = slack.notify{
  webhook = env.get("SLACK_WEBHOOK"),
  message = "Build *green* \"quoted\"",
  channel = "#builds",
  username = "rivet",
  icon_emoji = ":rocket:",
  blocks = {{type = "section", text = {type = "mrkdwn", text = "done"}}},
}
assert(answer == "ok", answer)
-- The webhook (a secret) is masked wherever it would be logged.
log.info("posted to " .. env.get("SLACK_WEBHOOK"))"##,
    );
    assert_succeeded(&job, "slack.notify");
    let req = srv.next_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, WEBHOOK_PATH);
    assert_eq!(
        req.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let body: serde_json::Value = serde_json::from_slice(&req.body).expect("a JSON body");
    assert_eq!(
        body,
        serde_json::json!({
            "text": "Build *green* \"quoted\"",
            "channel": "#builds",
            "username": "rivet",
            "icon_emoji": ":rocket:",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "done"}}],
        })
    );
    let logs = job.logs();
    assert!(
        logs.iter().all(|(_, l)| !l.contains("hooksecretXYZ123")),
        "the webhook's secret path reached the log\n{}",
        job.describe()
    );
    assert!(
        logs.iter().any(|(_, l)| *l == "posted to ***"),
        "{}",
        job.describe()
    );
}

#[test]
fn slack_notify_fails_clearly_on_errors_and_bad_arguments() {
    let srv = Server::start(ALLOWED_IP, |_| {
        Answer::Reply(
            404,
            Vec::new(),
            format!("no_service {}", "x".repeat(500)).into_bytes(),
        )
    });
    let job = slack_job(
        &srv,
        &http_policy(),
        r#"slack.notify{webhook = env.get("SLACK_WEBHOOK"), message = "hi"}"#,
    );
    assert_failed_with(
        &job,
        "slack.notify: Slack answered 404: no_service xxx",
        "a 404",
    );
    assert!(
        job.error().ends_with("..."),
        "the excerpt is bounded: {}",
        job.error()
    );
    assert!(job.error().len() < 400, "{}", job.error());
    assert!(!job.error().contains("hooksecretXYZ123"), "{}", job.error());
    assert!(
        job.logs()
            .iter()
            .all(|(_, l)| !l.contains("hooksecretXYZ123")),
        "{}",
        job.describe()
    );

    let cases = [
        ("slack.notify{message = \"hi\"}", "`webhook` is required"),
        ("slack.notify{webhook = \"ftp://x\", message = \"hi\"}", "must be an http(s) URL"),
        ("slack.notify{webhook = env.get(\"SLACK_WEBHOOK\")}", "give `message` or `blocks`"),
        ("slack.notify{webhook = env.get(\"SLACK_WEBHOOK\"), message = \"hi\", icon_emoji = \"rocket\"}", "`icon_emoji` must look like :name:"),
        ("slack.notify{webhook = env.get(\"SLACK_WEBHOOK\"), mesage = \"hi\"}", "unknown option `mesage`"),
        ("slack.notify(\"hi\")", "expected a table of options"),
    ];
    for (script, needle) in cases {
        let job = slack_job(&srv, &http_policy(), script);
        assert_failed_with(&job, needle, script);
    }
    assert_eq!(
        srv.requests().len(),
        1,
        "only the first call may reach the server"
    );

    // The runner's policy still decides where the webhook may point.
    let mut p = http_policy();
    p.http.hosts = vec!["hooks.slack.com".into()];
    let job = slack_job(
        &srv,
        &p,
        r#"slack.notify{webhook = env.get("SLACK_WEBHOOK"), message = "hi"}"#,
    );
    assert_rule(&job, "http.host", "webhook outside http.hosts");
}

// ---------------------------------------------------------------------------------------------
// https: a real TLS server (`openssl s_server`) with certificates from a test CA
// ---------------------------------------------------------------------------------------------

/// A test CA and two server certificates it signed: one for 127.0.0.2, one for another name.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    fn new() -> TestPki {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let pki = TestPki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Rivet test CA",
        ]);
        pki.server("good", "subjectAltName=IP:127.0.0.2");
        pki.server("wrong-name", "subjectAltName=DNS:elsewhere.example");
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl is installed (scripts/test.sh checks it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `NAME.pem` and `NAME.key`: a server certificate with `san`, signed by the CA.
    fn server(&self, name: &str, san: &str) {
        let ext = self.dir.path().join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("{san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=rivet test server",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }
}

/// `openssl s_server -www` on 127.0.0.2 with certificate `name`: it answers `GET /` with a page
/// describing the TLS session. Killed on drop.
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl TlsServer {
    fn start(pki: &TestPki, name: &str) -> TlsServer {
        use std::io::BufRead;
        let port = std::net::TcpListener::bind((ALLOWED_IP, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("openssl")
            .args(["s_server", "-www", "-accept"])
            .arg(format!("{ALLOWED_IP}:{port}"))
            .arg("-cert")
            .arg(pki.path(&format!("{name}.pem")))
            .arg("-key")
            .arg(pki.path(&format!("{name}.key")))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is installed");
        // It says ACCEPT once it listens.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("ACCEPT") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("openssl s_server listens");
        TlsServer { child, port }
    }

    fn url(&self) -> String {
        format!("https://{ALLOWED_IP}:{}/", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_trusts_only_the_configured_roots_and_checks_the_name() {
    let pki = TestPki::new();
    let good = TlsServer::start(&pki, "good");
    let get = |url: &str| {
        format!(
            "local r = http.get({})\nassert(r.status == 200, 'status ' .. r.status)\n\
             log.info(r.body:find('Ciphers', 1, true) and 'tls page' or r.body)",
            lua_str(url)
        )
    };

    // The built-in roots do not know the test CA: the handshake fails, saying why.
    let job = run_http(&http_policy(), &get(&good.url()));
    assert_failed_with(&job, "certificate", "an unknown issuer");
    assert!(job.error().contains("UnknownIssuer"), "{}", job.error());

    // Trusted through `http.ca_certificates`, which the runner loads once into its host
    // services: the request goes through TLS.
    let mut trusting = http_policy();
    trusting.http.ca_certificates = vec![pki.path("ca.pem")];
    let runner = shared_options(&trusting);
    let run_trusting = |policy: &Policy, script: &str| {
        let ws = workspace("http");
        run_job_with_options(
            policy,
            &pipeline_requiring(&["http"], script),
            ws.path(),
            &runner,
        )
    };
    let job = run_trusting(&trusting, &get(&good.url()));
    assert_succeeded(&job, "https with the test CA trusted");
    assert!(job
        .lines(rivet_sandbox::events::Source::Script)
        .contains(&"tls page"));

    // A certificate from the trusted CA for another name: refused.
    let wrong = TlsServer::start(&pki, "wrong-name");
    let job = run_trusting(&trusting, &get(&wrong.url()));
    assert_failed_with(&job, "certificate", "a certificate for another name");
    assert!(
        job.error().contains("not valid for name \"127.0.0.2\""),
        "{}",
        job.error()
    );

    // An https-only policy refuses plain http before connecting.
    let mut https_only = trusting.clone();
    https_only.http.schemes = vec!["https".into()];
    let job = run_trusting(
        &https_only,
        &get(&format!("http://{ALLOWED_IP}:{}/", good.port)),
    );
    assert_rule(&job, "http.scheme", "plain http under an https-only policy");
    assert_follow_up(&trusting);

    // A CA file that cannot be read stops the policy from loading, naming the file.
    let file = pki.path("policy.toml");
    std::fs::write(&file, "[http]\nca_certificates = [\"missing-ca.pem\"]\n").unwrap();
    let err = rivet_sandbox::read_policy(Some(&file)).unwrap_err();
    assert!(
        err.contains("http.ca_certificates") && err.contains("missing-ca.pem"),
        "{err}"
    );
    std::fs::write(&file, "[http]\nca_certificates = [\"ca.pem\"]\n").unwrap();
    let loaded = rivet_sandbox::read_policy(Some(&file)).unwrap();
    assert_eq!(loaded.http.ca_certificates, vec![pki.path("ca.pem")]);
}
