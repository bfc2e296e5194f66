//! Where governor pins its maps and links in bpffs, so they outlive the daemon: maps keep the
//! money across restarts, links keep enforcing while the daemon is down.
//!
//! Layout: `<bpffs>/governor/v3/<agents root as a file name>/{maps,links}/<NAME>`. The version
//! directory changes whenever a map's layout does: aya reuses whatever sits at a pin path
//! without checking its type or size.

use std::path::{Path, PathBuf};

/// Bumped whenever any map's key or value layout changes.
pub const LAYOUT_VERSION: &str = "v3";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    #[error(
        "no bpffs is mounted and mounting one at /sys/fs/bpf failed: {0}; mount it with `mount -t bpf bpf /sys/fs/bpf`"
    )]
    Mount(#[source] nix::Error),
    #[error(
        "pins of another governor map layout are at {}: an older governor's programs may still be attached there, enforcing with maps this version cannot read. Stop that governor with daemon.on_daemon_exit = \"detach\", or remove its pins (`rm -r {}`); spend is then reseeded from daemon.state_dir",
        found.display(),
        found.display()
    )]
    OtherLayout { found: PathBuf },
    #[error("cannot create pin directory {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The first bpffs mount, mounting one at /sys/fs/bpf if there is none.
pub fn bpffs() -> Result<PathBuf, PinError> {
    if let Some(p) = find_bpffs()? {
        return Ok(p);
    }
    let target = Path::new("/sys/fs/bpf");
    nix::mount::mount(Some("bpf"), target, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(PinError::Mount)?;
    tracing::info!(path = %target.display(), "mounted bpffs");
    Ok(target.to_owned())
}

fn find_bpffs() -> Result<Option<PathBuf>, PinError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(PinError::MountInfo)?;
    Ok(text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "bpf").then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    }))
}

/// The pin directory of the governor serving `agents_root` (an absolute cgroup path).
pub fn pin_dir(bpffs: &Path, agents_root: &Path) -> PathBuf {
    let key: String =
        agents_root.to_string_lossy().trim_start_matches('/').chars().map(|c| if c == '/' { '_' } else { c }).collect();
    bpffs.join("governor").join(LAYOUT_VERSION).join(key)
}

#[derive(Debug, Clone)]
pub struct PinDir {
    pub base: PathBuf,
}

/// Pin directories for the same agents root as `base` under other layout versions.
fn other_layouts(base: &Path) -> Vec<PathBuf> {
    let (Some(name), Some(versions)) = (base.file_name(), base.parent().and_then(Path::parent)) else {
        return Vec::new();
    };
    std::fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|v| v.file_name() != LAYOUT_VERSION)
        .map(|v| v.path().join(name))
        .filter(|p| p.is_dir())
        .collect()
}

impl PinDir {
    /// Creates (or finds) the pin directory for `agents_root`. Refuses while pins of another
    /// layout version exist for the same agents root: their links would keep running the old
    /// programs beside the new ones.
    pub fn open(agents_root: &Path) -> Result<Self, PinError> {
        let bpffs = bpffs()?;
        let base = pin_dir(&bpffs, agents_root);
        if let Some(found) = other_layouts(&base).into_iter().next() {
            return Err(PinError::OtherLayout { found });
        }
        for sub in ["maps", "links"] {
            let p = base.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| PinError::Create { path: p.clone(), source })?;
        }
        Ok(Self { base })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.base.join("maps").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.base.join("links").join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dirs_are_per_agents_root_and_versioned() {
        assert_eq!(
            pin_dir(Path::new("/sys/fs/bpf"), Path::new("/sys/fs/cgroup/unified/governor.agents")),
            Path::new("/sys/fs/bpf/governor/v3/sys_fs_cgroup_unified_governor.agents")
        );
    }

    #[test]
    fn pins_of_other_layouts_for_the_same_root_are_found() {
        let tmp = std::env::temp_dir().join(format!("governor-pins-test-{}", std::process::id()));
        let ours = tmp.join("governor").join(LAYOUT_VERSION).join("root_a");
        let old = tmp.join("governor/v1/root_a");
        for d in [&ours, &old, &tmp.join("governor/v1/root_b")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let found = other_layouts(&ours);
        std::fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(found, vec![old]);
    }
}
