//! What an operator is paged by and looks at (issue 26): the alert rules,
//! their promtool unit tests, the scrape config in `deploy/prometheus/`
//! and the Grafana dashboard in `deploy/grafana/`. promtool accepts them
//! and the unit tests pass; every alert is tested firing and silent; the
//! dashboard's queries parse, use its datasource input, and cover every
//! metric the alerts use; and every metric and label value they name is
//! one a live gateway (or instance) exports.

mod common;
mod dnsmasq_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::e2e::{self, Need};
use common::*;
use dnsmasq_support::TempDir;
use gatemesh_node::{Node, NodeSettings};
use tokio::net::TcpListener;

const RULES: &str = "deploy/prometheus/gatemesh.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/gatemesh.rules.test.yml";
const SCRAPE_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/gatemesh.json";

/// Metrics the rules and the dashboard use that no gateway exports yet;
/// `the_awaited_metrics_are_exported_too` says when they land. None now:
/// `gatemesh_auth_refused_total` came with issue 24.
const AWAITED: &[&str] = &[];

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// `promtool args...`: whether it succeeded, and what it printed.
fn promtool(args: &[&str]) -> (bool, String) {
    let program = e2e::find_program("promtool").expect("asked for with e2e::require");
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The names in `text` that look like gatemesh's or the process metrics'
/// (`gatemesh_...`, `process_...`), wherever they appear: in expressions,
/// test series, and the descriptions that tell the operator where to look.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        // A colon ends a sentence's name, not a recording rule's.
        .map(|word| word.trim_end_matches(':'))
        .filter(|word| word.starts_with("gatemesh_") || word.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// The `expr:` of each rule, folded (`>-`) ones joined into one line.
fn rule_exprs(rules: &str) -> Vec<String> {
    let lines: Vec<&str> = rules.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with(['>', '|']) {
            exprs.push(value.to_string());
            continue;
        }
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect();
        exprs.push(body.join(" ").trim().to_string());
    }
    exprs
}

/// The alert names of the rules file.
fn alert_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect()
}

/// The dashboard's queries: each panel target's and each annotation's,
/// with Grafana's variables replaced by what Prometheus would get.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("panels");
    let annotations = dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .chain(annotations.iter().cloned())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target and annotation has an expr")
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
        })
        .collect()
}

/// `label="value"` pairs an expression's matchers expect to exist:
/// equality matchers and the literal alternatives of regex matchers, for
/// labels the gateway sets (not Prometheus' `job` and `instance`).
fn expected_label_values(expr: &str) -> BTreeSet<String> {
    let mut pairs = BTreeSet::new();
    for matchers in expr.split('{').skip(1) {
        let Some((matchers, _)) = matchers.split_once('}') else {
            continue;
        };
        for matcher in matchers.split(',') {
            let matcher = matcher.trim();
            let Some(op) = matcher.find(['=', '!']) else {
                continue;
            };
            let (label, rest) = matcher.split_at(op);
            let value = rest.trim_start_matches(['=', '!', '~']).trim_matches('"');
            if ["job", "instance", "alertname", "alertstate"].contains(&label.trim()) {
                continue;
            }
            for alternative in value.split('|') {
                if !alternative.is_empty()
                    && alternative
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '+')
                {
                    pairs.insert(format!("{}=\"{alternative}\"", label.trim()));
                }
            }
        }
    }
    pairs
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config_that_loads_them() {
    if !e2e::require(&[Need::Promtool]) {
        return;
    }
    let (ok, report) = promtool(&["check", "rules", RULES]);
    assert!(ok, "promtool check rules {RULES}:\n{report}");
    // Also checks that rule_files names the rules file.
    let (ok, report) = promtool(&["check", "config", SCRAPE_CONFIG]);
    assert!(ok, "promtool check config {SCRAPE_CONFIG}:\n{report}");
    assert!(
        report.contains("gatemesh.rules.yml") && report.contains("1 rule files found"),
        "{SCRAPE_CONFIG} does not load the rules:\n{report}"
    );
}

#[test]
fn the_promtool_unit_tests_of_the_rules_pass() {
    if !e2e::require(&[Need::Promtool]) {
        return;
    }
    let (ok, report) = promtool(&["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{report}");
}

#[test]
fn every_alert_is_tested_firing_and_silent() {
    let alerts = alert_names(&read(RULES));
    assert!(alerts.len() >= 12, "{alerts:?}");
    let tests = read(RULE_TESTS);
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            let name = name.trim().to_string();
            assert!(
                alerts.contains(&name),
                "{RULE_TESTS} tests {name}, which {RULES} does not define"
            );
            current = Some(name);
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after its alertname");
            if expected.trim() == "[]" {
                silent.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for alert in &alerts {
        assert!(firing.contains(alert), "no test makes {alert} fire");
        assert!(silent.contains(alert), "no test shows {alert} silent");
    }
}

#[test]
fn the_dashboard_imports_with_its_datasource_and_covers_every_alerts_metrics() {
    let text = read(DASHBOARD);
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // Importable: the datasource is an input the import asks for, and
    // every panel and query uses it.
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric id")),
            "{panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{target}");
        }
    }
    // A panel for each metric an alert is about.
    let shown = metric_names(&dashboard_exprs(&dashboard).join("\n"));
    let alerted = metric_names(&rule_exprs(&read(RULES)).join("\n"));
    let missing: Vec<_> = alerted.difference(&shown).collect();
    assert!(missing.is_empty(), "no dashboard panel shows {missing:?}");

    // Every query parses: promtool checks them as recording rules.
    if !e2e::require(&[Need::Promtool]) {
        return;
    }
    let dir = TempDir::new("dashboard-queries");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in dashboard_exprs(&dashboard).iter().enumerate() {
        let expr = serde_json::to_string(expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {expr}\n"
        ));
    }
    let file = dir.join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let (ok, report) = promtool(&["check", "rules", &file.to_string_lossy()]);
    assert!(ok, "a query of {DASHBOARD} does not parse:\n{report}");
}

/// The metric names and `label="value"` pairs of a live gateway with
/// every component on (the DHCP manager, the IP allocator) and an
/// instance connected, and of that instance's own `/metrics`.
async fn live_exposition() -> (BTreeSet<String>, String) {
    init_logs();
    let dir = TempDir::new("alerts-live");
    std::fs::write(dir.join("dnsmasq.leases"), "").unwrap();
    let mut settings = NodeSettings::new(config());
    settings.dhcp.dhcp_leases_file = Some(dir.join("dnsmasq.leases"));
    settings.dhcp.dhcp_hosts_file = Some(dir.join("vps.hosts"));
    settings.ipam.ip_pool = Some("10.98.0.10-10.98.0.20".into());
    settings.ipam.ip_reservations_file = Some(dir.join("vps.dhcp-hosts"));
    let node = Node::start(settings).unwrap();
    let dhcp = node.dhcp.expect("the DHCP manager is on");
    let gw = TestGateway::serve(
        node.gateway,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let http = common::http::serve(&gw.gateway).await;

    let (instance, _, instance_http) = common::http::serve_instance(&gw, "inst-a", "prod").await;
    gw.wait_instances(1).await;
    assert!(dhcp.handle.wait_until(|s| s.running).await);

    let (_, gateway_metrics) = common::http::get(http, "/metrics").await;
    let (_, instance_metrics) = common::http::get(instance_http, "/metrics").await;
    instance.shutdown().await;
    dhcp.stop().await;
    gw.stop().await;

    let text = format!("{gateway_metrics}\n{instance_metrics}");
    let names = text
        .lines()
        .filter_map(|line| match line.strip_prefix('#') {
            // `# HELP name ...`, `# TYPE name ...`: families, so a
            // histogram's name counts beside its `_bucket` samples.
            Some(meta) => meta.split_whitespace().nth(1),
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    (names, text)
}

/// What the shipped rules, their tests and the dashboard name.
fn names_used() -> BTreeSet<String> {
    [RULES, RULE_TESTS, DASHBOARD]
        .iter()
        .flat_map(|file| metric_names(&read(file)))
        .collect()
}

/// The label values the rules' and the dashboard's matchers expect.
fn label_values_used() -> BTreeSet<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    rule_exprs(&read(RULES))
        .into_iter()
        .chain(dashboard_exprs(&dashboard))
        .flat_map(|expr| expected_label_values(&expr))
        .collect()
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let used = names_used();
    for awaited in AWAITED {
        assert!(used.contains(*awaited), "nothing uses {awaited} any more");
    }
    let (exported, text) = live_exposition().await;
    let missing: Vec<_> = used
        .iter()
        .filter(|name| !AWAITED.contains(&name.as_str()) && !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "named in {RULES}, {RULE_TESTS} or {DASHBOARD} but not exported by a live gateway or instance: {missing:?}"
    );
    let values: Vec<_> = label_values_used()
        .into_iter()
        .filter(|pair| !text.contains(pair.as_str()))
        .collect();
    assert!(
        values.is_empty(),
        "matched on by {RULES} or {DASHBOARD} but on no exported series: {values:?}"
    );
}

/// A metric awaited by the rules is exported once it lands; and the
/// refusal counter's series in the rules' unit tests use label values the
/// gateway exports (`port` and `reason`, every pair from the start), so
/// the alert's tests exercise series that exist.
#[tokio::test]
async fn the_awaited_metrics_are_exported_too() {
    let (exported, text) = live_exposition().await;
    for awaited in AWAITED {
        assert!(exported.contains(*awaited), "{awaited} is not exported yet");
    }
    let tests = read(RULE_TESTS);
    let series: Vec<&str> = tests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- series: '"))
        .filter(|s| s.starts_with("gatemesh_auth_refused_total{"))
        .collect();
    assert!(!series.is_empty(), "{RULE_TESTS} tests the refusal alert");
    let value = |series: &str, label: &str| -> String {
        let start = series
            .find(&format!("{label}=\""))
            .unwrap_or_else(|| panic!("{series}: no {label} label"));
        let rest = &series[start + label.len() + 2..];
        rest[..rest.find('"').unwrap()].to_string()
    };
    for series in series {
        let exported_series = format!(
            "gatemesh_auth_refused_total{{port=\"{}\",reason=\"{}\"}}",
            value(series, "port"),
            value(series, "reason")
        );
        assert!(
            text.contains(&exported_series),
            "{RULE_TESTS} tests {series}, but a gateway exports no {exported_series}"
        );
    }
}
