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

/// Installs the global subscriber. `PGWARDEN_LOG` (or `RUST_LOG`) sets the filter;
/// `PGWARDEN_LOG_FORMAT=json|text` overrides the terminal detection.
pub fn init() {
    let filter = std::env::var("PGWARDEN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let json = match std::env::var("PGWARDEN_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stdout);
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

/// Forwards one line of postgres's stderr, at a level read from its severity word.
pub fn postgres_line(line: &str) {
    let severity = ["PANIC:", "FATAL:", "ERROR:", "WARNING:"]
        .iter()
        .find(|w| line.contains(*w))
        .copied();
    match severity {
        Some("PANIC:") | Some("FATAL:") | Some("ERROR:") => {
            tracing::error!(target: "postgres", "{line}")
        }
        Some("WARNING:") => tracing::warn!(target: "postgres", "{line}"),
        _ => tracing::info!(target: "postgres", "{line}"),
    }
}
