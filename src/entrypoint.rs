//! The official `postgres` image's command line, so that a Compose `command:` or a
//! Kubernetes `args:` written for that image works unchanged.
//!
//! The official `docker-entrypoint.sh` does three things with its arguments, and so does
//! pgwarden:
//! - a first argument starting with `-` means `postgres <those arguments>`;
//! - `postgres [-c name=value | --name=value ...]` sets up PGDATA and runs the server
//!   with those settings (here: `pgwarden run` with them in the user layer);
//! - `postgres --help`, `--version`, `--describe-config` or `-C name` only ask postgres
//!   something, and anything else (`psql`, `bash`, `sh -c ...`) is executed as is.

use std::ffi::OsString;

/// Flags pgwarden itself answers at the top level; any other leading `-` is postgres's.
const OWN_FLAGS: &[&str] = &["-h", "--help", "-V", "--version"];

/// Rewrites `pgwarden -c x=y ...` into `pgwarden postgres -c x=y ...`, as the official
/// entrypoint does with `set -- postgres "$@"`.
pub fn normalize(mut argv: Vec<OsString>) -> Vec<OsString> {
    let leading_dash = argv
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| a.starts_with('-') && !OWN_FLAGS.contains(&a));
    if leading_dash {
        argv.insert(1, OsString::from("postgres"));
    }
    argv
}

/// What `pgwarden postgres <args>` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresCall {
    /// Run the server with these `(name, value)` settings, in order (a later one wins).
    Serve(Vec<(String, String)>),
    /// Only a question to postgres (`--help`, `--version`, `-C name`, ...): run the
    /// postgres binary with the arguments as given, touching nothing.
    Ask,
}

/// A postgres option pgwarden cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("postgres {arg}: {message}")]
pub struct ArgError {
    /// The argument as given.
    pub arg: String,
    /// What is wrong and what to do instead.
    pub message: String,
}

/// Short options of postgres that are a parameter in disguise (see `postgres --help`).
/// The owned ones (`-p`, `-k`, `-h`, `-D`) are mapped too, so that the fragment's check
/// refuses them with the setting to use instead.
const SHORT_WITH_VALUE: &[(char, &str)] = &[
    ('B', "shared_buffers"),
    ('N', "max_connections"),
    ('S', "work_mem"),
    ('p', "port"),
    ('k', "unix_socket_directories"),
    ('h', "listen_addresses"),
    ('D', "data_directory"),
];

/// Arguments that only ask postgres something, as in the official `_pg_want_help`.
const QUESTIONS: &[&str] = &["-?", "--help", "--describe-config", "-V", "--version"];

/// Parses the arguments after `postgres`, as postgres itself would read them.
pub fn parse_postgres_args(args: &[String]) -> Result<PostgresCall, ArgError> {
    if args
        .iter()
        .any(|a| QUESTIONS.contains(&a.as_str()) || a == "-C" || a.starts_with("-C"))
    {
        return Ok(PostgresCall::Ask);
    }
    let err = |arg: &str, message: &str| ArgError {
        arg: arg.to_owned(),
        message: message.to_owned(),
    };
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(long) = arg.strip_prefix("--") {
            // postgres accepts `--name=value` only, and `-` for `_` in the name.
            let Some((name, value)) = long.split_once('=') else {
                return Err(err(arg, "expected --name=value"));
            };
            out.push((name.replace('-', "_"), value.to_owned()));
        } else if let Some(rest) = arg.strip_prefix("-c") {
            let setting = if rest.is_empty() {
                it.next()
                    .ok_or_else(|| err(arg, "-c needs name=value"))?
                    .clone()
            } else {
                rest.to_owned()
            };
            let Some((name, value)) = setting.split_once('=') else {
                return Err(err(&setting, "expected -c name=value"));
            };
            out.push((name.replace('-', "_"), value.to_owned()));
        } else if arg == "-F" {
            out.push(("fsync".to_owned(), "off".to_owned()));
        } else if let Some(&(_, name)) = SHORT_WITH_VALUE
            .iter()
            .find(|(c, _)| arg.len() >= 2 && arg.starts_with('-') && arg[1..].starts_with(*c))
        {
            let value = if arg.len() > 2 {
                arg[2..].to_owned()
            } else {
                it.next().ok_or_else(|| err(arg, "needs a value"))?.clone()
            };
            out.push((name.to_owned(), value));
        } else {
            return Err(err(
                arg,
                "is not an option pgwarden passes on; give settings as -c name=value",
            ));
        }
    }
    Ok(PostgresCall::Serve(out))
}

/// Replaces pgwarden with `argv`, looked up on PATH as a shell would; returns only
/// when that fails, with the shell's exit code (127 not found, 126 not executable).
pub fn exec(argv: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = argv.split_first() else {
        return 0;
    };
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!(
        "pgwarden: cannot execute {}: {err}",
        program.to_string_lossy()
    );
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_leading_option_means_postgres() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["pgwarden", "-c", "a=b"],
                &["pgwarden", "postgres", "-c", "a=b"],
            ),
            (
                &["pgwarden", "--fsync=off"],
                &["pgwarden", "postgres", "--fsync=off"],
            ),
            (&["pgwarden", "run"], &["pgwarden", "run"]),
            (&["pgwarden", "--help"], &["pgwarden", "--help"]),
            (&["pgwarden", "-V"], &["pgwarden", "-V"]),
            (&["pgwarden"], &["pgwarden"]),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(os(input)), os(want), "{input:?}");
        }
    }

    #[test]
    fn parses_settings_as_postgres_does() {
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        type Case<'a> = (&'a [&'a str], Vec<(String, String)>);
        let cases: &[Case] = &[
            (&[], vec![]),
            (
                &["-c", "max_connections=200", "-cshared_buffers=1GB"],
                vec![
                    pair("max_connections", "200"),
                    pair("shared_buffers", "1GB"),
                ],
            ),
            (
                &["--log-min-duration-statement=250", "--work_mem=8MB"],
                vec![
                    pair("log_min_duration_statement", "250"),
                    pair("work_mem", "8MB"),
                ],
            ),
            (
                &["-c", "search_path=a, b=c"],
                vec![pair("search_path", "a, b=c")],
            ),
            (
                &["-B", "256MB", "-N200", "-F", "-p", "6000"],
                vec![
                    pair("shared_buffers", "256MB"),
                    pair("max_connections", "200"),
                    pair("fsync", "off"),
                    pair("port", "6000"),
                ],
            ),
        ];
        for (args, want) in cases {
            assert_eq!(
                parse_postgres_args(&strings(args)),
                Ok(PostgresCall::Serve(want.clone())),
                "{args:?}"
            );
        }
    }

    #[test]
    fn questions_touch_nothing() {
        for args in [
            &["--version"][..],
            &["-V"],
            &["--help"],
            &["-C", "max_connections"],
            &["-c", "a=b", "--describe-config"],
        ] {
            assert_eq!(
                parse_postgres_args(&strings(args)),
                Ok(PostgresCall::Ask),
                "{args:?}"
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for (args, needle) in [
            (&["-c"][..], "-c needs name=value"),
            (&["-c", "max_connections"], "expected -c name=value"),
            (&["--fsync"], "expected --name=value"),
            (&["-i"], "-c name=value"),
            (&["extra"], "-c name=value"),
            (&["-B"], "needs a value"),
        ] {
            let e = parse_postgres_args(&strings(args)).unwrap_err();
            assert!(e.to_string().contains(needle), "{args:?}: {e}");
        }
    }
}
