//! Whether a running standby can still follow its primary, or went past the point
//! where the primary's timeline forked from its own and needs pg_rewind.
//!
//! A primary fenced after writing WAL its standbys never received, or a standby that
//! had received more from the old primary than the one promoted, comes back replaying
//! a history the new primary does not share. postgres then refuses to stream ("new
//! timeline forked off current database system timeline before current recovery
//! point") and retries forever; only pg_rewind brings it back. This module answers the
//! question the way postgres and Patroni do: the primary's timeline history says where
//! our timeline ended on its branch, and our replay position is either before that
//! point (postgres follows the switch by itself) or past it.

use super::remote;
use crate::backup::info::Lsn;
use crate::process::Runner;
use crate::settings::Settings;
use anyhow::{Context, Result};

/// One line of a timeline history file: timeline `parent` ended at `switchpoint`,
/// where the next timeline of this branch begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// The timeline that ended.
    pub parent: u32,
    /// Where it ended, as a byte position.
    pub switchpoint: u64,
}

/// The primary serves another cluster: no rewind can make this standby follow it.
#[derive(Debug, thiserror::Error)]
#[error("the primary serves another cluster (system identifier {theirs}, ours is {ours}); this member cannot follow it")]
pub struct ForeignCluster {
    /// The primary's system identifier.
    pub theirs: String,
    /// Ours.
    pub ours: String,
}

/// Where a standby is: the timeline it replays and the end of what it replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The timeline it replays.
    pub timeline: u32,
    /// The end of the last record it replayed.
    pub replayed: u64,
}

/// Parses a timeline history file (`parent<TAB>switchpoint<TAB>reason` per line;
/// blank lines and `#` comments allowed, as postgres's own reader allows them).
pub fn parse_history(text: &str) -> Result<Vec<Switch>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parse = |tli: Option<&str>, lsn: Option<&str>| -> Option<Switch> {
            Some(Switch {
                parent: tli?.parse().ok()?,
                switchpoint: Lsn::parse(lsn?)?.0,
            })
        };
        match parse(fields.next(), fields.next()) {
            Some(s) => out.push(s),
            None => return Err(format!("unexpected timeline history line {line:?}")),
        }
    }
    Ok(out)
}

/// True when a standby at `local` cannot follow a primary on `primary_timeline` whose
/// history is `history` (the switches that led to `primary_timeline`, oldest first)
/// without being rewound. `local_history` is the standby's own history of its
/// timeline, when it has one: two members that each promoted from the same parent
/// can both have made "timeline 3", and the same number is then no proof of the
/// same branch.
pub fn needs_rewind(
    local: Position,
    primary_timeline: u32,
    history: &[Switch],
    local_history: Option<&[Switch]>,
) -> bool {
    if local.timeline == primary_timeline {
        // Same number: the same branch only if both came to it the same way.
        return local_history.is_some_and(|mine| mine != history);
    }
    for s in history {
        if s.parent == local.timeline {
            // Our timeline is an ancestor of the primary's: fine while we have
            // replayed no further than where it ended on the primary's branch.
            return local.replayed > s.switchpoint;
        }
        if s.parent > local.timeline {
            // The primary's branch went from an older timeline straight past ours.
            break;
        }
    }
    // Our timeline is not on the primary's branch at all.
    true
}

/// Asks the local standby (over a replication connection through its socket) and the
/// primary in primary_conninfo whether this standby, which had replayed up to
/// `replayed` (`pg_last_wal_replay_lsn()`, what postgres compares a switchpoint with),
/// needs pg_rewind to follow it. The position is read before the timeline: should
/// replay cross a timeline switch in between, the pair understates the standby, and
/// errs towards no rewind. `Err` when either cannot be asked (nothing is known then),
/// or with [`ForeignCluster`] when the primary is of another cluster.
pub async fn check(s: &Settings, runner: &Runner, replayed: u64) -> Result<bool> {
    let local = remote::identify_local(s, runner)
        .await
        .context("ask the local standby where it is")?;
    let primary = remote::identify(s, runner)
        .await
        .context("ask the primary for its timeline")?;
    if primary.system_id != local.system_id {
        return Err(ForeignCluster {
            theirs: primary.system_id,
            ours: local.system_id,
        }
        .into());
    }
    // Timeline 1 has no history file; nothing forked before it.
    let history = match primary.timeline {
        1 => Vec::new(),
        t => parse_history(&remote::timeline_history(s, runner, t).await?)
            .map_err(anyhow::Error::msg)
            .context("the primary's timeline history")?,
    };
    let local_history = match local.timeline {
        1 => Some(Vec::new()),
        t => std::fs::read_to_string(s.pgdata.join(format!("pg_wal/{t:08X}.history")))
            .ok()
            .and_then(|text| parse_history(&text).ok()),
    };
    Ok(needs_rewind(
        Position {
            timeline: local.timeline,
            replayed,
        },
        primary.timeline,
        &history,
        local_history.as_deref(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H3: &str = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";

    #[test]
    fn history_files_parse_and_bad_lines_are_refused() {
        assert_eq!(
            parse_history(H3).unwrap(),
            vec![
                Switch {
                    parent: 1,
                    switchpoint: 0x3000148
                },
                Switch {
                    parent: 2,
                    switchpoint: 0x5000000
                }
            ]
        );
        assert_eq!(parse_history("# comment\n").unwrap(), vec![]);
        assert!(parse_history("two\t0/1\n").is_err());
        assert!(parse_history("2\tnot-an-lsn\n").is_err());
    }

    #[test]
    fn a_standby_needs_a_rewind_only_past_the_fork_or_off_the_branch() {
        let h = parse_history(H3).unwrap();
        let at = |timeline, replayed| Position { timeline, replayed };
        let other_3 = [Switch {
            parent: 2,
            switchpoint: 0x4000000,
        }];
        // Name, local position, primary timeline, its history, ours, rewind.
        type Case<'a> = (
            &'a str,
            Position,
            u32,
            &'a [Switch],
            Option<&'a [Switch]>,
            bool,
        );
        let cases: &[Case] = &[
            ("same timeline", at(3, 0x9000000), 3, &h, None, false),
            (
                "same timeline, same history",
                at(3, 0x9000000),
                3,
                &h,
                Some(&h),
                false,
            ),
            (
                "same number, another branch",
                at(3, 0x9000000),
                3,
                &h,
                Some(&other_3),
                true,
            ),
            (
                "parent, before the fork",
                at(2, 0x4000000),
                3,
                &h,
                None,
                false,
            ),
            ("parent, at the fork", at(2, 0x5000000), 3, &h, None, false),
            ("parent, past the fork", at(2, 0x5000001), 3, &h, None, true),
            (
                "grandparent, before its fork",
                at(1, 0x3000000),
                3,
                &h,
                None,
                false,
            ),
            (
                "grandparent, past its fork",
                at(1, 0x3000149),
                3,
                &h,
                None,
                true,
            ),
            (
                "a sibling branch",
                at(4, 0x6000000),
                5,
                &[
                    Switch {
                        parent: 1,
                        switchpoint: 1,
                    },
                    Switch {
                        parent: 3,
                        switchpoint: 2,
                    },
                ],
                None,
                true,
            ),
            (
                "newer than the primary",
                at(4, 0x6000000),
                3,
                &h,
                None,
                true,
            ),
            (
                "primary on timeline 1",
                at(1, 0x6000000),
                1,
                &[],
                Some(&[]),
                false,
            ),
        ];
        for (name, local, tli, history, mine, want) in cases {
            assert_eq!(needs_rewind(*local, *tli, history, *mine), *want, "{name}");
        }
    }
}
