//! The worker's side of host calls: send [`Event::Call`], block for the matching [`Reply`].

use super::{CallError, HostCall, HostResponse};
use crate::events::{read_frame, Event, Level, Reply, Source};
use crate::modules::Sink;
use std::cell::{Cell, RefCell};
use std::io::Read;
use std::time::Duration;

/// The worker's stdin after the request: replies to host calls arrive there.
pub struct HostChannel {
    input: RefCell<Option<Box<dyn Read>>>,
    next_id: Cell<u64>,
}

impl std::fmt::Debug for HostChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostChannel")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl HostChannel {
    /// A channel reading replies from `input`.
    pub fn new(input: Box<dyn Read>) -> Self {
        Self {
            input: RefCell::new(Some(input)),
            next_id: Cell::new(1),
        }
    }

    /// A channel with no parent (in-process evaluation): every call fails.
    pub fn closed() -> Self {
        Self {
            input: RefCell::new(None),
            next_id: Cell::new(1),
        }
    }

    /// Asks the parent to run `call` within `budget`, and waits for its answer. The wait is
    /// not interruptible from here: the parent bounds the call by `budget` and kills the worker
    /// at the stage's hard deadline.
    pub fn call(
        &self,
        sink: &Sink,
        budget: Duration,
        call: HostCall,
    ) -> Result<HostResponse, CallError> {
        let mut input = self.input.borrow_mut();
        let Some(reader) = input.as_mut() else {
            return Err(CallError::failed(
                "host calls are not available here (no parent process to answer them)",
            ));
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        sink.emit(&Event::Call {
            id,
            budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
            call,
        });
        loop {
            match read_frame::<Reply>(reader) {
                Ok(Some(Reply {
                    id: reply_id,
                    result: Ok(HostResponse::Output(out)),
                })) if reply_id == id => {
                    // A line of the running call's output: log it (masked, capped) and keep waiting.
                    let (level, source) = if out.stderr {
                        (Level::Error, Source::Stderr)
                    } else {
                        (Level::Info, Source::Stdout)
                    };
                    sink.log(level, source, &out.line);
                    continue;
                }
                Ok(Some(reply)) if reply.id == id => return reply.result,
                Ok(Some(reply)) => {
                    *input = None;
                    return Err(CallError::protocol(format!(
                        "the parent answered call {} while call {id} was waiting",
                        reply.id
                    )));
                }
                Ok(None) => {
                    *input = None;
                    return Err(CallError::failed("the parent closed the host-call channel"));
                }
                Err(e) => {
                    *input = None;
                    return Err(CallError::protocol(format!(
                        "unreadable answer from the parent: {e}"
                    )));
                }
            }
        }
    }
}
