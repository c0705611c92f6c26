//! The `?lag=` of `/replica` and `/read-only`: bytes, or a size with PostgreSQL's
//! memory units as Patroni accepts them (`16kB`, `64MB`, `1GB`).

/// Parses a lag bound into bytes. Units are powers of 1024, as in postgresql.conf, and
/// are matched without regard to case so that `16mb` does not silently mean 16 bytes.
pub fn parse_lag(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("lag={text:?}: expected bytes or a size such as 16MB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => {
            return Err(format!(
                "lag={text:?}: unknown unit {unit:?} (use B, kB, MB, GB or TB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("lag={text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_and_units() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("1", Some(1)),
            ("1048576", Some(1 << 20)),
            ("16kB", Some(16 << 10)),
            ("16MB", Some(16 << 20)),
            ("16mb", Some(16 << 20)),
            ("1GB", Some(1 << 30)),
            ("2TB", Some(2 << 40)),
            ("10 MB", Some(10 << 20)),
            ("512B", Some(512)),
            ("", None),
            ("MB", None),
            ("-1", None),
            ("1.5MB", None),
            ("16MiB", None),
            ("16 parsecs", None),
            ("99999999999TB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_lag(text).ok(), *want, "{text:?}");
        }
    }
}
