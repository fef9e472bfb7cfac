//! The dashboard page: served without a token (it holds no data), with a strict content
//! security policy, and every field it renders is present in the API answers it polls.

use crate::helpers::spawn_app;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_and_the_api_it_polls_answers_what_it_reads() {
    let app = spawn_app().await;
    let page = app
        .http
        .get(format!("{}/dashboard", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(header("content-security-policy").contains("default-src 'none'"));
    assert!(header("content-security-policy").contains("connect-src 'self'"));
    assert_eq!(header("x-frame-options"), "DENY");
    let html = page.text().await.unwrap();
    for needle in [
        "api(\"/queues\")",
        "api(\"/runners\")",
        "api(\"/jobs?limit=30\")",
        "textContent",
        "sessionStorage",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}");
    }
    assert!(!html.contains("innerHTML"), "the page renders text only");

    // Something to show: a pipeline and a queued job (no runner: it waits).
    let pushed = app
        .post(
            "/pipelines",
            json!({"source": "return { name = 'dash', requires = {'process'}, stages = { { name = 'a', script = function() end } } }"}),
        )
        .await;
    assert_eq!(pushed.status(), 201);
    assert_eq!(
        app.post("/pipelines/dash/runs", json!({})).await.status(),
        201
    );

    let queues: Vec<Value> = app.get("/queues").await.json().await.unwrap();
    let q = &queues[0];
    for key in ["class_key", "requires", "depth", "consumers"] {
        assert!(q.get(key).is_some(), "queues lack {key}: {q}");
    }
    assert_eq!(q["schedulability"]["schedulable"], false);
    assert!(q["schedulability"]["reason"].is_string());
    let jobs: Vec<Value> = app.get("/jobs?limit=30").await.json().await.unwrap();
    let j = &jobs[0];
    for key in [
        "id",
        "pipeline",
        "pipeline_version",
        "state",
        "attempt",
        "created_at_ms",
    ] {
        assert!(j.get(key).is_some(), "jobs lack {key}: {j}");
    }
    assert!(j["schedulability"]["reason"].is_string());
    // A runner that registered (its presence record is written by the registration).
    let (_, session) = app
        .register_runner("dash-runner", json!({"region": "eu"}))
        .await;
    let runners: Vec<Value> = app.get("/runners").await.json().await.unwrap();
    let r = &runners[0];
    for key in [
        "id",
        "status",
        "running",
        "slots",
        "capabilities",
        "labels",
        "registration",
        "last_seen_ms",
    ] {
        assert!(r.get(key).is_some(), "runners lack {key}: {r}");
    }
    assert_eq!(r["labels"], json!({"region": "eu"}));
    assert_eq!(r["registration"], json!(session.registration_id));
    // Without a token the API the page polls refuses, and the page shows that error.
    let refused = app.http.get(app.url("/queues")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    app.stop().await;
}
