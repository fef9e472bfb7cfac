//! The broker URL: parsed once, shown to operators without its password.

use crate::AmqpError;
use lapin::uri::{AMQPScheme, AMQPUri};

/// A parsed broker URL and how to show it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// What lapin connects to (password included).
    pub(crate) uri: AMQPUri,
    /// `amqp://host:port (user NAME)`, never the password.
    pub(crate) display: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Endpoint {
    /// Parses `url`, refusing what this build cannot connect to.
    pub(crate) fn parse(url: &str) -> Result<Self, AmqpError> {
        let invalid = |reason: String| AmqpError::InvalidUrl {
            url: redact(url),
            // The parser quotes the whole input in some messages.
            reason: reason.replace(url, &redact(url)),
        };
        let uri: AMQPUri = url.parse().map_err(invalid)?;
        if uri.scheme == AMQPScheme::AMQPS {
            return Err(invalid(
                "amqps:// (TLS) is not supported by this build; use amqp://".into(),
            ));
        }
        let vhost = if uri.vhost == "/" {
            String::new()
        } else {
            format!("vhost `{}`, ", uri.vhost)
        };
        let display = format!(
            "{}://{}:{} ({vhost}user {})",
            uri.scheme, uri.authority.host, uri.authority.port, uri.authority.userinfo.username
        );
        Ok(Self { uri, display })
    }
}

/// `url` with its user and password replaced by `username` and `password` (percent-encoded):
/// how a runner connects as the RabbitMQ user its registration gave it, to the host and vhost
/// of its configured URL.
pub fn with_credentials(url: &str, username: &str, password: &str) -> Result<String, AmqpError> {
    Endpoint::parse(url)?;
    let (scheme, rest) = url.split_once("://").ok_or_else(|| AmqpError::InvalidUrl {
        url: redact(url),
        reason: "no scheme".into(),
    })?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    Ok(format!(
        "{scheme}://{}:{}@{host}{tail}",
        percent_encode(username),
        percent_encode(password)
    ))
}

/// What another client of the same broker (RabbitMQ's management API) needs of a broker URL.
#[derive(Clone)]
pub struct UrlParts {
    /// Host name or address.
    pub host: String,
    /// User.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Virtual host (`/` by default).
    pub vhost: String,
}

impl std::fmt::Debug for UrlParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlParts")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

/// Parses `url` into its [`UrlParts`].
pub fn url_parts(url: &str) -> Result<UrlParts, AmqpError> {
    let e = Endpoint::parse(url)?;
    Ok(UrlParts {
        host: e.uri.authority.host.clone(),
        username: e.uri.authority.userinfo.username.clone(),
        password: e.uri.authority.userinfo.password.clone(),
        vhost: e.uri.vhost.clone(),
    })
}

/// Every byte outside RFC 3986's unreserved set as `%XX`.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `url` with the password of its user info replaced by `***`; works on URLs that do not parse.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_replace_the_urls_user_and_keep_host_and_vhost() {
        let url = with_credentials(
            "amqp://guest:guest@10.0.0.1:5673/%2f",
            "ns.runner.x",
            "p/w@",
        )
        .unwrap();
        assert_eq!(url, "amqp://ns.runner.x:p%2Fw%40@10.0.0.1:5673/%2f");
        let e = Endpoint::parse(&url).unwrap();
        assert_eq!(e.uri.authority.userinfo.username, "ns.runner.x");
        assert_eq!(e.uri.authority.userinfo.password, "p/w@");
        assert_eq!(e.uri.authority.port, 5673);
        assert_eq!(
            with_credentials("amqp://rabbit/ci", "u", "p").unwrap(),
            "amqp://u:p@rabbit/ci"
        );
        assert!(with_credentials("amqps://rabbit/", "u", "p").is_err());
    }

    #[test]
    fn display_names_host_port_and_user_but_never_the_password() {
        let e = Endpoint::parse("amqp://alice:s3cret@10.1.2.3:5673/%2f").unwrap();
        assert_eq!(e.display, "amqp://10.1.2.3:5673 (user alice)");
        assert_eq!(e.uri.authority.host, "10.1.2.3");
        assert_eq!(e.uri.authority.userinfo.password, "s3cret");

        let e = Endpoint::parse("amqp://bob:pw@rabbit.internal/ci").unwrap();
        assert_eq!(
            e.display,
            "amqp://rabbit.internal:5672 (vhost `ci`, user bob)"
        );

        let e = Endpoint::parse("amqp://127.0.0.1:5672").unwrap();
        assert_eq!(e.display, "amqp://127.0.0.1:5672 (user guest)");
    }

    #[test]
    fn redaction_hides_the_password_even_in_unparseable_urls() {
        assert_eq!(
            redact("amqp://u:p@h:1/%2f?heartbeat=5"),
            "amqp://u:***@h:1/%2f?heartbeat=5"
        );
        assert_eq!(redact("amqp://u@h"), "amqp://u@h");
        assert_eq!(redact("u:p@h"), "u:***@h");
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact("amqp://u:p:q@h"), "amqp://u:***@h");
    }

    #[test]
    fn bad_urls_are_refused_without_leaking_the_password() {
        for url in [
            "http://u:topsecret@h",
            "amqps://u:topsecret@h",
            "amqp://u:topsecret@h:notaport",
            "amqp:u:topsecret@h",
        ] {
            let err = Endpoint::parse(url).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("invalid RabbitMQ URL"), "{text}");
            assert!(!text.contains("topsecret"), "{text}");
        }
        let err = Endpoint::parse("amqps://h").unwrap_err().to_string();
        assert!(err.contains("TLS"), "{err}");
    }
}
