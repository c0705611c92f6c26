//! How far a long transfer is: a base backup reading PGDATA, a restore reading a
//! backup's objects. A backup or a restore of terabytes runs for hours and someone
//! watches it, in `/status` and `/metrics`, in the log, or as a bar on a terminal: all
//! four read the same [`Figures`], computed here.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The counters a transfer moves: bytes done, and the bytes it has in all (0 until
/// known). Shared between the workers that do the transfer and whoever shows it.
#[derive(Debug)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    /// When the transfer began: when its total became known (what came before, a
    /// listing or a delta restore's checks, is not transfer time).
    started: Mutex<Instant>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            started: Mutex::new(Instant::now()),
        }
    }
}

impl Progress {
    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// The bytes to do in all, once known; the rate counts from here.
    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Where the transfer is now.
    pub fn figures(&self) -> Figures {
        let elapsed = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        Figures::at(self.done(), self.total.load(Ordering::Relaxed), elapsed)
    }
}

/// Where a transfer is: what `/status` shows (flattened into its section), what the
/// log line and the terminal's bar say.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Bytes done so far.
    pub bytes: u64,
    /// Bytes in all (0 until known).
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes a second, over the transfer so far.
    #[serde(default)]
    pub bytes_per_second: f64,
    /// Seconds left at that rate, once there is a rate.
    #[serde(default)]
    pub seconds_left: Option<f64>,
}

impl Figures {
    /// The figures of `done` bytes of `total` after `elapsed`.
    pub fn at(done: u64, total: u64, elapsed: Duration) -> Figures {
        let secs = elapsed.as_secs_f64();
        let (rate, left) = if secs <= 0.0 || done == 0 {
            (0.0, None)
        } else {
            let rate = done as f64 / secs;
            (rate, Some(total.saturating_sub(done) as f64 / rate))
        };
        Figures {
            bytes: done,
            total_bytes: total,
            bytes_per_second: rate,
            seconds_left: left,
        }
    }

    /// The share done, 0 to 1 (0 while the total is unknown).
    pub fn fraction(&self) -> f64 {
        if self.total_bytes > 0 {
            (self.bytes as f64 / self.total_bytes as f64).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// One line of a progress bar `width` wide:
    /// `[#####.....]  45%  1.2/2.7 GB  120 MB/s  12 s left`.
    pub fn bar(&self, width: usize) -> String {
        let frac = self.fraction();
        let filled = ((frac * width as f64).round() as usize).min(width);
        let left = self
            .seconds_left
            .map(|s| format!("{:.0} s left", s.max(0.0)))
            .unwrap_or_default();
        format!(
            "[{}{}] {:>3.0}%  {:.1}/{:.1} GB  {:.0} MB/s  {left}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0,
            self.bytes as f64 / 1e9,
            self.total_bytes as f64 / 1e9,
            self.bytes_per_second / 1e6,
        )
    }

    /// Logs the figures at info level, `what` (`"backup progress"`, `"restore
    /// progress"`) being the message and `backup_id` the backup it is about.
    pub fn log(&self, what: &'static str, backup_id: &str) {
        tracing::info!(
            backup_id,
            bytes = self.bytes,
            total_bytes = self.total_bytes,
            percent = (self.fraction() * 100.0).round(),
            mb_per_second = (self.bytes_per_second / 1e6 * 10.0).round() / 10.0,
            seconds_left = self.seconds_left.map(f64::round),
            "{what}"
        );
    }
}

/// How often a running transfer logs its progress (`/status` has it at all times).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs `progress` every [`LOG_EVERY`] until the returned task is aborted (or dropped
/// with its guard, see [`Ticker`]).
pub fn log_every(what: &'static str, backup_id: String, progress: Arc<Progress>) -> Ticker {
    Ticker(tokio::spawn(async move {
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + LOG_EVERY, LOG_EVERY);
        loop {
            every.tick().await;
            progress.figures().log(what, &backup_id);
        }
    }))
}

/// A periodic task that ends when this is dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The restore this process is doing from an archive (a bootstrap, a replica rebuilt
/// from its archive), for `/status` and `/metrics`; a restore drill shows its own in
/// its section.
#[derive(Debug, Clone, Default)]
pub struct Restoring(Arc<Mutex<Option<Shown>>>);

/// The backup id a restore is about, and its counters.
type Shown = (String, Arc<Progress>);

/// A restore under way, as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestoreRunning {
    /// The backup being restored (the newest of a chain).
    pub backup_id: String,
    /// Bytes of its objects read from the archive, of all it has to read.
    #[serde(flatten)]
    pub progress: Figures,
}

impl Restoring {
    /// Shows the restore of `backup_id` until the returned guard is dropped.
    pub fn show(&self, backup_id: &str, progress: Arc<Progress>) -> Showing<'_> {
        *self.lock() = Some((backup_id.to_owned(), progress));
        Showing(self)
    }

    /// The restore under way, if one is.
    pub fn now(&self) -> Option<RestoreRunning> {
        self.lock().as_ref().map(|(id, p)| RestoreRunning {
            backup_id: id.clone(),
            progress: p.figures(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Shown>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Clears what [`Restoring::show`] showed when dropped.
pub struct Showing<'a>(&'a Restoring);

impl Drop for Showing<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

/// Draws `figures()` as a bar on stderr every half second until `done`; call it on a
/// thread of its own, only when stderr is a terminal. Nothing is drawn while
/// `figures()` is `None`.
pub fn draw_bar(figures: impl Fn() -> Option<Figures>, done: &std::sync::atomic::AtomicBool) {
    use std::io::Write;
    let mut drawn = false;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(f) = figures() {
            eprint!("\r{}\x1b[K", f.bar(30));
            let _ = std::io::stderr().flush();
            drawn = true;
        }
    }
    if drawn {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_say_the_rate_and_the_time_left() {
        // (done, total, elapsed s) -> (rate, left)
        for (done, total, secs, rate, left) in [
            (0, 100, 5.0, 0.0, None),
            (50, 100, 0.0, 0.0, None),
            (50, 100, 5.0, 10.0, Some(5.0)),
            (100, 100, 4.0, 25.0, Some(0.0)),
            // A total not known yet, or exceeded (files grew while read): no negative time.
            (30, 0, 3.0, 10.0, Some(0.0)),
            (120, 100, 2.0, 60.0, Some(0.0)),
        ] {
            let f = Figures::at(done, total, Duration::from_secs_f64(secs));
            assert_eq!(
                (f.bytes_per_second, f.seconds_left),
                (rate, left),
                "{done}/{total} in {secs}s"
            );
        }
    }

    #[test]
    fn the_bar_fills_with_the_share_done() {
        let f = Figures {
            bytes: 1_215_000_000,
            total_bytes: 2_700_000_000,
            bytes_per_second: 120e6,
            seconds_left: Some(12.4),
        };
        assert_eq!(
            f.bar(20),
            "[#########...........]  45%  1.2/2.7 GB  120 MB/s  12 s left"
        );
        let unknown = Figures::at(0, 0, Duration::ZERO);
        assert_eq!(unknown.bar(4), "[....]   0%  0.0/0.0 GB  0 MB/s  ");
        let over = Figures::at(150, 100, Duration::from_secs(1));
        assert!(over.bar(4).starts_with("[####] 100%"), "{}", over.bar(4));
    }

    #[test]
    fn a_restore_is_shown_while_its_guard_lives() {
        let r = Restoring::default();
        assert_eq!(r.now(), None);
        let p = Arc::new(Progress::default());
        p.set_total(10);
        {
            let _shown = r.show("20261207T000000", p.clone());
            p.add(4);
            let now = r.now().unwrap();
            assert_eq!(now.backup_id, "20261207T000000");
            assert_eq!((now.progress.bytes, now.progress.total_bytes), (4, 10));
            // Flattened in /status, as the backup's figures are.
            let json = serde_json::to_value(&now).unwrap();
            assert_eq!(json["bytes"], 4);
            assert_eq!(json["total_bytes"], 10);
        }
        assert_eq!(r.now(), None);
    }
}
