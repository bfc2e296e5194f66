//! `cargo xtask test`: builds the programs and binaries, then runs every test in the workspace.
//! The kernel integration tests (crate `governor-tests`) find the freshly built `governor`
//! binary through GOVERNOR_BIN.

use crate::build::{self, cmd, status};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    let binary = build::all(false)?;
    if std::env::var_os("GOVERNOR_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("xtask: GOVERNOR_REQUIRE_PRIVILEGED=1: a skipped kernel test fails the run");
    }
    status(
        cmd("cargo")
            .args(["test"])
            .env("GOVERNOR_EBPF_OBJECT", build::ebpf_object())
            .env("GOVERNOR_BIN", &binary)
            .arg("--")
            .args(extra),
    )
}
