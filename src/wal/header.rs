//! Checking that a file really is the WAL segment its name says, from the long page
//! header at its start, before postgres ever sees it.

use super::names::WalName;

/// The first page of every segment carries this flag and the long header.
const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLOG_PAGE_MAGIC` (xlog_internal.h) of each major pgwarden supports: every WAL page
/// header carries it, and postgres takes a page of another major's for the end of WAL.
pub const PAGE_MAGICS: [(u32, u16); 4] = [(15, 0xD110), (16, 0xD113), (17, 0xD116), (18, 0xD118)];

/// The page magic of PostgreSQL `major`'s WAL, when pgwarden knows it.
pub fn magic_of_major(major: u32) -> Option<u16> {
    PAGE_MAGICS
        .iter()
        .find(|(m, _)| *m == major)
        .map(|(_, x)| *x)
}

/// The major whose WAL carries `magic`, when pgwarden knows it.
pub fn major_of_magic(magic: u16) -> Option<u32> {
    PAGE_MAGICS
        .iter()
        .find(|(_, x)| *x == magic)
        .map(|(m, _)| *m)
}

/// "PostgreSQL 15's (0xd110)", or the bare magic of a major pgwarden does not know.
fn describe_magic(magic: u16) -> String {
    match major_of_magic(magic) {
        Some(m) => format!("PostgreSQL {m}'s ({magic:#06x})"),
        None => format!("{magic:#06x}, no supported major's"),
    }
}

/// What the long page header of a segment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `xlp_magic`, which changes with the major version.
    pub magic: u16,
    /// `xlp_tli`.
    pub timeline: u32,
    /// `xlp_pageaddr`: the WAL position of the page.
    pub pageaddr: u64,
    /// `xlp_sysid`: the cluster's system identifier.
    pub system_id: u64,
    /// `xlp_seg_size`.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`.
    pub block_size: u32,
}

/// Reads the long page header (little-endian, as on every platform postgres runs on
/// in containers).
pub fn parse(data: &[u8]) -> Option<SegmentHeader> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    Some(SegmentHeader {
        magic: u16_at(0)?,
        timeline: u32_at(4)?,
        pageaddr: u64_at(8)?,
        system_id: u64_at(24)?,
        seg_size: u32_at(32)?,
        block_size: u32_at(36)?,
    })
    .filter(|_| u16_at(2).is_some_and(|info| info & XLP_LONG_HEADER != 0))
}

/// Verifies that `data` is a whole segment named `name`: see [`PageCheck`].
pub fn verify(name: &WalName, data: &[u8]) -> Result<SegmentHeader, String> {
    let mut check = PageCheck::new(name);
    check.feed(data)?;
    check.finish()
}

/// Bits of `xlp_info` postgres defines (XLP_ALL_FLAGS); any other bit is corruption.
const XLP_ALL_FLAGS: u16 = 0x000F;
/// Size of the long page header.
const LONG_HEADER: usize = 40;

/// Checks a segment page by page as it streams past. The first page must carry a
/// long header with a WAL magic, a plausible segment size, the page address the name
/// implies, and a timeline no newer than the name's (the first segment of a new
/// timeline is a copy of the old one's and keeps the old timeline in its header).
/// Every later page must have the same magic, no long-header or unknown flag, a
/// timeline that never goes back and never passes the name's, and an
/// `xlp_pageaddr` that continues from the page before, until the first page that is
/// all zeros: after an XLOG_SWITCH postgres zeroes the rest of the segment, headers
/// included, so from there on every page must be zeros. The segment must be exactly
/// as long as its header says. Only one page is buffered.
pub struct PageCheck<'a> {
    name: &'a WalName,
    /// The local cluster's major and its page magic, which the segment must carry.
    expected: Option<(u32, u16)>,
    first: Option<SegmentHeader>,
    page: Vec<u8>,
    pos: u64,
    timeline: u32,
    zero_tail: bool,
}

impl<'a> PageCheck<'a> {
    /// A check for the segment `name`.
    pub fn new(name: &'a WalName) -> PageCheck<'a> {
        PageCheck {
            name,
            expected: None,
            first: None,
            page: Vec::with_capacity(8192),
            pos: 0,
            timeline: 0,
            zero_tail: false,
        }
    }

    /// Also requires the page magic of PostgreSQL `major` (a restore into a cluster of
    /// that major): WAL of another major is refused, naming both. No check for a major
    /// pgwarden does not know.
    pub fn for_major(mut self, major: Option<u32>) -> Self {
        self.expected = major.and_then(|m| Some((m, magic_of_major(m)?)));
        self
    }

    /// Takes the next bytes of the segment.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), String> {
        while !chunk.is_empty() {
            if self.first.is_none() && self.page.len() >= LONG_HEADER {
                let h = verify_first_page(self.name, &self.page)?;
                self.check_major(&h)?;
                self.first = Some(h);
                self.timeline = h.timeline;
            }
            let block = match self.first {
                Some(h) => h.block_size as usize,
                None => LONG_HEADER,
            };
            let take = (block - self.page.len()).min(chunk.len());
            self.page.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.first.is_some() && self.page.len() == block {
                if self.pos > 0 {
                    self.check_page()?;
                }
                self.pos += block as u64;
                self.page.clear();
            }
        }
        Ok(())
    }

    fn check_page(&mut self) -> Result<(), String> {
        let Some(first) = self.first else {
            return Ok(());
        };
        let p = &self.page;
        let all_zero = p.iter().all(|&b| b == 0);
        if all_zero {
            self.zero_tail = true;
            return Ok(());
        }
        let at = format!("the page at offset {:#x}", self.pos);
        if self.zero_tail {
            return Err(format!(
                "{at} is not zero, but follows the zeroed rest of a switched segment"
            ));
        }
        let magic = u16::from_le_bytes([p[0], p[1]]);
        let info = u16::from_le_bytes([p[2], p[3]]);
        let tli = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        let addr = u64::from_le_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]);
        if magic != first.magic {
            return Err(format!(
                "{at} has magic {magic:#06x}, the segment's is {:#06x}",
                first.magic
            ));
        }
        if info & !XLP_ALL_FLAGS != 0 || info & XLP_LONG_HEADER != 0 {
            return Err(format!("{at} has bad flags {info:#06x}"));
        }
        if tli < self.timeline || tli > self.name.timeline {
            return Err(format!("{at} has timeline {tli}, out of order"));
        }
        let expected = first.pageaddr + self.pos;
        if addr != expected {
            return Err(format!(
                "{at} has page address {addr:X}, expected {expected:X}"
            ));
        }
        self.timeline = tli;
        Ok(())
    }

    fn check_major(&self, h: &SegmentHeader) -> Result<(), String> {
        match self.expected {
            Some((major, want)) if h.magic != want => Err(format!(
                "its pages carry {} WAL page magic, and this cluster is PostgreSQL {major} \
                 ({want:#06x}): WAL of another major version",
                describe_magic(h.magic),
            )),
            _ => Ok(()),
        }
    }

    /// Ends the check; returns the first page's header.
    pub fn finish(self) -> Result<SegmentHeader, String> {
        let first = match self.first {
            Some(h) => h,
            None => {
                let h = verify_first_page(self.name, &self.page)?;
                self.check_major(&h)?;
                h
            }
        };
        let len = self.pos + self.page.len() as u64;
        if len != first.seg_size as u64 {
            return Err(format!(
                "the file holds {len} bytes, but its header says segments are {}",
                first.seg_size
            ));
        }
        Ok(first)
    }
}

/// The checks of the first page's long header.
fn verify_first_page(name: &WalName, data: &[u8]) -> Result<SegmentHeader, String> {
    let h = parse(data).ok_or("no WAL long page header at the start of the file")?;
    // Any plausible major's (a future one's too): the local major is checked apart.
    if h.magic & 0xFF00 != 0xD000 && h.magic & 0xFF00 != 0xD100 {
        return Err(format!("bad WAL page magic {:#06x}", h.magic));
    }
    let seg = h.seg_size as u64;
    if !seg.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg) {
        return Err(format!("implausible WAL segment size {seg}"));
    }
    if !h.block_size.is_power_of_two()
        || !(1024..=65536).contains(&h.block_size)
        || h.block_size as u64 > seg
    {
        return Err(format!("implausible WAL block size {}", h.block_size));
    }
    let segno = name.segno(seg).ok_or("not a segment name")?;
    if h.pageaddr != segno * seg {
        return Err(format!(
            "the header's page address {:X} does not belong to segment {}",
            h.pageaddr, name.name
        ));
    }
    if h.timeline == 0 || h.timeline > name.timeline {
        return Err(format!(
            "the header's timeline {} does not fit the name {}",
            h.timeline, name.name
        ));
    }
    Ok(h)
}

#[cfg(test)]
pub(crate) fn fake_segment(name: &str, seg_size: usize, sysid: u64) -> Vec<u8> {
    fake_segment_of(name, seg_size, sysid, 0xD110)
}

#[cfg(test)]
pub(crate) fn fake_segment_of(name: &str, seg_size: usize, sysid: u64, magic: u16) -> Vec<u8> {
    let n = WalName::parse(name).unwrap();
    let mut d = vec![0u8; seg_size];
    d[0..2].copy_from_slice(&magic.to_le_bytes());
    d[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    d[4..8].copy_from_slice(&n.timeline.to_le_bytes());
    d[8..16].copy_from_slice(&(n.segno(seg_size as u64).unwrap() * seg_size as u64).to_le_bytes());
    d[24..32].copy_from_slice(&sysid.to_le_bytes());
    d[32..36].copy_from_slice(&(seg_size as u32).to_le_bytes());
    d[36..40].copy_from_slice(&8192u32.to_le_bytes());
    let start = n.segno(seg_size as u64).unwrap() * seg_size as u64;
    for page in (8192..seg_size).step_by(8192) {
        d[page..page + 2].copy_from_slice(&magic.to_le_bytes());
        d[page + 4..page + 8].copy_from_slice(&n.timeline.to_le_bytes());
        d[page + 8..page + 16].copy_from_slice(&(start + page as u64).to_le_bytes());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_matching_segment_and_rejects_mismatches() {
        let name = WalName::parse("000000020000000100000003").unwrap();
        let seg = fake_segment(&name.name, 1 << 20, 42);
        let h = verify(&name, &seg).unwrap();
        assert_eq!((h.system_id, h.timeline), (42, 2));
        let other = WalName::parse("000000020000000100000004").unwrap();
        assert!(verify(&other, &seg).unwrap_err().contains("page address"));
        let older = WalName::parse("000000010000000100000003").unwrap();
        assert!(verify(&older, &seg).unwrap_err().contains("timeline"));
        assert!(verify(&name, &seg[..1000]).unwrap_err().contains("bytes"));
        let mut bad = seg.clone();
        bad[0] = 0;
        bad[1] = 0;
        assert!(verify(&name, &bad).unwrap_err().contains("magic"));
        assert!(verify(&name, &[0u8; 10]).is_err());
        // Later pages: a flipped bit in a page header, a page out of place.
        let mut bad = seg.clone();
        bad[8192 * 5 + 9] ^= 0x01;
        assert!(verify(&name, &bad).unwrap_err().contains("page address"));
        let mut bad = seg.clone();
        bad[8192 * 7..8192 * 8].copy_from_slice(&seg[8192 * 6..8192 * 7]);
        assert!(verify(&name, &bad).unwrap_err().contains("offset 0xe000"));
        let mut bad = seg.clone();
        bad[8192 * 3 + 2] = 0x40;
        assert!(verify(&name, &bad).unwrap_err().contains("flags"));
        // A switched segment: zeros from some page on, and only zeros.
        let mut switched = seg.clone();
        switched[8192 * 100..].fill(0);
        assert!(verify(&name, &switched).is_ok());
        switched[8192 * 110 + 3000] = 1;
        assert!(verify(&name, &switched)
            .unwrap_err()
            .contains("zeroed rest"));
        // Fed in odd-sized chunks, the verdict is the same.
        let mut check = PageCheck::new(&name);
        for c in seg.chunks(777) {
            check.feed(c).unwrap();
        }
        assert_eq!(check.finish().unwrap().system_id, 42);
    }

    #[test]
    fn every_supported_majors_wal_is_checked_against_the_local_major() {
        let name = WalName::parse("000000010000000000000002").unwrap();
        for (major, magic) in PAGE_MAGICS {
            assert_eq!(
                (magic_of_major(major), major_of_magic(magic)),
                (Some(magic), Some(major))
            );
            let seg = fake_segment_of(&name.name, 1 << 20, 7, magic);
            assert_eq!(verify(&name, &seg).unwrap().magic, magic);
            let mut same = PageCheck::new(&name).for_major(Some(major));
            same.feed(&seg).unwrap();
            assert!(same.finish().is_ok());
            // Unknown majors are not checked.
            let mut unknown = PageCheck::new(&name).for_major(Some(99));
            unknown.feed(&seg).unwrap();
            assert!(unknown.finish().is_ok());
            for (other, _) in PAGE_MAGICS.iter().filter(|(m, _)| *m != major) {
                let mut check = PageCheck::new(&name).for_major(Some(*other));
                let err = check.feed(&seg).unwrap_err();
                assert!(
                    err.contains(&format!("PostgreSQL {major}'s ({magic:#06x})"))
                        && err.contains(&format!("this cluster is PostgreSQL {other}")),
                    "{err}"
                );
                // A file shorter than a page header is caught at the end too.
                let mut short = PageCheck::new(&name).for_major(Some(*other));
                short.feed(&seg[..40]).unwrap();
                assert!(short.finish().unwrap_err().contains("another major"));
            }
        }
        assert_eq!(magic_of_major(14), None);
    }
}
