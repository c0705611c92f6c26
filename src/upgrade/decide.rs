//! What to do with PGDATA at start, as far as majors go: a pure function of what was
//! found on disk and what is configured.

use super::state::{Marker, Phase};
use std::path::Path;

/// What a start finds.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    /// PGDATA.
    pub pgdata: &'a Path,
    /// PGDATA's major (`PG_VERSION`); `None` when it holds no cluster.
    pub data: Option<u32>,
    /// The binaries' directory, for messages.
    pub bindir: &'a Path,
    /// The binaries' major.
    pub binaries: u32,
    /// What an earlier upgrade left.
    pub work: Work,
    /// `PGWARDEN_UPGRADE=on`.
    pub upgrade: bool,
    /// This instance is a replica of a configured primary: it has a copy of the
    /// primary's data, which it clones again rather than upgrades.
    pub replica: bool,
}

/// What an earlier upgrade left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Nothing: no upgrade under way.
    None,
    /// A work directory without a marker: one created and not yet marked, or one whose
    /// marker the cleanup had removed. Nothing in it is needed.
    Stray,
    /// A marked upgrade.
    Marked(Marker),
}

/// What to put right first, before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recover {
    /// Nothing to put right.
    Nothing,
    /// Remove the stray work directory.
    RemoveStray,
    /// Undo an upgrade that had not swapped: stop its servers, rename the old
    /// `pg_control` back, remove the new cluster and the work directory.
    RollBack,
    /// Finish moving the new cluster into PGDATA.
    FinishSwap,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Use PGDATA as it is: a cluster of the binaries' major, or none (bootstrap).
    Use,
    /// Upgrade PGDATA with pg_upgrade.
    Upgrade {
        /// The old major.
        from: u32,
        /// The binaries' major.
        to: u32,
    },
    /// Discard this replica's copy of the old major, and clone the primary again once
    /// it runs the new one.
    Reclone {
        /// The old major.
        from: u32,
        /// The binaries' major.
        to: u32,
    },
    /// Start the upgraded cluster, then do what is left of the upgrade from `phase`.
    Upgraded(Marker),
    /// Refuse to start, for this reason (it names the settings).
    Refuse(String),
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// First.
    pub recover: Recover,
    /// Then.
    pub then: Then,
}

/// Decides what a start does with PGDATA.
pub fn decide(f: &Found) -> Plan {
    let plan = |recover, then| Plan { recover, then };
    let m = match f.work {
        Work::None => return plan(Recover::Nothing, fresh(f, f.data)),
        Work::Stray => return plan(Recover::RemoveStray, fresh(f, f.data)),
        Work::Marked(m) => m,
    };
    // PGDATA's PG_VERSION is the old one until the swap's last rename, the new one after.
    let expected = match m.phase {
        Phase::Prepare | Phase::SwapOut => m.from,
        Phase::SwapIn if f.data == Some(m.to) => m.to,
        Phase::SwapIn => m.from,
        _ => m.to,
    };
    if f.data != Some(expected) {
        return plan(
            Recover::Nothing,
            Then::Refuse(format!(
                "{} holds {} but an upgrade from PostgreSQL {} to {} is at its phase {} (the marker in its work directory), \
                 which expects PostgreSQL {expected} there; pgwarden will not guess: see docs/upgrades.md",
                f.pgdata.display(),
                f.data.map_or("no cluster".to_owned(), |v| format!("PostgreSQL {v}")),
                m.from,
                m.to,
                m.phase
            )),
        );
    }
    match m.phase {
        // Nothing of the old cluster has moved: undo, then decide as if no upgrade had
        // begun (with the new binaries and PGWARDEN_UPGRADE=on it starts again).
        Phase::Prepare => plan(Recover::RollBack, fresh(f, Some(m.from))),
        Phase::SwapOut | Phase::SwapIn if f.binaries == m.to => {
            plan(Recover::FinishSwap, Then::Upgraded(Marker { phase: Phase::Ready, ..m }))
        }
        Phase::SwapOut | Phase::SwapIn => plan(
            Recover::Nothing,
            Then::Refuse(format!(
                "{} is half-way through the move of its upgraded PostgreSQL {} cluster into place; \
                 start pgwarden with the PostgreSQL {} binaries to finish it (PGWARDEN_PG_BINDIR)",
                f.pgdata.display(),
                m.to,
                m.to
            )),
        ),
        _ if f.binaries == m.to => plan(Recover::Nothing, Then::Upgraded(m)),
        _ => plan(
            Recover::Nothing,
            Then::Refuse(format!(
                "{} holds a PostgreSQL {} cluster upgraded from {} (the upgrade is at its phase {}), \
                 but the binaries in {} are PostgreSQL {}; point PGWARDEN_PG_BINDIR at PostgreSQL {} binaries. \
                 To go back to the old cluster, see docs/upgrades.md (\"Rolling back\")",
                f.pgdata.display(),
                m.to,
                m.from,
                m.phase,
                f.bindir.display(),
                f.binaries,
                m.to
            )),
        ),
    }
}

/// The decision for PGDATA holding `data` with no upgrade under way.
fn fresh(f: &Found, data: Option<u32>) -> Then {
    let b = f.binaries;
    match data {
        None => Then::Use,
        Some(v) if v == b => Then::Use,
        Some(v) if v < b && f.upgrade && f.replica => Then::Reclone { from: v, to: b },
        Some(v) if v < b && f.upgrade => Then::Upgrade { from: v, to: b },
        Some(v) if v < b => Then::Refuse(format!(
            "{} holds a PostgreSQL {v} cluster but the binaries in {} are PostgreSQL {b}; \
             set PGWARDEN_UPGRADE=on to upgrade it with pg_upgrade at start (docs/upgrades.md), \
             or point PGWARDEN_PG_BINDIR at PostgreSQL {v} binaries",
            f.pgdata.display(),
            f.bindir.display()
        )),
        Some(v) => Then::Refuse(format!(
            "{} holds a PostgreSQL {v} cluster but the binaries in {} are PostgreSQL {b}, an older major; \
             a cluster is never downgraded: point PGWARDEN_PG_BINDIR at PostgreSQL {v} binaries{}",
            f.pgdata.display(),
            f.bindir.display(),
            if f.upgrade {
                " (PGWARDEN_UPGRADE only upgrades an older PGDATA, with pg_upgrade)"
            } else {
                " (pg_upgrade only goes up)"
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::config::Mode;

    type Case = (
        &'static str,
        Option<u32>,
        u32,
        Work,
        bool,
        bool,
        Recover,
        Box<dyn Fn(&Then) -> bool>,
    );

    fn marked(phase: Phase) -> Work {
        Work::Marked(Marker {
            phase,
            from: 15,
            to: 18,
            mode: Mode::Link,
        })
    }

    #[test]
    fn decides_what_to_do_with_pgdata() {
        use Recover::*;
        let ready = |phase| {
            Then::Upgraded(Marker {
                phase,
                from: 15,
                to: 18,
                mode: Mode::Link,
            })
        };
        let refuse = |needle: &'static str| move |t: &Then| matches!(t, Then::Refuse(m) if m.contains(needle));
        // (case, data, binaries, work, PGWARDEN_UPGRADE, replica, recover, then)
        let cases: Vec<Case> = vec![
            (
                "empty PGDATA: bootstrap",
                None,
                18,
                Work::None,
                false,
                false,
                Nothing,
                Box::new(|t| *t == Then::Use),
            ),
            (
                "same major",
                Some(18),
                18,
                Work::None,
                true,
                false,
                Nothing,
                Box::new(|t| *t == Then::Use),
            ),
            (
                "older, upgrade off: refused, naming the way",
                Some(15),
                18,
                Work::None,
                false,
                false,
                Nothing,
                Box::new(refuse("set PGWARDEN_UPGRADE=on")),
            ),
            (
                "older, upgrade on: upgrade",
                Some(15),
                18,
                Work::None,
                true,
                false,
                Nothing,
                Box::new(move |t| *t == Then::Upgrade { from: 15, to: 18 }),
            ),
            (
                "older replica, upgrade on: clone again",
                Some(15),
                18,
                Work::None,
                true,
                true,
                Nothing,
                Box::new(|t| *t == Then::Reclone { from: 15, to: 18 }),
            ),
            (
                "newer, upgrade on: still refused",
                Some(18),
                15,
                Work::None,
                true,
                false,
                Nothing,
                Box::new(refuse("never downgraded")),
            ),
            (
                "newer, upgrade off: refused",
                Some(18),
                15,
                Work::None,
                false,
                false,
                Nothing,
                Box::new(refuse("never downgraded")),
            ),
            (
                "a stray work directory is removed",
                Some(15),
                18,
                Work::Stray,
                true,
                false,
                RemoveStray,
                Box::new(move |t| *t == Then::Upgrade { from: 15, to: 18 }),
            ),
            (
                "interrupted before the swap: undone, then again",
                Some(15),
                18,
                marked(Phase::Prepare),
                true,
                false,
                RollBack,
                Box::new(move |t| *t == Then::Upgrade { from: 15, to: 18 }),
            ),
            (
                "interrupted before the swap, old binaries back: undone, old starts",
                Some(15),
                15,
                marked(Phase::Prepare),
                false,
                false,
                RollBack,
                Box::new(|t| *t == Then::Use),
            ),
            (
                "interrupted before the swap, upgrade now off: undone, refused",
                Some(15),
                18,
                marked(Phase::Prepare),
                false,
                false,
                RollBack,
                Box::new(refuse("set PGWARDEN_UPGRADE=on")),
            ),
            (
                "interrupted moving out: finished",
                Some(15),
                18,
                marked(Phase::SwapOut),
                true,
                false,
                FinishSwap,
                Box::new(move |t| *t == ready(Phase::Ready)),
            ),
            (
                "interrupted moving in: finished, whatever PGWARDEN_UPGRADE says",
                Some(15),
                18,
                marked(Phase::SwapIn),
                false,
                false,
                FinishSwap,
                Box::new(move |t| *t == ready(Phase::Ready)),
            ),
            (
                "interrupted just after the commit: finished",
                Some(18),
                18,
                marked(Phase::SwapIn),
                true,
                false,
                FinishSwap,
                Box::new(move |t| *t == ready(Phase::Ready)),
            ),
            (
                "mid-swap with the old binaries: refused, naming the new",
                Some(15),
                15,
                marked(Phase::SwapIn),
                true,
                false,
                Nothing,
                Box::new(refuse("PostgreSQL 18 binaries to finish it")),
            ),
            (
                "swapped, never started: start it",
                Some(18),
                18,
                marked(Phase::Ready),
                true,
                false,
                Nothing,
                Box::new(move |t| *t == ready(Phase::Ready)),
            ),
            (
                "started: what is left",
                Some(18),
                18,
                marked(Phase::Started),
                true,
                false,
                Nothing,
                Box::new(move |t| *t == ready(Phase::Started)),
            ),
            (
                "analyzed: the backup is left",
                Some(18),
                18,
                marked(Phase::Analyzed),
                false,
                false,
                Nothing,
                Box::new(move |t| *t == ready(Phase::Analyzed)),
            ),
            (
                "cleaning up",
                Some(18),
                18,
                marked(Phase::Cleanup),
                true,
                false,
                Nothing,
                Box::new(move |t| *t == ready(Phase::Cleanup)),
            ),
            (
                "upgraded, old binaries back: refused, pointing at the rollback",
                Some(18),
                15,
                marked(Phase::Started),
                false,
                false,
                Nothing,
                Box::new(refuse("Rolling back")),
            ),
            (
                "a marker that contradicts PGDATA: refused",
                Some(18),
                18,
                marked(Phase::Prepare),
                true,
                false,
                Nothing,
                Box::new(refuse("will not guess")),
            ),
            (
                "a marker with PGDATA gone: refused",
                None,
                18,
                marked(Phase::Started),
                true,
                false,
                Nothing,
                Box::new(refuse("no cluster")),
            ),
        ];
        for (case, data, binaries, work, upgrade, replica, recover, then) in cases {
            let f = Found {
                pgdata: Path::new("/data"),
                data,
                bindir: Path::new("/bin"),
                binaries,
                work,
                upgrade,
                replica,
            };
            let p = decide(&f);
            assert_eq!(p.recover, recover, "{case}: {p:?}");
            assert!(then(&p.then), "{case}: {p:?}");
        }
    }
}
