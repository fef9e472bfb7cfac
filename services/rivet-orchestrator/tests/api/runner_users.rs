//! API-03, the broker's half: each runner connects with a RabbitMQ user of its own, made by the
//! orchestrator when it joins. That user may consume only the class queues its registration's
//! labels cover and publish only reports (which RabbitMQ stamps with it); revoking the
//! registration deletes it, closing the runner's connection.

use crate::helpers::*;
use crate::PIPELINE;
use rivet_amqp::{AmqpError, Broker};
use rivet_protocol::http::{JobView, RunnerSession};
use rivet_protocol::messages::{JobDispatch, RunnerReport};
use rivet_protocol::topology::Topology;
use serde_json::json;
use std::time::Duration;

const EU_PIPELINE: &str = r#"return {
  name = "eu-only",
  requires = {"process", "label:region=eu"},
  stages = { { name = "s", script = function() end } },
}"#;

const EU_FS_PIPELINE: &str = r#"return {
  name = "eu-files",
  requires = {"process", "filesystem", "label:region=eu"},
  stages = { { name = "s", script = function() end } },
}"#;

async fn submit(app: &TestApp, source: &str, name: &str, inputs: serde_json::Value) -> JobView {
    let r = app.post("/pipelines", json!({ "source": source })).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = app
        .post(
            &format!("/pipelines/{name}/runs"),
            json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// Takes the next job of `class_key` and checks it is `job` (no lease: these tests are about
/// the broker).
async fn take(broker: &Broker, class_key: &str, job: &JobView) {
    next_job(broker, class_key, job).await.ack().await.unwrap();
}

fn refused(result: Result<impl std::fmt::Debug, AmqpError>, what: &str) -> String {
    let err = result.expect_err(what);
    format!("{err:#} {:?}", std::error::Error::source(&err))
}

fn user(session: &RunnerSession) -> &str {
    &session
        .broker
        .as_ref()
        .expect("managed broker users")
        .username
}

#[tokio::test]
async fn api_03_a_runners_broker_user_may_do_only_a_runners_work() {
    let app = spawn_app().await;
    let anyone = submit(&app, PIPELINE, "hello-fleet", json!({"n": "1"})).await;
    let eu_only = submit(&app, EU_PIPELINE, "eu-only", json!({})).await;
    let (_, eu) = app
        .register_runner("eu-runner", json!({"region": "eu"}))
        .await;
    let (_, plain) = app.register_runner("plain-runner", json!({})).await;
    let prefix = Topology::new(&app.namespace).runner_broker_user_prefix();
    assert!(user(&eu).starts_with(&prefix), "{}", user(&eu));
    assert_ne!(user(&eu), user(&plain));
    let eu_broker = testing::runner_broker(&app.namespace, &eu).await;
    let plain_broker = testing::runner_broker(&app.namespace, &plain).await;
    let t = eu_broker.topology().clone();

    // The labelled runner takes the labelled job; the other may not even read its queue.
    take(&eu_broker, &eu_only.class_key, &eu_only).await;
    let err = refused(
        plain_broker
            .consume::<JobDispatch>(&t.class_queue(&eu_only.class_key), 1, "x")
            .await,
        "a runner without the label reads the labelled class queue",
    );
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    take(&plain_broker, &anyone.class_key, &anyone).await;

    // No forged jobs (jobs exchange, or any queue through the default exchange), no reading of
    // other runners' reports.
    let err = refused(
        plain_broker
            .publish_raw(&t.jobs_exchange(), &anyone.class_key, b"{}")
            .await,
        "a runner publishes a job",
    );
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    let err = refused(
        plain_broker
            .publish_raw("", &t.class_queue(&anyone.class_key), b"{}")
            .await,
        "a runner publishes through the default exchange",
    );
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    let err = refused(
        plain_broker
            .consume::<RunnerReport>(&t.reports_queue(), 1, "x")
            .await,
        "a runner reads the reports queue",
    );
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    // A report claiming another broker user: RabbitMQ refuses it.
    let err = refused(
        plain_broker
            .publish_raw_as(&t.reports_exchange(), &t.reports_queue(), b"{}", user(&eu))
            .await,
        "a runner publishes as another user",
    );
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");

    // A class that appears later is granted to the runners whose labels cover it before it is
    // announced (the helper consumes on the announcement).
    let later = submit(&app, EU_FS_PIPELINE, "eu-files", json!({})).await;
    take(&eu_broker, &later.class_key, &later).await;
    let err = refused(
        plain_broker
            .consume::<JobDispatch>(&t.class_queue(&later.class_key), 1, "x")
            .await,
        "a runner without the label reads a later labelled class queue",
    );
    assert!(err.contains("ACCESS_REFUSED"), "{err}");

    // Revoked: its user is deleted, its connection closed, its password useless.
    let r = app
        .http
        .delete(app.url("/runners/registrations/plain-runner"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), plain_broker.disconnected())
        .await
        .expect("revoking closes the runner's broker connection");
    assert!(!plain_broker.is_connected());
    let creds = plain.broker.as_ref().unwrap();
    let url = rivet_amqp::with_credentials(AMQP, &creds.username, &creds.password).unwrap();
    let err = refused(
        Broker::connect_client(&url, t.clone(), Duration::from_secs(5)).await,
        "a revoked runner's broker user logs in",
    );
    assert!(
        err.contains("refused") || err.contains("ACCESS_REFUSED"),
        "{err}"
    );

    // Joining again replaces the session's password and closes the earlier connection.
    let (token, first) = app.register_runner("again", json!({})).await;
    let first_broker = testing::runner_broker(&app.namespace, &first).await;
    // The first process is gone (its presence expires); another joins with the token.
    let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
        .await
        .unwrap();
    let keys = rivet_protocol::redis_keys::Keys::new(&app.namespace);
    let _: () = redis::AsyncCommands::del(&mut redis, keys.runner("again"))
        .await
        .unwrap();
    let second: RunnerSession = join(&app, &token).await;
    assert_eq!(user(&first), user(&second));
    tokio::time::timeout(Duration::from_secs(10), first_broker.disconnected())
        .await
        .expect("a new session closes the earlier session's connection");
    assert!(!first_broker.is_connected());
    let second_broker = testing::runner_broker(&app.namespace, &second).await;
    assert!(second_broker.is_connected());

    eu_broker.close().await;
    second_broker.close().await;
    app.stop().await;
}

/// Joins as a runner with `token`.
async fn join(app: &TestApp, token: &str) -> RunnerSession {
    let r = app
        .http
        .post(app.url("/runners/register"))
        .bearer_auth(token)
        .json(&json!({"capabilities": ["process"], "slots": 1, "version": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// A Redis connection as `user`.
async fn redis_as(
    user: &rivet_protocol::http::Credentials,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(REDIS).unwrap();
    info.redis.username = Some(user.username.clone());
    info.redis.password = Some(user.password.clone());
    redis::Client::open(info)?
        .get_multiplexed_async_connection()
        .await
}

/// Runs `cmd` and returns Redis's error text, panicking when it succeeds.
async fn noperm(conn: &mut redis::aio::MultiplexedConnection, cmd: &redis::Cmd, what: &str) {
    let result: redis::RedisResult<redis::Value> = cmd.query_async(conn).await;
    let err = result.expect_err(what);
    assert!(err.to_string().contains("NOPERM"), "{what}: {err}");
}

#[tokio::test]
async fn a_runners_redis_user_may_touch_only_what_a_runner_does() {
    let app = spawn_app().await;
    let (_, a) = app.register_runner("runner-a", json!({})).await;
    let _ = app.register_runner("runner-b", json!({})).await;
    let user = a.redis.clone().expect("managed Redis users");
    assert!(user
        .username
        .starts_with(&rivet_protocol::redis_keys::Keys::new(&app.namespace).runner_user_prefix()));
    let keys = rivet_protocol::redis_keys::Keys::new(&app.namespace);
    let mut conn = redis_as(&user)
        .await
        .expect("the runner's Redis user logs in");
    let job = uuid::Uuid::new_v4();

    // What a runner does: leases, its own presence, fences and classes read, the lease scripts.
    let _: () = redis::cmd("SET")
        .arg(keys.lease(job))
        .arg("runner-a:1:t")
        .arg("PX")
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let held: Option<String> = redis::cmd("GET")
        .arg(keys.lease(job))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held.as_deref(), Some("runner-a:1:t"));
    let _: () = redis::cmd("SET")
        .arg(keys.runner("runner-a"))
        .arg("{}")
        .arg("PX")
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: Option<String> = redis::cmd("GET")
        .arg(keys.fence(job))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.classes())
        .query_async(&mut conn)
        .await
        .unwrap();
    let renewed: i64 = redis::Script::new("return redis.call('PEXPIRE', KEYS[1], ARGV[1])")
        .key(keys.lease(job))
        .arg(5000)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(renewed, 1);

    // What it may not: another runner's presence, fences, the epoch, another namespace, the
    // server, and the same through a script.
    noperm(
        &mut conn,
        redis::cmd("SET").arg(keys.runner("runner-b")).arg("{}"),
        "another runner's presence",
    )
    .await;
    noperm(
        &mut conn,
        redis::cmd("SET").arg(keys.fence(job)).arg("1"),
        "a fence",
    )
    .await;
    noperm(
        &mut conn,
        redis::cmd("HSET").arg(keys.classes()).arg("k").arg("[]"),
        "the class table",
    )
    .await;
    noperm(
        &mut conn,
        redis::cmd("SET").arg(keys.epoch()).arg("1"),
        "the epoch",
    )
    .await;
    noperm(
        &mut conn,
        redis::cmd("GET").arg(format!("other{}", keys.lease(job))),
        "another namespace",
    )
    .await;
    noperm(&mut conn, &redis::cmd("FLUSHALL"), "FLUSHALL").await;
    noperm(&mut conn, redis::cmd("KEYS").arg("*"), "KEYS").await;
    noperm(
        &mut conn,
        redis::cmd("CONFIG").arg("GET").arg("*"),
        "CONFIG",
    )
    .await;
    noperm(&mut conn, redis::cmd("EVAL").arg("return 1").arg(0), "EVAL").await;
    let sneaky: redis::RedisResult<redis::Value> =
        redis::Script::new("return redis.call('SET', KEYS[1], '1')")
            .key(keys.fence(job))
            .invoke_async(&mut conn)
            .await;
    let err = sneaky.expect_err("a script writes a fence");
    assert!(
        err.to_string().to_lowercase().contains("permission") || err.to_string().contains("NOPERM"),
        "{err}"
    );

    // Redis lost the user (a restart without an ACL file): the reaper makes it again, with the
    // same password.
    let mut admin = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user.username)
        .query_async(&mut admin)
        .await
        .unwrap();
    let back = async {
        loop {
            if redis_as(&user).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), back)
        .await
        .expect("the reaper makes a lost runner user again");

    // Revoked: the user is deleted and can no longer log in.
    let r = app
        .http
        .delete(app.url("/runners/registrations/runner-a"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let err = redis_as(&user)
        .await
        .map(|_| ())
        .expect_err("a revoked runner's Redis user logs in");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("authentication failed"),
        "{err}"
    );
    app.stop().await;
}
