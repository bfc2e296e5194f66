//! The probe of `governor check --live`: a private daemon (this same binary) on a temporary
//! agents root, with one enforced probe agent and a tiny budget, proves on this kernel that a
//! forbidden connect gets EPERM, an allowed one is counted, the budget suspends the probe, a
//! pause refuses a connect, the denial shows in a live query, and the metrics answer. Everything
//! it makes (cgroups, pins, files, processes) is removed before it returns.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use super::{Control, Item, Verdict};
use crate::{control::Client, status::Status};

fn item(control: Control, ok: bool, check: &str, reason: impl Into<String>) -> Item {
    let verdict = if ok { Verdict::Pass } else { Verdict::Fail };
    Item { control, verdict, check: format!("{check} (probe)"), reason: reason.into(), key: None }
}

/// What the probe makes, removed on drop whatever happened.
struct Probe {
    dir: PathBuf,
    root: PathBuf,
    pins: Option<PathBuf>,
    daemon: Option<Child>,
    stop: Arc<AtomicBool>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = d.wait();
        }
        self.stop.store(true, Ordering::SeqCst);
        for dir in [self.root.join("probe"), self.root.clone()] {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..100 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(p) = &self.pins {
            let _ = std::fs::remove_dir_all(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `binary probe-connect addr` inside `cgroup`: 0 connected, 2 refused (EPERM), else 1.
fn connect(binary: &Path, cgroup: &Path, addr: &str) -> i32 {
    let mut cmd = Command::new(binary);
    cmd.args(["probe-connect", addr]).stdout(Stdio::null()).stderr(Stdio::null());
    let Ok(_procs) = crate::cgroup::enter_before_exec(cgroup, &mut cmd) else { return -1 };
    cmd.status().ok().and_then(|s| s.code()).unwrap_or(-1)
}

/// A loopback listener that accepts and closes until told to stop.
fn listener(stop: Arc<AtomicBool>) -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    l.set_nonblocking(true)?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(port)
}

/// The name the probe's own resolver answers (`.invalid` never exists in real DNS).
const PROBE_NAME: &str = "probe.governor-check.invalid";

/// A one-name resolver on `ip`:53: `PROBE_NAME` A 127.0.0.1, anything else an empty answer.
fn resolver(ip: Ipv4Addr, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    use hickory_proto::{
        op::{Message, OpCode},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };
    let sock = UdpSocket::bind((ip, 53))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            for question in q.queries {
                let name = question.name().to_ascii();
                if question.query_type() == RecordType::A
                    && name.trim_end_matches('.') == PROBE_NAME
                    && let Ok(owner) = Name::from_ascii(&name)
                {
                    r.answers.push(Record::from_rdata(owner, 5, RData::A(A(Ipv4Addr::LOCALHOST))));
                }
                r.add_query(question);
            }
            if let Ok(bytes) = r.to_vec() {
                let _ = sock.send_to(&bytes, peer);
            }
        }
    });
    Ok(())
}

/// Asks `resolver`:53 for `name`'s A records over a connected UDP socket, as a stub resolver
/// does; the addresses of the answer (through CNAMEs). EPERM if the kernel refuses the query.
pub fn resolve_a(name: &str, resolver: IpAddr) -> std::io::Result<Vec<IpAddr>> {
    let sock = UdpSocket::bind(if resolver.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    sock.connect((resolver, governor_common::DNS_PORT))?;
    let query = crate::dns::message::query_for(name, hickory_proto::rr::RecordType::A);
    sock.send(&query)?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf)?;
    let q = crate::dns::message::question(&query).map_err(std::io::Error::other)?;
    let a = crate::dns::message::answer(&buf[..n], &q).map_err(std::io::Error::other)?;
    Ok(a.addresses(&q.name).into_iter().map(|(ip, _)| ip).collect())
}

/// `governor probe-resolve NAME RESOLVER`: `resolve_a`, printing the addresses. Exit 0 with at
/// least one address, 2 refused with EPERM, 1 anything else.
pub fn resolve_command(name: &str, resolver: IpAddr) -> i32 {
    match resolve_a(name, resolver) {
        Ok(addrs) if !addrs.is_empty() => {
            for a in addrs {
                println!("{a}");
            }
            0
        }
        Ok(_) => {
            eprintln!("governor probe-resolve {name}: no addresses");
            1
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => 2,
        Err(e) => {
            eprintln!("governor probe-resolve {name}: {e}");
            1
        }
    }
}

/// Runs `binary probe-resolve` inside `cgroup`; true if it printed `expect`.
fn resolve(binary: &Path, cgroup: &Path, resolver: Ipv4Addr, expect: &str) -> (i32, bool) {
    let mut cmd = Command::new(binary);
    cmd.args(["probe-resolve", PROBE_NAME, &resolver.to_string()]).stdout(Stdio::piped()).stderr(Stdio::null());
    let Ok(_procs) = crate::cgroup::enter_before_exec(cgroup, &mut cmd) else { return (-1, false) };
    match cmd.output() {
        Ok(out) => (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).lines().any(|l| l == expect)),
        Err(_) => (-1, false),
    }
}

/// What an earlier probe left when its `check` was killed (SIGKILL skips the clean-up; its
/// daemon stopped with it through PR_SET_PDEATHSIG): only names whose pid is gone.
fn remove_stale(mount: &Path) {
    let Ok(entries) = std::fs::read_dir(mount) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("governor-check-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(cgroup = %e.path().display(), "removing what an interrupted probe left");
        drop(Probe {
            dir: std::env::temp_dir().join(&name),
            root: e.path(),
            pins: crate::kernel::pins::bpffs().ok().map(|b| crate::kernel::pins::pin_dir(&b, &e.path())),
            daemon: None,
            stop: Arc::new(AtomicBool::new(true)),
        });
    }
}

pub fn run() -> Vec<Item> {
    match run_probe() {
        Ok(items) => items,
        Err(e) => vec![item(
            Control::Boundaries,
            false,
            "the controls work on this host",
            format!("the probe could not run: {e:#}"),
        )],
    }
}

fn run_probe() -> anyhow::Result<Vec<Item>> {
    let binary = std::env::current_exe()?;
    let mount = crate::cgroup::Cgroup2Mount::discover()?;
    let rel = format!("governor-check-{}", std::process::id());
    remove_stale(&mount.mount_point);
    let stop = Arc::new(AtomicBool::new(false));
    let mut probe = Probe {
        dir: std::env::temp_dir().join(&rel),
        root: mount.mount_point.join(&rel),
        pins: None,
        daemon: None,
        stop: stop.clone(),
    };
    std::fs::create_dir_all(&probe.dir)?;
    let allowed = listener(stop.clone())?;
    let forbidden = listener(stop.clone())?;
    let named = listener(stop.clone())?;
    // A resolver address of this probe's own (outside 127.64.0.0/10, where the proxy lives).
    let pid = std::process::id();
    let resolver_ip = Ipv4Addr::new(127, 54, (pid >> 8) as u8, pid as u8);
    resolver(resolver_ip, stop)?;
    let d = probe.dir.display().to_string();
    let config = probe.dir.join("probe.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nagents_root = {rel:?}\nsocket = \"{d}/probe.sock\"\nmetrics = \"127.0.0.1:0\"\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/audit.jsonl\"\n\
             unlisted_agents = \"ignore\"\non_daemon_exit = \"detach\"\n\
             [[endpoint]]\nname = \"probe-api\"\naddresses = [\"127.0.0.1\"]\nports = [{allowed}]\nprice = {{ connection = \"1\" }}\n\
             [[endpoint]]\nname = \"probe-named\"\nhosts = [\"*.governor-check.invalid\"]\nports = [{named}]\n\
             [[agent]]\nname = \"probe\"\nendpoints = [\"probe-api\", \"probe-named\"]\nbudget = {{ limit = \"2\" }}\n\
             [dns]\nresolvers = [\"{resolver_ip}\"]\nupstream_timeout = \"2s\"\n"
        ),
    )?;
    let log = std::fs::File::create(probe.dir.join("probe.log"))?;
    let mut daemon = Command::new(&binary);
    daemon.args(["run", "--config"]).arg(&config).stdout(Stdio::null()).stderr(log);
    // If `check` itself is killed, the probe daemon stops too (and detaches its programs)
    // instead of outliving it. SAFETY: only prctl(2) between fork and exec.
    unsafe {
        daemon.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    probe.daemon = Some(daemon.spawn()?);
    probe.pins = crate::kernel::pins::bpffs().ok().map(|b| crate::kernel::pins::pin_dir(&b, &probe.root));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = Client::new(&probe.dir.join("probe.sock"));
    let started = Instant::now();
    let status = loop {
        if let Ok(s) = rt.block_on(client.get_json::<Status>("/v1/status")) {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            anyhow::bail!(
                "the probe daemon did not start: {}",
                std::fs::read_to_string(probe.dir.join("probe.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let agent = probe.root.join("probe");
    let (ok_addr, no_addr) = (format!("127.0.0.1:{allowed}"), format!("127.0.0.1:{forbidden}"));
    let mut out = Vec::new();

    let code = connect(&binary, &agent, &no_addr);
    out.push(item(
        Control::Boundaries,
        code == 2,
        "a forbidden connect gets EPERM",
        format!("probe-connect exited {code}"),
    ));
    let code = connect(&binary, &agent, &ok_addr);
    let counted = rt
        .block_on(client.get_json::<Status>("/v1/status"))
        .ok()
        .and_then(|s| s.agents.into_iter().find(|a| a.name == "probe"))
        .is_some_and(|a| a.totals.allowed >= 1);
    out.push(item(
        Control::Boundaries,
        code == 0 && counted,
        "an allowed connect is counted",
        format!("probe-connect exited {code}, counted: {counted}"),
    ));

    // The name's address is refused until the agent resolves the name, and usable right after
    // (a wildcard pattern: the daemon cannot resolve it ahead of the agent).
    let named_addr = format!("127.0.0.1:{named}");
    let before = connect(&binary, &agent, &named_addr);
    let (code, answered) = resolve(&binary, &agent, resolver_ip, "127.0.0.1");
    let after = connect(&binary, &agent, &named_addr);
    out.push(item(
        Control::Boundaries,
        before == 2 && code == 0 && answered && after == 0,
        "DNS for an allowed name resolves end to end through the proxy",
        format!(
            "connect before lookup exited {before}, lookup of {PROBE_NAME} via {resolver_ip} exited {code} (answer {}), connect after exited {after}",
            if answered { "127.0.0.1" } else { "missing" }
        ),
    ));

    // Pause first: a budget-suspended agent resumes only with a larger budget.
    let paused =
        rt.block_on(client.post_json("/v1/agents/probe/pause", &json!({ "reason": "governor check --live" }))).is_ok();
    let code = connect(&binary, &agent, &ok_addr);
    let resumed = rt.block_on(client.post_json("/v1/agents/probe/resume", &json!({}))).is_ok();
    out.push(item(
        Control::Oversight,
        paused && code == 2 && resumed,
        "pause refuses a connect",
        format!("pause {paused}, connect exited {code}, resume {resumed}"),
    ));

    // $1 a connection against $2: the second fits, the third is refused and suspends.
    let second = connect(&binary, &agent, &ok_addr);
    let third = connect(&binary, &agent, &ok_addr);
    let suspended = wait_for(&rt, &client, |s| s.agents.iter().any(|a| a.name == "probe" && a.state == "suspended"));
    out.push(item(
        Control::Spend,
        second == 0 && third == 2 && suspended,
        "a tiny budget suspends its probe",
        format!("2nd {second}, 3rd {third}, suspended: {suspended}"),
    ));

    let mut denials = 0;
    let seen = Instant::now();
    while denials == 0 && seen.elapsed() < Duration::from_secs(3) {
        let _ = rt.block_on(client.get_lines("/v1/events?agent=probe&kind=denied", |_| denials += 1));
        std::thread::sleep(Duration::from_millis(100));
    }
    out.push(item(
        Control::Auditability,
        denials > 0,
        "the denial appears in a live query",
        format!("{denials} denied records"),
    ));

    let metrics = super::live::metrics(&status.metrics_address);
    out.push(Item { check: format!("{} (probe)", metrics.check), ..metrics });
    Ok(out)
}

fn wait_for(rt: &tokio::runtime::Runtime, client: &Client, f: impl Fn(&Status) -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if rt.block_on(client.get_json::<Status>("/v1/status")).is_ok_and(|s| f(&s)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
