//! What the S3 server does with `If-None-Match: *`, remembered between the one-shot
//! `wal-archive` processes postgres starts when no daemon runs.
//!
//! The daemon learns it once, with a probe (two conditional PUTs of a probe object and
//! a DELETE), and keeps it for its lifetime. A one-shot process would probe on every
//! call: three requests per segment, more than the segment's own upload. So the
//! verdict is noted in PGDATA, `pgwarden.archive-server`, under the endpoint and
//! bucket it was learned from, and trusted for [`FRESH_FOR`]; then a call probes again.
//!
//! Neither verdict weakens a push: "ignored" takes the careful path (a claim on the
//! name before the write), which is safe on any server; "enforced" sends the
//! conditional PUT, and a server that answers it with 400/501 switches the process
//! to the careful path. Only a server swapped under the same endpoint for one that
//! silently ignores the header would be trusted wrongly, for at most [`FRESH_FOR`].

use super::storage::Backend;
use std::path::Path;
use std::time::Duration;

/// The note in PGDATA.
pub const NOTE: &str = "pgwarden.archive-server";
/// How long a noted verdict is trusted before a call probes the server again.
pub const FRESH_FOR: Duration = Duration::from_secs(3600);

/// The note's line: `<endpoint>/<bucket> enforced|ignored`.
fn line(server: &str, enforced: bool) -> String {
    format!(
        "{server} {}\n",
        if enforced { "enforced" } else { "ignored" }
    )
}

/// The verdict a note holds for `server`, if it is about that server.
fn parse(note: &str, server: &str) -> Option<bool> {
    let (noted, verdict) = note.trim_end().rsplit_once(' ')?;
    if noted != server {
        return None;
    }
    match verdict {
        "enforced" => Some(true),
        "ignored" => Some(false),
        _ => None,
    }
}

/// Gives `storage` the verdict noted in `pgdata` when it is fresh and about this
/// server; returns the verdict given.
pub fn recall(pgdata: &Path, storage: &Backend) -> Option<bool> {
    let Backend::S3(s3) = storage else {
        return None;
    };
    let path = pgdata.join(NOTE);
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < FRESH_FOR);
    if !fresh {
        return None;
    }
    let verdict = parse(&std::fs::read_to_string(&path).ok()?, s3.server())?;
    s3.assume_conditional_writes(verdict);
    Some(verdict)
}

/// Notes in `pgdata` what `storage` learned, unless it is what was `recalled`. Best
/// effort: without the note, the next call probes.
pub fn remember(pgdata: &Path, storage: &Backend, recalled: Option<bool>) {
    let Backend::S3(s3) = storage else {
        return;
    };
    let Some(verdict) = s3.conditional_writes() else {
        return;
    };
    if recalled == Some(verdict) {
        return;
    }
    let text = line(s3.server(), verdict);
    if let Err(e) = crate::fsutil::write_atomic(&pgdata.join(NOTE), text.as_bytes(), None, 0o600) {
        tracing::debug!(error = %e, "could not note the S3 server's conditional writes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_counts_only_for_the_server_it_was_learned_from() {
        let s = "http://127.0.0.1:3900/wal";
        for enforced in [true, false] {
            assert_eq!(parse(&line(s, enforced), s), Some(enforced));
            assert_eq!(
                parse(&line(s, enforced), "http://127.0.0.1:3900/other"),
                None
            );
            assert_eq!(parse(&line("aws/wal", enforced), s), None);
        }
        assert_eq!(parse("", s), None);
        assert_eq!(parse(&format!("{s} maybe\n"), s), None);
        assert_eq!(parse(s, s), None);
    }
}
