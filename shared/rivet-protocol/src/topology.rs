//! AMQP topology: exchanges, queues and routing keys, under a namespace (`rivet` in production;
//! tests use a unique one each, so they run in parallel on one broker).
//!
//! - Jobs: the orchestrator publishes to the direct exchange [`Topology::jobs_exchange`] with the
//!   job's class key as routing key; each class has a durable queue [`Topology::class_queue`].
//! - Reports: runners publish results and log batches to the direct exchange
//!   [`Topology::reports_exchange`] with the job message's `reply_to` (the reports queue's name)
//!   as routing key; one queue, [`Topology::reports_queue`], keeps a job's events and logs in
//!   order. Runners never publish through the default exchange: that would let them put a
//!   message in any queue, a class queue included.
//! - Runner broker users: [`Topology::runner_permissions`] is everything a runner's own RabbitMQ
//!   user may do (API-03).
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

    /// Whether `namespace` can name a topology: 1-64 ASCII letters, digits, `-`, `_` and `.`,
    /// so it is literal in queue names, in RabbitMQ permission patterns and in Redis ACL key
    /// patterns (no `*`, `?`, `[` or `:`).
    pub fn is_namespace(namespace: &str) -> bool {
        (1..=64).contains(&namespace.len())
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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

    /// Direct exchange runners publish reports to; the reports queue is bound to it with its own
    /// name as routing key.
    pub fn reports_exchange(&self) -> String {
        format!("{}.reports-exchange", self.namespace)
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

    /// The name of the RabbitMQ user of runner registration `registration` (a UUID).
    pub fn runner_broker_user(&self, registration: &str) -> String {
        format!("{}{registration}", self.runner_broker_user_prefix())
    }

    /// What every runner broker user's name starts with (tests sweep their users by it).
    pub fn runner_broker_user_prefix(&self) -> String {
        format!("{}.runner.", self.namespace)
    }

    /// The permissions of a runner's own RabbitMQ user, as RabbitMQ's three regular expressions,
    /// when the runner may consume the class queues `class_keys` (those whose label
    /// requirements its registration's labels cover). Nothing else:
    ///
    /// - configure: server-named queues (`amq.gen-*`: its exclusive announcement and control
    ///   queues), which it declares;
    /// - write: those queues (binding needs it), the reports exchange, where it publishes its
    ///   reports (with its user as the validated `user-id`), and the dead-letter exchange, where
    ///   it sets aside a message it cannot decode, with the reason;
    /// - read: those queues, its class queues, and the control and runner-control exchanges
    ///   (binding needs it).
    ///
    /// It cannot publish to the jobs exchange or through the default exchange (no forged jobs),
    /// cannot consume the reports queue or another class's queue, and declares nothing durable.
    pub fn runner_permissions(&self, class_keys: &[&str]) -> BrokerPermissions {
        let own = r"^amq\.gen-.*$".to_owned();
        let ns = regex_escape(&self.namespace);
        let mut read = vec![
            own.clone(),
            format!("^{ns}\\.control$"),
            format!("^{ns}\\.runner-control$"),
        ];
        if !class_keys.is_empty() {
            let mut keys: Vec<String> = class_keys.iter().map(|k| regex_escape(k)).collect();
            keys.sort();
            keys.dedup();
            read.push(format!("^{ns}\\.class\\.({})$", keys.join("|")));
        }
        BrokerPermissions {
            configure: own.clone(),
            write: format!("{own}|^{ns}\\.reports-exchange$|^{ns}\\.dead-letter$"),
            read: read.join("|"),
        }
    }
}

/// A RabbitMQ user's permissions in a vhost: a regular expression over resource names for each
/// of configure, write and read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokerPermissions {
    /// Declare and delete.
    pub configure: String,
    /// Publish to (exchanges), bind to (queues).
    pub write: String,
    /// Consume from (queues), bind from (exchanges).
    pub read: String,
}

/// `text` as a literal in a regular expression: every character other than an ASCII letter,
/// digit or `_` escaped (PCRE, RabbitMQ's dialect, reads an escaped punctuation character as
/// itself).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_permissions_name_only_its_own_resources() {
        let t = Topology::new("rivet-a.b");
        let p = t.runner_permissions(&["process,label:region=eu", "any"]);
        assert_eq!(p.configure, r"^amq\.gen-.*$");
        assert_eq!(
            p.write,
            r"^amq\.gen-.*$|^rivet\-a\.b\.reports-exchange$|^rivet\-a\.b\.dead-letter$"
        );
        assert_eq!(
            p.read,
            r"^amq\.gen-.*$|^rivet\-a\.b\.control$|^rivet\-a\.b\.runner-control$|^rivet\-a\.b\.class\.(any|process\,label\:region\=eu)$"
        );
        let none = t.runner_permissions(&[]);
        assert!(!none.read.contains("class"), "{}", none.read);
        assert_eq!(t.runner_broker_user("0a"), "rivet-a.b.runner.0a");
        assert!(Topology::is_namespace("rivet-test-0a.b_c"));
        for bad in ["", "a*", "a:b", "a[b]", "a b", "é"] {
            assert!(!Topology::is_namespace(bad), "{bad}");
        }
    }
}
