//! UDP: unconnected sendmsg/sendto is checked per destination like connect.

use governor_tests::{AgentsRoot, Daemon, closed_udp_port, privileged, workload};

#[test]
fn udp_sendmsg_to_a_non_allowlisted_address_is_denied() {
    if !privileged("udp_sendmsg_to_a_non_allowlisted_address_is_denied") {
        return;
    }
    let root = AgentsRoot::new();
    let allowed = closed_udp_port();
    let daemon = Daemon::start(
        &root,
        &format!(
            r#"
[[endpoint]]
name = "udp-api"
addresses = ["127.0.0.1", "::1"]
ports = [{allowed}]
protocol = "udp"

[[agent]]
name = "a1"
endpoints = ["udp-api"]
"#
        ),
    );
    let agent = root.path.join("a1");
    let other = closed_udp_port();

    let ok = workload(Some(&agent), &["udp-send", &format!("127.0.0.1:{allowed}")]);
    assert!(ok.ok(), "{ok:?}");
    let ok6 = workload(Some(&agent), &["udp-send", &format!("[::1]:{allowed}")]);
    assert!(ok6.ok(), "{ok6:?}");
    for dest in [format!("127.0.0.1:{other}"), format!("[::1]:{other}"), format!("[::ffff:127.0.0.1]:{other}")] {
        let no = workload(Some(&agent), &["udp-send", &dest]);
        assert!(no.eperm(), "{dest}: {no:?}");
    }
    // TCP to the UDP endpoint's port is not allowed either: the protocol is part of the rule.
    let tcp = workload(Some(&agent), &["connect", &format!("127.0.0.1:{allowed}")]);
    assert!(tcp.eperm(), "{tcp:?}");

    let c = daemon.counters("a1", "udp-api");
    assert_eq!(c.allowed, 2, "{c:?}");
    assert!(c.tx_packets >= 2 && c.tx_bytes >= 2 * (13 + 8 + 20), "two datagrams of 13 bytes: {c:?}");
    assert_eq!(daemon.counters("a1", "(unlisted)").denied, 4);
}

/// A UDP socket keeps the endpoint it sends to. A sendto elsewhere (another allowed endpoint,
/// or the resolver) once re-tagged a connected socket, so its later send()s to its connected
/// peer went out at the other endpoint's price and outside its concurrency place; now it is
/// refused (reason second-endpoint), and the connected peer is charged as before.
#[test]
fn a_udp_socket_cannot_be_retagged_to_another_endpoint() {
    if !privileged("a_udp_socket_cannot_be_retagged_to_another_endpoint") {
        return;
    }
    const SCRIPT: &str = r#"
import socket, sys
priced, free = int(sys.argv[1]), int(sys.argv[2])
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return "errno %d" % e.errno
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", priced))
print(attempt(lambda: s.send(b"x" * 100)))
print(attempt(lambda: s.sendto(b"y", ("127.0.0.1", free))))
print(attempt(lambda: s.sendto(b"z", ("127.53.0.6", 53))))
print(attempt(lambda: s.send(b"x" * 100)))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(attempt(lambda: u.sendto(b"a", ("127.0.0.1", free))))
print(attempt(lambda: u.sendto(b"b", ("127.0.0.1", priced))))
"#;
    let root = AgentsRoot::new();
    // The priced peer listens, so the connected socket's sends are not answered with ICMP errors.
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (priced, free) = (receiver.local_addr().unwrap().port(), closed_udp_port());
    let daemon = Daemon::start(
        &root,
        &format!(
            "[[endpoint]]\nname = \"priced\"\naddresses = [\"127.0.0.1\"]\nports = [{priced}]\nprotocol = \"udp\"\nprice = {{ mib_sent = \"100.00\" }}\n\
             [[endpoint]]\nname = \"free\"\naddresses = [\"127.0.0.1\"]\nports = [{free}]\nprotocol = \"udp\"\n\
             [[agent]]\nname = \"a1\"\nendpoints = [\"priced\", \"free\"]\n[dns]\nresolvers = [\"127.53.0.6\"]\n"
        ),
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", SCRIPT, &priced.to_string(), &free.to_string()]);
    let out = governor_tests::run_in(&root.path.join("a1"), cmd);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\nerrno 1\nerrno 1\nok\nok\nerrno 1\n", "{out:?}");
    let a1 = daemon.agent("a1");
    assert_eq!(a1["totals"]["denied_by_reason"]["second-endpoint"], 3, "{a1:#}");
    // Both datagrams of the connected socket were charged to the priced endpoint.
    let priced = daemon.counters("a1", "priced");
    assert_eq!(priced.tx_packets, 2, "{a1:#}");
}

/// A connected UDP socket's sends with ancillary data (IP_TOS for ECN, IP_TTL: what QUIC
/// clients send) reach the hook with no address; they go to the connected peer, and pass and
/// are charged like its plain sends. They were refused as not allowlisted.
#[test]
fn a_connected_udp_socket_may_send_with_ancillary_data() {
    if !privileged("a_connected_udp_socket_may_send_with_ancillary_data") {
        return;
    }
    const SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.send(b"x")
s.sendmsg([b"y"], [(socket.IPPROTO_IP, socket.IP_TOS, bytes([2, 0, 0, 0]))])
s.sendmsg([b"z"], [(socket.IPPROTO_IP, socket.IP_TTL, bytes([9, 0, 0, 0]))])
print("sent")
"#;
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    let root = AgentsRoot::new();
    let daemon = Daemon::start(
        &root,
        &format!(
            "[[endpoint]]\nname = \"udp-api\"\naddresses = [\"127.0.0.1\"]\nports = [{port}]\nprotocol = \"udp\"\n\
             [[agent]]\nname = \"a1\"\nendpoints = [\"udp-api\"]\n"
        ),
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", SCRIPT, &port.to_string()]);
    let out = governor_tests::run_in(&root.path.join("a1"), cmd);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sent"), "{out:?}");
    let mut buf = [0u8; 8];
    for expected in [b'x', b'y', b'z'] {
        let (n, _) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], [expected]);
    }
    assert_eq!(daemon.counters("a1", "udp-api").tx_packets, 3);
    assert_eq!(daemon.agent("a1")["totals"]["denied"], 0);
}
