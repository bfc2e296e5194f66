//! `cargo xtask run`: build, then start the daemon as root (through sudo when not root).

use anyhow::Context as _;

use crate::{build, prereqs::nix_is_root};

pub fn run(release: bool, args: &[String]) -> anyhow::Result<()> {
    let binary = build::all(release)?;
    let mut c = if nix_is_root() {
        std::process::Command::new(&binary)
    } else {
        eprintln!("xtask: governor loads eBPF programs and needs root; running it with sudo");
        let mut c = std::process::Command::new("sudo");
        c.arg("-E").arg(&binary);
        c
    };
    c.arg("run").args(args);
    let status = c.status().with_context(|| format!("cannot start {}", binary.display()))?;
    if !status.success() {
        anyhow::bail!("governor exited with {status}");
    }
    Ok(())
}
