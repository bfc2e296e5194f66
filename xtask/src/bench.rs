//! `cargo xtask bench [--quick]`: what governing costs, measured against no governor in the same
//! run. Each comparison runs interleaved rounds A (governor attached) and B (none), computes the
//! ratio pair by pair, and reports median, min and max; the floor (the daemon with programs that
//! let everything through, so the hooks' own cost) runs alongside in every comparison, and
//! nftables doing the same job (per-cgroup counters and an allowlist set) where it can. Writes
//! bench/REPORT.md and bench/report.json. All traffic is on loopback or into a network namespace
//! the bench creates.

use std::{
    fmt::Write as _,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::build::{self, workspace_root};

struct Plan {
    rounds: usize,
    /// Untimed runs per comparison with the kernel's per-program accounting on (each of
    /// governor and the floor); one run alone is at the mercy of this machine's swings.
    accounting_runs: usize,
    iperf_secs: u32,
    connects: u64,
    sizes: Vec<usize>,
    idle_secs: u64,
    /// Agents in the scale measurement (10 endpoints each).
    agents: u32,
    /// Run only the measures whose name contains this (`--only`).
    only: Option<String>,
}

impl Plan {
    fn new(quick: bool, only: Option<String>) -> Self {
        if quick {
            Self {
                rounds: 3,
                accounting_runs: 1,
                iperf_secs: 1,
                connects: 2000,
                sizes: vec![10, 10_000],
                idle_secs: 2,
                agents: 100,
                only,
            }
        } else {
            Self {
                // Seven: this 2-core machine swings a throughput round by 10% either way.
                rounds: 7,
                accounting_runs: 3,
                iperf_secs: 3,
                connects: 20_000,
                sizes: vec![10, 10_000, 100_000, 1_000_000],
                idle_secs: 10,
                agents: 1000,
                only,
            }
        }
    }

    fn wants(&self, measure: &str) -> bool {
        self.only.as_deref().is_none_or(|o| measure.contains(o))
    }
}

/// Sets the kernel's per-program accounting (`kernel.bpf_stats_enabled`) while it lives and
/// puts the host's setting back after. The timed rounds run with it off: it adds two clock
/// reads to every program run, a cost production hosts do not pay.
struct BpfStats(String);

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn set(on: bool) -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(Self::SYSCTL).unwrap_or_else(|_| "0".into());
        std::fs::write(Self::SYSCTL, if on { "1" } else { "0" })
            .with_context(|| format!("setting {} to {}", Self::SYSCTL, u8::from(on)))?;
        Ok(Self(before.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, &self.0);
    }
}

/// One A/B (or A/B/C) comparison, bigger is better unless `lower_is_better`.
struct Comparison {
    name: String,
    unit: &'static str,
    lower_is_better: bool,
    goal: String,
    governor: Vec<f64>,
    baseline: Vec<f64>,
    nftables: Vec<f64>,
    /// The same daemon with programs that let everything through: what the hooks cost alone.
    floor: Vec<f64>,
    /// What each program that ran cost, one list per accounting run.
    programs: Vec<Vec<ProgramRuns>>,
    /// The same for the floor's programs (which only return "allow"): what an empty program
    /// costs under this workload, the reference each of governor's figures is read against.
    floor_programs: Vec<Vec<ProgramRuns>>,
}

/// A program's runs and total run time in one accounting run (`kernel.bpf_stats_enabled`).
struct ProgramRuns {
    name: String,
    runs: u64,
    time_ns: u64,
}

impl ProgramRuns {
    /// Fewer runs than this say more about cold caches than about the program: a traffic
    /// workload's one or two connects are left out of its row.
    const MEANINGFUL: u64 = 100;

    fn ns_per_run(&self) -> f64 {
        self.time_ns as f64 / self.runs.max(1) as f64
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() { f64::NAN } else { s[s.len() / 2] }
}

fn stats(v: &[f64]) -> Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({ "median": median(v), "min": min, "max": max, "runs": v })
}

fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// The bench's own cgroups, daemon configs and pins; removed on drop.
/// What the bench agent's allowlist is shaped for.
#[derive(Clone, Copy)]
enum Shape {
    /// Every bench port, TCP and UDP: the throughput comparisons.
    Traffic,
    /// TCP to the accept loop only: one map entry per address, so "N entries" is N in the trie.
    Connect,
    /// Traffic, plus `BENCH_NAME` in hosts and `BENCH_RESOLVER` as the only resolver.
    Dns,
}

/// The bench's own resolver and name, for the DNS measurement (outside 127.64.0.0/10, where
/// the proxy's addresses are).
const BENCH_RESOLVER: &str = "127.53.77.1";
const BENCH_NAME: &str = "bench.governor.test";

struct Env {
    mount: PathBuf,
    rel: String,
    root: PathBuf,
    dir: PathBuf,
    workload: PathBuf,
    governor: PathBuf,
    /// `governor` built with programs that let everything through (`build::floor_governor`).
    floor: PathBuf,
}

impl Env {
    fn agent(&self) -> PathBuf {
        self.root.join("bench")
    }

    /// The `[daemon]` table every bench config starts with: files in the bench's directory, and
    /// programs detached when the daemon stops, so the next baseline round is ungoverned.
    fn daemon_table(&self) -> String {
        let dir = self.dir.display();
        format!(
            "[daemon]\nagents_root = {:?}\nsocket = \"{dir}/governor.sock\"\nmetrics = \"127.0.0.1:0\"\nstate_dir = \"{dir}/state\"\naudit_log = \"{dir}/audit.jsonl\"\non_daemon_exit = \"detach\"\n",
            self.rel
        )
    }

    fn config(&self, allow: &[String], ports: &str, extra_daemon: &str, extra_agent: &str) -> PathBuf {
        let mut text = format!("{}unlisted_agents = \"ignore\"\n{extra_daemon}\n", self.daemon_table());
        let _ = write!(text, "[[endpoint]]\nname = \"bench\"\nports = [{ports}]\nprotocol = \"any\"\naddresses = [");
        for (i, a) in allow.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(text, "\"{a}\"");
        }
        let _ = write!(text, "]\n\n[[agent]]\nname = \"bench\"\nendpoints = [\"bench\"]\n{extra_agent}\n");
        let path = self.dir.join("governor.toml");
        std::fs::write(&path, text).expect("write bench config");
        path
    }

    /// The bench agent's config for a comparison of `shape`.
    fn shaped_config(&self, allow: &[String], shape: Shape) -> anyhow::Result<PathBuf> {
        let (ports, protocol, extra_daemon, hosts) = match shape {
            Shape::Traffic => ("5297, 5298, 5299", "any", String::new(), String::new()),
            Shape::Connect => ("5298", "tcp", String::new(), String::new()),
            Shape::Dns => (
                "5297, 5298, 5299",
                "any",
                format!("[dns]\nresolvers = [\"{BENCH_RESOLVER}\"]"),
                format!("\nhosts = [\"{BENCH_NAME}\"]"),
            ),
        };
        let path = self.config(allow, ports, &extra_daemon, "");
        let text =
            std::fs::read_to_string(&path)?.replace("protocol = \"any\"", &format!("protocol = \"{protocol}\"{hosts}"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The baseline must run with no program attached: the daemons here detach on a clean stop
    /// (`on_daemon_exit = "detach"`), and their pinned links must be gone.
    fn ensure_detached(&self) -> anyhow::Result<()> {
        for pins in self.pins() {
            let links = pins.join("links");
            let left = std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
            if left > 0 {
                bail!("{left} program links are still pinned in {}: the baseline would be governed", links.display());
            }
        }
        Ok(())
    }

    /// The bench daemons' pin directories, under every layout version present
    /// (`/sys/fs/bpf/governor/<version>/<key>`, the key being the agents root's readable name,
    /// a dash and a hash; older versions used the readable name alone), so a layout bump in
    /// governor cannot make the checks here look at an empty directory.
    fn pins(&self) -> Vec<PathBuf> {
        let legacy = self.root.to_string_lossy().trim_start_matches('/').replace('/', "_");
        let readable: String =
            legacy.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
        let ours = |name: &str| {
            name == legacy
                || name
                    .strip_prefix(&readable)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        std::fs::read_dir("/sys/fs/bpf/governor")
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|version| std::fs::read_dir(version.path()).into_iter().flatten().flatten())
            .filter(|pin| ours(&pin.file_name().to_string_lossy()))
            .map(|pin| pin.path())
            .collect()
    }

    /// Starts the daemon with `config` and waits for its socket.
    fn start(&self, config: &Path) -> anyhow::Result<Daemon> {
        self.launch(&self.governor, config)
    }

    fn launch(&self, governor: &Path, config: &Path) -> anyhow::Result<Daemon> {
        // Fresh maps each time: rounds stay independent, and a large allowlist is not installed
        // beside the previous daemon's (a new generation needs room for both).
        for pins in self.pins() {
            let _ = std::fs::remove_dir_all(pins);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("state"));
        let _ = std::fs::remove_file(self.dir.join("audit.jsonl"));
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        let child = Command::new(governor).args(["run", "--config"]).arg(config).stderr(log).spawn()?;
        let socket = self.dir.join("governor.sock");
        let started = Instant::now();
        let daemon = Daemon { child: Some(child), socket, governor: self.governor.clone(), started };
        // Ready means answering: the socket is bound before the programs are attached.
        while started.elapsed() < Duration::from_secs(120) {
            if daemon.status().is_ok_and(|s| s["version"].is_string()) {
                return Ok(daemon);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the daemon did not start: {}", std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default())
    }

    /// Runs the workload in the agent cgroup; returns its JSON answer.
    fn workload(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = in_cgroup(&self.agent(), Command::new(&self.workload).args(args))?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("workload {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", "governor_bench"]).output();
        kill_tree(&self.root);
        for pins in self.pins() {
            let _ = std::fs::remove_dir_all(pins);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            kill_tree(&e.path());
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    governor: PathBuf,
    started: Instant,
}

impl Daemon {
    fn status(&self) -> anyhow::Result<Value> {
        let out = Command::new(&self.governor).args(["status", "--json", "--socket"]).arg(&self.socket).output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` with its process placed in `cgroup` before exec.
fn in_cgroup(cgroup: &Path, cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let procs = std::fs::OpenOptions::new().write(true).open(cgroup.join("cgroup.procs"))?;
    let fd = procs.as_raw_fd();
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd.output()?)
}

/// A server process the bench started, ended (by its pid) and reaped on drop.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_listening(cmd: &mut Command) -> anyhow::Result<Child> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line)?;
    if line.trim() != "listening" {
        bail!("server did not start: {line:?}");
    }
    Ok(child)
}

fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (before, after) = l.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}

/// `n` allowlist entries: the real destinations first, then distinct /32s in 10.0.0.0/8.
fn allowlist(real: &[&str], n: usize) -> Vec<String> {
    let mut v: Vec<String> = real.iter().map(|s| (*s).to_owned()).collect();
    let mut i = 1u32;
    while v.len() < n.max(real.len()) {
        v.push(format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255));
        i += 1;
    }
    v
}

fn iperf(env: &Env, args: &[&str]) -> anyhow::Result<Value> {
    let out = in_cgroup(&env.agent(), Command::new("iperf3").args(args).arg("-J"))?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn tcp_gbits(v: &Value) -> f64 {
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN) / 1e9
}

fn udp_kpps(v: &Value) -> f64 {
    let s = &v["end"]["sum"];
    s["packets"].as_f64().unwrap_or(f64::NAN) / s["seconds"].as_f64().unwrap_or(f64::NAN) / 1e3
}

/// An nftables ruleset doing governor's job for the bench agent: per-cgroup counters and an
/// allowlist set of `allow`.
fn nft_load(env: &Env, allow: &[String]) -> anyhow::Result<()> {
    let rel_from_sysfs = env.mount.strip_prefix("/sys/fs/cgroup").map(|p| p.to_path_buf()).unwrap_or_default();
    let path = rel_from_sysfs.join(&env.rel).join("bench");
    let level = path.components().count();
    let mut text = String::from("table inet governor_bench {\n set allow { type ipv4_addr; elements = { ");
    text.push_str(&allow.join(", "));
    let _ = write!(
        text,
        " }} }}\n chain out {{ type filter hook output priority 0; policy accept;\n  socket cgroupv2 level {level} \"{p}\" ip daddr @allow counter accept\n  socket cgroupv2 level {level} \"{p}\" counter drop\n }}\n chain inp {{ type filter hook input priority 0; policy accept;\n  socket cgroupv2 level {level} \"{p}\" counter\n }}\n}}\n",
        p = path.display()
    );
    let file = env.dir.join("bench.nft");
    std::fs::write(&file, text)?;
    let out = Command::new("nft").arg("-f").arg(&file).output()?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn nft_unload() {
    let _ = Command::new("nft").args(["delete", "table", "inet", "governor_bench"]).output();
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time the process's threads have had, in seconds, to the nanosecond (`schedstat`; the
/// 10 ms ticks of /proc/PID/stat read 0% for a daemon that idles in between). Threads that
/// already exited are not counted.
fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Bytes of kernel memory charged to the daemon's BPF maps (memlock of each map fd).
fn map_memory(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("map_type:"))
        .filter_map(|t| {
            t.lines().find(|l| l.starts_with("memlock:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

pub fn run(quick: bool, only: Option<String>) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the bench loads eBPF programs and makes cgroups and a network namespace: run it as root (sudo -E cargo xtask bench)"
        );
    }
    for (tool, package) in [("iperf3", "iperf3"), ("nft", "nftables"), ("ip", "iproute2")] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("xtask: installing {package} for the bench");
            build::status(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", package])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        }
    }
    let plan = Plan::new(quick, only);
    let bench_started = Instant::now();
    let governor = build::all(true)?;
    let workload = workspace_root().join("target/release/governor-workload");
    let mount = cgroup2_mount()?;
    let rel = format!("governor-bench-{}", std::process::id());
    let root = mount.join(&rel);
    std::fs::create_dir_all(root.join("bench"))?;
    let dir = std::env::temp_dir().join(&rel);
    std::fs::create_dir_all(&dir)?;
    let floor = build::floor_governor()?;
    let env = Env { mount, rel, root, dir, workload, governor, floor };
    let (comparisons, singles) = {
        let _stats_off = BpfStats::set(false)?;
        measure(&env, &plan)?
    };
    let micro = if plan.wants("criterion") { criterion(quick)? } else { Vec::new() };
    report(&plan, quick, comparisons, singles, &micro, bench_started.elapsed())
}

/// One criterion benchmark: its name and median time per iteration with the 95% interval (ns).
struct Micro {
    name: String,
    median_ns: f64,
    low_ns: f64,
    high_ns: f64,
}

/// Runs the user-space microbenchmarks (governor-userspace/benches/hot_paths.rs) and reads
/// criterion's estimates back.
fn criterion(quick: bool) -> anyhow::Result<Vec<Micro>> {
    let out_dir = workspace_root().join("target/criterion");
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = build::cmd("cargo");
    // The same object path as `build::all`, or cargo would rebuild governor-userspace (its
    // build script reads the variable) here and again at the next `cargo xtask build`.
    cmd.args(["bench", "-p", "governor-userspace", "--bench", "hot_paths", "--", "--noplot"])
        .env("GOVERNOR_EBPF_OBJECT", build::ebpf_object());
    if quick {
        cmd.arg("--quick");
    }
    build::status(&mut cmd)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&out_dir).context("reading target/criterion")?.flatten() {
        let dir = entry.path().join("new");
        let (Ok(b), Ok(e)) =
            (std::fs::read_to_string(dir.join("benchmark.json")), std::fs::read_to_string(dir.join("estimates.json")))
        else {
            continue;
        };
        let (b, e): (Value, Value) = (serde_json::from_str(&b)?, serde_json::from_str(&e)?);
        let m = &e["median"];
        out.push(Micro {
            name: b["full_id"].as_str().unwrap_or_default().to_owned(),
            median_ns: m["point_estimate"].as_f64().unwrap_or(f64::NAN),
            low_ns: m["confidence_interval"]["lower_bound"].as_f64().unwrap_or(f64::NAN),
            high_ns: m["confidence_interval"]["upper_bound"].as_f64().unwrap_or(f64::NAN),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// (measure, result, goal) of the measurements that are not A/B comparisons.
type Singles = Vec<(String, String, String)>;
fn measure(env: &Env, plan: &Plan) -> anyhow::Result<(Vec<Comparison>, Singles)> {
    let mut comparisons = Vec::new();
    let mut singles: Singles = Vec::new();
    let record_programs = |d: &Daemon| -> Vec<ProgramRuns> {
        let status = d.status().unwrap_or_default();
        status["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let runs = p["run_count"].as_u64().filter(|&n| n > 0)?;
                Some(ProgramRuns { name: p["name"].as_str()?.to_owned(), runs, time_ns: p["run_time_ns"].as_u64()? })
            })
            .collect()
    };

    // Servers outside every agent: iperf3 and an accept loop on loopback, iperf3 in a netns.
    // Each is ended when it goes out of scope, also when a measurement fails.
    let _iperf_lo =
        Stopped(Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", "5299"]).stdout(Stdio::null()).spawn()?);
    let _acceptor = Stopped(spawn_listening(Command::new(&env.workload).args(["accept-loop", "127.0.0.1:5298"]))?);
    let ns = format!("gvbench{}", std::process::id() % 100_000);
    let netns = NetnsGuard::new(&ns)?;
    let _iperf_ns = Stopped(
        Command::new("ip")
            .args(["netns", "exec", &ns, "iperf3", "-s", "-B", "10.214.0.2", "-p", "5297"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = plan.iperf_secs.to_string();

    type Probe<'a> = Box<dyn Fn() -> anyhow::Result<f64> + 'a>;
    let mut compare = |name: &str,
                       unit: &'static str,
                       lower: bool,
                       goal: &str,
                       allow: &[String],
                       with_nftables: bool,
                       shape: Shape,
                       probe: Probe<'_>|
     -> anyhow::Result<()> {
        if !plan.wants(name) {
            return Ok(());
        }
        let mut c = Comparison {
            name: name.to_owned(),
            unit,
            lower_is_better: lower,
            goal: goal.to_owned(),
            governor: vec![],
            baseline: vec![],
            nftables: vec![],
            floor: vec![],
            programs: vec![],
            floor_programs: vec![],
        };
        let config = env.shaped_config(allow, shape)?;
        // One timed round with a daemon built from `governor` running.
        let daemon_round = |governor: &Path| -> anyhow::Result<f64> {
            let _d = env.launch(governor, &config)?;
            // Let the daemon's start-up work (first counter pass, resolving, saving state) finish
            // before the clock runs: on two cores it would otherwise share the workload's CPU.
            std::thread::sleep(Duration::from_millis(300));
            probe()
        };
        let nftables = |c: &mut Comparison, round: usize| -> anyhow::Result<()> {
            if !with_nftables {
                return Ok(());
            }
            match nft_load(env, allow) {
                Ok(()) => {
                    let v = probe();
                    nft_unload();
                    c.nftables.push(v?);
                }
                Err(e) if round == 0 => eprintln!("xtask: nftables variant skipped: {e}"),
                Err(_) => {}
            }
            Ok(())
        };
        for round in 0..plan.rounds {
            // Interleaved so that drift hits every variant alike, and in mirrored order (A D B C,
            // then C B D A) so that a steady drift does not favour whichever runs first.
            if round % 2 == 0 {
                c.governor.push(daemon_round(&env.governor)?);
                c.floor.push(daemon_round(&env.floor)?);
                env.ensure_detached()?;
                c.baseline.push(probe()?);
                nftables(&mut c, round)?;
            } else {
                env.ensure_detached()?;
                nftables(&mut c, round)?;
                c.baseline.push(probe()?);
                c.floor.push(daemon_round(&env.floor)?);
                c.governor.push(daemon_round(&env.governor)?);
            }
            env.ensure_detached()?;
            eprintln!(
                "xtask: {name} round {}/{}: governor {:.3} none {:.3} {unit}",
                round + 1,
                plan.rounds,
                c.governor[round],
                c.baseline[round]
            );
        }
        // One more run each of governor and the floor, untimed, with the kernel's per-program
        // accounting on.
        let accounted = |governor: &Path| -> anyhow::Result<Vec<ProgramRuns>> {
            let d = env.launch(governor, &config)?;
            let _stats_on = BpfStats::set(true)?;
            probe()?;
            Ok(record_programs(&d))
        };
        for _ in 0..plan.accounting_runs {
            c.programs.push(accounted(&env.governor)?);
            env.ensure_detached()?;
            c.floor_programs.push(accounted(&env.floor)?);
            env.ensure_detached()?;
        }
        comparisons.push(c);
        Ok(())
    };

    let small = allowlist(&["127.0.0.1", "10.214.0.2"], 10);
    compare(
        "TCP throughput, loopback",
        "Gbit/s",
        false,
        "at most 2% lower",
        &small,
        true,
        Shape::Traffic,
        Box::new(|| Ok(tcp_gbits(&iperf(env, &["-c", "127.0.0.1", "-p", "5299", "-t", &t])?))),
    )?;
    compare(
        "TCP throughput, veth to a namespace",
        "Gbit/s",
        false,
        "at most 2% lower",
        &small,
        true,
        Shape::Traffic,
        Box::new(|| Ok(tcp_gbits(&iperf(env, &["-c", "10.214.0.2", "-p", "5297", "-t", &t])?))),
    )?;
    compare(
        "UDP packet rate, 64-byte payloads, veth",
        "kpps",
        false,
        "at most 5% lower",
        &small,
        true,
        Shape::Traffic,
        Box::new(|| {
            Ok(udp_kpps(&iperf(env, &["-c", "10.214.0.2", "-p", "5297", "-u", "-b", "0", "-l", "64", "-t", &t])?))
        }),
    )?;
    for &size in &plan.sizes {
        let allow = allowlist(&["127.0.0.1", "10.214.0.2"], size);
        let n = plan.connects.to_string();
        compare(
            &format!("connect()+close latency, allowlist of {size}"),
            "µs",
            true,
            "under 1 µs added at 100,000",
            &allow,
            true,
            Shape::Connect,
            Box::new(|| {
                Ok(env.workload(&["connect-loop", "127.0.0.1:5298", &n])?["nanos_per_op"].as_f64().unwrap_or(f64::NAN)
                    / 1e3)
            }),
        )?;
    }
    // A host name: each lookup goes through the proxy, which admits the answer before the agent
    // sees it, so the connect right after it must never be refused (the run fails if one is).
    {
        let _resolver = Stopped(spawn_listening(Command::new(&env.workload).args([
            "dns-serve",
            BENCH_RESOLVER,
            BENCH_NAME,
            "127.0.9.9",
        ]))?);
        let _named = Stopped(spawn_listening(Command::new(&env.workload).args(["accept-loop", "127.0.9.9:5298"]))?);
        let n = (plan.connects / 10).max(100).to_string();
        // No nftables variant: nothing in it plays the proxy. The floor's programs do not
        // redirect DNS, so its rounds ask the resolver directly, as the baseline does: what the
        // hooks alone cost on that path, and the cold reference for the per-program figures.
        compare(
            "DNS lookup through the proxy + first connect to the answer",
            "µs",
            true,
            "the first connect after an answer is never refused",
            &small,
            false,
            Shape::Dns,
            Box::new(|| {
                let out = env.workload(&["resolve-connect", BENCH_RESOLVER, BENCH_NAME, "5298", &n])?;
                if out["eperm"].as_u64() != Some(0) {
                    bail!(
                        "lookup and connect failed: {out}\n{}",
                        std::fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default()
                    );
                }
                Ok(out["nanos_per_op"].as_f64().unwrap_or(f64::NAN) / 1e3)
            }),
        )?;
    }

    // Enforcement: from `governor pause` to the first refused connect.
    if plan.wants("pause") {
        let d = env.start(&env.config(&small, "5297, 5298, 5299", "", ""))?;
        let mut latencies = Vec::new();
        for _ in 0..plan.rounds.max(5) {
            let t0 = Instant::now();
            let out = Command::new(&env.governor).args(["pause", "bench", "--socket"]).arg(&d.socket).output()?;
            let refused = env.workload(&["connect", "127.0.0.1:5298"])?;
            let took = t0.elapsed();
            if !out.status.success() || refused["errno"] != 1 {
                bail!("pause did not refuse the next connect: {refused}");
            }
            latencies.push(took.as_secs_f64() * 1e3);
            Command::new(&env.governor).args(["resume", "bench", "--socket"]).arg(&d.socket).output()?;
        }
        singles.push((
            "time from `governor pause` to the first refused connect (CLI start to EPERM)".into(),
            format!(
                "median {:.2} ms (min {:.2}, max {:.2})",
                median(&latencies),
                latencies.iter().copied().fold(f64::INFINITY, f64::min),
                latencies.iter().copied().fold(0.0, f64::max)
            ),
            "under 10 ms".into(),
        ));
    }
    // Overshoot: an agent sending at full speed into a $0.10 ceiling at $1/MiB.
    if plan.wants("overshoot") {
        let mut worst: i128 = i128::MIN;
        let mut below = Vec::new();
        for _ in 0..3 {
            let cfg = env.config(&small, "5297, 5298, 5299", "", "budget = { limit = \"0.10\" }");
            let text = std::fs::read_to_string(&cfg)?
                .replace("protocol = \"any\"", "protocol = \"any\"\nprice = { mib_sent = \"1.00\" }");
            std::fs::write(&cfg, text)?;
            let d = env.start(&cfg)?;
            let _ = in_cgroup(&env.agent(), Command::new("iperf3").args(["-c", "127.0.0.1", "-p", "5299", "-t", "1"]));
            std::thread::sleep(Duration::from_millis(300));
            let s = d.status()?;
            let spent = s["agents"][0]["budget"]["window_spend_pico"].as_u64().unwrap_or(0) as i128;
            let limit = 100_000_000_000i128;
            worst = worst.max(spent - limit);
            below.push((limit - spent) as f64 / 1e12);
        }
        singles.push((
            "overshoot: cost counted past a $0.10 ceiling by a full-speed TCP sender".into(),
            format!(
                "{} pico-units (worst of 3); stopped ${:.4} below the ceiling (median): one 64 KiB GSO packet",
                worst.max(0),
                median(&below)
            ),
            "within one maximum-size packet per CPU".into(),
        ));
    }
    // Idle footprint, and the scale of 1,000 agents with 10,000 endpoints.
    if plan.wants("idle") {
        let d = env.start(&env.config(&small, "5297, 5298, 5299", "", ""))?;
        std::thread::sleep(Duration::from_secs(1));
        let (pid, t0, c0) = (d.pid(), Instant::now(), proc_cpu_secs(d.pid()));
        std::thread::sleep(Duration::from_secs(plan.idle_secs));
        let cpu = (proc_cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
        singles.push((
            "daemon at idle: resident memory, CPU".into(),
            format!("{} KiB, {cpu:.2}% of one core", proc_rss_kib(pid)),
            "close to nothing".into(),
        ));
    }
    if plan.wants("scale") || plan.wants("deny events") {
        let mut text = env.daemon_table();
        for e in 0..plan.agents * 10 {
            let _ = write!(
                text,
                "[[endpoint]]\nname = \"e{e}\"\naddresses = [\"10.{}.{}.{}\"]\nports = [443]\n",
                100 + (e >> 16),
                (e >> 8) & 255,
                e & 255
            );
        }
        let _ = write!(text, "[[endpoint]]\nname = \"acceptor\"\naddresses = [\"127.0.0.1\"]\nports = [5298]\n");
        for a in 0..plan.agents {
            let mut eps: Vec<String> = (0..10).map(|k| format!("\"e{}\"", a * 10 + k)).collect();
            if a == 0 {
                eps.push("\"acceptor\"".into());
            }
            let _ = write!(text, "[[agent]]\nname = \"agent{a}\"\nendpoints = [{}]\n", eps.join(", "));
        }
        let cfg = env.dir.join("scale.toml");
        std::fs::write(&cfg, text)?;
        let d = env.start(&cfg)?;
        let ready = d.started.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let (pid, c0, t0) = (d.pid(), proc_cpu_secs(d.pid()), Instant::now());
        // Allowed connections from one agent, paced at the goal's 10,000 a second, while the
        // daemon keeps every agent's books. (Flat out, softirq work that lands while the daemon
        // happens to run is charged to it, which measures the machine more than the daemon.)
        let secs = plan.idle_secs.min(5).to_string();
        let conns = in_cgroup(
            &env.root.join("agent0"),
            Command::new(&env.workload).args(["connect-rate", "127.0.0.1:5298", "10000", &secs]),
        )
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (proc_cpu_secs(pid) - c0) / secs * 100.0;
        let rate = conns.as_ref().and_then(|v| v["nanos_per_op"].as_f64()).map_or(0.0, |ns| 1e9 / ns);
        singles.push((
            format!("scale: {} agents, {} endpoints", plan.agents, plan.agents * 10),
            format!(
                "ready (answering) in {:.1} s; daemon {} KiB resident; BPF maps {} KiB; daemon CPU {cpu:.2}% of one core while an agent opens {rate:.0} allowed connections/s",
                ready.as_secs_f64(),
                proc_rss_kib(pid),
                map_memory(pid) / 1024
            ),
            "daemon CPU under 2% of one core at 10,000 connections/s".into(),
        ));
        // Denials at full rate: every one is an event for the daemon. Two agents refused at
        // once, one per CPU, for a rate past the goal's 100,000 a second; the daemon has to
        // drain the ring buffer on CPUs that are busy making events.
        let n = (plan.connects * 5).to_string();
        let before = d.status()?;
        let (c0, t0) = (proc_cpu_secs(pid), Instant::now());
        let denied: Vec<Value> = std::thread::scope(|s| {
            let loops: Vec<_> = ["agent1", "agent2"]
                .map(|agent| {
                    let (cgroup, n) = (env.root.join(agent), &n);
                    s.spawn(move || {
                        in_cgroup(&cgroup, Command::new(&env.workload).args(["connect-loop", "127.0.0.1:5298", n]))
                    })
                })
                .into_iter()
                .collect();
            loops
                .into_iter()
                .filter_map(|l| l.join().ok()?.ok())
                .filter_map(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                .collect()
        });
        let took = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let secs = t0.elapsed().as_secs_f64();
        let after = d.status()?;
        let delta = |k: &str| after["events"][k].as_u64().unwrap_or(0) - before["events"][k].as_u64().unwrap_or(0);
        let refused: u64 = denied.iter().filter_map(|v| v["eperm"].as_u64()).sum();
        let rate = refused as f64 / took;
        // What the kernel's own counters say was refused, to hold the events against.
        let kernel_denied = |s: &Value| -> u64 {
            s["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["name"] == "agent1" || a["name"] == "agent2")
                .filter_map(|a| a["totals"]["denied"].as_u64())
                .sum()
        };
        let counted = kernel_denied(&after) - kernel_denied(&before);
        singles.push((
            "deny events at full rate".into(),
            format!(
                "{refused} connects refused at {rate:.0}/s by two agents at once: {} events received, {} lost, {counted} counted by the kernel; daemon CPU {:.1}% of one core",
                delta("received"),
                delta("lost"),
                (proc_cpu_secs(pid) - c0) / secs * 100.0
            ),
            "no drops at 100,000 deny events per second".into(),
        ));
    }
    drop(netns);
    Ok((comparisons, singles))
}

struct NetnsGuard(String);

impl NetnsGuard {
    fn new(name: &str) -> anyhow::Result<Self> {
        let g = Self(name.to_owned());
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let _ = Command::new("ip").args(["link", "del", "gvbenchh"]).output();
        run(&["netns", "add", name])?;
        run(&["link", "add", "gvbenchh", "type", "veth", "peer", "name", "gvbenchp"])?;
        run(&["link", "set", "gvbenchp", "netns", name])?;
        run(&["addr", "add", "10.214.0.1/30", "dev", "gvbenchh"])?;
        run(&["link", "set", "gvbenchh", "up"])?;
        run(&["-n", name, "addr", "add", "10.214.0.2/30", "dev", "gvbenchp"])?;
        run(&["-n", name, "link", "set", "gvbenchp", "up"])?;
        run(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(g)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        let _ = Command::new("ip").args(["link", "del", "gvbenchh"]).output();
    }
}

/// One program's runs and run time as report.json records them.
fn runs_json(program: &str, runs: u64, run_time_ns: u64) -> Value {
    json!({ "program": program, "runs": runs, "run_time_ns": run_time_ns })
}

fn program_runs_json(accounting_runs: &[Vec<ProgramRuns>]) -> Vec<Vec<Value>> {
    accounting_runs.iter().map(|run| run.iter().map(|p| runs_json(&p.name, p.runs, p.time_ns)).collect()).collect()
}

/// The median over accounting runs of `name`'s ns per run, counting only runs where it ran
/// `ProgramRuns::MEANINGFUL` times or more.
fn median_ns_per_run(accounting_runs: &[Vec<ProgramRuns>], name: &str) -> Option<f64> {
    let v: Vec<f64> = accounting_runs
        .iter()
        .filter_map(|run| run.iter().find(|p| p.name == name && p.runs >= ProgramRuns::MEANINGFUL))
        .map(ProgramRuns::ns_per_run)
        .collect();
    (!v.is_empty()).then(|| median(&v))
}

fn report(
    plan: &Plan,
    quick: bool,
    comparisons: Vec<Comparison>,
    singles: Singles,
    micro: &[Micro],
    took: Duration,
) -> anyhow::Result<()> {
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let mut md = format!(
        "# governor benchmark report\n\n{date}, {} mode, {} rounds per comparison, {:.0} s in all.\nMachine: {cpus} CPUs ({model}), kernel {uname}.\n\n\
         Each comparison interleaves rounds: governor attached (A), no governor (B), where it applies nftables doing\n\
         the same job (per-cgroup counters and an allowlist set, C), and the floor (D): the same daemon with programs\n\
         that let everything through at once, which is what attaching the hooks costs by itself. Figures are medians\n\
         (min–max); the ratio is taken round by round (A/B, C/B, D/B) and its median reported.\n\n\
         | measure | governor | no governor | ratio A/B | nftables | ratio C/B | floor | ratio D/B | goal |\n|---|---|---|---|---|---|---|---|---|\n",
        if quick { "quick" } else { "full" },
        plan.rounds,
        took.as_secs_f64()
    );
    let mut json_rows = Vec::new();
    for c in &comparisons {
        let fmt = |v: &[f64]| {
            if v.is_empty() {
                "–".to_owned()
            } else {
                let s = stats(v);
                format!(
                    "{:.3} ({:.3}–{:.3}) {}",
                    s["median"].as_f64().unwrap_or(0.0),
                    s["min"].as_f64().unwrap_or(0.0),
                    s["max"].as_f64().unwrap_or(0.0),
                    c.unit
                )
            }
        };
        let r = ratios(&c.governor, &c.baseline);
        let rn = ratios(&c.nftables, &c.baseline);
        let rf = ratios(&c.floor, &c.baseline);
        let ratio = |v: &[f64]| if v.is_empty() { "–".into() } else { format!("{:.3}", median(v)) };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.name,
            fmt(&c.governor),
            fmt(&c.baseline),
            ratio(&r),
            fmt(&c.nftables),
            ratio(&rn),
            fmt(&c.floor),
            ratio(&rf),
            c.goal
        );
        json_rows.push(json!({
            "measure": c.name, "unit": c.unit, "lower_is_better": c.lower_is_better, "goal": c.goal,
            "governor": stats(&c.governor), "baseline": stats(&c.baseline), "nftables": stats(&c.nftables),
            "floor": stats(&c.floor),
            "ratio_governor_to_baseline": stats(&r), "ratio_nftables_to_baseline": stats(&rn), "ratio_floor_to_baseline": stats(&rf),
            "programs": program_runs_json(&c.programs), "floor_programs": program_runs_json(&c.floor_programs),
        }));
    }
    let _ = writeln!(md, "\n| measure | result | goal |\n|---|---|---|");
    for (m, r, g) in &singles {
        let _ = writeln!(md, "| {m} | {r} | {g} |");
    }
    // Each program's cost over all accounting runs, weighted by runs: the workloads that run it
    // most decide its figure.
    let mut totals: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for p in comparisons.iter().flat_map(|c| c.programs.iter().flatten()) {
        let t = totals.entry(&p.name).or_default();
        t.0 += p.runs;
        t.1 += p.time_ns;
    }
    let _ = writeln!(
        md,
        "\nPer-program cost from the kernel's own accounting (`kernel.bpf_stats_enabled`, run time / runs), taken in\n{} more run(s) each of governor and the floor per comparison, untimed (the timed rounds run with the\naccounting off, as production hosts do); by workload, the median over those runs. In brackets, the same\nprogram of the floor in the same workload: it only returns \"allow\", so that is what running any program\nthere costs (the accounting's own clock reads included). For scale: a minimal one-lookup cgroup_skb\nprogram measured 67 ns per packet on this kind of machine; the goal is every per-packet program under\n150 ns.\n\n| program | ns per run, all workloads | runs | by workload (floor) |\n|---|---|---|---|",
        plan.accounting_runs
    );
    for (name, (runs, time)) in &totals {
        let by: Vec<String> = comparisons
            .iter()
            .filter_map(|c| {
                let governed = median_ns_per_run(&c.programs, name)?;
                Some(match median_ns_per_run(&c.floor_programs, name) {
                    Some(floor) => format!("{}: {governed:.0} ({floor:.0})", c.name),
                    None => format!("{}: {governed:.0}", c.name),
                })
            })
            .collect();
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {runs} | {} |",
            *time as f64 / (*runs).max(1) as f64,
            if by.is_empty() { "–".to_owned() } else { by.join("; ") }
        );
    }
    let _ = writeln!(
        md,
        "\nUser-space hot paths (criterion, `governor-userspace/benches/hot_paths.rs`): median time per iteration\nwith its 95% confidence interval.\n\n| path | median | interval |\n|---|---|---|"
    );
    let time = |ns: f64| {
        if ns >= 1e6 {
            format!("{:.2} ms", ns / 1e6)
        } else if ns >= 1e3 {
            format!("{:.2} µs", ns / 1e3)
        } else {
            format!("{ns:.0} ns")
        }
    };
    for m in micro {
        let _ = writeln!(md, "| {} | {} | {}–{} |", m.name, time(m.median_ns), time(m.low_ns), time(m.high_ns));
    }
    if let Some(only) = &plan.only {
        print!("{md}");
        eprintln!("xtask: measures matching {only:?} only: bench/REPORT.md left as it was");
        return Ok(());
    }
    let dir = workspace_root().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("REPORT.md"), &md)?;
    let programs_json: Vec<Value> = totals.iter().map(|(n, (runs, time))| runs_json(n, *runs, *time)).collect();
    let singles_json: Vec<Value> =
        singles.iter().map(|(m, r, g)| json!({ "measure": m, "result": r, "goal": g })).collect();
    let micro_json: Vec<Value> = micro
        .iter()
        .map(|m| json!({ "path": m.name, "median_ns": m.median_ns, "low_ns": m.low_ns, "high_ns": m.high_ns }))
        .collect();
    let report = json!({ "date": date, "mode": if quick { "quick" } else { "full" }, "kernel": uname, "cpus": cpus, "cpu_model": model,
        "comparisons": json_rows, "results": singles_json, "programs": programs_json, "microbenchmarks": micro_json });
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    print!("{md}");
    eprintln!("xtask: wrote bench/REPORT.md and bench/report.json");
    Ok(())
}
