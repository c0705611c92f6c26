//! WAL file names, and where each lives in the archive (barman-cloud's layout).

/// The kinds of file postgres hands to `archive_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// A WAL segment, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment,
    /// A partial segment left at a timeline switch, `<segment>.partial`.
    Partial,
    /// A backup history file, `<segment>.XXXXXXXX.backup`.
    Backup,
    /// A timeline history file, `TTTTTTTT.history`.
    History,
}

/// A parsed WAL file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    /// The file name itself.
    pub name: String,
    /// Its kind.
    pub kind: WalKind,
    /// Timeline of the name.
    pub timeline: u32,
    /// For segments (also partial and backup): the "log" and "seg" parts.
    pub log_seg: Option<(u32, u32)>,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()))
    .then(|| u32::from_str_radix(s, 16).ok())?
}

impl WalName {
    /// Parses a bare file name; anything else is not a WAL file.
    pub fn parse(name: &str) -> Option<WalName> {
        let (stem, kind) = if let Some(tli) = name.strip_suffix(".history") {
            (tli, WalKind::History)
        } else if let Some(seg) = name.strip_suffix(".partial") {
            (seg, WalKind::Partial)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.')?;
            hex8(offset)?;
            (seg, WalKind::Backup)
        } else {
            (name, WalKind::Segment)
        };
        if kind == WalKind::History {
            let timeline = hex8(stem)?;
            return Some(WalName {
                name: name.to_owned(),
                kind,
                timeline,
                log_seg: None,
            });
        }
        if stem.len() != 24 {
            return None;
        }
        let timeline = hex8(&stem[..8])?;
        let log = hex8(&stem[8..16])?;
        let seg = hex8(&stem[16..24])?;
        Some(WalName {
            name: name.to_owned(),
            kind,
            timeline,
            log_seg: Some((log, seg)),
        })
    }

    /// The directory under `wals/` barman-cloud files it in: the first 16 hex digits
    /// for segment-like files, none for history files.
    pub fn hash_dir(&self) -> Option<&str> {
        match self.kind {
            WalKind::History => None,
            _ => Some(&self.name[..16]),
        }
    }

    /// The object key without compression extension: `<base>/wals/[<hash>/]<name>`.
    pub fn key(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        let sep = if base.is_empty() { "" } else { "/" };
        match self.hash_dir() {
            Some(dir) => format!("{base}{sep}wals/{dir}/{}", self.name),
            None => format!("{base}{sep}wals/{}", self.name),
        }
    }

    /// The segment number for a given segment size (segments only).
    pub fn segno(&self, seg_size: u64) -> Option<u64> {
        let (log, seg) = self.log_seg?;
        let per_log = 0x1_0000_0000u64 / seg_size;
        Some(log as u64 * per_log + seg as u64)
    }

    /// The name of the segment `n` after this one on the same timeline.
    pub fn next_segment(&self, n: u64, seg_size: u64) -> Option<WalName> {
        let segno = self.segno(seg_size)? + n;
        let per_log = 0x1_0000_0000u64 / seg_size;
        let name = format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            segno / per_log,
            segno % per_log
        );
        WalName::parse(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let s = WalName::parse("0000000100000002000000A3").unwrap();
        assert_eq!(
            (s.kind, s.timeline, s.log_seg),
            (WalKind::Segment, 1, Some((2, 0xA3)))
        );
        assert_eq!(
            s.key("pfx/srv"),
            "pfx/srv/wals/0000000100000002/0000000100000002000000A3"
        );
        assert_eq!(s.segno(16 << 20), Some(2 * 256 + 0xA3));
        assert_eq!(
            s.next_segment(0x5D, 16 << 20).unwrap().name,
            "000000010000000300000000"
        );
        let h = WalName::parse("00000002.history").unwrap();
        assert_eq!((h.kind, h.timeline), (WalKind::History, 2));
        assert_eq!(h.key("srv"), "srv/wals/00000002.history");
        assert_eq!(
            WalName::parse("000000010000000000000003.partial")
                .unwrap()
                .kind,
            WalKind::Partial
        );
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(b.kind, WalKind::Backup);
        assert_eq!(
            b.key(""),
            "wals/0000000100000000/000000010000000000000002.00000028.backup"
        );
        for bad in [
            "",
            "00000001",
            "0000000100000000000000zz",
            "000000010000000000000001.gz",
            "../etc/passwd",
            "0000000g.history",
            "000000010000000000000001x",
        ] {
            assert!(WalName::parse(bad).is_none(), "{bad}");
        }
    }
}
