//! When to restart postgres after a crash, and when to give up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do about a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this delay.
    Restart(Duration),
    /// Too many crashes in the window: exit so the kubelet takes over.
    GiveUp,
}

/// Exponential backoff over the crashes of a sliding window.
#[derive(Debug)]
pub struct CrashPolicy {
    max: u32,
    window: Duration,
    crashes: VecDeque<Instant>,
}

const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

impl CrashPolicy {
    /// Gives up at the `max`th crash within `window`.
    pub fn new(max: u32, window: Duration) -> CrashPolicy {
        CrashPolicy {
            max,
            window,
            crashes: VecDeque::new(),
        }
    }

    /// Records a crash at `now` and decides.
    pub fn record(&mut self, now: Instant) -> Decision {
        while let Some(first) = self.crashes.front() {
            if now.duration_since(*first) > self.window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        self.crashes.push_back(now);
        let n = self.crashes.len() as u32;
        if n >= self.max {
            return Decision::GiveUp;
        }
        let delay = FIRST_DELAY.saturating_mul(1 << (n - 1).min(16));
        Decision::Restart(delay.min(MAX_DELAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_then_gives_up_within_the_window() {
        let mut p = CrashPolicy::new(4, Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(p.record(t), Decision::Restart(Duration::from_millis(500)));
        assert_eq!(
            p.record(t + Duration::from_secs(1)),
            Decision::Restart(Duration::from_secs(1))
        );
        assert_eq!(
            p.record(t + Duration::from_secs(2)),
            Decision::Restart(Duration::from_secs(2))
        );
        assert_eq!(p.record(t + Duration::from_secs(3)), Decision::GiveUp);
    }

    #[test]
    fn forgets_crashes_outside_the_window() {
        let mut p = CrashPolicy::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert!(matches!(p.record(t), Decision::Restart(_)));
        assert_eq!(
            p.record(t + Duration::from_secs(11)),
            Decision::Restart(Duration::from_millis(500))
        );
        assert_eq!(p.record(t + Duration::from_secs(12)), Decision::GiveUp);
    }

    #[test]
    fn caps_the_delay() {
        let mut p = CrashPolicy::new(100, Duration::from_secs(3600));
        let t = Instant::now();
        let mut last = Decision::GiveUp;
        for i in 0..20 {
            last = p.record(t + Duration::from_secs(i));
        }
        assert_eq!(last, Decision::Restart(MAX_DELAY));
    }
}
