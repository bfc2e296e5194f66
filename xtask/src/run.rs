//! `cargo xtask run`: build, then start the daemon as root (through sudo when not root).

use anyhow::Context as _;

use crate::{build, prereqs::nix_is_root};

/// Returns the daemon's exit status (signals as 128 + the signal's number, as shells do).
pub fn run(release: bool, args: &[String]) -> anyhow::Result<u8> {
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
    use std::os::unix::process::ExitStatusExt as _;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => 1,
    })
}
