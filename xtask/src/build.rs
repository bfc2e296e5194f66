//! Building the eBPF object (nightly, build-std) and the binary that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(workspace_root());
    c
}

pub fn status(c: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{c:?}");
    let s = c.status().with_context(|| format!("cannot start {shown}"))?;
    if !s.success() {
        bail!("{shown} failed: {s}");
    }
    Ok(())
}

/// Where the eBPF object lands; governor-userspace/build.rs looks here too.
pub fn ebpf_object() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/governor-ebpf")
}

/// Builds the eBPF object the way aya-build does, with the installed nightly.
pub fn ebpf() -> anyhow::Result<PathBuf> {
    ebpf_with(&[], "target/ebpf")?;
    let object = ebpf_object();
    if !object.is_file() {
        bail!("the eBPF build succeeded but {} is missing", object.display());
    }
    check_atomics(&object)?;
    Ok(object)
}

/// The bench's floor: a `governor` binary (in target/floor) embedding programs that let
/// everything through at once (governor-ebpf's `floor` feature), to measure what attaching the
/// hooks costs by itself.
pub fn floor_governor() -> anyhow::Result<PathBuf> {
    ebpf_with(&["--features", "floor"], "target/ebpf-floor")?;
    let object = workspace_root().join("target/ebpf-floor/bpfel-unknown-none/release/governor-ebpf");
    status(
        cmd("cargo")
            .args(["build", "--release", "--package", "governor-userspace", "--bin", "governor"])
            .args(["--target-dir", "target/floor"])
            .env("GOVERNOR_EBPF_OBJECT", &object),
    )
    .context("building the floor governor for the bench")?;
    Ok(workspace_root().join("target/floor/release/governor"))
}

fn ebpf_with(extra: &[&str], target_dir: &str) -> anyhow::Result<()> {
    crate::prereqs::ensure()?;
    // The kernel's architecture decides how aya-ebpf reads registers and context structs: the
    // host's, as aya-build derives it (its names are Rust's: x86_64, aarch64, riscv64, ...).
    let arch = format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH);
    let rustflags = [
        arch.as_str(),
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        // v3: atomic fetch-add returning the old value (governor-ebpf/src/budget.rs); the
        // generic CPU cannot link it ("Invalid usage of the XADD return value").
        "-Ctarget-cpu=v3",
    ]
    .join("\x1f");
    status(
        cmd("rustup")
            .args(["run", "nightly", "cargo", "build", "--package", "governor-ebpf", "--bins", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir", target_dir])
            .args(extra)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTFLAGS"),
    )
    .context("building the eBPF programs")
}

/// Refuses an object with a plain `lock +=` where a fetch-add was meant: with `Relaxed` ordering
/// the BPF backend emits one and then reads the register as if it held the old value, which
/// loads, verifies, and is silently wrong (ARCHITECTURE.md, "eBPF pitfalls"). Every add in governor's
/// programs is SeqCst, so any plain atomic add is a bug.
fn check_atomics(object: &Path) -> anyhow::Result<()> {
    let objdump = ["llvm-objdump-22", "/usr/lib/llvm-22/bin/llvm-objdump", "llvm-objdump"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .context("llvm-objdump not found (Debian package llvm-22); it checks the eBPF object's atomics")?;
    let out = Command::new(objdump).arg("-d").arg(object).output().context("running llvm-objdump")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let plain: Vec<&str> = text.lines().filter(|l| l.contains("lock *(")).collect();
    if !plain.is_empty() {
        bail!(
            "{} has {} plain atomic add(s) where fetch-adds were expected (use AtomicOrdering::SeqCst):\n{}",
            object.display(),
            plain.len(),
            plain.join("\n")
        );
    }
    let fetches = text.matches("atomic_fetch_add").count();
    eprintln!("xtask: {} built; {fetches} atomic fetch-adds, no plain atomic adds", object.display());
    Ok(())
}

/// Builds the eBPF object, then every user-space binary (the default members) with it embedded.
pub fn all(release: bool) -> anyhow::Result<PathBuf> {
    let object = ebpf()?;
    let mut c = cmd("cargo");
    c.args(["build", "--bins"]).env("GOVERNOR_EBPF_OBJECT", &object);
    if release {
        c.arg("--release");
    }
    status(&mut c)?;
    Ok(workspace_root().join("target").join(if release { "release" } else { "debug" }).join("governor"))
}
