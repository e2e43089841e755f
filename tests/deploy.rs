//! What operators plug in (the Grafana dashboard, the Prometheus rules, the
//! Kubernetes manifests, the compose file) kept honest against the code: every
//! metric they name is one a real worker exports, every runbook link lands
//! on a heading, and the probes, ports and grace periods agree with the
//! defaults.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{get, sigterm, start_watched, stderr, wait_until, Scratch};
use ledgerd::config::Settings;
use ledgerd::ops::health::READY_TIMEOUT;
use ledgerd::ops::http::{HEALTH_PATH, METRICS_PATH, READY_PATH};
use serde_yaml_ng::Value as Yaml;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/ledgerd.json")).expect("the dashboard is JSON")
}

/// Every `ledgerd_…` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ledgerd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The expressions of every dashboard panel.
fn dashboard_exprs() -> Vec<String> {
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_string())
        .collect()
}

/// The rules of alerts.yml.
fn rules() -> Vec<Yaml> {
    let doc = yaml("deploy/prometheus/alerts.yml");
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

/// The anchors of every heading of a Markdown file.
fn anchors(path: &str) -> BTreeSet<String> {
    common::anchors(&read(path))
}

#[test]
fn the_dashboard_shows_what_operators_watch() {
    let d = dashboard();
    assert_eq!(d["uid"], "ledgerd");
    let exprs = dashboard_exprs().join("\n");
    for (what, needle) in [
        ("actions/s by outcome", "sum by (outcome) (rate(ledgerd_actions_total"),
        ("credits/s", "rate(ledgerd_credits_total"),
        (
            "latency quantiles",
            "histogram_quantile(0.99, sum by (le) (rate(ledgerd_action_seconds_bucket",
        ),
        ("queue by state", "max by (state) (ledgerd_queue_actions)"),
        ("queue depth", "max(ledgerd_queue_depth)"),
        ("lag", "ledgerd_queue_oldest_age_seconds"),
        ("failed", "ledgerd_failed_actions"),
        ("blocked", r#"ledgerd_queue_actions{state="blocked"}"#),
        ("retries by cause", "sum by (kind) (rate(ledgerd_retries_total"),
        (
            "store errors by cause",
            "sum by (op, result) (rate(ledgerd_store_operations_total",
        ),
        ("in-flight", "ledgerd_in_flight_actions"),
        (
            "coalescing factor",
            "rate(ledgerd_wallet_write_credits_total[$__rate_interval])) / sum(rate(ledgerd_wallet_writes_total",
        ),
        ("readiness", "sum(ledgerd_ready)"),
        ("members seen", "ledgerd_members"),
        ("shards owned", "ledgerd_shards_owned"),
        ("membership views", "max(ledgerd_membership_views)"),
        ("discovery keys per action", "sum(rate(ledgerd_discovery_keys_total"),
    ] {
        assert!(exprs.contains(needle), "the dashboard shows no {what} ({needle})");
    }
}

#[test]
fn every_alert_has_a_runbook_that_exists() {
    let headings = anchors("docs/operations.md");
    let rules = rules();
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for wanted in [
        "LedgerdActionErrorsHigh",
        "LedgerdQueueGrowing",
        "LedgerdQueueLagHigh",
        "LedgerdFailedActionsGrowing",
        "LedgerdBlockedActions",
        "LedgerdNoProgress",
        "LedgerdNotReady",
        "LedgerdLeaseRenewalsLost",
        "LedgerdMembershipSplit",
    ] {
        assert!(names.contains(wanted), "no {wanted} rule in {names:?}");
    }
    for rule in &rules {
        let name = rule["alert"].as_str().expect("an alert name");
        assert!(
            rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "{name}: no expr"
        );
        assert!(
            matches!(rule["labels"]["severity"].as_str(), Some("warning" | "critical")),
            "{name}: severity"
        );
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let (file, fragment) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: {url} names no heading"));
        assert_eq!(file, "docs/operations.md", "{name}");
        assert_eq!(
            fragment,
            name.to_lowercase(),
            "{name}: the runbook heading is the alert's name"
        );
        assert!(
            headings.contains(fragment),
            "{name}: docs/operations.md has no heading #{fragment}"
        );
    }
}

/// promtool checks the rules and runs their unit tests, where it is installed.
#[test]
fn the_rules_pass_promtool_where_it_is_installed() {
    let dir = repo("deploy/prometheus");
    let check = std::process::Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output();
    let Ok(check) = check else {
        eprintln!("note: promtool is not installed: only the YAML checks ran");
        return;
    };
    assert!(check.status.success(), "promtool check rules: {}", stderr(&check));
    let test = std::process::Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    assert!(
        test.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&test.stdout),
        stderr(&test)
    );
}

/// Whether a Prometheus text body has a sample of the series `name`, with
/// any labels (histograms by their `_bucket`, `_sum` and `_count` series).
fn exported(body: &str, name: &str) -> bool {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
}

#[test]
fn every_metric_the_dashboard_rules_and_autoscaler_name_is_exported_by_a_real_worker() {
    let mut wanted = BTreeSet::new();
    for expr in dashboard_exprs() {
        wanted.extend(metric_names(&expr));
    }
    for rule in rules() {
        wanted.extend(metric_names(rule["expr"].as_str().expect("expr")));
    }
    let hpa = yaml("deploy/kubernetes/hpa.yaml");
    for m in hpa["spec"]["metrics"].as_sequence().expect("metrics") {
        wanted.extend(metric_names(
            m["external"]["metric"]["name"].as_str().expect("metric name"),
        ));
    }
    assert!(wanted.len() >= 15, "{wanted:?}");

    let s = Scratch::new();
    s.run(
        &["enqueue"],
        "{\"id\":\"a1\",\"doc\":{\"beneficiaries\":{\"w\":1}}}\n{\"id\":\"a2\",\"doc\":{\"beneficiaries\":{\"w\":2}}}\n",
    );
    let (child, port) = start_watched(&s, "warn", &[("LEDGERD_QUEUE_SAMPLE_MS", "1000")]);
    // Histograms appear with their first observation, the queue gauges with
    // the first sample after the queue drained.
    let scrape = || get(port, METRICS_PATH).map(|(_, body)| body).unwrap_or_default();
    wait_until("the actions are done and the queue sampled empty", || {
        let body = scrape();
        body.lines().any(|l| l == "ledgerd_queue_depth 0") && exported(&body, "ledgerd_action_seconds_bucket")
    });
    let body = scrape();
    let missing: Vec<&String> = wanted.iter().filter(|name| !exported(&body, name)).collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}\n{body}");
    sigterm(&child);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The one document of `kind` in a manifest file.
fn manifest(path: &str, kind: &str) -> Yaml {
    let doc = yaml(path);
    assert_eq!(doc["kind"].as_str(), Some(kind), "{path}");
    doc
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

#[test]
fn the_kubernetes_manifests_agree_with_the_code() {
    let defaults = Settings::defaults().expect("defaults");
    let default_port = port_of(&defaults.ops.metrics_addr.to_string());
    let deployment = manifest("deploy/kubernetes/deployment.yaml", "Deployment");
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64().is_some_and(|r| r >= 2), "several replicas");
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["args"][0].as_str(), Some("run"));
    let env = |name: &str| {
        c["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .cloned()
    };
    // The listener binds the pod's address on the default port, named `metrics`.
    let addr = env("LEDGERD_METRICS_ADDR").expect("LEDGERD_METRICS_ADDR");
    let addr = addr["value"].as_str().expect("a value");
    assert!(addr.starts_with("0.0.0.0:"), "{addr}: probes come from outside the pod");
    assert_eq!(port_of(addr), default_port);
    let ports = c["ports"].as_sequence().expect("ports");
    assert_eq!(ports[0]["name"].as_str(), Some("metrics"));
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(u64::from(default_port)));
    let probe = |which: &str, path: &str| {
        let p = &c[which]["httpGet"];
        assert_eq!(p["path"].as_str(), Some(path), "{which}");
        assert_eq!(p["port"].as_str(), Some("metrics"), "{which}");
    };
    probe("livenessProbe", HEALTH_PATH);
    probe("readinessProbe", READY_PATH);
    // The readiness probe waits longer than /readyz waits for the store.
    let ready_timeout = c["readinessProbe"]["timeoutSeconds"].as_u64().expect("timeoutSeconds");
    assert!(ready_timeout > READY_TIMEOUT.as_secs(), "{ready_timeout} s");
    // The pod outlives the worker's drain.
    let grace_ms = match env("LEDGERD_SHUTDOWN_GRACE_MS") {
        Some(e) => e["value"].as_str().and_then(|v| v.parse().ok()).expect("a number"),
        None => u64::try_from(defaults.worker.shutdown_grace.as_millis()).expect("milliseconds"),
    };
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination * 1000 >= grace_ms + 5_000,
        "terminationGracePeriodSeconds {termination} leaves no room after shutdown_grace_ms {grace_ms}"
    );
    // Credentials come from a Secret, never from the manifest.
    for name in ["LEDGERD_COUCHBASE_USERNAME", "LEDGERD_COUCHBASE_PASSWORD"] {
        let e = env(name).unwrap_or_else(|| panic!("{name}"));
        assert!(e["value"].is_null(), "{name} is written in the manifest");
        assert!(e["valueFrom"]["secretKeyRef"]["name"].as_str().is_some(), "{name}");
    }
    for resource in ["cpu", "memory"] {
        assert!(!c["resources"]["requests"][resource].is_null(), "requests.{resource}");
    }
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));

    let pdb = manifest("deploy/kubernetes/pdb.yaml", "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    let service = manifest("deploy/kubernetes/service.yaml", "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"].as_str(), Some("metrics"));
    let monitor = manifest("deploy/kubernetes/podmonitor.yaml", "PodMonitor");
    assert_eq!(&monitor["spec"]["selector"]["matchLabels"], labels);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"));
    assert_eq!(endpoint["path"].as_str(), Some(METRICS_PATH));
    let hpa = manifest("deploy/kubernetes/hpa.yaml", "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    for file in kustomization["resources"].as_sequence().expect("resources") {
        let file = file.as_str().expect("a file");
        assert!(repo(&format!("deploy/kubernetes/{file}")).exists(), "{file}");
    }
}

#[test]
fn the_image_and_the_compose_file_agree_with_the_code() {
    let defaults = Settings::defaults().expect("defaults");
    let port = port_of(&defaults.ops.metrics_addr.to_string());
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(&format!("LEDGERD_METRICS_ADDR=0.0.0.0:{port}")));
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    assert!(dockerfile.contains(&format!("http://127.0.0.1:{port}{HEALTH_PATH}")));
    // A stripped binary without debug info, built from what Cargo needs.
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=true"));
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_DEBUG=0"));
    assert!(
        dockerfile.contains("COPY tests ./tests"),
        "the manifest's [[test]] targets must exist to build"
    );
    assert!(dockerfile.contains("USER ledgerd"));

    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["couchbase", "couchbase-init", "ledgerd-init", "ledgerd"] {
        assert!(services.contains_key(name), "no {name} service");
    }
    // Validated by Compose itself where it is installed (the plugin, or v1).
    let compose_cli: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    let mut validated = false;
    for cli in compose_cli {
        let run = |args: &[&str]| {
            std::process::Command::new(cli[0])
                .args(&cli[1..])
                .args(args)
                .current_dir(repo("."))
                .output()
        };
        if !run(&["version"]).is_ok_and(|out| out.status.success()) {
            continue;
        }
        let out = run(&["config", "-q"]).expect("compose");
        assert!(out.status.success(), "{cli:?} config: {}", stderr(&out));
        validated = true;
        break;
    }
    if !validated {
        eprintln!("note: neither `docker compose` nor `docker-compose` is installed: the compose file was only parsed");
    }
}
