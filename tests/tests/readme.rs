//! The README's first commands, run as a new user runs them: the daemon with the embedded
//! default (and with each file in `examples/`) on the default agents root, `governor.agents`,
//! with its default socket, state and audit paths, then the README's own shell blocks.
//!
//! A block marked `<!-- tested: with `CMD` running -->` right above its ```` ```sh ```` fence is
//! run by this file with `CMD` started first (as in another terminal) and stopped after with
//! SIGINT (as Ctrl-C does). Everything runs in a private mount namespace with tmpfs over
//! /run/governor, /var/lib/governor and /var/log/governor and a fresh bpffs, so the host keeps
//! nothing of it: when the namespace ends, its pins go and the programs with them. The agents
//! root is removed after, with any process in it (all started here).
//!
//! Both tests use the default agents root and metrics port, so they take turns.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor_tests::{governor_bin, privileged};
use serde_json::Value;

static DEFAULT_ROOT: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A shell block of the README and the daemon command it is written to run beside.
#[derive(Debug)]
struct Block {
    daemon: String,
    script: String,
    line: usize,
}

/// Every block marked as tested, in order.
fn tested_blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix("<!-- tested: with `") else { continue };
        let daemon =
            rest.strip_suffix("` running -->").unwrap_or_else(|| panic!("README.md:{}: malformed marker", i + 1));
        assert_eq!(lines.get(i + 1).map(|l| l.trim()), Some("```sh"), "README.md:{}: a ```sh block must follow", i + 1);
        let body: Vec<&str> = lines[i + 2..].iter().take_while(|l| l.trim() != "```").copied().collect();
        blocks.push(Block { daemon: daemon.to_owned(), script: body.join("\n") + "\n", line: i + 3 });
    }
    blocks
}

/// What one run left behind to look at.
struct Run {
    /// The block's output (commands traced with `set -x`).
    output: String,
    /// The block's exit status.
    code: i32,
    /// `governor status --json` after the block, with the daemon still running.
    status: Value,
    daemon_log: String,
}

/// The default paths a new user's daemon writes to; made private to the run (tmpfs).
const PRIVATE_DIRS: [&str; 3] = ["/run/governor", "/var/lib/governor", "/var/log/governor"];

/// The agents root of the embedded default, and everything the runs create on the host, removed
/// on drop: the cgroups (after ending any process in them, all started by this test) and the
/// mount points this test had to create.
struct DefaultRoot {
    path: PathBuf,
    created_dirs: Vec<PathBuf>,
}

impl DefaultRoot {
    fn claim() -> Self {
        let mount = governor::cgroup::Cgroup2Mount::discover().unwrap().mount_point;
        let path = mount.join("governor.agents");
        assert!(
            std::net::TcpListener::bind("127.0.0.1:9477").is_ok(),
            "127.0.0.1:9477 (the default metrics address) is taken; this test runs the default config"
        );
        assert!(
            std::os::unix::net::UnixStream::connect("/run/governor/governor.sock").is_err(),
            "a governor answers on /run/governor/governor.sock; this test runs the default config"
        );
        if path.exists() {
            // Empty cgroups left by nothing that runs can go; a live agent's cannot.
            remove_tree(&path, false);
            assert!(
                !path.exists(),
                "{} holds processes: a governor may be serving the default agents root on this host, and this test needs it",
                path.display()
            );
        }
        let mut created_dirs = Vec::new();
        for d in PRIVATE_DIRS {
            if !Path::new(d).exists() {
                std::fs::create_dir_all(d).unwrap();
                created_dirs.push(PathBuf::from(d));
            }
        }
        Self { path, created_dirs }
    }

    /// Runs `daemon` (a README command line, run from the workspace) and then `script`, both in a
    /// private mount namespace, and stops the daemon as Ctrl-C would.
    fn run(&self, daemon: &str, script: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let governor = governor_bin();
        std::fs::write(dir.path().join("block.sh"), script).unwrap();
        let outer = format!(
            r#"set -u
for d in {private}; do mount -t tmpfs -o mode=0755 tmpfs "$d" || exit 90; done
mount -t bpf bpf /sys/fs/bpf || exit 91
cd {workspace}
setsid {daemon} > {out}/daemon.log 2>&1 &
daemon=$!
echo $daemon > {out}/daemon.pid
ready=0
for _ in $(seq 1 1200); do
  {governor} status >/dev/null 2>&1 && {{ ready=1; break; }}
  kill -0 $daemon 2>/dev/null || break
  sleep 0.25
done
if [ $ready = 1 ]; then
  bash -eux -o pipefail {out}/block.sh > {out}/block.out 2>&1
  echo $? > {out}/block.code
  {governor} status --json > {out}/status.json
fi
# Ctrl-C reaches the whole group (cargo, xtask, governor); wait for all of it to end.
kill -INT -- -$daemon 2>/dev/null
for _ in $(seq 1 200); do kill -0 -- -$daemon 2>/dev/null || break; sleep 0.1; done
kill -KILL -- -$daemon 2>/dev/null
wait
"#,
            private = PRIVATE_DIRS.join(" "),
            workspace = workspace().display(),
            out = dir.path().display(),
            governor = governor.display(),
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "bash", "-c", &outer])
            .env("GOVERNOR_BIN", &governor)
            .spawn()
            .expect("run unshare (util-linux)");
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        // The daemon's process group, if the script could not stop it: ours, by its pid.
        if let Ok(pid) = read("daemon.pid").trim().parse::<i32>() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let daemon_log = read("daemon.log");
        assert!(status.success(), "the private namespace's script failed ({status}); daemon log:\n{daemon_log}");
        let status_json = read("status.json");
        assert!(!status_json.is_empty(), "`{daemon}` never answered `governor status`; its output:\n{daemon_log}");
        Run {
            output: read("block.out"),
            code: read("block.code").trim().parse().unwrap_or(-1),
            status: serde_json::from_str(&status_json).expect("status JSON"),
            daemon_log,
        }
    }
}

impl Drop for DefaultRoot {
    fn drop(&mut self) {
        remove_tree(&self.path, true);
        for d in &self.created_dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Removes a cgroup tree deepest first; with `kill`, ends its processes first.
fn remove_tree(path: &Path, kill: bool) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), kill);
            }
        }
    }
    if kill {
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(path).is_err() && path.exists() && kill && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agent<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name} in status: {status:#}"))
}

fn total(agent: &Value, key: &str) -> u64 {
    agent["totals"][key].as_u64().unwrap_or(0)
}

#[test]
fn the_readme_blocks_work_as_written() {
    if !privileged("the_readme_blocks_work_as_written") {
        return;
    }
    let _turn = DEFAULT_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let blocks = tested_blocks(&readme);
    let daemons: Vec<&str> = blocks.iter().map(|b| b.daemon.as_str()).collect();
    assert_eq!(
        daemons,
        ["cargo xtask run", "cargo xtask run -- --config examples/governor.toml"],
        "the README's tested blocks changed: say here what each must show"
    );
    for block in &blocks {
        let root = DefaultRoot::claim();
        let run = root.run(&block.daemon, &block.script);
        let context = format!(
            "README.md:{} with `{}`:\n--- block output\n{}\n--- daemon log\n{}",
            block.line, block.daemon, run.output, run.daemon_log
        );
        assert_eq!(run.code, 0, "{context}");
        match block.daemon.as_str() {
            // The embedded default is a sandbox: the demo agent's connect is refused and counted.
            "cargo xtask run" => {
                let demo = agent(&run.status, "demo");
                assert_eq!(demo["mode"], "enforce", "{context}");
                assert!(total(demo, "denied") == 1 && total(demo, "allowed") == 0, "{demo:#}\n{context}");
                assert!(run.output.lines().any(|l| l == "refused"), "{context}");
                let row = run.output.lines().find(|l| l.starts_with("demo ")).unwrap_or_else(|| panic!("{context}"));
                assert!(row.contains("enforce"), "status shows the agent enforced: {row}");
            }
            // The example's scanner may not reach the metrics port: refused, and counted, and the
            // metrics say so (the block's grep must find the series).
            _ => {
                let scanner = agent(&run.status, "scanner");
                assert!(total(scanner, "denied") >= 1, "{scanner:#}\n{context}");
                assert!(run.output.lines().any(|l| l == "refused"), "{context}");
                assert!(
                    run.output.lines().any(|l| l.starts_with("governor_connections_total{agent=\"scanner\"")),
                    "{context}"
                );
            }
        }
    }
}

/// For each example, an agent it names and whether that agent is refused what it is not
/// allowed (enforce) or only counted (observe).
const EXAMPLES: &[(&str, &str, bool)] =
    &[("fleet.toml", "researcher", true), ("governor.toml", "scanner", true), ("observe.toml", "scanner", false)];

#[test]
fn every_example_starts_on_the_default_root_and_governs() {
    if !privileged("every_example_starts_on_the_default_root_and_governs") {
        return;
    }
    let _turn = DEFAULT_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let mut files: Vec<String> = std::fs::read_dir(workspace().join("examples"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    assert_eq!(files, EXAMPLES.iter().map(|e| e.0).collect::<Vec<_>>(), "say here what each example must show");
    let governor = governor_bin();
    for (file, name, enforce) in EXAMPLES {
        let root = DefaultRoot::claim();
        let daemon = format!("{} run --config examples/{file}", governor.display());
        // The daemon's metrics port is on no example's allowlist.
        let script = format!(
            "{} exec --agent {name} --user nobody -- curl -sS -o /dev/null http://127.0.0.1:9477/metrics || echo \"refused: $?\"\n",
            governor.display()
        );
        let run = root.run(&daemon, &script);
        let context = format!("examples/{file}:\n--- output\n{}\n--- daemon log\n{}", run.output, run.daemon_log);
        assert_eq!(run.code, 0, "{context}");
        let a = agent(&run.status, name);
        if *enforce {
            assert!(
                total(a, "denied") >= 1 && run.output.lines().any(|l| l.starts_with("refused: ")),
                "{a:#}\n{context}"
            );
        } else {
            assert!(
                total(a, "would_deny") >= 1 && !run.output.lines().any(|l| l.starts_with("refused: ")),
                "{a:#}\n{context}"
            );
        }
    }
}
