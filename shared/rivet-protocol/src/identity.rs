//! Runner identity on the wire (API-02): how a runner proves, on the broker, which registration
//! sent a `Started` report without putting its long-lived token there.
//!
//! `POST /api/v1/runners/register` (bearer: the runner's token) answers with a session key: 256
//! random bits in hex, held by the orchestrator with the registration in PostgreSQL and replaced
//! at every registration (revoking the registration deletes it). The runner signs each `Started`
//! report with it ([`started_mac`]): HMAC-SHA256 over the job, the attempt, the runner id and the
//! attempt token. The orchestrator recomputes it with the registration's current key
//! ([`verify_started_mac`]) before it lets the attempt start. Every later report of the attempt
//! is signed too ([`report_mac`], covering its body), since the attempt token alone sits in the
//! Redis lease where every runner can read it.

use crate::messages::ReportBody;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// Length of a session key: 256 bits in lower-case hex.
pub const SESSION_KEY_LEN: usize = 64;

/// Whether `key` has the shape of a session key (64 lower-case hex digits).
pub fn is_session_key(key: &str) -> bool {
    key.len() == SESSION_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a `Started` MAC covers. Fields are separated by a newline, which none of them can
/// contain (ids and tokens are checked before a report is applied), so two different reports
/// never sign the same text.
fn started_text(job_id: Uuid, attempt: u32, runner_id: &str, token: &str) -> String {
    format!("rivet-started-v1\n{job_id}\n{attempt}\n{runner_id}\n{token}")
}

/// What any other report's MAC covers: `Started`'s fields and the SHA-256 of the body's JSON
/// encoding. The orchestrator re-encodes the body it decoded; serde_json writes the same types
/// the same way (no maps with unordered keys, no floats in report bodies), so both sides hash
/// the same bytes.
fn report_text(
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
    body: &ReportBody,
) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(body).expect("report bodies always encode");
    format!(
        "rivet-report-v1\n{job_id}\n{attempt}\n{runner_id}\n{token}\n{}",
        hex(&Sha256::digest(&bytes))
    )
}

fn keyed(session_key: &str, text: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(session_key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(text.as_bytes());
    mac
}

/// Lower-case hex HMAC-SHA256 of `text` with the session key.
fn sign(session_key: &str, text: &str) -> String {
    hex(&keyed(session_key, text).finalize().into_bytes())
}

/// Whether `claimed` is [`sign`] of `text`, compared in constant time. A malformed MAC or key
/// never matches.
fn verify(session_key: &str, text: &str, claimed: &str) -> bool {
    if !is_session_key(session_key) || claimed.len() != 64 {
        return false;
    }
    let Some(bytes) = decode_hex(claimed) else {
        return false;
    };
    keyed(session_key, text).verify_slice(&bytes).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The password of a session's Redis user: derived from the session key (HMAC-SHA256 of a
/// fixed label), so the orchestrator can make the user again, with the same password, whenever
/// Redis lost it (a restart without an ACL file), from what PostgreSQL keeps.
pub fn redis_password(session_key: &str) -> String {
    sign(session_key, "rivet-redis-user-v1")
}

/// The `session_mac` of a `Started` report: lower-case hex HMAC-SHA256 with the session key.
pub fn started_mac(
    session_key: &str,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
) -> String {
    sign(
        session_key,
        &started_text(job_id, attempt, runner_id, token),
    )
}

/// Whether `claimed` is the `Started` MAC for these fields under `session_key`, compared in
/// constant time. A malformed MAC or key never matches.
pub fn verify_started_mac(
    session_key: &str,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
    claimed: &str,
) -> bool {
    verify(
        session_key,
        &started_text(job_id, attempt, runner_id, token),
        claimed,
    )
}

/// The `session_mac` of every report after `Started` (log batches, stage events, `Finished`):
/// HMAC-SHA256 with the session key over `Started`'s fields and the body's digest, so a report
/// cannot be forged by someone who knows only the attempt token (it sits in the Redis lease).
pub fn report_mac(
    session_key: &str,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
    body: &ReportBody,
) -> String {
    sign(
        session_key,
        &report_text(job_id, attempt, runner_id, token, body),
    )
}

/// Whether `claimed` is [`report_mac`] of these fields and `body` under `session_key`, compared
/// in constant time. A malformed MAC or key never matches.
pub fn verify_report_mac(
    session_key: &str,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
    body: &ReportBody,
    claimed: &str,
) -> bool {
    verify(
        session_key,
        &report_text(job_id, attempt, runner_id, token, body),
        claimed,
    )
}

/// Checks a report's `session_mac` against its session key, as [`session_mac`] made it.
pub fn verify_session_mac(
    session_key: &str,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
    body: &ReportBody,
    claimed: &str,
) -> bool {
    match body {
        ReportBody::Started { .. } => {
            verify_started_mac(session_key, job_id, attempt, runner_id, token, claimed)
        }
        body => verify_report_mac(
            session_key,
            job_id,
            attempt,
            runner_id,
            token,
            body,
            claimed,
        ),
    }
}

/// The `session_mac` a runner puts on a report with `body`: [`started_mac`] for `Started`,
/// [`report_mac`] for every other.
pub fn session_mac(
    session_key: &str,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
    body: &ReportBody,
) -> String {
    match body {
        ReportBody::Started { .. } => started_mac(session_key, job_id, attempt, runner_id, token),
        body => report_mac(session_key, job_id, attempt, runner_id, token, body),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(*pair.get(1)?)?))
        .collect()
}

/// Whether `name` may name a runner registration (and so a runner id: it appears in Redis keys,
/// routing keys and consumer tags): 1-64 letters, digits, `_`, `-` and `.`, not starting with
/// `.` or `-`, and not `registrations` (an API path segment).
pub fn is_runner_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with(['.', '-'])
        && name != "registrations"
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_report_mac_covers_the_body_and_survives_a_decode() {
        use crate::messages::LogLine;
        let job = Uuid::new_v4();
        let body = ReportBody::Logs {
            lines: vec![LogLine {
                seq: 1,
                at_ms: 5,
                level: "info".into(),
                source: "stdout".into(),
                stage: None,
                line: "h\u{e9}llo \"quoted\" \\ tab\t".into(),
            }],
        };
        let mac = report_mac(KEY, job, 1, "r1", TOKEN, &body);
        // What the orchestrator decodes re-encodes to the same bytes.
        let decoded: ReportBody =
            serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert!(verify_report_mac(KEY, job, 1, "r1", TOKEN, &decoded, &mac));
        let ReportBody::Logs { mut lines } = decoded else {
            unreachable!()
        };
        lines[0].line = "forged".into();
        let forged = ReportBody::Logs { lines };
        assert!(!verify_report_mac(KEY, job, 1, "r1", TOKEN, &forged, &mac));
        assert!(!verify_report_mac(KEY, job, 2, "r1", TOKEN, &body, &mac));
        assert!(!verify_report_mac(KEY, job, 1, "r2", TOKEN, &body, &mac));
        let other_key = "f".repeat(64);
        assert!(!verify_report_mac(
            &other_key, job, 1, "r1", TOKEN, &body, &mac
        ));
        assert!(!verify_report_mac(KEY, job, 1, "r1", TOKEN, &body, ""));
        // A `Started` MAC is not a report MAC for the same fields.
        let started = started_mac(KEY, job, 1, "r1", TOKEN);
        assert!(!verify_report_mac(
            KEY,
            job,
            1,
            "r1",
            TOKEN,
            &ReportBody::Started { ago_ms: 0 },
            &started
        ));
    }

    #[test]
    fn a_started_mac_verifies_only_for_its_own_fields_and_key() {
        let job = Uuid::from_u128(7);
        let mac = started_mac(KEY, job, 1, "r1", TOKEN);
        assert_eq!(mac.len(), 64);
        assert!(verify_started_mac(KEY, job, 1, "r1", TOKEN, &mac));
        let other_key = KEY.replace('0', "1");
        assert!(!verify_started_mac(&other_key, job, 1, "r1", TOKEN, &mac));
        assert!(!verify_started_mac(
            KEY,
            Uuid::from_u128(8),
            1,
            "r1",
            TOKEN,
            &mac
        ));
        assert!(!verify_started_mac(KEY, job, 2, "r1", TOKEN, &mac));
        assert!(!verify_started_mac(KEY, job, 1, "r2", TOKEN, &mac));
        assert!(!verify_started_mac(
            KEY,
            job,
            1,
            "r1",
            &TOKEN.replace('0', "1"),
            &mac
        ));
        for bad in [
            "",
            "00",
            &mac.to_uppercase(),
            &format!("{mac}0"),
            &"g".repeat(64),
        ] {
            assert!(
                !verify_started_mac(KEY, job, 1, "r1", TOKEN, bad),
                "{bad:?}"
            );
        }
        assert!(!verify_started_mac(
            "",
            job,
            1,
            "r1",
            TOKEN,
            &started_mac("", job, 1, "r1", TOKEN)
        ));
    }

    #[test]
    fn runner_names_are_safe_in_keys_and_paths() {
        for ok in ["runner-1", "eu.build_02", "A"] {
            assert!(is_runner_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "a:b",
            "a/b",
            "registrations",
            &"x".repeat(65),
        ] {
            assert!(!is_runner_name(bad), "{bad:?}");
        }
    }
}
