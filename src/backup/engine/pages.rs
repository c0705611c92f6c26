//! Page checksums, verified while a backup reads relation files, as pg_basebackup
//! does: a page whose checksum does not match is reported by file and block, and the
//! backup fails (after reading everything, so that every bad page is reported).
//!
//! The algorithm is PostgreSQL's (`src/include/storage/checksum_impl.h`, written to
//! be reimplemented outside the server): an FNV-1a variant over 32 lanes of the page
//! with `pd_checksum` taken as zero, folded, XORed with the block number and stored as
//! `(x % 65535) + 1`.

/// PostgreSQL's block size (pgwarden refuses clusters built with another).
pub const BLCKSZ: usize = 8192;
/// Blocks in one 1 GiB segment file of a relation.
pub const RELSEG_BLOCKS: u64 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn comp(sum: &mut u32, value: u32) {
    let tmp = *sum ^ value;
    *sum = tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17);
}

/// The checksum PostgreSQL stores in `page` (exactly [`BLCKSZ`] bytes) as block
/// `blkno` of its relation.
pub fn checksum(page: &[u8], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    let word = |i: usize| {
        // pd_checksum (bytes 8 and 9) counts as zero.
        let mut w = [0u8; 4];
        w.copy_from_slice(&page[i * 4..i * 4 + 4]);
        if i == 2 {
            w[0] = 0;
            w[1] = 0;
        }
        u32::from_ne_bytes(w)
    };
    for i in 0..BLCKSZ / (4 * N_SUMS) {
        for (j, sum) in sums.iter_mut().enumerate() {
            comp(sum, word(i * N_SUMS + j));
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            comp(sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// What a page says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its checksum matches, or it need not be checked.
    Good,
    /// It changed after the backup started (its LSN is at or after the start): WAL
    /// replay rewrites it, whatever was read.
    Changed,
    /// A page that postgres never initialised (`pd_upper` 0): it must be all zeros.
    New,
    /// Its checksum does not match.
    Bad {
        /// What it stores.
        stored: u16,
        /// What its content gives.
        computed: u16,
    },
}

/// Checks `page` as block `blkno`, for a backup that started at `start_lsn`.
pub fn verify(page: &[u8], blkno: u32, start_lsn: u64) -> Verdict {
    let u16_at = |o: usize| u16::from_ne_bytes([page[o], page[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]);
    if u16_at(14) == 0 {
        // pd_upper 0: a new page, which pgBackRest also requires to be zeros.
        return if page.iter().all(|&b| b == 0) {
            Verdict::New
        } else {
            Verdict::Bad {
                stored: u16_at(8),
                computed: 0,
            }
        };
    }
    let lsn = (u64::from(u32_at(0)) << 32) | u64::from(u32_at(4));
    if lsn >= start_lsn {
        return Verdict::Changed;
    }
    let (stored, computed) = (u16_at(8), checksum(page, blkno));
    if stored == computed {
        Verdict::Good
    } else {
        Verdict::Bad { stored, computed }
    }
}

/// For a relation file's name (`16385`, `16385.2`, `16385_fsm`, `16385_vm.1`,
/// `16385_init`): the block number of its first block. `None` for any other file
/// (`pg_filenode.map`, `PG_VERSION`, ...), whose content has no page checksums.
pub fn first_block(name: &str) -> Option<u64> {
    let (stem, segno) = match name.split_once('.') {
        Some((stem, seg)) => (stem, seg.parse::<u64>().ok()?),
        None => (name, 0),
    };
    let node = match stem.split_once('_') {
        Some((node, "fsm" | "vm" | "init")) => node,
        Some(_) => return None,
        None => stem,
    };
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(segno * RELSEG_BLOCKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_relation_files_and_their_first_block() {
        let cases = [
            ("16385", Some(0)),
            ("16385.2", Some(2 * RELSEG_BLOCKS)),
            ("16385_fsm", Some(0)),
            ("16385_vm.1", Some(RELSEG_BLOCKS)),
            ("16385_init", Some(0)),
            ("pg_filenode.map", None),
            ("PG_VERSION", None),
            ("16385_foo", None),
            ("t3_16385", None),
            ("pg_internal.init", None),
        ];
        for (name, want) in cases {
            assert_eq!(first_block(name), want, "{name}");
        }
    }

    #[test]
    fn a_page_is_good_new_changed_or_bad() {
        let mut page = vec![0u8; BLCKSZ];
        assert_eq!(verify(&page, 0, 100), Verdict::New);
        // An initialised page: lsn 0/50, pd_lower 24, pd_upper 8192.
        page[4..8].copy_from_slice(&0x50u32.to_ne_bytes());
        page[12..14].copy_from_slice(&24u16.to_ne_bytes());
        page[14..16].copy_from_slice(&8192u16.to_ne_bytes());
        page[100] = 7;
        let sum = checksum(&page, 3);
        page[8..10].copy_from_slice(&sum.to_ne_bytes());
        assert_eq!(checksum(&page, 3), sum, "pd_checksum itself does not count");
        assert_eq!(verify(&page, 3, 0x100), Verdict::Good);
        assert!(
            matches!(verify(&page, 4, 0x100), Verdict::Bad { .. }),
            "another block"
        );
        page[200] = 1;
        assert!(matches!(verify(&page, 3, 0x100), Verdict::Bad { .. }));
        assert_eq!(
            verify(&page, 3, 0x50),
            Verdict::Changed,
            "changed after the start"
        );
        let mut junk = vec![0u8; BLCKSZ];
        junk[300] = 1;
        assert!(
            matches!(verify(&junk, 0, 100), Verdict::Bad { .. }),
            "a new page must be zeros"
        );
    }
}
