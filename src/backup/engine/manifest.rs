//! The `backup_manifest` of a backup, in PostgreSQL's format, so that
//! `pg_verifybackup` checks a restore of it as it checks pg_basebackup's: every file
//! with its size and CRC-32C, the WAL range the backup needs, and a SHA-256 of the
//! manifest itself.

use crate::backup::Lsn;
use sha2::Digest;

/// One file of the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its path relative to the data directory.
    pub path: String,
    /// Bytes stored.
    pub size: u64,
    /// Modification time, seconds since the epoch (informational).
    pub mtime: i64,
    /// CRC-32C of the bytes stored.
    pub crc32c: u32,
}

/// What the manifest says besides the files.
pub struct Range {
    /// The cluster's system identifier (written from PostgreSQL 17 on, manifest
    /// version 2).
    pub system_id: u64,
    /// The server's major version.
    pub major: u32,
    /// The timeline of the backup.
    pub timeline: u32,
    /// Where replay must start.
    pub start: Lsn,
    /// Where it may stop.
    pub end: Lsn,
}

fn gmt(secs: i64) -> String {
    let t = crate::civil::from_unix_seconds(secs);
    let (y, mo, d, h, mi, s, _) = crate::civil::utc(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} GMT")
}

/// A JSON string, as PostgreSQL's `escape_json` writes it.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Renders the manifest.
pub fn render(files: &[File], range: &Range) -> String {
    let mut out = String::with_capacity(files.len() * 160 + 512);
    if range.major >= 17 {
        out.push_str("{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n");
        out.push_str(&format!("\"System-Identifier\": {},\n", range.system_id));
    } else {
        out.push_str("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n");
    }
    out.push_str("\"Files\": [");
    for (i, f) in files.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        out.push_str(&format!(
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{}\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            json_str(&f.path),
            f.size,
            gmt(f.mtime),
            // PostgreSQL writes the CRC's bytes as they lie in memory (little-endian
            // here), in hex.
            crate::wal::hex(&f.crc32c.to_le_bytes()),
        ));
    }
    out.push_str("\n],\n");
    out.push_str(&format!(
        "\"WAL-Ranges\": [\n{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        range.timeline, range.start, range.end
    ));
    // The checksum covers everything up to the line that holds it.
    let sum = crate::wal::hex(&sha2::Sha256::digest(out.as_bytes()));
    out.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_pg_verifybackup_reads() {
        let files = [File {
            path: "PG_VERSION".into(),
            size: 3,
            mtime: 1_796_560_000,
            crc32c: crc32c::crc32c(b"18\n"),
        }];
        let range = Range {
            system_id: 7716201325310117866,
            major: 18,
            timeline: 1,
            start: Lsn(0x2000028),
            end: Lsn(0x2000120),
        };
        let m = render(&files, &range);
        // As PostgreSQL 18's pg_basebackup wrote it for the same file.
        assert!(m.starts_with(
            "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7716201325310117866,\n\"Files\": [\n{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-12-06 "
        ), "{m}");
        assert!(m.contains("\"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"994e7be2\" }\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000120\" }\n],\n\"Manifest-Checksum\": \""), "{m}");
        let cut = m.trim_end_matches('\n').rfind('\n').unwrap();
        let sum = crate::wal::hex(&sha2::Sha256::digest(&m.as_bytes()[..=cut]));
        assert!(m.ends_with(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n")));
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["Files"][0]["Size"], 3);
        let old = render(&files, &Range { major: 15, ..range });
        assert!(old.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": ["));
    }
}
