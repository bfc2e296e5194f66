//! The bpf(2) commands aya 0.14 keeps private: open a pinned object (BPF_OBJ_GET) and swap the
//! program behind a link atomically (BPF_LINK_UPDATE), so a restarted daemon replaces its
//! programs with no gap in enforcement and no moment of double counting; and, for the
//! setsockopt program, whose aya link cannot become an `FdLink`, make a cgroup link
//! (BPF_LINK_CREATE) and pin it (BPF_OBJ_PIN).

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: the cgroup setsockopt hook.
pub const BPF_CGROUP_SETSOCKOPT: u32 = 22;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for `cmd`, zero beyond its fields.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Puts `program` on the cgroup `target` at `attach_type` as a new bpf_link; returns the link.
pub fn link_create(program: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` at `path` in bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Makes `link` run `program` from now on, atomically.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// Ids of the programs in effect for `attach_type` on the cgroup `cgroup` (its own and
/// inherited ones), read back from the kernel.
pub fn effective_programs(cgroup: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}
