//! Taking over a PGDATA that pgwarden did not create, such as one made by the official
//! image, without losing what its postgresql.conf and pg_hba.conf said.
//!
//! The first start copies each file that pgwarden did not write to `<name>.orig`
//! beside it, and every start reads the settings and rules back from there into an
//! adopted layer: after pgwarden's defaults, before `PGWARDEN_USER_CONF` and the command
//! line (which win), and before pgwarden's own parameters (which always win). What is
//! not carried over is listed, with the reason, so that it can be logged.

use super::fragment::{self, Entry, Fragment};
use super::hba::{self, HbaRule};
use std::io;
use std::path::{Path, PathBuf};

/// The first line of every file pgwarden writes; a file without it is the user's.
pub const HEADER: &str = "# Written by pgwarden";

/// The copy of the original postgresql.conf, kept beside the rendered one.
pub const ORIGINAL_CONF: &str = "postgresql.conf.orig";

/// The copy of the original pg_hba.conf, kept beside the rendered one.
pub const ORIGINAL_HBA: &str = "pg_hba.conf.orig";

/// initdb's own pg_hba.conf rules (type, database, user, address): replaced by pgwarden's
/// socket and password rules, whatever method they had.
const INITDB_HBA: &[&[&str]] = &[
    &["local", "all", "all"],
    &["host", "all", "all", "127.0.0.1/32"],
    &["host", "all", "all", "::1/128"],
    &["local", "replication", "all"],
    &["host", "replication", "all", "127.0.0.1/32"],
    &["host", "replication", "all", "::1/128"],
];

/// Something of the original files that is not in force under pgwarden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAdopted {
    /// The setting or rule as it was written.
    pub what: String,
    /// Why pgwarden does not carry it over, and what it does instead.
    pub why: String,
}

/// The adopted layer of one PGDATA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Settings carried over from the original postgresql.conf, in file order.
    pub conf: Fragment,
    /// Rules carried over from the original pg_hba.conf, in file order.
    pub hba: Vec<HbaRule>,
    /// What was left out, for the log.
    pub not_adopted: Vec<NotAdopted>,
    /// Files still to be copied to their `.orig` name: `(original, copy)`.
    pub to_keep: Vec<(PathBuf, PathBuf)>,
}

impl Adopted {
    /// True when the PGDATA had files of its own.
    pub fn is_empty(&self) -> bool {
        self.conf.entries.is_empty() && self.hba.is_empty() && self.not_adopted.is_empty()
    }
}

/// The text to adopt from one file: the live file when pgwarden did not write it (the
/// newest word of the user), else the copy kept at an earlier start. Also says whether
/// the live file still needs copying aside.
fn source(pgdata: &Path, live: &str, orig: &str) -> io::Result<Option<(String, bool)>> {
    match std::fs::read_to_string(pgdata.join(live)) {
        Ok(text) if !text.starts_with(HEADER) => return Ok(Some((text, true))),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::read_to_string(pgdata.join(orig)) {
        Ok(text) => Ok(Some((text, false))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads what there is to adopt in an initialised PGDATA. Writes nothing.
pub fn load(pgdata: &Path) -> Result<Adopted, String> {
    let mut out = Adopted::default();
    let read_err =
        |name: &str, e: io::Error| format!("cannot read {}/{name}: {e}", pgdata.display());
    if let Some((text, copy)) = source(pgdata, "postgresql.conf", ORIGINAL_CONF)
        .map_err(|e| read_err("postgresql.conf", e))?
    {
        let (conf, dropped) = adopt_conf(&text, pgdata)?;
        out.conf = conf;
        out.not_adopted.extend(dropped);
        if copy {
            out.to_keep
                .push((pgdata.join("postgresql.conf"), pgdata.join(ORIGINAL_CONF)));
        }
    }
    if let Some((text, copy)) =
        source(pgdata, "pg_hba.conf", ORIGINAL_HBA).map_err(|e| read_err("pg_hba.conf", e))?
    {
        let (rules, dropped) = adopt_hba(&text);
        out.hba = rules;
        out.not_adopted.extend(dropped);
        if copy {
            out.to_keep
                .push((pgdata.join("pg_hba.conf"), pgdata.join(ORIGINAL_HBA)));
        }
    }
    Ok(out)
}

/// Splits an original postgresql.conf into the settings carried over and those pgwarden
/// owns. Include directives are kept, with relative paths made absolute, since the
/// rendered file is checked elsewhere. A line postgres itself would refuse is an error.
pub fn adopt_conf(text: &str, pgdata: &Path) -> Result<(Fragment, Vec<NotAdopted>), String> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        match fragment::parse_line(raw) {
            Ok(Some((name, mut value))) => {
                if matches!(
                    name.as_str(),
                    "include" | "include_if_exists" | "include_dir"
                ) && !Path::new(&value).is_absolute()
                {
                    value = pgdata.join(&value).to_string_lossy().into_owned();
                }
                entries.push(Entry { name, value, line });
            }
            Ok(None) => {}
            Err(msg) => problems.push(format!("line {line}: {msg}")),
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "postgresql.conf cannot be adopted ({}); fix those lines or move the file away",
            problems.join("; ")
        ));
    }
    let owned: Vec<(usize, String)> = fragment::check_owned(&Fragment {
        entries: entries.clone(),
    })
    .err()
    .map(|e| e.problems)
    .unwrap_or_default();
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for e in entries {
        match owned.iter().find(|(line, _)| *line == e.line) {
            Some((_, why)) => dropped.push(NotAdopted {
                what: format!("{} = '{}'", e.name, e.value),
                why: why.clone(),
            }),
            None => kept.push(e),
        }
    }
    Ok((Fragment { entries: kept }, dropped))
}

/// Splits an original pg_hba.conf into the rules carried over and those left out:
/// initdb's defaults (pgwarden has its own socket and password rules) and lines
/// pgwarden cannot check.
pub fn adopt_hba(text: &str) -> (Vec<HbaRule>, Vec<NotAdopted>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let tokens = match hba::tokenize(raw).and_then(|t| hba::check_rule(&t).map(|()| t)) {
            Ok(t) if t.is_empty() => continue,
            Ok(t) => t,
            Err(msg) => {
                dropped.push(NotAdopted {
                    what: raw.trim().to_owned(),
                    why: msg,
                });
                continue;
            }
        };
        let head_len = if tokens[0] == "local" { 3 } else { 4 };
        let head: Vec<&str> = tokens.iter().take(head_len).map(String::as_str).collect();
        if INITDB_HBA.contains(&head.as_slice()) {
            dropped.push(NotAdopted {
                what: tokens.join(" "),
                why: "initdb's default rule; pgwarden's own rules (peer for itself, scram-sha-256 or POSTGRES_HOST_AUTH_METHOD for everyone else) replace it".to_owned(),
            });
            continue;
        }
        kept.push(HbaRule {
            line: idx + 1,
            tokens,
        });
    }
    (kept, dropped)
}

/// What init scripts added to a file pgwarden rendered for the bootstrap (an `echo ... >>
/// "$PGDATA/postgresql.conf"`, a `sed -i`): the setting or rule lines of `edited` that
/// `rendered` does not have, in order, as a file to adopt; `None` when there are none.
pub fn script_additions(rendered: &str, edited: &str) -> Option<String> {
    let ours: std::collections::HashSet<&str> = rendered.lines().map(str::trim).collect();
    let added: Vec<&str> = edited
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !ours.contains(l))
        .collect();
    if added.is_empty() {
        return None;
    }
    Some(format!(
        "# Added by init scripts during pgwarden's bootstrap; in force through pgwarden's adopted layer.\n{}\n",
        added.join("\n")
    ))
}

/// Keeps what init scripts added to the staged postgresql.conf and pg_hba.conf as their
/// `.orig` files, which the adopted layer reads at every start. Returns each file kept
/// and how many lines it holds.
pub fn keep_script_additions(
    staging: &Path,
    rendered: &super::Rendered,
    owner: Option<crate::fsutil::Owner>,
) -> io::Result<Vec<(PathBuf, usize)>> {
    let mut kept = Vec::new();
    for (live, ours, orig) in [
        ("postgresql.conf", &rendered.postgresql_conf, ORIGINAL_CONF),
        ("pg_hba.conf", &rendered.pg_hba, ORIGINAL_HBA),
    ] {
        let edited = std::fs::read_to_string(staging.join(live))?;
        if let Some(text) = script_additions(ours, &edited) {
            let path = staging.join(orig);
            crate::fsutil::write_atomic(&path, text.as_bytes(), owner, 0o600)?;
            kept.push((path, text.lines().count() - 1));
        }
    }
    Ok(kept)
}

/// Adopted settings that the fragment or the command line set too, and so lose:
/// `(name, adopted value, winning setting, its value)`.
pub fn overridden<'a>(
    adopted: &'a Fragment,
    user_conf: &'a Fragment,
    command_line: &'a Fragment,
) -> Vec<(&'a str, &'a str, &'static str, &'a str)> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in adopted.entries.iter().rev() {
        if !seen.insert(e.name.as_str()) {
            continue;
        }
        if let Some(v) = command_line.get(&e.name) {
            out.push((e.name.as_str(), e.value.as_str(), "postgres -c", v));
        } else if let Some(v) = user_conf.get(&e.name) {
            out.push((e.name.as_str(), e.value.as_str(), "PGWARDEN_USER_CONF", v));
        }
    }
    out.reverse();
    out
}

/// Copies the original files to their `.orig` names, atomically. A different copy from
/// an earlier adoption is kept as `<name>.orig.<n>` rather than overwritten.
pub fn keep_originals(a: &Adopted, owner: Option<crate::fsutil::Owner>) -> io::Result<()> {
    for (live, copy) in &a.to_keep {
        let text = std::fs::read(live)?;
        match std::fs::read(copy) {
            Ok(old) if old == text => continue,
            Ok(_) => {
                let mut n = 1;
                let aside = loop {
                    let p = PathBuf::from(format!("{}.{n}", copy.display()));
                    if !p.exists() {
                        break p;
                    }
                    n += 1;
                };
                std::fs::rename(copy, &aside)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        crate::fsutil::write_atomic(copy, &text, owner, 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopts_settings_and_leaves_out_the_owned_ones() {
        let text = "# official image\nlisten_addresses = '*'\nmax_connections = 300\t# (change requires restart)\n\
                    shared_preload_libraries = 'pg_stat_statements'\ntimezone = 'Europe/Paris'\nport = 5433\n\
                    include_dir = 'conf.d'\ninclude '/etc/pg/extra.conf'\n";
        let (conf, dropped) = adopt_conf(text, Path::new("/data")).unwrap();
        let kept: Vec<(&str, &str)> = conf
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("max_connections", "300"),
                ("shared_preload_libraries", "pg_stat_statements"),
                ("timezone", "Europe/Paris"),
                ("include_dir", "/data/conf.d"),
                ("include", "/etc/pg/extra.conf"),
            ]
        );
        let what: Vec<&str> = dropped.iter().map(|d| d.what.as_str()).collect();
        assert_eq!(what, vec!["listen_addresses = '*'", "port = '5433'"]);
        assert!(dropped[1].why.contains("PGPORT"), "{dropped:?}");
    }

    #[test]
    fn the_fragment_and_the_command_line_win_over_adopted_settings() {
        let frag = |t: &str| fragment::parse(t).unwrap();
        let adopted = frag("max_connections = 300\nwork_mem = 4MB\ntimezone = UTC\n");
        let user = frag("work_mem = 8MB\nmax_connections = 100\n");
        let cli = frag("max_connections = 200\n");
        assert_eq!(
            overridden(&adopted, &user, &cli),
            vec![
                ("max_connections", "300", "postgres -c", "200"),
                ("work_mem", "4MB", "PGWARDEN_USER_CONF", "8MB"),
            ]
        );
    }

    #[test]
    fn finds_what_init_scripts_added() {
        let rendered = "# Written by pgwarden\nport = '5432'\nwork_mem = '4MB'\n";
        assert_eq!(script_additions(rendered, rendered), None);
        let cases = [
            // Appended, as the official image's documentation shows.
            (
                format!("{rendered}shared_preload_libraries = 'pg_stat_statements'\n"),
                vec!["shared_preload_libraries = 'pg_stat_statements'"],
            ),
            // Changed in place with sed; comments and blank lines do not count.
            (
                "# Written by pgwarden\nport = '5432'\nwork_mem = '64MB'\n\n# mine\n".to_owned(),
                vec!["work_mem = '64MB'"],
            ),
        ];
        for (edited, want) in cases {
            let got = script_additions(rendered, &edited).unwrap();
            let lines: Vec<&str> = got.lines().skip(1).collect();
            assert_eq!(lines, want, "{edited}");
            assert!(got.starts_with("# Added by init scripts"));
        }
    }

    #[test]
    fn a_line_postgres_would_refuse_is_an_error() {
        let err = adopt_conf("work_mem = '4MB\n", Path::new("/data")).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn adopts_rules_but_not_initdbs_defaults() {
        let text = "# TYPE DATABASE USER ADDRESS METHOD\nlocal   all   all   trust\n\
                    host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n\
                    local replication all trust\nhost replication all 127.0.0.1/32 trust\n\
                    host replication all ::1/128 trust\n\nhost all all all scram-sha-256\n\
                    host app app 10.0.0.0/8 scram-sha-256\ninclude_dir hba.d\n";
        let (kept, dropped) = adopt_hba(text);
        let kept: Vec<String> = kept.iter().map(HbaRule::render).collect();
        assert_eq!(
            kept,
            vec![
                "host all all all scram-sha-256",
                "host app app 10.0.0.0/8 scram-sha-256"
            ]
        );
        assert_eq!(dropped.len(), 7, "{dropped:?}");
        assert!(dropped[6].what.starts_with("include_dir"), "{dropped:?}");
    }

    #[test]
    fn reads_the_live_file_first_then_the_kept_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert_eq!(load(d).unwrap(), Adopted::default());
        std::fs::write(d.join("postgresql.conf"), "max_connections = 300\n").unwrap();
        let a = load(d).unwrap();
        assert_eq!(a.conf.get("max_connections"), Some("300"));
        assert_eq!(a.to_keep.len(), 1);
        keep_originals(&a, None).unwrap();
        std::fs::write(d.join("postgresql.conf"), format!("{HEADER} ...\n")).unwrap();
        let again = load(d).unwrap();
        assert_eq!(again.conf.get("max_connections"), Some("300"));
        assert!(again.to_keep.is_empty());
        // A new hand-written file wins; the earlier copy is kept aside.
        std::fs::write(d.join("postgresql.conf"), "max_connections = 50\n").unwrap();
        let newer = load(d).unwrap();
        assert_eq!(newer.conf.get("max_connections"), Some("50"));
        keep_originals(&newer, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("postgresql.conf.orig.1")).unwrap(),
            "max_connections = 300\n"
        );
    }
}
