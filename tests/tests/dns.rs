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
    // Not allowed: the proxy refuses the lookup itself (curl exits 6, could not resolve), and
    // the query never leaves the host.
    let upstream_before = _dns.queries();
    for host in ["evil.test", "allowed.test"] {
        let out = curl(&agent, dir.path(), resolver, &url(host));
        assert_eq!(out.status.code(), Some(6), "{host}: {out:?}");
    }
    assert_eq!(_dns.queries(), upstream_before, "a refused name was asked upstream");
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
    assert!(q["admitted"].as_u64().unwrap_or(0) >= 4 && q["refused"].as_u64().unwrap_or(0) >= 2, "{q}");
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

/// A raw DNS query from inside an agent: name, type, and EDNS padding bytes (0: no OPT record).
/// Prints the response code, or "timeout".
const RAW_QUERY: &str = r#"
import socket, struct, sys
resolver, name, qtype, pad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
opt = b""
if pad:
    opt = b"\0" + struct.pack(">HHIH", 41, 4096, 0, pad + 4) + struct.pack(">HH", 12, pad) + b"\0" * pad
msg = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 1 if pad else 0) + qname + struct.pack(">HH", qtype, 1) + opt
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((resolver, 53))
s.send(msg)
try:
    print(s.recv(65535)[3] & 0x0F)
except socket.timeout:
    print("timeout")
"#;

fn raw_query(cgroup: &Path, resolver: Ipv4Addr, name: &str, qtype: u16, pad: usize) -> String {
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", RAW_QUERY, &resolver.to_string(), name, &qtype.to_string(), &pad.to_string()]);
    let out = governor_tests::run_in(cgroup, cmd);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// DNS is no channel out: in enforce mode only standard A/AAAA/CNAME/HTTPS/SVCB queries of
/// allowed names, of a size a question has, leave the host; the rest get REFUSED from the proxy,
/// counted as denials (reasons dns-name, dns-query). Observe mode relays and counts would_deny.
#[test]
fn dns_is_no_channel_out() {
    if !privileged("dns_is_no_channel_out") {
        return;
    }
    const REFUSED: &str = "5";
    const NXDOMAIN: &str = "3";
    let root = AgentsRoot::new();
    let resolver = Ipv4Addr::new(127, 53, 0, 4);
    let dns = DnsServer::start(resolver, &[("api.allowed.test", Rr::A(Ipv4Addr::new(127, 0, 0, 1), 60))]);
    // Wildcards only: the daemon resolves no exact name itself, so the upstream's count is the
    // agents' alone.
    let body = format!(
        "[[endpoint]]\nname = \"api\"\nhosts = [\"*.allowed.test\"]\nports = [443]\nprotocol = \"tcp\"\n\
         [[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\n\
         [[agent]]\nname = \"watch\"\nmode = \"observe\"\nendpoints = [\"api\"]\n\
         [dns]\nresolvers = [\"{resolver}\"]\nupstream_timeout = \"1s\"\n"
    );
    let daemon = Daemon::start(&root, &body);
    let agent = root.path.join("a1");
    // An allowed name's address lookup goes through.
    assert_eq!(raw_query(&agent, resolver, "api.allowed.test", 1, 0), "0");
    let asked = dns.queries();
    // A tunnel's shapes: data spelled in a name no allowlist has, a TXT or ANY for an allowed
    // name, an UPDATE-sized payload in EDNS padding: refused here, never asked upstream.
    assert_eq!(raw_query(&agent, resolver, "6465616462656566.tunnel.test", 1, 0), NXDOMAIN);
    assert_eq!(raw_query(&agent, resolver, "api.allowed.test", 16, 0), REFUSED);
    assert_eq!(raw_query(&agent, resolver, "api.allowed.test", 255, 0), REFUSED);
    assert_eq!(raw_query(&agent, resolver, "api.allowed.test", 1, 1000), REFUSED);
    assert_eq!(dns.queries(), asked, "a refused query reached the upstream resolver");
    let a1 = daemon.agent("a1");
    let by_reason = &a1["totals"]["denied_by_reason"];
    assert_eq!((by_reason["dns-name"].as_u64(), by_reason["dns-query"].as_u64()), (Some(1), Some(3)), "{a1:#}");
    let q = &daemon.status()["dns"]["queries"]["a1"];
    assert_eq!((q["refused"].as_u64(), q["refused-query"].as_u64()), (Some(1), Some(3)), "{q}");
    let metrics = daemon.metrics();
    assert!(
        metrics
            .contains(r#"governor_connections_total{agent="a1",endpoint="dns",reason="dns-name",verdict="denied"} 1"#),
        "{metrics}"
    );
    // Aggregated into the audit log like the kernel's denials.
    let record = daemon.wait_until("the refusals audited", 5, |_| {
        daemon.audit_log().iter().any(|r| r["kind"] == "denied" && r["details"]["reason"] == "dns-name")
    });
    drop(record);

    // Observe mode: relayed, and counted as would_deny.
    let watch = root.path.join("watch");
    let asked = dns.queries();
    let answer = raw_query(&watch, resolver, "6465616462656566.tunnel.test", 1, 0);
    assert!(answer != REFUSED && answer != "timeout", "{answer}");
    assert_eq!(dns.queries(), asked + 1, "observe mode relays");
    assert_eq!(daemon.agent("watch")["totals"]["would_deny"].as_u64(), Some(1));
}

/// One agent cannot deny DNS to another: each has its own share of the proxy. A hog with 400
/// queries hanging upstream fills its own share (the rest are dropped and counted under it), and
/// another agent's lookup is answered at once.
#[test]
fn one_agent_cannot_deny_dns_to_another() {
    if !privileged("one_agent_cannot_deny_dns_to_another") {
        return;
    }
    const FLOOD: &str = r#"
import socket, struct, sys
resolver, n = sys.argv[1], int(sys.argv[2])
qname = b"".join(bytes([len(l)]) + l.encode() for l in "silent.allowed.test".split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((resolver, 53))
for i in range(n):
    s.send(struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1))
print("sent", n)
"#;
    let root = AgentsRoot::new();
    let resolver = Ipv4Addr::new(127, 53, 0, 5);
    let _dns = DnsServer::start(
        resolver,
        &[("silent.allowed.test", Rr::Silent), ("api.allowed.test", Rr::A(Ipv4Addr::new(127, 0, 0, 1), 60))],
    );
    let body = format!(
        "[[endpoint]]\nname = \"api\"\nhosts = [\"*.allowed.test\"]\nports = [443]\nprotocol = \"tcp\"\n\
         [[agent]]\nname = \"hog\"\nendpoints = [\"api\"]\n[[agent]]\nname = \"victim\"\nendpoints = [\"api\"]\n\
         [dns]\nresolvers = [\"{resolver}\"]\nupstream_timeout = \"4s\"\n"
    );
    let daemon = Daemon::start(&root, &body);
    let mut flood = std::process::Command::new("python3");
    flood.args(["-c", FLOOD, &resolver.to_string(), "400"]);
    let out = governor_tests::run_in(&root.path.join("hog"), flood);
    assert!(out.status.success(), "{out:?}");
    // The hog's queries hang upstream for 4 s; the victim asks now.
    let started = std::time::Instant::now();
    assert_eq!(raw_query(&root.path.join("victim"), resolver, "api.allowed.test", 1, 0), "0");
    assert!(started.elapsed() < Duration::from_secs(2), "the victim waited {:?}", started.elapsed());
    let q = &daemon.status()["dns"]["queries"];
    // Some of the flood never reaches the proxy (its receive buffer); what does is dropped past 32.
    assert!(q["hog"]["dropped"].as_u64().unwrap_or(0) >= 200, "{q}");
    assert_eq!(q["victim"]["dropped"].as_u64(), None, "{q}");
}

/// Nobody can take the proxy's place: its port is below 1024 (no unprivileged process binds
/// it), agents cannot bind it at all (even as root: binds need `inbound`), and once a daemon
/// stops cleanly the kernel refuses agents' DNS instead of steering it to the empty port.
#[test]
fn no_one_can_answer_in_the_proxys_place() {
    if !privileged("no_one_can_answer_in_the_proxys_place") {
        return;
    }
    let root = AgentsRoot::new();
    let resolver = Ipv4Addr::new(127, 53, 0, 7);
    let mut daemon = Daemon::start(&root, &config(443, resolver, ""));
    let port = daemon.status()["dns"]["proxy_port"].as_u64().unwrap();
    assert!(port < 1024, "proxy port {port}");
    let agent = root.path.join("a1");
    for addr in ["127.0.0.1", "0.0.0.0", "127.64.0.1"] {
        let mut bind = std::process::Command::new("python3");
        bind.args([
            "-c",
            "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n    s.bind((sys.argv[1], int(sys.argv[2])))\n    print('bound')\nexcept OSError as e:\n    print('errno', e.errno)",
            addr,
            &port.to_string(),
        ]);
        let out = governor_tests::run_in(&agent, bind);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "errno 1", "{addr}: {out:?}");
    }
    assert!(daemon.stop().success());
    // The programs still enforce; DNS to the resolver is refused, not steered to a dead port.
    assert!(workload(Some(&agent), &["udp-send", &format!("{resolver}:53")]).eperm());
}
