//! Config reload on the real kernel: applied atomically (no connect ever sees half a policy),
//! audited with its sha256, by `governor reload` and by SIGHUP; a bad config is refused and the
//! running policy stays.

use std::process::Command;

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, workload, workload_bin};

fn endpoints(ports: &[(&str, u16)]) -> String {
    let mut out = String::new();
    for (name, port) in ports {
        out.push_str(&format!("[[endpoint]]\nname = \"{name}\"\naddresses = [\"127.0.0.1\"]\nports = [{port}]\n"));
    }
    let names: Vec<String> = ports.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    out.push_str(&format!("[[agent]]\nname = \"a1\"\nendpoints = [{}]\n", names.join(", ")));
    out
}

/// Replaces everything after the `[daemon]` keys the harness wrote with `body`.
fn rewrite(daemon: &Daemon, body: &str) {
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    let head: String = text.lines().take_while(|l| !l.starts_with("[[")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&daemon.config, format!("{head}{body}")).unwrap();
}

#[test]
fn a_reload_applies_atomically_and_is_audited() {
    if !privileged("a_reload_applies_atomically_and_is_audited") {
        return;
    }
    let root = AgentsRoot::new();
    let (a, b, c) = (Server::start(Serve::Sink), Server::start(Serve::Sink), Server::start(Serve::Sink));
    let daemon = Daemon::start(&root, &endpoints(&[("a", a.port)]));
    let agent = root.path.join("a1");
    assert!(workload(Some(&agent), &["connect", &b.addr("127.0.0.1")]).eperm());

    // Connects to `a`, allowed before and after, run across the reload: none may be refused.
    let hammer = governor_tests::spawn_in(&agent, {
        let mut cmd = Command::new(workload_bin());
        cmd.args(["connect-loop", &a.addr("127.0.0.1"), "4000"]).stdout(std::process::Stdio::piped());
        cmd
    });
    rewrite(&daemon, &endpoints(&[("a", a.port), ("b", b.port)]));
    let out = daemon.cli(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    let hammered: serde_json::Value = serde_json::from_slice(&hammer.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(hammered["eperm"], 0, "a connect saw a half-applied policy: {hammered}\n{:#}", daemon.agent("a1"));
    assert!(workload(Some(&agent), &["connect", &b.addr("127.0.0.1")]).ok(), "the new endpoint is allowed");

    let reload = daemon.audit_log().into_iter().find(|r| r["kind"] == "policy_reload").expect("reload audited");
    let status = daemon.status();
    assert_eq!(reload["details"]["sha256"], status["config_sha256"]);
    assert_ne!(reload["details"]["previous_sha256"], reload["details"]["sha256"]);
    assert_eq!(reload["details"]["by"]["uid"], 0);

    // Removing an endpoint takes it away; SIGHUP reloads too.
    rewrite(&daemon, &endpoints(&[("c", c.port)]));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    daemon.wait_until("SIGHUP reload", 5, |_| workload(Some(&agent), &["connect", &c.addr("127.0.0.1")]).ok());
    assert!(workload(Some(&agent), &["connect", &a.addr("127.0.0.1")]).eperm(), "the removed endpoint is refused");
    assert!(workload(Some(&agent), &["connect", &b.addr("127.0.0.1")]).eperm());
    let reloads: Vec<_> = daemon.audit_log().into_iter().filter(|r| r["kind"] == "policy_reload").collect();
    assert_eq!(reloads.len(), 2);
    assert_eq!(reloads[1]["details"]["by"]["user"], "SIGHUP");
    // Counters survive a reload.
    assert!(daemon.counters("a1", "a").allowed >= 4000);
}

#[test]
fn a_bad_reload_is_refused_and_the_running_policy_stays() {
    if !privileged("a_bad_reload_is_refused_and_the_running_policy_stays") {
        return;
    }
    let root = AgentsRoot::new();
    let (a, b) = (Server::start(Serve::Sink), Server::start(Serve::Sink));
    let daemon = Daemon::start(&root, &endpoints(&[("a", a.port)]));
    let agent = root.path.join("a1");
    let sha = daemon.status()["config_sha256"].clone();

    rewrite(
        &daemon,
        &endpoints(&[("a", a.port), ("b", b.port)])
            .replace("addresses = [\"127.0.0.1\"]\nports = [", "addresses = [\"127.0.0.1/33\"]\nports = ["),
    );
    let out = daemon.cli_output(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the running policy stays")
            && stderr.contains(&format!("{}:", daemon.config.display()))
            && stderr.contains("prefix length"),
        "{stderr}"
    );

    rewrite(&daemon, &endpoints(&[("a", a.port), ("b", b.port)]));
    let text = std::fs::read_to_string(&daemon.config).unwrap().replace("governor.sock", "other.sock");
    std::fs::write(&daemon.config, text).unwrap();
    let out = daemon.cli_output(&["reload"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("daemon.socket changed, and only a restart applies it"),
        "{out:?}"
    );

    // Nothing changed.
    assert_eq!(daemon.status()["config_sha256"], sha);
    assert!(workload(Some(&agent), &["connect", &a.addr("127.0.0.1")]).ok());
    assert!(workload(Some(&agent), &["connect", &b.addr("127.0.0.1")]).eperm());
    assert!(!daemon.audit_log().iter().any(|r| r["kind"] == "policy_reload"));

    // Every refusal is audited with its reason and who asked, SIGHUP's too.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let refused: Vec<serde_json::Value> =
            daemon.audit_log().into_iter().filter(|r| r["kind"] == "policy_reload_refused").collect();
        if refused.len() == 3 || std::time::Instant::now() > deadline {
            break refused;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(refused.len(), 3, "two refused by the CLI, one by SIGHUP: {refused:?}");
    assert!(refused[0]["details"]["error"].as_str().unwrap().contains("prefix length"), "{refused:?}");
    assert_eq!(refused[0]["details"]["by"]["uid"], 0, "{refused:?}");
    assert!(refused[1]["details"]["error"].as_str().unwrap().contains("daemon.socket changed"));
    assert_eq!(refused[2]["details"]["by"]["user"], "SIGHUP", "{refused:?}");
}

/// Unlisted (discovered) agents never switch generations; with them beside a configured agent,
/// each reload must still install the generation not in use and remove the running one, so an
/// endpoint a reload takes away is refused at once, reload after reload.
#[test]
fn reloads_with_unlisted_agents_beside_switch_generations_cleanly() {
    if !privileged("reloads_with_unlisted_agents_beside_switch_generations_cleanly") {
        return;
    }
    let root = AgentsRoot::new();
    let servers: Vec<Server> = (0..4).map(|_| Server::start(Serve::Sink)).collect();
    // Several unlisted cgroups, so whichever AGENTS entry comes first is likely one of them.
    for i in 0..40 {
        root.cgroup(&format!("zz{i}"));
    }
    let names = ["a", "b", "c", "d"];
    let with =
        |n: usize| endpoints(&names.iter().zip(&servers).take(n).map(|(nm, s)| (*nm, s.port)).collect::<Vec<_>>());
    let daemon = Daemon::start(&root, &with(4));
    daemon.wait_until("unlisted agents discovered", 5, |s| s["agents"].as_array().unwrap().len() == 41);
    let agent = root.path.join("a1");
    for n in [3, 2, 1] {
        rewrite(&daemon, &with(n));
        daemon.cli(&["reload"]);
        for (i, s) in servers.iter().enumerate() {
            let out = workload(Some(&agent), &["connect", &s.addr("127.0.0.1")]);
            assert_eq!(out.ok(), i < n, "after the reload to {n} endpoints, endpoint {} {out:?}", names[i]);
        }
    }
    // A policy the kernel cannot take (the allowlist is full) is refused, and the running rules
    // stay: a misread generation made this refusal delete the running ones.
    let junk = governor_tests::fill_allowlist(&root);
    rewrite(&daemon, &with(4));
    let out = daemon.cli_output(&["reload"]);
    assert!(!out.status.success(), "{out:?}");
    let a = workload(Some(&agent), &["connect", &servers[0].addr("127.0.0.1")]);
    let b = workload(Some(&agent), &["connect", &servers[1].addr("127.0.0.1")]);
    governor_tests::clear_allowlist(&root, &junk);
    assert!(a.ok(), "the running policy's endpoint a after a refused reload: {a:?}");
    assert!(b.eperm(), "the refused policy's endpoint b: {b:?}");
}

/// A reload is all or nothing: when it fails for one agent (here its cgroup cannot be made:
/// the agents root allows no more descendants), no other agent has been switched to the new
/// policy. Once an agent switched before a later one failed.
#[test]
fn a_reload_that_fails_for_one_agent_switches_none() {
    if !privileged("a_reload_that_fails_for_one_agent_switches_none") {
        return;
    }
    let root = AgentsRoot::new();
    let (a, b) = (Server::start(Serve::Sink), Server::start(Serve::Sink));
    let daemon = Daemon::start(&root, &endpoints(&[("a", a.port)]));
    let agent = root.path.join("a1");
    // a1 gains endpoint b, and a new agent a2 needs a cgroup the root will not allow.
    std::fs::write(root.path.join("cgroup.max.descendants"), "1").unwrap();
    rewrite(
        &daemon,
        &format!("{}[[agent]]\nname = \"a2\"\nendpoints = [\"a\"]\n", endpoints(&[("a", a.port), ("b", b.port)])),
    );
    let out = daemon.cli_output(&["reload"]);
    std::fs::write(root.path.join("cgroup.max.descendants"), "max").unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(workload(Some(&agent), &["connect", &a.addr("127.0.0.1")]).ok(), "the running policy stays");
    assert!(workload(Some(&agent), &["connect", &b.addr("127.0.0.1")]).eperm(), "no agent is switched to the new one");
    assert!(daemon.audit_log().iter().any(|r| r["kind"] == "policy_reload_refused"));
    // With room again, the same reload applies whole.
    daemon.cli(&["reload"]);
    assert!(workload(Some(&agent), &["connect", &b.addr("127.0.0.1")]).ok());
}
