//! barman's `backup.info`: `key=value` lines, read by barman-cloud (3.4 in Debian 12)
//! and by pgwarden.
//!
//! barman refuses a file with a key it does not know ("created with a newer version
//! of Barman"), so pgwarden writes only the keys barman-cloud 3.4 itself writes, and
//! keeps its own data in `#` comment lines, which barman skips.

pub use crate::wal::Lsn;
use std::collections::BTreeMap;

/// The keys pgwarden writes, in barman-cloud's order.
const KEYS: &[&str] = &[
    "backup_label",
    "begin_offset",
    "begin_time",
    "begin_wal",
    "begin_xlog",
    "compression",
    "config_file",
    "copy_stats",
    "deduplicated_size",
    "end_offset",
    "end_time",
    "end_wal",
    "end_xlog",
    "error",
    "hba_file",
    "ident_file",
    "included_files",
    "mode",
    "pgdata",
    "server_name",
    "size",
    "status",
    "systemid",
    "tablespaces",
    "timeline",
    "version",
    "xlog_segment_size",
];

/// What a backup is, as `backup.info` records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    /// barman's id: `YYYYmmddTHHMMSS`.
    pub backup_id: String,
    /// `DONE` for a usable backup.
    pub status: String,
    /// Timeline the backup started on.
    pub timeline: u32,
    /// First WAL segment recovery needs.
    pub begin_wal: String,
    /// Start position.
    pub begin_xlog: String,
    /// Last WAL segment recovery needs to reach consistency.
    pub end_wal: String,
    /// End position.
    pub end_xlog: String,
    /// ISO time with offset.
    pub begin_time: String,
    /// ISO time with offset.
    pub end_time: String,
    /// `server_version_num`.
    pub version: u32,
    /// The cluster's system identifier.
    pub systemid: String,
    /// WAL segment size in bytes.
    pub xlog_segment_size: u64,
    /// Bytes of the data object(s) as stored.
    pub size: Option<u64>,
    /// The whole label postgres wrote.
    pub backup_label: Option<String>,
    /// The tablespaces the backup holds, each in `<oid>.tar[.gz]` (empty: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<Tablespace>,
    /// Written by pgwarden (from its comment line), else by barman-cloud.
    pub made_by: String,
    /// pgwarden's extra facts, from `# key: value` comment lines.
    pub extra: BTreeMap<String, String>,
}

/// A tablespace of a backup, as barman records it (its `Tablespace` namedtuple:
/// name, oid, location).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tablespace {
    /// `pg_tablespace.spcname`.
    pub name: String,
    /// Its oid: the name of `pg_tblspc/<oid>` and of its data objects.
    pub oid: u32,
    /// Where it was (`pg_tablespace_location`), an absolute path.
    pub location: String,
}

/// barman's `tablespaces` value: the Python literal of a list of
/// `(name, oid, location)` tuples (`repr([tuple(t) for t in tablespaces])`, read back
/// with `ast.literal_eval`), or `None` for none.
pub fn render_tablespaces(t: &[Tablespace]) -> String {
    if t.is_empty() {
        return "None".to_owned();
    }
    let items: Vec<String> = t
        .iter()
        .map(|t| {
            format!(
                "({}, {}, {})",
                py_repr(&t.name),
                t.oid,
                py_repr(&t.location)
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Reads what [`render_tablespaces`] (or barman) wrote; `None` (the field's absence)
/// is no tablespace.
pub fn parse_tablespaces(text: &str) -> Result<Vec<Tablespace>, String> {
    let bad = || format!("tablespaces={text:?} is not a list of (name, oid, location)");
    let mut rest = text.trim();
    if rest == "None" || rest.is_empty() {
        return Ok(Vec::new());
    }
    rest = rest.strip_prefix('[').ok_or_else(bad)?.trim_start();
    let mut out = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix(']') {
            if !r.trim().is_empty() {
                return Err(bad());
            }
            return Ok(out);
        }
        rest = rest.strip_prefix('(').ok_or_else(bad)?.trim_start();
        let (name, r) = py_str_prefix(rest).ok_or_else(bad)?;
        rest = r
            .trim_start()
            .strip_prefix(',')
            .ok_or_else(bad)?
            .trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let oid: u32 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..]
            .trim_start()
            .strip_prefix(',')
            .ok_or_else(bad)?
            .trim_start();
        let (location, r) = py_str_prefix(rest).ok_or_else(bad)?;
        rest = r
            .trim_start()
            .strip_prefix(')')
            .ok_or_else(bad)?
            .trim_start();
        out.push(Tablespace {
            name,
            oid,
            location,
        });
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        }
    }
}

/// The Python string literal at the start of `s`, and what follows it.
fn py_str_prefix(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == q {
            return Some((py_unrepr(&s[..=i])?, &s[i + 1..]));
        }
    }
    None
}

/// Python's `repr` of a str, as barman writes `backup_label` (read back with
/// `ast.literal_eval`).
pub fn py_repr(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The inverse of [`py_repr`] for the strings barman writes ('…' or "…").
fn py_unrepr(s: &str) -> Option<String> {
    let s = s.trim();
    let q = s.chars().next()?;
    if !(q == '\'' || q == '"') || !s.ends_with(q) || s.len() < 2 {
        return None;
    }
    let mut out = String::new();
    let mut chars = s[1..s.len() - 1].chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'x' => {
                let h: String = chars.by_ref().take(2).collect();
                out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

impl BackupInfo {
    /// The file's text: barman's keys, then pgwarden's comment lines.
    pub fn render(&self, pgdata: &str) -> String {
        let seg = self.xlog_segment_size.max(1);
        let offset = |x: &str| Lsn::parse(x).map(|l| l.offset(seg).to_string());
        let mut v: BTreeMap<&str, String> = KEYS.iter().map(|k| (*k, "None".to_owned())).collect();
        v.insert(
            "backup_label",
            self.backup_label
                .as_deref()
                .map(py_repr)
                .unwrap_or("None".into()),
        );
        v.insert(
            "begin_offset",
            offset(&self.begin_xlog).unwrap_or("None".into()),
        );
        v.insert("begin_time", self.begin_time.clone());
        v.insert("begin_wal", self.begin_wal.clone());
        v.insert("begin_xlog", self.begin_xlog.clone());
        v.insert("config_file", format!("{pgdata}/postgresql.conf"));
        v.insert(
            "end_offset",
            offset(&self.end_xlog).unwrap_or("None".into()),
        );
        v.insert("end_time", self.end_time.clone());
        v.insert("end_wal", self.end_wal.clone());
        v.insert("end_xlog", self.end_xlog.clone());
        v.insert("hba_file", format!("{pgdata}/pg_hba.conf"));
        v.insert("ident_file", format!("{pgdata}/pg_ident.conf"));
        v.insert("pgdata", pgdata.to_owned());
        v.insert("server_name", "cloud".to_owned());
        if let Some(size) = self.size {
            v.insert("size", size.to_string());
        }
        v.insert("status", self.status.clone());
        v.insert("systemid", self.systemid.clone());
        v.insert("tablespaces", render_tablespaces(&self.tablespaces));
        v.insert("timeline", self.timeline.to_string());
        v.insert("version", self.version.to_string());
        v.insert("xlog_segment_size", self.xlog_segment_size.to_string());
        let mut out = String::new();
        for (k, val) in &v {
            out.push_str(&format!("{k}={val}\n"));
        }
        out.push_str("# made_by: pgwarden\n");
        for (k, val) in &self.extra {
            out.push_str(&format!("# {k}: {val}\n"));
        }
        out
    }

    /// Reads a `backup.info` (pgwarden's or barman's) for `backup_id`.
    pub fn parse(backup_id: &str, text: &str) -> Result<BackupInfo, String> {
        let Fields {
            values: v,
            mut extra,
        } = Fields::read(text);
        let get = |k: &str| v.get(k).cloned();
        let need = |k: &str| get(k).ok_or_else(|| format!("backup.info of {backup_id} has no {k}"));
        let num = |k: &str| -> Result<u64, String> {
            need(k)?
                .parse()
                .map_err(|_| format!("backup.info of {backup_id}: {k} is not a number"))
        };
        let made_by = extra
            .remove("made_by")
            .unwrap_or_else(|| "barman-cloud".to_owned());
        Ok(BackupInfo {
            backup_id: backup_id.to_owned(),
            status: need("status")?,
            timeline: num("timeline")? as u32,
            begin_wal: need("begin_wal")?,
            begin_xlog: need("begin_xlog")?,
            end_wal: need("end_wal")?,
            end_xlog: need("end_xlog")?,
            begin_time: get("begin_time").unwrap_or_default(),
            end_time: get("end_time").unwrap_or_default(),
            version: num("version")? as u32,
            systemid: need("systemid")?,
            xlog_segment_size: get("xlog_segment_size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(16 << 20),
            size: get("size").and_then(|s| s.parse().ok()),
            backup_label: get("backup_label").and_then(|s| py_unrepr(&s)),
            tablespaces: parse_tablespaces(&get("tablespaces").unwrap_or_default())
                .map_err(|e| format!("backup.info of {backup_id}: {e}"))?,
            made_by,
            extra,
        })
    }
}

/// The fields of a `backup.info`, as every reader of one sees them.
pub struct Fields {
    /// `key=value` lines; barman's `None` (not set) and empty values are left out.
    pub values: BTreeMap<String, String>,
    /// pgwarden's `# key: value` comment lines (barman skips comments).
    pub extra: BTreeMap<String, String>,
}

impl Fields {
    /// Reads `text`.
    pub fn read(text: &str) -> Fields {
        let mut values = BTreeMap::new();
        let mut extra = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some((k, val)) = comment.trim().split_once(": ") {
                    extra.insert(k.trim().to_owned(), val.trim().to_owned());
                }
                continue;
            }
            if let Some((k, val)) = line.split_once('=') {
                let val = val.trim();
                if val != "None" && !val.is_empty() {
                    values.insert(k.trim().to_owned(), val.to_owned());
                }
            }
        }
        Fields { values, extra }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_barmans_keys_only_and_reads_itself_back() {
        let label =
            "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nLABEL: pgwarden 'x'\n";
        let info = BackupInfo {
            backup_id: "20261124T035040".into(),
            status: "DONE".into(),
            timeline: 1,
            begin_wal: "000000010000000000000009".into(),
            begin_xlog: "0/9000028".into(),
            end_wal: "000000010000000000000009".into(),
            end_xlog: "0/9000100".into(),
            begin_time: "2026-11-24 03:50:40.455712+00:00".into(),
            end_time: "2026-11-24 03:50:41.000000+00:00".into(),
            version: 150018,
            systemid: "7711578754227375249".into(),
            xlog_segment_size: 16 << 20,
            size: Some(1234),
            backup_label: Some(label.into()),
            tablespaces: vec![
                Tablespace {
                    name: "fast".into(),
                    oid: 16384,
                    location: "/mnt/ssd/pg".into(),
                },
                Tablespace {
                    name: "it's".into(),
                    oid: 16390,
                    location: "/mnt/a b".into(),
                },
            ],
            made_by: "pgwarden".into(),
            extra: [("data_sha256".to_owned(), "ab".repeat(32))].into(),
        };
        let text = info.render("/var/lib/postgresql/data");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let key = line.split_once('=').unwrap().0;
            assert!(KEYS.contains(&key), "{key} is not a key barman 3.4 knows");
        }
        assert!(
            text.contains("begin_offset=40\n") && text.contains("end_offset=256\n"),
            "{text}"
        );
        assert!(text.contains(r"backup_label='START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nLABEL: pgwarden \'x\'\n'"), "{text}");
        assert!(
            text.contains(
                r"tablespaces=[('fast', 16384, '/mnt/ssd/pg'), ('it\'s', 16390, '/mnt/a b')]"
            ),
            "{text}"
        );
        assert_eq!(BackupInfo::parse(&info.backup_id, &text).unwrap(), info);
        let none = BackupInfo {
            tablespaces: vec![],
            ..info
        };
        let text = none.render("/pgdata");
        assert!(text.contains("\ntablespaces=None\n"), "{text}");
        assert_eq!(BackupInfo::parse(&none.backup_id, &text).unwrap(), none);
    }

    #[test]
    fn reads_the_tablespaces_barman_writes() {
        let t = |name: &str, oid, location: &str| Tablespace {
            name: name.into(),
            oid,
            location: location.into(),
        };
        let cases: &[(&str, Result<Vec<Tablespace>, ()>)] = &[
            ("None", Ok(vec![])),
            ("[]", Ok(vec![])),
            (
                "[('tbs1', 16387, '/srv/tbs1')]",
                Ok(vec![t("tbs1", 16387, "/srv/tbs1")]),
            ),
            (
                "[('a', 1, '/x'), (\"it's\", 2, '/y\\\\z')]",
                Ok(vec![t("a", 1, "/x"), t("it's", 2, "/y\\z")]),
            ),
            ("[('a', 1, '/x'),]", Ok(vec![t("a", 1, "/x")])),
            ("[('a', x, '/x')]", Err(())),
            ("[('a', 1)]", Err(())),
            ("('a', 1, '/x')", Err(())),
            ("[('a', 1, '/x')] junk", Err(())),
            ("[('a, 1, '/x')]", Err(())),
        ];
        for (text, want) in cases {
            let got = parse_tablespaces(text).map_err(|_| ());
            assert_eq!(&got, want, "{text}");
        }
    }
}
