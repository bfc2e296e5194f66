//! Nothing is lost across restarts: a SIGKILLed daemon's programs keep enforcing and counting
//! from their pinned maps, a restarted daemon adopts them (never from zero, never twice), and
//! after a reboot (pins gone) the saved state reseeds the spend.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, workload};
use serde_json::Value;

const PICO: u64 = 1_000_000_000_000;

fn config(port: u16) -> String {
    format!(
        "[[endpoint]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nports = [{port}]\nprice = {{ connection = \"0.001\", mib_sent = \"1.00\" }}\n\
         [[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\nbudget = {{ limit = \"3.00\", window = \"total\" }}\n"
    )
}

fn spent(s: &Value) -> u64 {
    s["agents"][0]["budget"]["spent_total_pico"].as_u64().unwrap()
}

/// The kernel's total equals the sum of what its own counters say each endpoint cost.
fn assert_counted_once(s: &Value) {
    let by_endpoint: u64 =
        s["agents"][0]["endpoints"].as_array().unwrap().iter().map(|e| e["spend_pico"].as_u64().unwrap()).sum();
    assert_eq!(spent(s), by_endpoint, "spend counted twice or lost: {s:#}");
}

#[test]
fn sigkill_under_load_loses_nothing_and_the_ceiling_still_holds() {
    if !privileged("sigkill_under_load_loses_nothing_and_the_ceiling_still_holds") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let mut daemon = Daemon::start(&root, &config(sink.port));
    let agent = root.path.join("a1");

    // Traffic in the background: 60 transfers of 20,000 bytes, bounded.
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (agent, addr, running, sent) = (agent.clone(), sink.addr("127.0.0.1"), running.clone(), sent.clone());
        std::thread::spawn(move || {
            for _ in 0..60 {
                let out = workload(Some(&agent), &["send", &addr, "20000"]);
                assert!(out.ok(), "a transfer failed while the daemon was down or restarting: {out:?}");
                sent.fetch_add(20_000, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            running.store(false, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let before_kill = spent(&daemon.status());
    daemon.kill();
    // The daemon is gone; the pinned programs still count and enforce.
    std::thread::sleep(Duration::from_millis(300));
    let other = Server::start(Serve::Sink);
    assert!(
        workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]).eperm(),
        "allowlist not enforced while the daemon is down"
    );

    let daemon = Daemon::start_in(daemon.dir(), &root, &config(sink.port));
    load.join().unwrap();
    assert!(!running.load(Ordering::SeqCst));
    std::thread::sleep(Duration::from_millis(400));
    let s = daemon.status();
    let after = spent(&s);
    assert!(after >= before_kill, "spend went backwards: {before_kill} -> {after}");
    assert_counted_once(&s);
    let tx = daemon.counters("a1", "api").tx_bytes;
    assert!(
        tx >= sent.load(Ordering::SeqCst),
        "bytes sent while the daemon was down were not counted: {tx} < {}",
        sent.load(Ordering::SeqCst)
    );
    assert!(
        daemon.audit_log().iter().any(|r| r["kind"] == "daemon_start" && r["details"]["adopted_pinned_state"] == true),
        "the restarted daemon did not adopt the pinned maps"
    );

    // Reseeding twice gives the same figure.
    let mut daemon = daemon;
    daemon.kill();
    let mut daemon = Daemon::start_in(daemon.dir(), &root, &config(sink.port));
    assert_eq!(spent(&daemon.status()), after);

    // The ceiling still holds: push past $3.00.
    let out = governor_tests::workload_with(
        Some(&agent),
        &["send", &sink.addr("127.0.0.1"), "4000000"],
        &[("GOVERNOR_WORKLOAD_TIMEOUT_MS", "2000")],
    );
    assert!(!out.ok(), "{out:?}");
    let s = daemon.wait_until("suspended", 5, |s| s["agents"][0]["state"] == "suspended");
    assert!(spent(&s) <= 3 * PICO, "over the ceiling after a restart: {}", spent(&s));
    assert_counted_once(&s);

    // A reboot: pins are gone, only the saved state remains. The spend comes back from it.
    let final_spent = spent(&s);
    assert!(daemon.stop().success());
    std::fs::remove_dir_all(root.pin_dir()).unwrap();
    let daemon = Daemon::start_in(daemon.dir(), &root, &config(sink.port));
    let s = daemon.status();
    assert_eq!(spent(&s), final_spent, "the saved state did not reseed the spend after a reboot");
    assert_eq!(s["agents"][0]["state"], "suspended", "a suspension survives a reboot");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).eperm());
}

/// A restarted daemon never rewrites the adopted SPEND entries its predecessor's programs are
/// using: a saved total above the kernel's (state from elsewhere) once made it reseed the slot,
/// which also reset the rate limiter, so a restart refilled the agent's burst.
#[test]
fn a_restart_does_not_rewrite_what_running_programs_count() {
    if !privileged("a_restart_does_not_rewrite_what_running_programs_count") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let body = format!(
        "[[endpoint]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\nprice = {{ connection = \"0.001\" }}\n\
         [[agent]]\nname = \"a1\"\nendpoints = [\"api\"]\nlimits = {{ connections_per_minute = 1, burst = 1 }}\n",
        sink.port
    );
    let mut daemon = Daemon::start(&root, &body);
    let agent = root.path.join("a1");
    let connect = || workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]);
    assert!(connect().ok());
    assert!(connect().eperm(), "the burst of one is spent");
    let kernel = spent(&daemon.status());
    daemon.kill();
    // The saved state claims more spend than the kernel holds.
    let state = daemon.dir().path().join("state").join("state.json");
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    saved["budgets"]["a1"]["spent"] = (kernel + 5 * PICO).into();
    std::fs::write(&state, saved.to_string()).unwrap();
    let daemon = Daemon::start_in(daemon.dir(), &root, &body);
    assert!(connect().eperm(), "the restart refilled the rate limiter's burst");
    assert_eq!(spent(&daemon.status()), kernel, "the kernel's spend stands; refused connects cost nothing");
}
