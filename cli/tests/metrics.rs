//! The metric names `monitoring/` uses are the names the program exports.
//!
//! A real `offload run` on its schedule (ClickHouse through chdb, Iceberg on
//! the SQLite catalog, the watermark store in PostgreSQL, the late-row sweep
//! and scheduled maintenance on), with a second table that fails every run
//! (its ClickHouse table does not exist) so the failure series are exported
//! too. Once a cycle has committed, swept and maintained, its `/metrics` is
//! scraped and held against every `offload_*` name in the `expr`s of
//! `monitoring/alerts.yml` and the `targets[].expr`s (and template variable
//! queries) of `monitoring/dashboard.json`, both ways: every name they use is exported,
//! and every name exported is used by one of them.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use offload_testkit::repo_root;
use serde_json::Value;
use support::{Catalog, Lake, Store};

/// Exported names neither the rules nor the dashboard need, each with why.
/// Empty: every family is on the dashboard.
const UNUSED_ON_PURPOSE: &[(&str, &str)] = &[];

/// `GET /metrics`, or `None` while the listener is not up yet.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    c.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Sum of the samples of `name` whose labels include every one of `labels`.
fn total(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sample names and `# TYPE` families of a Prometheus text exposition.
fn exported(metrics: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, families)
}

/// Every `offload_*` identifier in a PromQL expression.
fn identifiers(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("offload_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && word(b[end]) {
            end += 1;
        }
        if start == 0 || !word(b[start - 1]) {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// The `expr` values of a rules file: `expr: <one line>` or a block scalar
/// (`expr: >-` / `|`) made of the lines indented deeper than the key.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with(['>', '|']) {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(value.trim_matches(['"', '\'']).to_owned());
        }
    }
    out
}

/// Every `targets[].expr` of a dashboard, panels inside rows included.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(targets)) = m.get("targets") {
                out.extend(
                    targets
                        .iter()
                        .filter_map(|t| t["expr"].as_str())
                        .map(str::to_owned),
                );
            }
            m.values().for_each(|x| dashboard_exprs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exported_and_every_exported_one_is_used() {
    let root = repo_root().join("monitoring");
    let rules = rule_exprs(&std::fs::read_to_string(root.join("alerts.yml")).unwrap());
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("dashboard.json")).unwrap()).unwrap();
    let mut panels = Vec::new();
    dashboard_exprs(&dashboard, &mut panels);
    // The template variables' queries too (`label_values(<metric>, table)`).
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    panels.extend(
        variables
            .iter()
            .filter_map(|v| v["query"].as_str())
            .map(str::to_owned),
    );
    assert!(rules.len() >= 15, "alert expressions found: {rules:?}");
    assert!(panels.len() >= 30, "dashboard expressions found: {panels:?}");
    let used: BTreeSet<(String, &str)> = rules
        .iter()
        .map(|e| (e, "monitoring/alerts.yml"))
        .chain(panels.iter().map(|e| (e, "monitoring/dashboard.json")))
        .flat_map(|(e, file)| identifiers(e).into_iter().map(move |n| (n, file)))
        .collect();

    // A real run: one table that commits, sweeps and is maintained; one that fails.
    let mut s = Lake::new("metrics_names", Catalog::Sqlite, Store::Postgres);
    s.maintenance = "interval = \"1s\"\n".into();
    s.insert(0, 300, 5, 60_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = s.dir.join("metrics.toml");
    let text = s.config_text(&s.lag, Some("metrics-test")).replacen(
        "[engine]\n",
        "[engine]\ninterval = \"1s\"\nsweep_interval = \"0s\"\n",
        1,
    ) + &format!(
        "[metrics]\nlisten = \"{port}\"\n\
             [[tables]]\nname = \"missing\"\nsink_table = \"lake.missing\"\ntimestamp_column = \"ts\"\n\
             sequence_column = \"seq\"\n"
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = s.spawn_command(&cfg, None, "run", &[], "run.log");
    let log = || std::fs::read_to_string(s.dir.join("run.log")).unwrap_or_default();

    // Until a cycle has committed, swept and maintained `trades` and failed
    // `missing` (bounded; the program's own schedule is 1 s).
    let deadline = Instant::now() + Duration::from_secs(180);
    let m = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("offload run exited early ({status}):\n{}", log());
        }
        if let Some(m) = scrape(port) {
            let trades = "table=\"trades\"";
            let done = total(&m, "offload_runs_total", &[trades, "outcome=\"committed\""]) >= 1.0
                && total(&m, "offload_sweeps_total", &[trades]) >= 1.0
                && total(&m, "offload_maintenance_runs_total", &[trades]) >= 1.0
                && total(
                    &m,
                    "offload_runs_total",
                    &["table=\"missing\"", "outcome=\"failed\""],
                ) >= 1.0
                && total(&m, "offload_operation_errors_total", &["table=\"missing\""]) >= 1.0;
            if done {
                break m;
            }
            assert!(
                Instant::now() < deadline,
                "no committed, swept and maintained cycle within 180 s:\n{m}\n--- log\n{}",
                log()
            );
        } else {
            assert!(Instant::now() < deadline, "/metrics never answered:\n{}", log());
        }
        // Polling the program's own progress, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: plain kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    child.wait().unwrap();

    // A few values, so the names stand for what they claim.
    assert_eq!(total(&m, "offload_tables_configured", &[]), 2.0, "{m}");
    assert_eq!(total(&m, "offload_info", &["version=\""]), 1.0, "{m}");
    assert_eq!(
        total(&m, "offload_rows_total", &["table=\"trades\""]),
        300.0,
        "{m}"
    );
    assert!(
        total(&m, "offload_consecutive_failures", &["table=\"missing\""]) >= 1.0,
        "{m}"
    );
    assert_eq!(
        total(&m, "offload_consecutive_failures", &["table=\"trades\""]),
        0.0,
        "{m}"
    );
    assert_eq!(
        total(&m, "offload_maintenance_interval_seconds", &["table=\"trades\""]),
        1.0,
        "{m}"
    );
    // Created at zero before anything happened to them.
    for zero in [
        "offload_store_ahead_of_sink_total",
        "offload_store_behind_sink_total",
    ] {
        assert!(
            m.contains(&format!("{zero}{{table=\"trades\"}} 0")),
            "{zero}: {m}"
        );
    }

    let (samples, families) = exported(&m);
    let not_exported: Vec<_> = used
        .iter()
        .filter(|(n, _)| !samples.contains(n) && !families.contains(n))
        .collect();
    assert!(
        not_exported.is_empty(),
        "used by monitoring/ but not exported by offload run: {not_exported:?}\n--- /metrics\n{m}"
    );

    let used_names: BTreeSet<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
    let unused: Vec<&String> = families
        .iter()
        .filter(|f| f.starts_with("offload_"))
        .filter(|f| {
            !["", "_sum", "_count", "_bucket"]
                .iter()
                .any(|suffix| used_names.contains(format!("{f}{suffix}").as_str()))
        })
        .filter(|f| !UNUSED_ON_PURPOSE.iter().any(|(n, _)| n == f))
        .collect();
    assert!(
        unused.is_empty(),
        "exported but used by neither monitoring/alerts.yml nor monitoring/dashboard.json \
         (use it, or add it to UNUSED_ON_PURPOSE with the reason): {unused:?}"
    );
    // The allow-list holds only names that exist.
    for (n, why) in UNUSED_ON_PURPOSE {
        assert!(families.contains(*n), "{n} ({why}) is no longer exported");
    }
}

/// promtool from PATH or where `scripts/setup.sh` puts it.
fn promtool() -> std::path::PathBuf {
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default());
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([home.join(".cache/offload/tools/bin/promtool")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("promtool is missing: run scripts/setup.sh (its `# --- promtool` section)"))
}

/// Grafana is not installable here, so the dashboard's queries are checked by
/// Prometheus's own parser: each one, its Grafana variables given values, as
/// a recording rule for `promtool check rules`.
#[test]
fn every_dashboard_query_is_valid_promql() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("monitoring/dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty());
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.replace("$__rate_interval", "5m").replace("$table", ".+");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: promtool reads it as a rules file.
    let file = dir.path().join("dashboard_rules.yml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new(promtool())
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
