//! Ending a suspended agent's established connections, so it sees an error instead of a hang:
//! sock_diag over netlink dumps every TCP and UDP socket with its cgroup id
//! (INET_DIAG_CGROUP_ID, kernel 5.7+), and each socket in the agent's cgroups is destroyed with
//! SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY), the mechanism behind `ss -K`.
//!
//! The alternative, `bpf_sock_destroy()` from a socket iterator (kernel 6.5+), needs an
//! iterator program and a kfunc call, which aya-ebpf 0.2.1 cannot express; see the closing note
//! of the spend issue for the measured latency of this path.

use std::{
    collections::HashSet,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// TCP_LISTEN: listeners carry no agent payload; everything else is fair game.
const TCP_LISTEN: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

const _: () = assert!(size_of::<SockId>() == 48 && size_of::<ReqV2>() == 56 && size_of::<NlMsgHdr>() == 16);

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub examined: u64,
    pub destroyed: u64,
    /// Sockets that were gone by the time they were destroyed, or refused.
    pub failed: u64,
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, kind: u16, flags: u16, seq: u32, req: &ReqV2) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16 + size_of::<ReqV2>());
    let hdr = NlMsgHdr { len: (16 + size_of::<ReqV2>()) as u32, kind, flags, seq, pid: 0 };
    // SAFETY: both are repr(C) plain integers with no padding (asserted above).
    unsafe {
        buf.extend_from_slice(std::slice::from_raw_parts(std::ptr::from_ref(&hdr).cast::<u8>(), 16));
        buf.extend_from_slice(std::slice::from_raw_parts(std::ptr::from_ref(req).cast::<u8>(), size_of::<ReqV2>()));
    }
    // SAFETY: sockaddr_nl zeroed is "the kernel"; buf is valid for its length.
    let rc = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            std::ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Calls `each(message kind, payload)` for every netlink message until DONE (dumps) or the
/// first message (acks). Returns the error code of an NLMSG_ERROR, 0 for success.
fn receive(fd: &OwnedFd, dump: bool, mut each: impl FnMut(&[u8])) -> io::Result<i32> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            // SAFETY: at least 16 bytes remain; read_unaligned copies.
            let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let len = hdr.len as usize;
            if len < 16 || off + len > n {
                return Err(io::Error::other("truncated netlink message"));
            }
            let payload = &buf[off + 16..off + len];
            match hdr.kind {
                NLMSG_DONE => return Ok(0),
                NLMSG_ERROR => {
                    let code = payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                    return Ok(code);
                }
                _ => each(payload),
            }
            off += len.next_multiple_of(4);
        }
        if !dump {
            return Ok(0);
        }
    }
}

/// Destroys every TCP and UDP socket (listeners aside) whose cgroup id is in `cgroups`.
pub fn destroy_in_cgroups(cgroups: &HashSet<u64>) -> io::Result<Sweep> {
    let fd = netlink()?;
    let mut sweep = Sweep::default();
    let mut seq = 1;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for protocol in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            let req = ReqV2 { family, protocol, states: !(1 << TCP_LISTEN), ..Default::default() };
            send(&fd, SOCK_DIAG_BY_FAMILY, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, seq, &req)?;
            seq += 1;
            let mut victims = Vec::new();
            let code = receive(&fd, true, |payload| {
                sweep.examined += 1;
                if let Some((id, cgroup)) = parse(payload)
                    && cgroups.contains(&cgroup)
                {
                    victims.push(id);
                }
            })?;
            if code < 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
            for id in victims {
                let req = ReqV2 { family, protocol, states: u32::MAX, id, ..Default::default() };
                send(&fd, SOCK_DESTROY, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, seq, &req)?;
                seq += 1;
                match receive(&fd, false, |_| {})? {
                    0 => sweep.destroyed += 1,
                    _ => sweep.failed += 1,
                }
            }
        }
    }
    Ok(sweep)
}

/// The socket id and cgroup id of one `inet_diag_msg` with its attributes.
fn parse(payload: &[u8]) -> Option<(SockId, u64)> {
    // inet_diag_msg: family, state, timer, retrans (4 bytes), id (48), then 5 u32 = 72 bytes.
    if payload.len() < 72 {
        return None;
    }
    // SAFETY: 48 bytes at offset 4; read_unaligned copies a plain-integer struct.
    let id: SockId = unsafe { std::ptr::read_unaligned(payload[4..].as_ptr().cast()) };
    let mut off = 72;
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            break;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            let cgroup = u64::from_ne_bytes(payload[off + 4..off + 12].try_into().ok()?);
            return Some((id, cgroup));
        }
        off += len.next_multiple_of(4);
    }
    None
}

/// Ids of `dir` and every cgroup below it.
pub fn cgroup_tree_ids(dir: &std::path::Path) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = HashSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&d) {
            out.insert(meta.ino());
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    out
}
