//! Logging: JSON lines on stdout when it is not a terminal, human text otherwise.
//!
//! Every line carries a `logger` field, `pgwarden` or `postgres`, so that postgres's own
//! messages (forwarded from its stderr with target `postgres`) can be told apart.

use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The target postgres's forwarded log lines are emitted with.
pub const POSTGRES_TARGET: &str = "postgres";

/// Whether the installed subscriber writes JSON (set once by [`init`]).
static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Installs the global subscriber, writing to stdout. `PGWARDEN_LOG` (or `RUST_LOG`)
/// sets the filter; `PGWARDEN_LOG_FORMAT=json|text` overrides the terminal detection.
pub fn init() {
    init_to(false);
}

/// [`init`], writing to stderr: for a command whose stdout is its result (`pgwarden
/// restore-drill --json`), which the log must not mix into.
pub fn init_stderr() {
    init_to(true);
}

fn init_to(stderr: bool) {
    let out = move || -> Box<dyn std::io::Write> {
        if stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        }
    };
    let terminal = if stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let filter = std::env::var("PGWARDEN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let json = match std::env::var("PGWARDEN_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !terminal,
    };
    // Colour only for a person at a terminal: escape codes in a file or a log
    // collector are noise, and NO_COLOR (no-color.org) turns them off anywhere.
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(ansi)
        .with_writer(out);
    let _ = JSON.set(json);
    let result = if json {
        builder.event_format(JsonLines).try_init()
    } else {
        builder.with_target(true).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// One JSON object per event: `ts`, `level`, `logger`, `msg`, then the event's fields.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldMap(Map::new());
        event.record(&mut fields);
        if let Some(Value::String(record)) = fields.0.get(CHILD_RECORD) {
            // Already a complete pgwarden record (redacted when it was read).
            return writeln!(writer, "{record}");
        }
        let mut obj = Map::new();
        obj.insert("ts".into(), Value::String(timestamp()));
        obj.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        let logger = if meta.target() == POSTGRES_TARGET {
            "postgres"
        } else {
            "pgwarden"
        };
        obj.insert("logger".into(), Value::String(logger.into()));
        if let Some(msg) = fields.0.remove("message") {
            obj.insert("msg".into(), msg);
        }
        if logger == "pgwarden" {
            obj.insert("target".into(), Value::String(meta.target().into()));
        }
        for (k, v) in fields.0 {
            obj.entry(k).or_insert(v);
        }
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

fn timestamp() -> String {
    let mut s = String::new();
    let mut w = Writer::new(&mut s);
    let _ = tracing_subscriber::fmt::time::FormatTime::format_time(
        &tracing_subscriber::fmt::time::SystemTime,
        &mut w,
    );
    s
}

struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The `log_line_prefix` pgwarden sets, so that every line postgres writes can be
/// split into fields: timestamp, pid, SQLSTATE, user, database.
pub const POSTGRES_LOG_PREFIX: &str = "%m|%p|%e|%u|%d|";

/// One postgres log line, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLine<'a> {
    /// postgres's own timestamp.
    pub time: &'a str,
    /// Backend pid.
    pub pid: &'a str,
    /// SQLSTATE (`00000` for plain messages).
    pub sqlstate: &'a str,
    /// Role, empty for background processes.
    pub user: &'a str,
    /// Database, empty for background processes.
    pub database: &'a str,
    /// `LOG`, `ERROR`, `DETAIL`, `STATEMENT`, ...
    pub severity: &'a str,
    /// The message.
    pub message: &'a str,
}

/// Splits a line written with [`POSTGRES_LOG_PREFIX`]; `None` for anything else (a
/// continuation line, or output before the configuration was read).
pub fn parse_postgres_line(line: &str) -> Option<PgLine<'_>> {
    let mut parts = line.splitn(6, '|');
    let (time, pid, sqlstate, user, database, rest) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if !pid.bytes().all(|b| b.is_ascii_digit()) || pid.is_empty() || sqlstate.len() != 5 {
        return None;
    }
    let (severity, message) = rest.split_once(':')?;
    if !severity
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return None;
    }
    Some(PgLine {
        time,
        pid,
        sqlstate,
        user,
        database,
        severity,
        message: message.trim_start(),
    })
}

/// The field that carries a record of a pgwarden child (`wal-archive`, `wal-restore`,
/// run by postgres as `archive_command` and `restore_command`), as the JSON line the
/// child wrote. The JSON formatter writes that record as is; see [`postgres_line`].
pub const CHILD_RECORD: &str = "child_record";

/// A pgwarden record written by a child of postgres: a JSON object whose `logger` is
/// `pgwarden`, and its level.
pub fn child_record(line: &str) -> Option<(Map<String, Value>, tracing::Level)> {
    if !line.starts_with('{') {
        return None;
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    if obj.get("logger").and_then(Value::as_str) != Some("pgwarden") {
        return None;
    }
    let level = match obj.get("level").and_then(Value::as_str)? {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => return None,
    };
    Some((obj, level))
}

/// A child record's own fields as ` key=value` pairs, for text logs.
fn text_fields(obj: &Map<String, Value>) -> String {
    obj.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ts" | "level" | "logger" | "msg"))
        .map(|(k, v)| match v {
            Value::String(s) => format!(" {k}={s}"),
            other => format!(" {k}={other}"),
        })
        .collect()
}

/// Forwards one line of postgres's output as a structured event. `redactor` belongs to
/// the stream the line came from, so that a statement spread over lines is followed.
///
/// A record of a pgwarden child comes out as the pgwarden record it is, at its own
/// level and with its own fields, not as an info line of postgres with the child's
/// JSON inside `msg`: an archive that fails must be able to page someone.
pub fn postgres_line(redactor: &mut crate::redact::Redactor, line: &str) {
    let line = redactor.line(line);
    if let Some((obj, level)) = child_record(&line) {
        let msg = obj.get("msg").and_then(Value::as_str).unwrap_or("");
        // JSON: the child's record as it is. Text: its message and fields, as a
        // pgwarden text line would show them.
        let json = JSON.get().copied().unwrap_or(true);
        let record = Value::Object(obj.clone()).to_string();
        let fields = text_fields(&obj);
        macro_rules! emit {
            ($mac:ident) => {
                if json {
                    tracing::$mac!(target: "pgwarden::child", child_record = %record, "{msg}")
                } else {
                    tracing::$mac!(target: "pgwarden::child", "{msg}{fields}")
                }
            };
        }
        match level {
            tracing::Level::ERROR => emit!(error),
            tracing::Level::WARN => emit!(warn),
            tracing::Level::INFO => emit!(info),
            tracing::Level::DEBUG => emit!(debug),
            tracing::Level::TRACE => emit!(trace),
        }
        return;
    }
    match parse_postgres_line(&line) {
        Some(p) => {
            let (user, database) = (p.user, p.database);
            match p.severity {
                "PANIC" | "FATAL" | "ERROR" => {
                    tracing::error!(target: "postgres", pid = p.pid, sqlstate = p.sqlstate, user, database, severity = p.severity, pg_time = p.time, "{}", p.message)
                }
                "WARNING" => {
                    tracing::warn!(target: "postgres", pid = p.pid, sqlstate = p.sqlstate, user, database, severity = p.severity, pg_time = p.time, "{}", p.message)
                }
                s if s.starts_with("DEBUG") => {
                    tracing::debug!(target: "postgres", pid = p.pid, user, database, severity = p.severity, pg_time = p.time, "{}", p.message)
                }
                _ => {
                    tracing::info!(target: "postgres", pid = p.pid, sqlstate = p.sqlstate, user, database, severity = p.severity, pg_time = p.time, "{}", p.message)
                }
            }
        }
        None => tracing::info!(target: "postgres", "{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixed_lines() {
        let p = parse_postgres_line(
            "2026-11-22 01:00:48.893 UTC|19738|42703|app|shop|ERROR:  column \"x\" does not exist",
        )
        .unwrap();
        assert_eq!(
            (p.pid, p.sqlstate, p.user, p.database, p.severity),
            ("19738", "42703", "app", "shop", "ERROR")
        );
        assert_eq!(p.message, "column \"x\" does not exist");
        let bg = parse_postgres_line(
            "2026-11-22 01:00:48.893 UTC|7|00000|||LOG:  checkpoint starting: time",
        )
        .unwrap();
        assert_eq!((bg.user, bg.severity), ("", "LOG"));
        assert!(parse_postgres_line("plain text from a child").is_none());
    }

    #[test]
    fn recognises_child_records() {
        let (obj, level) = child_record(
            r#"{"ts":"t","level":"error","logger":"pgwarden","msg":"archive failed","target":"pgwarden::wal_cli","segment":"000000010000000000000003"}"#,
        )
        .unwrap();
        assert_eq!(level, tracing::Level::ERROR);
        assert_eq!(obj["segment"], "000000010000000000000003");
        let (_, level) =
            child_record(r#"{"level":"warn","logger":"pgwarden","msg":"retrying"}"#).unwrap();
        assert_eq!(level, tracing::Level::WARN);
        let (obj, _) = child_record(
            r#"{"ts":"t","level":"error","logger":"pgwarden","msg":"m","file":"f","exit_code":1}"#,
        )
        .unwrap();
        assert_eq!(text_fields(&obj), " exit_code=1 file=f");
        for line in [
            r#"{"level":"error","logger":"postgres","msg":"x"}"#,
            r#"{"level":"loud","logger":"pgwarden","msg":"x"}"#,
            r#"{"not":"a record"}"#,
            "{broken",
            "plain text",
        ] {
            assert!(child_record(line).is_none(), "{line}");
        }
    }
}
