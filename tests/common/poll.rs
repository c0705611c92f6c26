//! The one deadline loop of the tests (and of the benchmark, which includes this file).

use std::time::{Duration, Instant};

/// Polls `check` until it yields a value; panics with `what` (and the last reason
/// `check` gave) after `timeout`. The one deadline loop for new tests.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
