//! Faults on the real kernel: a full disk under the audit log and state. Enforcement goes on,
//! the daemon stays up, the failure is counted and logged, control that cannot be recorded is
//! refused, and once there is room again the audit chain is intact.

use std::{io::Write as _, path::PathBuf, process::Command, sync::Arc};

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, workload};

/// A small tmpfs of the test's own, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Self {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Self(at.to_owned())
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_stops_no_enforcement_and_no_unrecorded_control() {
    if !privileged("a_full_disk_stops_no_enforcement_and_no_unrecorded_control") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let tmpfs = Tmpfs::mount(dir.path(), "1m");
    let mut daemon = Daemon::start_in(
        dir.clone(),
        &root,
        &format!(
            "[[endpoint]]\nname = \"sink\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\n[[agent]]\nname = \"a1\"\nendpoints = [\"sink\"]\n",
            sink.port
        ),
    );
    let agent = root.path.join("a1");
    let filler = tmpfs.fill();

    // Enforcement does not depend on the disk.
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());
    assert!(workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]).eperm());
    // Denials keep coming; once the audit file's last page is full their records cannot be
    // written: counted, and the daemon is still up.
    let s = daemon.wait_until("audit write error counted", 20, |s| {
        let _ = workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]);
        s["write_errors"]["audit"].as_u64() >= Some(1)
    });
    assert!(
        s["write_errors"]["state"].as_u64() >= Some(1),
        "state saves fail on a full disk too: {:#}",
        s["write_errors"]
    );
    assert_eq!(s["agents"][0]["state"], "enforcing");
    assert!(
        daemon
            .metrics()
            .lines()
            .any(|l| l.starts_with("governor_write_errors_total{what=\"audit\"}") && !l.ends_with(" 0"))
    );

    // A control command that cannot be recorded is refused, and nothing changes.
    let out = daemon.cli_output(&["pause", "a1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit log cannot be written"), "{out:?}");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok(), "the refused pause did not pause");

    // With room again, control works and the chain has no torn record.
    std::fs::remove_file(filler).unwrap();
    assert!(daemon.cli(&["pause", "a1"]).contains("paused"));
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).eperm());
    assert!(daemon.cli(&["resume", "a1"]).contains("resumed"));
    assert!(daemon.cli(&["audit", "verify"]).contains("chain intact"));
    assert!(daemon.stop().success());
    drop(tmpfs);
}

#[test]
fn a_full_allowlist_fails_closed_dns_servfails_and_a_reload_is_refused() {
    if !privileged("a_full_allowlist_fails_closed_dns_servfails_and_a_reload_is_refused") {
        return;
    }
    use governor_tests::dns::{DnsServer, Rr, with_resolver};
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let resolver = std::net::Ipv4Addr::new(127, 53, 0, 3);
    let _dns = DnsServer::start(resolver, &[("full.allowed.test", Rr::A(std::net::Ipv4Addr::new(127, 0, 2, 1), 60))]);
    let body = |extra_port: &str| {
        format!(
            "[[endpoint]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nhosts = [\"*.allowed.test\"]\nports = [{}{extra_port}]\nprotocol = \"tcp\"\n\
             [[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\n[dns]\nresolvers = [\"{resolver}\"]\nupstream_timeout = \"1s\"\n",
            sink.port
        )
    };
    let daemon = Daemon::start(&root, &body(""));
    let agent = root.path.join("a1");
    let dir = daemon.dir();

    let started = std::time::Instant::now();
    let junk = governor_tests::fill_allowlist(&root);
    eprintln!("filled the allowlist with {} entries in {:?}", junk.len(), started.elapsed());
    assert!(junk.len() > 1_000_000, "the map holds about 2^20 entries: {}", junk.len());

    // The answer cannot be admitted: the agent gets SERVFAIL (its lookup fails), not an answer
    // it could not use, and the address stays refused.
    let out = with_resolver(&agent, dir.path(), resolver, &["getent", "ahostsv4", "full.allowed.test"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(daemon.status()["dns"]["queries"]["a1"]["servfail"].as_u64().unwrap_or(0) >= 1);
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.2.1")]).eperm());
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok(), "configured rules still hold");

    // A new policy the kernel cannot take is refused as a whole; the running one stays.
    std::fs::write(&daemon.config, std::fs::read_to_string(&daemon.config).unwrap().replace(&body(""), &body(", 9")))
        .unwrap();
    let out = daemon.cli_output(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("did not take the new policy"), "{out:?}");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok(), "the running policy stays");
    assert!(workload(Some(&agent), &["connect", "127.0.0.1:9"]).eperm(), "the new one is not half-applied");
    let audit = daemon.audit_log();
    assert!(audit.iter().any(|r| r["kind"] == "policy_reload_refused"), "the refusal is on record");

    // Room again: the same lookup is admitted and the agent can connect.
    governor_tests::clear_allowlist(&root, &junk);
    let out = with_resolver(&agent, dir.path(), resolver, &["getent", "ahostsv4", "full.allowed.test"]);
    assert!(out.status.success(), "{out:?}");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.2.1")]).ok());
}

/// Counts the kernel has no room for are counted as such, never dropped without a word: with
/// CONN_STATS full, a new (agent, endpoint)'s verdicts show in status and metrics as uncounted.
#[test]
fn verdicts_a_full_map_cannot_hold_are_counted_as_uncounted() {
    if !privileged("verdicts_a_full_map_cannot_hold_are_counted_as_uncounted") {
        return;
    }
    use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
    use governor_common::{ConnCounters, StatsKey};
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, "[[agent]]\nname = \"a1\"\n");
    let data = MapData::from_pin(root.pin_dir().join("maps").join(governor_common::maps::CONN_STATS)).unwrap();
    let mut stats: PerCpuHashMap<MapData, StatsKey, ConnCounters> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let zero = || PerCpuValues::try_from(vec![ConnCounters::default(); cpus]).unwrap();
    let mut junk = Vec::new();
    for i in 1u32.. {
        let key = StatsKey { agent_id: 0x0bad_0000 | (i >> 16), endpoint_id: i };
        if stats.insert(key, zero(), 0).is_err() {
            break;
        }
        junk.push(key);
    }
    assert!(junk.len() >= 60_000, "the map holds 65,536 keys: {}", junk.len());
    // a1 has never been refused: its (a1, unlisted) key does not exist, and there is no room.
    for _ in 0..3 {
        assert!(workload(Some(&root.path.join("a1")), &["connect", &sink.addr("127.0.0.1")]).eperm());
    }
    let s = daemon.status();
    for key in &junk {
        let _ = stats.remove(key);
    }
    assert_eq!(s["uncounted"]["verdicts"], 3, "{}", s["uncounted"]);
    assert!(daemon.metrics().contains("governor_uncounted_total{what=\"verdicts\"} 3"));
    assert!(daemon.status_table().contains("uncounted (the kernel's maps were full): 3 verdicts"));
}
