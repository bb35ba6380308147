//! The documented configuration and the shipped one agree: every variable
//! in README's configuration tables is in the env example of its binary
//! (`deploy/env/*.env.example`) and the reverse, with the same default
//! where the example shows one; and the systemd units in `deploy/` match
//! the paths and scale README gives.
//!
//! Conventions read here, stated in the files themselves:
//! - README: a configuration table has a `variable` column and a `default`
//!   column; a default that is one code span (`1537`, `text`) is a
//!   literal, anything else (`required`, `hostname`, `unset (...)`, another
//!   variable's name) is prose.
//! - env examples: `VAR=value` is a setting the example chooses,
//!   `# VAR=value` shows the default (or, when there is no literal default,
//!   an example value). Each variable appears once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const GATEWAY_ENV: &str = "deploy/env/vps-gateway.env.example";
const SERVICE_ENV: &str = "deploy/env/vps-service.env.example";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A variable's documented default: a literal value, or prose.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Default {
    Literal(String),
    Prose(String),
}

fn is_variable_name(s: &str) -> bool {
    s.len() > 1
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let inner = line
        .strip_prefix('|')
        .and_then(|l| l.strip_suffix('|'))
        .unwrap_or(line);
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// The code spans of `cell`: `` `A`, `B` `` gives `A`, `B`.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// Every variable of README's configuration tables, with its default and
/// the line it is on.
fn readme_variables() -> BTreeMap<String, (Default, usize)> {
    let readme = read("README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let mut vars = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let header = cells(lines[i]);
        let is_table = lines[i].trim_start().starts_with('|')
            && header.first().map(String::as_str) == Some("variable");
        let Some(default_col) = header.iter().position(|c| c == "default") else {
            i += 1;
            continue;
        };
        if !is_table {
            i += 1;
            continue;
        }
        i += 2; // header and separator
        while i < lines.len() && lines[i].trim_start().starts_with('|') {
            let row = cells(lines[i]);
            let default_cell = row.get(default_col).cloned().unwrap_or_default();
            let spans = code_spans(&default_cell);
            let default = match spans.as_slice() {
                [one] if default_cell == format!("`{one}`") && !is_variable_name(one) => {
                    Default::Literal(one.to_string())
                }
                _ => Default::Prose(default_cell.clone()),
            };
            for name in code_spans(&row[0]) {
                assert!(
                    is_variable_name(name),
                    "README.md:{}: `{name}` in a configuration table is not a variable name",
                    i + 1
                );
                let previous = vars.insert(name.to_string(), (default.clone(), i + 1));
                if let Some((other, line)) = previous {
                    assert_eq!(
                        other,
                        default,
                        "README.md: {name} is in two configuration tables (lines {line} and {}) \
                         with different defaults",
                        i + 1
                    );
                }
            }
            i += 1;
        }
    }
    vars
}

/// One `VAR=value` line of an env example.
#[derive(Debug)]
struct EnvLine {
    value: String,
    commented: bool,
    line: usize,
}

fn env_example(path: &str) -> BTreeMap<String, EnvLine> {
    let mut vars = BTreeMap::new();
    for (n, raw) in read(path).lines().enumerate() {
        let (commented, text) = match raw.trim_start().strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, raw.trim_start()),
        };
        let Some((name, rest)) = text.split_once('=') else {
            continue;
        };
        if !is_variable_name(name) {
            continue;
        }
        let value = rest.split_whitespace().next().unwrap_or("").to_string();
        let entry = EnvLine {
            value,
            commented,
            line: n + 1,
        };
        if let Some(first) = vars.insert(name.to_string(), entry) {
            panic!(
                "{path}:{}: {name} appears again (first on line {}); one line per variable",
                n + 1,
                first.line
            );
        }
    }
    vars
}

/// The env examples a variable belongs in, by the binary that reads it.
fn examples_for(name: &str) -> &'static [&'static str] {
    if name.starts_with("GATEWAY_") {
        &[GATEWAY_ENV]
    } else if name.starts_with("VPS_") {
        &[SERVICE_ENV]
    } else {
        // Read by both binaries (RUST_LOG).
        &[GATEWAY_ENV, SERVICE_ENV]
    }
}

#[test]
fn readme_configuration_tables_and_env_examples_list_the_same_variables() {
    let documented = readme_variables();
    assert!(
        documented.len() > 30 && documented.contains_key("GATEWAY_API_SECRET"),
        "README's configuration tables were not found: {documented:?}"
    );
    let examples: BTreeMap<&str, BTreeMap<String, EnvLine>> = [GATEWAY_ENV, SERVICE_ENV]
        .into_iter()
        .map(|path| (path, env_example(path)))
        .collect();

    let mut problems = Vec::new();
    for (name, (default, line)) in &documented {
        for path in examples_for(name) {
            let Some(example) = examples[path].get(name) else {
                problems.push(format!(
                    "{name} (README.md:{line}) is missing from {path}: add `# {name}=...` \
                     (commented: the default) or `{name}=...`"
                ));
                continue;
            };
            if let (Default::Literal(default), true) = (default, example.commented)
                && example.value != *default
            {
                problems.push(format!(
                    "{name}: {path}:{} shows the default `{}`, README.md:{line} says `{default}`",
                    example.line, example.value
                ));
            }
        }
    }
    for (path, vars) in &examples {
        for (name, example) in vars {
            if !documented.contains_key(name) {
                problems.push(format!(
                    "{name} ({path}:{}) is in none of README's configuration tables: \
                     document it there (variable, default, meaning)",
                    example.line
                ));
            } else if !examples_for(name).contains(path) {
                problems.push(format!(
                    "{name} ({path}:{}) is not read by that binary",
                    example.line
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "README.md and deploy/env disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// `Key=value` settings of a unit file and its drop-ins, in order.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    let mut files = vec![root().join("deploy/systemd").join(unit)];
    if let Ok(dir) = std::fs::read_dir(root().join("deploy/systemd").join(format!("{unit}.d"))) {
        let mut drop_ins: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        drop_ins.sort();
        files.extend(drop_ins);
    }
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with('['))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Whether `unit` may write `path`: under `/run/<RuntimeDirectory>` or a
/// `ReadWritePaths=` entry (`ProtectSystem=strict` makes the rest read-only).
fn writable(settings: &[(String, String)], path: &Path) -> bool {
    let runtime = values(settings, "RuntimeDirectory")
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(|d| PathBuf::from("/run").join(d));
    let read_write = values(settings, "ReadWritePaths")
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(|p| PathBuf::from(p.trim_start_matches('-')));
    runtime.chain(read_write).any(|dir| path.starts_with(dir))
}

#[test]
fn units_env_examples_and_readme_agree_on_paths_limits_and_credentials() {
    let readme = read("README.md");
    let documented = readme_variables();
    for (unit, binary, env_file) in [
        (
            "vps-gateway.service",
            "vps-gateway",
            "/etc/gatemesh/vps-gateway.env",
        ),
        (
            "vps-service.service",
            "vps-service",
            "/etc/gatemesh/vps-service.env",
        ),
    ] {
        let settings = unit_settings(unit);
        // A bare name: systemd finds the package's /usr/bin and a manual
        // install's /usr/local/bin alike.
        assert_eq!(values(&settings, "ExecStart"), [binary], "{unit}");
        assert_eq!(values(&settings, "EnvironmentFile"), [env_file], "{unit}");
        assert!(
            readme.contains(&format!("target/release/{binary}"))
                && readme.contains("/usr/local/bin/")
                && readme.contains(env_file),
            "README's install steps name {binary}, /usr/local/bin and {env_file} ({unit})"
        );

        // 10,000 instances: one descriptor each, with room to spare.
        let limit = values(&settings, "LimitNOFILE");
        let [limit] = limit.as_slice() else {
            panic!("{unit}: one LimitNOFILE= expected, found {limit:?}");
        };
        let soft = limit.split(':').next().unwrap();
        assert!(
            soft == "infinity" || soft.parse::<u64>().unwrap() >= 16_384,
            "{unit}: LimitNOFILE={limit} is too low for 10,000 instances"
        );

        // Credentials: each %d/NAME a variable points at is loaded, and
        // each variable is a documented one.
        let loaded: BTreeSet<&str> = values(&settings, "LoadCredential")
            .into_iter()
            .map(|v| v.split(':').next().unwrap())
            .collect();
        for env in values(&settings, "Environment") {
            let (name, value) = env.split_once('=').unwrap();
            assert!(
                documented.contains_key(name),
                "{unit}: Environment={env} sets {name}, which README does not document"
            );
            if let Some(credential) = value.strip_prefix("%d/") {
                assert!(
                    loaded.contains(credential),
                    "{unit}: {name} points at credential {credential:?}, but no \
                     LoadCredential={credential}:... loads it (loaded: {loaded:?})"
                );
            }
        }
        if unit == "vps-service.service" {
            assert_eq!(values(&settings, "DynamicUser"), ["yes"], "{unit}");
            for var in ["VPS_TLS_CA", "VPS_TLS_CERT", "VPS_TLS_KEY"] {
                assert!(
                    values(&settings, "Environment")
                        .iter()
                        .any(|e| e.starts_with(&format!("{var}=%d/"))),
                    "{unit}: a DynamicUser reads {var} from its credentials (%d/...)"
                );
            }
        }
    }

    // The DHCP manager's hosts file: where README's example, the env
    // example and dnsmasq's snippet put it, the gateway's unit can write.
    let gateway = unit_settings("vps-gateway.service");
    let example = env_example(GATEWAY_ENV);
    let hosts = &example
        .get("GATEWAY_DHCP_HOSTS_FILE")
        .expect("GATEWAY_DHCP_HOSTS_FILE in the env example")
        .value;
    assert!(
        writable(&gateway, Path::new(hosts)),
        "vps-gateway.service cannot write {hosts} (GATEWAY_DHCP_HOSTS_FILE in {GATEWAY_ENV}) \
         under ProtectSystem=strict: add RuntimeDirectory= or ReadWritePaths="
    );
    for line in readme
        .lines()
        .filter(|l| l.contains("GATEWAY_DHCP_HOSTS_FILE="))
    {
        let path = line
            .split("GATEWAY_DHCP_HOSTS_FILE=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(['`', ',', '.', ')']);
        assert_eq!(
            path, hosts,
            "README's DHCP example and {GATEWAY_ENV} name different hosts files"
        );
    }
    assert!(
        read("deploy/dnsmasq/gatemesh.conf").contains(&format!("addn-hosts={hosts}\n")),
        "deploy/dnsmasq/gatemesh.conf must point dnsmasq at {hosts}"
    );
    // The IP allocator's reservations: a path the unit can write and
    // dnsmasq's snippet reads as its dhcp-hostsfile.
    let reservations = &example
        .get("GATEWAY_IP_RESERVATIONS_FILE")
        .expect("GATEWAY_IP_RESERVATIONS_FILE in the env example")
        .value;
    assert!(
        writable(&gateway, Path::new(reservations)),
        "vps-gateway.service cannot write {reservations} (GATEWAY_IP_RESERVATIONS_FILE)"
    );
    assert!(
        !reservations.starts_with("/run/"),
        "the reservations are state: {reservations} would not survive a reboot"
    );
    assert!(
        read("deploy/dnsmasq/gatemesh.conf").contains(&format!("dhcp-hostsfile={reservations}\n")),
        "deploy/dnsmasq/gatemesh.conf must point dnsmasq's dhcp-hostsfile at {reservations}"
    );
    // Debian's dnsmasq user has group nogroup; a fixed Group=dnsmasq does not
    // exist there. The gateway runs as a dynamic user with CAP_KILL instead.
    assert_eq!(values(&gateway, "DynamicUser"), ["yes"]);
    assert_eq!(values(&gateway, "AmbientCapabilities"), ["CAP_KILL"]);
    assert!(values(&gateway, "Group").is_empty());
}

/// The CLI's variables (`[env: ...]` in its help) are in README's CLI
/// section, where operators look for them.
#[test]
fn every_variable_the_cli_reads_is_in_the_readme_cli_section() {
    let readme = read("README.md");
    let start = readme.find("\n## CLI\n").expect("README has a CLI section");
    let section = &readme[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_gatemesh"))
        .args(["call", "--help"])
        .env_clear()
        .output()
        .expect("run gatemesh --help");
    let help = String::from_utf8(help.stdout).unwrap();
    let vars: BTreeSet<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    assert!(vars.contains("GATEMESH_TLS_CA"), "{help}");
    let missing: Vec<&&str> = vars
        .iter()
        .filter(|v| !section.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's CLI section does not mention {missing:?}, which `gatemesh` reads"
    );
}

/// `job_name` -> its `targets` in a Prometheus config's `scrape_configs`,
/// read line by line: enough for the static configs of
/// `deploy/prometheus/prometheus.yml`.
fn scrape_targets(config: &str) -> BTreeMap<String, Vec<String>> {
    let mut jobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut job = None;
    let scrape_configs = config
        .lines()
        .skip_while(|l| !l.starts_with("scrape_configs:"));
    for line in scrape_configs.map(str::trim) {
        if let Some(name) = line.strip_prefix("- job_name:") {
            job = Some(name.trim().to_string());
        } else if let Some(list) = line.trim_start_matches("- ").strip_prefix("targets:") {
            let job = job.clone().expect("targets under a job_name");
            let list = list.trim().trim_start_matches('[').trim_end_matches(']');
            jobs.entry(job).or_default().extend(
                list.split(',')
                    .map(|t| t.trim().trim_matches('"').to_string())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    jobs
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "::1" || host == "[::1]"
}

/// The shipped Prometheus config scrapes the ports the env examples open,
/// on addresses they listen on: a remote target needs a bind address off
/// loopback (README "Exposure"), and the rules it loads are shipped.
#[test]
fn the_scrape_config_reaches_what_the_env_examples_serve() {
    const CONFIG: &str = "deploy/prometheus/prometheus.yml";
    let config = read(CONFIG);
    let jobs = scrape_targets(&config);
    for (job, env_file, port_var, bind_var) in [
        (
            "gatemesh-gateway",
            GATEWAY_ENV,
            "GATEWAY_HTTP_PORT",
            "GATEWAY_HTTP_BIND",
        ),
        (
            "gatemesh-service",
            SERVICE_ENV,
            "VPS_HTTP_PORT",
            "VPS_HTTP_BIND",
        ),
    ] {
        let env = env_example(env_file);
        let value = |var: &str| {
            env.get(var)
                .unwrap_or_else(|| panic!("{env_file} has no {var}"))
                .value
                .clone()
        };
        let (port, bind) = (value(port_var), value(bind_var));
        let targets = jobs
            .get(job)
            .unwrap_or_else(|| panic!("{CONFIG} has no job {job}: {jobs:?}"));
        assert!(!targets.is_empty(), "{CONFIG}: job {job} has no target");
        for target in targets {
            let (host, target_port) = target
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{CONFIG}: target {target} has no port"));
            assert_eq!(
                target_port, port,
                "{CONFIG}: job {job} scrapes {target}, but {env_file} serves on {port_var}={port}"
            );
            assert!(
                is_loopback(host) || !is_loopback(&bind),
                "{CONFIG}: job {job} scrapes {target} from another host, but {env_file} \
                 listens on {bind_var}={bind}, loopback only"
            );
        }
    }
    // rule_files: the rules it names are shipped beside it.
    let rule_files: Vec<&str> = config
        .lines()
        .skip_while(|l| !l.starts_with("rule_files:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    assert!(!rule_files.is_empty(), "{CONFIG} loads no rule file");
    for file in rule_files {
        let path = root().join("deploy/prometheus").join(file);
        assert!(
            path.is_file(),
            "{CONFIG} loads {file}, which deploy/prometheus/ lacks"
        );
    }
}

/// The Debian package's assets, from `[package.metadata.deb]`: (source,
/// destination).
fn deb_assets() -> Vec<(String, String)> {
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let assets = &manifest["package"]["metadata"]["deb"]["assets"];
    assets
        .as_array()
        .unwrap()
        .iter()
        .map(|asset| {
            let asset = asset.as_array().unwrap();
            (
                asset[0].as_str().unwrap().to_string(),
                asset[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_debian_package_carries_every_unit_drop_in_and_system_file_of_deploy() {
    let assets = deb_assets();
    let sources: BTreeSet<&str> = assets.iter().map(|(s, _)| s.as_str()).collect();
    let mut wanted = vec![
        "deploy/sysusers.d/gatemesh.conf".to_string(),
        "deploy/tmpfiles.d/gatemesh.conf".to_string(),
        "deploy/env/vps-gateway.env.example".to_string(),
        "deploy/env/vps-service.env.example".to_string(),
    ];
    for entry in std::fs::read_dir(root().join("deploy/systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".service") {
            wanted.push(format!("deploy/systemd/{name}"));
        } else if name.ends_with(".service.d") {
            for conf in std::fs::read_dir(&path).unwrap() {
                let conf = conf.unwrap().file_name().to_string_lossy().to_string();
                wanted.push(format!("deploy/systemd/{name}/{conf}"));
            }
        }
    }
    for file in &wanted {
        assert!(
            sources.contains(file.as_str()),
            "the package leaves out {file}"
        );
        assert!(root().join(file).exists(), "{file} is named but missing");
    }
    // The binaries the units start are where systemd looks for them.
    for binary in ["vps-gateway", "vps-service", "gatemesh"] {
        assert!(
            assets
                .iter()
                .any(|(s, d)| s == &format!("target/release/{binary}") && d == "usr/bin/"),
            "the package puts {binary} in /usr/bin"
        );
    }
    // Units where systemd reads them; the TLS drop-ins only as examples
    // (they need the operator's certificates); the allocator's drop-in
    // with its unit (the package brings its group and directory).
    for (source, dest) in &assets {
        if source.ends_with(".service") {
            assert_eq!(dest, "usr/lib/systemd/system/", "{source}");
        }
        if source.ends_with("/tls.conf") {
            assert!(
                dest.starts_with("usr/share/doc/gatemesh/examples/"),
                "{source} -> {dest}"
            );
        }
        if source.ends_with("/ip-allocator.conf") {
            assert_eq!(
                dest, "usr/lib/systemd/system/vps-gateway.service.d/",
                "{source}"
            );
        }
    }
    // The unit never requires the group unless the allocator's drop-in
    // is installed.
    let base = read("deploy/systemd/vps-gateway.service");
    assert!(
        !base.contains("SupplementaryGroups"),
        "the base unit needs no group"
    );
}
