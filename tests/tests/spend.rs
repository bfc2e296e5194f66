//! Spend governance on the real kernel: exact prices, a ceiling with no overshoot however many
//! connections race for it, thresholds told once, windows that roll, and a host-wide budget.

use std::process::Command;

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, run_in, workload, workload_with};
use serde_json::Value;

/// Per-byte prices as the README states the rule: per-MiB price in pico-units, divided by 2^20,
/// rounded up.
fn per_byte(per_mib_pico: u64) -> u64 {
    per_mib_pico.div_ceil(1 << 20)
}
const PICO: u64 = 1_000_000_000_000;

fn agent_with(endpoints: &str, agent: &str) -> String {
    format!("{endpoints}\n[[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\n{agent}\n")
}

fn api(port: u16, price: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nports = [{port}]\nprotocol = \"tcp\"\nprice = {price}\n"
    )
}

fn pico(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn known_transfers_cost_exactly_what_the_formula_says() {
    if !privileged("known_transfers_cost_exactly_what_the_formula_says") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let source = Server::start(Serve::Source(2_000_000));
    let price = r#"{ connection = "0.0004", mib_sent = "0.50", mib_received = "2.00" }"#;
    let dl = format!(
        "[[endpoint]]\nname = \"dl\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\nprice = {price}\n",
        source.port
    );
    let config = format!(
        "{}{dl}\n[[agent]]\nname = \"a1\"\nendpoints = [\"api\", \"dl\"]\nbudget = {{ limit = \"100.00\", window = \"total\" }}\n",
        api(sink.port, price)
    );
    let daemon = Daemon::start(&root, &config);
    let agent = root.path.join("a1");

    assert!(workload(Some(&agent), &["send", &sink.addr("127.0.0.1"), "3000000"]).ok());
    assert_eq!(workload(Some(&agent), &["recv", &source.addr("127.0.0.1")]).json["bytes"], 2_000_000);
    // And through curl, a real client, for the same endpoint's price.
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10", "-o", "/dev/null", "--data-binary", "@-"])
        .arg(format!("http://127.0.0.1:{}/", sink.port));
    curl.stdin(std::process::Stdio::null());
    run_in(&agent, curl);

    // Settle: the books read the kernel every 200 ms.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let a = daemon.agent("a1");
    let (conn, tx, rx) = (400_000_000, per_byte(500_000_000_000), per_byte(2 * PICO));
    assert_eq!((tx, rx), (476_838, 1_907_349), "the rounding rule");
    let mut expected = 0u64;
    let mut by_endpoint = 0u64;
    for e in a["endpoints"].as_array().unwrap() {
        let c = governor_tests::Counters::from_json(e);
        let flows = pico(&e["flows"]);
        let cost = flows * conn + c.tx_bytes * tx + c.rx_bytes * rx;
        assert_eq!(pico(&e["spend_pico"]), cost, "endpoint {}: {e:#}", e["endpoint"]);
        expected += cost;
        by_endpoint += pico(&e["spend_pico"]);
    }
    let b = &a["budget"];
    assert_eq!(pico(&b["spent_total_pico"]), expected, "the kernel's total is the formula, to the pico-unit: {b:#}");
    assert_eq!(by_endpoint, expected);
    assert_eq!(pico(&b["window_spend_pico"]), expected);
    assert!(expected > 3 * PICO / 2, "about $1.43 + $3.81 + 3 connections: {expected}");
    assert_eq!(b["state"], "ok");
}

#[test]
fn a_workload_trying_to_spend_ten_times_its_budget_is_stopped_with_no_overshoot() {
    if !privileged("a_workload_trying_to_spend_ten_times_its_budget_is_stopped_with_no_overshoot") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    // $1/MiB sent, a $0.10 budget: about 100 KiB; the workload tries 1 MiB (10x).
    let daemon = Daemon::start(
        &root,
        &agent_with(&api(sink.port, r#"{ mib_sent = "1.00" }"#), "budget = { limit = \"0.10\", window = \"total\" }"),
    );
    let agent = root.path.join("a1");

    let started = std::time::Instant::now();
    let out = workload_with(
        Some(&agent),
        &["send", &sink.addr("127.0.0.1"), "1048576"],
        &[("GOVERNOR_WORKLOAD_TIMEOUT_MS", "5000")],
    );
    let took = started.elapsed();
    assert!(!out.ok(), "a 10x transfer must not complete: {out:?}");
    // The established connection is ended (ECONNABORTED from SOCK_DESTROY), not left to hang
    // until the client's own 5 s timeout.
    assert_eq!(out.json["errno"], libc::ECONNABORTED, "{out:?}");
    assert!(took < std::time::Duration::from_secs(4), "the agent waited {took:?} for its error");

    let s = daemon.wait_until("suspension", 5, |s| s["agents"][0]["state"] == "suspended");
    let b = &s["agents"][0]["budget"];
    let limit = PICO / 10;
    let spent = pico(&b["window_spend_pico"]);
    // Overshoot bound: none. Every charge is checked against a total holding all earlier ones,
    // and one that would pass the ceiling is refunded. And the agent did reach the ceiling:
    // within one maximum-size (64 KiB GSO) packet of it.
    let max_packet = (65_536 + 80) * per_byte(PICO);
    assert!(spent <= limit, "overshoot: spent {spent} > limit {limit}");
    assert!(spent + max_packet >= limit, "stopped too early: {spent} of {limit}");
    assert!(sink.received() < 1048576 / 5, "the sink got {} bytes", sink.received());
    eprintln!(
        "10x run: limit {limit}, counted {spent} ({} below), sink received {} bytes",
        limit - spent,
        sink.received()
    );

    // New connections are refused for the budget, and say so.
    let no = workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]);
    assert!(no.eperm(), "{no:?}");
    let c = daemon.counters("a1", "api");
    assert!(c.denied >= 1);
    assert!(daemon.agent("a1")["endpoints"][0]["denied_by_reason"]["budget"].as_u64().unwrap() >= 1);

    // Status, spend and metrics say the same.
    let table = daemon.status_table();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a1 ") && l.contains("suspended") && l.contains("0.100000") && l.contains("total")),
        "{table}"
    );
    let spend: Value =
        serde_json::from_str(&daemon.cli(&["spend", "--agent", "a1", "--by", "endpoint", "--json"])).unwrap();
    assert_eq!(spend["agents"][0]["budget"]["window_spend_pico"], spent);
    assert_eq!(
        spend["agents"][0]["endpoints"].as_array().unwrap().iter().map(|e| pico(&e["spend_pico"])).sum::<u64>(),
        spent
    );
    let text = daemon.cli(&["spend", "--by", "endpoint"]);
    assert!(text.contains("a1") && text.contains("suspended") && text.contains("api"), "{text}");
    let metrics = daemon.metrics();
    for line in [
        r#"governor_budget_suspended{agent="a1"} 1"#.to_owned(),
        r#"governor_budget_limit{agent="a1",currency="USD"} 0.1"#.to_owned(),
        r#"governor_budget_used_ratio{agent="a1"} 1"#.to_owned(),
        r#"governor_budget_threshold_crossed{agent="a1",threshold="80"} 1"#.to_owned(),
        r#"governor_suspensions_total{agent="a1"} 1"#.to_owned(),
        r#"governor_agent_state{agent="a1",state="suspended"} 1"#.to_owned(),
        format!(r#"governor_agent_spend_total{{agent="a1",currency="USD"}} {}"#, spent as f64 / PICO as f64),
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in:\n{metrics}");
    }
    let err = std::process::Command::new(governor_tests::governor_bin())
        .args(["spend", "--agent", "nobody", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("no agent named \"nobody\"; agents: a1"));

    // The audit log and the notices say what happened, once each.
    let audit = daemon.audit_log();
    let kinds: Vec<&str> = audit.iter().filter(|r| r["agent"] == "a1").map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "suspended").count(), 1, "{kinds:?}");
    let suspended = audit.iter().find(|r| r["kind"] == "suspended").unwrap();
    assert_eq!(suspended["details"]["connections_ended"]["destroyed"], 1, "{suspended:#}");
    eprintln!(
        "10x run: agent saw its error after {took:?}; sweep took {} us",
        suspended["details"]["connections_ended"]["micros"]
    );
    let crossed: Vec<u64> = audit
        .iter()
        .filter(|r| r["kind"] == "threshold_crossed")
        .map(|r| r["details"]["percent"].as_u64().unwrap())
        .collect();
    assert_eq!(crossed, vec![50, 80, 100], "{audit:#?}");
}

#[test]
fn overshoot_does_not_grow_with_parallel_connections() {
    if !privileged("overshoot_does_not_grow_with_parallel_connections") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    // $0.01 a connection and a $0.50 budget: exactly 50 of 100 simultaneous connects fit.
    let daemon = Daemon::start(
        &root,
        &agent_with(&api(sink.port, r#"{ connection = "0.01" }"#), "budget = { limit = \"0.50\", window = \"total\" }"),
    );
    let agent = root.path.join("a1");
    let out = workload(Some(&agent), &["connect-many", &sink.addr("127.0.0.1"), "100"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!((out.json["bytes"].as_u64(), out.json["eperm"].as_u64()), (Some(50), Some(50)), "{out:?}");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let b = daemon.budget("a1");
    assert_eq!(pico(&b["window_spend_pico"]), PICO / 2, "exactly the budget, not a cent over: {b:#}");
    assert_eq!(b["state"], "suspended");
}

#[test]
fn thresholds_are_told_once_through_the_hook_and_survive_a_restart() {
    if !privileged("thresholds_are_told_once_through_the_hook_and_survive_a_restart") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let notices = tempfile::NamedTempFile::new().unwrap();
    let hook = format!(
        "[notify]\ncommand = [\"sh\", \"-c\", \"cat >> {} && echo >> {}\"]\n",
        notices.path().display(),
        notices.path().display()
    );
    let config = format!(
        "{}{hook}",
        agent_with(&api(sink.port, r#"{ connection = "0.10" }"#), "budget = { limit = \"1.00\", window = \"total\" }")
    );
    let mut daemon = Daemon::start(&root, &config);
    let agent = root.path.join("a1");
    let connect = || workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]);
    let told = || -> Vec<Value> {
        std::fs::read_to_string(notices.path())
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let percents = |v: &[Value]| -> Vec<u64> {
        v.iter().filter(|n| n["kind"] == "threshold_crossed").map(|n| n["percent"].as_u64().unwrap()).collect()
    };

    for _ in 0..6 {
        assert!(connect().ok());
    }
    daemon.wait_until("50% notice delivered", 5, |s| s["notifications"]["sent"].as_u64() >= Some(1));
    assert_eq!(percents(&told()), vec![50]);

    // A clean restart neither repeats the 50% notice nor loses the crossing.
    let status = daemon.stop();
    assert!(status.success());
    let daemon = Daemon::start_in(daemon.dir(), &root, &config);
    for _ in 0..4 {
        assert!(connect().ok());
    }
    assert!(connect().eperm(), "the 11th $0.10 connection exceeds $1.00");
    daemon.wait_until("80/100% notices delivered", 5, |s| s["notifications"]["sent"].as_u64() >= Some(3));
    let all = told();
    assert_eq!(percents(&all), vec![50, 80, 100], "{all:#?}");
    assert_eq!(all.iter().filter(|n| n["kind"] == "suspended").count(), 1, "{all:#?}");
    let n = &all[0];
    assert_eq!(
        (n["agent"].as_str(), n["scope"].as_str(), n["currency"].as_str()),
        (Some("a1"), Some("agent"), Some("USD"))
    );
    assert_eq!(n["limit"], "1.000000");
    assert!(n["id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[test]
fn an_undeliverable_notice_is_counted_logged_and_audited() {
    if !privileged("an_undeliverable_notice_is_counted_logged_and_audited") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let config = format!(
        "{}[notify]\ncommand = [\"false\"]\nattempts = 2\ntimeout = \"2s\"\n",
        agent_with(&api(sink.port, r#"{ connection = "0.60" }"#), "budget = { limit = \"1.00\", window = \"total\" }")
    );
    let daemon = Daemon::start(&root, &config);
    assert!(workload(Some(&root.path.join("a1")), &["connect", &sink.addr("127.0.0.1")]).ok());
    let s = daemon.wait_until("failed notice counted", 10, |s| s["notifications"]["failed"].as_u64() >= Some(1));
    assert_eq!(s["notifications"]["sent"], 0);
    assert!(
        daemon
            .audit_log()
            .iter()
            .any(|r| r["kind"] == "notification_failed" && r["details"]["hook"] == "command false")
    );
    assert!(daemon.log().contains("notification could not be delivered"));
}

#[test]
fn a_new_window_resets_spend_and_lifts_the_suspension() {
    if !privileged("a_new_window_resets_spend_and_lifts_the_suspension") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(
        &root,
        &agent_with(
            &api(sink.port, r#"{ connection = "0.25" }"#),
            "budget = { limit = \"1.00\", window = \"rolling:3s\" }",
        ),
    );
    let agent = root.path.join("a1");
    let connect = || workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]);
    for _ in 0..4 {
        assert!(connect().ok());
    }
    assert!(connect().eperm());
    daemon.wait_until("suspended", 5, |s| s["agents"][0]["state"] == "suspended");
    // Three seconds on, the spend has left the window: resumed, and spending again.
    let s = daemon.wait_until("resumed by the new window", 10, |s| s["agents"][0]["state"] == "enforcing");
    assert_eq!(s["agents"][0]["budget"]["window_spend_pico"], 0);
    assert!(connect().ok());
    assert!(daemon.audit_log().iter().any(|r| r["kind"] == "resumed" && r["agent"] == "a1"));
}

#[test]
fn the_host_budget_binds_every_agent_and_the_stricter_budget_wins() {
    if !privileged("the_host_budget_binds_every_agent_and_the_stricter_budget_wins") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let config = format!(
        "{}\n[[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\nbudget = {{ limit = \"5.00\" }}\n[[agent]]\nname = \"a2\"\nendpoints = [\"api\"]\n[host]\nbudget = {{ limit = \"0.30\", window = \"day\" }}\n",
        api(sink.port, r#"{ connection = "0.10" }"#)
    );
    let daemon = Daemon::start(&root, &config);
    let (a1, a2) = (root.path.join("a1"), root.path.join("a2"));
    assert!(workload(Some(&a1), &["connect", &sink.addr("127.0.0.1")]).ok());
    assert!(workload(Some(&a2), &["connect", &sink.addr("127.0.0.1")]).ok());
    assert!(workload(Some(&a2), &["connect", &sink.addr("127.0.0.1")]).ok());
    // $0.30 of host budget is gone: a1's own $5.00 does not help it.
    assert!(workload(Some(&a1), &["connect", &sink.addr("127.0.0.1")]).eperm());
    let s = daemon.wait_until("host suspended", 5, |s| s["host_budget"]["state"] == "suspended");
    assert_eq!(s["host_budget"]["window_spend_pico"], 3 * PICO / 10);
    assert!(s["host_budget"]["window_end"].as_str().is_some_and(|e| e.ends_with("T00:00:00Z")), "{s:#}");
    assert_eq!(daemon.budget("a1")["window_spend_pico"], PICO / 10);
    assert_eq!(daemon.budget("a2")["state"], "none");
}

/// A loopback HTTP receiver that records each POSTed body; answers 500 to the first request so
/// the hook's retry is exercised.
fn receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().take(20).enumerate() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if n > 0 {
                got2.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
            }
        }
    });
    (port, got)
}

#[test]
fn notices_are_posted_to_the_url_hook_with_retries() {
    if !privileged("notices_are_posted_to_the_url_hook_with_retries") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let (port, got) = receiver();
    let config = format!(
        "{}[notify]\nurl = \"http://127.0.0.1:{port}/governor\"\nattempts = 3\n",
        agent_with(&api(sink.port, r#"{ connection = "0.30" }"#), "budget = { limit = \"1.00\", window = \"total\" }")
    );
    let daemon = Daemon::start(&root, &config);
    let agent = root.path.join("a1");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());
    daemon.wait_until("50% notice posted", 10, |s| s["notifications"]["sent"].as_u64() >= Some(1));
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert_eq!((bodies[0]["kind"].as_str(), bodies[0]["percent"].as_u64()), (Some("threshold_crossed"), Some(50)));
    assert_eq!(bodies[0]["window_spend"], "0.600000");
    assert_eq!(daemon.status()["notifications"]["failed"], 0, "the first attempt failed, the retry succeeded");
}

/// A budget suspension is lifted by a raised limit (with that reason), or explicitly by
/// `resume --budget`; a plain `resume`, alone or with --all, lifts only pauses and checkpoints.
#[test]
fn a_raised_budget_resumes_and_plain_resume_leaves_a_budget_suspension_alone() {
    if !privileged("a_raised_budget_resumes_and_plain_resume_leaves_a_budget_suspension_alone") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let body = |limit: &str| {
        agent_with(
            &api(sink.port, r#"{ connection = "0.25" }"#),
            &format!("budget = {{ limit = \"{limit}\", window = \"day\" }}"),
        )
    };
    let daemon = Daemon::start(&root, &body("1.00"));
    let agent = root.path.join("a1");
    let connect = || workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]);
    for _ in 0..4 {
        assert!(connect().ok());
    }
    assert!(connect().eperm());
    daemon.wait_until("suspended", 5, |s| s["agents"][0]["state"] == "suspended");

    let out = daemon.cli_output(&["resume", "a1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("its budget suspends it") && stderr.contains("resume --budget a1"), "{stderr}");
    assert!(!stderr.contains("409"), "no HTTP status in what the operator reads: {stderr}");
    let out = daemon.cli(&["resume", "--all"]);
    assert!(out.contains("no agent was paused"), "{out}");
    assert!(connect().eperm(), "still suspended");
    assert!(!daemon.audit_log().iter().any(|r| r["kind"] == "resumed"), "no false resumed notice");

    // Raised, reloaded: resumed at once, with the reason that is true.
    governor_tests::write_config(daemon.dir().path(), &root, &body("2.00"));
    daemon.cli(&["reload"]);
    daemon.wait_until("resumed by the raised budget", 5, |s| s["agents"][0]["state"] == "enforcing");
    let resumed: Vec<Value> = daemon.audit_log().into_iter().filter(|r| r["kind"] == "resumed").collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["details"]["reason"], "the budget was raised from 1.000000 to 2.000000", "{resumed:?}");
    for _ in 0..4 {
        assert!(connect().ok());
    }
    assert!(connect().eperm());
    daemon.wait_until("suspended again", 5, |s| s["agents"][0]["state"] == "suspended");

    // The explicit act: past the ceiling for the rest of the window, audited as such.
    let out = daemon.cli(&["resume", "--budget", "a1"]);
    assert!(out.contains("budget suspension lifted"), "{out}");
    assert!(daemon.audit_log().iter().any(|r| r["kind"] == "budget_resume" && r["agent"] == "a1"));
    daemon.wait_until("resumed by the operator", 5, |s| s["agents"][0]["state"] == "enforcing");
    assert!(connect().ok(), "the ceiling is lifted for this window");
    let reasons: Vec<Value> = daemon
        .audit_log()
        .into_iter()
        .filter(|r| r["kind"] == "resumed")
        .map(|r| r["details"]["reason"].clone())
        .collect();
    assert_eq!(reasons[1], "an operator lifted the suspension for the rest of the window", "{reasons:?}");
}
