//! rivet-amqp against the real RabbitMQ (`scripts/services.sh rabbitmq` starts it). Each test
//! works under its own namespace and deletes its topology at the end, so tests run in parallel.

mod helpers;

use helpers::*;
use lapin::types::AMQPValue;
use rivet_amqp::{AmqpError, Broker, QueueStats, Topology};
use rivet_protocol::messages::{ClassAnnounce, JobDispatch, RunnerReport};
use rivet_protocol::topology::REASON_HEADER;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_job_arrives_on_its_class_queue_with_its_properties() {
    let broker = connect(&["process"]).await;
    let t = broker.topology().clone();
    broker.declare_class("process").await.unwrap();
    broker
        .declare_class("process")
        .await
        .expect("declaring again is fine");

    let sent = job("process", 2);
    broker.publish_job(&sent).await.unwrap();
    let mut sub = broker
        .consume::<JobDispatch>(&t.class_queue("process"), 4, "runner-a")
        .await
        .unwrap();
    let got = recv(&mut sub).await;
    assert_eq!(got.message, sent);
    assert!(!got.redelivered);
    assert_eq!(got.reply_to.as_deref(), Some(t.reports_queue().as_str()));
    let message_id = format!("{}:2", sent.job_id);
    assert_eq!(got.message_id.as_deref(), Some(message_id.as_str()));
    assert_eq!(sub.consumer_tag(), "runner-a");
    got.ack().await.unwrap();
    wait_for_stats(
        &broker,
        &t.class_queue("process"),
        QueueStats {
            messages: 0,
            consumers: 1,
        },
    )
    .await;
    drop(sub);

    // The properties on the wire, read without this crate.
    let (conn, raw) = raw_channel().await;
    broker.publish_job(&job("process", 1)).await.unwrap();
    let delivery = get(&raw, &t.class_queue("process")).await;
    let p = &delivery.properties;
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("job-dispatch"));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        p.reply_to().as_ref().map(|s| s.as_str()),
        Some(t.reports_queue().as_str())
    );
    assert_eq!(delivery.exchange.as_str(), t.jobs_exchange());
    assert_eq!(delivery.routing_key.as_str(), "process");
    conn.close(200, "OK".into()).await.unwrap();

    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_routed_by_class_only() {
    let broker = connect(&["a", "b"]).await;
    let t = broker.topology().clone();
    broker.declare_class("a").await.unwrap();
    broker.declare_class("b").await.unwrap();

    let for_a = job("a", 1);
    let for_b = job("b", 1);
    broker.publish_job(&for_a).await.unwrap();
    broker.publish_job(&for_b).await.unwrap();

    // Queues are FIFO: had A's job reached B's queue, it would come first.
    let mut b = broker
        .consume::<JobDispatch>(&t.class_queue("b"), 10, "")
        .await
        .unwrap();
    let got = recv(&mut b).await;
    assert_eq!(got.message, for_b);
    got.ack().await.unwrap();
    let stats = broker.queue_stats(&t.class_queue("a")).await.unwrap();
    assert_eq!(
        stats,
        Some(QueueStats {
            messages: 1,
            consumers: 0
        })
    );
    let mut a = broker
        .consume::<JobDispatch>(&t.class_queue("a"), 10, "")
        .await
        .unwrap();
    assert_eq!(recv(&mut a).await.message, for_a);
    wait_for_stats(
        &broker,
        &t.class_queue("b"),
        QueueStats {
            messages: 0,
            consumers: 1,
        },
    )
    .await;

    drop((a, b));
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_goes_to_the_reply_queue_and_back() {
    let broker = connect(&["any"]).await;
    let t = broker.topology().clone();
    broker.declare_class("any").await.unwrap();
    broker.publish_job(&job("any", 1)).await.unwrap();
    let mut jobs = broker
        .consume::<JobDispatch>(&t.class_queue("any"), 1, "")
        .await
        .unwrap();
    let delivery = recv(&mut jobs).await;
    let reply_to = delivery.reply_to.clone().expect("jobs carry reply_to");

    let sent = report(delivery.message.job_id);
    broker.publish_report(&reply_to, &sent).await.unwrap();
    delivery.ack().await.unwrap();

    let mut reports = broker
        .consume::<RunnerReport>(&t.reports_queue(), 10, "orchestrator")
        .await
        .unwrap();
    let got = recv(&mut reports).await;
    assert_eq!(got.message, sent);
    assert!(!got.redelivered);
    got.ack().await.unwrap();

    // A report to a queue that does not exist is an error, not a lost report.
    assert_unroutable(
        broker
            .publish_report(&format!("{}.nowhere", t.namespace()), &sent)
            .await,
    );

    drop((jobs, reports));
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_consumption_goes_on() {
    let broker = connect(&["process"]).await;
    let t = broker.topology().clone();
    broker.declare_class("process").await.unwrap();

    let garbage: &[u8] = b"\xff\x00 not json at all";
    let wrong_shape: &[u8] = br#"{"schema":1,"hello":"world"}"#;
    let mut future = serde_json::to_value(job("process", 1)).unwrap();
    future["schema"] = 2.into();
    let schema_2 = serde_json::to_vec(&future).unwrap();
    for body in [garbage, wrong_shape, &schema_2] {
        broker
            .publish_raw(&t.jobs_exchange(), "process", body)
            .await
            .unwrap();
    }
    let good = job("process", 1);
    broker.publish_job(&good).await.unwrap();

    let mut sub = broker
        .consume::<JobDispatch>(&t.class_queue("process"), 10, "")
        .await
        .unwrap();
    let got = recv(&mut sub).await;
    assert_eq!(got.message, good, "the three poison messages are skipped");
    assert!(!got.redelivered);
    got.ack().await.unwrap();

    // All three sit in the dead-letter queue, body intact, reason attached; none was requeued.
    wait_for_stats(
        &broker,
        &t.dead_letter_queue(),
        QueueStats {
            messages: 3,
            consumers: 0,
        },
    )
    .await;
    wait_for_stats(
        &broker,
        &t.class_queue("process"),
        QueueStats {
            messages: 0,
            consumers: 1,
        },
    )
    .await;
    let (conn, raw) = raw_channel().await;
    let expected_reasons = [
        "undecodable message",
        "undecodable message",
        "schema version 2 is not supported",
    ];
    for (body, reason) in [garbage, wrong_shape, &schema_2]
        .into_iter()
        .zip(expected_reasons)
    {
        let dead = get(&raw, &t.dead_letter_queue()).await;
        assert_eq!(dead.data, body);
        let headers = dead.properties.headers().clone().expect("headers");
        let found = match headers.inner().get(REASON_HEADER) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("no {REASON_HEADER} header: {other:?}"),
        };
        assert!(
            found.contains(reason),
            "reason `{found}` should mention `{reason}`"
        );
        assert_eq!(*dead.properties.delivery_mode(), Some(2));
        assert_eq!(dead.routing_key.as_str(), t.class_queue("process"));
    }
    conn.close(200, "OK".into()).await.unwrap();

    // A message of another `type` is poison too, even if its body would decode: consume an
    // announcement queue as if it held jobs.
    let announcements = broker.subscribe_announcements().await.unwrap();
    let mut as_jobs = broker
        .consume::<JobDispatch>(announcements.queue(), 10, "")
        .await
        .unwrap();
    // The queue is auto-delete, so it stays only while `as_jobs` consumes it.
    announcements.cancel().await.unwrap();
    let announcement = ClassAnnounce {
        schema: 1,
        class_key: "process".into(),
        requires: vec!["process".into()],
    };
    broker.announce_class(&announcement).await.unwrap();
    let untyped = job("process", 1);
    broker
        .publish_raw(
            &t.control_exchange(),
            "",
            &serde_json::to_vec(&untyped).unwrap(),
        )
        .await
        .unwrap();
    let got = recv(&mut as_jobs).await;
    assert_eq!(got.message, untyped, "the announcement was skipped");
    got.ack().await.unwrap();
    let (conn, raw) = raw_channel().await;
    let dead = get(&raw, &t.dead_letter_queue()).await;
    let headers = dead.properties.headers().clone().expect("headers");
    assert!(
        matches!(headers.inner().get(REASON_HEADER), Some(AMQPValue::LongString(s))
            if String::from_utf8_lossy(s.as_bytes()).contains("message type `class-announce`")),
        "{headers:?}"
    );
    assert_eq!(
        dead.properties.kind().as_ref().map(|k| k.as_str()),
        Some("class-announce"),
        "the original properties are kept"
    );
    conn.close(200, "OK".into()).await.unwrap();

    drop(sub);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_count_ready_messages_and_consumers() {
    let broker = connect(&["stats"]).await;
    let t = broker.topology().clone();
    let queue = t.class_queue("stats");
    assert_eq!(broker.queue_stats(&queue).await.unwrap(), None);
    assert_eq!(
        broker
            .queue_stats(&format!("{}.never-declared", t.namespace()))
            .await
            .unwrap(),
        None
    );

    broker.declare_class("stats").await.unwrap();
    assert_eq!(
        broker.queue_stats(&queue).await.unwrap(),
        Some(QueueStats {
            messages: 0,
            consumers: 0
        })
    );
    for _ in 0..3 {
        broker.publish_job(&job("stats", 1)).await.unwrap();
    }
    assert_eq!(
        broker.queue_stats(&queue).await.unwrap(),
        Some(QueueStats {
            messages: 3,
            consumers: 0
        }),
        "a confirmed publish is counted at once"
    );

    // Prefetch 1: one message goes out unacked, two stay ready.
    let mut first = broker
        .consume::<JobDispatch>(&queue, 1, "one")
        .await
        .unwrap();
    let mut second = broker
        .consume::<JobDispatch>(&queue, 1, "two")
        .await
        .unwrap();
    let a = recv(&mut first).await;
    let b = recv(&mut second).await;
    wait_for_stats(
        &broker,
        &queue,
        QueueStats {
            messages: 1,
            consumers: 2,
        },
    )
    .await;
    a.ack().await.unwrap();
    b.ack().await.unwrap();
    // The third message went to one of them on the ack; closing the channels gives it back.
    drop((first, second, a, b));
    wait_for_stats(
        &broker,
        &queue,
        QueueStats {
            messages: 1,
            consumers: 0,
        },
    )
    .await;

    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_and_requeued_job_comes_back_marked_redelivered() {
    let broker = connect(&["retry"]).await;
    let t = broker.topology().clone();
    broker.declare_class("retry").await.unwrap();
    let sent = job("retry", 1);
    broker.publish_job(&sent).await.unwrap();
    let mut sub = broker
        .consume::<JobDispatch>(&t.class_queue("retry"), 1, "")
        .await
        .unwrap();

    let first = recv(&mut sub).await;
    assert!(!first.redelivered);
    first.reject(true).await.unwrap();
    assert!(
        matches!(first.ack().await, Err(AmqpError::AckUnusable { .. })),
        "a settled delivery cannot be settled again"
    );

    let again = recv(&mut sub).await;
    assert_eq!(again.message, sent);
    assert!(again.redelivered);
    again.reject(false).await.unwrap();

    // Rejected without requeue: dead-lettered by the queue itself, not lost.
    wait_for_stats(
        &broker,
        &t.dead_letter_queue(),
        QueueStats {
            messages: 1,
            consumers: 0,
        },
    )
    .await;
    wait_for_stats(
        &broker,
        &t.class_queue("retry"),
        QueueStats {
            messages: 0,
            consumers: 1,
        },
    )
    .await;

    drop(sub);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_deliveries_and_gives_unacked_messages_back() {
    let broker = connect(&["busy"]).await;
    let t = broker.topology().clone();
    let queue = t.class_queue("busy");
    broker.declare_class("busy").await.unwrap();
    let jobs: Vec<JobDispatch> = (0..3).map(|_| job("busy", 1)).collect();
    for j in &jobs {
        broker.publish_job(j).await.unwrap();
    }

    let mut sub = broker
        .consume::<JobDispatch>(&queue, 10, "runner")
        .await
        .unwrap();
    let taken = recv(&mut sub).await;
    assert_eq!(taken.message, jobs[0]);
    // The other two are prefetched by now (3 delivered, none ready).
    wait_for_stats(
        &broker,
        &queue,
        QueueStats {
            messages: 0,
            consumers: 1,
        },
    )
    .await;

    within("cancel", sub.cancel()).await.unwrap();
    // The buffered two are back in the queue; the one taken is still held.
    wait_for_stats(
        &broker,
        &queue,
        QueueStats {
            messages: 2,
            consumers: 0,
        },
    )
    .await;
    assert!(
        within("the end of the subscription", sub.next())
            .await
            .is_none(),
        "a cancelled subscription delivers nothing more"
    );
    sub.cancel().await.expect("cancelling twice is fine");

    // New jobs stay in the queue.
    broker.publish_job(&job("busy", 1)).await.unwrap();
    assert_eq!(
        broker.queue_stats(&queue).await.unwrap(),
        Some(QueueStats {
            messages: 3,
            consumers: 0
        })
    );

    // An Incoming keeps its channel open: it can still be settled after its subscription is gone.
    drop(sub);
    taken.reject(true).await.unwrap();
    wait_for_stats(
        &broker,
        &queue,
        QueueStats {
            messages: 4,
            consumers: 0,
        },
    )
    .await;

    // Another consumer gets the returned ones, marked as redelivered.
    let mut other = broker
        .consume::<JobDispatch>(&queue, 10, "other")
        .await
        .unwrap();
    let mut redelivered = 0;
    for _ in 0..4 {
        let got = recv(&mut other).await;
        if got.redelivered {
            redelivered += 1;
        }
        got.ack().await.unwrap();
    }
    assert_eq!(redelivered, 3);

    drop(other);
    broker.cleanup().await;
}

/// A runner pauses and resumes its class consumers on one channel: each consumer keeps its own
/// prefetch, a cancelled one gives back what it buffered while the channel stays usable, and a
/// subscription dropped without a cancel does not sit on messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_come_and_go_on_one_shared_channel() {
    let broker = connect(&["a", "b"]).await;
    let t = broker.topology().clone();
    let (qa, qb) = (t.class_queue("a"), t.class_queue("b"));
    for class in ["a", "b"] {
        broker.declare_class(class).await.unwrap();
        for _ in 0..3 {
            broker.publish_job(&job(class, 1)).await.unwrap();
        }
    }
    let channel = broker.consumer_channel().await.unwrap();
    let mut on_a = channel.consume::<JobDispatch>(&qa, 1, "a").await.unwrap();
    let mut on_b = channel.consume::<JobDispatch>(&qb, 2, "b").await.unwrap();
    // Prefetch is per consumer: one of a's messages is out, two of b's.
    for (queue, ready) in [(&qa, 2), (&qb, 1)] {
        wait_for_stats(
            &broker,
            queue,
            QueueStats {
                messages: ready,
                consumers: 1,
            },
        )
        .await;
    }
    let from_a = recv(&mut on_a).await;
    from_a.ack().await.unwrap();
    within("cancel", on_b.cancel()).await.unwrap();
    wait_for_stats(
        &broker,
        &qb,
        QueueStats {
            messages: 3,
            consumers: 0,
        },
    )
    .await;
    assert!(within("the end of b", on_b.next()).await.is_none());

    // The channel is still open: consume b again, then drop a without cancelling it.
    assert!(channel.is_open());
    let mut again = channel.consume::<JobDispatch>(&qb, 3, "b2").await.unwrap();
    for _ in 0..3 {
        recv(&mut again).await.ack().await.unwrap();
    }
    drop(on_a);
    wait_for_stats(
        &broker,
        &qa,
        QueueStats {
            messages: 2,
            consumers: 0,
        },
    )
    .await;

    // A consume of a missing queue fails and closes the channel; a new one works.
    let missing = channel
        .consume::<JobDispatch>(&t.class_queue("nowhere"), 1, "x")
        .await;
    assert!(missing.is_err());
    drop(again);
    let fresh = broker.consumer_channel().await.unwrap();
    let mut on_a = fresh.consume::<JobDispatch>(&qa, 5, "a3").await.unwrap();
    for _ in 0..2 {
        recv(&mut on_a).await.ack().await.unwrap();
    }
    on_a.cancel().await.unwrap();
    drop((on_a, fresh, channel));
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_class_without_a_queue_is_an_error() {
    let broker = connect(&["ok"]).await;
    let t = broker.topology().clone();
    assert_unroutable(broker.publish_job(&job("nobody-serves-this", 1)).await);
    let err = broker
        .publish_job(&job("nobody-serves-this", 1))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no queue is bound") && text.contains("nobody-serves-this"),
        "{text}"
    );

    // The publisher is fine afterwards.
    broker.declare_class("ok").await.unwrap();
    broker.publish_job(&job("ok", 1)).await.unwrap();

    // A missing exchange closes the publishing channel; the next publish opens another.
    let err = broker
        .publish_raw(&format!("{}.no-such-exchange", t.namespace()), "", b"{}")
        .await
        .unwrap_err();
    assert!(matches!(err, AmqpError::Publish { .. }), "{err:?}");
    assert!(chain(&err).contains("NOT_FOUND"), "{}", chain(&err));
    broker.publish_job(&job("ok", 1)).await.unwrap();
    assert_eq!(
        broker
            .queue_stats(&t.class_queue("ok"))
            .await
            .unwrap()
            .map(|s| s.messages),
        Some(2)
    );

    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_each_get_their_own_confirm_and_return() {
    let broker = Arc::new(connect(&["many"]).await);
    let t = broker.topology().clone();
    broker.declare_class("many").await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..40 {
        let broker = Arc::clone(&broker);
        let class = if i % 8 == 0 { "unserved" } else { "many" };
        tasks.push(tokio::spawn(async move {
            (class, broker.publish_job(&job(class, 1)).await)
        }));
    }
    for task in tasks {
        let (class, result) = within("a publish", task).await.unwrap();
        match class {
            "many" => result.unwrap(),
            _ => assert_unroutable(result),
        }
    }
    assert_eq!(
        broker
            .queue_stats(&t.class_queue("many"))
            .await
            .unwrap()
            .map(|s| s.messages),
        Some(35)
    );

    // A caller giving up mid-publish does not disturb the next publishes.
    let gave_up = tokio::time::timeout(
        Duration::from_micros(1),
        broker.publish_job(&job("unserved", 1)),
    )
    .await;
    drop(gave_up);
    broker.publish_job(&job("many", 1)).await.unwrap();

    let broker = Arc::try_unwrap(broker).expect("no task holds the broker");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_every_subscriber() {
    let broker = connect(&[]).await;
    let mut first = broker.subscribe_announcements().await.unwrap();
    let mut second = broker.subscribe_announcements().await.unwrap();
    assert_ne!(first.queue(), second.queue());

    let sent = ClassAnnounce {
        schema: rivet_protocol::SCHEMA_VERSION,
        class_key: "label:region=eu+process".into(),
        requires: vec!["label:region=eu".into(), "process".into()],
    };
    broker.announce_class(&sent).await.unwrap();
    for sub in [&mut first, &mut second] {
        let got = recv(sub).await;
        assert_eq!(got.message, sent);
        got.ack().await.unwrap();
    }

    // Exclusive, auto-delete: the queues go with their subscriptions.
    let queue = first.queue().to_owned();
    drop(first);
    let gone = async {
        while broker.queue_stats(&queue).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within("the announcement queue to go", gone).await;

    drop(second);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_closed_port_fails_clearly_within_the_timeout() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("amqp://alice:s3cret-pw@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    let err = Broker::connect(&url, Topology::new("unused"), Duration::from_secs(1))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");

    let text = chain(&err);
    assert!(
        text.starts_with(&format!(
            "connecting to RabbitMQ at amqp://127.0.0.1:{port} (user alice)"
        )),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!format!("{err:?}").contains("s3cret"));
    match err {
        AmqpError::Connect { attempts, .. } => assert!(attempts > 1, "retried: {attempts}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_fails_at_once() {
    let url = amqp_url().replacen("guest:guest", "guest:wrong-password", 1);
    let started = Instant::now();
    let err = Broker::connect(&url, Topology::new("unused"), Duration::from_secs(5))
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, AmqpError::Refused { .. }), "{err:?}");
    assert!(
        text.starts_with("connecting to RabbitMQ at amqp://")
            && text.contains("(user guest): the broker refused the connection"),
        "{text}"
    );
    assert!(text.contains("ACCESS_REFUSED"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not retried until the timeout: {text}"
    );
}
