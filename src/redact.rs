//! Hiding passwords in the lines postgres logs, before they reach pgwarden's log.
//!
//! pgwarden itself never sends a password in clear, but postgres logs what users send
//! (`log_statement = 'ddl'` logs `CREATE ROLE … PASSWORD '…'`) and the new value of a
//! parameter changed by a reload (a `primary_conninfo` with `password=`). Covered:
//!
//! - the SQL keyword `PASSWORD` (any case, as a word: `password_admin` is a name)
//!   followed by a literal in each of its forms: `'…'` (with `''`), `E'…'` (with
//!   backslash escapes), `U&'…'`, and dollar quoting `$$…$$` or `$tag$…$tag$`;
//! - a conninfo `password=value` or `password = 'value'`;
//! - the password of a URI, `postgresql://user:secret@host`.
//!
//! A statement may span lines: a keyword at the end of one line hides the literal at
//! the start of the next, and a literal left open hides every line until it closes.

use std::borrow::Cow;

const MASK: &str = "***";

/// How an open literal ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Close {
    /// `'`, where `''` is a quote, and with `escapes`, `\'` too.
    Quote { escapes: bool },
    /// A fixed delimiter: the dollar tag (`$$`, `$tag$`), or `''` or `@`.
    Dollar(String),
    /// A conninfo value: ends at white space or a quote.
    Bare,
}

/// Where a line left off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Pending {
    #[default]
    Nothing,
    /// The line ended right after `PASSWORD`.
    Keyword,
    /// The line ended inside a password literal.
    Inside(Close),
}

/// Redacts a stream of lines, carrying what a line left open to the next one.
#[derive(Debug, Default)]
pub struct Redactor {
    pending: Pending,
}

impl Redactor {
    /// A redactor for one stream.
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// The line with every password replaced by `***`.
    pub fn line<'a>(&mut self, line: &'a str) -> Cow<'a, str> {
        let mut out = String::new();
        let mut pos = 0;
        match std::mem::take(&mut self.pending) {
            Pending::Nothing => {}
            Pending::Keyword => {
                let start = line.len() - line.trim_start().len();
                if start == line.len() {
                    self.pending = Pending::Keyword;
                    return line.into();
                }
                if let Some(close) = opening(&line[start..]) {
                    let (open_len, close) = close;
                    out.push_str(&line[..start + open_len]);
                    pos = self.skip_literal(line, start + open_len, &close, &mut out);
                }
            }
            Pending::Inside(close) => {
                pos = self.skip_literal(line, 0, &close, &mut out);
            }
        }
        if !matches!(self.pending, Pending::Nothing) {
            return out.into();
        }
        let lower = line.to_ascii_lowercase();
        let mut changed = pos > 0;
        while let Some(at) = next_secret(&lower, line, pos) {
            changed = true;
            let Secret { value_at, close } = at;
            out.push_str(&line[pos..value_at.0]);
            match close {
                None => {
                    // The keyword ends the line: the literal is on the next one.
                    out.push_str(&line[value_at.0..]);
                    self.pending = Pending::Keyword;
                    return out.into();
                }
                Some(close) => {
                    out.push_str(&line[value_at.0..value_at.1]);
                    pos = self.skip_literal(line, value_at.1, &close, &mut out);
                    if !matches!(self.pending, Pending::Nothing) {
                        return out.into();
                    }
                }
            }
        }
        if !changed {
            return line.into();
        }
        out.push_str(&line[pos..]);
        out.into()
    }

    /// Writes the mask and the closing delimiter; returns where the line goes on. An
    /// unclosed literal masks the rest of the line and stays pending.
    fn skip_literal(&mut self, line: &str, from: usize, close: &Close, out: &mut String) -> usize {
        out.push_str(MASK);
        match find_close(line, from, close) {
            Some((end, close_len)) => {
                out.push_str(&line[end..end + close_len]);
                end + close_len
            }
            None => {
                if *close != Close::Bare {
                    self.pending = Pending::Inside(close.clone());
                }
                line.len()
            }
        }
    }
}

/// One found secret: `value_at` is (start of the opening delimiter, start of the
/// secret itself); `close` is `None` when the keyword ends the line.
struct Secret {
    value_at: (usize, usize),
    close: Option<Close>,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// The next password at or after `from`.
fn next_secret(lower: &str, line: &str, mut from: usize) -> Option<Secret> {
    let bytes = line.as_bytes();
    loop {
        let uri = lower[from..].find("://").map(|i| i + from);
        let kw = lower[from..].find("password").map(|i| i + from);
        match (uri, kw) {
            (Some(u), k) if k.is_none_or(|k| u < k) => {
                if let Some(s) = uri_secret(line, u + 3) {
                    return Some(s);
                }
                from = u + 3;
            }
            (_, Some(k)) => {
                let end = k + "password".len();
                let word_start = k == 0 || !is_word(bytes[k - 1]);
                let word_end = end >= bytes.len() || !is_word(bytes[end]);
                // Inside quotes, the word is text ('password' AS word), not a keyword.
                let quoted = k > 0 && matches!(bytes[k - 1], b'\'' | b'"');
                from = end;
                if !(word_start && word_end) || quoted {
                    continue;
                }
                let rest = &line[end..];
                let after_ws = end + (rest.len() - rest.trim_start().len());
                if after_ws == line.len() {
                    return Some(Secret {
                        value_at: (after_ws, after_ws),
                        close: None,
                    });
                }
                let (mut at, mut conninfo) = (after_ws, false);
                if bytes[at] == b'=' {
                    conninfo = true;
                    let r = &line[at + 1..];
                    at = at + 1 + (r.len() - r.trim_start().len());
                }
                // A conninfo inside a quoted setting doubles its own quotes.
                if conninfo && line[at..].starts_with("''") {
                    return Some(Secret {
                        value_at: (at, at + 2),
                        close: Some(Close::Dollar("''".to_owned())),
                    });
                }
                if let Some((open_len, close)) = opening(&line[at..]) {
                    return Some(Secret {
                        value_at: (at, at + open_len),
                        close: Some(close),
                    });
                }
                if conninfo && at < line.len() && !bytes[at].is_ascii_whitespace() {
                    return Some(Secret {
                        value_at: (at, at),
                        close: Some(Close::Bare),
                    });
                }
            }
            _ => return None,
        }
    }
}

/// `user:secret@` right after `://`.
fn uri_secret(line: &str, from: usize) -> Option<Secret> {
    let rest = &line[from..];
    let end = rest
        .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '"' || c == '\'')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some(Secret {
        value_at: (from + colon + 1, from + colon + 1),
        // A password in a URI has its `@` percent-encoded, so the first one ends it.
        close: Some(Close::Dollar("@".to_owned())),
    })
}

/// The opening delimiter of a literal at the start of `s`: its length and how it ends.
fn opening(s: &str) -> Option<(usize, Close)> {
    let b = s.as_bytes();
    match b.first()? {
        b'\'' => Some((1, Close::Quote { escapes: false })),
        b'E' | b'e' if b.get(1) == Some(&b'\'') => Some((2, Close::Quote { escapes: true })),
        b'U' | b'u' if s.get(1..3) == Some("&'") => Some((3, Close::Quote { escapes: false })),
        b'$' => {
            let tag_end = s[1..].find('$')? + 1;
            let tag = &s[1..tag_end];
            if tag.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                && !tag.starts_with(|c: char| c.is_ascii_digit())
            {
                Some((tag_end + 1, Close::Dollar(s[..=tag_end].to_owned())))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Where the literal that started before `from` closes: (start of the closing
/// delimiter, its length).
fn find_close(line: &str, from: usize, close: &Close) -> Option<(usize, usize)> {
    let b = line.as_bytes();
    match close {
        Close::Quote { escapes } => {
            let mut i = from;
            while i < b.len() {
                match b[i] {
                    b'\\' if *escapes => i += 2,
                    b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                    b'\'' => return Some((i, 1)),
                    _ => i += 1,
                }
            }
            None
        }
        Close::Dollar(tag) => line[from..]
            .find(tag.as_str())
            .map(|i| (from + i, tag.len())),
        Close::Bare => {
            let end = line[from..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .map(|i| from + i)
                .unwrap_or(line.len());
            Some((end, 0))
        }
    }
}

/// Redacts one line on its own (no state across lines).
pub fn redact(line: &str) -> Cow<'_, str> {
    Redactor::new().line(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_every_form_of_a_password_literal() {
        let cases = [
            (
                "ALTER ROLE a PASSWORD 'se''cret' VALID UNTIL 'x'",
                "ALTER ROLE a PASSWORD '***' VALID UNTIL 'x'",
            ),
            (
                "create user b with password 'p1'; create user c password 'p2'",
                "create user b with password '***'; create user c password '***'",
            ),
            (
                "CREATE ROLE password_admin PASSWORD 'x'",
                "CREATE ROLE password_admin PASSWORD '***'",
            ),
            (
                "CREATE ROLE a PASSWORD $$x'y$$ LOGIN",
                "CREATE ROLE a PASSWORD $$***$$ LOGIN",
            ),
            (
                "CREATE ROLE a PASSWORD $pw$x$$y$pw$ LOGIN",
                "CREATE ROLE a PASSWORD $pw$***$pw$ LOGIN",
            ),
            (
                "CREATE ROLE a PASSWORD E'x\\'y' LOGIN",
                "CREATE ROLE a PASSWORD E'***' LOGIN",
            ),
            (
                "CREATE ROLE a PASSWORD e'x' LOGIN",
                "CREATE ROLE a PASSWORD e'***' LOGIN",
            ),
            (
                "CREATE ROLE a PASSWORD U&'d\\0061t' LOGIN",
                "CREATE ROLE a PASSWORD U&'***' LOGIN",
            ),
            (
                "ALTER USER a WITH ENCRYPTED PaSsWoRd   'x'",
                "ALTER USER a WITH ENCRYPTED PaSsWoRd   '***'",
            ),
            (
                "parameter \"primary_conninfo\" changed to \"host=h password=hunter2 user=r\"",
                "parameter \"primary_conninfo\" changed to \"host=h password=*** user=r\"",
            ),
            (
                "primary_conninfo = 'host=h password = ''a b'' port=5'",
                "primary_conninfo = 'host=h password = ''***'' port=5'",
            ),
            (
                "changed to \"postgresql://rep:hunter2@h:5432/db\"",
                "changed to \"postgresql://rep:***@h:5432/db\"",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(redact(line), want, "{line}");
        }
    }

    #[test]
    fn leaves_other_lines_alone() {
        for line in [
            "password authentication failed for user \"x\"",
            "CREATE ROLE password_admin LOGIN",
            "ALTER ROLE a PASSWORD NULL",
            "connection to postgresql://host:5432/db",
            "SELECT 'password' AS word",
            "",
        ] {
            assert!(matches!(redact(line), Cow::Borrowed(_)), "{line}");
            assert_eq!(redact(line), line);
        }
    }

    #[test]
    fn follows_a_statement_across_lines() {
        let mut r = Redactor::new();
        let lines = [
            "2026-11-24 UTC|1|00000|u|d|LOG:  statement: CREATE ROLE a LOGIN PASSWORD",
            "\t'secret' VALID UNTIL 'infinity';",
            "LOG:  statement: ALTER ROLE b PASSWORD $$first",
            "second line$$ LOGIN",
            "LOG:  statement: ALTER ROLE c PASSWORD 'no",
            "newline' LOGIN",
        ];
        let got: Vec<String> = lines.iter().map(|l| r.line(l).into_owned()).collect();
        assert_eq!(
            got,
            [
                "2026-11-24 UTC|1|00000|u|d|LOG:  statement: CREATE ROLE a LOGIN PASSWORD",
                "\t'***' VALID UNTIL 'infinity';",
                "LOG:  statement: ALTER ROLE b PASSWORD $$***",
                "***$$ LOGIN",
                "LOG:  statement: ALTER ROLE c PASSWORD '***",
                "***' LOGIN",
            ]
        );
    }
}
