//! The clock lease deadlines are measured on.
//!
//! `CLOCK_BOOTTIME`, not `Instant` (`CLOCK_MONOTONIC`): it keeps counting while the
//! machine or VM is suspended, and etcd's clock does too, so a primary thawed after a
//! pause sees its lease as old as it really is.

use std::time::Duration;

/// Time since boot, suspend included.
pub fn now() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(t) => Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().max(0) as u32),
        // Only on a kernel without CLOCK_BOOTTIME (before 2.6.39): the monotonic clock
        // is the next best.
        Err(_) => match clock_gettime(ClockId::CLOCK_MONOTONIC) {
            Ok(t) => Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().max(0) as u32),
            // Never a constant: a clock that stood still would make a lease look fresh.
            Err(_) => {
                static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
                START.get_or_init(std::time::Instant::now).elapsed()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn moves_forward() {
        let a = super::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(super::now() > a);
    }
}
