//! Quoting for postgresql.conf values, pg_hba.conf tokens and SQL.

/// A value that cannot be written into a line-oriented config file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what}: the value contains a newline or NUL character")]
pub struct NewlineError {
    /// Which value.
    pub what: String,
}

fn check(what: &str, value: &str) -> Result<(), NewlineError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(NewlineError {
            what: what.to_owned(),
        });
    }
    Ok(())
}

/// Quotes a postgresql.conf value: single quotes, with `'` doubled and `\` escaped.
/// Every type of parameter accepts a quoted value, so pgwarden quotes them all.
pub fn conf_value(what: &str, value: &str) -> Result<String, NewlineError> {
    check(what, value)?;
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

/// Quotes a pg_hba.conf / pg_ident.conf token (role or user name) in double quotes, so
/// that a name like `all` is not taken as a keyword. Names holding `"` are rejected
/// because PostgreSQL 15's hba syntax has no escape for it.
pub fn hba_name(what: &str, value: &str) -> Result<String, NewlineError> {
    check(what, value)?;
    if value.contains('"') {
        return Err(NewlineError {
            what: format!("{what} (contains a double quote)"),
        });
    }
    Ok(format!("\"{value}\""))
}

/// Quotes a libpq connection-string value: single quotes, `\` before `'` and `\`.
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Escapes one field of a `.pgpass` line (`:` and `\` take a backslash).
pub fn pgpass_field(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// Quotes a word for /bin/sh (archive_command runs through the shell).
pub fn shell(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Quotes an SQL identifier.
pub fn ident(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings is on in every supported version).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_conf_values() {
        assert_eq!(conf_value("x", "64MB").unwrap(), "'64MB'");
        assert_eq!(conf_value("x", "it's").unwrap(), "'it''s'");
        assert_eq!(conf_value("x", r"C:\dir").unwrap(), r"'C:\\dir'");
        assert!(conf_value("x", "a\nb").is_err());
    }

    #[test]
    fn quotes_names() {
        assert_eq!(hba_name("u", "all").unwrap(), "\"all\"");
        assert!(hba_name("u", "a\"b").is_err());
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("o'k"), "'o''k'");
        assert_eq!(shell("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(conninfo_value(r"a b'c\d"), r"'a b\'c\\d'");
        assert_eq!(pgpass_field(r"p:w\d"), r"p\:w\\d");
    }
}
