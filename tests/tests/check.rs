//! `governor check`, the readiness gate, on the shipped examples and in each format.

use std::{path::Path, process::Command};

use governor_tests::{AgentsRoot, governor_bin, privileged, write_config};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

fn check(args: &[&str]) -> std::process::Output {
    Command::new(governor_bin()).arg("check").args(args).output().unwrap()
}

#[test]
fn the_examples_get_the_verdicts_they_document() {
    for (file, ready) in [("governor.toml", true), ("fleet.toml", true), ("observe.toml", false)] {
        let out = check(&["--config", example(file).to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), ready, "{file}:\n{text}");
        assert!(text.contains(if ready { ": READY" } else { ": NOT READY" }), "{file}:\n{text}");
    }
    let out = check(&["--config", example("observe.toml").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    for key in ["[agent[0].mode]", "[agent[0].on_exhausted]", "[agent[0].checkpoints]", "[agent[0].limits]"] {
        assert!(text.contains("FAIL") && text.contains(key), "observe.toml should FAIL on {key}:\n{text}");
    }
}

#[test]
fn the_report_is_an_artifact_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let config = example("fleet.toml");
    let json = check(&["--config", config.to_str().unwrap(), "--format", "json"]);
    let r: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(r["ready"], true);
    assert_eq!(r["config_sha256"].as_str().unwrap().len(), 64);
    for k in ["host", "kernel", "version", "time"] {
        assert!(r[k].as_str().is_some_and(|v| !v.is_empty()), "{k} missing: {r:#}");
    }
    let md = dir.path().join("readiness.md");
    let out = check(&["--config", config.to_str().unwrap(), "--format", "markdown", "--output", md.to_str().unwrap()]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.starts_with("# governor readiness report") && text.contains("| Spend | PASS |"), "{text}");
    let bad = check(&["--config", "/nonexistent.toml"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot read config file /nonexistent.toml"));
}

#[test]
fn require_ready_refuses_to_start_on_a_fail() {
    if !privileged("require_ready_refuses_to_start_on_a_fail") {
        return;
    }
    let root = AgentsRoot::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &root, "require_ready = true\n[[agent]]\nname = \"a1\"\n");
    let out = Command::new(governor_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("daemon.require_ready is set and the readiness check has")
            && stderr.contains("governor check --config"),
        "{stderr}"
    );
    assert!(!root.path.join("a1").exists(), "nothing was set up");
}

#[test]
fn completions_are_generated_for_the_common_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(governor_bin()).args(["completions", shell]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("governor") && text.contains("pause"), "{shell}: {text}");
    }
}

#[test]
fn check_live_reads_the_kernel_and_fails_when_a_control_is_broken() {
    if !privileged("check_live_reads_the_kernel_and_fails_when_a_control_is_broken") {
        return;
    }
    let root = AgentsRoot::new();
    let mut daemon = governor_tests::Daemon::start(&root, "on_daemon_exit = \"detach\"\n[[agent]]\nname = \"a1\"\n");
    let live = |daemon: &governor_tests::Daemon| -> serde_json::Value {
        let out = Command::new(governor_bin())
            .args(["check", "--live", "--format", "json", "--config"])
            .arg(&daemon.config)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let verdict = |r: &serde_json::Value, check: &str| -> (String, String) {
        let i = r["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["check"] == check)
            .unwrap_or_else(|| panic!("no {check:?} in {r:#}"));
        (i["verdict"].as_str().unwrap().to_owned(), i["reason"].as_str().unwrap().to_owned())
    };
    // What a killed `check --live` would leave (its pid gone): the next probe removes it.
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let mount = governor::cgroup::Cgroup2Mount::discover().unwrap().mount_point;
    std::fs::create_dir(mount.join(format!("governor-check-{dead}"))).unwrap();
    std::fs::create_dir(std::env::temp_dir().join(format!("governor-check-{dead}"))).unwrap();

    let r = live(&daemon);
    for check in [
        "the daemon answers on its socket",
        "the audit log is queryable through the socket",
        "the metrics endpoint answers",
        "a1 is enforcing",
        "a1 has governor's programs attached",
        "agents run unprivileged",
        // The probe: a private daemon and probe agent, proving each control on this kernel.
        "a forbidden connect gets EPERM (probe)",
        "an allowed connect is counted (probe)",
        "pause refuses a connect (probe)",
        "a tiny budget suspends its probe (probe)",
        "DNS for an allowed name resolves end to end through the proxy (probe)",
        "the denial appears in a live query (probe)",
        "the metrics endpoint answers (probe)",
    ] {
        assert_eq!(verdict(&r, check).0, "PASS", "{check}: {:?}", verdict(&r, check));
    }
    let probe_fails: Vec<_> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["check"].as_str().unwrap().ends_with("(probe)") && i["verdict"] != "PASS")
        .collect();
    assert!(probe_fails.is_empty(), "{probe_fails:#?}");
    assert_probe_left_nothing();

    // Broken on purpose: a root process inside the agent holds CAP_NET_ADMIN and friends.
    let mut sleeper = governor_tests::spawn_in(&root.path.join("a1"), {
        let mut c = Command::new("sleep");
        c.arg("30");
        c
    });
    let r = live(&daemon);
    let (v, reason) = verdict(&r, "agents run unprivileged");
    assert_eq!(v, "FAIL");
    assert!(reason.contains(&format!("pid {}", sleeper.id())) && reason.contains("CAP_NET_ADMIN"), "{reason}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // And with the daemon gone (programs detached), the live check fails.
    assert!(daemon.stop().success());
    let out = Command::new(governor_bin()).args(["check", "--live", "--config"]).arg(&daemon.config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  the daemon answers on its socket"));
    assert_probe_left_nothing();
}

/// The probe's cgroups, pins and files are gone once `check --live` returns.
fn assert_probe_left_nothing() {
    let mount = governor::cgroup::Cgroup2Mount::discover().unwrap().mount_point;
    let bpffs = governor::kernel::pins::bpffs().unwrap().join("governor").join(governor::kernel::pins::LAYOUT_VERSION);
    for dir in [mount, bpffs, std::env::temp_dir()] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("governor-check-"))
            .collect();
        assert!(left.is_empty(), "the probe left {left:?} in {}", dir.display());
    }
}

/// The readiness report as a signed artifact: signed with an OpenSSH ed25519 key, verified by
/// `governor check --verify` and by `ssh-keygen -Y verify`; a changed report, another key, or a
/// configuration that changed since are refused, each with what failed.
#[test]
fn a_signed_report_verifies_and_a_changed_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = |name: &str, pass: &str| {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", pass, "-C", "operator@example", "-f"])
            .arg(d.join(name))
            .output()
            .expect("ssh-keygen (cargo xtask test installs openssh-client)");
        assert!(out.status.success(), "{out:?}");
    };
    keygen("key", "");
    keygen("other", "");
    keygen("locked", "a passphrase");
    let config = d.join("governor.toml");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/governor.toml"), &config).unwrap();
    let report = d.join("report.md");
    let governor = |args: &[&str]| Command::new(governor_bin()).args(args).current_dir(d).output().unwrap();
    let out = governor(&[
        "check",
        "--config",
        "governor.toml",
        "--format",
        "markdown",
        "--output",
        "report.md",
        "--sign",
        "key",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(d.join("report.md.sig").exists());

    let verify = |key: &str, config: Option<&str>| {
        let mut args = vec!["check", "--verify", "report.md", "--key", key];
        if let Some(c) = config {
            args.extend(["--config", c]);
        }
        governor(&args)
    };
    let out = verify("key.pub", Some("governor.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("signature good, by SHA256:")
            && stdout.contains("as in the signed report"),
        "{out:?}"
    );

    // The same signature, checked by OpenSSH's own tool.
    let public = std::fs::read_to_string(d.join("key.pub")).unwrap();
    std::fs::write(d.join("allowed_signers"), format!("operator@example {public}")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ssh-keygen -Y verify -f allowed_signers -I operator@example -n governor-readiness -s report.md.sig < report.md")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Another key did not sign it.
    let out = verify("other.pub", None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not verify"), "{out:?}");
    // The configuration changed since.
    let text = std::fs::read_to_string(&config).unwrap().replace("limit = \"25.00\"", "limit = \"2500.00\"");
    assert_ne!(text, std::fs::read_to_string(&config).unwrap(), "the example's budget line moved");
    std::fs::write(d.join("changed.toml"), text).unwrap();
    let out = verify("key.pub", Some("changed.toml"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("configuration changed"), "{out:?}");
    // The report changed after signing.
    let tampered = std::fs::read_to_string(&report).unwrap().replacen("FAIL", "PASS", 1);
    std::fs::write(&report, tampered).unwrap();
    let out = verify("key.pub", None);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("changed after it was signed"),
        "{out:?}"
    );
    // A passphrase-protected key is pointed at ssh-keygen, which can ask for it.
    let out = governor(&["check", "--config", "governor.toml", "--output", "r2.txt", "--sign", "locked"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ssh-keygen -Y sign -n governor-readiness"), "{out:?}");
}
