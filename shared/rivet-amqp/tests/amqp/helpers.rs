//! Shared test harness: a broker under a unique namespace, sample messages, bounded waits.

use rivet_amqp::{AmqpError, Broker, Incoming, Message, QueueStats, Subscription, Topology};
use rivet_protocol::messages::{JobDispatch, ReportBody, RunnerReport};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// The broker the tests use (`RIVET_TEST_AMQP_URL` overrides).
pub fn amqp_url() -> String {
    std::env::var("RIVET_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// How long any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker under a fresh namespace whose topology is deleted at the end of the test: by
/// [`TestBroker::cleanup`], or on drop when the test panicked, so a failing test leaves nothing
/// durable behind either.
#[derive(Debug)]
pub struct TestBroker {
    broker: Option<Broker>,
    class_keys: Vec<String>,
}

impl std::ops::Deref for TestBroker {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        self.broker
            .as_ref()
            .expect("the broker lives until cleanup")
    }
}

impl TestBroker {
    /// Deletes the topology (and the classes named at connect), failing the test if it cannot.
    pub async fn cleanup(mut self) {
        let broker = self.broker.take().expect("cleanup runs once");
        let keys: Vec<&str> = self.class_keys.iter().map(String::as_str).collect();
        broker
            .delete_topology(&keys)
            .await
            .unwrap_or_else(|err| panic!("cleanup failed: {}", chain(&err)));
        broker.close().await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let Some(broker) = self.broker.take() else {
            return;
        };
        let topology = broker.topology().clone();
        let class_keys = std::mem::take(&mut self.class_keys);
        drop(broker);
        // Drop cannot await, and this thread may be inside the test's runtime: clean up from a
        // thread with a runtime of its own.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async move {
                let Ok(broker) = Broker::connect(&amqp_url(), topology, WAIT).await else {
                    return;
                };
                let keys: Vec<&str> = class_keys.iter().map(String::as_str).collect();
                let _ = broker.delete_topology(&keys).await;
                broker.close().await;
            });
        });
        let _ = cleaner.join();
    }
}

/// Connects under a fresh namespace, failing loudly (never skipping) when RabbitMQ is not there.
/// `class_keys` are the classes the test declares, deleted with the topology.
pub async fn connect(class_keys: &[&str]) -> TestBroker {
    let topology = Topology::new(&format!("rivet-test-{}", Uuid::new_v4()));
    match Broker::connect(&amqp_url(), topology, Duration::from_secs(5)).await {
        Ok(broker) => TestBroker {
            broker: Some(broker),
            class_keys: class_keys.iter().map(|k| k.to_string()).collect(),
        },
        Err(err) => panic!(
            "RabbitMQ is needed for these tests and is not reachable: {}\n\
             hint: start it with `scripts/services.sh rabbitmq` (or `rabbitmq-server -detached`), \
             or point RIVET_TEST_AMQP_URL at one",
            chain(&err)
        ),
    }
}

/// The error and its causes on one line, as operators see them.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A job for `class_key`.
pub fn job(class_key: &str, attempt: u32) -> JobDispatch {
    JobDispatch {
        schema: rivet_protocol::SCHEMA_VERSION,
        job_id: Uuid::new_v4(),
        attempt,
        pipeline: "build".into(),
        pipeline_version: 3,
        file_name: "pipeline.lua".into(),
        source: "return { name = 'build', stages = {} }".into(),
        inputs: BTreeMap::from([("branch".into(), "main".into())]),
        class_key: class_key.into(),
        requires: vec!["process".into()],
        timeout_ms: None,
    }
}

/// A report.
pub fn report(job_id: Uuid) -> RunnerReport {
    RunnerReport {
        schema: rivet_protocol::SCHEMA_VERSION,
        job_id,
        attempt: 1,
        runner_id: "runner-1".into(),
        token: "0123456789abcdef0123456789abcdef".into(),
        session_mac: String::new(),
        body: ReportBody::StageStarted {
            index: 0,
            name: "checkout".into(),
            timeout_ms: 60_000,
        },
    }
}

/// Awaits `fut` for at most [`WAIT`], panicking with `what` when it takes longer.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// The next message of a subscription, which must come within [`WAIT`].
pub async fn recv<M: Message>(sub: &mut Subscription<M>) -> Incoming<M> {
    match within("a delivery", sub.next()).await {
        Some(Ok(incoming)) => incoming,
        Some(Err(err)) => panic!("subscription failed: {}", chain(&err)),
        None => panic!("subscription ended while a message was expected"),
    }
}

/// Waits until the broker reports `expected` for `queue`. Acks and rejects have no reply in
/// AMQP, so counts they change settle shortly after the call returns.
pub async fn wait_for_stats(broker: &Broker, queue: &str, expected: QueueStats) {
    let mut last = None;
    let poll = async {
        loop {
            last = broker.queue_stats(queue).await.expect("queue stats");
            if last == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(WAIT, poll).await.is_err() {
        panic!("queue `{queue}` never reached {expected:?}; last seen {last:?}");
    }
}

/// Asserts `result` is an unroutable-message error.
pub fn assert_unroutable(result: Result<(), AmqpError>) {
    match result {
        Err(AmqpError::Unroutable { reply_code, .. }) => assert_eq!(reply_code, 312),
        other => panic!("expected an unroutable error, got {other:?}"),
    }
}

/// A raw lapin channel on a connection of its own, to look at what is on the wire.
pub async fn raw_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw lapin connection");
    let channel = conn.create_channel().await.expect("raw channel");
    (conn, channel)
}

/// Takes the next message of `queue` (no ack needed), which must be there.
pub async fn get(channel: &lapin::Channel, queue: &str) -> lapin::message::Delivery {
    channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .unwrap_or_else(|| panic!("queue `{queue}` is empty"))
        .delivery
}
