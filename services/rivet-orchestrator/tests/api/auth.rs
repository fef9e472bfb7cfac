//! API-01: one table over every route of the router. Without a token, or with a wrong or revoked
//! one, every `/api/v1` route answers 401; a project token gets 403 on admin routes and through
//! on the others. The table is checked against the routes spelled in `src/api/mod.rs`, so a new
//! route without a row fails this test.
//! The one route for runners (`POST /runners/register`) takes a runner token and no API token;
//! a runner token opens no other route (API-02).
//! Per-project scopes: every route is called with a project-A token on project B's objects
//! (404 with the words of a missing object, lists without them, B's objects unchanged) and on
//! A's own (they work); `api_01_project_tokens_reach_only_their_project`.

use crate::helpers::*;
use rivet_protocol::http::{ApiError, TokenView};
use serde_json::json;
use std::collections::BTreeSet;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No token needed (health checks).
    Public,
    /// Any valid token.
    Token,
    /// An admin token.
    Admin,
    /// A runner token (API-02): no API token opens it, and a runner token opens nothing else.
    Runner,
}

/// Every route: method, path as `mod.rs` spells it, who may call it.
const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    // The page holds no data; what it shows comes from the API with the operator's token.
    ("GET", "/dashboard", Access::Public),
    ("POST", "/pipelines", Access::Token),
    ("GET", "/pipelines", Access::Token),
    ("GET", "/pipelines/{name}", Access::Token),
    ("POST", "/pipelines/{name}/runs", Access::Token),
    ("GET", "/jobs", Access::Token),
    ("GET", "/jobs/{id}", Access::Token),
    ("GET", "/jobs/{id}/logs", Access::Token),
    ("POST", "/jobs/{id}/cancel", Access::Token),
    ("POST", "/jobs/{id}/retry", Access::Token),
    ("GET", "/runners", Access::Token),
    ("POST", "/runners/{id}/drain", Access::Admin),
    ("POST", "/runners/registrations", Access::Admin),
    ("GET", "/runners/registrations", Access::Admin),
    ("DELETE", "/runners/registrations/{id}", Access::Admin),
    ("POST", "/runners/register", Access::Runner),
    ("GET", "/queues", Access::Token),
    ("POST", "/projects", Access::Admin),
    ("GET", "/projects", Access::Admin),
    ("POST", "/tokens", Access::Admin),
    ("GET", "/tokens", Access::Admin),
    ("DELETE", "/tokens/{id}", Access::Admin),
];

/// `(METHOD, path)` of every `.route(..)` in the router's source (whitespace ignored, so a call
/// rustfmt spread over several lines counts too).
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source: String = include_str!("../../src/api/mod.rs")
        .split_whitespace()
        .collect();
    let mut out = BTreeSet::new();
    for chunk in source.split(".route(\"").skip(1) {
        let (path, rest) = chunk.split_once('"').expect("a quoted route path");
        // The method routers of this route: up to the `)` closing the `.route(` call.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        let call = &rest[..end];
        let mut found = false;
        for method in ["get", "post", "put", "patch", "delete"] {
            // `get(` inside `.get(` and `,get(` alike; `post(` never inside another name here.
            if call.contains(&format!("{method}(")) {
                out.insert((method.to_uppercase(), path.to_owned()));
                found = true;
            }
        }
        assert!(found, "no method found for route {path}: {call}");
    }
    out
}

/// A concrete URL for a route's path: `/api/v1` routes get placeholders filled.
fn url(app: &TestApp, path: &str) -> String {
    let concrete = path
        .replace("{name}", "no-such-pipeline")
        .replace("{id}", "00000000-0000-4000-8000-000000000000");
    if path == "/healthz" || path == "/readyz" || path == "/dashboard" {
        format!("{}{concrete}", app.base)
    } else {
        app.url(&concrete)
    }
}

/// Calls a route with `auth`, if any, as the whole `Authorization` header.
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> (u16, Option<ApiError>) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.http.request(method.clone(), url(app, path));
    if let Some(header) = auth {
        request = request.header("authorization", header);
    }
    if method == reqwest::Method::POST {
        // A body that is valid where one is needed, so a refusal is about the token.
        request = request.json(&json!({"name": "auth-table", "source": "return {}", "inputs": {}}));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).ok())
}

/// A new runner registration's token.
async fn registration_token(app: &TestApp, name: &str) -> String {
    let r = app
        .post("/runners/registrations", json!({ "name": name }))
        .await;
    assert_eq!(r.status(), 201);
    let reg: rivet_protocol::http::RunnerRegistrationView = r.json().await.unwrap();
    reg.secret.expect("a new registration carries its token")
}

#[tokio::test]
async fn api_01_every_route_checks_its_token() {
    let app = spawn_app().await;
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(table.len(), ROUTES.len(), "duplicate rows");
    assert_eq!(
        routes_in_source(),
        table,
        "the auth table must list exactly the routes of src/api/mod.rs"
    );

    // A non-admin token, and a revoked one.
    let create = |name: &str| app.post("/tokens", json!({"name": name}));
    let user: TokenView = create("user").await.json().await.unwrap();
    let revoked: TokenView = create("revoked").await.json().await.unwrap();
    app.revoke_token(revoked.id).await;
    let user = format!("Bearer {}", user.secret.unwrap());
    let revoked = format!("Bearer {}", revoked.secret.unwrap());
    let admin = format!("Bearer {}", app.token);
    let refused = [
        ("no token", None),
        ("an empty bearer token", Some("Bearer ".to_owned())),
        ("a wrong token", Some("Bearer rvt_0000".to_owned())),
        ("another scheme", Some(admin.replacen("Bearer", "Basic", 1))),
        ("a revoked token", Some(revoked)),
    ];

    // A runner token, and one whose registration was revoked.
    let runner = format!("Bearer {}", registration_token(&app, "auth-runner").await);
    let revoked_runner = registration_token(&app, "auth-revoked-runner").await;
    let r = app
        .http
        .delete(app.url("/runners/registrations/auth-revoked-runner"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked_runner = format!("Bearer {revoked_runner}");

    for (method, path, access) in ROUTES {
        let route = format!("{method} {path}");
        for (what, header) in &refused {
            let (status, body) = call(&app, method, path, header.as_deref()).await;
            if *access == Access::Public {
                assert!(
                    status != 401 && status != 403,
                    "{route} with {what}: public, got {status}"
                );
                continue;
            }
            assert_eq!(status, 401, "{route} with {what}");
            let body = body.unwrap_or_else(|| panic!("{route} with {what}: no JSON error"));
            if *access == Access::Runner {
                assert_eq!(body.code, "policy_violation", "{route} with {what}");
                assert!(
                    body.message
                        .starts_with("policy violation [runner.identity]: "),
                    "{route} with {what}: {}",
                    body.message
                );
            } else {
                assert_eq!(body.code, "unauthorized", "{route} with {what}");
            }
        }
        if *access == Access::Runner {
            for (what, header) in [
                ("a non-admin API token", &user),
                ("the admin token", &admin),
                ("a revoked runner token", &revoked_runner),
            ] {
                let (status, body) = call(&app, method, path, Some(header)).await;
                assert_eq!(status, 401, "{route} with {what}");
                assert_eq!(body.map(|b| b.code).as_deref(), Some("policy_violation"));
            }
            let (status, _) = call(&app, method, path, Some(&runner)).await;
            assert!(
                status != 401 && status != 403,
                "{route} with a runner token: got {status}"
            );
            continue;
        }
        if *access != Access::Public {
            let (status, _) = call(&app, method, path, Some(&runner)).await;
            assert_eq!(status, 401, "{route} with a runner token");
        }
        let (status, body) = call(&app, method, path, Some(&user)).await;
        match access {
            Access::Admin => {
                assert_eq!(status, 403, "{route} with a non-admin token");
                assert_eq!(
                    body.map(|b| b.code).as_deref(),
                    Some("forbidden"),
                    "{route}"
                );
            }
            _ => assert!(
                status != 401 && status != 403,
                "{route} with a non-admin token: got {status}"
            ),
        }
        let (status, _) = call(&app, method, path, Some(&admin)).await;
        assert!(
            status != 401 && status != 403,
            "{route} with the admin token: got {status}"
        );
    }
    app.stop().await;
}

/// A request as a given token: status and body text.
async fn as_token(
    app: &TestApp,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Asserts a 404 `not_found` whose message is exactly `message` (the words a missing object
/// gets), and returns nothing else to look at: the body is the error and only the error.
fn assert_not_found(route: &str, (status, text): &(u16, String), message: &str) {
    assert_eq!(*status, 404, "{route}: {text}");
    let body: ApiError =
        serde_json::from_str(text).unwrap_or_else(|_| panic!("{route}: no JSON error: {text}"));
    assert_eq!(body.code, "not_found", "{route}");
    assert_eq!(body.message, message, "{route}");
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["code", "message"]), "{route}: {text}");
}

async fn push(app: &TestApp, token: &str, name: &str) -> (u16, String) {
    let body = json!({ "name": name, "source": SOURCE, "file_name": format!("{name}.lua") });
    as_token(app, token, "POST", "/pipelines", Some(body)).await
}

async fn run(app: &TestApp, token: &str, name: &str) -> (u16, String) {
    let path = format!("/pipelines/{name}/runs");
    as_token(app, token, "POST", &path, Some(json!({ "inputs": {} }))).await
}

const SOURCE: &str = r#"return {
  name = "Scoped",
  requires = {"process"},
  stages = { { name = "s", script = function() log.info("hi") end } },
}"#;

#[tokio::test]
async fn api_01_project_tokens_reach_only_their_project() {
    let app = spawn_app().await;
    let admin = app.token.clone();
    for name in ["alpha", "beta"] {
        let r = app.post("/projects", json!({ "name": name })).await;
        assert_eq!(r.status(), 201, "creating project {name}");
    }
    let r = app.post("/projects", json!({ "name": "alpha" })).await;
    assert_eq!(r.status(), 409, "a project name is unique");
    let token = |name: &'static str, project: &'static str| {
        let app = &app;
        async move {
            let r = app
                .post("/tokens", json!({ "name": name, "project": project }))
                .await;
            assert_eq!(r.status(), 201, "token for {project}");
            let view: TokenView = r.json().await.unwrap();
            assert_eq!(view.project.as_deref(), Some(project));
            view.secret.unwrap()
        }
    };
    let a = token("a", "alpha").await;
    let b = token("b", "beta").await;
    let r = app
        .post("/tokens", json!({ "name": "x", "project": "no-such" }))
        .await;
    assert_eq!(r.status(), 404, "a token for a missing project");

    // B's objects: a pipeline only B has, one named like A's, a job with log lines.
    for name in ["beta-secret", "shared"] {
        let (status, text) = push(&app, &b, name).await;
        assert_eq!(status, 201, "{text}");
    }
    // The same name in another project is another pipeline (unique per project, name).
    let (status, text) = push(&app, &a, "shared").await;
    assert_eq!(status, 201, "{text}");
    let shared: rivet_protocol::http::PipelineView = serde_json::from_str(&text).unwrap();
    assert_eq!(
        shared.version, 1,
        "A's `shared` is its own, not B's version 2"
    );
    let (status, text) = run(&app, &b, "beta-secret").await;
    assert_eq!(status, 201, "{text}");
    let jb: rivet_protocol::http::JobView = serde_json::from_str(&text).unwrap();
    let (status, text) = run(&app, &a, "shared").await;
    assert_eq!(status, 201, "{text}");
    let ja: rivet_protocol::http::JobView = serde_json::from_str(&text).unwrap();
    // Log lines of both jobs, as a runner's reports would store them.
    let mut db = app.db().await;
    for (job, line) in [(jb.id, "beta-secret-log-line"), (ja.id, "alpha log line")] {
        sqlx::query(
            "INSERT INTO log_lines (job_id, attempt, seq, at_ms, stage, level, source, line) \
             VALUES ($1, 1, 0, 0, 's', 'info', 'job', $2)",
        )
        .bind(job)
        .bind(line)
        .execute(&mut db)
        .await
        .unwrap();
    }
    // A registered runner running both jobs, as its presence record says (presence is looked up
    // by registered name).
    app.register_runner("scoped-runner", json!({})).await;
    let keys = rivet_protocol::redis_keys::Keys::new(&app.namespace);
    let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
        .await
        .unwrap();
    let presence = rivet_protocol::redis_keys::RunnerPresence {
        schema: rivet_protocol::SCHEMA_VERSION,
        id: "scoped-runner".into(),
        capabilities: vec!["process".into()],
        labels: Default::default(),
        slots: 2,
        running: [ja.id, jb.id]
            .into_iter()
            .map(|job_id| rivet_protocol::redis_keys::RunningJob { job_id, attempt: 1 })
            .collect(),
        draining: false,
        version: "test".into(),
        started_at_ms: 0,
        updated_at_ms: 0,
    };
    let _: () = redis::AsyncCommands::set_ex(
        &mut redis,
        keys.runner("scoped-runner"),
        serde_json::to_string(&presence).unwrap(),
        60,
    )
    .await
    .unwrap();

    let secret_words = [jb.id.to_string(), "beta-secret".to_owned()];
    let no_leak = |route: &str, text: &str| {
        for word in &secret_words {
            assert!(
                !text.contains(word.as_str()),
                "{route} leaks `{word}`: {text}"
            );
        }
    };
    let jb_missing = format!("no job `{}`", jb.id);
    let mut covered = BTreeSet::new();
    for (method, path, access) in ROUTES {
        let route = format!("{method} {path}");
        match access {
            // Covered by `api_01_every_route_checks_its_token`.
            Access::Public | Access::Runner => continue,
            Access::Admin => {
                let (status, _) = call(&app, method, path, Some(&format!("Bearer {a}"))).await;
                assert_eq!(status, 403, "{route} with a project token");
                covered.insert(route);
                continue;
            }
            Access::Token => {}
        }
        match (*method, *path) {
            ("POST", "/pipelines") => {
                // Pushing B's name from A creates A's own pipeline; B's stays as it was.
                let (status, text) = push(&app, &a, "beta-secret").await;
                assert_eq!(status, 201, "{route}: {text}");
                let (status, text) =
                    as_token(&app, &b, "GET", "/pipelines/beta-secret", None).await;
                assert_eq!(status, 200, "{text}");
                let view: rivet_protocol::http::PipelineView = serde_json::from_str(&text).unwrap();
                assert_eq!(view.version, 1, "{route}: B's pipeline untouched");
                // Undo A's, so the checks below see A without B's name: a fresh project.
                sqlx::query(
                    "DELETE FROM pipeline_versions WHERE pipeline_id IN (SELECT p.id FROM pipelines p \
                     JOIN projects j ON j.id = p.project_id WHERE j.name = 'alpha' AND p.name = 'beta-secret')",
                )
                .execute(&mut db)
                .await
                .unwrap();
                sqlx::query(
                    "DELETE FROM pipelines WHERE name = 'beta-secret' AND project_id = \
                     (SELECT id FROM projects WHERE name = 'alpha')",
                )
                .execute(&mut db)
                .await
                .unwrap();
                let (status, text) = push(&app, &a, "to-project").await;
                assert_eq!(status, 201, "{text}");
                let r = as_token(
                    &app,
                    &a,
                    "POST",
                    "/pipelines?project=beta",
                    Some(json!({ "name": "x", "source": SOURCE })),
                )
                .await;
                assert_not_found(&route, &r, "no project `beta`");
            }
            ("GET", "/pipelines") => {
                let (status, text) = as_token(&app, &a, "GET", "/pipelines", None).await;
                assert_eq!(status, 200, "{text}");
                no_leak(&route, &text);
                let names: Vec<String> =
                    serde_json::from_str::<Vec<rivet_protocol::http::PipelineSummary>>(&text)
                        .unwrap()
                        .into_iter()
                        .map(|p| p.name)
                        .collect();
                assert_eq!(names, ["shared", "to-project"], "{route}");
                for project in ["beta", "no-such"] {
                    let r = as_token(
                        &app,
                        &a,
                        "GET",
                        &format!("/pipelines?project={project}"),
                        None,
                    )
                    .await;
                    assert_not_found(&route, &r, &format!("no project `{project}`"));
                }
                let (status, _) = as_token(&app, &a, "GET", "/pipelines?project=alpha", None).await;
                assert_eq!(status, 200, "{route}: naming its own project");
            }
            ("GET", "/pipelines/{name}") => {
                let r = as_token(&app, &a, "GET", "/pipelines/beta-secret", None).await;
                assert_not_found(&route, &r, "no pipeline `beta-secret`");
                let r =
                    as_token(&app, &a, "GET", "/pipelines/beta-secret?project=beta", None).await;
                assert_not_found(&route, &r, "no project `beta`");
                let (status, text) = as_token(&app, &a, "GET", "/pipelines/shared", None).await;
                assert_eq!(status, 200, "{text}");
                let view: rivet_protocol::http::PipelineView = serde_json::from_str(&text).unwrap();
                assert_eq!(view.version, 1, "{route}: A's own `shared`");
            }
            ("POST", "/pipelines/{name}/runs") => {
                let r = run(&app, &a, "beta-secret").await;
                assert_not_found(&route, &r, "no pipeline `beta-secret`");
            }
            ("GET", "/jobs") => {
                for query in ["", "?pipeline=beta-secret", "?state=queued", "?limit=1000"] {
                    let (status, text) =
                        as_token(&app, &a, "GET", &format!("/jobs{query}"), None).await;
                    assert_eq!(status, 200, "{route}{query}: {text}");
                    no_leak(&route, &text);
                }
                let (_, text) = as_token(&app, &a, "GET", "/jobs", None).await;
                let ids: Vec<_> = serde_json::from_str::<Vec<rivet_protocol::http::JobView>>(&text)
                    .unwrap()
                    .into_iter()
                    .map(|j| j.id)
                    .collect();
                assert_eq!(ids, [ja.id], "{route}: A's job, and only it");
                let r = as_token(&app, &a, "GET", "/jobs?project=beta", None).await;
                assert_not_found(&route, &r, "no project `beta`");
            }
            ("GET", "/jobs/{id}") => {
                let r = as_token(&app, &a, "GET", &format!("/jobs/{}", jb.id), None).await;
                assert_not_found(&route, &r, &jb_missing);
                let (status, _) =
                    as_token(&app, &a, "GET", &format!("/jobs/{}", ja.id), None).await;
                assert_eq!(status, 200, "{route}: A's own job");
            }
            ("GET", "/jobs/{id}/logs") => {
                for query in ["", "?attempt=1", "?after=0"] {
                    let r = as_token(
                        &app,
                        &a,
                        "GET",
                        &format!("/jobs/{}/logs{query}", jb.id),
                        None,
                    )
                    .await;
                    assert_not_found(&route, &r, &jb_missing);
                }
                let (status, text) =
                    as_token(&app, &a, "GET", &format!("/jobs/{}/logs", ja.id), None).await;
                assert_eq!(status, 200, "{route}: {text}");
                assert!(text.contains("alpha log line"), "{route}: {text}");
                let (status, text) =
                    as_token(&app, &b, "GET", &format!("/jobs/{}/logs", jb.id), None).await;
                assert_eq!(status, 200, "{text}");
                assert!(
                    text.contains("beta-secret-log-line"),
                    "B reads its own: {text}"
                );
            }
            ("POST", "/jobs/{id}/cancel") => {
                let r = as_token(
                    &app,
                    &a,
                    "POST",
                    &format!("/jobs/{}/cancel", jb.id),
                    Some(json!({})),
                )
                .await;
                assert_not_found(&route, &r, &jb_missing);
                let (status, text) = as_token(
                    &app,
                    &a,
                    "POST",
                    &format!("/jobs/{}/cancel", ja.id),
                    Some(json!({})),
                )
                .await;
                assert_eq!(status, 202, "{route}: A's own job: {text}");
            }
            ("POST", "/jobs/{id}/retry") => {
                // A's job was cancelled just above, so it can be retried; B's is queued, and
                // whatever its state, A gets the answer of a missing job.
                let r = as_token(&app, &a, "POST", &format!("/jobs/{}/retry", jb.id), None).await;
                assert_not_found(&route, &r, &jb_missing);
                let (status, text) =
                    as_token(&app, &a, "POST", &format!("/jobs/{}/retry", ja.id), None).await;
                assert_eq!(status, 201, "{route}: A's own job: {text}");
            }
            ("GET", "/runners") => {
                let (status, text) = as_token(&app, &a, "GET", "/runners", None).await;
                assert_eq!(status, 200, "{text}");
                no_leak(&route, &text);
                let runners: Vec<rivet_protocol::http::RunnerView> =
                    serde_json::from_str(&text).unwrap();
                let runner = runners.iter().find(|r| r.id == "scoped-runner").unwrap();
                assert_eq!(runner.running, [ja.id], "{route}: A's running job only");
                let (_, text) = as_token(&app, &admin, "GET", "/runners", None).await;
                assert!(text.contains(&jb.id.to_string()), "an admin sees every job");
            }
            ("GET", "/queues") => {
                let (status, text) = as_token(&app, &a, "GET", "/queues", None).await;
                assert_eq!(status, 200, "{text}");
                no_leak(&route, &text);
            }
            _ => panic!("{route}: no cross-project case; add one"),
        }
        covered.insert(route);
    }
    assert_eq!(
        covered.len(),
        ROUTES
            .iter()
            .filter(|(_, _, access)| matches!(access, Access::Token | Access::Admin))
            .count()
    );

    // B's job is as B left it: A's cancel and retry changed nothing.
    let (status, text) = as_token(&app, &b, "GET", &format!("/jobs/{}", jb.id), None).await;
    assert_eq!(status, 200, "{text}");
    let view: rivet_protocol::http::JobView = serde_json::from_str(&text).unwrap();
    assert_eq!(view.state, rivet_protocol::http::JobState::Queued);
    assert_eq!(view.attempt, 1);

    // Admin: `default` unless the request names a project; jobs by id in any project.
    let (_, text) = as_token(&app, &admin, "GET", "/pipelines", None).await;
    assert_eq!(text, "[]", "the default project has no pipelines here");
    let (status, text) = as_token(&app, &admin, "GET", "/pipelines?project=beta", None).await;
    assert_eq!(status, 200);
    assert!(text.contains("beta-secret"), "{text}");
    let (status, text) = as_token(&app, &admin, "GET", "/jobs?project=beta", None).await;
    assert_eq!(status, 200);
    assert!(text.contains(&jb.id.to_string()), "{text}");
    let (status, _) = as_token(&app, &admin, "GET", &format!("/jobs/{}/logs", jb.id), None).await;
    assert_eq!(status, 200, "an admin reads any project's job by id");
    // ... and is told which project it is in.
    let (status, text) = as_token(&app, &admin, "GET", &format!("/jobs/{}", jb.id), None).await;
    assert_eq!(status, 200);
    let view: rivet_protocol::http::JobView = serde_json::from_str(&text).unwrap();
    assert_eq!(view.project, "beta");
    let (_, text) = as_token(
        &app,
        &admin,
        "GET",
        "/pipelines/beta-secret?project=beta",
        None,
    )
    .await;
    let pipeline: rivet_protocol::http::PipelineView = serde_json::from_str(&text).unwrap();
    assert_eq!(pipeline.project, "beta");
    let r = as_token(&app, &admin, "GET", "/jobs?project=no-such", None).await;
    assert_not_found("admin", &r, "no project `no-such`");
    let (status, text) = as_token(&app, &admin, "GET", "/projects", None).await;
    assert_eq!(status, 200);
    let names: Vec<String> = serde_json::from_str::<Vec<rivet_protocol::http::ProjectView>>(&text)
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["alpha", "beta", "default"]);
    let (_, text) = as_token(&app, &admin, "GET", "/tokens", None).await;
    let tokens: Vec<TokenView> = serde_json::from_str(&text).unwrap();
    let project_of = |name: &str| {
        tokens
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.project.clone())
            .unwrap()
    };
    assert_eq!(project_of("admin"), None, "the admin token has no project");
    assert_eq!(project_of("a").as_deref(), Some("alpha"));
    app.stop().await;
}
