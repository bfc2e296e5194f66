//! `cargo xtask test`: builds the programs and binaries, then runs every test in the workspace.
//! The kernel integration tests (crate `governor-tests`) find the freshly built `governor`
//! binary through GOVERNOR_BIN. Ends with one summary line over every test binary.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::build::{self, cmd};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    crate::prereqs::ensure_test_tools()?;
    let binary = build::all(false)?;
    if std::env::var_os("GOVERNOR_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("xtask: GOVERNOR_REQUIRE_PRIVILEGED=1: a skipped kernel test fails the run");
    }
    let mut child = cmd("cargo")
        .arg("test")
        .env("GOVERNOR_EBPF_OBJECT", build::ebpf_object())
        .env("GOVERNOR_BIN", &binary)
        .arg("--")
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        totals.add(&line);
        writeln!(out, "{line}")?;
    }
    let status = child.wait()?;
    writeln!(out, "tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored)?;
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds a libtest summary: `test result: ok. 4 passed; 0 failed; 1 ignored; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}
