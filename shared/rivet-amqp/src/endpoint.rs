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
