//! What the worker tells its parent, framed on a pipe: a 4-byte big-endian length, then JSON.
//! The parent answers host calls ([`Event::Call`]) with [`Reply`] frames on the worker's stdin.

use crate::host::{CallError, HostCall, HostResponse};
use rivet_core::input::InputError;
use rivet_core::{JobOutcome, PipelineSpec, Problem, RequirementSet, StageOutcome};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `log.debug`.
    Debug,
    /// `log.info`, `print`, process stdout.
    Info,
    /// `log.warn`, `warn`.
    Warn,
    /// `log.error`, process stderr.
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The pipeline or a plugin, through `log` or `print`.
    Script,
    /// A child process's standard output.
    Stdout,
    /// A child process's standard error.
    Stderr,
    /// Rivet itself (isolation notices, truncation markers).
    System,
}

/// One event from the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A log line (already masked and capped).
    Log {
        /// Sequence number within the job, from 0.
        seq: u64,
        /// Milliseconds since the worker started.
        at_ms: u64,
        /// The stage running, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        /// Severity.
        level: Level,
        /// Origin.
        source: Source,
        /// The text, without a trailing newline.
        line: String,
    },
    /// The definition is valid; this is its shape.
    Definition {
        /// The parsed definition.
        spec: PipelineSpec,
    },
    /// The definition is not valid.
    Problems {
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// The supplied inputs do not fit the definition.
    InputErrors {
        /// One error per field.
        errors: Vec<InputError>,
    },
    /// A stage began.
    StageStarted {
        /// 0-based position.
        index: usize,
        /// Its name.
        name: String,
        /// Its wall-clock limit in milliseconds.
        timeout_ms: u64,
    },
    /// A stage ended.
    StageFinished {
        /// 0-based position.
        index: usize,
        /// Its name.
        name: String,
        /// How it ended.
        outcome: StageOutcome,
        /// How long it ran.
        duration_ms: u64,
        /// Why it failed or was skipped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// What the job was granted (its requirements and its plugins'), sent once, after the
    /// definition and before any stage runs. The parent keeps the first one it receives and
    /// refuses host calls for modules it does not list. Not passed to `run_worker`'s event
    /// callback.
    Granted {
        /// Every granted requirement.
        grants: RequirementSet,
    },
    /// The worker asks its parent to act (network, containers): the parent checks policy, runs
    /// the call and answers with a [`Reply`] of the same `id` on the worker's stdin. One call at
    /// a time; ids increase strictly. Never passed to `run_worker`'s event callback.
    Call {
        /// Strictly increasing per worker, from 1.
        id: u64,
        /// Milliseconds the stage has left; the parent bounds the call by it (and by its own
        /// idea of the stage deadline).
        budget_ms: u64,
        /// What to do.
        call: HostCall,
    },
    /// The job is over. Always the last event.
    Finished {
        /// How it ended.
        outcome: JobOutcome,
    },
}

/// The parent's answer to an [`Event::Call`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The call's id.
    pub id: u64,
    /// What happened.
    pub result: Result<HostResponse, CallError>,
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_oversize() {
        let mut buf = Vec::new();
        let ev = Event::Finished {
            outcome: JobOutcome::Succeeded,
        };
        write_frame(&mut buf, &ev).unwrap();
        write_frame(&mut buf, &ev).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<Event>(&mut r).unwrap(), Some(ev.clone()));
        assert_eq!(read_frame::<Event>(&mut r).unwrap(), Some(ev));
        assert_eq!(read_frame::<Event>(&mut r).unwrap(), None);

        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(read_frame::<Event>(&mut &huge[..]).is_err());
        let garbage = [0, 0, 0, 2, b'{', b'x'];
        assert!(read_frame::<Event>(&mut &garbage[..]).is_err());
    }
}
