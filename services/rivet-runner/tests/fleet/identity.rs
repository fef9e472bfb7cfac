//! API-02: runner identity. A runner joins only with a live registration's token, takes the
//! labels an admin gave that registration (never its own), and the orchestrator refuses to start
//! a job for a runner that is not a live registration or whose assigned labels do not cover the
//! job, even when that runner reads the job from a queue it should not consume: the refusal is
//! audited and the job runs on a legitimate runner.

use crate::helpers::{self, Fleet, AMQP, REDIS};
use redis::AsyncCommands;
use rivet_amqp::Broker;
use rivet_protocol::http::{
    ApiError, JobState, JobView, RunnerRegistrationView, RunnerSession, RunnerView,
};
use rivet_protocol::messages::{ControlCommand, JobDispatch, ReportBody, RunnerReport};
use rivet_protocol::redis_keys::{lease_value, Keys, RunnerPresence, PRESENCE_TTL_MS};
use rivet_protocol::topology::Topology;
use rivet_protocol::SCHEMA_VERSION;
use serde_json::json;
use std::time::Duration;

const DEPLOY: &str = "return { name = 'deploy', requires = {'process', 'label:deploy=yes'},
  stages = { { name = 'ship', script = function() log.info('shipped') end } } }";

const PLAIN: &str = "return { name = 'plain', requires = {'process'},
  stages = { { name = 'only', script = function() log.info('ran') end } } }";

/// `POST /runners/register` with `token` and `body`, as a runner process does at start.
async fn register_call(fleet: &Fleet, token: &str, body: serde_json::Value) -> reqwest::Response {
    fleet
        .http
        .post(fleet.url("/runners/register"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn machine() -> serde_json::Value {
    json!({"capabilities": ["process", "filesystem", "http"], "slots": 1, "version": "test"})
}

/// Runs a runner with `config` and returns the error it stops with (it must stop at once).
async fn refused(config: rivet_runner::Config) -> String {
    let ran = tokio::time::timeout(
        Duration::from_secs(20),
        rivet_runner::run(config, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("a refused runner stops at once");
    format!("{:#}", ran.expect_err("the runner must not join"))
}

/// A runner with its own real registration, session and broker user, that lies: it consumes
/// whatever class queue it likes and starts what it takes. Its own broker user may not read
/// the class queues its labels do not cover, so for those it uses `stolen`: broker credentials
/// with wider rights taken from elsewhere (the installation's shared user), which the broker
/// cannot tell apart; it publishes with its own user unless `publish_stolen`.
struct Liar {
    broker: Broker,
    stolen: Broker,
    /// Consume with the stolen credentials.
    consume_stolen: bool,
    /// Publish with the stolen credentials.
    publish_stolen: bool,
    redis: redis::aio::ConnectionManager,
    keys: Keys,
    session: RunnerSession,
}

impl Liar {
    async fn join(fleet: &Fleet, name: &str) -> Liar {
        let registration = fleet.register(name, &[]).await;
        let r = register_call(fleet, registration.secret.as_deref().unwrap(), machine()).await;
        assert_eq!(r.status(), 200);
        let session: RunnerSession = r.json().await.unwrap();
        assert_eq!(session.runner_id, name);
        assert!(session.labels.is_empty());
        Liar {
            broker: rivet_orchestrator::testing::runner_broker(&fleet.namespace, &session).await,
            stolen: Broker::connect(
                AMQP,
                Topology::new(&fleet.namespace),
                Duration::from_secs(10),
            )
            .await
            .unwrap(),
            consume_stolen: false,
            publish_stolen: false,
            redis: redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
                .await
                .unwrap(),
            keys: Keys::new(&fleet.namespace),
            session,
        }
    }

    fn id(&self) -> &str {
        &self.session.runner_id
    }

    /// Writes a presence record claiming `labels`, as a runner's own record may say anything.
    async fn claim_labels(&mut self, labels: &[(&str, &str)]) {
        let record = RunnerPresence {
            schema: SCHEMA_VERSION,
            id: self.id().to_owned(),
            capabilities: vec!["process".into(), "filesystem".into(), "http".into()],
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            slots: 1,
            running: Vec::new(),
            draining: false,
            version: "test".into(),
            started_at_ms: 0,
            updated_at_ms: 0,
        };
        let _: () = self
            .redis
            .pset_ex(
                self.keys.runner(self.id()),
                serde_json::to_string(&record).unwrap(),
                PRESENCE_TTL_MS,
            )
            .await
            .unwrap();
    }

    /// Takes the next job of `class_key`'s queue the way a runner does (its lease, then a
    /// `Started` signed with its real session, then the ack), and returns it.
    async fn take_and_start(&mut self, class_key: &str) -> JobDispatch {
        let key = self.session.session_key.clone();
        self.take_and_start_signed(class_key, Some(&key), true)
            .await
    }

    /// As [`Self::take_and_start`], with `Started` signed with `key` (none: no MAC at all), and
    /// the lease taken first only when `lease`.
    async fn take_and_start_signed(
        &mut self,
        class_key: &str,
        key: Option<&str>,
        lease: bool,
    ) -> JobDispatch {
        let tag = format!("{}-liar", self.id());
        let broker = if self.consume_stolen {
            &self.stolen
        } else {
            &self.broker
        };
        let mut sub = rivet_orchestrator::testing::consume_class(broker, class_key, 1, &tag).await;
        let delivery = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a job reaches the queue")
            .unwrap()
            .unwrap();
        let job = delivery.message.clone();
        let reply_to = delivery.reply_to.clone().expect("jobs carry reply_to");
        let token = "00112233445566778899aabbccddeeff";
        if lease {
            let _: () = self
                .redis
                .pset_ex(
                    self.keys.lease(job.job_id),
                    lease_value(self.id(), job.attempt, token),
                    10_000,
                )
                .await
                .unwrap();
        }
        let report = RunnerReport {
            schema: SCHEMA_VERSION,
            job_id: job.job_id,
            attempt: job.attempt,
            runner_id: self.id().to_owned(),
            token: token.into(),
            session_mac: key
                .map(|key| {
                    rivet_protocol::identity::started_mac(
                        key,
                        job.job_id,
                        job.attempt,
                        self.id(),
                        token,
                    )
                })
                .unwrap_or_default(),
            body: ReportBody::Started { ago_ms: 0 },
        };
        let publisher = if self.publish_stolen {
            &self.stolen
        } else {
            &self.broker
        };
        publisher.publish_report(&reply_to, &report).await.unwrap();
        delivery.ack().await.unwrap();
        sub.cancel().await.ok();
        job
    }

    async fn close(self) {
        self.stolen.close().await;
        self.broker.close().await;
    }
}

/// Waits until attempt `attempt` of the job was refused (ended `lost`), and returns the job.
async fn refused_attempt(fleet: &Fleet, id: uuid::Uuid, attempt: u32) -> JobView {
    fleet
        .wait_job(id, Duration::from_secs(20), "the start refused", |j| {
            j.attempts
                .iter()
                .any(|a| a.attempt == attempt && a.state == JobState::Lost)
        })
        .await
}

fn lost_reason(job: &JobView, attempt: u32) -> String {
    let a = job
        .attempts
        .iter()
        .find(|a| a.attempt == attempt)
        .expect("the attempt");
    match &a.outcome {
        Some(rivet_core::JobOutcome::Lost { reason }) => reason.clone(),
        other => panic!("attempt {attempt} ended {other:?}"),
    }
}

async fn registration(fleet: &Fleet, name: &str) -> RunnerRegistrationView {
    let all: Vec<RunnerRegistrationView> = fleet.get("/runners/registrations").await;
    // Oldest first: the last one with the name is the newest.
    all.into_iter()
        .rev()
        .find(|r| r.name == name)
        .expect("the registration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_02_a_runner_without_a_live_registration_cannot_join() {
    let fleet = helpers::start().await;

    let err = refused(fleet.runner_config(None, "none")).await;
    assert!(
        err.contains("policy violation [runner.identity]: no runner token"),
        "{err}"
    );
    let err = refused(fleet.runner_config(Some("rvr_not-a-token"), "unknown")).await;
    assert!(
        err.contains("policy violation [runner.identity]: unknown runner token"),
        "{err}"
    );

    let gone = fleet.register("gone", &[]).await;
    let r = fleet
        .http
        .delete(fleet.url("/runners/registrations/gone"))
        .bearer_auth(&fleet.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let err = refused(fleet.runner_config(gone.secret.as_deref(), "gone")).await;
    assert!(
        err.contains(
            "policy violation [runner.identity]: the registration of runner `gone` was revoked"
        ),
        "{err}"
    );

    // Labels the runner passes itself grant nothing: the runner refuses to start with them...
    let mine = fleet.register("self-labelled", &[]).await;
    let config = rivet_runner::Config {
        labels: vec!["deploy=yes".into(), "trusted=yes".into()],
        ..fleet.runner_config(mine.secret.as_deref(), "self-labelled")
    };
    let err = refused(config).await;
    assert!(
        err.contains("policy violation [runner.labels]: a runner cannot declare its labels"),
        "{err}"
    );
    // ... and the orchestrator refuses a registration that declares any (the catalogue's
    // snippet: a leaked token with `trusted`, `deploy`, `gpu`).
    let mut declared = machine();
    declared["labels"] = json!(["trusted", "deploy", "gpu"]);
    let r = register_call(&fleet, mine.secret.as_deref().unwrap(), declared).await;
    assert_eq!(r.status(), 403);
    let body: ApiError = r.json().await.unwrap();
    assert_eq!(body.code, "policy_violation");
    assert!(
        body.message
            .starts_with("policy violation [runner.labels]: "),
        "{}",
        body.message
    );

    // API tokens are not runner tokens, even the admin's.
    let r = register_call(&fleet, &fleet.token, machine()).await;
    assert_eq!(r.status(), 401);

    // One token is one runner: while its runner is online, another process is refused.
    let first = register_call(&fleet, mine.secret.as_deref().unwrap(), machine()).await;
    assert_eq!(first.status(), 200);
    let second = register_call(&fleet, mine.secret.as_deref().unwrap(), machine()).await;
    assert_eq!(second.status(), 409);
    let body: ApiError = second.json().await.unwrap();
    assert_eq!(body.code, "runner_online", "{}", body.message);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_02_a_runner_without_the_label_cannot_start_a_job_that_requires_it() {
    let mut fleet = helpers::start().await;
    fleet.push(DEPLOY).await;

    // The liar's registration has no labels; its presence record claims `deploy=yes`.
    let mut liar = Liar::join(&fleet, "liar").await;
    liar.claim_labels(&[("deploy", "yes"), ("trusted", "yes")])
        .await;
    let runners: Vec<RunnerView> = fleet.get("/runners").await;
    let shown = runners.iter().find(|r| r.id == "liar").expect("the liar");
    assert!(shown.labels.is_empty(), "{shown:?}");
    assert!(shown.registration.is_some());

    let job = fleet.submit("deploy", json!({})).await;
    let s = job.schedulability.clone().unwrap();
    assert!(
        !s.schedulable,
        "labels a runner writes itself do not count: {s:?}"
    );
    assert_eq!(s.missing, ["label:deploy=yes"]);

    // Its own broker user may not read the class queue (API-03)...
    let queue = liar.broker.topology().class_queue(&job.class_key);
    let err = liar
        .broker
        .consume::<JobDispatch>(&queue, 1, "liar")
        .await
        .expect_err("the liar's broker user reads a class queue its labels do not cover");
    assert!(
        format!("{err:#} {:?}", std::error::Error::source(&err)).contains("ACCESS_REFUSED"),
        "{err:#}"
    );
    // ... so it reads the job with stolen broker credentials and starts it with its real
    // session (publishing as itself).
    let mut orders = liar.broker.subscribe_control("liar").await.unwrap();
    liar.consume_stolen = true;
    let taken = liar.take_and_start(&job.class_key).await;
    assert_eq!((taken.job_id, taken.attempt), (job.id, 1));
    let seen = refused_attempt(&fleet, job.id, 1).await;
    let reason = lost_reason(&seen, 1);
    assert!(
        reason.starts_with(
            "policy violation [runner.labels]: runner `liar` is not assigned label:deploy=yes"
        ),
        "{reason}"
    );
    assert_eq!(seen.attempts[0].runner_id, None, "it never ran there");
    // Audited: counted on the registration, and the liar is told to stop.
    let reg = registration(&fleet, "liar").await;
    assert_eq!(reg.refused_starts, 1);
    let order = tokio::time::timeout(Duration::from_secs(10), orders.next())
        .await
        .expect("a cancel order")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&order.message.command, ControlCommand::Cancel { job_id, attempt: 1, reason }
            if *job_id == job.id && reason.starts_with("policy violation [runner.labels]")),
        "{:?}",
        order.message.command
    );
    order.ack().await.ok();
    orders.cancel().await.ok();

    // The job went back; a runner an admin gave `deploy=yes` runs it.
    let deployer = fleet.runner("deployer", &["deploy=yes"], "").await;
    let done = fleet.wait_final(job.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    assert_eq!(done.attempt, 2);
    assert_eq!(done.runner_id.as_deref(), Some(deployer.as_str()));
    liar.close().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_02_revoking_a_registration_stops_its_runner_from_starting_jobs() {
    let mut fleet = helpers::start().await;
    fleet.push(PLAIN).await;

    // A real runner: revoked, it is told to drain and leaves; its token no longer joins.
    let honest = fleet.runner("honest", &[], "").await;
    let token_of = registration(&fleet, &honest).await;
    assert!(token_of.registered_at_ms.is_some());
    let r = fleet
        .http
        .delete(fleet.url(&format!("/runners/registrations/{}", token_of.id)))
        .bearer_auth(&fleet.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Its broker and Redis users are deleted: both close its connections and refuse its login,
    // and the runner stops, saying why.
    let err = fleet
        .runner_exit(&honest, Duration::from_secs(20))
        .await
        .expect_err("a revoked runner is shut out of the broker");
    let err = format!("{err:#}");
    assert!(
        err.starts_with("policy violation [runner.identity]: ")
            && err.contains(&format!("refused runner `{honest}`'s login")),
        "{err}"
    );

    // A revoked runner that holds broker credentials with wider rights (stolen) and its old
    // session key: no job it takes is started.
    let mut revoked = Liar::join(&fleet, "revoked").await;
    let r = fleet
        .http
        .delete(fleet.url("/runners/registrations/revoked"))
        .bearer_auth(&fleet.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), revoked.broker.disconnected())
        .await
        .expect("revoking closes the runner's own broker connection");
    assert!(!revoked.broker.is_connected());
    (revoked.consume_stolen, revoked.publish_stolen) = (true, true);
    let job = fleet.submit("plain", json!({})).await;
    let taken = revoked.take_and_start(&job.class_key).await;
    assert_eq!(taken.job_id, job.id);
    let seen = refused_attempt(&fleet, job.id, 1).await;
    let reason = lost_reason(&seen, 1);
    assert!(
        reason.starts_with(
            "policy violation [runner.identity]: runner `revoked` is not a live registration"
        ),
        "{reason}"
    );
    assert_eq!(registration(&fleet, "revoked").await.refused_starts, 1);
    // Its presence record (kept alive by the liar) shows it without a registration or labels.
    revoked.claim_labels(&[("deploy", "yes")]).await;
    let runners: Vec<RunnerView> = fleet.get("/runners").await;
    let shown = runners
        .iter()
        .find(|r| r.id == "revoked")
        .expect("its presence");
    assert_eq!(shown.status, "unregistered");
    assert_eq!(shown.registration, None);
    assert!(shown.labels.is_empty(), "{shown:?}");

    // A legitimate runner runs the job.
    let other = fleet.runner("other", &[], "").await;
    let done = fleet.wait_final(job.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    assert_eq!(done.runner_id.as_deref(), Some(other.as_str()));
    revoked.close().await;
    fleet.stop().await;
}

/// `Started` must carry the MAC of the runner's current session: none at all, or one made with
/// another registration's key, is refused. From the runner holding the lease it is a refusal
/// (the job goes back at once); without the lease it is a forgery that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_02_a_started_not_signed_with_the_runners_session_is_refused() {
    let fleet = helpers::start().await;
    fleet.push(PLAIN).await;
    let mut liar = Liar::join(&fleet, "unsigned").await;
    let other = Liar::join(&fleet, "other-key").await;
    let job = fleet.submit("plain", json!({})).await;

    // No MAC, from the lease holder: refused, and the job goes back.
    let taken = liar.take_and_start_signed(&job.class_key, None, true).await;
    assert_eq!((taken.job_id, taken.attempt), (job.id, 1));
    let seen = refused_attempt(&fleet, job.id, 1).await;
    let reason = lost_reason(&seen, 1);
    assert!(
        reason.starts_with(
            "policy violation [runner.identity]: `Started` of runner `unsigned` is not signed"
        ),
        "{reason}"
    );

    // Signed with another registration's key: refused the same way.
    let key = other.session.session_key.clone();
    let taken = liar
        .take_and_start_signed(&job.class_key, Some(&key), true)
        .await;
    assert_eq!((taken.job_id, taken.attempt), (job.id, 2));
    let seen = refused_attempt(&fleet, job.id, 2).await;
    assert!(
        lost_reason(&seen, 2).contains("is not signed with its registration's current session"),
        "{}",
        lost_reason(&seen, 2)
    );
    assert_eq!(registration(&fleet, "unsigned").await.refused_starts, 2);

    // Unsigned and without the lease: a forgery. Attempt 3 stays queued and nothing is counted
    // on the registration. (The forger did consume attempt 3's message: a holder of broker
    // credentials can always do that; see docs/security.md.)
    let taken = liar
        .take_and_start_signed(&job.class_key, None, false)
        .await;
    assert_eq!((taken.job_id, taken.attempt), (job.id, 3));
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&fleet.database_url)
        .await
        .unwrap();
    let forged = async {
        loop {
            let n: i32 = sqlx::query_scalar(
                "SELECT forged_reports FROM attempts WHERE job_id = $1 AND attempt = 3",
            )
            .bind(job.id)
            .fetch_one(&mut db)
            .await
            .unwrap();
            if n > 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), forged)
            .await
            .expect("the forgery is counted"),
        1
    );
    let now: JobView = fleet.get(&format!("/jobs/{}", job.id)).await;
    assert_eq!((now.state, now.attempt), (JobState::Queued, 3));
    assert_eq!(registration(&fleet, "unsigned").await.refused_starts, 2);
    liar.close().await;
    other.close().await;
    fleet.stop().await;
}

/// A job whose start is refused `MAX_REFUSED_STARTS` (5) times ends `lost` instead of being
/// queued yet again: the last attempt keeps the refusal's reason, the job says why it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_02_a_job_refused_five_times_ends_lost() {
    let fleet = helpers::start().await;
    fleet.push(PLAIN).await;
    let mut liar = Liar::join(&fleet, "unsigned").await;
    let job = fleet.submit("plain", json!({})).await;
    for attempt in 1..=5 {
        let taken = liar.take_and_start_signed(&job.class_key, None, true).await;
        assert_eq!((taken.job_id, taken.attempt), (job.id, attempt));
        refused_attempt(&fleet, job.id, attempt).await;
    }
    let done = fleet.wait_final(job.id, Duration::from_secs(20)).await;
    assert_eq!((done.state, done.attempt), (JobState::Lost, 5));
    assert_eq!(done.attempts.len(), 5, "{:?}", done.attempts);
    assert!(
        lost_reason(&done, 5).contains("is not signed") && !lost_reason(&done, 5).contains("times"),
        "{}",
        lost_reason(&done, 5)
    );
    match &done.outcome {
        Some(rivet_core::JobOutcome::Lost { reason }) => assert!(
            reason.ends_with("(the job's start was refused 5 times; it is not queued again)"),
            "{reason}"
        ),
        other => panic!("the job ended {other:?}"),
    }
    assert_eq!(registration(&fleet, "unsigned").await.refused_starts, 5);
    liar.close().await;
    fleet.stop().await;
}
