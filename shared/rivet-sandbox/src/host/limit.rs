//! Token buckets and a concurrency gate for host-call rate limits.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled at `rate` per second.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(capacity: f64, rate: f64) -> Self {
        Self {
            capacity,
            rate,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub(crate) fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is available.
    fn wait_time(&mut self) -> Duration {
        self.refill();
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

/// A runner-wide gate: at most `concurrency` holders at once, and a shared token bucket.
#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<(TokenBucket, u32)>,
    freed: Condvar,
    concurrency: u32,
}

/// A slot in a [`Gate`], released on drop.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    gate: &'a Gate,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 -= 1;
        self.gate.freed.notify_one();
    }
}

/// Why [`Gate::enter`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// Every slot stayed taken until the deadline.
    Concurrency,
    /// No token came before the deadline.
    Rate,
}

impl Gate {
    /// A gate of `concurrency` slots and `rate` tokens per second (burst: one second's worth).
    pub(crate) fn new(concurrency: u32, rate: f64) -> Self {
        Self {
            state: Mutex::new((TokenBucket::new(rate.max(1.0), rate), 0)),
            freed: Condvar::new(),
            concurrency,
        }
    }

    /// Waits for a free slot and a token, until `deadline`.
    pub(crate) fn enter(&self, deadline: Instant) -> Result<Permit<'_>, Busy> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            let wait = if st.1 >= self.concurrency {
                if now >= deadline {
                    return Err(Busy::Concurrency);
                }
                deadline - now
            } else {
                let need = st.0.wait_time();
                if need.is_zero() && st.0.try_take() {
                    st.1 += 1;
                    return Ok(Permit { gate: self });
                }
                if now + need > deadline {
                    return Err(Busy::Rate);
                }
                need.max(Duration::from_millis(1))
            };
            st = self
                .freed
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills() {
        let mut b = TokenBucket::new(3.0, 1000.0);
        assert!(b.try_take() && b.try_take() && b.try_take());
        let mut slow = TokenBucket::new(2.0, 0.001);
        assert!(slow.try_take() && slow.try_take());
        assert!(!slow.try_take(), "an empty bucket refuses");
        // The fast bucket refills within a few milliseconds: wait for it under a timeout.
        let until = Instant::now() + Duration::from_secs(2);
        while !b.try_take() {
            assert!(Instant::now() < until, "the bucket never refilled");
            std::thread::yield_now();
        }
    }

    #[test]
    fn gate_caps_concurrency_and_gives_up_at_the_deadline() {
        let gate = Gate::new(1, 1000.0);
        let first = gate.enter(Instant::now() + Duration::from_secs(1)).unwrap();
        let busy = gate.enter(Instant::now() + Duration::from_millis(20));
        assert_eq!(busy.unwrap_err(), Busy::Concurrency);
        drop(first);
        assert!(gate.enter(Instant::now() + Duration::from_secs(1)).is_ok());
        let slow = Gate::new(10, 0.01);
        let _p = slow.enter(Instant::now()).unwrap();
        assert_eq!(
            slow.enter(Instant::now() + Duration::from_millis(10))
                .unwrap_err(),
            Busy::Rate
        );
    }
}
