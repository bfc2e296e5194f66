//! `governor exec`: starts a command inside an agent's cgroup from its first instruction
//! (clone3 with CLONE_INTO_CGROUP: the process never exists outside the cgroup, so it cannot
//! open a socket there), as an unprivileged user with no_new_privs, and waits for it.
//!
//! Root is refused without --allow-root: a root agent could move itself out of its cgroup,
//! detach governor's programs or open raw sockets. An unprivileged one cannot write to any
//! cgroup.procs, so it stays where it was put.

use std::{ffi::CString, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, bail};

use crate::{control::Client, status::Status};

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Who the agent runs as.
struct Identity {
    uid: u32,
    gid: u32,
    name: String,
}

fn identity(user: Option<&str>) -> anyhow::Result<Identity> {
    use nix::unistd::{Uid, User};
    let found = match user {
        Some(u) => match u.parse::<u32>() {
            Ok(uid) => {
                User::from_uid(Uid::from_raw(uid))?.with_context(|| format!("--user: no user with uid {uid}"))?
            }
            Err(_) => User::from_name(u)?.with_context(|| format!("--user: no user named {u:?}"))?,
        },
        // Under sudo, the person who ran it; otherwise whoever runs governor.
        None => match std::env::var("SUDO_UID").ok().and_then(|u| u.parse::<u32>().ok()) {
            Some(uid) => User::from_uid(Uid::from_raw(uid))?.with_context(|| format!("SUDO_UID {uid} is no user"))?,
            None => User::from_uid(nix::unistd::geteuid())?.context("the current user has no passwd entry")?,
        },
    };
    Ok(Identity { uid: found.uid.as_raw(), gid: found.gid.as_raw(), name: found.name })
}

/// The family of the socket open at `fd`, unless it is no socket or a Unix socket (files,
/// pipes and Unix sockets pass: a journal's stream on stdout is a Unix socket; any other
/// family, packet and vsock sockets included, would reach past the agent's hooks).
fn inet_socket(fd: i32) -> Option<String> {
    let mut domain: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int; on a descriptor that is no socket it fails (ENOTSOCK).
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&raw mut domain).cast(), &mut len) };
    match (rc, domain) {
        (0, libc::AF_UNIX) | (-1, _) => None,
        (0, libc::AF_INET) => Some("IPv4".into()),
        (0, libc::AF_INET6) => Some("IPv6".into()),
        (_, other) => Some(format!("address family {other}")),
    }
}

/// How long `--unlisted` waits for the daemon to take up a cgroup it creates (discovery runs
/// every second).
const DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Finds the agent's cgroup (or, with `unlisted`, creates one the daemon then governs as an
/// unlisted agent), then runs the command in it; returns its exit code.
#[allow(clippy::too_many_arguments)]
pub fn run(
    agent: &str,
    user: Option<&str>,
    allow_root: bool,
    unlisted: bool,
    preserve_fds: u32,
    socket: &Path,
    command: &[String],
) -> anyhow::Result<i32> {
    let who = identity(user)?;
    if who.uid == 0 && !allow_root {
        bail!(
            "refusing to start agent {agent:?} as root: root can move itself out of its cgroup, detach governor's \
             programs and open raw sockets, so nothing would bind it. Pass --user USER (an unprivileged account), \
             or --allow-root if you accept that"
        );
    }
    // The descriptors the agent keeps (0-2 and the preserved ones) must hold no network socket:
    // a socket belongs to the cgroup that made it, so the launcher's would reach anything,
    // uncounted, from inside the agent.
    for fd in 0..3 + preserve_fds.min(1 << 16) as i32 {
        if let Some(family) = inet_socket(fd) {
            bail!(
                "descriptor {fd} is an {family} socket of the launcher: it belongs to the launcher's cgroup, so \
                 the agent could reach anything through it, uncounted. Give the agent no network socket: \
                 redirect it (`{fd}</dev/null`), or let the agent open its own"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = Client::new(socket);
    let status: Status = runtime.block_on(client.get_json("/v1/status"))?;
    let dir = match status.agents.iter().find(|a| a.name == agent) {
        Some(a) => std::path::PathBuf::from(&a.cgroup),
        None if !unlisted => {
            let mut names: Vec<&str> = status.agents.iter().map(|a| a.name.as_str()).collect();
            names.sort_unstable();
            bail!(
                "no agent named {agent:?}; the agents are: {}. Pass --unlisted to start it in a new cgroup \
                 {}/{agent} that the daemon governs as an unlisted agent (daemon.unlisted_agents)",
                if names.is_empty() { "(none)".to_owned() } else { names.join(", ") },
                status.agents_root
            )
        }
        None => {
            if agent.is_empty() || agent.contains('/') || agent == "." || agent == ".." {
                bail!("--agent {agent:?}: an unlisted agent's name is one directory name under the agents root");
            }
            let dir = Path::new(&status.agents_root).join(agent);
            std::fs::create_dir(&dir)
                .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                .with_context(|| format!("cannot create the agent's cgroup {}", dir.display()))?;
            // Not a process may run in it before the kernel knows it as an agent.
            let deadline = std::time::Instant::now() + DISCOVERY_WAIT;
            loop {
                let status: Status = runtime.block_on(client.get_json("/v1/status"))?;
                if status.agents.iter().any(|a| a.name == agent) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = std::fs::remove_dir(&dir);
                    bail!(
                        "the daemon did not take up {} as an agent within {} s: its daemon.unlisted_agents is \
                         probably \"ignore\". Name the agent in the config, or set unlisted_agents = \"observe\"",
                        dir.display(),
                        DISCOVERY_WAIT.as_secs()
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            dir
        }
    };
    drop(runtime);
    let cgroup = std::fs::File::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;

    // Everything the child needs is prepared here: after clone3 it only makes system calls.
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("an argument holds a NUL byte")?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let groups = [who.gid as libc::gid_t];
    // The child cannot format after clone3, so each failure's line is written out here.
    let message = |text: String| CString::new(text).unwrap_or_default();
    let no_user = message(format!(
        "governor exec: cannot switch to user {} (uid {}, gid {}) or set no_new_privs\n",
        who.name, who.uid, who.gid
    ));
    let not_found = message(format!("governor exec: {}: command not found\n", command[0]));
    let not_allowed =
        message(format!("governor exec: {}: permission denied (not executable by {})\n", command[0], who.name));
    let cannot_run = message(format!("governor exec: {}: cannot run it\n", command[0]));
    let no_close =
        message("governor exec: cannot close the launcher's descriptors (close_range needs kernel 5.9+)\n".into());
    let first_closed: u32 = 3u32.saturating_add(preserve_fds);

    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork; this process is single-threaded here
    // (the runtime above is gone), and the child only makes async-signal-safe system calls.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &raw mut args, size_of::<CloneArgs>()) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context(format!(
            "cannot start a process in {} (clone3 with CLONE_INTO_CGROUP needs kernel 5.7+)",
            dir.display()
        ));
    }
    if pid == 0 {
        // SAFETY: the child: plain system calls, then exec or _exit.
        unsafe {
            // The launcher's descriptors stay behind: an inherited socket belongs to the
            // launcher's cgroup and would reach anything, uncounted. Only 0-2 and the first
            // `preserve_fds` after them (as systemd-run --preserve-fds) cross over.
            if libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0) != 0 {
                libc::write(2, no_close.as_ptr().cast(), no_close.count_bytes());
                libc::_exit(126);
            }
            if libc::setgroups(1, groups.as_ptr()) != 0
                || libc::setgid(who.gid) != 0
                || libc::setuid(who.uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                libc::write(2, no_user.as_ptr().cast(), no_user.count_bytes());
                libc::_exit(126);
            }
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            // As shells do: 127 for a command that is not there, 126 for one that cannot run.
            let (line, code) = match *libc::__errno_location() {
                libc::ENOENT => (&not_found, 127),
                libc::EACCES => (&not_allowed, 126),
                _ => (&cannot_run, 126),
            };
            libc::write(2, line.as_ptr().cast(), line.count_bytes());
            libc::_exit(code);
        }
    }
    drop(cgroup);
    eprintln!(
        "governor exec: started {:?} as {} (uid {}) in {} (pid {pid})",
        command[0],
        who.name,
        who.uid,
        dir.display()
    );
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid as i32, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            bail!("waitpid: {}", std::io::Error::last_os_error());
        }
    }
    Ok(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) })
}
