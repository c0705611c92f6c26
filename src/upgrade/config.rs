//! Major-upgrade settings (`PGWARDEN_UPGRADE` and its companions), validated before
//! anything is touched. With `PGWARDEN_UPGRADE` unset or `off` an older PGDATA is
//! refused, as it always was.

use clap::Args;
use std::path::{Path, PathBuf};

/// The upgrade settings as flags and environment variables.
#[derive(Args, Debug, Clone)]
pub struct UpgradeArgs {
    /// `on`: a PGDATA of an older major than the binaries is upgraded at start with
    /// pg_upgrade; `off` (default) refuses it.
    #[arg(long, env = "PGWARDEN_UPGRADE", default_value = "off")]
    pub upgrade: String,
    /// `auto` (default: `link` when the staging directory is on PGDATA's file system,
    /// else `copy`), `link`, `clone` or `copy`: pg_upgrade's transfer mode.
    #[arg(long, env = "PGWARDEN_UPGRADE_MODE", default_value = "auto")]
    pub upgrade_mode: String,
    /// The old major's binaries (default: /usr/lib/postgresql/<old major>/bin).
    #[arg(long, env = "PGWARDEN_OLD_BINDIR")]
    pub old_bindir: Option<PathBuf>,
    /// Test only: stop at this point of an upgrade and wait to be killed
    /// (`upgraded`, `swap-in`, `started`). Never set it in production.
    #[arg(long, env = "PGWARDEN_TEST_PAUSE_UPGRADE_AT", hide = true)]
    pub test_pause_at: Option<String>,
}

impl Default for UpgradeArgs {
    /// The documented defaults, as clap would fill them in.
    fn default() -> Self {
        UpgradeArgs {
            upgrade: "off".into(),
            upgrade_mode: "auto".into(),
            old_bindir: None,
            test_pause_at: None,
        }
    }
}

/// pg_upgrade's transfer mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `link` when the new cluster is on the old one's file system, else `copy`.
    Auto,
    /// Hard links: fast and no extra space, but the old cluster cannot be started once
    /// the new one has.
    Link,
    /// Reflinks (copy-on-write file systems such as XFS or Btrfs): fast, and the old
    /// cluster stays usable.
    Clone,
    /// A full copy: slow and twice the space, and the old cluster stays usable.
    Copy,
}

impl Mode {
    /// The mode as pg_upgrade's option names it (`auto` has none).
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Link => "link",
            Mode::Clone => "clone",
            Mode::Copy => "copy",
        }
    }

    /// Parses the name [`Mode::as_str`] gives.
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "auto" | "" => Some(Mode::Auto),
            "link" => Some(Mode::Link),
            "clone" => Some(Mode::Clone),
            "copy" => Some(Mode::Copy),
            _ => None,
        }
    }
}

/// Where a test asked the upgrade to stop and wait to be killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PausePoint {
    /// pg_upgrade has finished (in link mode the old pg_control is renamed), nothing
    /// has been moved yet.
    Upgraded,
    /// Half-way through moving the new cluster's entries into PGDATA.
    SwapIn,
    /// The new cluster has started; its statistics, extensions and first backup are
    /// still to do.
    Started,
}

/// Validated upgrade settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeConfig {
    /// `PGWARDEN_UPGRADE=on`.
    pub on: bool,
    /// `PGWARDEN_UPGRADE_MODE`.
    pub mode: Mode,
    /// `PGWARDEN_OLD_BINDIR`, as given.
    pub old_bindir: Option<PathBuf>,
    /// `PGWARDEN_TEST_PAUSE_UPGRADE_AT` (tests only).
    pub pause_at: Option<PausePoint>,
    /// The old major's bindir, found and checked when PGDATA is to be upgraded.
    pub resolved_old_bindir: Option<PathBuf>,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            on: false,
            mode: Mode::Auto,
            old_bindir: None,
            pause_at: None,
            resolved_old_bindir: None,
        }
    }
}

/// Where Debian and the official image install each major.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

impl UpgradeConfig {
    /// Validates the arguments. Errors name the setting.
    pub fn from_args(a: &UpgradeArgs) -> Result<UpgradeConfig, (&'static str, String)> {
        let on = match a.upgrade.as_str() {
            "on" | "true" => true,
            "off" | "false" | "" => false,
            other => return Err(("PGWARDEN_UPGRADE", format!("{other:?} is not on or off"))),
        };
        let mode = Mode::parse(&a.upgrade_mode).ok_or((
            "PGWARDEN_UPGRADE_MODE",
            format!("{:?} is not auto, link, clone or copy", a.upgrade_mode),
        ))?;
        if let Some(dir) = &a.old_bindir {
            let text = dir.to_string_lossy();
            if text.contains(['\n', '\r', '\0']) {
                return Err((
                    "PGWARDEN_OLD_BINDIR",
                    "the value contains a newline or NUL character".into(),
                ));
            }
            if !dir.is_absolute() {
                return Err((
                    "PGWARDEN_OLD_BINDIR",
                    format!("{} is not an absolute path", dir.display()),
                ));
            }
        }
        let pause_at = match a.test_pause_at.as_deref() {
            None | Some("") => None,
            Some("upgraded") => Some(PausePoint::Upgraded),
            Some("swap-in") => Some(PausePoint::SwapIn),
            Some("started") => Some(PausePoint::Started),
            Some(other) => {
                return Err((
                    "PGWARDEN_TEST_PAUSE_UPGRADE_AT",
                    format!("{other:?} is not upgraded, swap-in or started"),
                ))
            }
        };
        Ok(UpgradeConfig {
            on,
            mode,
            old_bindir: a.old_bindir.clone(),
            pause_at,
            resolved_old_bindir: None,
        })
    }

    /// The old major's bindir: `PGWARDEN_OLD_BINDIR`, else Debian's place for `major`.
    /// Checked: it holds the programs pg_upgrade runs from it, and they are `major`.
    pub fn resolve_old_bindir(&self, major: u32) -> Result<PathBuf, (&'static str, String)> {
        let dir = self
            .old_bindir
            .clone()
            .unwrap_or_else(|| Path::new(DEBIAN_ROOT).join(major.to_string()).join("bin"));
        let how = match self.old_bindir {
            Some(_) => String::new(),
            None => format!(
                " (PGWARDEN_OLD_BINDIR is not set, so {DEBIAN_ROOT}/{major}/bin was tried); \
                 install PostgreSQL {major} beside the new binaries (docs/upgrades.md) or set PGWARDEN_OLD_BINDIR"
            ),
        };
        for exe in ["postgres", "pg_ctl", "pg_controldata"] {
            if !dir.join(exe).is_file() {
                return Err((
                    "PGWARDEN_OLD_BINDIR",
                    format!(
                        "the PostgreSQL {major} binaries are needed to upgrade PGDATA, and {} has no {exe}{how}",
                        dir.display()
                    ),
                ));
            }
        }
        let found = crate::settings::binaries_major(&dir)
            .map_err(|e| ("PGWARDEN_OLD_BINDIR", format!("{}: {e}", dir.display())))?;
        if found != major {
            return Err((
                "PGWARDEN_OLD_BINDIR",
                format!(
                    "{} holds PostgreSQL {found}, but PGDATA is PostgreSQL {major}",
                    dir.display()
                ),
            ));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(upgrade: &str, mode: &str) -> UpgradeArgs {
        UpgradeArgs {
            upgrade: upgrade.into(),
            upgrade_mode: mode.into(),
            ..Default::default()
        }
    }

    #[test]
    fn validates_and_names_the_setting() {
        let c = UpgradeConfig::from_args(&UpgradeArgs::default()).unwrap();
        assert_eq!(c, UpgradeConfig::default());
        let c = UpgradeConfig::from_args(&args("on", "copy")).unwrap();
        assert!(c.on);
        assert_eq!(c.mode, Mode::Copy);
        assert_eq!(
            UpgradeConfig::from_args(&args("yes", "auto"))
                .unwrap_err()
                .0,
            "PGWARDEN_UPGRADE"
        );
        assert_eq!(
            UpgradeConfig::from_args(&args("on", "swap")).unwrap_err().0,
            "PGWARDEN_UPGRADE_MODE"
        );
        let relative = UpgradeArgs {
            old_bindir: Some("usr/lib/postgresql/15/bin".into()),
            ..args("on", "auto")
        };
        assert_eq!(
            UpgradeConfig::from_args(&relative).unwrap_err().0,
            "PGWARDEN_OLD_BINDIR"
        );
        let pause = UpgradeArgs {
            test_pause_at: Some("later".into()),
            ..args("on", "auto")
        };
        assert_eq!(
            UpgradeConfig::from_args(&pause).unwrap_err().0,
            "PGWARDEN_TEST_PAUSE_UPGRADE_AT"
        );
    }

    #[test]
    fn a_missing_old_bindir_is_named() {
        let c = UpgradeConfig {
            old_bindir: Some("/nonexistent/15/bin".into()),
            ..UpgradeConfig::default()
        };
        let (setting, msg) = c.resolve_old_bindir(15).unwrap_err();
        assert_eq!(setting, "PGWARDEN_OLD_BINDIR");
        assert!(msg.contains("/nonexistent/15/bin has no postgres"), "{msg}");
        let c = UpgradeConfig::default();
        let (_, msg) = c.resolve_old_bindir(9).unwrap_err();
        assert!(msg.contains("/usr/lib/postgresql/9/bin"), "{msg}");
    }
}
