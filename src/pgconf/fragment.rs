//! The user's postgresql.conf fragment: parsing, and refusing what pgwarden owns.
//!
//! The grammar follows PostgreSQL's own (`name [=] value [# comment]`), so that a
//! fragment that works in a hand-written postgresql.conf works here. Values are kept
//! unquoted and quoted again on output.

use std::fmt;

/// One `name = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lower-cased parameter name.
    pub name: String,
    /// The value, unquoted.
    pub value: String,
    /// 1-based line number in the fragment.
    pub line: usize,
}

/// A parsed fragment, in file order (a later line wins, as in PostgreSQL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// The entries in file order.
    pub entries: Vec<Entry>,
}

impl Fragment {
    /// The effective value of `name`, if the fragment sets it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.name == name)
            .map(|e| e.value.as_str())
    }
}

/// Lines of a fragment that cannot be used. Every bad line is listed, not only the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FragmentError {
    /// `(line, message)` for each bad line.
    pub problems: Vec<(usize, String)>,
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|(line, msg)| format!("line {line}: {msg}"))
            .collect();
        f.write_str(&lines.join("; "))
    }
}

/// Parameters that pgwarden sets itself, with the reason shown to the user.
pub const OWNED: &[(&str, &str)] = &[
    (
        "listen_addresses",
        "pgwarden listens on all addresses; restrict access in PGWARDEN_USER_HBA",
    ),
    ("port", "set PGPORT instead"),
    ("unix_socket_directories", "set PGWARDEN_SOCKET_DIR instead"),
    (
        "hba_file",
        "pgwarden renders pg_hba.conf; add rules with PGWARDEN_USER_HBA",
    ),
    ("ident_file", "pgwarden renders pg_ident.conf"),
    ("config_file", "pgwarden renders postgresql.conf"),
    ("data_directory", "set PGDATA instead"),
    (
        "external_pid_file",
        "pgwarden supervises postgres through postmaster.pid",
    ),
    (
        "archive_mode",
        "set PGWARDEN_ARCHIVE_URL to turn archiving on",
    ),
    (
        "archive_command",
        "pgwarden is the archive_command; set PGWARDEN_ARCHIVE_URL",
    ),
    (
        "archive_library",
        "pgwarden is the archive_command; set PGWARDEN_ARCHIVE_URL",
    ),
    (
        "restore_command",
        "pgwarden is the restore_command; set PGWARDEN_ARCHIVE_URL",
    ),
    (
        "primary_conninfo",
        "set PGWARDEN_PRIMARY_HOST and PGWARDEN_PRIMARY_PORT instead",
    ),
    (
        "primary_slot_name",
        "pgwarden names the slot after PGWARDEN_NAME",
    ),
    (
        "recovery_target_timeline",
        "pgwarden follows the latest timeline",
    ),
    ("promote_trigger_file", "use pgwarden promote"),
    ("hot_standby", "replicas are always hot standbys"),
    (
        "log_destination",
        "pgwarden collects postgres's stderr and writes it to stdout",
    ),
    (
        "logging_collector",
        "pgwarden collects postgres's stderr and writes it to stdout",
    ),
    (
        "log_line_prefix",
        "pgwarden parses each line into JSON fields; user and database are among them",
    ),
    (
        "restart_after_crash",
        "pgwarden restarts postgres after a crash itself",
    ),
];

/// Why `name = value` may not be set by the user, if it may not: a parameter pgwarden
/// owns, or a `wal_level` below what replicas and archiving need.
pub fn owned_reason(name: &str, value: &str) -> Option<String> {
    if let Some((_, why)) = OWNED.iter().find(|(owned, _)| *owned == name) {
        Some(format!("{name} is set by pgwarden ({why})"))
    } else if name == "wal_level"
        && !matches!(value.to_ascii_lowercase().as_str(), "replica" | "logical")
    {
        Some(format!(
            "wal_level = {value:?} is below replica; replicas and archiving need at least replica"
        ))
    } else {
        None
    }
}

/// Checks that the fragment leaves pgwarden's parameters alone.
pub fn check_owned(frag: &Fragment) -> Result<(), FragmentError> {
    let mut problems = Vec::new();
    for e in &frag.entries {
        if let Some(why) = owned_reason(&e.name, &e.value) {
            problems.push((e.line, why));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FragmentError { problems })
    }
}

/// Builds the command-line layer (`pgwarden postgres -c name=value ...`) and checks it
/// as a fragment is checked. On failure, one message per bad setting, each naming it as
/// it was given.
pub fn from_command_line(pairs: &[(String, String)]) -> Result<Fragment, Vec<String>> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (idx, (name, value)) in pairs.iter().enumerate() {
        let given = format!("-c {name}={value}");
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            problems.push(format!("{given}: {name:?} is not a parameter name"));
        } else if value.contains(['\n', '\r', '\0']) {
            problems.push(format!(
                "{given}: the value contains a newline or NUL character"
            ));
        } else if matches!(
            name.as_str(),
            "include" | "include_if_exists" | "include_dir"
        ) {
            problems.push(format!("{given}: {name} is not a setting"));
        } else {
            entries.push(Entry {
                name: name.to_ascii_lowercase(),
                value: value.clone(),
                line: idx + 1,
            });
        }
    }
    let frag = Fragment { entries };
    if let Err(e) = check_owned(&frag) {
        for (line, msg) in e.problems {
            let (name, value) = &pairs[line - 1];
            problems.push(format!("-c {name}={value}: {msg}"));
        }
    }
    if problems.is_empty() {
        Ok(frag)
    } else {
        Err(problems)
    }
}

/// Parses a postgresql.conf fragment.
pub fn parse(text: &str) -> Result<Fragment, FragmentError> {
    let (frag, problems) = parse_all(text);
    if problems.is_empty() {
        Ok(frag)
    } else {
        Err(FragmentError { problems })
    }
}

/// Parses and checks a fragment, reporting every bad line at once: the lines that do
/// not parse and the ones that set a parameter pgwarden owns, in line order.
pub fn parse_checked(text: &str) -> Result<Fragment, FragmentError> {
    let (frag, mut problems) = parse_all(text);
    if let Err(owned) = check_owned(&frag) {
        problems.extend(owned.problems);
    }
    problems.sort_by_key(|(line, _)| *line);
    if problems.is_empty() {
        Ok(frag)
    } else {
        Err(FragmentError { problems })
    }
}

/// The entries that parse, and the problems of those that do not.
fn parse_all(text: &str) -> (Fragment, Vec<(usize, String)>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        match parse_line(raw) {
            Ok(Some((name, value))) => {
                if matches!(
                    name.as_str(),
                    "include" | "include_if_exists" | "include_dir"
                ) {
                    problems.push((
                        line,
                        format!(
                            "{name} directives are not supported; put the settings in this file"
                        ),
                    ));
                } else {
                    entries.push(Entry { name, value, line });
                }
            }
            Ok(None) => {}
            Err(msg) => problems.push((line, msg)),
        }
    }
    (Fragment { entries }, problems)
}

/// Parses one line: `Some((lower-cased name, unquoted value))`, `None` for a blank line
/// or a comment.
pub fn parse_line(raw: &str) -> Result<Option<(String, String)>, String> {
    let s = raw.trim_start();
    if s.is_empty() || s.starts_with('#') {
        return Ok(None);
    }
    let name_len = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '.'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let name = &s[..name_len];
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return Err(format!("expected a parameter name, found {:?}", raw.trim()));
    }
    let mut rest = s[name_len..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let (value, after) = if let Some(quoted) = rest.strip_prefix('\'') {
        parse_quoted(quoted)?
    } else {
        let len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || "_.:/+-".contains(*c)))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(format!("{name} has no value"));
        }
        (rest[..len].to_owned(), &rest[len..])
    };
    let after = after.trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return Err(format!("unexpected {after:?} after the value of {name}"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "the value of {name} contains a newline or NUL character"
        ));
    }
    Ok(Some((name.to_ascii_lowercase(), value)))
}

/// Parses the inside of a single-quoted value; returns it and the text after the quote.
fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => {
                if let Some((_, '\'')) = chars.peek() {
                    chars.next();
                    out.push('\'');
                } else {
                    return Ok((out, &s[i + 1..]));
                }
            }
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'b')) => out.push('\u{8}'),
                Some((_, 'f')) => out.push('\u{c}'),
                Some((_, other)) => out.push(other),
                None => break,
            },
            other => out.push(other),
        }
    }
    Err("unterminated quoted value".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_postgres_grammar() {
        let f = parse(
            "# comment\n\nshared_buffers = 128MB\nwork_mem '4MB' # trailing\nsearch_path='\"$user\", public'\n\
             Log_Min_Duration_Statement=250\napp.setting = 'it''s'\n",
        )
        .unwrap();
        let got: Vec<(&str, &str, usize)> = f
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("shared_buffers", "128MB", 3),
                ("work_mem", "4MB", 4),
                ("search_path", "\"$user\", public", 5),
                ("log_min_duration_statement", "250", 6),
                ("app.setting", "it's", 7),
            ]
        );
        assert_eq!(f.get("work_mem"), Some("4MB"));
    }

    #[test]
    fn reports_every_malformed_line() {
        let err = parse("work_mem = '4MB\nshared_buffers\n= 3\nx = 1 2\ninclude 'other.conf'\n")
            .unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.0).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5]);
        assert!(err
            .to_string()
            .contains("line 1: unterminated quoted value"));
    }

    #[test]
    fn reports_malformed_and_owned_lines_together() {
        let err = parse_checked(
            "work_mem = '4MB\nport = 5433\nshared_buffers = 1GB\nx = 1 2\narchive_command = 'cp'\n",
        )
        .unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.0).collect();
        assert_eq!(lines, vec![1, 2, 4, 5]);
        assert!(parse_checked("work_mem = 4MB\n").is_ok());
    }

    #[test]
    fn rejects_escaped_newlines() {
        let err = parse("application_name = 'a\\nb'\n").unwrap_err();
        assert!(err.to_string().contains("newline"), "{err}");
    }

    #[test]
    fn lists_every_owned_parameter() {
        let f = parse("port = 5433\nwork_mem = 4MB\nwal_level = minimal\narchive_command = 'cp %p /x'\nwal_level = logical\n").unwrap();
        let err = check_owned(&f).unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.0).collect();
        assert_eq!(lines, vec![1, 3, 4]);
        let msg = err.to_string();
        assert!(msg.contains("line 1: port is set by pgwarden"), "{msg}");
        assert!(msg.contains("below replica"), "{msg}");
        assert!(check_owned(&parse("wal_level = logical\n").unwrap()).is_ok());
    }

    #[test]
    fn checks_the_command_line_like_a_fragment() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let ok =
            from_command_line(&pairs(&[("max_connections", "200"), ("Work_Mem", "8MB")])).unwrap();
        assert_eq!(ok.get("max_connections"), Some("200"));
        assert_eq!(ok.get("work_mem"), Some("8MB"));
        let err = from_command_line(&pairs(&[
            ("max_connections", "200"),
            ("port", "6000"),
            ("1x", "y"),
            ("application_name", "a\nb"),
            ("wal_level", "minimal"),
        ]))
        .unwrap_err();
        assert_eq!(err.len(), 4, "{err:?}");
        assert!(
            err.iter()
                .any(|m| m.starts_with("-c port=6000: port is set by pgwarden (set PGPORT")),
            "{err:?}"
        );
        assert!(err.iter().any(|m| m.starts_with("-c 1x=y:")), "{err:?}");
        assert!(err.iter().any(|m| m.contains("newline")), "{err:?}");
        assert!(err.iter().any(|m| m.contains("below replica")), "{err:?}");
    }
}
