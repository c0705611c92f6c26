//! gzip on every core, as one gzip member.
//!
//! The input is cut into blocks that worker threads deflate at once, each primed with
//! the last 32 KiB before it (so that matches across a boundary are not lost) and
//! ended with a sync flush, which aligns it to a byte: the blocks put end to end are a
//! single deflate stream, which pigz makes the same way. One member matters:
//! barman-cloud-restore reads `data.tar.gz` through Python's streaming tarfile, which
//! stops at the end of the first member of a multi-member file.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Uncompressed bytes per block.
const BLOCK: usize = 1 << 20;
/// The deflate window: what a block may refer back to.
const WINDOW: usize = 32 << 10;

/// One block for a worker: its bytes, the window before it, whether it is the last.
struct Job {
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
    done: mpsc::SyncSender<io::Result<Vec<u8>>>,
}

/// A `Write` that gzips what it is given on `workers` threads into `out`.
pub struct ParGz<W: Write> {
    out: W,
    block: Vec<u8>,
    window: Vec<u8>,
    crc: Crc,
    jobs: Option<mpsc::SyncSender<Job>>,
    /// Results in input order; at most `2 × workers` blocks in flight.
    pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
    in_flight: usize,
    /// Dropped unfinished (on an error), the job queue closes and the workers end
    /// by themselves once their block is done.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl<W: Write> ParGz<W> {
    /// Starts the workers and writes the gzip header.
    pub fn new(mut out: W, level: Compression, workers: usize) -> io::Result<ParGz<W>> {
        let workers = workers.max(1);
        // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        let (tx, rx) = mpsc::sync_channel::<Job>(workers);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pgwarden-gzip-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().map(|r| r.recv()) {
                        Ok(Ok(job)) => job,
                        _ => return,
                    };
                    let result = deflate(level, &job.dict, &job.data, job.last);
                    let _ = job.done.send(result);
                })?;
            threads.push(handle);
        }
        Ok(ParGz {
            out,
            block: Vec::with_capacity(BLOCK),
            window: Vec::new(),
            crc: Crc::new(),
            jobs: Some(tx),
            pending: VecDeque::new(),
            in_flight: workers * 2,
            threads,
        })
    }

    /// Hands the current block to the workers, writing out finished blocks in order
    /// to keep the number in flight bounded.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let dict = std::mem::take(&mut self.window);
        self.window = data[data.len().saturating_sub(WINDOW)..].to_vec();
        if self.window.len() < WINDOW {
            // A short block: keep what came before it too.
            let mut w = dict[dict.len().saturating_sub(WINDOW - self.window.len())..].to_vec();
            w.extend_from_slice(&self.window);
            self.window = w;
        }
        let (done, result) = mpsc::sync_channel(1);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the gzip stream is finished"))?;
        jobs.send(Job {
            dict,
            data,
            last,
            done,
        })
        .map_err(|_| io::Error::other("the gzip workers stopped"))?;
        self.pending.push_back(result);
        while self.pending.len() >= self.in_flight {
            self.write_next()?;
        }
        Ok(())
    }

    fn write_next(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let bytes = rx
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))??;
        self.out.write_all(&bytes)
    }

    /// Compresses what is left, writes the trailer, stops the workers; returns `out`.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.write_next()?;
        }
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let (crc, size) = (self.crc.sum(), self.crc.amount());
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&size.to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParGz<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        self.crc.update(data);
        while !data.is_empty() {
            let room = BLOCK - self.block.len();
            let take = room.min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == BLOCK {
                self.dispatch(false)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw deflate of `data` after `dict`, ended by a sync flush, or by the final block
/// when `last`.
fn deflate(level: Compression, dict: &[u8], data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(level, false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out: Vec<u8> = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        let done = match status {
            Status::StreamEnd => true,
            // A sync flush is complete once deflate stops short of the space it had.
            _ => !last && all_in && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gz(input: &[u8], workers: usize) -> Vec<u8> {
        let mut w = ParGz::new(Vec::new(), Compression::new(1), workers).unwrap();
        // Uneven writes, as a pipe delivers them.
        for chunk in input.chunks(77_777) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: repeats with a drifting counter.
        (0..len)
            .map(|i| ((i / 7) as u8).wrapping_mul(31) ^ (i % 251) as u8 & 0xF0)
            .collect()
    }

    #[test]
    fn one_member_that_plain_gunzip_reads_back() {
        for len in [0, 1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 12_345] {
            let input = sample(len);
            for workers in [1, 2, 4] {
                let out = gz(&input, workers);
                // GzDecoder reads a single member only: all of it must be in one.
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&out[..])
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, input, "len {len}, workers {workers}");
            }
        }
    }

    #[test]
    fn compresses_about_as_well_as_serial_gzip() {
        let input = sample(4 * BLOCK);
        let ours = gz(&input, 2).len();
        let mut serial = flate2::write::GzEncoder::new(Vec::new(), Compression::new(1));
        serial.write_all(&input).unwrap();
        let theirs = serial.finish().unwrap().len();
        assert!(ours <= theirs + theirs / 20 + 1024, "{ours} vs {theirs}");
    }
}
