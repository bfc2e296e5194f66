//! Agentic boundaries on the real kernel: rate and concurrency limits, socket types, and a
//! suite of escape attempts by an agent process, each of which must be refused (or counted).

use std::process::Command;

use governor_tests::{AgentsRoot, Daemon, Serve, Server, as_user, privileged, run_in, workload, workload_bin};

const NOBODY: u32 = 65534;

fn config(port: u16, agent_extra: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"api\"\naddresses = [\"127.0.0.1\", \"::1\"]\nports = [{port}]\nprotocol = \"any\"\n[[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\n{agent_extra}\n"
    )
}

fn denied(daemon: &Daemon, reason: &str) -> u64 {
    daemon.agent("a1")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["denied_by_reason"][reason].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn the_rate_limit_allows_the_burst_then_refuses() {
    if !privileged("the_rate_limit_allows_the_burst_then_refuses") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, "limits = { connections_per_minute = 60, burst = 5 }"));
    let out = workload(Some(&root.path.join("a1")), &["connect-loop", &sink.addr("127.0.0.1"), "20"]);
    assert!(out.ok(), "{out:?}");
    // One a second sustained, five at once: 20 connects in a few ms get exactly 5 through.
    assert_eq!((out.json["bytes"].as_u64(), out.json["eperm"].as_u64()), (Some(5), Some(15)), "{out:?}");
    assert_eq!(denied(&daemon, "rate-limit"), 15);
    let a = daemon.agent("a1");
    assert_eq!((a["limits"]["connections_per_minute"].as_u64(), a["limits"]["burst"].as_u64()), (Some(60), Some(5)));
    // A second later a token is back.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(workload(Some(&root.path.join("a1")), &["connect", &sink.addr("127.0.0.1")]).ok());
}

#[test]
fn the_concurrency_limit_counts_live_sockets_and_gives_back_on_close() {
    if !privileged("the_concurrency_limit_counts_live_sockets_and_gives_back_on_close") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, "limits = { max_concurrent = 3 }"));
    let agent = root.path.join("a1");
    let holder = governor_tests::spawn_in(&agent, {
        let mut c = Command::new(workload_bin());
        c.args(["hold", &sink.addr("127.0.0.1"), "5", "2"]).stdout(std::process::Stdio::piped());
        c
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(daemon.agent("a1")["live_connections"], 3, "three places taken while held");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).eperm(), "a fourth is refused");
    let out = holder.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["bytes"].as_u64(), v["eperm"].as_u64()), (Some(3), Some(2)), "{v}");
    // Closing gave every place back (socket release), so nothing leaks.
    daemon.wait_until("places given back", 5, |s| s["agents"][0]["live_connections"] == 0);
    for _ in 0..10 {
        assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok(), "places leaked");
    }
    assert!(denied(&daemon, "concurrency") >= 3);
}

#[test]
fn escape_attempts_are_refused_and_counted() {
    if !privileged("escape_attempts_are_refused_and_counted") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let agent = root.path.join("a1");
    let refused = |args: &[&str]| {
        let out = workload(Some(&agent), args);
        assert!(out.eperm(), "{args:?} was not refused: {out:?}");
    };
    // Every loopback form, so a local proxy cannot become the way out.
    for dest in [other.addr("127.0.0.1"), other.addr("::1"), other.addr("::ffff:127.0.0.1")] {
        refused(&["connect", &dest]);
    }
    for ip in ["127.0.0.2", "127.1.2.3", "127.255.255.254", "::ffff:127.9.9.9"] {
        refused(&["connect", &sink.addr(ip)]);
    }
    // UDP without connect, QUIC-like UDP to 443, sendmmsg, TCP Fast Open, io_uring.
    refused(&["udp-send", "127.0.0.1:443"]);
    refused(&["udp-send", "[::1]:443"]);
    refused(&["sendmmsg", "127.0.0.1:443"]);
    refused(&["tfo", &other.addr("127.0.0.1")]);
    refused(&["uring-connect", &other.addr("127.0.0.1")]);
    // After an exec, and in a forked child.
    let mut sh = Command::new("sh");
    sh.args(["-c", &format!("exec {} connect {}", workload_bin().display(), other.addr("127.0.0.1"))]);
    assert_eq!(run_in(&agent, sh).status.code(), Some(2), "connect after exec");
    let mut py = Command::new("python3");
    py.args(["-c", &format!(
        "import os, socket, sys\npid = os.fork()\nif pid == 0:\n    try:\n        socket.create_connection(('127.0.0.1', {}), timeout=5)\n        os._exit(0)\n    except PermissionError:\n        os._exit(2)\n_, st = os.waitpid(pid, 0)\nsys.exit(os.waitstatus_to_exitcode(st))",
        other.port
    )]);
    assert_eq!(run_in(&agent, py).status.code(), Some(2), "connect in a forked child");
    // Raw and ICMP sockets are refused at creation, even for root inside the agent; SCTP too.
    // (Where net.ipv4.ping_group_range excludes the caller, the kernel refuses ICMP sockets
    // itself with EACCES before the hook runs; where SCTP is not built, EPROTONOSUPPORT.)
    for kind in ["raw", "raw6", "icmp", "sctp"] {
        let out = workload(Some(&agent), &["socket", kind]);
        let errno = out.json["errno"].as_i64().unwrap_or(0) as i32;
        let kernel_refused =
            (kind == "icmp" && errno == libc::EACCES) || (kind == "sctp" && errno == libc::EPROTONOSUPPORT);
        assert!(out.eperm() || kernel_refused, "socket {kind}: {out:?}");
    }
    assert!(workload(Some(&agent), &["socket", "tcp"]).ok(), "plain TCP sockets are fine");
    // Packet sockets never reach the inet hooks: an unprivileged agent cannot make one at all.
    let mut pkt = Command::new(workload_bin());
    pkt.args(["socket", "packet"]);
    as_user(&mut pkt, NOBODY, NOBODY);
    let out = run_in(&agent, pkt);
    assert_eq!(out.status.code(), Some(2), "packet socket as an unprivileged agent: {out:?}");

    // The allowed destination still works, by every form.
    for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        assert!(workload(Some(&agent), &["connect", &sink.addr(ip)]).ok(), "{ip}");
    }
    // 3 + 4 loopback forms, 2 UDP sends, sendmmsg, TFO, io_uring, after exec, after fork.
    assert_eq!(denied(&daemon, "not-allowlisted"), 14, "{:#}", daemon.agent("a1"));
    assert!(denied(&daemon, "socket-type") >= 2, "raw and raw6 at least: {:#}", daemon.agent("a1"));
}

#[test]
fn a_ten_thousand_address_scan_is_refused_counted_and_cheap() {
    if !privileged("a_ten_thousand_address_scan_is_refused_counted_and_cheap") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let rss = governor_tests::rss_kib;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = rss(daemon.pid());
    let out = workload(Some(&root.path.join("a1")), &["scan", "10000", "9"]);
    assert_eq!((out.json["eperm"].as_u64(), out.json["bytes"].as_u64()), (Some(10_000), Some(0)), "{out:?}");
    std::thread::sleep(std::time::Duration::from_millis(600));
    // Every attempt is counted in the kernel...
    assert_eq!(denied(&daemon, "not-allowlisted"), 10_000);
    // ...while the audit log stays small (aggregated) and the daemon's memory flat.
    let records = daemon.audit_log().iter().filter(|r| r["kind"] == "denied").count();
    let total: u64 = daemon
        .audit_log()
        .iter()
        .filter(|r| r["kind"] == "denied")
        .map(|r| r["details"]["count"].as_u64().unwrap())
        .sum();
    assert!(records < 100, "{records} denied records for one scan");
    assert_eq!(total + daemon.status()["events"]["lost"].as_u64().unwrap(), 10_000);
    let after = rss(daemon.pid());
    assert!(after < before + 4096, "daemon memory grew from {before} KiB to {after} KiB");
    eprintln!("scan: 10,000 refused, {records} audit records, daemon {before} -> {after} KiB");
}

#[test]
fn endpoint_limits_apply_per_agent_on_top_of_its_own() {
    if !privileged("endpoint_limits_apply_per_agent_on_top_of_its_own") {
        return;
    }
    let root = AgentsRoot::new();
    let (held, rated, free) = (Server::start(Serve::Sink), Server::start(Serve::Sink), Server::start(Serve::Sink));
    let daemon = Daemon::start(
        &root,
        &format!(
            "[[endpoint]]\nname = \"held\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\nlimits = {{ max_concurrent = 2 }}\n\
             [[endpoint]]\nname = \"rated\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\nlimits = {{ connections_per_minute = 60, burst = 3 }}\n\
             [[endpoint]]\nname = \"free\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\n\
             [[agent]]\nname = \"a1\"\nendpoints = [\"held\", \"rated\", \"free\"]\nlimits = {{ max_concurrent = 10 }}\n",
            held.port, rated.port, free.port
        ),
    );
    let agent = root.path.join("a1");
    let holder = governor_tests::spawn_in(&agent, {
        let mut c = Command::new(workload_bin());
        c.args(["hold", &held.addr("127.0.0.1"), "4", "2"]).stdout(std::process::Stdio::piped());
        c
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    let ep = |name: &str| {
        daemon.agent("a1")["endpoints"].as_array().unwrap().iter().find(|e| e["endpoint"] == name).cloned().unwrap()
    };
    let e = ep("held");
    assert_eq!((e["live_connections"].as_u64(), e["limits"]["max_concurrent"].as_u64()), (Some(2), Some(2)), "{e}");
    // The endpoint is full; the agent is not: another endpoint still takes connections.
    assert!(workload(Some(&agent), &["connect", &held.addr("127.0.0.1")]).eperm());
    assert!(workload(Some(&agent), &["connect", &free.addr("127.0.0.1")]).ok());
    let out = holder.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["bytes"].as_u64(), v["eperm"].as_u64()), (Some(2), Some(2)), "{v}");
    daemon.wait_until("endpoint places given back", 5, |s| {
        s["agents"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["endpoint"] == "held" && e["live_connections"] == 0)
    });
    assert!(workload(Some(&agent), &["connect", &held.addr("127.0.0.1")]).ok(), "places leaked");

    // The rate limit of one endpoint: its burst, then refusals; the others are untouched.
    let out = workload(Some(&agent), &["connect-loop", &rated.addr("127.0.0.1"), "10"]);
    assert_eq!((out.json["bytes"].as_u64(), out.json["eperm"].as_u64()), (Some(3), Some(7)), "{out:?}");
    let out = workload(Some(&agent), &["connect-loop", &free.addr("127.0.0.1"), "10"]);
    assert_eq!(out.json["eperm"].as_u64(), Some(0), "{out:?}");
    assert_eq!(ep("rated")["denied_by_reason"]["rate-limit"].as_u64(), Some(7));
    assert_eq!(ep("held")["denied_by_reason"]["concurrency"].as_u64(), Some(3));
    let why = daemon.cli(&["explain", "--agent", "a1", &held.addr("127.0.0.1")]);
    assert!(why.contains("own limits") && why.contains("of 2 concurrent"), "{why}");
}

/// Options that would route a socket's packets past the destination it was admitted for: an
/// IPv6 segment routing header (type 4, allowed without privileges) and an IPv4 loose source
/// route (the kernel itself allows that one to root only). Outside an agent the kernel accepts
/// them (the options are valid); inside, for any user, EPERM, counted under `socket-option`; an
/// ordinary option still works.
#[test]
fn routing_header_and_source_route_options_are_refused() {
    if !privileged("routing_header_and_source_route_options_are_refused") {
        return;
    }
    const SCRIPT: &str = r#"
import socket
def attempt(family, level, option, value):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(level, option, value)
        return "ok"
    except OSError as e:
        return "errno %d" % e.errno
srh = bytes([0, 2, 4, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, "::1")
print(attempt(socket.AF_INET6, socket.IPPROTO_IPV6, 57, srh))
print(attempt(socket.AF_INET, socket.IPPROTO_IP, 4, bytes([131, 7, 4, 127, 0, 0, 2, 0])))
print(attempt(socket.AF_INET, socket.IPPROTO_IP, socket.IP_TOS, 16))
"#;
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let script = |user: Option<u32>| {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SCRIPT]);
        if let Some(uid) = user {
            as_user(&mut cmd, uid, uid);
        }
        cmd
    };
    let stdout = |out: std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout(script(Some(NOBODY)).output().unwrap()), "ok\nerrno 1\nok\n", "outside, unprivileged");
    assert_eq!(stdout(script(None).output().unwrap()), "ok\nok\nok\n", "outside, root");
    let agent = root.path.join("a1");
    assert_eq!(stdout(run_in(&agent, script(Some(NOBODY)))), "errno 1\nerrno 1\nok\n", "inside, unprivileged");
    assert_eq!(stdout(run_in(&agent, script(None))), "errno 1\nerrno 1\nok\n", "inside, root");
    assert_eq!(denied(&daemon, "socket-option"), 4);
}

/// Inbound: an enforce agent may bind only the ports `inbound` names (port 0, the ephemeral
/// ports clients bind, stays free), and nothing reaches a socket of its that no connect or
/// sendmsg admitted: a listener on an ephemeral port accepts nothing, a UDP socket that never
/// sent receives nothing. A named port takes connections.
#[test]
fn inbound_connections_and_datagrams_are_refused_unless_named() {
    if !privileged("inbound_connections_and_datagrams_are_refused_unless_named") {
        return;
    }
    const LISTEN: &str = r#"
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
try:
    s.bind(("127.0.0.1", int(sys.argv[2])))
except OSError as e:
    print("bind errno %d" % e.errno, flush=True)
    sys.exit(0)
if kind == socket.SOCK_STREAM:
    s.listen(8)
print(s.getsockname()[1], flush=True)
s.settimeout(4)
try:
    if kind == socket.SOCK_STREAM:
        c, _ = s.accept()
        c.settimeout(4)
        print("got " + c.recv(100).decode(), flush=True)
    else:
        print("got " + s.recv(100).decode(), flush=True)
except socket.timeout:
    print("timeout", flush=True)
"#;
    let root = AgentsRoot::new();
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let named = free_port();
    let body = format!(
        "[[agent]]\nname = \"a1\"\n[[agent]]\nname = \"a2\"\ninbound = [{named}]\n[[agent]]\nname = \"watch\"\nmode = \"observe\"\n"
    );
    let daemon = Daemon::start(&root, &body);
    let listen = |agent: &str, proto: &str, port: u16| {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", LISTEN, proto, &port.to_string()]).stdout(std::process::Stdio::piped());
        as_user(&mut cmd, NOBODY, NOBODY);
        let mut child = governor_tests::spawn_in(&root.path.join(agent), cmd);
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        std::io::BufRead::read_line(&mut out, &mut first).unwrap();
        (child, out, first.trim().to_owned())
    };
    let rest = |child: &mut std::process::Child, mut out: std::io::BufReader<std::process::ChildStdout>| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out, &mut text).unwrap();
        child.wait().unwrap();
        text.trim().to_owned()
    };
    let knock_tcp = |port: u16| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
            Ok(mut s) => std::io::Write::write_all(&mut s, b"hello").is_ok(),
            Err(_) => false,
        }
    };
    let knock_udp = |port: u16| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"hello", ("127.0.0.1", port)).unwrap();
    };

    // a1 names no inbound port: binding one is refused...
    let (mut child, out, first) = listen("a1", "tcp", free_port());
    assert_eq!(first, "bind errno 1");
    rest(&mut child, out);
    // ...and a listener on an ephemeral port takes no connection, a UDP socket no datagram.
    let (mut child, out, port) = listen("a1", "tcp", 0);
    assert!(!knock_tcp(port.parse().unwrap()), "a connection reached a1's listener");
    assert_eq!(rest(&mut child, out), "timeout");
    let (mut child, out, port) = listen("a1", "udp", 0);
    knock_udp(port.parse().unwrap());
    assert_eq!(rest(&mut child, out), "timeout");
    assert!(denied(&daemon, "inbound") >= 3, "{:#}", daemon.agent("a1"));

    // a2 names a port: it binds it and takes connections and datagrams there.
    let (mut child, out, port) = listen("a2", "tcp", named);
    assert_eq!(port, named.to_string());
    assert!(knock_tcp(named));
    assert_eq!(rest(&mut child, out), "got hello");
    let (mut child, out, _) = listen("a2", "udp", named);
    knock_udp(named);
    assert_eq!(rest(&mut child, out), "got hello");

    // Observe mode lets it in and counts it.
    let (mut child, out, port) = listen("watch", "tcp", free_port());
    assert!(knock_tcp(port.parse().unwrap()));
    assert_eq!(rest(&mut child, out), "got hello");
    assert!(daemon.agent("watch")["totals"]["would_deny"].as_u64().unwrap_or(0) >= 1);
}

/// An agent (as nobody) allowed one UDP endpoint, `echo`, running `script` with the endpoint's
/// port; the script prints its own port first.
struct UdpAgent {
    echo: std::net::UdpSocket,
    root: AgentsRoot,
    daemon: Daemon,
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    port: u16,
}

impl UdpAgent {
    fn start(script: &str) -> Self {
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        let root = AgentsRoot::new();
        let daemon = Daemon::start(
            &root,
            &format!(
                "[[endpoint]]\nname = \"udp-api\"\naddresses = [\"127.0.0.1\"]\nports = [{echo_port}]\nprotocol = \"udp\"\n\
                 [[agent]]\nname = \"a1\"\nendpoints = [\"udp-api\"]\n"
            ),
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script, &echo_port.to_string()]).stdout(std::process::Stdio::piped());
        as_user(&mut cmd, NOBODY, NOBODY);
        let mut child = governor_tests::spawn_in(&root.path.join("a1"), cmd);
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut port = String::new();
        std::io::BufRead::read_line(&mut out, &mut port).unwrap();
        let port: u16 = port.trim().parse().unwrap();
        Self { echo, root, daemon, child, out, port }
    }
}

/// An unconnected UDP socket that sent to an allowed endpoint hears only sources its agent may
/// reach: the endpoint's reply arrives, a datagram from anyone else does not (it once gave the
/// agent an inbound listener on a port `inbound` does not name).
#[test]
fn an_unconnected_udp_socket_hears_only_admitted_sources() {
    if !privileged("an_unconnected_udp_socket_hears_only_admitted_sources") {
        return;
    }
    const SCRIPT: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 0))
u.settimeout(3)
u.sendto(b"hi", ("127.0.0.1", int(sys.argv[1])))
print(u.getsockname()[1], flush=True)
for _ in range(2):
    try:
        data, peer = u.recvfrom(100)
        print("got " + data.decode(), flush=True)
    except socket.timeout:
        print("timeout", flush=True)
"#;
    // The allowed endpoint echoes what it gets; the stranger writes from another port.
    // `_root` keeps the agents root (and so the agent) alive to the end of the test.
    let UdpAgent { echo, root: _root, daemon, mut child, mut out, port } = UdpAgent::start(SCRIPT);
    // First a stranger, then the endpoint's own reply.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"stranger", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 16];
    let (n, agent) = echo.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hi");
    std::thread::sleep(std::time::Duration::from_millis(100));
    echo.send_to(b"reply", agent).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    child.wait().unwrap();
    assert_eq!(text, "got reply\ntimeout\n", "the stranger's datagram must not arrive");
    assert!(denied(&daemon, "inbound") >= 1, "{:#}", daemon.agent("a1"));
}

/// The same after a disconnect: a UDP socket connected to an allowed endpoint, then disconnected
/// (connect to AF_UNSPEC runs no hook), keeps its tag and hears only admitted sources.
#[test]
fn a_disconnected_udp_socket_hears_only_admitted_sources() {
    if !privileged("a_disconnected_udp_socket_hears_only_admitted_sources") {
        return;
    }
    const SCRIPT: &str = r#"
import ctypes, socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", int(sys.argv[1])))
unspec = (ctypes.c_ubyte * 16)()
assert ctypes.CDLL(None, use_errno=True).connect(u.fileno(), ctypes.byref(unspec), 16) == 0
u.bind(("127.0.0.1", 0))  # the disconnect gave the autobound port back
u.settimeout(2)
print(u.getsockname()[1], flush=True)
try:
    print("got " + u.recvfrom(100)[0].decode(), flush=True)
except socket.timeout:
    print("timeout", flush=True)
"#;
    let UdpAgent { echo: _echo, root: _root, daemon, mut child, mut out, port } = UdpAgent::start(SCRIPT);
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"stranger", ("127.0.0.1", port)).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    child.wait().unwrap();
    assert_eq!(text, "timeout\n", "the stranger's datagram must not arrive");
    assert!(denied(&daemon, "inbound") >= 1, "{:#}", daemon.agent("a1"));
}
