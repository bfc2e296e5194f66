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
