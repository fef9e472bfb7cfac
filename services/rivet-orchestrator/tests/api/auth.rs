//! API-01, the part that exists: one table over every route of the router. Without a token, or
//! with a wrong or revoked one, every `/api/v1` route answers 401; a non-admin token gets 403 on
//! admin routes and through on the others. The table is checked against the routes spelled in
//! `src/api/mod.rs`, so a new route without a row fails this test.
//! The one route for runners (`POST /runners/register`) takes a runner token and no API token;
//! a runner token opens no other route (API-02).
//! Per-project scopes do not exist (there are no projects): see `docs/security.md`.

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
    let r = app
        .http
        .delete(app.url(&format!("/tokens/{}", revoked.id)))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
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
