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

/// The name of the copy of a backup's manifest stored beside its parts
/// (`base/<id>/backup_manifest`): read by an incremental backup (which files its parent
/// had, and how large) and by a delta restore (which files a directory already holds)
/// without fetching a tar part. barman-cloud ignores it (it is not a `data` part).
pub const OBJECT: &str = "backup_manifest";

/// A manifest read back: its files and its checksum check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The files, as listed.
    pub files: Vec<File>,
    /// The system identifier (version 2 manifests, PostgreSQL 17 on).
    pub system_id: Option<u64>,
}

/// Parses a manifest as [`render`] writes it (and as PostgreSQL writes it); `Err` says
/// what is wrong, including a `Manifest-Checksum` that does not match.
pub fn parse(text: &str) -> Result<Parsed, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(rename = "System-Identifier")]
        system_id: Option<u64>,
        #[serde(rename = "Files")]
        files: Vec<RawFile>,
        #[serde(rename = "Manifest-Checksum")]
        checksum: String,
    }
    #[derive(serde::Deserialize)]
    struct RawFile {
        #[serde(rename = "Path")]
        path: String,
        #[serde(rename = "Size")]
        size: u64,
        #[serde(rename = "Last-Modified")]
        last_modified: Option<String>,
        #[serde(rename = "Checksum")]
        checksum: Option<String>,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("not a backup manifest: {e}"))?;
    let body = text.trim_end_matches('\n');
    let cut = body
        .rfind('\n')
        .ok_or_else(|| "the manifest has no Manifest-Checksum line".to_owned())?;
    let sum = crate::wal::hex(&sha2::Sha256::digest(&text.as_bytes()[..=cut]));
    if sum != raw.checksum {
        return Err(format!(
            "the manifest's checksum is {} but its content sums to {sum}: it is damaged",
            raw.checksum
        ));
    }
    let mut files = Vec::with_capacity(raw.files.len());
    for f in raw.files {
        let crc = f
            .checksum
            .as_deref()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("{}: no CRC-32C checksum in the manifest", f.path))?;
        // `2026-12-07 01:35:02 GMT`, as render and PostgreSQL write it; 0 when it is
        // missing or unreadable, which Parent::unchanged never takes for a time.
        let mtime = f
            .last_modified
            .as_deref()
            .and_then(|t| t.strip_suffix(" GMT"))
            .and_then(crate::civil::parse_timestamp)
            .map_or(0, |t| t.micros.div_euclid(1_000_000));
        files.push(File {
            path: f.path,
            size: f.size,
            mtime,
            // Written as the CRC's little-endian bytes in hex (see render).
            crc32c: crc.swap_bytes(),
        });
    }
    Ok(Parsed {
        files,
        system_id: raw.system_id,
    })
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
        let back = parse(&m).unwrap();
        assert_eq!(back.system_id, Some(7716201325310117866));
        assert_eq!(back.files[0].crc32c, files[0].crc32c);
        assert_eq!(
            back.files[0].mtime, files[0].mtime,
            "Last-Modified read back"
        );
        assert_eq!(
            (back.files[0].path.as_str(), back.files[0].size),
            ("PG_VERSION", 3)
        );
        let damaged = m.replace("\"Size\": 3", "\"Size\": 4");
        assert!(parse(&damaged).unwrap_err().contains("damaged"));
        let old = render(&files, &Range { major: 15, ..range });
        assert_eq!(parse(&old).unwrap().system_id, None);
        assert!(old.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": ["));
    }
}
