//! Operator control on the real kernel: pause, resume, kill, checkpoints and acks, who may do
//! what, the audit log verified and queried live, and governed launch.

use std::{
    io::BufRead as _,
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use governor_tests::{AgentsRoot, Daemon, Serve, Server, as_user, governor_bin, privileged, spawn_in, workload};
use serde_json::Value;

const NOBODY: u32 = 65534;

fn config(port: u16, agent_extra: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"sink\"\naddresses = [\"127.0.0.1\"]\nports = [{port}]\n[[agent]]\nname = \"a1\"\nendpoints = [\"sink\"]\n{agent_extra}\n"
    )
}

fn kinds(daemon: &Daemon, agent: &str) -> Vec<String> {
    daemon.audit_log().iter().filter(|r| r["agent"] == agent).map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn pause_holds_before_the_command_returns_and_resume_restores_traffic() {
    if !privileged("pause_holds_before_the_command_returns_and_resume_restores_traffic") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let agent = root.path.join("a1");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());

    let started = Instant::now();
    let out = daemon.cli(&["pause", "a1", "--reason", "runaway loop"]);
    let took = started.elapsed();
    assert!(out.contains("a1: paused"), "{out}");
    // No waiting: the kernel refuses the very next connect.
    let no = workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]);
    assert!(no.eperm(), "connect right after pause returned: {no:?}");
    eprintln!("pause command took {took:?}");
    let a = daemon.agent("a1");
    assert_eq!(a["state"], "paused");
    assert_eq!(
        (a["paused"]["kind"].as_str(), a["paused"]["reason"].as_str()),
        (Some("operator"), Some("runaway loop"))
    );
    assert!(a["endpoints"].as_array().unwrap().iter().any(|e| e["denied_by_reason"]["paused"] == 1), "{a:#}");

    assert!(daemon.cli(&["resume", "a1"]).contains("a1: resumed"));
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());
    let pause = daemon.audit_log().into_iter().find(|r| r["kind"] == "pause").unwrap();
    assert_eq!(
        (pause["details"]["by"]["uid"].as_u64(), pause["details"]["reason"].as_str()),
        (Some(0), Some("runaway loop"))
    );
    assert!(pause["details"]["by"]["pid"].as_u64().is_some());
    assert_eq!(kinds(&daemon, "a1").iter().filter(|k| *k == "resume").count(), 1);

    // --all, and an unknown agent.
    assert!(daemon.cli(&["pause", "--all"]).contains("a1: paused"));
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).eperm());
    assert!(daemon.cli(&["resume", "--all"]).contains("a1: resumed"));
    let out = daemon.cli_output(&["pause", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent named \"nobody\"; agents: a1"));
}

#[test]
fn kill_leaves_no_process_in_the_agent() {
    if !privileged("kill_leaves_no_process_in_the_agent") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let nested = root.cgroup("a1/workers");
    let mut children: Vec<_> = (0..3)
        .map(|_| {
            spawn_in(&nested, {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            })
        })
        .collect();
    let out = daemon.cli(&["kill", "a1"]);
    assert!(out.contains("a1: paused and killed 3 process(es)"), "{out}");
    for c in &mut children {
        let status = c.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    }
    assert_eq!(std::fs::read_to_string(nested.join("cgroup.procs")).unwrap(), "");
    assert_eq!(daemon.agent("a1")["state"], "paused");
    assert!(kinds(&daemon, "a1").contains(&"kill".to_owned()));
}

#[test]
fn a_checkpoint_pauses_at_its_milestone_and_ack_resumes() {
    if !privileged("a_checkpoint_pauses_at_its_milestone_and_ack_resumes") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, "checkpoints = { every_connections = 3 }"));
    let agent = root.path.join("a1");
    // Back to back: the third reaches the milestone and is the last one through; the kernel
    // refuses the fourth and fifth at once, before any daemon tick.
    let outcomes: Vec<bool> =
        (0..5).map(|_| workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok()).collect();
    assert_eq!(outcomes, [true, true, true, false, false]);
    let s = daemon.wait_until("checkpoint", 5, |s| s["agents"][0]["state"] == "checkpoint");
    assert!(s["agents"][0]["paused"]["reason"].as_str().unwrap().contains("3 connections"), "{s:#}");
    assert_eq!(s["agents"][0]["totals"]["denied_by_reason"]["checkpoint"], 2, "{s:#}");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).eperm());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(daemon.agent("a1")["paused"]["waited_seconds"].as_u64() >= Some(1), "status says how long it has waited");
    let metrics = daemon.metrics();
    assert!(metrics.lines().any(|l| l.starts_with("governor_checkpoint_pending_seconds{agent=\"a1\"}")), "{metrics}");

    // A plain resume is an ack without a note; ack says who and why.
    let out = daemon.cli(&["ack", "a1", "--note", "reviewed"]);
    assert!(out.contains("checkpoint acknowledged"), "{out}");
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());
    let ack = daemon.audit_log().into_iter().find(|r| r["kind"] == "ack").unwrap();
    assert_eq!((ack["details"]["note"].as_str(), ack["details"]["by"]["uid"].as_u64()), (Some("reviewed"), Some(0)));
    // Acking with nothing pending is refused.
    let out = daemon.cli_output(&["ack", "a1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pending checkpoint"), "{out:?}");
    // The milestone counts again from the ack: two more connects do not reach it.
    assert!(workload(Some(&agent), &["connect", &sink.addr("127.0.0.1")]).ok());
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(daemon.agent("a1")["state"], "enforcing");
}

#[test]
fn a_reader_may_read_but_not_control_and_the_refusal_is_audited() {
    if !privileged("a_reader_may_read_but_not_control_and_the_refusal_is_audited") {
        return;
    }
    let root = AgentsRoot::new();
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Debian's "nogroup" (gid 65534) stands in for an operators' read-only group.
    let daemon = Daemon::start_in(dir, &root, "read_group = \"nogroup\"\n[[agent]]\nname = \"a1\"\n");
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, std::os::unix::fs::MetadataExt::gid(&meta)), (0o660, NOBODY));

    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(governor_bin());
        cmd.args(args).arg("--socket").arg(&daemon.socket);
        as_user(&mut cmd, NOBODY, NOBODY);
        cmd.output().unwrap()
    };
    assert!(as_nobody(&["status", "--json"]).status.success(), "a member of read_group may read");
    let out = as_nobody(&["pause", "a1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("403")
            && stderr.contains("permission denied: this needs root (no daemon.admin_group is configured)"),
        "{stderr}"
    );
    assert_eq!(daemon.agent("a1")["state"], "enforcing");
    // Refusals are aggregated like denials: a reader looping refused requests writes a few
    // records, not one fsync'd record each, so it cannot rotate the history away.
    let before = daemon.audit_log().len();
    for _ in 0..200 {
        assert_eq!(as_nobody(&["pause", "a1"]).status.code(), Some(1));
    }
    daemon.wait_until("the refusals audited", 5, |_| {
        daemon
            .audit_log()
            .iter()
            .filter(|r| r["kind"] == "control_refused")
            .map(|r| r["details"]["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 201
    });
    let records = daemon.audit_log().len() - before;
    assert!(records < 40, "201 refusals wrote {records} audit records");
    let refusal = daemon.audit_log().into_iter().find(|r| r["kind"] == "control_refused").expect("refusal audited");
    assert_eq!(refusal["details"]["action"], "pause");
    assert_eq!(
        (refusal["details"]["by"]["uid"].as_u64(), refusal["details"]["by"]["gid"].as_u64()),
        (Some(NOBODY as u64), Some(NOBODY as u64))
    );
    assert!(refusal["details"]["pids"][0].as_u64().is_some(), "{refusal}");
}

#[test]
fn audit_verify_passes_on_the_real_log_and_catches_tampering() {
    if !privileged("audit_verify_passes_on_the_real_log_and_catches_tampering") {
        return;
    }
    let root = AgentsRoot::new();
    let daemon = Daemon::start(&root, "[[agent]]\nname = \"a1\"\n");
    for _ in 0..3 {
        daemon.cli(&["pause", "a1"]);
        daemon.cli(&["resume", "a1"]);
    }
    let out = daemon.cli(&["audit", "verify"]);
    assert!(out.contains("chain intact"), "{out}");

    let log = daemon.dir().path().join("audit.jsonl");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let write = |ls: &[String]| std::fs::write(&log, ls.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let owned = || lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    let tamperings: Vec<(&str, Vec<String>)> = vec![
        ("deleted line", {
            let mut l = owned();
            l.remove(3);
            l
        }),
        ("edited field", {
            let mut l = owned();
            l[3] = l[3].replace("\"uid\":0", "\"uid\":1000");
            l
        }),
        ("swapped pair", {
            let mut l = owned();
            l.swap(3, 4);
            l
        }),
        ("removed tail", {
            let mut l = owned();
            l.pop();
            l
        }),
    ];
    for (what, tampered) in tamperings {
        assert_ne!(tampered, owned(), "{what}: the tampering changed nothing");
        write(&tampered);
        let out = daemon.cli_output(&["audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{what}: verify passed");
        assert!(String::from_utf8_lossy(&out.stderr).contains("audit chain broken"), "{what}: {out:?}");
    }
    std::fs::write(&log, &original[..original.len() - 10]).unwrap();
    let out = daemon.cli_output(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"), "{out:?}");
    std::fs::write(&log, &original).unwrap();
    assert!(daemon.cli(&["audit", "verify"]).contains("chain intact"));
}

#[test]
fn events_follow_sees_a_deny_within_a_second() {
    if !privileged("events_follow_sees_a_deny_within_a_second") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let mut follow = Command::new(governor_bin())
        .args(["events", "--follow", "--json", "--kind", "denied", "--agent", "a1", "--socket"])
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    std::thread::sleep(Duration::from_millis(300)); // let it connect
    let denied_at = Instant::now();
    assert!(workload(Some(&root.path.join("a1")), &["connect", &other.addr("127.0.0.1")]).eperm());
    let (seen_at, line) = rx.recv_timeout(Duration::from_secs(5)).expect("no deny record streamed");
    let _ = follow.kill();
    let _ = follow.wait();
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (r["kind"].as_str(), r["agent"].as_str(), r["details"]["reason"].as_str()),
        (Some("denied"), Some("a1"), Some("not-allowlisted"))
    );
    assert_eq!(r["details"]["examples"][0], other.addr("127.0.0.1").as_str());
    let lag = seen_at.duration_since(denied_at);
    assert!(lag < Duration::from_secs(1), "the deny took {lag:?} to reach events --follow");
    eprintln!("events --follow saw the deny {lag:?} after it happened");

    let text = daemon.cli(&["events", "--since", "10m"]);
    assert!(text.contains("daemon_start") && text.contains("denied"), "{text}");
    let top = daemon.cli(&["top", "--count", "2"]);
    assert!(top.contains("AGENT") && top.contains("a1") && top.contains("enforcing"), "{top}");
}

#[test]
fn exec_runs_in_the_agent_as_a_user_and_refuses_root() {
    if !privileged("exec_runs_in_the_agent_as_a_user_and_refuses_root") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let other = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let exec = |args: &[&str]| {
        Command::new(governor_bin())
            .arg("exec")
            .args(["--socket"])
            .arg(&daemon.socket)
            .args(args)
            .env_remove("SUDO_UID")
            .output()
            .unwrap()
    };

    let out = exec(&["--agent", "a1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to start agent \"a1\" as root"), "{out:?}");

    let out = exec(&["--agent", "a1", "--user", "nobody", "--", "sh", "-c", "id -u; cat /proc/self/cgroup"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("65534\n") && stdout.contains(&format!("0::/{}/a1", root.relative)), "{stdout}");

    let workload = governor_tests::workload_bin();
    let connect_as_nobody =
        |addr: &str| exec(&["--agent", "a1", "--user", "nobody", "--", workload.to_str().unwrap(), "connect", addr]);
    let out = connect_as_nobody(&other.addr("127.0.0.1"));
    assert_eq!(out.status.code(), Some(2), "governed: the connect is refused: {out:?}");
    let out = connect_as_nobody(&sink.addr("127.0.0.1"));
    assert!(out.status.success(), "{out:?}");

    // The agent cannot move itself out of its cgroup.
    let escape = format!("echo $$ > {}/cgroup.procs", root.path.display());
    let out = exec(&["--agent", "a1", "--user", "nobody", "--", "sh", "-c", &escape]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");

    // --allow-root is honoured when asked for.
    assert!(exec(&["--agent", "a1", "--allow-root", "--", "true"]).status.success());
    // A name the config does not know is refused (a typo must not start an ungoverned agent),
    // with the agents listed, and no cgroup is made.
    let out = exec(&["--agent", "a2", "--user", "nobody", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("no agent named \"a2\"; the agents are: a1.") && stderr.contains("--unlisted"), "{stderr}");
    assert!(!root.path.join("a2").exists());
    // With --unlisted, a new cgroup is created and the daemon governs it before the command runs:
    // its first connect is already counted.
    let out = exec(&[
        "--agent",
        "fresh",
        "--unlisted",
        "--user",
        "nobody",
        "--",
        workload.to_str().unwrap(),
        "connect",
        &sink.addr("127.0.0.1"),
    ]);
    assert!(out.status.code() == Some(2) || out.status.success(), "{out:?}");
    assert!(root.path.join("fresh").is_dir());
    let fresh = daemon.wait_until("fresh's first connect counted", 5, |s| {
        s["agents"].as_array().unwrap().iter().any(|a| {
            a["name"] == "fresh"
                && a["totals"]["allowed"].as_u64().unwrap_or(0)
                    + a["totals"]["would_deny"].as_u64().unwrap_or(0)
                    + a["totals"]["denied"].as_u64().unwrap_or(0)
                    >= 1
        })
    });
    drop(fresh);
    // The launcher's descriptors stay behind: a socket it holds (outside the agents, allowed
    // anywhere) is closed before the agent starts; one it would pass on (stdio, or
    // --preserve-fds) is refused; other descriptors pass with --preserve-fds.
    let run = |setup: &str, preserve: &str, agent_cmd: &str| {
        let script = format!(
            "{setup} && {} exec --agent a1 --user nobody --preserve-fds {preserve} --socket {} -- sh -c '{agent_cmd}'",
            governor_bin().display(),
            daemon.socket.display()
        );
        Command::new("bash").args(["-c", &script]).env_remove("SUDO_UID").output().unwrap()
    };
    let tcp = format!("exec 7<>/dev/tcp/127.0.0.1/{}", other.port);
    let out = run(&tcp, "0", "echo leaked >&7");
    assert!(!out.status.success(), "the agent wrote to the launcher's socket: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Bad file descriptor"), "{out:?}");
    for (setup, preserve) in [(tcp.as_str(), "5"), (&format!("exec 0<>/dev/tcp/127.0.0.1/{}", other.port), "0")] {
        let out = run(setup, preserve, "echo leaked >&7");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(stderr.contains("IPv4 socket of the launcher"), "{stderr}");
    }
    assert_eq!(other.received(), 0, "nothing reached the launcher's peer from inside the agent");
    let out = run("exec 7</etc/hostname", "5", "cat <&7");
    assert!(out.status.success() && !out.stdout.is_empty(), "a file passes with --preserve-fds: {out:?}");

    // A command that is not there says so, with the shell's exit status.
    let out = exec(&["--agent", "a1", "--user", "nobody", "--", "/nonexistent/agent"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent: command not found"), "{out:?}");
}

/// `governor top` as a person sees it: in a terminal (tmux), each refresh redraws the screen in
/// place instead of printing escape codes as text and scrolling.
#[test]
fn top_redraws_in_place_in_a_terminal() {
    if !privileged("top_redraws_in_place_in_a_terminal") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    let session = format!("governor-top-{}", std::process::id());
    struct Tmux(String);
    impl Drop for Tmux {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
        }
    }
    let top = format!("{} top --count 5 --socket {}; sleep 30", governor_bin().display(), daemon.socket.display());
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "140", "-y", "30", &top])
        .status()
        .expect("tmux (cargo xtask test installs it)");
    assert!(started.success());
    let _tmux = Tmux(session.clone());
    let screen = || {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Wait for the third refresh (the rates need two), reading the screen as it is.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut text = screen();
    while !(text.contains("a1") && text.contains("enforcing")) || text.matches("AGENT").count() == 0 {
        assert!(Instant::now() < deadline, "top never drew its table:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
        text = screen();
    }
    std::thread::sleep(Duration::from_millis(2500));
    let text = screen();
    assert_eq!(text.matches("AGENT").count(), 1, "one table on the screen, redrawn in place:\n{text}");
    assert_eq!(text.matches("Ctrl-C to leave").count(), 1, "{text}");
    assert!(!text.contains("\\x1b") && !text.contains("\\n") && !text.contains("[2J"), "escape codes as text:\n{text}");
    assert!(text.lines().next().is_some_and(|l| l.starts_with("governor ")), "the header is at the top:\n{text}");
}

/// `events --since` takes the documented forms and names them when given another; `--follow`
/// starts from now unless `--since` asks for history too.
#[test]
fn events_since_forms_and_follow_from_now() {
    if !privileged("events_since_forms_and_follow_from_now") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(&root, &config(sink.port, ""));
    for since in ["0s", "90s", "10m", "2h", "1d", "1w", "2026-01-01T00:00:00Z"] {
        daemon.cli(&["events", "--since", since]);
    }
    assert!(daemon.cli(&["events", "--since", "1w"]).contains("daemon_start"));
    for bad in ["30", "5M", "999999999999s"] {
        let out = daemon.cli_output(&["events", "--since", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("90s, 30m, 2h, 1d, 1w") && !stderr.contains("component"), "{bad}: {stderr}");
    }
    daemon.status(); // the daemon is unhurt

    let first_line = |args: &[&str]| {
        let mut child = Command::new(governor_bin())
            .args(["events", "--follow", "--json"])
            .args(args)
            .arg("--socket")
            .arg(&daemon.socket)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Some(Ok(line)) = std::io::BufReader::new(stdout).lines().next() {
                let _ = tx.send(line);
            }
        });
        // A record written after the follower connected: a pause, then its resume.
        std::thread::sleep(Duration::from_millis(300));
        daemon.cli(&["pause", "a1"]);
        daemon.cli(&["resume", "a1"]);
        let line = rx.recv_timeout(Duration::from_secs(5)).expect("no record streamed");
        let _ = child.kill();
        let _ = child.wait();
        serde_json::from_str::<Value>(&line).unwrap()["kind"].as_str().unwrap().to_owned()
    };
    assert_eq!(first_line(&[]), "pause", "--follow alone starts from now");
    assert_eq!(first_line(&["--since", "1h"]), "daemon_start", "--since replays first");
}

/// Checkpoints are gates the kernel holds, like the budget's ceiling: with the daemon killed (its
/// programs go on enforcing), the connection that reaches the milestone is the last one through,
/// a charge may not pass the spend milestone, and nothing passes once the time milestone comes.
#[test]
fn checkpoints_hold_in_the_kernel_without_the_daemon() {
    if !privileged("checkpoints_hold_in_the_kernel_without_the_daemon") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let body = format!(
        "[[endpoint]]\nname = \"sink\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\nprice = {{ connection = \"0.25\" }}\n\
         [[agent]]\nname = \"conns\"\nendpoints = [\"sink\"]\ncheckpoints = {{ every_connections = 3 }}\n\
         [[agent]]\nname = \"spend\"\nendpoints = [\"sink\"]\ncheckpoints = {{ every_spend = \"0.50\" }}\n\
         [[agent]]\nname = \"time\"\nendpoints = [\"sink\"]\ncheckpoints = {{ every = \"3s\" }}\n",
        sink.port
    );
    let mut daemon = Daemon::start(&root, &body);
    let started = Instant::now();
    daemon.kill();
    let connect = |agent: &str| workload(Some(&root.path.join(agent)), &["connect", &sink.addr("127.0.0.1")]).ok();
    let conns: Vec<bool> = (0..5).map(|_| connect("conns")).collect();
    assert_eq!(conns, [true, true, true, false, false], "every_connections = 3");
    let spend: Vec<bool> = (0..4).map(|_| connect("spend")).collect();
    assert_eq!(spend, [true, true, false, false], "every_spend = 0.50 at 0.25 a connection");
    assert!(connect("time"), "before its time milestone");
    let deadline = started + Duration::from_secs(3);
    while Instant::now() < deadline + Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!connect("time"), "every = 3s: refused once the time has come");

    // A new daemon finds each agent at its checkpoint, the refusals counted under `checkpoint`,
    // and the spend exactly at the milestone.
    let daemon = Daemon::start_in(daemon.dir(), &root, &body);
    let s = daemon.wait_until("all three at their checkpoints", 10, |s| {
        s["agents"].as_array().unwrap().iter().all(|a| a["state"] == "checkpoint")
    });
    let agent = |name: &str| s["agents"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap().clone();
    assert_eq!(agent("conns")["totals"]["denied_by_reason"]["checkpoint"], 2, "{s:#}");
    assert_eq!(agent("spend")["totals"]["denied_by_reason"]["checkpoint"], 2, "{s:#}");
    assert_eq!(agent("spend")["budget"]["spent_total"], "0.500000", "no overshoot: {s:#}");
    assert!(agent("time")["paused"]["reason"].as_str().unwrap().contains("3 s elapsed"), "{s:#}");
    // An ack lets each through again, counting from there.
    for name in ["conns", "spend", "time"] {
        daemon.cli(&["ack", name]);
        assert!(connect(name), "{name} after its ack");
    }
}
