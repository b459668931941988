//! The one retry policy: exponential back-off with jitter, capped.

use std::time::Duration;

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
}
