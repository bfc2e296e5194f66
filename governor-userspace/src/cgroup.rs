//! cgroup v2: find the mount, the agents root and its level, agent directories and their ids.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error(
        "no cgroup2 file system is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { op, path: path.to_owned(), source }
}

/// Makes `cmd` join `cgroup` between fork and exec, so the process does nothing outside it.
/// Returns the open `cgroup.procs`: keep it until the process has started.
pub fn enter_before_exec(cgroup: &Path, cmd: &mut std::process::Command) -> Result<std::fs::File, CgroupError> {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let path = cgroup.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new().write(true).open(&path).map_err(io_err("open", &path))?;
    let fd = procs.as_raw_fd();
    // SAFETY: only write(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(procs)
}

/// The cgroup2 mount: where it is, and which cgroup of the hierarchy it shows at its top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub mount_point: PathBuf,
    /// The mount's root inside the hierarchy ("/" unless a sub-tree is mounted).
    pub root: PathBuf,
}

impl Cgroup2Mount {
    /// The first cgroup2 mount in `/proc/self/mountinfo`.
    pub fn discover() -> Result<Self, CgroupError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
        parse_mountinfo(&text).ok_or(CgroupError::NoCgroup2)
    }

    /// The level in the hierarchy (root = 0) of `relative` below this mount: what the kernel's
    /// `bpf_get_current_ancestor_cgroup_id` counts.
    pub fn level_of(&self, relative: &Path) -> u32 {
        let depth = |p: &Path| p.components().filter(|c| matches!(c, Component::Normal(_))).count();
        u32::try_from(depth(&self.root) + depth(relative)).unwrap_or(u32::MAX)
    }
}

/// Parses mountinfo lines: `id parent maj:min root mount_point opts [optional...] - fstype src sopts`.
fn parse_mountinfo(text: &str) -> Option<Cgroup2Mount> {
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = before.split_whitespace().collect();
        Some(Cgroup2Mount { root: unescape(fields.get(3)?).into(), mount_point: unescape(fields.get(4)?).into() })
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory whose children are agents.
#[derive(Debug, Clone)]
pub struct AgentsRoot {
    pub path: PathBuf,
    /// Level of agent cgroups (the root's level + 1).
    pub agent_level: u32,
}

impl AgentsRoot {
    /// `relative` below the cgroup2 mount; created if missing.
    pub fn open(mount: &Cgroup2Mount, relative: &Path) -> Result<Self, CgroupError> {
        let path = mount.mount_point.join(relative);
        std::fs::create_dir_all(&path).map_err(io_err("create agents root", &path))?;
        Ok(Self { path, agent_level: mount.level_of(relative) + 1 })
    }

    pub fn agent_path(&self, cgroup: &str) -> PathBuf {
        self.path.join(cgroup)
    }

    /// Creates the agent cgroup `cgroup` if needed; returns its id.
    pub fn ensure_agent(&self, cgroup: &str) -> Result<u64, CgroupError> {
        let path = self.agent_path(cgroup);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create agent cgroup", &path)(e)),
        }
        cgroup_id(&path)
    }

    /// Names and ids of the child cgroups that exist now.
    pub fn children(&self) -> Result<Vec<(String, u64)>, CgroupError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io_err("list agents root", &self.path))? {
            let entry = entry.map_err(io_err("list agents root", &self.path))?;
            // Type and inode as the directory listing gives them (kernfs fills both): no stat
            // per child, which a rescan every second of a thousand agents would feel.
            let Ok(kind) = entry.file_type() else { continue }; // removed while listing
            if kind.is_dir()
                && let Some(name) = entry.file_name().to_str()
            {
                out.push((name.to_owned(), std::os::unix::fs::DirEntryExt::ino(&entry)));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A cgroup2 directory's id, as `bpf_get_current_cgroup_id` reports it: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    Ok(std::fs::metadata(path).map_err(io_err("stat cgroup", path))?.ino())
}

/// Every cgroup below `mount` by id, as a path relative to the mount ("/" for the root).
/// Used to name the senders of the host's egress; a cgroup removed since is simply absent.
pub fn paths_by_id(mount: &Path) -> std::collections::HashMap<u64, String> {
    let mut out = std::collections::HashMap::new();
    let mut stack = vec![mount.to_owned()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&dir) {
            let rel =
                dir.strip_prefix(mount).map_or_else(|_| dir.display().to_string(), |r| format!("/{}", r.display()));
            out.insert(meta.ino(), rel);
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount_on_a_hybrid_host() {
        let m = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(m.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m.level_of(Path::new("governor.agents")), 1);
    }

    #[test]
    fn sub_tree_mounts_and_escapes_count() {
        let m = parse_mountinfo("7 1 0:9 /a/b /mnt/my\\040cg rw shared:1 - cgroup2 none rw\n").unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/my cg"));
        assert_eq!(m.level_of(Path::new("x/y")), 4);
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
