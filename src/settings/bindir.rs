//! Finding the PostgreSQL binaries and their major version.

use super::{invalid, SettingsError};
use std::path::{Path, PathBuf};

/// Where Debian and the official image install each major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Picks the bindir: the explicit setting, else the Debian layout (the version of an
/// existing PGDATA first, then the newest), else the directory of `postgres` on PATH.
pub fn resolve_bindir(
    explicit: Option<&Path>,
    data_version: Option<u32>,
) -> Result<PathBuf, SettingsError> {
    if let Some(dir) = explicit {
        check_bindir(dir).map_err(|m| invalid("PGWARDEN_PG_BINDIR", m))?;
        return Ok(dir.to_path_buf());
    }
    let mut versions: Vec<u32> = std::fs::read_dir(DEBIAN_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    if let Some(v) = data_version {
        if let Some(pos) = versions.iter().position(|x| *x == v) {
            let chosen = versions.remove(pos);
            versions.push(chosen);
        }
    }
    for v in versions.iter().rev() {
        let dir = Path::new(DEBIAN_ROOT).join(v.to_string()).join("bin");
        if check_bindir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("postgres");
            if candidate.is_file() {
                let real = candidate.canonicalize().unwrap_or(candidate);
                if let Some(parent) = real.parent() {
                    if check_bindir(parent).is_ok() {
                        return Ok(parent.to_path_buf());
                    }
                }
            }
        }
    }
    Err(invalid(
        "PGWARDEN_PG_BINDIR",
        "no PostgreSQL binaries found (looked in /usr/lib/postgresql/*/bin and on PATH); \
         install postgresql or set PGWARDEN_PG_BINDIR",
    ))
}

fn check_bindir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    for exe in ["postgres", "initdb"] {
        if !dir.join(exe).is_file() {
            return Err(format!("{} has no {exe} executable", dir.display()));
        }
    }
    Ok(())
}

/// Runs `postgres --version` and returns the major version (15 for "15.4").
pub fn binaries_major(bindir: &Path) -> Result<u32, SettingsError> {
    let exe = bindir.join("postgres");
    let out = std::process::Command::new(&exe)
        .arg("--version")
        .output()
        .map_err(|e| {
            invalid(
                "PGWARDEN_PG_BINDIR",
                format!("cannot run {}: {e}", exe.display()),
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_major(&text).ok_or_else(|| {
        invalid(
            "PGWARDEN_PG_BINDIR",
            format!(
                "{} --version printed {:?}, which names no version",
                exe.display(),
                text.trim()
            ),
        )
    })
}

/// Parses the output of `postgres --version`, for example
/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
pub(crate) fn parse_major(text: &str) -> Option<u32> {
    let rest = text.split(')').nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("garbage"), None);
    }
}
