//! Command-line interface: argument types here, one file per command group.

mod spend;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

const DEFAULT_SOCKET: &str = "/run/governor/governor.sock";

#[derive(Debug, Parser)]
#[command(
    name = "governor",
    version = crate::VERSION,
    about = "Kernel-enforced network and spend boundaries for autonomous AI agents",
    long_about = "governor puts each agent (a cgroup v2 directory under the agents root) behind eBPF \
                  programs that count its traffic per endpoint and refuse connections its allowlist \
                  does not permit.\n\nRun the daemon as root with `governor run`; query it with \
                  `governor status`.",
    after_help = "Examples:\n  sudo governor run --config /etc/governor/governor.toml\n  sudo governor status\n  sudo governor status --json | jq '.agents[].totals'"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (as root): load the programs, attach them to the agents root, serve status and metrics.
    #[command(
        after_help = "Examples:\n  sudo governor run                       # embedded default: observe every agent\n  sudo governor run --config examples/governor.toml\n\nLog verbosity follows RUST_LOG (default: info)."
    )]
    Run {
        /// Configuration file (TOML). Without it, the embedded default: observe-only over
        /// <cgroup2>/governor.agents/, each child cgroup an agent.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show every agent with its counters, read live from the daemon.
    #[command(
        after_help = "Examples:\n  sudo governor status\n  sudo governor status --host\n  sudo governor status --json"
    )]
    Status {
        /// Print the daemon's full status as JSON.
        #[arg(long)]
        json: bool,
        /// Show the host's egress bill by cgroup (every process, agents or not) instead.
        #[arg(long)]
        host: bool,
        /// The daemon's control socket.
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Show what each agent spent: window spend, total, limit, and optionally by endpoint.
    #[command(
        after_help = "Examples:\n  sudo governor spend\n  sudo governor spend --agent scanner --by endpoint\n  sudo governor spend --json"
    )]
    Spend {
        /// Only this agent.
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// Break each agent's spend down by endpoint.
        #[arg(long, value_enum, value_name = "WHAT")]
        by: Option<SpendBy>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket.
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SpendBy {
    Endpoint,
}

pub async fn status(json: bool, host: bool, socket: PathBuf) -> anyhow::Result<()> {
    status::run(json, host, &socket).await
}

pub async fn spend(agent: Option<String>, by: Option<SpendBy>, json: bool, socket: PathBuf) -> anyhow::Result<()> {
    spend::run(agent.as_deref(), by, json, &socket).await
}
