//! Prerequisites of the eBPF build, installed when missing and said out loud.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::build::{cmd, status};

/// LLVM major version bpf-linker is built against; it must match the nightly's LLVM.
const LLVM: &str = "22";

pub fn ensure() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "the `nightly` toolchain is not installed; governor's eBPF crate builds with it (rustup toolchain install nightly)"
        );
    }
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly (the eBPF build compiles core from source)");
    status(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
    {
        return Ok(());
    }
    eprintln!("xtask: bpf-linker is missing; installing it (built against Debian's llvm-{LLVM}-dev, about a minute)");
    let packages = [&format!("llvm-{LLVM}-dev"), &format!("libpolly-{LLVM}-dev"), "libzstd-dev", "zlib1g-dev"];
    let have_llvm = std::path::Path::new(&format!("/usr/lib/llvm-{LLVM}/bin/llvm-config")).exists();
    if !have_llvm {
        if !nix_is_root() {
            bail!(
                "bpf-linker needs llvm-{LLVM}-dev; install it as root: apt-get update && apt-get install -y {}",
                packages.join(" ")
            );
        }
        status(cmd("apt-get").arg("update").arg("-qq"))?;
        status(cmd("apt-get").args(["install", "-y", "-qq"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    status(
        cmd("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features", &format!("llvm-{LLVM}")])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM}")),
    )
    .context("installing bpf-linker")
}

/// Programs the kernel tests drive, and the Debian packages that bring them: curl and Python's
/// urllib as real clients, ip for the test namespaces, promtool for the alert rules' tests,
/// tmux to read `governor top` as a person sees it, unshare for the README test's private
/// mounts, ssh-keygen to make keys for and check the signed readiness report.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("python3", "python3"),
    ("ip", "iproute2"),
    ("promtool", "prometheus"),
    ("tmux", "tmux"),
    ("unshare", "util-linux"),
    ("ssh-keygen", "openssh-client"),
];

/// Installs the tests' tools that are missing (as root, with apt-get); without root, says which
/// are missing: the kernel tests need root anyway and skip without it.
pub fn ensure_test_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(program, _)| {
            !std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        eprintln!(
            "xtask: the kernel tests need {} (not installed); as root: apt-get install -y {}",
            missing.join(", "),
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("xtask: installing what the tests drive: {}", missing.join(" "));
    status(cmd("apt-get").arg("update").arg("-qq"))?;
    status(cmd("apt-get").args(["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
        .context("installing the tests' tools")
}

pub fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
