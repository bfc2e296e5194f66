//! connect() verdicts on the real kernel: allowlisted destinations pass and are counted,
//! everything else fails with EPERM and is counted as denied; IPv6 and IPv4-mapped IPv6
//! destinations follow the same policy; real clients (curl, Python's urllib) included.

use std::process::Command;

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, run_in, workload};

/// Allows TCP to `allowed` on 127.0.0.1 and ::1 only.
fn config(port: u16) -> String {
    format!(
        r#"
[[endpoint]]
name = "local-api"
addresses = ["127.0.0.1", "::1"]
ports = [{port}]
protocol = "tcp"

[[agent]]
name = "a1"
endpoints = ["local-api"]
mode = "enforce"
"#
    )
}

#[test]
fn allowlisted_connect_succeeds_and_is_counted() {
    if !privileged("allowlisted_connect_succeeds_and_is_counted") {
        return;
    }
    let root = AgentsRoot::new();
    let server = Server::start(Serve::Http(1000));
    let daemon = Daemon::start(&root, &config(server.port));
    let agent = root.path.join("a1");

    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
        .arg(format!("http://127.0.0.1:{}/", server.port));
    let out = run_in(&agent, curl);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1000", "curl: {}", String::from_utf8_lossy(&out.stderr));

    let c = daemon.counters("a1", "local-api");
    assert_eq!(c.allowed, 1, "{c:?}");
    assert_eq!(c.denied, 0);
    assert!(c.rx_bytes >= 1000 && c.tx_bytes > 0 && c.tx_packets > 0 && c.rx_packets > 0, "{c:?}");
    assert_eq!(daemon.agent("a1")["state"], "enforcing");
}

#[test]
fn non_allowlisted_connect_gets_eperm_and_is_counted() {
    if !privileged("non_allowlisted_connect_gets_eperm_and_is_counted") {
        return;
    }
    let root = AgentsRoot::new();
    let allowed = Server::start(Serve::Sink);
    let other = Server::start(Serve::Http(10));
    let daemon = Daemon::start(&root, &config(allowed.port));
    let agent = root.path.join("a1");

    let denied = workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]);
    assert!(denied.eperm(), "expected EPERM, got {denied:?}");

    // curl sees the same refusal: "Couldn't connect" (exit 7), no response.
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10", "-o", "/dev/null"]).arg(format!("http://127.0.0.1:{}/", other.port));
    let out = run_in(&agent, curl);
    assert_eq!(out.status.code(), Some(7), "curl: {}", String::from_utf8_lossy(&out.stderr));

    let c = daemon.counters("a1", "(unlisted)");
    assert_eq!((c.denied, c.allowed, c.tx_bytes), (2, 0, 0), "{c:?}");

    // The deny event reaches user space with its reason and destination.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = daemon.status();
        let denials = status["recent_denials"].as_array().unwrap().clone();
        if denials.len() >= 2 {
            let d = &denials[0];
            assert_eq!(d["agent"], "a1");
            assert_eq!(d["reason"], "not-allowlisted");
            assert_eq!(d["verdict"], "denied");
            assert_eq!(d["hook"], "connect");
            assert_eq!(d["destination"], other.addr("127.0.0.1").as_str());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "deny events did not arrive: {status:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_follow_the_same_policy() {
    if !privileged("ipv6_and_ipv4_mapped_destinations_follow_the_same_policy") {
        return;
    }
    let root = AgentsRoot::new();
    let allowed = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(allowed.port));
    let agent = root.path.join("a1");

    for ip in ["::1", "::ffff:127.0.0.1"] {
        let ok = workload(Some(&agent), &["connect", &allowed.addr(ip)]);
        assert!(ok.ok(), "{ip} to the allowlisted port: {ok:?}");
        let no = workload(Some(&agent), &["connect", &other.addr(ip)]);
        assert!(no.eperm(), "{ip} to another port: {no:?}");
    }
    // Other loopback forms are not on the allowlist.
    for ip in ["127.0.0.2", "::ffff:127.0.0.2"] {
        let no = workload(Some(&agent), &["connect", &allowed.addr(ip)]);
        assert!(no.eperm(), "{ip}: {no:?}");
    }
    let c = daemon.counters("a1", "local-api");
    assert_eq!(c.allowed, 2, "{c:?}");
    assert_eq!(daemon.counters("a1", "(unlisted)").denied, 4);
}

#[test]
fn an_http_sdk_client_is_governed_too() {
    if !privileged("an_http_sdk_client_is_governed_too") {
        return;
    }
    let root = AgentsRoot::new();
    let allowed = Server::start(Serve::Http(2048));
    let other = Server::start(Serve::Http(2048));
    let daemon = Daemon::start(&root, &config(allowed.port));
    let agent = root.path.join("a1");

    // Python's urllib: what an agent's SDK does under the hood.
    let script = r#"
import sys, urllib.request
for url in sys.argv[1:]:
    try:
        body = urllib.request.urlopen(url, timeout=10).read()
        print("ok", len(body))
    except OSError as e:
        reason = getattr(e, "reason", e)
        print("error", getattr(reason, "errno", None))
"#;
    let mut py = Command::new("python3");
    py.args(["-c", script])
        .arg(format!("http://127.0.0.1:{}/", allowed.port))
        .arg(format!("http://127.0.0.1:{}/", other.port));
    let out = run_in(&agent, py);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["ok 2048", "error 1"],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon.counters("a1", "local-api").allowed, 1);
    assert_eq!(daemon.counters("a1", "(unlisted)").denied, 1);
}
