//! The restore settings: where to bootstrap from, which backup, and how far to recover.
//!
//! All of it is checked before anything is touched: two targets, a target without a
//! source, a target that does not parse, or archiving back into the very archive and
//! server the cluster is restored from are refused with the setting named.

use crate::civil::{format_utc, parse_timestamp, Stamp};
use crate::wal::Lsn;
use crate::wal::{ArchiveArgs, ArchiveConfig};
use clap::Args;
use std::path::PathBuf;

/// The signal file recovery from a backup starts with.
pub const RECOVERY_SIGNAL: &str = "recovery.signal";

/// How the restored instance runs once the backup is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Recover to the target, promote, and run as a primary.
    Promote,
    /// Stay a standby that replays the archive as it grows.
    FollowArchive,
    /// A standby of the primary, seeded from the cluster's own archive
    /// (`PGWARDEN_CLONE_FROM=archive`): it replays the archived WAL, then streams.
    FollowPrimary,
}

/// Where a new or rebuilt replica gets its copy of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CloneFrom {
    /// pg_basebackup from the primary.
    #[default]
    Primary,
    /// The latest base backup in the cluster's own archive (PGWARDEN_ARCHIVE_URL) and
    /// its archived WAL; pg_basebackup when the archive has no usable backup.
    Archive,
}

/// `PGWARDEN_CLONE_FROM` as a flag and environment variable.
#[derive(Args, Debug, Clone, Default)]
pub struct CloneArgs {
    /// `primary` (pg_basebackup) or `archive` (the latest backup in PGWARDEN_ARCHIVE_URL
    /// and its archived WAL) for a new or rebuilt replica.
    #[arg(long, env = "PGWARDEN_CLONE_FROM", default_value = "primary")]
    pub clone_from: String,
}

impl CloneFrom {
    /// Validates `PGWARDEN_CLONE_FROM`; `archive` needs the cluster's own archive.
    pub fn from_args(a: &CloneArgs, has_archive: bool) -> Result<CloneFrom, SettingError> {
        match a.clone_from.trim() {
            "" | "primary" => Ok(CloneFrom::Primary),
            "archive" if has_archive => Ok(CloneFrom::Archive),
            "archive" => Err((
                "PGWARDEN_CLONE_FROM",
                "archive seeds replicas from the cluster's own archive, but PGWARDEN_ARCHIVE_URL is not set; \
                 set PGWARDEN_ARCHIVE_URL or PGWARDEN_CLONE_FROM=primary"
                    .to_owned(),
            )),
            other => Err((
                "PGWARDEN_CLONE_FROM",
                format!("{other:?} is not primary or archive"),
            )),
        }
    }
}

/// The restore settings as flags and environment variables.
#[derive(Args, Debug, Clone, Default)]
pub struct RestoreArgs {
    /// Archive to bootstrap an empty PGDATA from (read only): `s3://bucket/prefix` or
    /// `file:///path`.
    #[arg(long, env = "PGWARDEN_RESTORE_URL")]
    pub restore_url: Option<String>,
    /// Server name in that archive (default: PGWARDEN_ARCHIVE_NAME, then PGWARDEN_NAME).
    #[arg(long, env = "PGWARDEN_RESTORE_NAME")]
    pub restore_name: Option<String>,
    /// The backup to restore (default: the latest that ends before the target).
    #[arg(long, env = "PGWARDEN_RESTORE_BACKUP_ID")]
    pub restore_backup_id: Option<String>,
    /// Recover up to this time (with a time zone, as `2026-11-24 08:00:00+00`).
    #[arg(long, env = "PGWARDEN_RECOVERY_TARGET_TIME")]
    pub recovery_target_time: Option<String>,
    /// Recover up to this WAL position (`X/X`).
    #[arg(long, env = "PGWARDEN_RECOVERY_TARGET_LSN")]
    pub recovery_target_lsn: Option<String>,
    /// Recover up to this transaction id.
    #[arg(long, env = "PGWARDEN_RECOVERY_TARGET_XID")]
    pub recovery_target_xid: Option<String>,
    /// Recover up to this restore point (`pg_create_restore_point`).
    #[arg(long, env = "PGWARDEN_RECOVERY_TARGET_NAME")]
    pub recovery_target_name: Option<String>,
    /// Recover only until the backup is consistent (`true`).
    #[arg(long, env = "PGWARDEN_RECOVERY_TARGET_IMMEDIATE")]
    pub recovery_target_immediate: Option<String>,
    /// Where to restore tablespaces other than at their original locations:
    /// `name:/path[,name:/path]` (barman-cloud-restore's `--tablespace NAME:LOCATION`).
    #[arg(long, env = "PGWARDEN_RESTORE_TABLESPACES")]
    pub restore_tablespaces: Option<String>,
}

/// Where a restore puts the backup's tablespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tablespaces {
    /// Each at its original location, but those named here (tablespace name, absolute
    /// path): `PGWARDEN_RESTORE_TABLESPACES`.
    Mapped(Vec<(String, PathBuf)>),
    /// Each into `<dir>/<oid>`: a drill's scratch directory, never the live cluster's
    /// tablespaces.
    Under(PathBuf),
}

impl Default for Tablespaces {
    fn default() -> Self {
        Tablespaces::Mapped(Vec::new())
    }
}

/// Parses `PGWARDEN_RESTORE_TABLESPACES`: `name:/path[,name:/path]`. A name is what
/// `\db` shows (the text before the first `:`); a path is absolute, one line, and
/// holds no `..`; no name or path twice.
pub fn parse_tablespaces(value: &str) -> Result<Vec<(String, PathBuf)>, String> {
    if value.contains(['\n', '\r', '\0']) {
        return Err("must be one line".to_owned());
    }
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    if value.trim().is_empty() {
        return Ok(out);
    }
    for rule in value.split(',') {
        let rule = rule.trim();
        let Some((name, path)) = rule.split_once(':') else {
            return Err(format!(
                "{rule:?} is not NAME:LOCATION (as in fast:/mnt/ssd/fast; rules are separated by commas)"
            ));
        };
        if name.is_empty() {
            return Err(format!("{rule:?} names no tablespace before the ':'"));
        }
        let p = PathBuf::from(path);
        if !p.is_absolute() {
            return Err(format!(
                "{rule:?}: the location of tablespace {name:?} must be an absolute path"
            ));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("{rule:?}: the location must not contain '..'"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("tablespace {name:?} is mapped twice"));
        }
        if let Some((other, _)) = out.iter().find(|(_, q)| *q == p) {
            return Err(format!(
                "tablespaces {other:?} and {name:?} are both mapped to {path}"
            ));
        }
        out.push((name.to_owned(), p));
    }
    Ok(out)
}

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archive: every archived segment is replayed.
    End,
    /// A time, in microseconds since the epoch, UTC.
    Time(i64),
    /// A WAL position.
    Lsn(Lsn),
    /// A transaction id.
    Xid(u64),
    /// A restore point.
    Name(String),
    /// The moment the backup is consistent.
    Immediate,
}

impl RecoveryTarget {
    /// The setting that set it, for messages.
    pub fn setting(&self) -> &'static str {
        match self {
            RecoveryTarget::End => "PGWARDEN_RESTORE_URL",
            RecoveryTarget::Time(_) => "PGWARDEN_RECOVERY_TARGET_TIME",
            RecoveryTarget::Lsn(_) => "PGWARDEN_RECOVERY_TARGET_LSN",
            RecoveryTarget::Xid(_) => "PGWARDEN_RECOVERY_TARGET_XID",
            RecoveryTarget::Name(_) => "PGWARDEN_RECOVERY_TARGET_NAME",
            RecoveryTarget::Immediate => "PGWARDEN_RECOVERY_TARGET_IMMEDIATE",
        }
    }

    /// postgresql.conf lines for this target (none for the end of the archive).
    pub fn conf(&self) -> Vec<(&'static str, String)> {
        match self {
            RecoveryTarget::End => vec![],
            RecoveryTarget::Time(t) => vec![("recovery_target_time", format_utc(*t))],
            RecoveryTarget::Lsn(l) => vec![("recovery_target_lsn", l.to_string())],
            RecoveryTarget::Xid(x) => vec![("recovery_target_xid", x.to_string())],
            RecoveryTarget::Name(n) => vec![("recovery_target_name", n.clone())],
            RecoveryTarget::Immediate => vec![("recovery_target", "immediate".to_owned())],
        }
    }
}

/// What a restore's messages call its settings: the bootstrap's environment variables,
/// or `pgwarden restore-drill`'s flags and archive. A user reads the name of what to
/// change, not of a setting that does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingNames {
    /// The archive the backup is read from.
    pub source: &'static str,
    /// The server name in it.
    pub server: &'static str,
    /// The explicit backup id.
    pub backup_id: &'static str,
    /// The recovery target, when one name stands for every kind (the drill's
    /// `--target-time`); `None`: [`RecoveryTarget::setting`].
    pub target: Option<&'static str>,
    /// Where the tablespaces go.
    pub tablespaces: &'static str,
}

impl SettingNames {
    /// The restore bootstrap's (`PGWARDEN_RESTORE_*`).
    pub const BOOTSTRAP: SettingNames = SettingNames {
        source: "PGWARDEN_RESTORE_URL",
        server: "PGWARDEN_RESTORE_NAME",
        backup_id: "PGWARDEN_RESTORE_BACKUP_ID",
        target: None,
        tablespaces: "PGWARDEN_RESTORE_TABLESPACES",
    };

    /// A replica seeded from the cluster's own archive (`PGWARDEN_CLONE_FROM=archive`).
    pub const CLONE: SettingNames = SettingNames {
        source: "PGWARDEN_ARCHIVE_URL",
        server: "PGWARDEN_ARCHIVE_NAME",
        backup_id: "PGWARDEN_CLONE_FROM",
        target: None,
        tablespaces: "PGWARDEN_CLONE_FROM",
    };

    /// The name of the setting that set `target`.
    pub fn target(&self, target: &RecoveryTarget) -> &'static str {
        match (self.target, target) {
            (_, RecoveryTarget::End) => self.source,
            (Some(name), _) => name,
            (None, t) => t.setting(),
        }
    }
}

/// Validated restore settings.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// The source archive, read only.
    pub source: ArchiveConfig,
    /// An explicit backup id.
    pub backup_id: Option<String>,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// Where the backup's tablespaces go.
    pub tablespaces: Tablespaces,
    /// What messages call these settings.
    pub names: SettingNames,
}

/// A settings error: the setting, and what is wrong with it.
pub type SettingError = (&'static str, String);

impl RestoreConfig {
    /// Validates the restore settings; `Ok(None)` without `PGWARDEN_RESTORE_URL`.
    /// `archive` is the destination archive's settings: the source inherits its timeout
    /// and prefetch, and must not be the same archive and server.
    pub fn from_args(
        a: &RestoreArgs,
        archive_args: &ArchiveArgs,
        archive: Option<&ArchiveConfig>,
        instance_name: &str,
    ) -> Result<Option<RestoreConfig>, SettingError> {
        let target = target(a)?;
        let tablespaces = parse_tablespaces(a.restore_tablespaces.as_deref().unwrap_or(""))
            .map_err(|m| ("PGWARDEN_RESTORE_TABLESPACES", m))?;
        let Some(url) = a.restore_url.clone().filter(|u| !u.is_empty()) else {
            if target != RecoveryTarget::End {
                return Err((
                    target.setting(),
                    "a recovery target needs PGWARDEN_RESTORE_URL, the archive to recover from"
                        .to_owned(),
                ));
            }
            if a.restore_backup_id.is_some() || a.restore_name.is_some() || !tablespaces.is_empty()
            {
                let which = if a.restore_backup_id.is_some() {
                    "PGWARDEN_RESTORE_BACKUP_ID"
                } else if a.restore_name.is_some() {
                    "PGWARDEN_RESTORE_NAME"
                } else {
                    "PGWARDEN_RESTORE_TABLESPACES"
                };
                return Err((
                    which,
                    "needs PGWARDEN_RESTORE_URL, the archive to restore from".to_owned(),
                ));
            }
            return Ok(None);
        };
        let source_args = ArchiveArgs {
            archive_url: Some(url),
            archive_name: a
                .restore_name
                .clone()
                .or_else(|| archive_args.archive_name.clone()),
            // The source is only read: the codec is whatever its objects say.
            archive_compression: "none".to_owned(),
            ..archive_args.clone()
        };
        let source = match ArchiveConfig::from_args(&source_args, instance_name) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(("PGWARDEN_RESTORE_URL", "is empty".to_owned())),
            Err((setting, m)) => return Err((rename(setting), m)),
        };
        if let Some(id) = &a.restore_backup_id {
            if !is_backup_id(id) {
                return Err((
                    "PGWARDEN_RESTORE_BACKUP_ID",
                    format!("{id:?} is not a backup id (YYYYmmddTHHMMSS, as `pgwarden backup-list` shows)"),
                ));
            }
        }
        if matches!(target, RecoveryTarget::Xid(_) | RecoveryTarget::Name(_))
            && a.restore_backup_id.is_none()
        {
            // Nothing in backup.info says which backup precedes a transaction id or a
            // restore point; a wrong guess replays past the target and fails at the end.
            return Err((
                target.setting(),
                "needs PGWARDEN_RESTORE_BACKUP_ID too: pick a backup that ends before the target with `pgwarden backup-list`".to_owned(),
            ));
        }
        if let Some(dest) = archive {
            if dest.location == source.location && dest.server == source.server {
                return Err((
                    "PGWARDEN_ARCHIVE_NAME",
                    format!(
                        "a cluster restored from server {:?} in {} must archive under another server name or into another archive: \
                         its new timeline would collide with the history of the cluster it was restored from",
                        source.server, source.url
                    ),
                ));
            }
        }
        Ok(Some(RestoreConfig {
            source,
            backup_id: a.restore_backup_id.clone(),
            target,
            tablespaces: Tablespaces::Mapped(tablespaces),
            names: SettingNames::BOOTSTRAP,
        }))
    }
}

/// The archive settings' names, as the restore source's.
fn rename(setting: &'static str) -> &'static str {
    match setting {
        "PGWARDEN_ARCHIVE_URL" => "PGWARDEN_RESTORE_URL",
        "PGWARDEN_ARCHIVE_NAME" => "PGWARDEN_RESTORE_NAME",
        other => other,
    }
}

/// Whether `id` has the shape of a backup id (`YYYYmmddTHHMMSS`).
pub fn is_backup_id(id: &str) -> bool {
    id.len() == 15
        && id
            .char_indices()
            .all(|(i, c)| if i == 8 { c == 'T' } else { c.is_ascii_digit() })
}

/// The one recovery target set, or the end of the archive.
fn target(a: &RestoreArgs) -> Result<RecoveryTarget, SettingError> {
    let set: Vec<(&'static str, &str)> = [
        ("PGWARDEN_RECOVERY_TARGET_TIME", &a.recovery_target_time),
        ("PGWARDEN_RECOVERY_TARGET_LSN", &a.recovery_target_lsn),
        ("PGWARDEN_RECOVERY_TARGET_XID", &a.recovery_target_xid),
        ("PGWARDEN_RECOVERY_TARGET_NAME", &a.recovery_target_name),
        (
            "PGWARDEN_RECOVERY_TARGET_IMMEDIATE",
            &a.recovery_target_immediate,
        ),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
    .collect();
    let (setting, value) = match set.as_slice() {
        [] => return Ok(RecoveryTarget::End),
        [one] => *one,
        [first, rest @ ..] => {
            return Err((
                first.0,
                format!(
                    "at most one recovery target may be set, but {} is set too",
                    rest.iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ))
        }
    };
    parse_target(setting, value)
}

/// Parses `value` as the recovery target `setting` names
/// (`PGWARDEN_RECOVERY_TARGET_TIME`, `_LSN`, `_XID`, `_NAME` or `_IMMEDIATE`).
pub fn parse_target(setting: &'static str, value: &str) -> Result<RecoveryTarget, SettingError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err((setting, "must be one line".to_owned()));
    }
    let bad = |what: &str| Err((setting, format!("{value:?} is not {what}")));
    match setting {
        "PGWARDEN_RECOVERY_TARGET_TIME" => match parse_timestamp(value) {
            Some(Stamp { micros, zoned: true }) => Ok(RecoveryTarget::Time(micros)),
            Some(_) => Err((
                setting,
                format!("{value:?} has no time zone; add one, as in \"{value}+00\" for UTC, so that it means the same everywhere"),
            )),
            None => bad("a time such as \"2026-11-24 08:00:00+00\""),
        },
        "PGWARDEN_RECOVERY_TARGET_LSN" => match Lsn::parse(value) {
            Some(l) => Ok(RecoveryTarget::Lsn(l)),
            None => bad("a WAL position such as 0/3000060"),
        },
        "PGWARDEN_RECOVERY_TARGET_XID" => match value.trim().parse::<u64>() {
            Ok(x) if x >= 3 => Ok(RecoveryTarget::Xid(x)),
            _ => bad("a transaction id (a number, 3 or more)"),
        },
        "PGWARDEN_RECOVERY_TARGET_NAME" => Ok(RecoveryTarget::Name(value.to_owned())),
        _ => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(RecoveryTarget::Immediate),
            "false" | "off" | "no" | "0" => Ok(RecoveryTarget::End),
            _ => bad("true or false"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> RestoreArgs {
        let mut a = RestoreArgs::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "url" => a.restore_url = v,
                "name" => a.restore_name = v,
                "id" => a.restore_backup_id = v,
                "time" => a.recovery_target_time = v,
                "lsn" => a.recovery_target_lsn = v,
                "xid" => a.recovery_target_xid = v,
                "rp" => a.recovery_target_name = v,
                "immediate" => a.recovery_target_immediate = v,
                "tablespaces" => a.restore_tablespaces = v,
                _ => panic!("{k}"),
            }
        }
        a
    }

    fn check(
        pairs: &[(&str, &str)],
        dest: Option<(&str, &str)>,
    ) -> Result<Option<RestoreConfig>, SettingError> {
        let archive_args = ArchiveArgs {
            archive_url: dest.map(|d| d.0.to_owned()),
            archive_name: dest.map(|d| d.1.to_owned()),
            archive_compression: "zstd".into(),
            archive_timeout: 60,
            ..Default::default()
        };
        let dest = ArchiveConfig::from_args(&archive_args, "pg-0").unwrap();
        RestoreConfig::from_args(&args(pairs), &archive_args, dest.as_ref(), "pg-0")
    }

    /// Settings, the destination archive (URL, server), and the target or the setting
    /// an error names.
    type Case = (
        Vec<(&'static str, &'static str)>,
        Option<(&'static str, &'static str)>,
        Result<Option<RecoveryTarget>, &'static str>,
    );

    #[test]
    fn settings_table() {
        let url = ("url", "s3://bkt/prod");
        // (settings, destination, Ok(target) or Err(setting named))
        let cases: Vec<Case> = vec![
            (vec![], None, Ok(None)),
            (vec![url], None, Ok(Some(RecoveryTarget::End))),
            (
                vec![url, ("lsn", "0/3000060")],
                None,
                Ok(Some(RecoveryTarget::Lsn(Lsn(0x3000060)))),
            ),
            (
                vec![url, ("time", "2026-11-24 08:00:00+00")],
                None,
                Ok(Some(RecoveryTarget::Time(1_795_507_200_000_000))),
            ),
            (
                vec![url, ("immediate", "true")],
                None,
                Ok(Some(RecoveryTarget::Immediate)),
            ),
            (
                vec![url, ("xid", "1234"), ("id", "20261124T080000")],
                None,
                Ok(Some(RecoveryTarget::Xid(1234))),
            ),
            (
                vec![url, ("rp", "before-upgrade"), ("id", "20261124T080000")],
                None,
                Ok(Some(RecoveryTarget::Name("before-upgrade".into()))),
            ),
            (
                vec![url, ("name", "pg-old")],
                Some(("s3://bkt/prod", "pg-new")),
                Ok(Some(RecoveryTarget::End)),
            ),
            (
                vec![url],
                Some(("s3://bkt/other", "pg-0")),
                Ok(Some(RecoveryTarget::End)),
            ),
            // Refusals, each naming its setting.
            (
                vec![("lsn", "0/3000060")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_LSN"),
            ),
            (
                vec![("id", "20261124T080000")],
                None,
                Err("PGWARDEN_RESTORE_BACKUP_ID"),
            ),
            (
                vec![url, ("lsn", "0/1"), ("time", "2026-11-24 08:00:00+00")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_TIME"),
            ),
            (
                vec![url, ("time", "2026-11-24 08:00:00")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_TIME"),
            ),
            (
                vec![url, ("time", "yesterday")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_TIME"),
            ),
            (
                vec![url, ("lsn", "3000060")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_LSN"),
            ),
            (
                vec![url, ("xid", "12")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_XID"),
            ),
            (
                vec![url, ("xid", "x"), ("id", "20261124T080000")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_XID"),
            ),
            (
                vec![url, ("immediate", "maybe")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_IMMEDIATE"),
            ),
            (
                vec![url, ("id", "latest")],
                None,
                Err("PGWARDEN_RESTORE_BACKUP_ID"),
            ),
            (vec![("url", "http://x")], None, Err("PGWARDEN_RESTORE_URL")),
            (
                vec![url, ("rp", "a\nb"), ("id", "20261124T080000")],
                None,
                Err("PGWARDEN_RECOVERY_TARGET_NAME"),
            ),
            (
                vec![url, ("name", "pg-0")],
                Some(("s3://bkt/prod/", "pg-0")),
                Err("PGWARDEN_ARCHIVE_NAME"),
            ),
            (
                vec![url],
                Some(("s3://bkt/prod", "pg-0")),
                Err("PGWARDEN_ARCHIVE_NAME"),
            ),
            (
                vec![url, ("tablespaces", "fast:/mnt/ssd,slow:/mnt/hdd")],
                None,
                Ok(Some(RecoveryTarget::End)),
            ),
            (
                vec![("tablespaces", "fast:/mnt/ssd")],
                None,
                Err("PGWARDEN_RESTORE_TABLESPACES"),
            ),
            (
                vec![url, ("tablespaces", "fast=/mnt/ssd")],
                None,
                Err("PGWARDEN_RESTORE_TABLESPACES"),
            ),
        ];
        for (pairs, dest, want) in cases {
            let got = check(&pairs, dest);
            match (&got, &want) {
                (Ok(c), Ok(t)) => assert_eq!(c.as_ref().map(|c| c.target.clone()), *t, "{pairs:?}"),
                (Err((setting, _)), Err(w)) => assert_eq!(setting, w, "{pairs:?}: {got:?}"),
                _ => panic!("{pairs:?} {dest:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    type Mapping = Vec<(String, PathBuf)>;

    #[test]
    fn tablespace_mappings_parse_as_barman_cloud_restore_reads_them() {
        let ok = |pairs: &[(&str, &str)]| -> Result<Mapping, &str> {
            Ok(pairs
                .iter()
                .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
                .collect())
        };
        let cases: Vec<(&str, Result<Mapping, &str>)> = vec![
            ("", Ok(vec![])),
            ("fast:/mnt/ssd", ok(&[("fast", "/mnt/ssd")])),
            (
                "fast:/mnt/ssd, slow:/mnt/hdd",
                ok(&[("fast", "/mnt/ssd"), ("slow", "/mnt/hdd")]),
            ),
            // barman splits at the first ':'; the rest is the path.
            ("odd:/mnt/a:b", ok(&[("odd", "/mnt/a:b")])),
            ("fast", Err("is not NAME:LOCATION")),
            ("fast=/mnt/ssd", Err("is not NAME:LOCATION")),
            (":/mnt/ssd", Err("names no tablespace")),
            ("fast:mnt/ssd", Err("must be an absolute path")),
            ("fast:", Err("must be an absolute path")),
            ("fast:/mnt/../etc", Err("must not contain '..'")),
            ("fast:/a,fast:/b", Err("mapped twice")),
            ("fast:/a,slow:/a", Err("are both mapped to /a")),
            ("fast:/a,", Err("is not NAME:LOCATION")),
            ("fast:/a\nslow:/b", Err("must be one line")),
        ];
        for (value, want) in cases {
            let got = parse_tablespaces(value);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{value:?}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{value:?}: {g}"),
                _ => panic!("{value:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn clone_from_table() {
        let cases = [
            ("primary", true, Ok(CloneFrom::Primary)),
            ("primary", false, Ok(CloneFrom::Primary)),
            ("", false, Ok(CloneFrom::Primary)),
            ("archive", true, Ok(CloneFrom::Archive)),
            ("archive", false, Err("PGWARDEN_ARCHIVE_URL")),
            ("bogus", true, Err("\"bogus\" is not")),
        ];
        for (value, has_archive, want) in cases {
            let a = CloneArgs {
                clone_from: value.to_owned(),
            };
            match (CloneFrom::from_args(&a, has_archive), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{value}"),
                (Err((setting, m)), Err(w)) => {
                    assert_eq!(setting, "PGWARDEN_CLONE_FROM", "{value}");
                    assert!(m.contains(w), "{value}: {m}");
                }
                (got, _) => panic!("{value} {has_archive}: {got:?}"),
            }
        }
    }

    #[test]
    fn timestamps_parse_as_postgres_and_barman_write_them() {
        let base = 1_795_478_400_000_000; // 2026-11-24 00:00:00 UTC
        let cases = [
            ("2026-11-24 00:00:00+00", Some((base, true))),
            ("2026-11-24T00:00:00Z", Some((base, true))),
            ("2026-11-24 01:00:00+01:00", Some((base, true))),
            ("2026-11-23 19:00:00-0500", Some((base, true))),
            ("2026-11-24 00:00:00.5+00", Some((base + 500_000, true))),
            (
                "2026-11-24 03:50:40.455712+00:00",
                Some((base + 13_840_455_712, true)),
            ),
            ("2026-11-24 00:00", Some((base, false))),
            ("2026-13-24 00:00:00+00", None),
            ("2026-11-24", None),
            ("24/11/2026 00:00:00", None),
        ];
        for (text, want) in cases {
            let got = parse_timestamp(text).map(|s| (s.micros, s.zoned));
            assert_eq!(got, want, "{text}");
        }
        assert_eq!(format_utc(base + 1), "2026-11-24 00:00:00.000001+00");
    }
}
