//! API-05: oversized and pathological definitions pushed through the API. The body cap answers
//! 413 before any parsing; whatever fits under it is checked in a lint worker under the
//! definition limits and refused with 422 naming the problem. Pushes never involve a runner:
//! nothing is queued, and after each refusal a normal push still works (the linter is not
//! wedged).

use crate::helpers::*;
use rivet_protocol::http::{ApiError, JobView, PipelineSummary, PipelineView};
use serde_json::json;
use std::time::{Duration, Instant};

const NORMAL: &str = r#"return {
  name = "normal",
  stages = { { name = "hello", script = function() log.info("hi") end } },
}"#;

/// How long one refusal may take (the definition limits are seconds; this is generous).
const PATIENCE: Duration = Duration::from_secs(60);

/// Pushes a raw body; returns the status and the error body.
async fn push_raw(app: &TestApp, body: Vec<u8>) -> (u16, ApiError) {
    let started = Instant::now();
    let response = app
        .http
        .post(app.url("/pipelines"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .timeout(PATIENCE)
        .body(body)
        .send()
        .await
        .expect("the orchestrator answers (it must not drop the connection without a response)");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let error: ApiError = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("status {status}: the body is not a JSON ApiError ({e}): {text:.300}")
    });
    assert!(started.elapsed() < PATIENCE);
    (status, error)
}

async fn push_source(app: &TestApp, source: &str) -> (u16, ApiError) {
    let body = serde_json::to_vec(&json!({"source": source, "file_name": "hostile.lua"})).unwrap();
    push_raw(app, body).await
}

/// A normal definition still goes through, as version `version`.
async fn normal_push_works(app: &TestApp, version: i32, after: &str) {
    let r = app.post("/pipelines", json!({"source": NORMAL})).await;
    assert_eq!(r.status(), 201, "a normal push after {after}");
    let v: PipelineView = r.json().await.unwrap();
    assert_eq!(
        (v.name.as_str(), v.version),
        ("normal", version),
        "after {after}"
    );
}

fn problems(e: &ApiError) -> String {
    e.problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A 422 whose problems mention `needle`.
fn assert_invalid(case: &str, (status, error): &(u16, ApiError), needle: &str) {
    assert_eq!(*status, 422, "{case}: {error:?}");
    assert_eq!(error.code, "invalid_definition", "{case}");
    let text = problems(error);
    assert!(
        text.contains(needle),
        "{case}: expected `{needle}` in: {text:.500}"
    );
}

fn assert_too_large(case: &str, (status, error): &(u16, ApiError)) {
    assert_eq!(*status, 413, "{case}: {error:?}");
    assert_eq!(error.code, "payload_too_large", "{case}");
    assert!(error.message.contains("2097152 bytes"), "{case}: {error:?}");
}

#[tokio::test]
async fn api_05_pathological_sources_are_refused_and_the_linter_keeps_working() {
    let app = spawn_app().await;
    let mut version = 1;
    normal_push_works(&app, version, "nothing").await;
    const SIZE_LIMIT: &str = "over the limit of 1048576 bytes (`limits.max_source`)";

    // A 100 MB body: over the API's body cap, refused before it is parsed.
    let mut huge = b"{\"source\": \"".to_vec();
    huge.resize(huge.len() + (100 << 20), b'x');
    huge.extend_from_slice(b"\"}");
    assert_too_large("a 100 MB body", &push_raw(&app, huge).await);
    version += 1;
    normal_push_works(&app, version, "a 100 MB body").await;

    // `return ((((…1…))))` nested 10^6 deep: 2 MB of source, under the body cap but over
    // `max_source`, so it never reaches the parser.
    let deep = |n: usize| format!("return {}1{}", "(".repeat(n), ")".repeat(n));
    let r = push_source(&app, &deep(1_000_000)).await;
    assert_invalid("nesting 10^6 deep", &r, SIZE_LIMIT);
    version += 1;
    normal_push_works(&app, version, "nesting 10^6 deep").await;
    // Deep enough to break a recursive parser, small enough to be parsed: Lua's own nesting
    // limit answers, inside the lint worker.
    let r = push_source(&app, &deep(200_000)).await;
    assert_invalid("nesting 2*10^5 deep", &r, "C stack overflow");
    version += 1;
    normal_push_works(&app, version, "nesting 2*10^5 deep").await;

    // String literals: 50 MB is over the body cap (413); 1.5 MB fits the body but not
    // `max_source` (422: a definition rule, reported like `rivet lint` reports it).
    let literal = |n: usize| {
        format!(
            "return {{ name = \"big\", description = \"{}\" }}",
            "A".repeat(n)
        )
    };
    let body = serde_json::to_vec(&json!({"source": literal(50 << 20)})).unwrap();
    assert_too_large("a 50 MB string literal", &push_raw(&app, body).await);
    version += 1;
    normal_push_works(&app, version, "a 50 MB string literal").await;
    let r = push_source(&app, &literal(1_500_000)).await;
    assert_invalid("a 1.5 MB string literal", &r, SIZE_LIMIT);
    version += 1;
    normal_push_works(&app, version, "a 1.5 MB string literal").await;

    // 10^6 locals (`local a,a,…`, 2 bytes each): over `max_source`. 10^5 fit it, and Lua's
    // limit of 200 locals per function answers.
    let locals = |n: usize| {
        format!(
            "local {}a\nreturn {{ name = \"x\", stages = {{}} }}",
            "a,".repeat(n - 1)
        )
    };
    let r = push_source(&app, &locals(1_000_000)).await;
    assert_invalid("10^6 locals", &r, SIZE_LIMIT);
    version += 1;
    normal_push_works(&app, version, "10^6 locals").await;
    let r = push_source(&app, &locals(100_000)).await;
    assert_invalid("10^5 locals", &r, "too many local variables");
    version += 1;
    normal_push_works(&app, version, "10^5 locals").await;

    // Nothing was stored or queued: only the normal pipeline exists, no job, no outbox row.
    let pipelines: Vec<PipelineSummary> = app.get("/pipelines").await.json().await.unwrap();
    let names: Vec<(&str, i32)> = pipelines
        .iter()
        .map(|p| (p.name.as_str(), p.latest_version))
        .collect();
    assert_eq!(names, [("normal", version)]);
    let jobs: Vec<JobView> = app.get("/jobs").await.json().await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
    let mut db = app.db().await;
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(queued, 0, "a push queues nothing");
    app.stop().await;
}
