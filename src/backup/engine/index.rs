//! The index of a data part: where, in the object as stored, a reader can start to get
//! any [`WINDOW`] of any file without reading the part from its beginning. A delta
//! restore ([`crate::bootstrap::restore::delta`]) compares each window's XXH3-128 with
//! the copy it already has and fetches only the windows that differ, with ranged reads
//! (pgBackRest's delta restore compares whole files and reads whole ones).
//!
//! A gzip part stays one gzip member that any reader (barman-cloud-restore, `tar xzf`)
//! reads whole. At a seek point the compressor does a full flush (zlib's
//! `Z_FULL_FLUSH`): its output is byte-aligned and nothing after it refers to what came
//! before, so raw inflation can start there. A seek point is made where a window
//! begins once [`SEEK_EVERY`] bytes of tar have passed since the last one: every
//! window of a large file starts at one, small files share them. That costs a few
//! bytes a seek point and the 32 KiB of history deflate forgets there: on an initdb's
//! cluster at zlib's level 1, 1% more stored bytes with a seek point every 128 KiB
//! (2% at 64 KiB, 0.2% at 1 MiB), and a delta reads at most that far before a small
//! file that changed. An uncompressed part needs none: its offsets are the tar's.
//!
//! Stored beside the part as `index-<part name>` (barman-cloud takes only `data*` and
//! `<oid>*` names for parts), as text:
//!
//! ```text
//! pgwarden-part-index 1
//! S <stored offset> <tar offset>             a seek point
//! D <mode, octal> <path>                     a directory
//! F <mode, octal> <mtime> <size> <path>      a file, then its windows in order:
//! W <tar offset> <CRC-32C, hex> <XXH3-128, hex>
//! ```
//!
//! A delta restore takes a window it has for the backup's when their XXH3-128 hashes
//! are equal (a 32-bit CRC would let one differing window in 2^32 through, and a
//! multi-terabyte copy has millions); the CRC-32Cs, put together, must give the
//! manifest's CRC-32C of the file, which ties the index to the manifest.

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;

/// The span of a file one pair of checksums covers, and what a delta restore fetches
/// at least.
pub const WINDOW: u64 = 1 << 20;
/// Tar bytes between seek points, at least.
pub const SEEK_EVERY: u64 = 128 << 10;
/// What an index's object name starts with.
pub const PREFIX: &str = "index-";
const MAGIC: &str = "pgwarden-part-index 1";
/// The gzip header [`SeekableGz`] writes: deflate, no name, no time, unknown system.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Where reading can start: `stored` bytes into the object is `tar` bytes into the tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seek {
    /// Offset in the object as stored.
    pub stored: u64,
    /// Offset in the tar it holds.
    pub tar: u64,
}

/// A directory of the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    /// As the tar names it.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
}

/// A [`WINDOW`] of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Where its first byte is in the tar.
    pub tar: u64,
    /// CRC-32C of its bytes.
    pub crc32c: u32,
    /// XXH3-128 of its bytes.
    pub xxh3: u128,
}

/// A file of the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// As the tar names it.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Bytes.
    pub size: u64,
    /// One per [`WINDOW`], the last one shorter.
    pub windows: Vec<Window>,
}

impl File {
    /// Where window `k` begins in the file, and its length.
    pub fn span(&self, k: usize) -> (u64, u64) {
        let at = k as u64 * WINDOW;
        (at, self.size.saturating_sub(at).min(WINDOW))
    }
}

/// A part's index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartIndex {
    /// In tar order; a gzip part's first is where its deflate data begins.
    pub seeks: Vec<Seek>,
    /// Its directories.
    pub dirs: Vec<Dir>,
    /// Its files, in tar order.
    pub files: Vec<File>,
}

/// The name of the index of the part named `part`.
pub fn object_name(part: &str) -> String {
    format!("{PREFIX}{part}")
}

/// Renders an index.
pub fn render(index: &PartIndex) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64 + index.files.len() * 80);
    out.push_str(MAGIC);
    out.push('\n');
    for s in &index.seeks {
        let _ = writeln!(out, "S {} {}", s.stored, s.tar);
    }
    for d in &index.dirs {
        let _ = writeln!(out, "D {:o} {}", d.mode, d.path);
    }
    for f in &index.files {
        let _ = writeln!(out, "F {:o} {} {} {}", f.mode, f.mtime, f.size, f.path);
        for w in &f.windows {
            let _ = writeln!(out, "W {} {:08x} {:032x}", w.tar, w.crc32c, w.xxh3);
        }
    }
    out
}

/// Parses an index; `Err` says what is wrong with it.
pub fn parse(text: &str) -> Result<PartIndex, String> {
    let mut lines = text.lines().enumerate();
    if lines.next().map(|(_, l)| l) != Some(MAGIC) {
        return Err(format!("it does not begin with {MAGIC:?}"));
    }
    let mut index = PartIndex::default();
    for (n, line) in lines {
        let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        let (kind, rest) = line.split_once(' ').ok_or_else(|| bad("no fields"))?;
        let num = |s: Option<&str>| -> Result<u64, String> {
            s.and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("a bad number"))
        };
        let mode = |s: Option<&str>| -> Result<u32, String> {
            s.and_then(|s| u32::from_str_radix(s, 8).ok())
                .ok_or_else(|| bad("a bad mode"))
        };
        match kind {
            "S" => {
                let mut f = rest.split(' ');
                let seek = Seek {
                    stored: num(f.next())?,
                    tar: num(f.next())?,
                };
                if index
                    .seeks
                    .last()
                    .is_some_and(|l| l.tar >= seek.tar || l.stored >= seek.stored)
                {
                    return Err(bad("seek points out of order"));
                }
                index.seeks.push(seek);
            }
            "D" => {
                let (m, path) = rest.split_once(' ').ok_or_else(|| bad("no path"))?;
                index.dirs.push(Dir {
                    path: path.to_owned(),
                    mode: mode(Some(m))?,
                });
            }
            "F" => {
                let mut f = rest.splitn(4, ' ');
                let m = mode(f.next())?;
                let mtime = f
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("a bad time"))?;
                let size = num(f.next())?;
                let path = f.next().ok_or_else(|| bad("no path"))?.to_owned();
                index.files.push(File {
                    path,
                    mode: m,
                    mtime,
                    size,
                    windows: Vec::new(),
                });
            }
            "W" => {
                let mut f = rest.split(' ');
                let (tar, crc, hash) = (f.next(), f.next(), f.next());
                let crc32c = crc
                    .and_then(|c| u32::from_str_radix(c, 16).ok())
                    .ok_or_else(|| bad("a bad checksum"))?;
                let xxh3 = hash
                    .and_then(|h| u128::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("a bad hash"))?;
                let file = index
                    .files
                    .last_mut()
                    .ok_or_else(|| bad("a window before any file"))?;
                file.windows.push(Window {
                    tar: num(tar)?,
                    crc32c,
                    xxh3,
                });
            }
            _ => return Err(bad("an unknown line")),
        }
    }
    for f in &index.files {
        if f.windows.len() as u64 != f.size.div_ceil(WINDOW) {
            return Err(format!(
                "{} has {} windows for {} bytes",
                f.path,
                f.windows.len(),
                f.size
            ));
        }
    }
    Ok(index)
}

impl PartIndex {
    /// What to read of the object to get the tar's bytes `from..to`: where to start
    /// (a seek point at or before `from`) and where the stored bytes needed end
    /// (`None`: the object's end). `None` when a gzip part's index has no seek point.
    pub fn stored_range(&self, from: u64, to: u64, gzip: bool) -> Option<(Seek, Option<u64>)> {
        if !gzip {
            return Some((
                Seek {
                    stored: from,
                    tar: from,
                },
                Some(to),
            ));
        }
        let at = self.seeks.partition_point(|s| s.tar <= from);
        let start = *self.seeks.get(at.checked_sub(1)?)?;
        // A seek point's stored offset is where the data before it has all been
        // written out (the full flush before it).
        let end = self.seeks[at..]
            .iter()
            .find(|s| s.tar >= to)
            .map(|s| s.stored);
        Some((start, end))
    }
}

/// What a part's writer and the reader of the file being written share: the reader
/// says where a window begins, the writer sees at which tar offset it lands (and makes
/// a seek point there), and the reader gives each window's checksums when it ends.
#[derive(Debug, Default)]
pub struct Recorder {
    index: PartIndex,
    /// The next bytes written begin a window.
    pending: bool,
    /// Where the current file's windows landed in the tar, so far.
    starts: Vec<u64>,
    /// Their CRC-32Cs and hashes (a window may end in the very read that began it,
    /// before its bytes are written: the two lists are put together at the file's end).
    sums: Vec<(u32, u128)>,
    /// A file went in that could not be indexed: the part gets no index.
    broken: bool,
}

/// A [`Recorder`] shared by a part's writer and the file reader of the moment.
pub type Shared = Rc<RefCell<Recorder>>;

impl Recorder {
    /// Whether the bytes about to be written at tar offset `tar` begin a window: then
    /// the window is recorded there, and `true` when a seek point should be made
    /// first (the caller calls [`Recorder::seek`] after making it).
    pub fn window_starts(&mut self, tar: u64) -> bool {
        if !std::mem::take(&mut self.pending) {
            return false;
        }
        self.starts.push(tar);
        self.index
            .seeks
            .last()
            .is_none_or(|s| tar - s.tar >= SEEK_EVERY)
    }

    /// A seek point was made.
    pub fn seek(&mut self, seek: Seek) {
        self.index.seeks.push(seek);
    }

    /// A directory went in.
    pub fn dir(&mut self, path: &str, mode: u32) {
        if path.contains(['\n', '\r']) {
            self.broken = true;
        }
        self.index.dirs.push(Dir {
            path: path.to_owned(),
            mode,
        });
    }

    /// A file is about to go in.
    pub fn begin_file(&mut self) {
        self.starts.clear();
        self.sums.clear();
        self.pending = false;
    }

    /// A window of the current file begins with the next bytes the reader serves.
    pub fn begin_window(&mut self) {
        self.pending = true;
    }

    /// The current window ended, with this CRC-32C and XXH3-128.
    pub fn end_window(&mut self, crc32c: u32, xxh3: u128) {
        self.sums.push((crc32c, xxh3));
    }

    /// The current file went in whole.
    pub fn end_file(&mut self, path: &str, mode: u32, mtime: i64, size: u64) {
        let count = size.div_ceil(WINDOW) as usize;
        // Each window lands WINDOW bytes after the one before: anything else (a
        // buffering writer between the tar and the sink) would record wrong offsets.
        let contiguous = self
            .starts
            .iter()
            .enumerate()
            .all(|(k, t)| *t == self.starts[0] + k as u64 * WINDOW);
        if self.starts.len() != count
            || self.sums.len() != count
            || !contiguous
            || path.contains(['\n', '\r'])
        {
            self.broken = true;
        }
        let windows = (self.starts.drain(..).zip(self.sums.drain(..)))
            .map(|(tar, (crc32c, xxh3))| Window { tar, crc32c, xxh3 })
            .collect();
        self.index.files.push(File {
            path: path.to_owned(),
            mode,
            mtime,
            size,
            windows,
        });
    }

    /// The index, unless something could not be indexed.
    pub fn finish(&mut self) -> Option<PartIndex> {
        (!self.broken).then(|| std::mem::take(&mut self.index))
    }
}

/// Reads a file for the tar in windows: says where each begins and what its checksums
/// are (see [`Recorder`]); never serves bytes of two windows in one read.
pub struct Windowed<'a, R> {
    inner: R,
    recorder: &'a Shared,
    size: u64,
    pos: u64,
    crc: u32,
    hash: xxhash_rust::xxh3::Xxh3,
}

impl<'a, R> Windowed<'a, R> {
    /// Reads the `size` bytes of `inner`.
    pub fn new(inner: R, size: u64, recorder: &'a Shared) -> Self {
        Windowed {
            inner,
            recorder,
            size,
            pos: 0,
            crc: 0,
            hash: xxhash_rust::xxh3::Xxh3::new(),
        }
    }
}

impl<R: io::Read> io::Read for Windowed<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        if self.pos % WINDOW == 0 {
            self.recorder.borrow_mut().begin_window();
            self.crc = 0;
            self.hash.reset();
        }
        let left = WINDOW - self.pos % WINDOW;
        let want = (out.len() as u64).min(left).min(self.size - self.pos) as usize;
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before its size",
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &out[..n]);
        self.hash.update(&out[..n]);
        self.pos += n as u64;
        if self.pos % WINDOW == 0 || self.pos == self.size {
            self.recorder
                .borrow_mut()
                .end_window(self.crc, self.hash.digest128());
        }
        Ok(n)
    }
}

/// A gzip writer that can make seek points: one gzip member, deflated at `level`,
/// with a full flush at each [`SeekableGz::seek_point`].
pub struct SeekableGz<W: Write> {
    inner: W,
    z: flate2::Compress,
    crc: flate2::Crc,
    out: Vec<u8>,
    stored: u64,
}

impl<W: Write> SeekableGz<W> {
    /// Starts the member (its header goes out now).
    pub fn new(mut inner: W, level: u32) -> io::Result<Self> {
        inner.write_all(&GZIP_HEADER)?;
        Ok(SeekableGz {
            inner,
            z: flate2::Compress::new(flate2::Compression::new(level), false),
            crc: flate2::Crc::new(),
            out: Vec::with_capacity(128 << 10),
            stored: GZIP_HEADER.len() as u64,
        })
    }

    /// Where the deflate data begins: the first seek point.
    pub fn first_seek() -> Seek {
        Seek {
            stored: GZIP_HEADER.len() as u64,
            tar: 0,
        }
    }

    /// Flushes fully: what follows can be inflated from here on its own. Returns the
    /// seek point.
    pub fn seek_point(&mut self) -> io::Result<Seek> {
        self.deflate(&[], flate2::FlushCompress::Full)?;
        Ok(Seek {
            stored: self.stored,
            tar: self.z.total_in(),
        })
    }

    /// The writer it writes to.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Ends the member (the trailer: CRC-32 and length) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.deflate(&[], flate2::FlushCompress::Finish)?;
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.inner)
    }

    fn deflate(&mut self, mut input: &[u8], flush: flate2::FlushCompress) -> io::Result<()> {
        loop {
            self.out.clear();
            let before = self.z.total_in();
            let status = self
                .z
                .compress_vec(input, &mut self.out, flush)
                .map_err(io::Error::other)?;
            let used = (self.z.total_in() - before) as usize;
            input = &input[used..];
            self.inner.write_all(&self.out)?;
            self.stored += self.out.len() as u64;
            let room_left = self.out.len() < self.out.capacity();
            let done = match flush {
                flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
                flate2::FlushCompress::None => input.is_empty(),
                _ => input.is_empty() && room_left,
            };
            if done {
                return Ok(());
            }
            if used == 0 && self.out.is_empty() {
                return Err(io::Error::other("the compressor made no progress"));
            }
        }
    }
}

impl<W: Write> Write for SeekableGz<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.crc.update(data);
        self.deflate(data, flate2::FlushCompress::None)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a part's tar is stored.
pub enum Compressor<W: Write> {
    /// gzip, with seek points.
    Gzip(Box<SeekableGz<W>>),
    /// As it is.
    Plain(W),
}

/// What a part's tar is written into: the compressor, counting the tar's bytes so that
/// the index records where each window of a file lands, and making a seek point where
/// one begins (see [`Recorder`]).
pub struct Sink<W: Write> {
    /// Where the bytes go.
    pub out: Compressor<W>,
    tar: u64,
    /// None for a part without an index.
    pub recorder: Option<Shared>,
}

impl<W: Write> Sink<W> {
    /// Writes into `out`, recording into `recorder`; a gzip part's first seek point is
    /// recorded now.
    pub fn new(out: Compressor<W>, recorder: Option<Shared>) -> Self {
        if let (Some(rec), Compressor::Gzip(_)) = (&recorder, &out) {
            rec.borrow_mut().seek(SeekableGz::<W>::first_seek());
        }
        Sink {
            out,
            tar: 0,
            recorder,
        }
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(rec) = &self.recorder {
            if rec.borrow_mut().window_starts(self.tar) {
                if let Compressor::Gzip(g) = &mut self.out {
                    rec.borrow_mut().seek(g.seek_point()?);
                }
            }
        }
        let n = match &mut self.out {
            Compressor::Gzip(g) => g.write(data),
            Compressor::Plain(p) => p.write(data),
        }?;
        self.tar += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tar header as a part has them (GNU, numeric owner left to the restore).
pub fn tar_header(mode: u32, mtime: i64, size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(mode);
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(size);
    h.set_entry_type(kind);
    h
}

/// Appends a regular file of `size` bytes read from `data` to a part's tar, and
/// records it in the part's index when it has one.
pub fn append_file<W: Write>(
    tar: &mut tar::Builder<Sink<W>>,
    path: &str,
    data: impl io::Read,
    mode: u32,
    mtime: i64,
    size: u64,
) -> io::Result<()> {
    let mut h = tar_header(mode, mtime, size, tar::EntryType::Regular);
    let Some(rec) = tar.get_ref().recorder.clone() else {
        return tar.append_data(&mut h, path, data);
    };
    rec.borrow_mut().begin_file();
    tar.append_data(&mut h, path, Windowed::new(data, size, &rec))?;
    rec.borrow_mut().end_file(path, mode, mtime, size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Half compressible.
                if i % 2 == 0 {
                    x as u8
                } else {
                    b'a'
                }
            })
            .collect()
    }

    #[test]
    fn an_index_reads_back_as_written_and_bad_ones_are_refused() {
        let index = PartIndex {
            seeks: vec![
                SeekableGz::<Vec<u8>>::first_seek(),
                Seek {
                    stored: 99,
                    tar: 4096,
                },
            ],
            dirs: vec![Dir {
                path: "base/5".into(),
                mode: 0o700,
            }],
            files: vec![
                File {
                    path: "base/5/a file".into(),
                    mode: 0o600,
                    mtime: 1_700_000_000,
                    size: WINDOW + 1,
                    windows: vec![
                        Window {
                            tar: 512,
                            crc32c: 7,
                            xxh3: 1,
                        },
                        Window {
                            tar: 512 + WINDOW,
                            crc32c: 0xdead_beef,
                            xxh3: u128::MAX,
                        },
                    ],
                },
                File {
                    path: "empty".into(),
                    mode: 0o600,
                    mtime: 0,
                    size: 0,
                    windows: vec![],
                },
            ],
        };
        assert_eq!(parse(&render(&index)), Ok(index.clone()));
        for (bad, why) in [
            ("nope\n", "does not begin"),
            (
                "pgwarden-part-index 1\nW 1 00 00\n",
                "a window before any file",
            ),
            ("pgwarden-part-index 1\nF 600 0 5 x\nW 1 00\n", "a bad hash"),
            ("pgwarden-part-index 1\nF 600 0 5 x\n", "has 0 windows"),
            ("pgwarden-part-index 1\nS 1 9\nS 2 9\n", "out of order"),
            ("pgwarden-part-index 1\nS 2 9\nS 2 10\n", "out of order"),
            ("pgwarden-part-index 1\nX 1\n", "unknown line"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn stored_ranges_start_at_a_seek_point_and_end_at_the_next_one_past_the_bytes() {
        let index = PartIndex {
            seeks: vec![
                Seek { stored: 10, tar: 0 },
                Seek {
                    stored: 500,
                    tar: 1000,
                },
                Seek {
                    stored: 900,
                    tar: 2000,
                },
            ],
            ..Default::default()
        };
        let s = |stored, tar| Seek { stored, tar };
        let cases = [
            ((0, 10), Some((s(10, 0), Some(500)))),
            ((999, 1000), Some((s(10, 0), Some(500)))),
            ((1000, 1001), Some((s(500, 1000), Some(900)))),
            ((1500, 2000), Some((s(500, 1000), Some(900)))),
            ((1500, 2001), Some((s(500, 1000), None))),
            ((2500, 3000), Some((s(900, 2000), None))),
        ];
        for ((from, to), want) in cases {
            assert_eq!(index.stored_range(from, to, true), want, "{from}..{to}");
        }
        assert_eq!(
            index.stored_range(7, 9, false),
            Some((s(7, 7), Some(9))),
            "uncompressed: the tar's own offsets"
        );
        assert_eq!(PartIndex::default().stored_range(0, 1, true), None);
    }

    #[test]
    fn a_seekable_gzip_reads_whole_and_from_every_seek_point() {
        let data = noise(3 << 20, 1);
        let mut gz = SeekableGz::new(Vec::new(), 1).unwrap();
        let mut seeks = vec![SeekableGz::<Vec<u8>>::first_seek()];
        for chunk in data.chunks(700 << 10) {
            gz.write_all(chunk).unwrap();
            seeks.push(gz.seek_point().unwrap());
        }
        let stored = gz.finish().unwrap();
        // Whole, by an ordinary gzip reader (the trailer's CRC checked).
        let mut whole = Vec::new();
        flate2::read::GzDecoder::new(stored.as_slice())
            .read_to_end(&mut whole)
            .unwrap();
        assert_eq!(whole, data);
        // From each seek point, by raw inflation of the bytes up to the next one.
        for pair in seeks.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let input = &stored[from.stored as usize..to.stored as usize];
            let mut out = vec![0u8; (to.tar - from.tar) as usize];
            flate2::read::DeflateDecoder::new(input)
                .read_exact(&mut out)
                .unwrap();
            assert_eq!(
                out,
                &data[from.tar as usize..to.tar as usize],
                "{from:?}..{to:?}"
            );
        }
    }

    #[test]
    fn windows_are_recorded_where_they_land_with_their_checksums() {
        let rec: Shared = Default::default();
        let body = noise(2 * WINDOW as usize + 5, 2);
        rec.borrow_mut().begin_file();
        let mut r = Windowed::new(body.as_slice(), body.len() as u64, &rec);
        // What a tar builder does: read, then write, the tar offset counting on.
        let (mut tar, mut buf, mut seeks) = (512u64, vec![0u8; 8192], 0);
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            if rec.borrow_mut().window_starts(tar) {
                rec.borrow_mut().seek(Seek { stored: tar, tar });
                seeks += 1;
            }
            tar += n as u64;
        }
        rec.borrow_mut().end_file("f", 0o600, 1, body.len() as u64);
        // A file read in one go: its window ends in the read that begins it.
        rec.borrow_mut().begin_file();
        let mut r = Windowed::new(&b"small"[..], 5, &rec);
        assert_eq!(r.read(&mut buf).unwrap(), 5);
        assert!(
            !rec.borrow_mut().window_starts(tar),
            "too close to a seek point"
        );
        rec.borrow_mut().end_file("s", 0o600, 1, 5);
        let small = rec.borrow().index.files.last().unwrap().windows.clone();
        assert_eq!(
            small,
            [Window {
                tar,
                crc32c: crc32c::crc32c(b"small"),
                xxh3: xxhash_rust::xxh3::xxh3_128(b"small"),
            }]
        );
        let index = rec.borrow_mut().finish().unwrap();
        let f = &index.files[0];
        assert_eq!(
            seeks, 3,
            "each window of a large file starts at a seek point"
        );
        for (k, w) in f.windows.iter().enumerate() {
            let (at, len) = f.span(k);
            assert_eq!(w.tar, 512 + at);
            let bytes = &body[at as usize..(at + len) as usize];
            assert_eq!(w.crc32c, crc32c::crc32c(bytes));
            assert_eq!(w.xxh3, xxhash_rust::xxh3::xxh3_128(bytes));
        }
        // A file whose windows do not add up leaves the part without an index.
        rec.borrow_mut().begin_file();
        rec.borrow_mut().end_file("g", 0o600, 1, 10);
        assert_eq!(rec.borrow_mut().finish(), None);
    }
}
