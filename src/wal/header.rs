//! Checking that a file really is the WAL segment its name says, from the long page
//! header at its start, before postgres ever sees it.

use super::names::WalName;

/// The first page of every segment carries this flag and the long header.
const XLP_LONG_HEADER: u16 = 0x0002;

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

/// Verifies that `data` is a whole segment named `name`: a long header with a WAL
/// magic, a plausible segment size equal to the file's length, the page address that
/// the name implies, and a timeline no newer than the name's (the first segment of a
/// new timeline is a copy of the old one's and keeps the old timeline in its header).
pub fn verify(name: &WalName, data: &[u8]) -> Result<SegmentHeader, String> {
    let h = parse(data).ok_or("no WAL long page header at the start of the file")?;
    if h.magic & 0xFF00 != 0xD000 && h.magic & 0xFF00 != 0xD100 {
        return Err(format!("bad WAL page magic {:#06x}", h.magic));
    }
    let seg = h.seg_size as u64;
    if !seg.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg) {
        return Err(format!("implausible WAL segment size {seg}"));
    }
    if data.len() as u64 != seg {
        return Err(format!(
            "the file holds {} bytes, but its header says segments are {seg}",
            data.len()
        ));
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
    let n = WalName::parse(name).unwrap();
    let mut d = vec![0u8; seg_size];
    d[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    d[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    d[4..8].copy_from_slice(&n.timeline.to_le_bytes());
    d[8..16].copy_from_slice(&(n.segno(seg_size as u64).unwrap() * seg_size as u64).to_le_bytes());
    d[24..32].copy_from_slice(&sysid.to_le_bytes());
    d[32..36].copy_from_slice(&(seg_size as u32).to_le_bytes());
    d[36..40].copy_from_slice(&8192u32.to_le_bytes());
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
    }
}
