//! The operator's toolkit against the real daemon: the Prometheus rules pass promtool's own
//! tests, a live scrape passes `promtool check metrics`, and every metric the rules and the
//! Grafana dashboard query is one the daemon really exports.

use std::{collections::BTreeSet, io::Write as _, path::Path, process::Command};

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, workload};

fn deploy(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// `governor_...` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("governor_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Skip config keys like governor_events in prose: metric names have no dots or slashes near.
        out.insert(text[start..end].to_owned());
        i = end;
    }
    out
}

#[test]
fn the_rules_pass_promtool_tests() {
    let out = Command::new("promtool")
        .args(["test", "rules", "governor.rules.test.yml"])
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn rules_and_dashboard_query_metrics_the_daemon_exports() {
    if !privileged("rules_and_dashboard_query_metrics_the_daemon_exports") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    // A scenario that makes every family appear: prices, budgets, a checkpoint, a denial, host
    // egress counted on lo.
    let daemon = Daemon::start(
        &root,
        &format!(
            "[[endpoint]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\nprice = {{ connection = \"0.01\", mib_sent = \"1\" }}\n\
             [[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\nbudget = {{ limit = \"5\", window = \"day\" }}\ncheckpoints = {{ every_connections = 2 }}\n\
             [host]\ninterfaces = [\"lo\"]\negress_price_per_gib = \"0.09\"\nbudget = {{ limit = \"100\" }}\n",
            sink.port
        ),
    );
    let agent = root.path.join("a1");
    assert!(workload(Some(&agent), &["send", &sink.addr("127.0.0.1"), "10000"]).ok());
    assert!(workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]).eperm());
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());
    daemon.wait_until("checkpoint", 5, |s| s["agents"][0]["state"] == "checkpoint");
    let scrape = daemon.metrics();

    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let rules = std::fs::read_to_string(deploy("prometheus/governor.rules.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy("grafana/governor.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let exprs: String = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned() + "\n")
        .collect();
    for (what, text) in [("rules", rules.as_str()), ("dashboard", exprs.as_str())] {
        for name in metric_names(text) {
            assert!(
                exported.contains(&name),
                "the {what} query {name}, which the daemon does not export; it exports: {exported:#?}"
            );
        }
    }
}
