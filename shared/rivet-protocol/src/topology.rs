//! AMQP topology: exchanges, queues and routing keys, under a namespace (`rivet` in production;
//! tests use a unique one each, so they run in parallel on one broker).
//!
//! - Jobs: the orchestrator publishes to the direct exchange [`Topology::jobs_exchange`] with the
//!   job's class key as routing key; each class has a durable queue [`Topology::class_queue`].
//! - Reports: runners publish results and log batches to [`Topology::reports_queue`] (the job
//!   message's `reply_to`); one queue keeps a job's events and logs in order.
//! - Control: the fanout exchange [`Topology::control_exchange`] announces new classes; the direct
//!   exchange [`Topology::runner_control_exchange`] carries orders (cancel, drain) to one runner.
//! - Poison messages go to [`Topology::dead_letter_queue`] with the reason in [`REASON_HEADER`].

/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-rivet-reason";

/// Names of every exchange and queue, derived from one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    namespace: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new("rivet")
    }
}

impl Topology {
    /// A topology under `namespace` (letters, digits, `-`, `_`, `.`).
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Direct exchange for jobs; routing key = class key.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    /// The durable queue of a class.
    pub fn class_queue(&self, class_key: &str) -> String {
        format!("{}.class.{class_key}", self.namespace)
    }

    /// The queue for runner reports (events and log batches).
    pub fn reports_queue(&self) -> String {
        format!("{}.reports", self.namespace)
    }

    /// Fanout exchange for announcements to every runner.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.namespace)
    }

    /// Direct exchange for orders to one runner ([`crate::messages::RunnerControl`]); routing
    /// key = runner id, each runner binds an exclusive queue of its own.
    pub fn runner_control_exchange(&self) -> String {
        format!("{}.runner-control", self.namespace)
    }

    /// Fanout exchange dead-lettered messages are published to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }

    /// The queue that keeps dead-lettered messages for inspection.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }
}
