//! Harness for governor's kernel integration tests: the real `governor` binary, loaded into the
//! real kernel, governing real processes in real cgroups, with traffic only on loopback.
//!
//! Everything a test creates is owned by a guard that removes it on drop, panicking or not:
//! `AgentsRoot` (the cgroups, and any process the test started in them), `Daemon` (the daemon
//! process, its socket and config), `Server` (loopback listeners and their threads).

pub mod dns;

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use governor::cgroup::Cgroup2Mount;
use serde_json::Value;

/// Whether this test can touch the kernel. Without root, cgroup2 or BTF it prints why and
/// returns false, unless GOVERNOR_REQUIRE_PRIVILEGED=1, where a skip is a failure.
pub fn privileged(test: &str) -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("not running as root")
    } else if Cgroup2Mount::discover().is_err() {
        Some("no cgroup2 mount")
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel has no BTF (/sys/kernel/btf/vmlinux)")
    } else {
        None
    };
    let Some(why) = missing else { return true };
    if std::env::var_os("GOVERNOR_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{test}: cannot run the kernel test ({why}) and GOVERNOR_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("skipping {test}: {why} (run `sudo -E cargo xtask test`)");
    false
}

/// A sibling binary of the test executable (`target/<profile>/NAME`).
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps");
    dir.join(name)
}

/// The `governor` binary under test: GOVERNOR_BIN (set by `cargo xtask test`) or the sibling.
pub fn governor_bin() -> PathBuf {
    let path = std::env::var_os("GOVERNOR_BIN").map(PathBuf::from).unwrap_or_else(|| sibling_binary("governor"));
    assert!(
        path.is_file(),
        "{} not found: run the kernel tests with `cargo xtask test`, which builds it with its eBPF programs",
        path.display()
    );
    path
}

pub fn workload_bin() -> PathBuf {
    let path = sibling_binary("governor-workload");
    assert!(path.is_file(), "{} not found; cargo builds it before the integration tests", path.display());
    path
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A private agents root below the cgroup2 mount, removed with everything in it on drop.
pub struct AgentsRoot {
    /// Relative to the cgroup2 mount, as `daemon.agents_root` wants it.
    pub relative: String,
    pub path: PathBuf,
}

impl AgentsRoot {
    pub fn new() -> Self {
        let mount = Cgroup2Mount::discover().expect("cgroup2 mount");
        let relative = unique("governor-test");
        let path = mount.mount_point.join(&relative);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { relative, path }
    }

    /// Creates (if needed) and returns the cgroup at `sub` below the root, e.g. "a1/worker".
    pub fn cgroup(&self, sub: &str) -> PathBuf {
        let p = self.path.join(sub);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        p
    }
}

impl Default for AgentsRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `dir/governor.toml`: a `[daemon]` table over `root` with its socket
/// (`governor.sock`), state and audit log in `dir` and a free metrics port, then `body`. The
/// config `Daemon::start_in` runs; tests that expect `governor run` to refuse use it directly.
pub fn write_config(dir: &Path, root: &AgentsRoot, body: &str) -> PathBuf {
    let config = dir.join("governor.toml");
    let text = format!(
        "[daemon]\nagents_root = {:?}\nsocket = {:?}\nmetrics = \"127.0.0.1:0\"\nstate_dir = {:?}\naudit_log = {:?}\n{body}",
        root.relative,
        dir.join("governor.sock").display().to_string(),
        dir.join("state").display().to_string(),
        dir.join("audit.jsonl").display().to_string(),
    );
    std::fs::write(&config, text).expect("write config");
    config
}

impl AgentsRoot {
    /// Where the daemon serving this root pins its maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        let bpffs = governor::kernel::pins::bpffs().expect("bpffs");
        governor::kernel::pins::pin_dir(&bpffs, &self.path)
    }
}

impl Drop for AgentsRoot {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
        let pins = self.pin_dir();
        if pins.exists()
            && let Err(e) = std::fs::remove_dir_all(&pins)
        {
            eprintln!("warning: could not remove pinned maps {}: {e}", pins.display());
        }
    }
}

/// Kills what is left in our cgroups (only processes this test started: the cgroups are its
/// own), then removes them deepest first.
fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("warning: could not remove test cgroup {}: {e}", path.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn enter_before_exec(cgroup: &Path, cmd: &mut Command) -> std::fs::File {
    governor::cgroup::enter_before_exec(cgroup, cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` in `cgroup` (placed before exec) and returns its output.
pub fn run_in(cgroup: &Path, mut cmd: Command) -> Output {
    let _procs = enter_before_exec(cgroup, &mut cmd);
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Starts `cmd` in `cgroup` (placed before exec) without waiting for it.
pub fn spawn_in(cgroup: &Path, mut cmd: Command) -> Child {
    let _procs = enter_before_exec(cgroup, &mut cmd);
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// Makes `cmd` run as `uid`/`gid` with only `gid` as its group (the test runs as root).
pub fn as_user(cmd: &mut Command, uid: u32, gid: u32) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let groups = [gid];
            if libc::setgroups(1, groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The outcome of one `governor-workload` run.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub json: Value,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    pub fn eperm(&self) -> bool {
        self.code == 2 && self.json["errno"] == libc::EPERM
    }
}

/// Runs the workload binary with `args`, in `cgroup` if given.
pub fn workload(cgroup: Option<&Path>, args: &[&str]) -> Outcome {
    workload_with(cgroup, args, &[])
}

/// `workload` with extra environment, e.g. `GOVERNOR_WORKLOAD_TIMEOUT_MS`.
pub fn workload_with(cgroup: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(workload_bin());
    cmd.args(args).envs(env.iter().copied());
    let out = match cgroup {
        Some(cg) => run_in(cg, cmd),
        None => cmd.output().expect("run workload"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("workload {args:?} printed {stdout:?} (stderr {:?}): {e}", String::from_utf8_lossy(&out.stderr))
    });
    Outcome { code: out.status.code().unwrap_or(-1), json }
}

/// A running `governor run` with a config of the test's making, stopped with SIGTERM on drop.
pub struct Daemon {
    child: Option<Child>,
    dir: Arc<tempfile::TempDir>,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    /// Starts the daemon over `root` with `body` appended to a `[daemon]` table that points at a
    /// private socket and a free metrics port. Waits until the socket answers.
    pub fn start(root: &AgentsRoot, body: &str) -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().expect("tempdir")), root, body)
    }

    /// Like `start`, in the directory `dir` (socket, state, audit log): a restarted daemon
    /// passes the first one's `dir()` to find its state again.
    pub fn start_in(dir: Arc<tempfile::TempDir>, root: &AgentsRoot, body: &str) -> Self {
        let socket = dir.path().join("governor.sock");
        let config = write_config(dir.path(), root, body);
        let log = OpenOptions::new().create(true).append(true).open(dir.path().join("daemon.log")).expect("log file");
        let child = Command::new(governor_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start governor");
        let mut d = Self { child: Some(child), dir, socket, config };
        d.wait_ready();
        d
    }

    /// The directory holding the socket, config, state and audit log.
    pub fn dir(&self) -> Arc<tempfile::TempDir> {
        self.dir.clone()
    }

    pub fn audit_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the daemon with SIGKILL (a crash): nothing of its own shutdown runs.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon already stopped");
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("governor exited during start-up ({status}):\n{}", self.log());
            }
            if http_get_unix(&self.socket, "/v1/health").is_some_and(|b| b.trim() == "ok") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("governor did not answer on {} within 20 s:\n{}", self.socket.display(), self.log());
    }

    /// `governor status --json`, through the real CLI.
    pub fn status(&self) -> Value {
        let out = Command::new(governor_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("run governor status");
        assert!(
            out.status.success(),
            "governor status failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Runs `governor ARGS --socket <this daemon's>` and returns its output, whatever the exit.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        Command::new(governor_bin()).args(args).arg("--socket").arg(&self.socket).output().expect("run governor")
    }

    /// Runs `governor ARGS --socket <this daemon's>` and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out =
            Command::new(governor_bin()).args(args).arg("--socket").arg(&self.socket).output().expect("run governor");
        assert!(out.status.success(), "governor {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `GET /metrics` through curl.
    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}/metrics", self.metrics_address()))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl metrics: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `governor status` (the table), through the real CLI.
    pub fn status_table(&self) -> String {
        let out = Command::new(governor_bin())
            .args(["status", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("run governor status");
        assert!(out.status.success(), "governor status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// The agent `name` from a fresh status.
    pub fn agent(&self, name: &str) -> Value {
        let status = self.status();
        status["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
            .unwrap_or_else(|| panic!("agent {name} not in status: {status:#}"))
    }

    /// Counters of `agent` for `endpoint` ("(unlisted)" for the rest), zero if never seen.
    pub fn counters(&self, agent: &str, endpoint: &str) -> Counters {
        let a = self.agent(agent);
        let e = a["endpoints"].as_array().and_then(|v| v.iter().find(|x| x["endpoint"] == endpoint).cloned());
        e.map_or_else(Counters::default, |e| Counters::from_json(&e))
    }

    /// The agent's budget status (`None` for the host: use `host_budget`).
    pub fn budget(&self, agent: &str) -> Value {
        self.agent(agent)["budget"].clone()
    }

    /// Polls `f` on fresh status until it holds, for up to `secs` seconds.
    pub fn wait_until(&self, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: not within {secs} s; status: {s:#}\nlog:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics_address(&self) -> String {
        self.status()["metrics_address"].as_str().expect("metrics_address").to_owned()
    }

    /// Sends SIGTERM and waits for a clean exit; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().expect("wait governor") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let s = child.wait().expect("wait governor");
                panic!("governor ignored SIGTERM for 10 s; killed ({s}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            if std::thread::panicking() {
                eprintln!("--- governor log ({status}) ---\n{}", self.log());
            }
        }
    }
}

/// The counters of one (agent, endpoint) in status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
}

impl Counters {
    pub fn from_json(v: &Value) -> Self {
        let f = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("counter {k} missing in {v}"));
        Self {
            tx_bytes: f("tx_bytes"),
            tx_packets: f("tx_packets"),
            rx_bytes: f("rx_bytes"),
            rx_packets: f("rx_packets"),
            allowed: f("allowed"),
            denied: f("denied"),
            would_deny: f("would_deny"),
        }
    }
}

/// Payload bytes this TCP socket has put on the wire, retransmissions included
/// (`tcpi_bytes_sent`), and how many of those were retransmissions (`tcpi_bytes_retrans`).
pub fn tcp_wire_bytes(s: &TcpStream) -> (u64, u64) {
    // SAFETY: tcp_info is plain integers; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc =
        unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    (info.tcpi_bytes_sent, info.tcpi_bytes_retrans)
}

/// A minimal HTTP/1.1 GET over a Unix socket; None if nothing answers.
pub fn http_get_unix(socket: &Path, path: &str) -> Option<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// What a loopback test server does with each connection.
#[derive(Clone, Copy)]
pub enum Serve {
    /// Read until the client half-closes, then close.
    Sink,
    /// Write this many bytes, then close.
    Source(u64),
    /// Answer one HTTP request with a body of this many bytes.
    Http(u64),
}

/// A dual-stack listener on `[::]:port` (so 127.0.0.1, ::1 and ::ffff:127.0.0.1 all reach it),
/// served on a thread until dropped. It runs in the test's own cgroup, outside every agent.
pub struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    received: Arc<AtomicU64>,
    wire_sent: Arc<AtomicU64>,
}

impl Server {
    pub fn start(serve: Serve) -> Self {
        let listener = TcpListener::bind("[::]:0").expect("bind [::]:0 (dual-stack)");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let wire_sent = Arc::new(AtomicU64::new(0));
        let (stop2, received2, wire_sent2) = (stop.clone(), received.clone(), wire_sent.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (received, wire_sent) = (received2.clone(), wire_sent2.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = handle(&mut conn, serve, &received);
                    wire_sent.fetch_add(tcp_wire_bytes(&conn).0, Ordering::SeqCst);
                });
            }
        });
        Self { port, stop, thread: Some(thread), received, wire_sent }
    }

    /// Payload bytes the server has read from clients.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Payload bytes the server has put on the wire, retransmissions included, over the
    /// connections that have finished.
    pub fn wire_sent(&self) -> u64 {
        self.wire_sent.load(Ordering::SeqCst)
    }

    pub fn addr(&self, ip: &str) -> String {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        SocketAddr::new(ip, self.port).to_string()
    }
}

fn handle(conn: &mut TcpStream, serve: Serve, received: &AtomicU64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    match serve {
        Serve::Sink => loop {
            match conn.read(&mut buf)? {
                0 => break,
                k => {
                    received.fetch_add(k as u64, Ordering::SeqCst);
                }
            }
        },
        Serve::Source(n) => {
            write_n(conn, n)?;
            conn.shutdown(Shutdown::Write)?;
            wait_all_acked(conn);
        }
        Serve::Http(n) => {
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf)? {
                    0 => return Ok(()),
                    k => req.extend_from_slice(&buf[..k]),
                }
            }
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            write_n(conn, n)?;
        }
    }
    conn.shutdown(Shutdown::Both)
}

/// Waits (up to 10 s) until the peer has acknowledged everything written, so tcp_info's byte
/// counts are final.
fn wait_all_acked(conn: &TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int: bytes not yet acknowledged (sent or not).
        let rc = unsafe { libc::ioctl(conn.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued == 0 || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `n` bytes to `conn` in 64 KiB chunks.
pub fn write_n(conn: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        conn.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread sees the flag and ends.
        let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free UDP port on loopback with nobody listening (datagrams to it are simply dropped).
pub fn closed_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp").local_addr().expect("addr").port()
}

/// A network namespace of the test's own with a veth pair to the host: the host end `host_if`
/// (`10.213.N.1/30`) stays here, the peer (`10.213.N.2/30`) is inside. Deleted on drop, which
/// deletes both ends.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub host_addr: String,
    pub peer_addr: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = (std::process::id() as u64 * 7 + N.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
        let name = unique("governor-test-ns");
        let (host_if, peer_if) = (format!("gvt{n}h"), format!("gvt{n}p"));
        let _ = Command::new("ip").args(["link", "del", &host_if]).output(); // a leftover of a crashed run
        let ns = Self { name, host_if, host_addr: format!("10.213.{n}.1"), peer_addr: format!("10.213.{n}.2") };
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &peer_if]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.host_addr), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &format!("{}/30", ns.peer_addr), "dev", &peer_if]);
        ip(&["-n", &ns.name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Starts `governor-workload ARGS` inside the namespace; returns the child once it printed
    /// its first line (a sink prints "listening").
    pub fn spawn_workload(&self, args: &[&str]) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
        use std::io::BufRead as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(workload_bin())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start workload in netns");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("read workload");
        assert_eq!(first.trim(), "listening", "workload in netns: {first:?}");
        (child, out)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

/// Fills the pinned IPv4 allowlist with entries of an agent id no agent has, until the kernel
/// has no room. Returns them, to remove again.
pub fn fill_allowlist(root: &AgentsRoot) -> Vec<aya::maps::lpm_trie::Key<governor_common::AllowKeyV4>> {
    use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
    use governor_common::{ALLOW_KEY_FIXED_BITS, AllowKeyV4, Rule};
    let data = MapData::from_pin(root.pin_dir().join("maps").join(governor_common::maps::ALLOW_V4)).unwrap();
    let mut trie: LpmTrie<MapData, AllowKeyV4, Rule> = LpmTrie::try_from(Map::LpmTrie(data)).unwrap();
    let mut junk = Vec::new();
    for i in 0u32.. {
        let key = Key::new(ALLOW_KEY_FIXED_BITS + 32, AllowKeyV4::new(0x0bad_0001, 6, 1, i.to_be_bytes()));
        if trie.insert(&key, Rule::default(), 0).is_err() {
            break;
        }
        junk.push(key);
    }
    junk
}

pub fn clear_allowlist(root: &AgentsRoot, junk: &[aya::maps::lpm_trie::Key<governor_common::AllowKeyV4>]) {
    use aya::maps::{LpmTrie, Map, MapData};
    let data = MapData::from_pin(root.pin_dir().join("maps").join(governor_common::maps::ALLOW_V4)).unwrap();
    let mut trie: LpmTrie<MapData, governor_common::AllowKeyV4, governor_common::Rule> =
        LpmTrie::try_from(Map::LpmTrie(data)).unwrap();
    for k in junk {
        let _ = trie.remove(k);
    }
}
