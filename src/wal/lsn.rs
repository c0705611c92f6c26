//! A WAL position (`X/X`) and the segment that holds it.

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/X`.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        Some(Lsn(
            (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?
        ))
    }

    /// The segment file holding this position on `timeline`.
    pub fn wal_name(self, timeline: u32, seg_size: u64) -> String {
        let segno = self.0 / seg_size;
        let per_log = 0x1_0000_0000u64 / seg_size;
        format!(
            "{timeline:08X}{:08X}{:08X}",
            segno / per_log,
            segno % per_log
        )
    }

    /// The offset of this position in its segment.
    pub fn offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_names_and_offsets_match_postgres() {
        let l = Lsn::parse("0/9000028").unwrap();
        assert_eq!(l.to_string(), "0/9000028");
        assert_eq!(l.wal_name(1, 16 << 20), "000000010000000000000009");
        assert_eq!(l.offset(16 << 20), 40);
        assert_eq!(
            Lsn::parse("1/A0000100").unwrap().wal_name(2, 16 << 20),
            "0000000200000001000000A0"
        );
        assert_eq!(Lsn::parse("0/9000100").unwrap().offset(16 << 20), 256);
        assert!(Lsn::parse("nope").is_none());
    }
}
