//! `governor check --live`: the controls proven on this host against the running daemon, read
//! back from the kernel rather than taken from the daemon's word.

use std::{io::Read as _, io::Write as _, os::fd::AsFd as _, path::Path};

use super::{Control, Item, Verdict};
use crate::{config::LoadedConfig, config::Mode, control::Client, status::Status};

/// Attach types (the kernel's `enum bpf_attach_type`) of each program governor puts on the
/// agents root.
const HOOKS: [(&str, u32); 15] = [
    ("governor_skb_ingress", 0),
    ("governor_skb_egress", 1),
    ("governor_sock_create", 2),
    ("governor_connect4", 10),
    ("governor_connect6", 11),
    ("governor_sendmsg4", 14),
    ("governor_sendmsg6", 15),
    ("governor_recvmsg4", 19),
    ("governor_recvmsg6", 20),
    ("governor_getpeername4", 29),
    ("governor_getpeername6", 30),
    ("governor_sock_release", 34),
    ("governor_setsockopt", 22),
    ("governor_bind4", 8),
    ("governor_bind6", 9),
];

/// Capabilities an agent must not hold: with any, it could leave its boundaries.
const DANGEROUS: [(u32, &str); 4] =
    [(12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW"), (21, "CAP_SYS_ADMIN"), (39, "CAP_BPF")];

fn item(control: Control, verdict: Verdict, check: impl Into<String>, reason: impl Into<String>) -> Item {
    Item { control, verdict, check: check.into(), reason: reason.into(), key: None }
}

pub fn check(loaded: &LoadedConfig) -> Vec<Item> {
    let mut out = Vec::new();
    let socket = loaded.config.daemon.socket.get_ref();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return vec![item(Control::Auditability, Verdict::Fail, "the live check can run", e.to_string())],
    };
    let client = Client::new(socket);
    let status: Status = match rt.block_on(client.get_json("/v1/status")) {
        Ok(s) => s,
        Err(e) => {
            out.push(item(Control::Auditability, Verdict::Fail, "the daemon answers on its socket", e.to_string()));
            return out;
        }
    };
    out.push(item(
        Control::Auditability,
        Verdict::Pass,
        "the daemon answers on its socket",
        socket.display().to_string(),
    ));
    match rt.block_on(client.get_lines("/v1/events?since=1h", |_| {})) {
        Ok(()) => out.push(item(
            Control::Auditability,
            Verdict::Pass,
            "the audit log is queryable through the socket",
            "events answered",
        )),
        Err(e) => out.push(item(
            Control::Auditability,
            Verdict::Fail,
            "the audit log is queryable through the socket",
            e.to_string(),
        )),
    }
    out.push(metrics(&status.metrics_address));

    for a in &status.agents {
        let configured = loaded.config.agents.iter().find(|c| c.name.get_ref() == &a.name);
        if configured.is_some_and(|c| c.mode == Mode::Enforce) {
            let verdict = if a.state == "absent" || a.state == "observing" { Verdict::Fail } else { Verdict::Pass };
            out.push(item(
                Control::Boundaries,
                verdict,
                format!("{} is enforcing", a.name),
                format!("state {}", a.state),
            ));
        }
        if a.cgroup_id.is_some() {
            out.push(attached(&a.name, Path::new(&a.cgroup), &status));
        }
    }
    out.extend(privileged_agents(Path::new(&status.agents_root)));
    out
}

/// Whether every hook on the agent's cgroup runs governor's program, as the kernel says.
fn attached(agent: &str, cgroup: &Path, status: &Status) -> Item {
    let check = format!("{agent} has governor's programs attached");
    let Ok(dir) = std::fs::File::open(cgroup) else {
        return item(Control::Boundaries, Verdict::Fail, check, format!("cannot open {}", cgroup.display()));
    };
    let mut missing = Vec::new();
    for (name, attach_type) in HOOKS {
        let Some(id) = status.programs.iter().find(|p| p.name == name).map(|p| p.id) else {
            missing.push(format!("{name} (not loaded)"));
            continue;
        };
        match crate::kernel::link::effective_programs(dir.as_fd(), attach_type) {
            Ok(ids) if ids.contains(&id) => {}
            Ok(_) => missing.push(name.to_owned()),
            Err(e) => missing.push(format!("{name} ({e})")),
        }
    }
    if missing.is_empty() {
        item(
            Control::Boundaries,
            Verdict::Pass,
            check,
            format!("{} hooks in effect on {}", HOOKS.len(), cgroup.display()),
        )
    } else {
        item(Control::Boundaries, Verdict::Fail, check, format!("not in effect: {}", missing.join(", ")))
    }
}

/// Processes in any agent cgroup holding a capability that lets them leave their boundaries.
fn privileged_agents(root: &Path) -> Vec<Item> {
    let mount = crate::cgroup::Cgroup2Mount::discover().map(|m| m.mount_point).unwrap_or_default();
    let rel = root.strip_prefix(&mount).map(|r| format!("/{}", r.display())).unwrap_or_default();
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cg) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        let Some(path) = cg.lines().find_map(|l| l.strip_prefix("0::")) else { continue };
        if !path.starts_with(&format!("{rel}/")) {
            continue;
        }
        let Ok(st) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let caps = st
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let held: Vec<&str> = DANGEROUS.iter().filter(|(bit, _)| caps & (1 << bit) != 0).map(|(_, n)| *n).collect();
        if !held.is_empty() {
            offenders.push(format!("pid {pid} in {path} holds {}", held.join(", ")));
        }
    }
    let check = "agents run unprivileged";
    if offenders.is_empty() {
        vec![item(
            Control::Boundaries,
            Verdict::Pass,
            check,
            "no process in an agent cgroup holds CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN or CAP_BPF",
        )]
    } else {
        vec![item(Control::Boundaries, Verdict::Fail, check, offenders.join("; "))]
    }
}

/// Whether the metrics endpoint answers with governor's metrics.
pub(super) fn metrics(address: &str) -> Item {
    let check = "the metrics endpoint answers";
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(address)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match answer {
        Ok(text) if text.starts_with("HTTP/1.1 200") && text.contains("governor_build_info") => {
            item(Control::Auditability, Verdict::Pass, check, format!("http://{address}/metrics"))
        }
        Ok(text) => item(
            Control::Auditability,
            Verdict::Fail,
            check,
            format!("unexpected answer: {}", text.lines().next().unwrap_or("")),
        ),
        Err(e) => item(Control::Auditability, Verdict::Fail, check, format!("{address}: {e}")),
    }
}
