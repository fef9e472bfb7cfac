//! Per-runner RabbitMQ users (API-03), through RabbitMQ's management API.
//!
//! Each runner session gets a user of its own (`NAMESPACE.runner.REGISTRATION`, a fresh
//! password per session) whose permissions are [`Topology::runner_permissions`]: it reads only
//! the class queues its registration's labels cover, publishes only to the reports and
//! dead-letter exchanges, and declares nothing durable. Its reports carry its user as `user-id`,
//! which RabbitMQ checks against the login, and the orchestrator accepts a report only from the
//! user of the registration it names. Revoking a registration deletes its user, which closes
//! the runner's connections at once.
//!
//! Permissions are written under one PostgreSQL advisory lock, each time from what the database
//! holds then (classes, live registrations): two writers (a runner joining, a class appearing,
//! in one orchestrator or several) cannot leave a user without a class committed before either.
//! A new class is granted before it is announced, so a runner never consumes a queue it may not
//! read yet.

use crate::config::{Config, RunnerUsersMode};
use crate::AppState;
use anyhow::Context;
use rivet_protocol::http::Credentials;
use rivet_protocol::topology::Topology;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// The advisory lock key under which permissions are written (`rivet` + "perm" in ASCII).
const PERMISSIONS_LOCK: i64 = 0x7269_7665_7470_6572;

/// A client of RabbitMQ's management API, able to manage users.
#[derive(Clone)]
pub struct BrokerUsers {
    http: reqwest::Client,
    /// `http://host:port/api/`.
    api: reqwest::Url,
    username: String,
    password: String,
    vhost: String,
    topology: Topology,
}

impl std::fmt::Debug for BrokerUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUsers")
            .field("api", &self.api.as_str())
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl BrokerUsers {
    /// The management client `config` asks for: `None` with `--broker-users shared`. Without
    /// `--broker-management-url`, the AMQP URL's host and user on port 15672.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        if config.broker_users == RunnerUsersMode::Shared {
            return Ok(None);
        }
        let amqp = rivet_amqp::url_parts(&config.amqp_url).context("the RabbitMQ URL")?;
        let text = match &config.broker_management_url {
            Some(url) => url.clone(),
            None => format!(
                "http://{}:{}@{}:15672/",
                rivet_amqp::percent_encode(&amqp.username),
                rivet_amqp::percent_encode(&amqp.password),
                amqp.host
            ),
        };
        let mut url = reqwest::Url::parse(&text)
            .map_err(|e| anyhow::anyhow!("the broker management URL: {e}"))?;
        if url.scheme() != "http" {
            anyhow::bail!(
                "the broker management URL must be http:// (this build has no TLS, as for amqp://)"
            );
        }
        let decode =
            |s: &str| percent_decode(s).context("the broker management URL's user or password");
        let username = decode(url.username())?;
        let password = decode(url.password().unwrap_or(""))?;
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let path = format!("{}/api/", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the management API client")?;
        Ok(Some(Self {
            http,
            api: url,
            username,
            password,
            vhost: amqp.vhost,
            topology: Topology::new(&config.namespace),
        }))
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<reqwest::StatusCode> {
        let url = self.url(segments);
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .basic_auth(&self.username, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "RabbitMQ's management API at {} (is the rabbitmq_management plugin enabled? \
                 `--broker-users shared` runs without it)",
                self.api
            )
        })?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(status);
        }
        let text = response.text().await.unwrap_or_default();
        anyhow::bail!(
            "RabbitMQ's management API: {method} {}: {status}: {}",
            url.path(),
            text.chars().take(300).collect::<String>()
        )
    }

    /// Checks at start that the API answers and that its user may manage users.
    pub async fn check(&self) -> anyhow::Result<()> {
        let url = self.url(&["whoami"]);
        let response = self
            .http
            .get(url)
            .basic_auth(&self.username, Some(&self.password))
            .send()
            .await
            .with_context(|| {
                format!(
                    "RabbitMQ's management API at {} does not answer: enable the \
                     rabbitmq_management plugin, set --broker-management-url, or run with \
                     `--broker-users shared` (every runner on one broker user: API-03 not enforced)",
                    self.api
                )
            })?;
        let status = response.status();
        let me: serde_json::Value = if status.is_success() {
            response.json().await.context("reading whoami")?
        } else {
            anyhow::bail!(
                "RabbitMQ's management API at {} refused user `{}`: {status}",
                self.api,
                self.username
            );
        };
        let tags = me.get("tags").map(|t| t.to_string()).unwrap_or_default();
        if !tags.contains("administrator") {
            anyhow::bail!(
                "RabbitMQ user `{}` cannot create the runners' users: it needs the administrator tag",
                self.username
            );
        }
        Ok(())
    }

    async fn put_user(&self, name: &str, password: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::PUT,
            &["users", name],
            Some(serde_json::json!({ "password": password, "tags": "" })),
        )
        .await?;
        Ok(())
    }

    async fn put_permissions(&self, name: &str, class_keys: &[&str]) -> anyhow::Result<()> {
        let permissions = self.topology.runner_permissions(class_keys);
        let status = self
            .call(
                reqwest::Method::PUT,
                &["permissions", &self.vhost, name],
                Some(serde_json::to_value(&permissions)?),
            )
            .await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            anyhow::bail!(
                "RabbitMQ user `{name}` or vhost `{}` does not exist",
                self.vhost
            );
        }
        Ok(())
    }

    /// Whether RabbitMQ has user `name` (the management API answers).
    async fn exists(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .call(reqwest::Method::GET, &["users", name], None)
            .await?
            != reqwest::StatusCode::NOT_FOUND)
    }

    /// Deletes a user (gone already is fine); RabbitMQ closes its connections.
    async fn delete(&self, name: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &["users", name], None)
            .await?;
        Ok(())
    }

    /// Closes every connection of a user.
    async fn close_connections(&self, name: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &["connections", "username", name],
            None,
        )
        .await?;
        Ok(())
    }

    /// Names of the users whose names start with `prefix` (tests sweep their runners' users).
    pub async fn users_with_prefix(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let users: Vec<serde_json::Value> = self
            .http
            .get(self.url(&["users"]))
            .basic_auth(&self.username, Some(&self.password))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(users
            .iter()
            .filter_map(|u| u.get("name")?.as_str())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_owned)
            .collect())
    }

    /// Deletes the users whose names start with `prefix`.
    pub async fn delete_users_with_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        for name in self.users_with_prefix(prefix).await? {
            self.delete(&name).await?;
        }
        Ok(())
    }
}

fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])?;
            out.push(u8::from_str_radix(hex, 16)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// The broker user of registration `id` with a new password, for a new session; `None` with
/// shared broker users. Nothing is written: see [`create_user`] and [`sync_permissions`].
pub fn new_credentials(state: &AppState, id: Uuid) -> anyhow::Result<Option<Credentials>> {
    let Some(users) = &state.broker_users else {
        return Ok(None);
    };
    Ok(Some(Credentials {
        username: users.topology.runner_broker_user(&id.to_string()),
        password: crate::auth::generate_session_key()?,
    }))
}

/// Creates (or resets) the session's user with its password and closes any connection an
/// earlier session of the registration left open: that runner holds an old password and must
/// not keep consuming.
pub async fn create_user(state: &AppState, credentials: &Credentials) -> anyhow::Result<()> {
    let Some(users) = &state.broker_users else {
        return Ok(());
    };
    users
        .put_user(&credentials.username, &credentials.password)
        .await?;
    users.close_connections(&credentials.username).await
}

/// Deletes one runner's broker user (gone already is fine); RabbitMQ closes its connections.
pub async fn delete_user(state: &AppState, user: &str) -> anyhow::Result<()> {
    match &state.broker_users {
        Some(users) => users.delete(user).await,
        None => Ok(()),
    }
}

/// Writes the permissions of every live registration's broker user (or only `only`'s) from the
/// classes and labels in the database, under the permissions lock.
pub async fn sync_permissions(state: &AppState, only: Option<Uuid>) -> anyhow::Result<()> {
    let Some(users) = &state.broker_users else {
        return Ok(());
    };
    let mut tx = state.db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PERMISSIONS_LOCK)
        .execute(&mut *tx)
        .await?;
    let classes: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT class_key, requires FROM classes")
            .fetch_all(&mut *tx)
            .await?;
    let registrations: Vec<(String, sqlx::types::Json<BTreeMap<String, String>>)> =
        sqlx::query_as(
            "SELECT broker_user, labels FROM runner_registrations \
             WHERE revoked_at IS NULL AND broker_user IS NOT NULL AND ($1::uuid IS NULL OR id = $1)",
        )
        .bind(only)
        .fetch_all(&mut *tx)
        .await?;
    for (user, labels) in registrations {
        let readable: Vec<&str> = classes
            .iter()
            .filter(|(_, requires)| labels_cover(&labels.0, requires))
            .map(|(key, _)| key.as_str())
            .collect();
        if let Err(e) = users.put_permissions(&user, &readable).await {
            // A user RabbitMQ lost (or one deleted at revocation meanwhile) must not hold up
            // every other runner's permissions: its runner cannot log in until it joins again.
            if !users.exists(&user).await? {
                tracing::warn!(user = %user, error = %format!("{e:#}"), "A runner's broker user is missing; its permissions were not written (the runner must join again).");
                continue;
            }
            return Err(e);
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Whether `labels` cover every `label:` requirement of a class (capabilities describe the
/// machine and are not the broker's business; a runner lacking one cannot run the job anyway).
pub fn labels_cover(labels: &BTreeMap<String, String>, requires: &[String]) -> bool {
    requires.iter().all(|r| match r.strip_prefix("label:") {
        Some(label) => label
            .split_once('=')
            .is_some_and(|(k, v)| labels.get(k).is_some_and(|have| have == v)),
        None => true,
    })
}

/// Deletes the broker users of revoked registrations (closing their connections) and forgets
/// them; what fails is tried again on the reaper's next round. Returns how many were deleted.
pub async fn retire_revoked(state: &AppState) -> anyhow::Result<usize> {
    let Some(users) = &state.broker_users else {
        return Ok(0);
    };
    let revoked: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, broker_user FROM runner_registrations \
         WHERE revoked_at IS NOT NULL AND broker_user IS NOT NULL",
    )
    .fetch_all(&state.db)
    .await?;
    let mut deleted = 0;
    for (id, user) in revoked {
        users.delete(&user).await?;
        sqlx::query("UPDATE runner_registrations SET broker_user = NULL WHERE id = $1")
            .bind(id)
            .execute(&state.db)
            .await?;
        tracing::info!(registration = %id, user = %user, "Deleted the broker user of a revoked runner registration.");
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cover_label_requirements_only() {
        let labels: BTreeMap<String, String> = [("region".into(), "eu".into())].into();
        let req = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(labels_cover(&labels, &req(&["process", "label:region=eu"])));
        assert!(!labels_cover(&labels, &req(&["label:region=us"])));
        assert!(!labels_cover(&labels, &req(&["label:deploy=yes"])));
        assert!(labels_cover(&BTreeMap::new(), &req(&["process"])));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%2Fw%40x").unwrap(), "p/w@x");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        assert!(percent_decode("%zz").is_err());
    }
}
