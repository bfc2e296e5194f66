//! The daemon as an operator meets it: bad configs refused before anything is attached,
//! status and metrics agreeing, and a clean stop that detaches every program.

use std::process::Command;

use governor_tests::{AgentsRoot, Daemon, Serve, Server, governor_bin, privileged, workload, write_config};

#[test]
fn a_bad_config_exits_non_zero_naming_file_and_line() {
    // Validation happens before any kernel work, so this needs no privileges.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[endpoint]]\nname = \"api\"\naddresses = [\"10.0.0.0/33\"]\n").unwrap();
    let out = Command::new(governor_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:3:", path.display())), "{stderr}");
    assert!(stderr.contains("endpoint[0].addresses") && stderr.contains("prefix length"), "{stderr}");

    std::fs::write(&path, "[[agent]]\nname = \"a\"\nendpoints = [\"nowhere\"]\n").unwrap();
    let out = Command::new(governor_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("{}:3:", path.display())) && stderr.contains("unknown endpoint \"nowhere\""),
        "{stderr}"
    );

    let out = Command::new(governor_bin()).args(["run", "--config", "/nonexistent/governor.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/governor.toml"));
}

#[test]
fn a_bad_config_attaches_nothing() {
    if !privileged("a_bad_config_attaches_nothing") {
        return;
    }
    let root = AgentsRoot::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nagents_root = {:?}\nsocket = \"/tmp/x.sock\"\n[[agent]]\nname = \"a\"\nmode = \"strict\"\n",
            root.relative
        ),
    )
    .unwrap();
    let out = Command::new(governor_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":6:"), "{}", String::from_utf8_lossy(&out.stderr));
    // No agent cgroup was created, and connects from the root are unaffected.
    assert!(!root.path.join("a").exists());
}

#[test]
fn pins_of_an_older_map_layout_are_refused_with_what_to_do() {
    if !privileged("pins_of_an_older_map_layout_are_refused_with_what_to_do") {
        return;
    }
    let root = AgentsRoot::new();
    // Where a governor with an older map layout pinned for this agents root.
    let ours = root.pin_dir();
    let old = ours.parent().unwrap().parent().unwrap().join("v0-test").join(ours.file_name().unwrap());
    std::fs::create_dir_all(old.join("links")).unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_dir(self.0.parent().unwrap());
        }
    }
    let _cleanup = Remove(old.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &root, "");
    let out = Command::new(governor_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another governor map layout"), "{stderr}");
    assert!(stderr.contains(&format!("rm -r {}", old.display())), "{stderr}");
    // Nothing was pinned or attached beside the old layout.
    assert!(!ours.exists(), "{} was created", ours.display());
}

#[test]
fn status_and_metrics_show_the_same_numbers() {
    if !privileged("status_and_metrics_show_the_same_numbers") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(
        &root,
        &format!(
            "[[endpoint]]\nname = \"sink\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\n[[agent]]\nname = \"a1\"\nendpoints = [\"sink\"]\n",
            sink.port
        ),
    );
    let agent = root.path.join("a1");
    assert!(workload(Some(&agent), &["send", &sink.addr("127.0.0.1"), "123456"]).ok());
    assert!(workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]).eperm());

    let c = daemon.counters("a1", "sink");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{}/metrics", daemon.metrics_address()))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl metrics: {}", String::from_utf8_lossy(&out.stderr));
    let metrics = String::from_utf8(out.stdout).unwrap();
    for (line, value) in [
        (r#"governor_bytes_total{agent="a1",direction="egress",endpoint="sink"}"#, c.tx_bytes),
        (r#"governor_bytes_total{agent="a1",direction="ingress",endpoint="sink"}"#, c.rx_bytes),
        (r#"governor_packets_total{agent="a1",direction="egress",endpoint="sink"}"#, c.tx_packets),
        (r#"governor_connections_total{agent="a1",endpoint="sink",reason="",verdict="allowed"}"#, 1),
        (
            r#"governor_connections_total{agent="a1",endpoint="(unlisted)",reason="not-allowlisted",verdict="denied"}"#,
            1,
        ),
        (r#"governor_agent_state{agent="a1",state="enforcing"}"#, 1),
    ] {
        assert!(metrics.lines().any(|l| l == format!("{line} {value}")), "missing `{line} {value}` in:\n{metrics}");
    }
    assert!(metrics.contains("# TYPE governor_bytes_total counter"), "{metrics}");

    let table = daemon.status_table();
    assert!(
        table.lines().any(|l| l.starts_with("a1 ") && l.contains("enforcing") && l.contains(&c.tx_bytes.to_string())),
        "{table}"
    );
}

#[test]
fn sigterm_detaches_every_program() {
    if !privileged("sigterm_detaches_every_program") {
        return;
    }
    let root = AgentsRoot::new();
    let other = Server::start(Serve::Sink);
    let mut daemon = Daemon::start(&root, "on_daemon_exit = \"detach\"\n[[agent]]\nname = \"a1\"\n");
    let agent = root.path.join("a1");
    assert!(workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]).eperm(), "empty allowlist denies");

    let status = daemon.stop();
    assert!(status.success(), "governor exited with {status}:\n{}", daemon.log());
    assert!(!daemon.socket.exists(), "socket left behind");
    let after = workload(Some(&agent), &["connect", &other.addr("127.0.0.1")]);
    assert!(after.ok(), "programs still attached after SIGTERM: {after:?}");
}

#[test]
fn a_second_daemon_on_the_same_socket_state_or_root_is_refused() {
    if !privileged("a_second_daemon_on_the_same_socket_state_or_root_is_refused") {
        return;
    }
    let root = AgentsRoot::new();
    let daemon = Daemon::start(&root, "");
    let second = |config: &std::path::Path| {
        let out = Command::new(governor_bin()).args(["run", "--config"]).arg(config).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The same config: its state directory is taken, and the first daemon's pid is named.
    let stderr = second(&daemon.config);
    assert!(stderr.contains("another governor") && stderr.contains(&format!("(pid {})", daemon.pid())), "{stderr}");
    // Its own socket and state, the same agents root: refused, and the first is unhurt.
    let dir = tempfile::tempdir().unwrap();
    let stderr = second(&write_config(dir.path(), &root, ""));
    assert!(stderr.contains("another governor is serving this agents root"), "{stderr}");
    assert!(!dir.path().join("governor.sock").exists() && !dir.path().join(".governor.sock.starting").exists());
    // The same socket, its own state and agents root: the live socket is not taken over.
    let other_root = AgentsRoot::new();
    let text = std::fs::read_to_string(write_config(dir.path(), &other_root, ""))
        .unwrap()
        .replace(&dir.path().join("governor.sock").display().to_string(), &daemon.socket.display().to_string());
    std::fs::write(dir.path().join("governor.toml"), text).unwrap();
    let stderr = second(&dir.path().join("governor.toml"));
    assert!(stderr.contains("another governor is already serving"), "{stderr}");
    assert!(daemon.status()["version"].is_string(), "the first daemon still answers");
}

#[test]
fn status_without_a_daemon_says_what_to_do() {
    let out = Command::new(governor_bin()).args(["status", "--socket", "/nonexistent/governor.sock"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no governor daemon at /nonexistent/governor.sock: the socket does not exist")
            && stderr.contains("governor run"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("os error"), "the hint says it all: {stderr}");
}

#[test]
fn a_clean_stop_keeps_enforcing_by_default() {
    if !privileged("a_clean_stop_keeps_enforcing_by_default") {
        return;
    }
    let root = AgentsRoot::new();
    let other = Server::start(Serve::Sink);
    let mut daemon = Daemon::start(&root, "[[agent]]\nname = \"a1\"\n");
    let stopped = daemon.stop();
    assert!(stopped.success(), "governor exited {stopped} on SIGTERM:\n{}", daemon.log());
    // on_daemon_exit = "enforce": the pinned programs still refuse while no daemon runs.
    assert!(workload(Some(&root.path.join("a1")), &["connect", &other.addr("127.0.0.1")]).eperm());
    let stop = daemon.audit_log().into_iter().find(|r| r["kind"] == "daemon_stop").unwrap();
    assert!(stop["details"]["programs"].as_str().unwrap().contains("left enforcing"), "{stop}");
}

/// `governor detach` takes the enforcing programs off a root no daemon serves: a dry run first,
/// then for real, audited; while a daemon runs, it refuses.
#[test]
fn detach_removes_what_a_stopped_daemon_left_enforcing() {
    if !privileged("detach_removes_what_a_stopped_daemon_left_enforcing") {
        return;
    }
    let root = AgentsRoot::new();
    let other = Server::start(Serve::Sink);
    let mut daemon = Daemon::start(&root, "[[agent]]\nname = \"a1\"\n");
    let config = daemon.config.clone();
    let detach = |args: &[&str]| {
        Command::new(governor_bin()).arg("detach").arg("--config").arg(&config).args(args).output().unwrap()
    };
    let out = detach(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another governor is serving this agents root"), "{out:?}");
    assert!(daemon.stop().success());
    let connect = || workload(Some(&root.path.join("a1")), &["connect", &other.addr("127.0.0.1")]);
    assert!(connect().eperm(), "left enforcing");

    let out = detach(&["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("would remove") && stdout.contains("program link(s)"), "{out:?}");
    assert!(root.pin_dir().exists() && connect().eperm(), "a dry run changes nothing");

    let out = detach(&[]);
    assert!(out.status.success(), "{out:?}");
    assert!(!root.pin_dir().exists());
    assert!(connect().ok(), "no program left on the root");
    let record = daemon.audit_log().into_iter().find(|r| r["kind"] == "detach").expect("detach audited");
    assert_eq!(record["details"]["by"]["uid"], 0, "{record}");
    let out = detach(&[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("governor is not attached"), "{out:?}");
}

#[test]
fn lost_events_leave_a_gap_record_and_no_count_is_lost() {
    if !privileged("lost_events_leave_a_gap_record_and_no_count_is_lost") {
        return;
    }
    let root = AgentsRoot::new();
    // A 4 KiB ring buffer holds about 80 events: a 5,000-address scan overflows it.
    let daemon = Daemon::start(&root, "events_buffer_bytes = 4096\n[[agent]]\nname = \"a1\"\n");
    let out = workload(Some(&root.path.join("a1")), &["scan", "5000", "9"]);
    assert_eq!(out.json["eperm"], 5000, "{out:?}");
    let s = daemon.wait_until("gap recorded", 5, |_| daemon.audit_log().iter().any(|r| r["kind"] == "events_lost"));
    let lost = s["events"]["lost"].as_u64().unwrap();
    assert!(lost > 0, "the small buffer should have overflowed: {s:#}");
    // Every refusal is still counted, lost events or not.
    assert_eq!(daemon.counters("a1", "(unlisted)").denied, 5000);
    let gap: u64 = daemon
        .audit_log()
        .iter()
        .filter(|r| r["kind"] == "events_lost")
        .map(|r| r["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(gap, lost, "the gap records account for every lost event");
    let metrics = daemon.metrics();
    assert!(metrics.lines().any(|l| l == format!("governor_events_lost_total {lost}")), "{metrics}");
}

/// A start that fails after binding its socket and pinning its maps takes both back: the next
/// `governor status` says there is no daemon, not "connection refused", and bpffs keeps nothing.
#[test]
fn a_failed_start_leaves_no_socket_and_no_pins() {
    if !privileged("a_failed_start_leaves_no_socket_and_no_pins") {
        return;
    }
    let root = AgentsRoot::new();
    let dir = tempfile::tempdir().unwrap();
    // The interface does not exist: the start fails at the last attach, after everything else.
    let path = write_config(dir.path(), &root, "[host]\ninterfaces = [\"gov-none0\"]\n");
    let out = Command::new(governor_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gov-none0"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("governor: error:")).count(), 1, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains(".sock")), "socket files left: {left:?}");
    assert!(!root.pin_dir().exists(), "pins left at {}", root.pin_dir().display());
    let status =
        Command::new(governor_bin()).args(["status", "--socket"]).arg(dir.path().join("governor.sock")).output();
    let stderr = String::from_utf8_lossy(&status.as_ref().unwrap().stderr).into_owned();
    assert!(stderr.contains("no governor daemon at") && stderr.contains("does not exist"), "{stderr}");
}

/// The socket appears only once the daemon enforces: whoever starts agents as soon as it sees the
/// socket file (a script, a supervisor) never runs one ungoverned.
#[test]
fn once_the_socket_exists_a_forbidden_connect_is_refused() {
    if !privileged("once_the_socket_exists_a_forbidden_connect_is_refused") {
        return;
    }
    let root = AgentsRoot::new();
    let agent = root.cgroup("a1");
    let forbidden = Server::start(Serve::Sink);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &root, "[[agent]]\nname = \"a1\"\n");
    let socket = dir.path().join("governor.sock");
    // As systemd's Type=notify would: READY=1 must come, and only once it enforces.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut child = Command::new(governor_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.0.wait();
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited during start-up");
        assert!(std::time::Instant::now() < deadline, "no socket within 20 s");
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let outcome = workload(Some(&agent), &["connect", &forbidden.addr("127.0.0.1")]);
    let _stop = Stop(child);
    assert!(outcome.eperm(), "a connect right after the socket appeared was not refused: {outcome:?}");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"), "{:?}", String::from_utf8_lossy(&buf[..n]));
}

/// bpffs is often mounted 1777: a user who makes governor's pin directories before its first
/// start (bpffs is empty after every boot) would own its links and could unlink them. The daemon
/// refuses such a directory and says which; shown in a private mount namespace on a fresh bpffs.
#[test]
fn pin_directories_another_user_made_are_refused() {
    if !privileged("pin_directories_another_user_made_are_refused") {
        return;
    }
    let root = AgentsRoot::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &root, "[[agent]]\nname = \"a1\"\n");
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && chmod 1777 /sys/fs/bpf && \
         setpriv --reuid 65534 --regid 65534 --clear-groups mkdir -p /sys/fs/bpf/governor/v4 && \
         {} run --config {}; echo \"exit $?\"; ls -la /sys/fs/bpf/governor/v4",
        governor_bin().display(),
        config.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("exit 1"), "{stdout}\n{stderr}");
    assert!(stderr.contains("pin directory /sys/fs/bpf/governor is owned by uid 65534, not root"), "{stderr}");
    assert!(!stdout.contains("sys_fs_cgroup"), "nothing pinned under the user's directory: {stdout}");
    assert!(!dir.path().join("governor.sock").exists());
}

/// Saved state belongs to one agents root: a daemon for another root given the same state
/// directory refuses to start rather than take up its agents' spend and pauses by name.
#[test]
fn state_of_another_agents_root_is_not_taken_up() {
    if !privileged("state_of_another_agents_root_is_not_taken_up") {
        return;
    }
    let root = AgentsRoot::new();
    let mut daemon = Daemon::start(&root, "[[agent]]\nname = \"a1\"\n");
    daemon.cli(&["pause", "a1"]);
    assert!(daemon.stop().success());
    let other = AgentsRoot::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &other, "[[agent]]\nname = \"a1\"\n");
    let state = daemon.dir().path().join("state").display().to_string();
    let text =
        std::fs::read_to_string(&config).unwrap().replace(&dir.path().join("state").display().to_string(), &state);
    std::fs::write(&config, text).unwrap();
    let out = Command::new(governor_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds the state of the governor for agents root")
            && stderr.contains("its own daemon.state_dir"),
        "{stderr}"
    );
}
