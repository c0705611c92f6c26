//! Whether the scratch directory's file system has room for a drill, decided before
//! anything is written, and watched while the drill fills it.
//!
//! A drill beside PGDATA often shares its volume: filling it would stop the live
//! cluster. So a drill needs room for the restored cluster, its WAL replay and a margin,
//! and must leave [`RESERVE_PERCENT`] of the file system free; while it runs, it stops
//! as soon as less than that is left, whatever the estimate said.

use std::path::Path;

/// WAL a drill's recovery keeps in `pg_wal` between restartpoints, at most about the
/// source's `max_wal_size` (postgres's default: 1 GiB).
pub const WAL_HEADROOM: u64 = 1 << 30;
/// The margin on the restored cluster's estimated size, in percent.
pub const MARGIN_PERCENT: u64 = 10;
/// The share of the file system a drill always leaves free, in percent.
pub const RESERVE_PERCENT: u64 = 5;
/// How much larger than its gzip objects a restored cluster is assumed to be when
/// nothing better is known (PostgreSQL's pages compress three to ten times).
pub const GZIP_RATIO: u64 = 3;

/// What a drill of one backup needs, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The restored cluster.
    pub data: u64,
    /// WAL replay.
    pub wal: u64,
    /// The margin on `data`.
    pub margin: u64,
    /// How `data` was estimated, for the message.
    pub basis: Basis,
}

/// Where the restored cluster's size comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The uncompressed data objects' size.
    Objects,
    /// The gzip objects' size times [`GZIP_RATIO`].
    Compressed,
    /// The local cluster's size, which the backup is a copy of and which was larger.
    LocalCluster,
}

impl Estimate {
    /// Everything the drill writes.
    pub fn total(&self) -> u64 {
        self.data
            .saturating_add(self.wal)
            .saturating_add(self.margin)
    }
}

/// The estimate for a backup whose data objects take `stored` bytes in the archive
/// (`compressed`: gzip), beside a local cluster of `local` bytes (PGDATA without its
/// WAL, when it holds one).
pub fn estimate(stored: u64, compressed: bool, local: Option<u64>) -> Estimate {
    let (mut data, mut basis) = if compressed {
        (stored.saturating_mul(GZIP_RATIO), Basis::Compressed)
    } else {
        (stored, Basis::Objects)
    };
    if let Some(l) = local.filter(|l| *l > data) {
        (data, basis) = (l, Basis::LocalCluster);
    }
    Estimate {
        data,
        wal: WAL_HEADROOM,
        margin: data.saturating_mul(MARGIN_PERCENT) / 100,
        basis,
    }
}

/// A file system's room, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Available to an unprivileged user.
    pub free: u64,
    /// Its size.
    pub size: u64,
}

impl Space {
    /// What a drill leaves free on it.
    pub fn reserve(&self) -> u64 {
        self.size.saturating_mul(RESERVE_PERCENT) / 100
    }
}

/// The room on the file system that holds `path` (or, while it does not exist yet,
/// its nearest existing parent).
pub fn space(path: &Path) -> std::io::Result<Space> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    let st = nix::sys::statvfs::statvfs(p).map_err(std::io::Error::from)?;
    let unit = st.fragment_size() as u64;
    Ok(Space {
        free: (st.blocks_available() as u64).saturating_mul(unit),
        size: (st.blocks() as u64).saturating_mul(unit),
    })
}

/// Refuses a drill of `backup_id` into `dir` that would leave less than the reserve
/// free; the message says how much it needs and how much there is.
pub fn check(dir: &Path, backup_id: &str, need: &Estimate, space: &Space) -> Result<(), String> {
    let reserve = space.reserve();
    let wanted = need.total().saturating_add(reserve);
    if space.free >= wanted {
        return Ok(());
    }
    let basis = match need.basis {
        Basis::Objects => "its data objects' size".to_owned(),
        Basis::Compressed => format!("{GZIP_RATIO} times its gzip objects' size"),
        Basis::LocalCluster => "the size of the local cluster it is a copy of".to_owned(),
    };
    Err(format!(
        "PGWARDEN_DRILL_DIR: {} has {} free, and a drill of backup {backup_id} needs {}: {} for the restored cluster ({basis}), \
         {} for WAL replay, a {MARGIN_PERCENT}% margin of {}, and {} ({RESERVE_PERCENT}% of the file system) left free; \
         make room, or point PGWARDEN_DRILL_DIR at a larger volume",
        dir.display(),
        bytes(space.free),
        bytes(wanted),
        bytes(need.data),
        bytes(need.wal),
        bytes(need.margin),
        bytes(reserve),
    ))
}

/// Whether a running drill must stop: less than the reserve is left.
pub fn exhausted(dir: &Path, space: &Space) -> Option<String> {
    (space.free < space.reserve()).then(|| {
        format!(
            "PGWARDEN_DRILL_DIR: {} is down to {} free, less than the {} ({RESERVE_PERCENT}% of the file system) a drill leaves; \
             the drill stopped before it could fill the volume: make room, or point PGWARDEN_DRILL_DIR at a larger volume",
            dir.display(),
            bytes(space.free),
            bytes(space.reserve())
        )
    })
}

/// `n` bytes for people: `512 MiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else if v >= 100.0 || v.fract() < 0.05 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The size of the files of the cluster in `pgdata`, without its WAL (a restore
/// brings none), when it holds one.
pub fn local_cluster(pgdata: &Path) -> Option<u64> {
    if !pgdata.join("PG_VERSION").is_file() {
        return None;
    }
    fn walk(p: &Path, top: bool) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        let mut total = 0;
        for e in entries.flatten() {
            if top && e.file_name() == "pg_wal" {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => total += walk(&e.path(), false),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
        total
    }
    Some(walk(pgdata, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn estimates() {
        // (stored, compressed, local, data, basis)
        let cases = [
            (10 * GIB, false, None, 10 * GIB, Basis::Objects),
            (10 * GIB, true, None, 30 * GIB, Basis::Compressed),
            (
                10 * GIB,
                true,
                Some(50 * GIB),
                50 * GIB,
                Basis::LocalCluster,
            ),
            (10 * GIB, true, Some(20 * GIB), 30 * GIB, Basis::Compressed),
            (10 * GIB, false, Some(GIB), 10 * GIB, Basis::Objects),
        ];
        for (stored, compressed, local, data, basis) in cases {
            let e = estimate(stored, compressed, local);
            assert_eq!(
                (e.data, e.basis),
                (data, basis),
                "{stored} {compressed} {local:?}"
            );
            assert_eq!(e.total(), data + WAL_HEADROOM + data / 10);
        }
    }

    #[test]
    fn room_table() {
        let dir = Path::new("/var/lib/postgresql/pgwarden-drill");
        let need = estimate(10 * GIB, false, None); // 10 + 1 + 1 = 12 GiB
                                                    // (free, size, fits)
        let cases = [
            (100 * GIB, 200 * GIB, true),
            (22 * GIB, 200 * GIB, true), // 12 + 10 (5%) = 22
            (21 * GIB, 200 * GIB, false),
            (12 * GIB, 12 * GIB, false),
            (0, 0, false),
        ];
        for (free, size, fits) in cases {
            let got = check(dir, "20261124T030000", &need, &Space { free, size });
            assert_eq!(got.is_ok(), fits, "{free} {size}: {got:?}");
        }
        let e = check(
            dir,
            "20261124T030000",
            &need,
            &Space {
                free: 3 * GIB / 2,
                size: 20 * GIB,
            },
        )
        .unwrap_err();
        assert_eq!(
            e,
            "PGWARDEN_DRILL_DIR: /var/lib/postgresql/pgwarden-drill has 1.5 GiB free, and a drill of backup 20261124T030000 needs 13 GiB: \
             10 GiB for the restored cluster (its data objects' size), 1 GiB for WAL replay, a 10% margin of 1 GiB, \
             and 1 GiB (5% of the file system) left free; make room, or point PGWARDEN_DRILL_DIR at a larger volume"
        );
        assert!(exhausted(
            dir,
            &Space {
                free: GIB,
                size: 100 * GIB
            }
        )
        .is_some());
        assert!(exhausted(
            dir,
            &Space {
                free: 6 * GIB,
                size: 100 * GIB
            }
        )
        .is_none());
    }

    #[test]
    fn sizes_for_people() {
        for (n, want) in [
            (0, "0 bytes"),
            (1023, "1023 bytes"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (512 << 20, "512 MiB"),
            (GIB + GIB / 2, "1.5 GiB"),
            (130 * GIB, "130 GiB"),
        ] {
            assert_eq!(bytes(n), want, "{n}");
        }
    }
}
