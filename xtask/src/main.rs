//! `cargo xtask`: what cargo alone cannot do for governor: install prerequisites, build the
//! eBPF object with nightly, run the daemon as root, and run every test, kernel ones included.

mod bench;
mod build;
mod fuzz;
mod prereqs;
mod run;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test governor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building the eBPF object needs and is missing (rust-src, bpf-linker).
    Setup,
    /// Build the eBPF object only.
    BuildEbpf,
    /// Build the eBPF object and the `governor` binary that embeds it.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `governor run [ARGS...]` as root. Example: `cargo xtask run -- --config examples/governor.toml`.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `governor run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure what governing costs against no governor, nftables, and the hooks alone (programs
    /// that let everything through) in the same run; writes bench/REPORT.md and
    /// bench/report.json. Needs root. About 12 minutes; --quick about 1.5 once built.
    Bench {
        #[arg(long)]
        quick: bool,
        /// Run only the measures whose name contains this text (e.g. "connect", "UDP",
        /// "criterion"); the report is printed, and bench/REPORT.md is left alone.
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
    /// Run the property tests (config parser, policy compiler, ring buffer decoding) at length.
    Fuzz {
        /// Cases per property test.
        #[arg(long, default_value_t = 200_000)]
        cases: u32,
    },
    /// Build, then run every test: unit tests and the privileged kernel integration tests.
    /// Set GOVERNOR_REQUIRE_PRIVILEGED=1 to make a skipped kernel test a failure.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => prereqs::ensure(),
        Command::BuildEbpf => build::ebpf().map(drop),
        Command::Build { release } => build::all(release).map(drop),
        // The daemon has said why it stopped; pass its exit status on and add nothing.
        Command::Run { release, args } => match run::run(release, &args) {
            Ok(code) => return std::process::ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Test { args } => test::run(&args),
        Command::Bench { quick, only } => bench::run(quick, only),
        Command::Fuzz { cases } => fuzz::run(cases),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One line with its causes, never a backtrace: these are a user's errors, not bugs.
        Err(e) => {
            // Each cause once: some name their cause in their own message too.
            let mut line = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !line.contains(&cause) {
                    line.push_str(if line.is_empty() { "" } else { ": " });
                    line.push_str(&cause);
                }
            }
            eprintln!("xtask: error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
