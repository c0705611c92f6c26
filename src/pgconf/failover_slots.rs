//! Failover slots (PostgreSQL 17+): logical replication slots created with
//! `failover => true` on the primary are copied to the standbys by their slot
//! synchronization worker, so that a logical consumer continues from the promoted
//! standby after a failover or switchover. See docs/high-availability.md.
//!
//! Which settings pgwarden renders for it is decided here, from a narrow input, by one
//! pure function ([`plan`]); [`conflict`] says why a user value cannot stand beside it.

/// What the decision rests on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Input<'a> {
    /// Major version of the binaries.
    pub major: u32,
    /// Automatic failover is on (`PGWARDEN_HA=etcd`).
    pub ha: bool,
    /// `wal_level` as the user layer sets it, if it does.
    pub wal_level: Option<&'a str>,
    /// `sync_replication_slots` as the user layer sets it, if it does.
    pub sync_replication_slots: Option<&'a str>,
    /// With a synchronous mode (`on`, `strict`, `quorum`), on the leader: the member
    /// names in `synchronous_standby_names`. `None` with synchronous mode off, and
    /// until the HA loop names standbys.
    pub named: Option<&'a [String]>,
}

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Slot synchronization is on: `sync_replication_slots = on`,
    /// `hot_standby_feedback = on`, and a database in `primary_conninfo`.
    pub enabled: bool,
    /// `synchronized_standby_slots`: the physical slots of the named standbys,
    /// comma-separated; `None` leaves the parameter unrendered.
    pub standby_slots: Option<String>,
}

/// The database the slot synchronization worker connects to (`dbname` in
/// `primary_conninfo`): it reads `pg_replication_slots` there, on the primary.
pub const SYNC_DBNAME: &str = "postgres";

/// PostgreSQL's reading of a boolean (`on`, `true`, `yes`, `1` and their opposites,
/// any case, unique prefixes of the words); `None` when it is not one.
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.trim().to_ascii_lowercase();
    match v.as_str() {
        "on" | "1" => return Some(true),
        "off" | "of" | "0" => return Some(false),
        "" | "o" => return None,
        _ => {}
    }
    if "true".starts_with(&v) || "yes".starts_with(&v) {
        Some(true)
    } else if "false".starts_with(&v) || "no".starts_with(&v) {
        Some(false)
    } else {
        None
    }
}

/// Whether slot synchronization is on, and which standbys logical senders wait for.
///
/// On with PostgreSQL 17+ and `wal_level = logical`, under HA unless the user layer
/// sets `sync_replication_slots = off`, and without HA when it sets it on. The
/// standbys waited for are the synchronous ones, only with a synchronous mode: a
/// logical consumer then never gets ahead of a member that may be promoted, and waits
/// no longer than commits do for a standby that went away (the leader names another
/// at its next round). `synchronized_standby_slots` waits for every slot it lists (no
/// `ANY n` form before PostgreSQL 19), so in quorum mode it lists all the named.
pub fn plan(i: &Input) -> Plan {
    let logical = i
        .wal_level
        .is_some_and(|w| w.trim().eq_ignore_ascii_case("logical"));
    let wanted = match i.sync_replication_slots.map(parse_bool) {
        Some(Some(on)) => on,
        // A value postgres does not read as a boolean: it refuses it itself.
        Some(None) => false,
        None => i.ha,
    };
    if i.major < 17 || !logical || !wanted {
        return Plan::default();
    }
    let standby_slots = i.named.filter(|_| i.ha).map(|names| {
        names
            .iter()
            .filter_map(|n| super::slot_name(n).ok())
            .collect::<Vec<_>>()
            .join(", ")
    });
    Plan {
        enabled: true,
        standby_slots,
    }
}

/// What else the user layer sets that bears on slot synchronization.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserValues<'a> {
    /// `hot_standby_feedback`.
    pub hot_standby_feedback: Option<&'a str>,
    /// `synchronized_standby_slots`.
    pub synchronized_standby_slots: Option<&'a str>,
}

/// Why the user layer contradicts slot synchronization as [`plan`] decides it, if it
/// does. `sync_mode` is true with a synchronous mode under HA, where pgwarden sets
/// `synchronized_standby_slots` itself.
pub fn conflict(i: &Input, user: &UserValues, sync_mode: bool) -> Option<String> {
    let on = plan(i).enabled;
    let asked_on = i
        .sync_replication_slots
        .and_then(parse_bool)
        .unwrap_or(false);
    if asked_on && i.major >= 17 && !on {
        return Some(
            "sync_replication_slots = on needs wal_level = logical (the slot \
             synchronization worker refuses to run below it)"
                .into(),
        );
    }
    if !on {
        return None;
    }
    if user.hot_standby_feedback.and_then(parse_bool) == Some(false) {
        return Some(
            "hot_standby_feedback = off: the synchronization of failover slots \
             (on under PGWARDEN_HA with PostgreSQL 17+ and wal_level = logical) needs it \
             on; remove it, or set sync_replication_slots = off to go without"
                .into(),
        );
    }
    if sync_mode && i.ha && user.synchronized_standby_slots.is_some() {
        return Some(
            "synchronized_standby_slots is set by pgwarden with PGWARDEN_SYNC_MODE on, \
             strict or quorum (the synchronous standbys' slots); remove it"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn reads_booleans_as_postgres_does() {
        for on in ["on", "ON", "true", "t", "yes", "y", "1", " On "] {
            assert_eq!(parse_bool(on), Some(true), "{on}");
        }
        for off in ["off", "of", "false", "f", "no", "n", "0"] {
            assert_eq!(parse_bool(off), Some(false), "{off}");
        }
        for bad in ["", "o", "maybe", "2", "onn"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn decides_when_slots_are_synchronized_and_who_is_waited_for() {
        let two = v(&["n2", "pg-3.x"]);
        let none: Vec<String> = Vec::new();
        let base = Input {
            major: 18,
            ha: true,
            wal_level: Some("logical"),
            sync_replication_slots: None,
            named: None,
        };
        let on = |slots: Option<&str>| Plan {
            enabled: true,
            standby_slots: slots.map(String::from),
        };
        let off = Plan::default();
        let cases: Vec<(&str, Input, Plan)> = vec![
            ("HA, 18, logical, sync mode off", base, on(None)),
            ("17 is enough", Input { major: 17, ..base }, on(None)),
            (
                "16 has no failover slots",
                Input { major: 16, ..base },
                off.clone(),
            ),
            ("15", Input { major: 15, ..base }, off.clone()),
            (
                "wal_level replica",
                Input {
                    wal_level: Some("replica"),
                    ..base
                },
                off.clone(),
            ),
            (
                "wal_level unset (replica)",
                Input {
                    wal_level: None,
                    ..base
                },
                off.clone(),
            ),
            (
                "wal_level in capitals",
                Input {
                    wal_level: Some("LOGICAL"),
                    ..base
                },
                on(None),
            ),
            (
                "the user opts out",
                Input {
                    sync_replication_slots: Some("off"),
                    ..base
                },
                off.clone(),
            ),
            (
                "a value postgres refuses",
                Input {
                    sync_replication_slots: Some("maybe"),
                    ..base
                },
                off.clone(),
            ),
            ("without HA: off", Input { ha: false, ..base }, off.clone()),
            (
                "without HA, asked for",
                Input {
                    ha: false,
                    sync_replication_slots: Some("on"),
                    ..base
                },
                on(None),
            ),
            (
                "without HA nobody is named",
                Input {
                    ha: false,
                    sync_replication_slots: Some("on"),
                    named: Some(&two),
                    ..base
                },
                on(None),
            ),
            (
                "sync mode: the named standbys' slots",
                Input {
                    named: Some(&two),
                    ..base
                },
                on(Some("n2, pg_3_x")),
            ),
            (
                "sync mode, nobody named: none",
                Input {
                    named: Some(&none),
                    ..base
                },
                on(Some("")),
            ),
            (
                "sync mode on 15: nothing",
                Input {
                    major: 15,
                    named: Some(&two),
                    ..base
                },
                off.clone(),
            ),
        ];
        for (what, input, want) in cases {
            assert_eq!(plan(&input), want, "{what}");
        }
    }

    #[test]
    fn refuses_user_values_that_contradict_it() {
        let base = Input {
            major: 18,
            ha: true,
            wal_level: Some("logical"),
            sync_replication_slots: None,
            named: None,
        };
        let none = UserValues::default();
        let feedback_off = UserValues {
            hot_standby_feedback: Some("off"),
            ..none
        };
        let slots = UserValues {
            synchronized_standby_slots: Some("n2"),
            ..none
        };
        let cases: Vec<(&str, Input, UserValues, bool, Option<&str>)> = vec![
            ("nothing set", base, none, true, None),
            (
                "feedback off",
                base,
                feedback_off,
                false,
                Some("hot_standby_feedback = off"),
            ),
            (
                "feedback off, opted out",
                Input {
                    sync_replication_slots: Some("off"),
                    ..base
                },
                feedback_off,
                false,
                None,
            ),
            (
                "feedback off on 16",
                Input { major: 16, ..base },
                feedback_off,
                false,
                None,
            ),
            (
                "feedback on",
                base,
                UserValues {
                    hot_standby_feedback: Some("on"),
                    ..none
                },
                false,
                None,
            ),
            (
                "slots with a sync mode",
                base,
                slots,
                true,
                Some("synchronized_standby_slots is set by pgwarden"),
            ),
            ("slots with sync mode off", base, slots, false, None),
            (
                "slots without HA",
                Input {
                    ha: false,
                    sync_replication_slots: Some("on"),
                    ..base
                },
                slots,
                true,
                None,
            ),
            (
                "asked for below logical",
                Input {
                    sync_replication_slots: Some("on"),
                    wal_level: Some("replica"),
                    ..base
                },
                none,
                false,
                Some("needs wal_level = logical"),
            ),
        ];
        for (what, input, user, sync_mode, want) in cases {
            let got = conflict(&input, &user, sync_mode);
            match want {
                None => assert_eq!(got, None, "{what}"),
                Some(part) => assert!(
                    got.as_deref().is_some_and(|m| m.contains(part)),
                    "{what}: {got:?}"
                ),
            }
        }
    }
}
