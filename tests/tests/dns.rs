//! Hostname allowlists on the real kernel: agents resolve through their own resolver library
//! (glibc, via curl and getent) against a tiny DNS server on loopback; the kernel sends the
//! queries to governor's proxy, which admits the addresses of allowed names before it answers.

use std::{net::Ipv4Addr, path::Path, process::Output, time::Duration};

use governor_tests::{
    AgentsRoot, Daemon, Serve, Server,
    dns::{DnsServer, Rr, with_resolver},
    privileged, workload,
};

fn curl(cgroup: &Path, dir: &Path, resolver: Ipv4Addr, url: &str) -> Output {
    with_resolver(cgroup, dir, resolver, &["curl", "-sS", "-o", "/dev/null", "--max-time", "10", url])
}

fn config(port: u16, resolver: Ipv4Addr, dns_extra: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"api\"\nhosts = [\"*.allowed.test\", \"exact.other.test\"]\nports = [{port}]\nprotocol = \"tcp\"\n\
         [[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\n\
         [dns]\nresolvers = [\"{resolver}\"]\nupstream_timeout = \"1s\"\n{dns_extra}\n"
    )
}

fn dns_counters(daemon: &Daemon) -> serde_json::Value {
    daemon.agent("a1")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == "dns")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn allowed_names_are_admitted_before_the_agent_sees_the_answer() {
    if !privileged("allowed_names_are_admitted_before_the_agent_sees_the_answer") {
        return;
    }
    let root = AgentsRoot::new();
    let http = Server::start(Serve::Http(100));
    let resolver = Ipv4Addr::new(127, 53, 0, 1);
    let _dns = DnsServer::start(
        resolver,
        &[
            ("api.allowed.test", Rr::A(Ipv4Addr::new(127, 0, 0, 1), 60)),
            ("deep.a.allowed.test", Rr::A(Ipv4Addr::new(127, 0, 0, 4), 60)),
            ("allowed.test", Rr::A(Ipv4Addr::new(127, 0, 0, 5), 60)),
            ("cname.allowed.test", Rr::Cname("edge.cdn.test".into())),
            ("edge.cdn.test", Rr::A(Ipv4Addr::new(127, 0, 0, 2), 60)),
            ("evil.test", Rr::A(Ipv4Addr::new(127, 0, 0, 3), 60)),
            ("big.allowed.test", Rr::TruncatedA(Ipv4Addr::new(127, 0, 0, 6))),
            ("v6.allowed.test", Rr::Aaaa(std::net::Ipv6Addr::LOCALHOST, 60)),
        ],
    );
    let mut daemon = Daemon::start(&root, &config(http.port, resolver, ""));
    let agent = root.path.join("a1");
    let dir = daemon.dir();
    let url = |host: &str| format!("http://{host}:{}/", http.port);

    // Nothing is admitted before a lookup.
    assert!(workload(Some(&agent), &["connect", &http.addr("127.0.0.1")]).eperm());

    // curl resolves and connects at once: a late admission would fail its first connect.
    for host in ["api.allowed.test", "cname.allowed.test", "deep.a.allowed.test", "big.allowed.test"] {
        let out = curl(&agent, dir.path(), resolver, &url(host));
        assert!(out.status.success(), "{host}: {out:?}\n{}", daemon.log());
    }
    // An AAAA answer admits the IPv6 address (the server listens dual-stack): not allowed before.
    assert!(workload(Some(&agent), &["connect", &http.addr("::1")]).eperm());
    let out = curl(&agent, dir.path(), resolver, &format!("http://v6.allowed.test:{}/", http.port));
    assert!(out.status.success(), "v6: {out:?}");
    // Resolved but not allowed: curl's connect is refused (exit 7), not its lookup (exit 6).
    for host in ["evil.test", "allowed.test"] {
        let out = curl(&agent, dir.path(), resolver, &url(host));
        assert_eq!(out.status.code(), Some(7), "{host}: {out:?}");
    }
    // The agent's resolver library saw its own resolver answer (recvmsg restores the source).
    let out = with_resolver(&agent, dir.path(), resolver, &["getent", "ahostsv4", "api.allowed.test"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1"), "{out:?}");

    // DNS went only through the proxy, and was counted under the `dns` endpoint.
    let dns = dns_counters(&daemon);
    assert!(dns["allowed"].as_u64().unwrap_or(0) >= 7, "{dns}");
    assert!(dns["tx_bytes"].as_u64().unwrap_or(0) > 0, "{dns}");
    let status = daemon.status();
    assert_eq!(status["dns"]["resolvers"][0], "127.53.0.1", "{}", status["dns"]);
    let q = &status["dns"]["queries"]["a1"];
    assert!(q["admitted"].as_u64().unwrap_or(0) >= 4 && q["not-allowed"].as_u64().unwrap_or(0) >= 2, "{q}");
    let table = daemon.status_table();
    assert!(table.contains("dns: resolvers 127.53.0.1 via proxy port") && table.contains("admitted"), "{table}");
    let metrics = daemon.metrics();
    assert!(metrics.contains("governor_dns_queries_total{agent=\"a1\",result=\"admitted\"}"), "{metrics}");
    assert!(metrics.contains("governor_dns_cache_addresses"), "{metrics}");

    // DNS anywhere else is refused, over UDP and TCP.
    assert!(workload(Some(&agent), &["udp-send", "127.0.0.99:53"]).eperm());
    assert!(workload(Some(&agent), &["connect", "127.0.0.99:53"]).eperm());
    let denied = daemon.agent("a1")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["denied_by_reason"]["dns-resolver"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(denied, 2);

    // `explain` reads the kernel's verdict and says why.
    let why = daemon.cli(&["explain", "--agent", "a1", &http.addr("127.0.0.2")]);
    assert!(why.contains("allowed") && why.contains("cname.allowed.test") && why.contains("api"), "{why}");
    let out = daemon.cli_output(&["explain", "--agent", "a1", &http.addr("127.0.0.3")]);
    let why = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "a refused destination exits 3: {out:?}");
    assert!(why.contains("not-allowlisted") && why.contains("*.allowed.test"), "{why}");
    let out = daemon.cli_output(&["explain", "--agent", "a1", "127.0.0.99:53", "--protocol", "udp"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dns-resolver"), "{out:?}");

    // A reload and a restart keep what was admitted: the agent's cached answers stay usable.
    daemon.cli(&["reload"]);
    assert!(workload(Some(&agent), &["connect", &http.addr("127.0.0.2")]).ok(), "after reload");
    daemon.stop();
    let daemon = Daemon::start_in(dir.clone(), &root, &config(http.port, resolver, ""));
    assert!(workload(Some(&agent), &["connect", &http.addr("127.0.0.2")]).ok(), "after restart\n{}", daemon.log());
    assert!(workload(Some(&agent), &["connect", &http.addr("127.0.0.3")]).eperm(), "evil stays out");
}

#[test]
fn admitted_addresses_expire_by_last_use_and_caches_are_bounded() {
    if !privileged("admitted_addresses_expire_by_last_use_and_caches_are_bounded") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let resolver = Ipv4Addr::new(127, 53, 0, 2);
    let _dns = DnsServer::start(
        resolver,
        &[
            ("used.allowed.test", Rr::A(Ipv4Addr::new(127, 0, 1, 1), 1)),
            ("idle.allowed.test", Rr::A(Ipv4Addr::new(127, 0, 1, 2), 1)),
            ("third.allowed.test", Rr::A(Ipv4Addr::new(127, 0, 1, 3), 1)),
            ("silent.allowed.test", Rr::Silent),
        ],
    );
    let daemon = Daemon::start(&root, &config(sink.port, resolver, "min_ttl = \"1s\"\ngrace = \"2s\"\nmax_names = 2"));
    let agent = root.path.join("a1");
    let dir = daemon.dir();
    let lookup = |name: &str| with_resolver(&agent, dir.path(), resolver, &["getent", "ahostsv4", name]);
    assert!(lookup("used.allowed.test").status.success());
    assert!(lookup("idle.allowed.test").status.success());

    // Used every 500 ms for 5 s: kept well past TTL + grace (3 s) because it is in use.
    for _ in 0..10 {
        assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.1.1")]).ok(), "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    // The idle one is gone by now, and the used one goes once it stops being used.
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.1.2")]).eperm(), "idle address expired");
    std::thread::sleep(Duration::from_secs(4));
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.1.1")]).eperm(), "unused address expired");

    // Three names into a cache of two: the least recently looked up is evicted, and counted.
    for name in ["used.allowed.test", "idle.allowed.test", "third.allowed.test"] {
        assert!(lookup(name).status.success());
    }
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.1.1")]).eperm(), "evicted");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.1.3")]).ok());
    let status = daemon.status();
    assert_eq!(status["dns"]["cache"]["names"], 2, "{}", status["dns"]);
    assert!(status["dns"]["cache"]["evictions"].as_u64().unwrap() >= 1, "{}", status["dns"]);

    // A resolver that does not answer: the agent gets SERVFAIL, not silence.
    let out = lookup("silent.allowed.test");
    assert!(!out.status.success());
    assert!(daemon.status()["dns"]["queries"]["a1"]["servfail"].as_u64().unwrap_or(0) >= 1);
}
