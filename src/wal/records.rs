//! Checking the CRC-32C of every WAL record in a segment.
//!
//! This is how pgwarden establishes the integrity of an archived segment that
//! carries no checksum of its own and lost (or never had) its SHA-256: an
//! uncompressed object written by barman-cloud, say. postgres itself takes a record
//! that fails its CRC for the end of WAL, so a flipped bit would otherwise end a
//! point-in-time recovery early without an error.
//!
//! Layout (PostgreSQL's xlog_internal.h and xlogrecord.h): every page starts with a
//! header, long (40 bytes) on a segment's first page and short (24) on the others;
//! records are 8-byte aligned, may span pages, and start with `xl_tot_len` (u32) and
//! end their 24-byte header with `xl_crc`, a CRC-32C over the record's data followed
//! by the header's first 20 bytes.

use std::io::Read;

const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const CRC_OFFSET: usize = 20;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;

fn maxalign(n: u64) -> u64 {
    (n + 7) & !7
}

/// What the walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Records whose CRC matched.
    pub records: u64,
}

enum Step {
    /// Bytes of a record that began in the previous segment: not checkable here.
    Continuation(u64),
    /// Collecting a record (its first bytes, then all `xl_tot_len` of them).
    Record(Vec<u8>),
    /// Past the last record: only zeros may follow (postgres zeroes pages before use).
    Zeros,
}

/// Walks the segment in `src` (`block` bytes a page, `seg_size` in all), checking
/// every record that starts and ends inside it. With `zero_tail`, whatever follows
/// the last record must be zeros, as in any finished segment (not in a `.partial`
/// file, whose tail may be an old segment's). Errors say where and what.
pub fn verify(
    src: &mut dyn Read,
    seg_size: u64,
    block: usize,
    zero_tail: bool,
) -> Result<Walked, String> {
    let mut page = vec![0u8; block];
    let mut step = Step::Record(Vec::new());
    let mut walked = Walked { records: 0 };
    let mut offset = 0u64;
    while offset < seg_size {
        src.read_exact(&mut page)
            .map_err(|e| format!("reading the page at {offset:#x}: {e}"))?;
        let header = if offset == 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        if offset == 0 {
            let info = u16::from_le_bytes([page[2], page[3]]);
            let rem_len = u32::from_le_bytes([page[16], page[17], page[18], page[19]]);
            if info & XLP_FIRST_IS_CONTRECORD != 0 {
                step = Step::Continuation(maxalign(rem_len as u64));
            }
        }
        let mut data = &page[header..];
        let mut pos = offset + header as u64;
        while !data.is_empty() {
            match &mut step {
                Step::Continuation(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    data = &data[n..];
                    pos += n as u64;
                    if *left == 0 {
                        step = Step::Record(Vec::new());
                    }
                }
                Step::Zeros => {
                    if zero_tail {
                        if let Some(i) = data.iter().position(|&b| b != 0) {
                            return Err(format!(
                                "non-zero bytes at {:#x} after the last record",
                                pos + i as u64
                            ));
                        }
                    }
                    data = &[];
                }
                Step::Record(rec) => {
                    let want = if rec.len() < 4 {
                        4
                    } else {
                        let tot = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
                        if tot == 0 {
                            step = Step::Zeros;
                            continue;
                        }
                        if tot < RECORD_HEADER {
                            return Err(format!("a record at {pos:#x} claims {tot} bytes"));
                        }
                        tot
                    };
                    let n = (want - rec.len()).min(data.len());
                    rec.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    pos += n as u64;
                    if rec.len() == want && want >= RECORD_HEADER {
                        check_crc(rec)
                            .map_err(|e| format!("the record ending at {pos:#x}: {e}"))?;
                        walked.records += 1;
                        // The next record starts 8-byte aligned; the padding is zeros.
                        let pad = (maxalign(want as u64) - want as u64) as usize;
                        let skip = pad.min(data.len());
                        data = &data[skip..];
                        pos += skip as u64;
                        step = if skip < pad {
                            Step::Continuation((pad - skip) as u64)
                        } else {
                            Step::Record(Vec::new())
                        };
                    }
                }
            }
        }
        offset += block as u64;
    }
    // A record still being collected continues into the next segment: its CRC covers
    // bytes this file does not have, so it cannot be checked here.
    Ok(walked)
}

fn check_crc(rec: &[u8]) -> Result<(), String> {
    let stored = u32::from_le_bytes([
        rec[CRC_OFFSET],
        rec[CRC_OFFSET + 1],
        rec[CRC_OFFSET + 2],
        rec[CRC_OFFSET + 3],
    ]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..CRC_OFFSET]);
    if crc == stored {
        Ok(())
    } else {
        Err(format!("CRC-32C {crc:08x}, recorded {stored:08x}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a segment of `block`-byte pages holding records of the given sizes,
    /// laid out as postgres does (aligned, spanning pages, zeroed tail).
    pub(crate) fn segment(seg_size: usize, block: usize, sizes: &[usize]) -> Vec<u8> {
        let mut logical = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let mut rec = vec![0u8; size];
            rec[0..4].copy_from_slice(&(size as u32).to_le_bytes());
            for (j, b) in rec.iter_mut().enumerate().skip(RECORD_HEADER) {
                *b = (i * 31 + j) as u8;
            }
            let crc =
                crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..CRC_OFFSET]);
            rec[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
            logical.extend_from_slice(&rec);
            logical.resize(maxalign(logical.len() as u64) as usize, 0);
        }
        let mut seg = vec![0u8; seg_size];
        let mut src = &logical[..];
        for off in (0..seg_size).step_by(block) {
            let h = if off == 0 { LONG_HEADER } else { SHORT_HEADER };
            let n = (block - h).min(src.len());
            seg[off + h..off + h + n].copy_from_slice(&src[..n]);
            src = &src[n..];
        }
        seg
    }

    #[test]
    fn every_record_is_checked_and_any_flipped_bit_is_found() {
        let sizes = [24, 50, 8000, 120, 20_000, 33, 24];
        let seg = segment(1 << 16, 8192, &sizes);
        let w = verify(&mut &seg[..], 1 << 16, 8192, true).unwrap();
        assert_eq!(w.records, sizes.len() as u64);
        // A flip anywhere in the records' bytes (page headers excluded) is caught.
        for pos in [45usize, 70, 100, 5000, 8192 + 30, 20_000, 30_500] {
            let mut bad = seg.clone();
            bad[pos] ^= 0x04;
            assert!(
                verify(&mut &bad[..], 1 << 16, 8192, true).is_err(),
                "flip at {pos} went unnoticed"
            );
        }
        // Garbage after the last record: refused in a finished segment only.
        let mut tail = seg.clone();
        tail[60_000] = 1;
        assert!(verify(&mut &tail[..], 1 << 16, 8192, true)
            .unwrap_err()
            .contains("after the last record"));
        assert!(verify(&mut &tail[..], 1 << 16, 8192, false).is_ok());
    }

    #[test]
    fn a_record_continued_from_the_previous_segment_is_skipped() {
        let mut seg = segment(1 << 15, 8192, &[100, 60]);
        // Shift everything right by a 16-byte continuation of an earlier record.
        let payload: Vec<u8> = seg[LONG_HEADER..LONG_HEADER + 200].to_vec();
        seg[LONG_HEADER..LONG_HEADER + 16].fill(0xAB);
        seg[LONG_HEADER + 16..LONG_HEADER + 216].copy_from_slice(&payload);
        seg[2..4].copy_from_slice(&XLP_FIRST_IS_CONTRECORD.to_le_bytes());
        seg[16..20].copy_from_slice(&13u32.to_le_bytes());
        assert_eq!(
            verify(&mut &seg[..], 1 << 15, 8192, true).unwrap().records,
            2
        );
    }
}
