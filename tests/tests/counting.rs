//! Byte and packet counting on the real kernel, nested cgroups, processes outside agents,
//! observe mode and discovered agents.

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, workload};

fn allow_port(port: u16, mode: &str) -> String {
    format!(
        r#"
[[endpoint]]
name = "sink"
addresses = ["127.0.0.1"]
ports = [{port}]
protocol = "tcp"

[[agent]]
name = "a1"
endpoints = ["sink"]
mode = "{mode}"
"#
    )
}

/// IPv4 (20) + TCP (20) + TCP options (up to 40): no packet carries more than 80 header bytes.
/// The cgroup_skb hooks see GSO super-packets, so the packet count is small on loopback.
const MAX_HEADER_BYTES: u64 = 80;

#[test]
fn bytes_counted_match_the_payload_plus_headers() {
    if !privileged("bytes_counted_match_the_payload_plus_headers") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let source = Server::start(Serve::Source(3_000_000));
    let daemon = Daemon::start(
        &root,
        &format!(
            "{}\n[[endpoint]]\nname = \"source\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\n",
            allow_port(sink.port, "enforce").replace("endpoints = [\"sink\"]", "endpoints = [\"sink\", \"source\"]"),
            source.port
        ),
    );
    let agent = root.path.join("a1");

    // Egress: the hook counts what went on the wire, retransmissions included, so the bound is
    // taken against the socket's own tcpi_bytes_sent (equal to N when nothing was retransmitted).
    const N: u64 = 5_000_000;
    let sent = workload(Some(&agent), &["send", &sink.addr("127.0.0.1"), &N.to_string()]);
    assert!(sent.ok(), "{sent:?}");
    assert_eq!(sink.received(), N);
    let wire = sent.json["wire_bytes"].as_u64().unwrap();
    assert!(wire >= N, "{sent:?}");
    let c = daemon.counters("a1", "sink");
    assert!(c.tx_bytes >= wire, "{wire} payload bytes on the wire ({N} + retransmissions), counted {}", c.tx_bytes);
    assert!(
        c.tx_bytes <= wire + MAX_HEADER_BYTES * c.tx_packets,
        "counted {} bytes in {} packets for {wire} payload bytes on the wire: more than {MAX_HEADER_BYTES} header bytes per packet",
        c.tx_bytes,
        c.tx_packets
    );
    // Ingress is the server's ACKs and FIN: headers only.
    assert!(c.rx_packets > 0 && c.rx_bytes <= MAX_HEADER_BYTES * c.rx_packets, "{c:?}");
    eprintln!(
        "sent {N} (on the wire {wire}, {} retransmitted): counted {} bytes in {} packets",
        sent.json["retrans_bytes"], c.tx_bytes, c.tx_packets
    );

    // Ingress: bounded by what the server put on the wire.
    const M: u64 = 3_000_000;
    let got = workload(Some(&agent), &["recv", &source.addr("127.0.0.1")]);
    assert_eq!(got.json["bytes"], M, "{got:?}");
    drop(got);
    let wire = wait_for(|| source.wire_sent());
    let c = daemon.counters("a1", "source");
    assert!(c.rx_bytes >= M, "received {M}, counted {c:?}");
    assert!(c.rx_bytes <= wire + MAX_HEADER_BYTES * c.rx_packets, "server put {wire} on the wire, counted {c:?}");
    eprintln!("received {M} (server put {wire} on the wire): counted {} bytes in {} packets", c.rx_bytes, c.rx_packets);
}

/// Polls `f` until it is non-zero (a server thread finishing its bookkeeping), for up to 5 s.
fn wait_for(f: impl Fn() -> u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = f();
        if v > 0 {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "server did not finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_nested_cgroup_counts_toward_its_agent() {
    if !privileged("a_nested_cgroup_counts_toward_its_agent") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &allow_port(sink.port, "enforce"));
    let nested = root.cgroup("a1/workers/w1");

    let ok = workload(Some(&nested), &["send", &sink.addr("127.0.0.1"), "100000"]);
    assert!(ok.ok(), "{ok:?}");
    let no = workload(Some(&nested), &["connect", &other.addr("127.0.0.1")]);
    assert!(no.eperm(), "{no:?}");

    let c = daemon.counters("a1", "sink");
    assert_eq!(c.allowed, 1);
    assert!(c.tx_bytes >= 100_000, "{c:?}");
    assert_eq!(daemon.counters("a1", "(unlisted)").denied, 1);
    // The nested cgroups are part of a1, not agents of their own.
    let names: Vec<String> =
        daemon.status()["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, vec!["a1"]);
}

#[test]
fn a_process_outside_the_agents_is_untouched() {
    if !privileged("a_process_outside_the_agents_is_untouched") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &allow_port(sink.port, "enforce"));
    let before = daemon.status();

    // In the test's own cgroup, and in the agents root itself (not in any agent).
    let outside = workload(None, &["send", &other.addr("127.0.0.1"), "10000"]);
    assert!(outside.ok(), "{outside:?}");
    let in_root = workload(Some(&root.path), &["send", &other.addr("127.0.0.1"), "10000"]);
    assert!(in_root.ok(), "{in_root:?}");

    let after = daemon.status();
    assert_eq!(before["agents"], after["agents"], "counters moved for traffic outside every agent");
    assert_eq!(after["events"]["received"], 0);
}

#[test]
fn observe_mode_counts_would_be_denials_and_refuses_nothing() {
    if !privileged("observe_mode_counts_would_be_denials_and_refuses_nothing") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &allow_port(sink.port, "observe"));
    let agent = root.path.join("a1");

    let ok = workload(Some(&agent), &["send", &other.addr("127.0.0.1"), "50000"]);
    assert!(ok.ok(), "observe mode must not refuse: {ok:?}");
    let c = daemon.counters("a1", "(unlisted)");
    assert_eq!((c.would_deny, c.denied), (1, 0), "{c:?}");
    assert!(c.tx_bytes >= 50_000, "traffic of observed would-be denials is counted: {c:?}");
    assert_eq!(daemon.agent("a1")["state"], "observing");
}

#[test]
fn unlisted_child_cgroups_are_discovered_and_observed() {
    if !privileged("unlisted_child_cgroups_are_discovered_and_observed") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, "");
    let newcomer = root.cgroup("newcomer");

    // Discovery rescans every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !daemon.status()["agents"].as_array().unwrap().iter().any(|a| a["name"] == "newcomer") {
        assert!(std::time::Instant::now() < deadline, "newcomer not discovered: {:#}", daemon.status());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ok = workload(Some(&newcomer), &["send", &sink.addr("127.0.0.1"), "20000"]);
    assert!(ok.ok(), "{ok:?}");
    let a = daemon.agent("newcomer");
    assert_eq!(
        (a["source"].as_str(), a["mode"].as_str(), a["state"].as_str()),
        (Some("discovered"), Some("observe"), Some("observing"))
    );
    let c = daemon.counters("newcomer", "(unlisted)");
    assert_eq!(c.would_deny, 1);
    assert!(c.tx_bytes >= 20_000, "{c:?}");
}
