//! The client against a one-shot fake HTTP server: the requests it sends, and how it reads
//! answers and failures. The real orchestrator is exercised by the CLI's end-to-end tests.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

/// What the fake server received.
#[derive(Debug)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves one request with `status`, `content_type` and `body`, then reports what it got.
fn serve_once(status: &str, content_type: &str, body: &str) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        reader.get_mut().write_all(response.as_bytes()).unwrap();
        tx.send(Seen {
            request_line: request_line.trim_end().to_owned(),
            headers,
            body: String::from_utf8(body).unwrap(),
        })
        .unwrap();
    });
    (base, rx)
}

#[tokio::test]
async fn an_error_answer_keeps_the_orchestrators_body() {
    let (base, seen) = serve_once(
        "422 Unprocessable Entity",
        "application/json",
        r#"{"code":"invalid_inputs","message":"1 input error(s)","fields":[{"field":"n","message":"is required"}]}"#,
    );
    let client = Client::new(&base, "tok-123").unwrap();
    let run = CreateRun {
        inputs: [("who".to_owned(), "me".to_owned())].into(),
        version: Some(2),
    };
    let err = client.create_run("hello", &run).await.unwrap_err();
    let seen = seen.recv().unwrap();
    assert_eq!(
        seen.request_line,
        "POST /api/v1/pipelines/hello/runs HTTP/1.1"
    );
    assert_eq!(seen.header("authorization"), Some("Bearer tok-123"));
    let sent: CreateRun = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(sent, run);

    assert_eq!(err.status(), Some(422));
    assert!(err.has_code("invalid_inputs"));
    let body = err.api().unwrap();
    assert_eq!(body.fields.len(), 1);
    assert_eq!(
        (
            body.fields[0].field.as_str(),
            body.fields[0].message.as_str()
        ),
        ("n", "is required")
    );
    assert_eq!(err.to_string(), "1 input error(s) (422 invalid_inputs)");
}

#[tokio::test]
async fn an_answer_that_is_not_an_api_error_becomes_one() {
    let (base, _seen) = serve_once("502 Bad Gateway", "text/html", "<h1>Bad Gateway</h1>\n");
    let err = Client::new(&base, "t")
        .unwrap()
        .pipelines()
        .await
        .unwrap_err();
    assert_eq!(
        err.api(),
        Some(&ApiError {
            code: "http_502".into(),
            message: "<h1>Bad Gateway</h1>".into(),
            fields: Vec::new(),
            problems: Vec::new(),
        })
    );

    let (base, _seen) = serve_once("503 Service Unavailable", "text/plain", "");
    let err = Client::new(&base, "t")
        .unwrap()
        .runners()
        .await
        .unwrap_err();
    assert_eq!(err.api().unwrap().message, "HTTP 503 Service Unavailable");
}

#[tokio::test]
async fn a_success_with_an_unknown_body_is_a_decode_error() {
    let (base, _seen) = serve_once("200 OK", "text/html", "<html>hello</html>");
    let err = Client::new(&base, "t").unwrap().queues().await.unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("unexpected answer to GET "),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_orchestrator_is_named_by_its_url() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let err = Client::new(&base, "t")
        .unwrap()
        .pipelines()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot reach the orchestrator at {base}")
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
}

#[tokio::test]
async fn a_name_is_one_path_segment_under_any_prefix() {
    let (base, seen) = serve_once(
        "404 Not Found",
        "application/json",
        "{\"code\":\"not_found\",\"message\":\"no pipeline\"}",
    );
    let client = Client::new(&format!("{base}/rivet/"), "t").unwrap();
    let err = client.pipeline("a/b?c", Some(2)).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(
        seen.recv().unwrap().request_line,
        "GET /rivet/api/v1/pipelines/a%2Fb%3Fc?version=2 HTTP/1.1"
    );
}

#[tokio::test]
async fn job_filters_and_log_positions_are_query_parameters() {
    let (base, seen) = serve_once("200 OK", "application/json", "[]");
    let client = Client::new(&base, "t").unwrap();
    let filter = JobFilter {
        state: Some(JobState::TimedOut),
        pipeline: Some("build".into()),
        limit: Some(5),
    };
    assert!(client.jobs(&filter).await.unwrap().is_empty());
    assert_eq!(
        seen.recv().unwrap().request_line,
        "GET /api/v1/jobs?state=timed_out&pipeline=build&limit=5 HTTP/1.1"
    );

    let (base, seen) = serve_once(
        "200 OK",
        "application/json",
        r#"{"attempt":2,"lines":[],"next_after":null,"complete":true}"#,
    );
    let client = Client::new(&base, "t").unwrap();
    let id = Uuid::nil();
    let page = client
        .logs(
            id,
            &LogQuery {
                attempt: Some(2),
                after: Some(41),
                limit: None,
            },
        )
        .await
        .unwrap();
    assert!(page.complete && page.lines.is_empty());
    assert_eq!(
        seen.recv().unwrap().request_line,
        format!("GET /api/v1/jobs/{id}/logs?attempt=2&after=41 HTTP/1.1")
    );
}

#[tokio::test]
async fn readiness_is_an_answer_even_when_not_ready() {
    let (base, seen) = serve_once(
        "503 Service Unavailable",
        "application/json",
        r#"{"postgres":true,"redis":false,"rabbitmq":true}"#,
    );
    let ready = Client::new(&base, "t").unwrap().readyz().await.unwrap();
    assert!(!ready.ready);
    assert_eq!(ready.components.get("redis"), Some(&false));
    let seen = seen.recv().unwrap();
    assert_eq!(seen.request_line, "GET /readyz HTTP/1.1");
    assert_eq!(
        seen.header("authorization"),
        None,
        "health checks carry no token"
    );
}

#[test]
fn unusable_urls_and_tokens_are_refused_up_front() {
    for url in [
        "127.0.0.1:8080",
        "ftp://host/",
        "https://host/",
        "not a url",
        "data:text/plain,x",
    ] {
        let err = Client::new(url, "t").unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
    }
    for token in ["", "two words", "new\nline"] {
        let err = Client::new("http://127.0.0.1:1", token).unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidToken),
            "{token:?}: {err:?}"
        );
    }
}

#[test]
fn debug_output_never_shows_the_token() {
    let client = Client::new("http://127.0.0.1:8080", "super-secret-token").unwrap();
    let shown = format!("{client:?}");
    assert!(!shown.contains("super-secret"), "{shown}");
    assert!(shown.contains("127.0.0.1:8080"), "{shown}");
}
