//! What the CLI prints: the instance table, and JSON documents for machines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatemesh_proto::pb;
use serde_json::{Value, json};

use crate::args::StrategyArg;
use crate::catalogue::CatalogueMethod;
use crate::client::code_name;

/// The instances under the admin API's field names (`InstanceInfo` in
/// `mesh.proto`), the names HTTP `/instances` uses too.
pub fn instances_json(instances: &[pb::InstanceInfo]) -> Value {
    Value::Array(
        instances
            .iter()
            .map(|i| {
                json!({
                    "instance_id": i.instance_id,
                    "environment": i.environment,
                    "version": i.version,
                    "methods": i.methods,
                    "remote_addr": i.remote_addr,
                    "connected_since_ms": i.connected_since_ms,
                    "last_seen_ms": i.last_seen_ms,
                    "in_flight": i.in_flight,
                    "calls_served": i.calls_served,
                    "errors": i.errors,
                    "proof": i.proof,
                })
            })
            .collect(),
    )
}

/// How long before `now` a Unix time in milliseconds was, to the second.
fn ago(unix_ms: u64, now: SystemTime) -> String {
    let then = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let age = now.duration_since(then).unwrap_or_default();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(age.as_secs()))
    )
}

/// A table with a header row, columns padded to their widest cell.
pub fn instances_table(instances: &[pb::InstanceInfo], now: SystemTime) -> String {
    const HEADER: [&str; 10] = [
        "ID",
        "ENV",
        "VERSION",
        "METHODS",
        "REMOTE",
        "CONNECTED",
        "LAST SEEN",
        "IN FLIGHT",
        "SERVED",
        "ERRORS",
    ];
    if instances.is_empty() {
        return "no instances connected\n".into();
    }
    let rows: Vec<[String; 10]> = instances
        .iter()
        .map(|i| {
            [
                i.instance_id.clone(),
                i.environment.clone(),
                i.version.clone(),
                i.methods.join(","),
                i.remote_addr.clone(),
                ago(i.connected_since_ms, now),
                ago(i.last_seen_ms, now),
                i.in_flight.to_string(),
                i.calls_served.to_string(),
                i.errors.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// One entry per result, under the admin API's names (`InstanceResult`):
/// who answered, how fast, and the answer (`payload`, decoded to JSON) or
/// the `status` it failed with, its code spelled as gRPC spells it.
pub fn call_json(
    method: &CatalogueMethod,
    strategy: StrategyArg,
    response: &pb::CallResponse,
) -> anyhow::Result<Value> {
    let mut results = Vec::with_capacity(response.results.len());
    for result in &response.results {
        let mut entry = json!({
            "instance_id": result.instance_id,
            "environment": result.environment,
            "latency_us": result.latency_us,
        });
        match &result.outcome {
            Some(pb::instance_result::Outcome::Payload(payload)) => {
                entry["payload"] = method.decode_json(payload)?;
            }
            Some(pb::instance_result::Outcome::Status(status)) => {
                entry["status"] = json!({
                    "code": code_name(status.code()),
                    "message": status.message,
                });
            }
            None => {
                entry["status"] = json!({"code": "UNKNOWN", "message": "no outcome"});
            }
        }
        results.push(entry);
    }
    Ok(json!({
        "method": method.name(),
        "strategy": strategy.to_string(),
        "results": results,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_header_and_aligned_columns() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = pb::InstanceInfo {
            instance_id: "prod-1".into(),
            environment: "prod".into(),
            version: "0.1.0".into(),
            methods: vec!["FindVPSByLease".into()],
            remote_addr: "127.0.0.1:5000".into(),
            connected_since_ms: 1_000_000_000 - 65_000,
            last_seen_ms: 1_000_000_000 - 2_000,
            in_flight: 1,
            calls_served: 42,
            errors: 3,
            proof: "spiffe".into(),
        };
        let table = instances_table(&[info], now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID      ENV   VERSION"), "{table}");
        assert!(lines[1].starts_with("prod-1  prod  0.1.0"), "{table}");
        assert!(
            lines[1].contains("1m 5s ago") && lines[1].contains("2s ago"),
            "{table}"
        );
        assert!(lines[1].ends_with("1          42      3"), "{table}");
        assert_eq!(instances_table(&[], now), "no instances connected\n");
    }
}
