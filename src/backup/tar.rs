//! Just enough of the tar format to pick members out of a stream going past: the
//! `backup_label` pg_basebackup puts first in its tar, and the end of the
//! `backup_manifest` it puts last (its WAL ranges). Nothing is buffered but the
//! current 512-byte header and what is being kept.

/// Watches a tar stream for the member `wanted` and keeps (the end of) its content.
pub struct Capture {
    wanted: &'static str,
    header: Vec<u8>,
    /// Content bytes of the current member still to come.
    data_left: u64,
    /// Padding bytes after them still to skip.
    pad_left: u64,
    keeping: bool,
    kept: Vec<u8>,
    found: bool,
    finished: bool,
    /// Keep only the last this many bytes.
    tail: usize,
}

impl Capture {
    /// Watches for `wanted` (a path inside the tar, as `backup_label`), keeping up to
    /// its last MiB.
    pub fn new(wanted: &'static str) -> Capture {
        Capture::tail(wanted, 1 << 20)
    }

    /// Watches for `wanted` and keeps only its last `n` bytes, whatever its size.
    pub fn tail(wanted: &'static str, n: usize) -> Capture {
        Capture {
            wanted,
            header: Vec::with_capacity(512),
            data_left: 0,
            pad_left: 0,
            keeping: false,
            kept: Vec::new(),
            found: false,
            finished: false,
            tail: n,
        }
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.finished {
            if self.data_left > 0 {
                let n = self.data_left.min(data.len() as u64) as usize;
                if self.keeping {
                    self.kept.extend_from_slice(&data[..n]);
                    if self.kept.len() > self.tail {
                        let cut = self.kept.len() - self.tail;
                        self.kept.drain(..cut);
                    }
                }
                self.data_left -= n as u64;
                data = &data[n..];
                if self.data_left == 0 && self.keeping {
                    self.found = true;
                    self.finished = true;
                }
                continue;
            }
            if self.pad_left > 0 {
                let n = self.pad_left.min(data.len() as u64) as usize;
                self.pad_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < 512 {
                return;
            }
            let h = std::mem::take(&mut self.header);
            if h.iter().all(|&b| b == 0) {
                // End-of-archive blocks: nothing more to find.
                self.finished = true;
                return;
            }
            let size = octal(&h[124..136]);
            self.data_left = size;
            self.pad_left = size.div_ceil(512) * 512 - size;
            self.keeping = member_name(&h) == self.wanted && matches!(h[156], b'0' | 0);
            if self.keeping && size == 0 {
                self.found = true;
                self.finished = true;
            }
        }
    }

    /// The member's (kept) content, once it went past.
    pub fn content(&self) -> Option<&[u8]> {
        self.found.then_some(&self.kept[..])
    }
}

/// A header's numeric field: octal digits, or GNU's base-256 for large sizes.
fn octal(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..].iter().fold(0u64, |n, &b| (n << 8) | b as u64);
    }
    field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .fold(0u64, |n, b| n * 8 + (b - b'0') as u64)
}

/// ustar name: prefix/name, without a leading `./`.
fn member_name(h: &[u8]) -> String {
    let field = |r: std::ops::Range<usize>| {
        let f = &h[r];
        String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())])
            .into_owned()
    };
    let name = field(0..100);
    let prefix = if &h[257..262] == b"ustar" {
        field(345..500)
    } else {
        String::new()
    };
    let full = if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    };
    full.strip_prefix("./").map(str::to_owned).unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: usize) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let s = format!("{size:011o}\0");
        h[124..136].copy_from_slice(s.as_bytes());
        h[156] = b'0';
        h[257..262].copy_from_slice(b"ustar");
        h
    }

    #[test]
    fn finds_members_in_any_chunking() {
        let manifest = format!(
            "{{\"Files\": [{}], \"WAL-Ranges\": [{{\"End-LSN\": \"0/2000100\"}}]}}\n",
            "x".repeat(3000)
        );
        let mut tar = Vec::new();
        for (name, body) in [
            ("backup_label", &b"START WAL LOCATION: 0/2000028\n"[..]),
            ("PG_VERSION", b"15\n"),
            ("backup_manifest", manifest.as_bytes()),
        ] {
            tar.extend(header(name, body.len()));
            tar.extend_from_slice(body);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.extend(vec![0u8; 1024]);
        for chunk in [1, 7, 512, 100_000] {
            let mut label = Capture::new("backup_label");
            let mut end = Capture::tail("backup_manifest", 100);
            for part in tar.chunks(chunk) {
                label.feed(part);
                end.feed(part);
            }
            assert_eq!(
                label.content(),
                Some(&b"START WAL LOCATION: 0/2000028\n"[..]),
                "{chunk}"
            );
            assert_eq!(
                end.content(),
                Some(&manifest.as_bytes()[manifest.len() - 100..]),
                "{chunk}"
            );
        }
        let mut c = Capture::new("missing");
        c.feed(&tar);
        assert_eq!(c.content(), None);
    }
}
