//! The shipped alert rules (docs/alerts.yaml), with Debian's promtool: they load, their
//! unit tests (tests/alerts/alerts_test.yaml) pass, every rule has a test where it
//! fires and one where it does not, and the Grafana dashboard has a panel for each.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alert names in docs/alerts.yaml.
fn alerts() -> Vec<String> {
    let text = std::fs::read_to_string(repo("docs/alerts.yaml")).unwrap();
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

#[test]
fn the_rules_load_and_their_unit_tests_pass() {
    promtool(&["check", "rules", &repo("docs/alerts.yaml")]);
    promtool(&["test", "rules", &repo("tests/alerts/alerts_test.yaml")]);
}

#[test]
fn every_rule_is_tested_firing_and_not_firing() {
    let text = std::fs::read_to_string(repo("tests/alerts/alerts_test.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for alert in alerts() {
        let after = |expect: &str| {
            lines
                .windows(2)
                .any(|w| w[0] == format!("alertname: {alert}") && w[1] == expect)
        };
        assert!(after("exp_alerts:"), "{alert} has no test where it fires");
        assert!(
            after("exp_alerts: []"),
            "{alert} has no test where it does not fire"
        );
    }
}

/// Metric names (`pgwarden_*`, `process_*`) used in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["pgwarden_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            // Only whole names: not a suffix of another identifier.
            let whole = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
            if whole && !names.contains(&tail[..end].to_owned()) {
                names.push(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn the_dashboard_has_a_panel_for_each_alert_and_uses_documented_metrics() {
    let text = std::fs::read_to_string(repo("docs/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for alert in alerts() {
        assert!(titles.contains(&alert.as_str()), "no panel for {alert}");
    }
    let documented = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let rules = std::fs::read_to_string(repo("docs/alerts.yaml")).unwrap();
    for name in metric_names(&text).into_iter().chain(metric_names(&rules)) {
        assert!(
            documented.contains(&format!("`{name}`")),
            "{name} is used but not in docs/metrics.md"
        );
    }
}
