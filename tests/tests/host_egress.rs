//! The host's own egress bill: a TC program on the uplink counts every byte leaving the host by
//! the cgroup that sent it, agents or not.

use std::io::Read as _;

use governor_tests::{AgentsRoot, Daemon, Netns, privileged, workload};

#[test]
fn host_egress_is_counted_per_cgroup_on_the_uplink() {
    if !privileged("host_egress_is_counted_per_cgroup_on_the_uplink") {
        return;
    }
    let root = AgentsRoot::new();
    let ns = Netns::new();
    let daemon = Daemon::start(
        &root,
        &format!(
            "unlisted_agents = \"ignore\"\n[host]\ninterfaces = [\"{}\"]\negress_price_per_gib = \"0.09\"\n",
            ns.host_if
        ),
    );
    let sender = root.cgroup("sender");
    let (mut server, mut server_out) = ns.spawn_workload(&["sink", &format!("{}:9000", ns.peer_addr)]);

    const N: u64 = 2_000_000;
    let sent = workload(Some(&sender), &["send", &format!("{}:9000", ns.peer_addr), &N.to_string()]);
    assert!(sent.ok(), "{sent:?}");
    let mut rest = String::new();
    server_out.read_to_string(&mut rest).unwrap();
    assert!(server.wait().unwrap().success());
    assert!(rest.contains(&format!("\"bytes\":{N}")), "{rest}");
    let wire = sent.json["wire_bytes"].as_u64().unwrap();

    let s = daemon.status();
    let h = &s["host_egress"];
    assert_eq!(h["interfaces"], serde_json::json!([ns.host_if]));
    let path = format!("/{}/sender", root.relative);
    let row = h["by_cgroup"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cgroup"] == path.as_str())
        .unwrap_or_else(|| panic!("no row for {path}: {h:#}"))
        .clone();
    let (bytes, packets) = (row["bytes"].as_u64().unwrap(), row["packets"].as_u64().unwrap());
    // TC sees the Ethernet header (14 bytes) on top of IP and TCP (at most 80).
    assert!(
        bytes >= wire && bytes <= wire + (14 + 80) * packets,
        "sent {wire} on the wire; counted {bytes} in {packets} packets"
    );
    let per_byte = (90_000_000_000u64).div_ceil(1 << 30);
    assert_eq!(row["cost_pico"].as_u64().unwrap(), bytes * per_byte);
    eprintln!("host egress: {wire} payload bytes sent, TC counted {bytes} bytes in {packets} packets");

    let table = daemon.cli(&["status", "--host"]);
    assert!(table.contains(&path) && table.contains("0.09 USD/GiB"), "{table}");
    let metrics = daemon.metrics();
    assert!(
        metrics.lines().any(|l| l == format!("governor_host_egress_bytes_total{{cgroup=\"{path}\"}} {bytes}")),
        "{metrics}"
    );
}

/// UDP GSO is charged as the datagrams it becomes: 20 sends of 128 one-byte segments over a
/// veth are 2,560 datagrams of 29 bytes (IP, UDP, one byte) on the wire, counted by the agent's
/// hooks and by the uplink's TC program (plus 14 bytes of Ethernet each). The hooks see the
/// super-packet before it is cut up; counted as one 156-byte packet, tiny segments were charged
/// a twenty-fourth of what they cost.
#[test]
fn udp_gso_is_charged_as_the_datagrams_it_becomes() {
    if !privileged("udp_gso_is_charged_as_the_datagrams_it_becomes") {
        return;
    }
    const SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 1)  # UDP_SEGMENT: one-byte segments
s.connect((sys.argv[1], 9001))
for _ in range(20):
    s.send(b"x" * 128)
"#;
    const RECEIVE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 9001))
print("listening", flush=True)
s.settimeout(2)
n = 0
try:
    while True:
        s.recv(100)
        n += 1
except socket.timeout:
    pass
print(n, flush=True)
"#;
    let root = AgentsRoot::new();
    let ns = Netns::new();
    let daemon = Daemon::start(
        &root,
        &format!(
            "[host]\ninterfaces = [\"{}\"]\n[[endpoint]]\nname = \"peer\"\naddresses = [\"{}\"]\nports = [9001]\nprotocol = \"udp\"\nprice = {{ mib_sent = \"1.00\" }}\n\
             [[agent]]\nname = \"a1\"\nendpoints = [\"peer\"]\n",
            ns.host_if, ns.peer_addr
        ),
    );
    let mut receiver = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", RECEIVE, &ns.peer_addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let mut send = std::process::Command::new("python3");
    send.args(["-c", SEND, &ns.peer_addr]);
    let sent = governor_tests::run_in(&root.path.join("a1"), send);
    assert!(sent.status.success(), "{sent:?}");
    let mut received = String::new();
    out.read_to_string(&mut received).unwrap();
    receiver.wait().unwrap();
    let received: u64 = received.trim().parse().unwrap();
    assert!(received > 2000 && received <= 2560, "the peer got {received} datagrams");

    let c = daemon.counters("a1", "peer");
    assert_eq!((c.tx_packets, c.tx_bytes), (2560, 2560 * 29), "the agent's count");
    let s = daemon.status();
    let path = format!("/{}/a1", root.relative);
    let row = s["host_egress"]["by_cgroup"].as_array().unwrap().iter().find(|r| r["cgroup"] == path.as_str()).cloned();
    let row = row.unwrap_or_else(|| panic!("no host egress row for {path}: {}", s["host_egress"]));
    assert_eq!((row["packets"].as_u64(), row["bytes"].as_u64()), (Some(2560), Some(2560 * 43)), "{row}");
}
