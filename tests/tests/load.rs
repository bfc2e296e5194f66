//! Sustained load on the real kernel: 10,000 connections a second for 60 seconds from 50
//! processes in 10 agents. The kernel's counts equal the clients' own, exactly; the daemon's
//! memory stays flat; its socket API keeps answering quickly.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use governor_tests::{AgentsRoot, Daemon, privileged, spawn_in, workload_bin};

const AGENTS: usize = 10;
const PER_AGENT: usize = 5;
const RATE: u64 = 200; // per process: 50 x 200 = 10,000 connections a second
const SECS: u64 = 60;

#[test]
fn ten_thousand_connections_a_second_for_a_minute() {
    if !privileged("ten_thousand_connections_a_second_for_a_minute") {
        return;
    }
    let root = AgentsRoot::new();
    // accept-loop does not report its port: take a free one first.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut acceptor = Command::new(workload_bin())
        .args(["accept-loop", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(acceptor.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening");
    }
    let mut config = format!("[[endpoint]]\nname = \"acceptor\"\naddresses = [\"127.0.0.1\"]\nports = [{port}]\n");
    for a in 0..AGENTS {
        config.push_str(&format!("[[agent]]\nname = \"load{a}\"\nendpoints = [\"acceptor\"]\n"));
    }
    let daemon = Daemon::start(&root, &config);
    let rss = governor_tests::rss_kib;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss(daemon.pid());

    let addr = format!("127.0.0.1:{port}");
    let clients: Vec<(usize, std::process::Child)> = (0..AGENTS * PER_AGENT)
        .map(|i| {
            let agent = i % AGENTS;
            let mut c = Command::new(workload_bin());
            c.args(["connect-rate", &addr, &RATE.to_string(), &SECS.to_string()]).stdout(Stdio::piped());
            (agent, spawn_in(&root.path.join(format!("load{agent}")), c))
        })
        .collect();

    // While the load runs, the socket API keeps answering.
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(SECS - 2) {
        let t = Instant::now();
        let s = daemon.status();
        slowest = slowest.max(t.elapsed());
        assert!(s["version"].is_string());
        std::thread::sleep(Duration::from_secs(2));
    }

    let mut by_agent = [0u64; AGENTS];
    let mut total_ok = 0;
    for (agent, child) in clients {
        let out = child.wait_with_output().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("client: {e}: {out:?}"));
        assert_eq!(v["eperm"], 0, "{v}");
        by_agent[agent] += v["bytes"].as_u64().unwrap();
        total_ok += v["bytes"].as_u64().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = acceptor.kill();
    let _ = acceptor.wait();

    for (a, expected) in by_agent.iter().enumerate() {
        let c = daemon.counters(&format!("load{a}"), "acceptor");
        assert_eq!(
            c.allowed, *expected,
            "agent load{a}: the kernel counted {} connects, its clients made {expected}",
            c.allowed
        );
    }
    let rss_after = rss(daemon.pid());
    eprintln!(
        "load: {total_ok} connects in {elapsed:.0} s ({:.0}/s); status answered within {slowest:?} at worst; daemon {rss_before} -> {rss_after} KiB",
        total_ok as f64 / elapsed
    );
    assert!(total_ok as f64 / elapsed > 8_000.0, "the load generator fell short: {:.0}/s", total_ok as f64 / elapsed);
    assert!(slowest < Duration::from_millis(100), "the socket API took {slowest:?} under load");
    assert!(rss_after < rss_before + 8 * 1024, "daemon memory grew from {rss_before} KiB to {rss_after} KiB");
}
