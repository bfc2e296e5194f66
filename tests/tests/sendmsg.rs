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
