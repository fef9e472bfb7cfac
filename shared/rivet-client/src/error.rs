//! What can go wrong talking to the orchestrator.

use rivet_protocol::http::ApiError;

/// An error from [`crate::Client`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL given to [`crate::Client::new`] cannot be used.
    #[error("`{url}` is not a usable orchestrator URL: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token is empty or has characters an HTTP header cannot carry.
    #[error("the API token is empty or contains spaces or non-ASCII characters")]
    InvalidToken,
    /// The request could not be built (a body that does not serialise).
    #[error("building the request")]
    Request {
        /// Why.
        #[source]
        err: reqwest::Error,
    },
    /// No connection could be made (refused, unknown host, connect timeout).
    #[error("cannot reach the orchestrator at {url}")]
    Unreachable {
        /// The orchestrator's base URL.
        url: String,
        /// The transport's error.
        #[source]
        err: reqwest::Error,
    },
    /// The connection was made but the request failed or timed out before an answer came.
    #[error("{method} {url} failed")]
    Transport {
        /// The HTTP method.
        method: String,
        /// The full URL.
        url: String,
        /// The transport's error.
        #[source]
        err: reqwest::Error,
    },
    /// The orchestrator answered with an error status (4xx or 5xx). `error` is its body; an
    /// answer that was not an `ApiError` (a proxy's page, say) is turned into one whose `code` is
    /// `http_STATUS` and whose `message` is the start of the body.
    #[error("{} ({} {})", error.message, status, error.code)]
    Api {
        /// The HTTP method.
        method: String,
        /// The URL path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The error body: `code`, `message`, field errors, definition problems (boxed: it is
        /// large, and errors travel through every `Result`).
        error: Box<ApiError>,
    },
    /// The orchestrator answered with success but a body this client does not understand (a
    /// different API version, or not the orchestrator at all).
    #[error("unexpected answer to {method} {url}")]
    Decode {
        /// The HTTP method.
        method: String,
        /// The full URL.
        url: String,
        /// Why the body did not parse.
        #[source]
        err: serde_json::Error,
    },
}

impl ClientError {
    /// The orchestrator's error body, when it answered with an error status.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api { error, .. } => Some(&**error),
            _ => None,
        }
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the answer was an error with this machine `code` (`invalid_inputs`, ...).
    pub fn has_code(&self, code: &str) -> bool {
        self.api().is_some_and(|e| e.code == code)
    }
}

/// Turns a non-JSON error answer into an [`ApiError`] so callers handle one shape.
pub(crate) fn foreign_body(status: u16, reason: Option<&str>, text: &str) -> ApiError {
    let text = text.trim();
    let message = if text.is_empty() {
        format!("HTTP {status} {}", reason.unwrap_or(""))
            .trim_end()
            .to_owned()
    } else {
        const MAX: usize = 300;
        match text.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_owned(),
        }
    };
    ApiError {
        code: format!("http_{status}"),
        message,
        fields: Vec::new(),
        problems: Vec::new(),
    }
}
