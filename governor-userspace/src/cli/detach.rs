//! `governor detach`: takes governor off a host's agents root: unpins the program links (the
//! programs stop at once: no daemon holds them), and removes the pinned maps, under every map
//! layout version. The spend stays in `daemon.state_dir`. Refused while a daemon serves the
//! agents root (it holds the pin directory's lock): stop it first. Audited in the daemon's
//! audit log, so the chain shows who took the boundary away and when.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use crate::{audit::AuditLog, cgroup::Cgroup2Mount, config::LoadedConfig, kernel::pins};

/// `enum bpf_attach_type`: the connect4 hook, which governor's programs always use.
const CGROUP_INET4_CONNECT: u32 = 10;

/// What `detach` found (and, unless it was a dry run, removed).
struct Found {
    dir: PathBuf,
    links: Vec<String>,
    maps: Vec<String>,
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn run(config: Option<&Path>, dry_run: bool) -> anyhow::Result<()> {
    let loaded = match config {
        Some(p) => LoadedConfig::from_file(p)?,
        None => LoadedConfig::default_config(),
    };
    let d = &loaded.config.daemon;
    let mount = Cgroup2Mount::discover()?;
    let root = mount.mount_point.join(d.agents_root.get_ref());
    let bpffs = pins::bpffs()?;
    let found: Vec<Found> = pins::every_layout(&bpffs, &root)
        .into_iter()
        .map(|dir| Found { links: entries(&dir.join("links")), maps: entries(&dir.join("maps")), dir })
        .collect();
    if found.is_empty() {
        println!("governor is not attached to {}: no pins under {}/governor", root.display(), bpffs.display());
        return Ok(());
    }
    for f in &found {
        println!(
            "{}{}: {} program link(s) ({}), {} map(s)",
            if dry_run { "would remove " } else { "" },
            f.dir.display(),
            f.links.len(),
            f.links.join(", "),
            f.maps.len()
        );
    }
    if dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    // The lock a running daemon holds on its pin directory: never pull pins from under it.
    let mut lock = crate::instance::InstanceLock::none();
    for f in &found {
        lock.add_pins(&f.dir).with_context(|| "refusing to detach".to_owned())?;
    }
    let mut audit =
        AuditLog::open(d.audit_log.get_ref(), *d.audit_max_bytes.get_ref() as u64, *d.audit_keep.get_ref() as u32)
            .with_context(|| "detach is audited, and the audit log cannot be opened; nothing was changed".to_owned())?;
    let by = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name);
    audit
        .append(
            "detach",
            None,
            json!({
                "agents_root": root.display().to_string(),
                "pins": found.iter().map(|f| f.dir.display().to_string()).collect::<Vec<_>>(),
                "links": found.iter().map(|f| f.links.len()).sum::<usize>(),
                "by": { "uid": nix::unistd::getuid().as_raw(), "user": by, "pid": std::process::id() },
            }),
        )
        .context("detach is audited, and the record could not be written; nothing was changed")?;
    for f in &found {
        // Removed while the lock is held, so no daemon can start on them meanwhile. Unpinned, a
        // link no process holds is released and its program detached.
        std::fs::remove_dir_all(&f.dir).with_context(|| format!("cannot remove {}", f.dir.display()))?;
        println!("removed {}", f.dir.display());
    }
    drop(lock);
    // The kernel lets go of an unpinned link a moment later (deferred work): report "off" only
    // once the agents root's connect hook runs nothing more.
    let root_fd = std::fs::File::open(&root).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Some(fd) = &root_fd
        && crate::kernel::link::effective_programs(std::os::fd::AsFd::as_fd(fd), CGROUP_INET4_CONNECT)
            .is_ok_and(|ids| !ids.is_empty())
    {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the pins are gone, but programs are still in effect on {} after 5 s", root.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    println!(
        "governor's programs are off {}; its spend stays in {} for a later start",
        root.display(),
        d.state_dir.get_ref().display()
    );
    Ok(())
}
