//! The names of a backup's data objects, barman-cloud's way: PGDATA goes into
//! `data.tar[.gz]` (part 0), then `data_0001.tar[.gz]`, `data_0002...`, and each
//! tablespace into `<oid>.tar[.gz]`, `<oid>_0001.tar[.gz]`, ... (each a complete tar;
//! barman-cloud starts a new one past `--max-archive-size`, barman's
//! `_build_dest_name`). A restore of a backup with a part missing in the middle would
//! come out incomplete, so the parts are checked before anything is extracted.

/// What a data object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holds {
    /// The data directory.
    Data,
    /// The tablespace of this oid (its `PG_<major>_<catversion>` directory).
    Tablespace(u32),
}

impl Holds {
    /// The name its objects start with: `data`, or the tablespace's oid.
    pub fn stem(&self) -> String {
        match self {
            Holds::Data => "data".to_owned(),
            Holds::Tablespace(oid) => oid.to_string(),
        }
    }

    /// What messages call it.
    fn what(&self) -> String {
        match self {
            Holds::Data => "data part".to_owned(),
            Holds::Tablespace(oid) => format!("tablespace {oid}'s part"),
        }
    }
}

/// What an incremental backup's data objects' names start with (`incr-data.tar.gz`,
/// `incr-16384_0001.tar.gz`): barman-cloud-restore looks for `data.tar*` and
/// `<oid>.tar*`, finds none, and refuses the backup instead of restoring only the
/// changed blocks as if they were a whole cluster.
pub const INCREMENTAL_PREFIX: &str = "incr-";

/// What a data object holds, its part number and what follows it (`.tar.gz`); `None`
/// when `name` (the key's last component) is not a data object. An incremental
/// backup's names ([`INCREMENTAL_PREFIX`]) are read the same way.
pub fn part_of(name: &str) -> Option<(Holds, u32, &str)> {
    let name = name.strip_prefix(INCREMENTAL_PREFIX).unwrap_or(name);
    let stem_end = name.find(['.', '_'])?;
    let (stem, rest) = name.split_at(stem_end);
    let holds = if stem == "data" {
        Holds::Data
    } else if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
        Holds::Tablespace(stem.parse().ok()?)
    } else {
        return None;
    };
    if rest.starts_with('.') {
        return Some((holds, 0, rest));
    }
    let digits = rest.strip_prefix('_')?;
    let end = digits.find('.')?;
    let (n, ext) = digits.split_at(end);
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((holds, n.parse().ok()?, ext))
}

/// The name of part `n` of what `holds` with extension `ext` (`.tar.gz`):
/// `data.tar.gz`, then `data_0001.tar.gz`, ...; `16384.tar.gz`, `16384_0001.tar.gz`.
pub fn name(holds: Holds, n: u32, ext: &str) -> String {
    let stem = holds.stem();
    if n == 0 {
        format!("{stem}{ext}")
    } else {
        format!("{stem}_{n:04}{ext}")
    }
}

/// Orders `names` (the object names of what `holds`) by part and checks that they run
/// from part 0 without a gap; `expected` is the count a `backup.info` records
/// (pgwarden's do), which also catches a missing last part. The error names the
/// missing part.
pub fn in_order(
    holds: Holds,
    names: &[String],
    expected: Option<u32>,
) -> Result<Vec<String>, String> {
    let mut parts: Vec<(u32, &String)> = Vec::with_capacity(names.len());
    for name in names {
        let (h, n, _) = part_of(name).ok_or_else(|| format!("{name} is not a data part"))?;
        if h != holds {
            return Err(format!("{name} is not a {}", holds.what()));
        }
        if parts.iter().any(|(m, _)| *m == n) {
            return Err(format!("part {n} is stored twice (two codecs?): {name}"));
        }
        parts.push((n, name));
    }
    parts.sort();
    let ext = parts.first().map_or(".tar", |(_, name)| {
        part_of(name).map_or(".tar", |(_, _, ext)| ext)
    });
    let name_of = |n: u32| name(holds, n, ext);
    let what = holds.what();
    for (i, (n, _)) in parts.iter().enumerate() {
        let want = i as u32;
        if *n != want {
            return Err(format!("{what} {} is missing", name_of(want)));
        }
    }
    if let Some(count) = expected {
        let have = parts.len() as u32;
        if have < count {
            return Err(format!(
                "{what} {} is missing (backup.info records {count} parts)",
                name_of(have)
            ));
        }
        if have > count {
            return Err(format!(
                "{} parts are stored but backup.info records {count}",
                have
            ));
        }
    }
    Ok(parts.into_iter().map(|(_, n)| n.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_part_names() {
        assert_eq!(part_of("data.tar.gz"), Some((Holds::Data, 0, ".tar.gz")));
        assert_eq!(part_of("data_0001.tar"), Some((Holds::Data, 1, ".tar")));
        assert_eq!(
            part_of("data_12345.tar.bz2"),
            Some((Holds::Data, 12345, ".tar.bz2"))
        );
        assert_eq!(
            part_of("16384.tar.gz"),
            Some((Holds::Tablespace(16384), 0, ".tar.gz"))
        );
        assert_eq!(
            part_of("16384_0002.tar"),
            Some((Holds::Tablespace(16384), 2, ".tar"))
        );
        for not in [
            "datum.tar",
            "data_.tar",
            "data_x1.tar",
            "16a84.tar.gz",
            "_0001.tar",
            "backup.info",
            "data",
        ] {
            assert_eq!(part_of(not), None, "{not}");
        }
    }

    #[test]
    fn parts_run_from_zero_without_a_gap() {
        type Case<'a> = (&'a [&'a str], Option<u32>, Result<&'a [&'a str], &'a str>);
        let cases: &[Case] = &[
            (&["data.tar.gz"], None, Ok(&["data.tar.gz"])),
            (
                &["data_0002.tar.gz", "data.tar.gz", "data_0001.tar.gz"],
                None,
                Ok(&["data.tar.gz", "data_0001.tar.gz", "data_0002.tar.gz"]),
            ),
            (
                &["data.tar.gz", "data_0002.tar.gz"],
                None,
                Err("data part data_0001.tar.gz is missing"),
            ),
            (
                &["data_0001.tar"],
                None,
                Err("data part data.tar is missing"),
            ),
            (
                &["data.tar.gz", "data_0001.tar.gz"],
                Some(3),
                Err("data part data_0002.tar.gz is missing (backup.info records 3 parts)"),
            ),
            (
                &["data.tar.gz", "data_0001.tar.gz"],
                Some(1),
                Err("2 parts are stored but backup.info records 1"),
            ),
            (
                &["data.tar.gz", "data.tar.bz2"],
                None,
                Err("part 0 is stored twice (two codecs?): data.tar.bz2"),
            ),
        ];
        for (given, expected, want) in cases {
            let got = in_order(Holds::Data, &names(given), *expected);
            match want {
                Ok(w) => assert_eq!(got, Ok(names(w)), "{given:?}"),
                Err(e) => assert_eq!(got, Err(e.to_string()), "{given:?}"),
            }
        }
    }

    #[test]
    fn tablespace_parts_are_named_and_checked_as_data_parts_are() {
        let t = Holds::Tablespace(16384);
        assert_eq!(name(t, 0, ".tar.gz"), "16384.tar.gz");
        assert_eq!(name(t, 3, ".tar"), "16384_0003.tar");
        for n in 0..3 {
            assert_eq!(part_of(&name(t, n, ".tar.gz")), Some((t, n, ".tar.gz")));
        }
        assert_eq!(
            in_order(t, &names(&["16384_0001.tar.gz", "16384.tar.gz"]), Some(2)),
            Ok(names(&["16384.tar.gz", "16384_0001.tar.gz"]))
        );
        assert_eq!(
            in_order(t, &names(&["16384.tar.gz"]), Some(2)),
            Err("tablespace 16384's part 16384_0001.tar.gz is missing (backup.info records 2 parts)".into())
        );
        assert_eq!(
            in_order(t, &names(&["data.tar.gz"]), None),
            Err("data.tar.gz is not a tablespace 16384's part".into())
        );
    }
}
