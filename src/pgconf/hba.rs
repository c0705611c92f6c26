//! User pg_hba.conf rules: tokenising and checking them before postgres sees them.
//!
//! postgres itself only reports a bad pg_hba.conf in its log when it reloads, and then
//! keeps the old file; at start-up it refuses to start. Checking here turns both into a
//! clear error naming `PGWARDEN_USER_HBA` and the line.

use std::net::IpAddr;

/// One checked rule, kept as its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    /// 1-based line in the user's file.
    pub line: usize,
    /// The tokens, with quotes preserved, re-joined with single spaces on output.
    pub tokens: Vec<String>,
}

impl HbaRule {
    /// The rule as one pg_hba.conf line.
    pub fn render(&self) -> String {
        self.tokens.join(" ")
    }
}

const TYPES: &[&str] = &[
    "local",
    "host",
    "hostssl",
    "hostnossl",
    "hostgssenc",
    "hostnogssenc",
];
const METHODS: &[&str] = &[
    "trust",
    "reject",
    "scram-sha-256",
    "md5",
    "password",
    "gss",
    "sspi",
    "ident",
    "peer",
    "ldap",
    "radius",
    "cert",
    "pam",
    "bsd",
];

/// True when `method` is an authentication method pg_hba.conf knows.
pub fn is_method(method: &str) -> bool {
    METHODS.contains(&method)
}

/// Parses and checks the user's rules; every bad line is reported.
pub fn parse_rules(text: &str) -> Result<Vec<HbaRule>, String> {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        match tokenize(raw).and_then(|t| check_rule(&t).map(|()| t)) {
            Ok(tokens) if tokens.is_empty() => {}
            Ok(tokens) => rules.push(HbaRule { line, tokens }),
            Err(msg) => problems.push(format!("line {line}: {msg}")),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems.join("; "))
    }
}

/// Parses and checks the user's pg_ident.conf maps (`MAPNAME SYSTEM-USERNAME
/// PG-USERNAME`); every bad line is reported. The map pgwarden uses for itself is
/// reserved, so that no user line can let another OS user in as the superuser.
pub fn parse_ident(text: &str) -> Result<Vec<HbaRule>, String> {
    let mut maps = Vec::new();
    let mut problems = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let checked = tokenize(raw).and_then(|t| {
            if t.is_empty() {
                return Ok(t);
            }
            if t.len() != 3 {
                return Err(format!(
                    "expected MAPNAME SYSTEM-USERNAME PG-USERNAME, found {} fields",
                    t.len()
                ));
            }
            if t[0].trim_matches('"') == super::IDENT_MAP {
                return Err(format!(
                    "the map name {:?} is pgwarden's own; choose another",
                    super::IDENT_MAP
                ));
            }
            if t[0].starts_with("include") {
                return Err("include directives are not supported".into());
            }
            Ok(t)
        });
        match checked {
            Ok(tokens) if tokens.is_empty() => {}
            Ok(tokens) => maps.push(HbaRule { line, tokens }),
            Err(msg) => problems.push(format!("line {line}: {msg}")),
        }
    }
    if problems.is_empty() {
        Ok(maps)
    } else {
        Err(problems.join("; "))
    }
}

/// Splits a line into tokens, honouring double quotes and `#` comments.
pub(crate) fn tokenize(raw: &str) -> Result<Vec<String>, String> {
    if raw.trim_end().ends_with('\\') {
        return Err("line continuations are not supported; write the rule on one line".into());
    }
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    for c in raw.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                cur.push(c);
            }
            '#' if !in_quotes => break,
            c if c.is_whitespace() && !in_quotes => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated double quote".into());
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    Ok(tokens)
}

pub(crate) fn check_rule(t: &[String]) -> Result<(), String> {
    let Some(kind) = t.first() else { return Ok(()) };
    if !TYPES.contains(&kind.as_str()) {
        if kind.starts_with("include") {
            return Err(format!(
                "{kind} is not supported; write the rules in this file"
            ));
        }
        return Err(format!(
            "unknown connection type {kind:?}; expected one of {}",
            TYPES.join(", ")
        ));
    }
    let method_at = if kind == "local" {
        3
    } else {
        let addr = t.get(3).ok_or("missing the address column")?;
        check_address(addr)?;
        if is_bare_ip(addr) {
            let mask = t
                .get(4)
                .ok_or("an address without /prefix needs a netmask column")?;
            mask.parse::<IpAddr>()
                .map_err(|_| format!("{mask:?} is not a netmask"))?;
            5
        } else {
            4
        }
    };
    if t.len() < 3 {
        return Err(format!(
            "expected at least {} columns, found {}",
            method_at + 1,
            t.len()
        ));
    }
    let method = t.get(method_at).ok_or_else(|| {
        format!(
            "expected at least {} columns (the last one the method), found {}",
            method_at + 1,
            t.len()
        )
    })?;
    if !METHODS.contains(&method.as_str()) {
        return Err(format!("unknown authentication method {method:?}"));
    }
    if kind == "local" && method == "cert" {
        return Err("cert authentication needs a host connection".into());
    }
    for opt in &t[method_at + 1..] {
        let Some((name, value)) = opt.split_once('=') else {
            return Err(format!("option {opt:?} is not name=value"));
        };
        check_option(name, value, kind)?;
    }
    Ok(())
}

/// Checks the options whose values postgres checks only when it loads pg_hba.conf,
/// which would otherwise fail the first start after initdb.
fn check_option(name: &str, value: &str, kind: &str) -> Result<(), String> {
    match name {
        "clientcert" => {
            if !matches!(value, "verify-ca" | "verify-full") {
                return Err(format!(
                    "clientcert={value}: expected verify-ca or verify-full"
                ));
            }
            if !kind.starts_with("hostssl") {
                return Err("clientcert can only be configured for hostssl rows".into());
            }
        }
        "clientname" if !matches!(value, "CN" | "DN") => {
            return Err(format!("clientname={value}: expected CN or DN"));
        }
        "include_realm" | "krb_realm_strip" | "ldaptls" | "compat_realm" | "upn_username"
            if !matches!(value, "0" | "1") =>
        {
            return Err(format!("{name}={value}: expected 0 or 1"));
        }
        _ => {}
    }
    Ok(())
}

fn is_bare_ip(addr: &str) -> bool {
    addr.parse::<IpAddr>().is_ok()
}

/// Checks one address column: a keyword, a CIDR, a bare IP (with a mask column after
/// it), or a host name.
fn check_address(addr: &str) -> Result<(), String> {
    if matches!(addr, "all" | "samehost" | "samenet") || is_bare_ip(addr) {
        return Ok(());
    }
    if let Some((ip, prefix)) = addr.split_once('/') {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{addr:?} is not a valid CIDR address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => return Ok(()),
            _ => {
                return Err(format!(
                    "{addr:?} has an invalid prefix length (0 to {max})"
                ))
            }
        }
    }
    let host = addr.strip_prefix('.').unwrap_or(addr);
    let looks_like_ip = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    let valid_host = !host.is_empty()
        && !looks_like_ip
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid_host {
        Ok(())
    } else {
        Err(format!(
            "{addr:?} is not an address, CIDR, host name, all, samehost or samenet"
        ))
    }
}

/// Parses `PGWARDEN_ALLOWED_NETWORK`: comma- or space-separated address columns.
pub fn parse_networks(text: &str) -> Result<Vec<String>, String> {
    let nets: Vec<String> = text
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if nets.is_empty() {
        return Err("no network given; use a CIDR list such as 10.0.0.0/8, or samenet".into());
    }
    for n in &nets {
        if is_bare_ip(n) {
            return Err(format!("{n:?} needs a prefix length, for example {n}/32"));
        }
        check_address(n)?;
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_rules() {
        let rules = parse_rules(
            "# app access\nhost app app 10.0.0.0/8 scram-sha-256\nhostssl all all ::1/128 cert clientcert=verify-full\n\
             host all all 192.168.1.5 255.255.255.255 md5\nlocal all \"all\" peer map=m\nhost all all .example.com scram-sha-256\n",
        )
        .unwrap();
        assert_eq!(rules.len(), 5);
        assert_eq!(rules[0].line, 2);
        assert_eq!(rules[3].render(), "local all \"all\" peer map=m");
    }

    #[test]
    fn rejects_bad_addresses_methods_and_columns() {
        for (rule, want) in [
            ("host all all 10.0.0.300/8 md5", "not a valid CIDR"),
            ("host all all 10.0.0.0/33 md5", "invalid prefix"),
            (
                "host all all 10.0.0.0/8 magic",
                "unknown authentication method",
            ),
            ("host all all", "missing the address"),
            ("local all", "expected at least"),
            ("hots all all 0.0.0.0/0 md5", "unknown connection type"),
            ("host all all 10.0.0.1 md5", "not a netmask"),
            ("host all all 0.0.0.0/0 md5 clientcert", "not name=value"),
            (
                "hostssl all all 0.0.0.0/0 md5 clientcert=bogus",
                "verify-ca or verify-full",
            ),
            ("host all all 0.0.0.0/0 md5 clientcert=verify-ca", "hostssl"),
            ("host all all 999.1.1.1 md5", "not an address"),
        ] {
            let err = parse_rules(rule).unwrap_err();
            assert!(err.contains(want), "{rule}: {err}");
        }
    }

    #[test]
    fn reports_every_bad_line() {
        let err =
            parse_rules("host all all bad!addr md5\nlocal all all peer\nlocal all\n").unwrap_err();
        assert!(
            err.starts_with("line 1:") && err.contains("line 3:"),
            "{err}"
        );
    }

    #[test]
    fn parses_allowed_networks() {
        assert_eq!(parse_networks("samenet").unwrap(), vec!["samenet"]);
        assert_eq!(
            parse_networks("10.0.0.0/8, 192.168.0.0/16").unwrap().len(),
            2
        );
        assert!(parse_networks("10.0.0.1").is_err());
        assert!(parse_networks("").is_err());
    }

    #[test]
    fn parses_ident_maps_and_reports_every_bad_line() {
        let maps =
            parse_ident("# comment\nops   alice   app_admin\nops /^(.*)@corp$ \\1\n\n").unwrap();
        let rendered: Vec<String> = maps.iter().map(|m| m.render()).collect();
        assert_eq!(rendered, ["ops alice app_admin", "ops /^(.*)@corp$ \\1"]);
        let err = parse_ident("ops alice\npgwarden root postgres\nok a b\nx y z w\n").unwrap_err();
        assert!(
            err.contains("line 1:") && err.contains("line 2:") && err.contains("line 4:"),
            "{err}"
        );
        assert!(!err.contains("line 3:"), "{err}");
        assert!(err.contains("pgwarden's own"), "{err}");
    }
}
