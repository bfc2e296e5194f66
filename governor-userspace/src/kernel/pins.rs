//! Where governor pins its maps and links in bpffs, so they outlive the daemon: maps keep the
//! money across restarts, links keep enforcing while the daemon is down.
//!
//! Layout: `<bpffs>/governor/v4/<key>/{maps,links}/<NAME>`, where `<key>` names the agents root
//! (see [`pin_key`]). The version directory changes whenever a map's layout does: aya reuses
//! whatever sits at a pin path without checking its type or size.
//!
//! Every directory from `<bpffs>/governor` down is created 0700 and must be owned by root and
//! writable by nobody else: bpffs is often mounted 1777, and whoever owns a pin directory can
//! unlink the links in it, which detaches the programs.

use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use sha2::Digest as _;

/// Bumped whenever any map's key or value layout changes.
pub const LAYOUT_VERSION: &str = "v4";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    #[error(
        "no bpffs is mounted and mounting one at /sys/fs/bpf failed: {0}; mount it with `mount -t bpf bpf /sys/fs/bpf`"
    )]
    Mount(#[source] nix::Error),
    #[error(
        "pins of another governor map layout are at {}: an older governor's programs may still be attached there, enforcing with maps this version cannot read. Stop that governor, then `governor detach --config <this config>` (or `rm -r {}`); spend is then reseeded from daemon.state_dir",
        found.display(),
        found.display()
    )]
    OtherLayout { found: PathBuf },
    #[error("cannot create pin directory {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pin directory {} is {why}: whoever controls it can unlink governor's links and so detach its programs. Remove it (`rm -r {}`) and start again; governor creates it owned by root, mode 0700",
        path.display(),
        path.display()
    )]
    Untrusted { path: PathBuf, why: String },
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

/// Longest readable part of a pin key; the hash after it keeps long paths apart.
const KEY_PREFIX_MAX: usize = 80;

/// The directory name of an agents root (an absolute cgroup path) in bpffs: a readable part
/// (the path without its leading `/`, `/` as `_`, and every character other than ASCII letters,
/// digits, `_` and `-` as `-`) and the first 16 hex digits of the path's SHA-256. bpffs refuses
/// names with a dot, and the readable part alone could make two roots one name (`a_b`, `a/b`);
/// the hash cannot.
/// `/sys/fs/cgroup/unified/governor.agents` → `sys_fs_cgroup_unified_governor-agents-<16 hex>`.
pub fn pin_key(agents_root: &Path) -> String {
    let path = agents_root.to_string_lossy();
    let readable: String = path
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '_',
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => c,
            _ => '-',
        })
        .take(KEY_PREFIX_MAX)
        .collect();
    let hash = sha2::Sha256::digest(path.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hex}")
}

/// The name layouts up to v3 gave an agents root: the path with `/` as `_` (which bpffs refused
/// for a dotted root). Pins under it are of an older layout, found to be refused, never adopted.
fn legacy_key(agents_root: &Path) -> Option<String> {
    let key: String =
        agents_root.to_string_lossy().trim_start_matches('/').chars().map(|c| if c == '/' { '_' } else { c }).collect();
    (!key.contains('.')).then_some(key)
}

/// The pin directory of the governor serving `agents_root` (an absolute cgroup path).
pub fn pin_dir(bpffs: &Path, agents_root: &Path) -> PathBuf {
    bpffs.join("governor").join(LAYOUT_VERSION).join(pin_key(agents_root))
}

#[derive(Debug, Clone)]
pub struct PinDir {
    pub base: PathBuf,
    /// This open made `base` (no daemon pinned there before): a start that fails may remove it.
    pub created: bool,
}

/// Pin directories for the same agents root under other layout versions, by either name.
fn other_layouts(bpffs: &Path, agents_root: &Path) -> Vec<PathBuf> {
    let names: Vec<String> = legacy_key(agents_root).into_iter().chain([pin_key(agents_root)]).collect();
    std::fs::read_dir(bpffs.join("governor"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|v| v.file_name() != LAYOUT_VERSION)
        .flat_map(|v| names.iter().map(move |n| v.path().join(n)))
        .filter(|p| p.is_dir())
        .collect()
}

/// Creates `path` (mode 0700) if it does not exist, and refuses it unless root owns it and
/// nobody else may write to it.
fn trusted_dir(path: &Path) -> Result<(), PinError> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(PinError::Create { path: path.to_owned(), source }),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|source| PinError::Create { path: path.to_owned(), source })?;
    let untrusted = |why: String| Err(PinError::Untrusted { path: path.to_owned(), why });
    if !meta.is_dir() {
        return untrusted("not a directory".into());
    }
    if meta.uid() != 0 {
        return untrusted(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return untrusted(format!("writable by its group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

/// Every pin directory of `agents_root` present, this layout's and older ones'.
pub fn every_layout(bpffs: &Path, agents_root: &Path) -> Vec<PathBuf> {
    let ours = pin_dir(bpffs, agents_root);
    let mut all: Vec<PathBuf> = ours.is_dir().then_some(ours).into_iter().collect();
    all.extend(other_layouts(bpffs, agents_root));
    all
}

impl PinDir {
    /// Creates (or finds) the pin directory for `agents_root`. Refuses while pins of another
    /// layout version exist for the same agents root: their links would keep running the old
    /// programs beside the new ones.
    pub fn open(agents_root: &Path) -> Result<Self, PinError> {
        Self::open_in(&bpffs()?, agents_root)
    }

    fn open_in(bpffs: &Path, agents_root: &Path) -> Result<Self, PinError> {
        let base = pin_dir(bpffs, agents_root);
        if let Some(found) = other_layouts(bpffs, agents_root).into_iter().next() {
            return Err(PinError::OtherLayout { found });
        }
        let created = !base.exists();
        let governor = bpffs.join("governor");
        for dir in
            [governor.clone(), governor.join(LAYOUT_VERSION), base.clone(), base.join("maps"), base.join("links")]
        {
            if let Err(e) = trusted_dir(&dir) {
                // Half made by this open: taken back (an existing directory is left alone).
                if created {
                    let _ = std::fs::remove_dir_all(&base);
                }
                return Err(e);
            }
        }
        Ok(Self { base, created })
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
        let dir = pin_dir(Path::new("/nonexistent-bpffs"), Path::new("/sys/fs/cgroup/unified/governor.agents"));
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(dir.parent().unwrap(), Path::new("/nonexistent-bpffs/governor/v4"));
        assert!(name.starts_with("sys_fs_cgroup_unified_governor-agents-"), "{name}");
        assert_eq!(name.len(), "sys_fs_cgroup_unified_governor-agents-".len() + 16);
    }

    #[test]
    fn pin_keys_are_valid_bpffs_names_and_do_not_collide() {
        let roots = ["/a/b", "/a_b", "/a.b", "/a-b", "/a b", "/a_b_", "/ä/b", &format!("/{}", "x".repeat(300))];
        let keys: std::collections::HashSet<String> = roots.iter().map(|r| pin_key(Path::new(r))).collect();
        assert_eq!(keys.len(), roots.len(), "{keys:?}");
        for k in &keys {
            assert!(!k.contains('.') && !k.contains('/') && k.len() <= KEY_PREFIX_MAX + 17, "{k}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_cgroup_path_gets_a_name_bpffs_accepts(path in "/[^\\x00]{0,200}") {
            let key = pin_key(Path::new(&path));
            proptest::prop_assert!(!key.is_empty() && !key.contains('.') && !key.contains('/') && !key.contains('\0'));
        }
    }

    #[test]
    fn pins_of_other_layouts_for_the_same_root_are_found_by_either_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Path::new("/cg/root_a");
        let old_legacy = tmp.path().join("governor/v1/cg_root_a");
        let old_keyed = tmp.path().join("governor/v2").join(pin_key(root));
        for d in [&pin_dir(tmp.path(), root), &old_legacy, &old_keyed, &tmp.path().join("governor/v1/cg_root_b")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut found = other_layouts(tmp.path(), root);
        found.sort();
        assert_eq!(found, vec![old_legacy, old_keyed]);
    }

    #[test]
    fn directories_others_control_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // ownership by root cannot be arranged; the kernel tests cover this as root
        }
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let root = Path::new("/cg/agents");
        let governor = tmp.path().join("governor");
        std::fs::create_dir(&governor).unwrap();
        std::os::unix::fs::chown(&governor, Some(65534), None).unwrap();
        let err = PinDir::open_in(tmp.path(), root).unwrap_err();
        assert!(matches!(&err, PinError::Untrusted { path, .. } if path == &governor), "{err}");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        std::os::unix::fs::chown(&governor, Some(0), None).unwrap();
        std::fs::set_permissions(&governor, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = PinDir::open_in(tmp.path(), root).unwrap_err();
        assert!(err.to_string().contains("writable by its group or others (mode 777)"), "{err}");
        std::fs::set_permissions(&governor, std::fs::Permissions::from_mode(0o700)).unwrap();
        let pins = PinDir::open_in(tmp.path(), root).unwrap();
        let mode = std::fs::metadata(pins.base.join("links")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }
}
