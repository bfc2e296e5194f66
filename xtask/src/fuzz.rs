//! `cargo xtask fuzz [--cases N]`: the property tests (config parser and policy compiler, ring
//! buffer record decoding) with many more cases than CI's few seconds.

use crate::build::{cmd, status};

pub fn run(cases: u32) -> anyhow::Result<()> {
    eprintln!("xtask: {cases} cases per property test");
    status(
        cmd("cargo")
            .args(["test", "--release", "-p", "governor-userspace", "--lib", "--", "fuzz", "arbitrary"])
            .env("PROPTEST_CASES", cases.to_string()),
    )
}
