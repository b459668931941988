//! The one retry policy and the one retry runner.
//!
//! [`Backoff`] is exponential back-off with jitter, capped. [`run`] is the
//! loop every sink retries with: it calls an operation, asks the caller's
//! classifier whether a failure is worth retrying, and waits out the
//! back-off until [`Policy::give_up_after`] has passed since the first
//! attempt. A sink supplies only the operation and the classifier, so what
//! is retried and for how long is the same everywhere.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long and how patiently a transient failure is retried.
#[derive(Clone, Debug)]
pub struct Policy {
    pub initial: Duration,
    pub max: Duration,
    /// Stop retrying (and fail) once this much time has passed since the
    /// first attempt (`--sink.retry-timeout`).
    pub give_up_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// What a classifier says of a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Worth another attempt after the back-off.
    Retry,
    /// Retrying cannot help.
    Stop,
}

/// A failed attempt as many callers see it: the final error when retrying
/// cannot help, or the text of a transient failure.
#[derive(Debug)]
pub enum Failure<D> {
    Definite(D),
    Transient(String),
}

impl<D> Failure<D> {
    /// The classifier for this shape of failure.
    pub fn verdict(&self) -> Verdict {
        match self {
            Failure::Definite(_) => Verdict::Stop,
            Failure::Transient(_) => Verdict::Retry,
        }
    }
}

impl<D: Display> Display for Failure<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Definite(e) => e.fmt(f),
            Failure::Transient(text) => f.write_str(text),
        }
    }
}

/// Why [`run`] stopped, with the last failure.
#[derive(Debug)]
pub enum Stopped<E> {
    /// The classifier said retrying cannot help.
    Definite(E),
    /// Still failing transiently when the policy's time ran out.
    GaveUp(E),
}

impl<E> Stopped<E> {
    /// The last failure, whatever the reason.
    pub fn into_inner(self) -> E {
        match self {
            Stopped::Definite(e) | Stopped::GaveUp(e) => e,
        }
    }
}

/// Runs `op` until it succeeds, `classify` says [`Verdict::Stop`], or
/// `policy.give_up_after` has passed since the first attempt; between
/// attempts it waits out the back-off. `op` is given the attempt number
/// (0 first), so it can count a retry. `what` names the operation in the
/// log. An operation that must borrow its caller mutably between attempts
/// (start over on a fresh connection, send again only what failed) drives
/// [`Attempts`] itself, the same rules in a loop it writes.
pub async fn run<T, E: Display, Fut: Future<Output = Result<T, E>>>(
    policy: &Policy,
    what: &str,
    mut classify: impl FnMut(&E) -> Verdict,
    mut op: impl FnMut(u32) -> Fut,
) -> Result<T, Stopped<E>> {
    let mut attempts = Attempts::new(policy);
    loop {
        match op(attempts.attempt()).await {
            Ok(done) => return Ok(done),
            Err(error) => {
                let verdict = classify(&error);
                attempts.failed(what, error, verdict).await?;
            }
        }
    }
}

/// The state of [`run`] for callers that write the loop themselves:
///
/// ```ignore
/// let mut attempts = Attempts::new(&policy);
/// let done = loop {
///     match op().await {
///         Ok(done) => break done,
///         Err(e) => attempts.failed("what", e, classify(&e)).await?,
///     }
/// };
/// ```
#[derive(Debug)]
pub struct Attempts {
    give_up_after: Duration,
    started: Instant,
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    /// Starts the clock: the policy's time counts from the first attempt.
    pub fn new(policy: &Policy) -> Attempts {
        Attempts {
            give_up_after: policy.give_up_after,
            started: Instant::now(),
            backoff: Backoff::new(policy.initial, policy.max),
            attempt: 0,
        }
    }

    /// The number of the next attempt, 0 first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a failed attempt: returns `Ok` once the back-off is waited out
    /// when another attempt is worth it, else why not, with the failure.
    pub async fn failed<E: Display>(
        &mut self,
        what: &str,
        error: E,
        verdict: Verdict,
    ) -> Result<(), Stopped<E>> {
        if verdict == Verdict::Stop {
            return Err(Stopped::Definite(error));
        }
        if self.started.elapsed() >= self.give_up_after {
            return Err(Stopped::GaveUp(error));
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(what, error = %error, attempt = self.attempt, retry_in = ?delay, "failed; retrying");
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay: doubles up to `max`, with up to 25% random jitter so
    /// several processes do not retry in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter_range = base.as_millis() as u64 / 4;
        let jitter = if jitter_range == 0 {
            0
        } else {
            random_u64() % jitter_range
        };
        base + Duration::from_millis(jitter)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        for (d, base) in delays.iter().zip([100, 200, 400, 800, 800, 800]) {
            assert!(*d >= base && *d <= base + base / 4, "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(126));
    }

    fn quick(give_up_after: Duration) -> Policy {
        Policy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            give_up_after,
        }
    }

    #[tokio::test]
    async fn retries_until_success() {
        let mut seen = vec![];
        let result = run(
            &quick(Duration::from_secs(60)),
            "test",
            |_: &String| Verdict::Retry,
            |attempt| {
                seen.push(attempt);
                async move {
                    if attempt < 3 {
                        Err(format!("failure {attempt}"))
                    } else {
                        Ok(attempt)
                    }
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(seen, [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn stops_at_once_on_a_definite_failure() {
        let mut attempts = 0;
        let result: Result<(), _> = run(
            &quick(Duration::from_secs(60)),
            "test",
            |e: &&str| match *e {
                "definite" => Verdict::Stop,
                _ => Verdict::Retry,
            },
            |attempt| {
                attempts += 1;
                async move {
                    Err(if attempt == 0 {
                        "transient"
                    } else {
                        "definite"
                    })
                }
            },
        )
        .await;
        assert!(matches!(result, Err(Stopped::Definite("definite"))));
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn gives_up_with_the_last_failure_when_time_runs_out() {
        let result: Result<(), _> = run(
            &quick(Duration::from_millis(20)),
            "test",
            |_: &u32| Verdict::Retry,
            |attempt| async move { Err(attempt) },
        )
        .await;
        match result {
            Err(Stopped::GaveUp(last)) => assert!(last >= 1, "retried before giving up"),
            other => panic!("expected to give up, got {other:?}"),
        }
    }
}
