//! The names of a backup's data objects, barman-cloud's way: `data.tar[.gz]` is part
//! 0, then `data_0001.tar[.gz]`, `data_0002...` (each a complete tar; barman-cloud
//! starts a new one past `--max-archive-size`). A restore of a backup with a part
//! missing in the middle would come out incomplete, so the parts are checked before
//! anything is extracted.

/// A data object's part number and what follows it (`.tar.gz`); `None` when `name`
/// (the key's last component) is not a part of `data`.
pub fn part_of(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("data")?;
    if rest.starts_with('.') {
        return Some((0, rest));
    }
    let digits = rest.strip_prefix('_')?;
    let end = digits.find('.')?;
    let (n, ext) = digits.split_at(end);
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((n.parse().ok()?, ext))
}

/// The name of part `n` of `data` with extension `ext` (`.tar.gz`): `data.tar.gz`,
/// then `data_0001.tar.gz`, ... (barman-cloud's `_build_dest_name`).
pub fn name(n: u32, ext: &str) -> String {
    if n == 0 {
        format!("data{ext}")
    } else {
        format!("data_{n:04}{ext}")
    }
}

/// Orders `names` (data object names) by part and checks that they run from part 0
/// without a gap; `expected` is the count a `backup.info` records (pgwarden's do),
/// which also catches a missing last part. The error names the missing part.
pub fn in_order(names: &[String], expected: Option<u32>) -> Result<Vec<String>, String> {
    let mut parts: Vec<(u32, &String)> = Vec::with_capacity(names.len());
    for name in names {
        let (n, _) = part_of(name).ok_or_else(|| format!("{name} is not a data part"))?;
        if parts.iter().any(|(m, _)| *m == n) {
            return Err(format!("part {n} is stored twice (two codecs?): {name}"));
        }
        parts.push((n, name));
    }
    parts.sort();
    let ext = parts.first().map_or(".tar", |(_, name)| {
        part_of(name).map_or(".tar", |(_, ext)| ext)
    });
    let name_of = |n: u32| name(n, ext);
    for (i, (n, _)) in parts.iter().enumerate() {
        let want = i as u32;
        if *n != want {
            return Err(format!("data part {} is missing", name_of(want)));
        }
    }
    if let Some(count) = expected {
        let have = parts.len() as u32;
        if have < count {
            return Err(format!(
                "data part {} is missing (backup.info records {count} parts)",
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
        assert_eq!(part_of("data.tar.gz"), Some((0, ".tar.gz")));
        assert_eq!(part_of("data_0001.tar"), Some((1, ".tar")));
        assert_eq!(part_of("data_12345.tar.bz2"), Some((12345, ".tar.bz2")));
        for not in [
            "datum.tar",
            "data_.tar",
            "data_x1.tar",
            "16384.tar.gz",
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
            let got = in_order(&names(given), *expected);
            match want {
                Ok(w) => assert_eq!(got, Ok(names(w)), "{given:?}"),
                Err(e) => assert_eq!(got, Err(e.to_string()), "{given:?}"),
            }
        }
    }
}
