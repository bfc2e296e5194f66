//! Command-line interface: argument types here, one file per command group.

mod audit;
mod check;
mod control;
mod detach;
mod events;
mod exec;
mod spend;
mod status;
mod top;

pub use audit::verify as audit_verify;
pub use check::{run as check, verify as check_verify};
pub use control::{reload, run as control};
pub use detach::run as detach;
pub use events::run as events;
pub use exec::run as exec;
pub use top::run as top;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

const DEFAULT_SOCKET: &str = "/run/governor/governor.sock";

#[derive(Debug, Parser)]
#[command(
    name = "governor",
    version = crate::VERSION,
    about = "Kernel-enforced network and spend boundaries for autonomous AI agents",
    long_about = "governor puts each agent (a cgroup v2 directory under the agents root) behind eBPF \
                  programs that count its traffic per endpoint, charge it against a budget, and refuse \
                  what its allowlist, limits, budget or an operator forbid.\n\nRun the daemon as root \
                  with `governor run`; watch with `governor status`, `spend`, `events` and `top`; stop \
                  an agent with `governor pause` or `kill`; check a configuration before it goes live \
                  with `governor check`.",
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
        after_help = "Examples:\n  sudo governor run                       # embedded default: a sandbox, nothing allowed\n  sudo governor run --config examples/governor.toml\n\nLog verbosity follows RUST_LOG (default: info)."
    )]
    Run {
        /// Configuration file (TOML). Without it, the embedded default: each child cgroup of
        /// <cgroup2>/governor.agents/ an agent with no allowlist (every connection refused).
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
    /// Say whether an agent may connect to a destination now, and why (read from the kernel's maps).
    #[command(
        after_help = "Examples:\n  sudo governor explain --agent scanner 203.0.113.7:443\n  sudo governor explain --agent scanner --protocol udp '[2001:db8::53]:53'\n  sudo governor explain --agent scanner 203.0.113.7:443 --json\n\nExit status: 0 if allowed (or observe mode), 3 if a connect would be refused."
    )]
    Explain {
        /// The agent, by name.
        #[arg(long, value_name = "NAME")]
        agent: String,
        /// Destination IP:PORT (IPv6 in brackets).
        #[arg(value_name = "IP:PORT")]
        destination: std::net::SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: ExplainProtocol,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
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
    /// Pause an agent (or --all): its connects fail with EPERM and its connections carry no
    /// payload until `governor resume`. Returns once the kernel enforces it.
    #[command(
        after_help = "Examples:\n  sudo governor pause scanner --reason \"runaway loop\"\n  sudo governor pause --all"
    )]
    Pause {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        agent: Option<String>,
        #[arg(long)]
        all: bool,
        /// Why: recorded in the audit log and shown in status.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Resume an agent (or --all) from a pause or a pending checkpoint. A budget suspension is
    /// lifted only by --budget AGENT (for the rest of the window), a raised budget, or a new window.
    #[command(
        after_help = "Examples:\n  sudo governor resume scanner\n  sudo governor resume --all\n  sudo governor resume --budget scanner   # past its ceiling until the window rolls"
    )]
    Resume {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        agent: Option<String>,
        /// Every paused agent.
        #[arg(long)]
        all: bool,
        /// Lift AGENT's budget suspension instead: its ceiling is not enforced until the window
        /// rolls or the limit changes. Audited as budget_resume.
        #[arg(long, conflicts_with = "all")]
        budget: bool,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Pause an agent, then end every process in its cgroup (cgroup.kill).
    #[command(after_help = "Example:\n  sudo governor kill scanner")]
    Kill {
        agent: String,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Acknowledge an agent's pending checkpoint, letting it go on.
    #[command(after_help = "Example:\n  sudo governor ack scanner --note \"reviewed the last hour's calls\"")]
    Ack {
        agent: String,
        /// Recorded with the acknowledgement in the audit log.
        #[arg(long)]
        note: Option<String>,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Query the audit log through the daemon; --follow streams new records as they happen.
    #[command(
        after_help = "Examples:\n  sudo governor events --since 10m\n  sudo governor events --agent scanner --kind denied --follow"
    )]
    Events {
        #[arg(long)]
        agent: Option<String>,
        /// Record kind: denied, pause, resume, ack, kill, threshold_crossed, suspended, ...
        #[arg(long)]
        kind: Option<String>,
        /// A duration back from now (90s, 10m, 2h, 1d, 1w) or an RFC 3339 time
        /// (2026-11-26T09:00:00Z). Without it, every record; with --follow, none from before.
        #[arg(long)]
        since: Option<String>,
        /// Stream new records as they are written (from now on, or from --since).
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// The audit log's own commands.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A live view of every agent, refreshed every second (Ctrl-C to leave).
    Top {
        /// Stop after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Start COMMAND inside an agent's cgroup from its first instruction, as an unprivileged user.
    #[command(
        after_help = "Examples:\n  sudo governor exec --agent scanner --user agent -- python3 agent.py\n  sudo governor exec --agent scanner -- curl https://api.example.com/   # as the sudo caller"
    )]
    Exec {
        #[arg(long, value_name = "NAME")]
        agent: String,
        /// User (name or uid) to run as; default: the user who ran sudo.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Allow running the agent as root (root can leave its cgroup and unload the programs).
        #[arg(long)]
        allow_root: bool,
        /// Start an agent the configuration does not name, in a new cgroup under the agents
        /// root; the daemon governs it as an unlisted agent (daemon.unlisted_agents). Without
        /// this, an unknown name is refused, so a typo cannot start an ungoverned agent.
        #[arg(long)]
        unlisted: bool,
        /// Pass descriptors 3 to 3+N-1 on to the agent (as systemd-run --preserve-fds); every
        /// other descriptor above 2 is closed, so the agent inherits no socket of the launcher.
        #[arg(long, value_name = "N", default_value_t = 0)]
        preserve_fds: u32,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Take governor off an agents root: unpin its program links (the programs stop at once) and
    /// remove its pinned maps, under every map layout version, audited. Refused while a daemon
    /// serves the root. The spend stays in daemon.state_dir for a later start.
    #[command(
        after_help = "Examples:\n  sudo governor detach --config /etc/governor/governor.toml --dry-run\n  sudo governor detach --config /etc/governor/governor.toml"
    )]
    Detach {
        /// The configuration whose agents root (and audit log) to use; without it, the embedded
        /// default's.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Say what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-read the daemon's configuration file and apply it atomically (as SIGHUP does); a
    /// configuration with any error is refused and the running policy stays.
    #[command(after_help = "Example:\n  sudo governor reload")]
    Reload {
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// The readiness gate: does this configuration give every agent a spend ceiling, oversight,
    /// boundaries and an audit trail? PASS/WARN/FAIL per item with the key to change; exit 1 on
    /// any FAIL. Keep the report (--format markdown --output FILE) as the deployment's artifact.
    #[command(
        after_help = "Examples:\n  governor check --config /etc/governor/governor.toml\n  governor check --config prod.toml --format markdown --output readiness.md"
    )]
    Check {
        #[arg(long, short, value_name = "FILE", required_unless_present = "verify")]
        config: Option<PathBuf>,
        /// Also prove it on this host: ask the running daemon (through daemon.socket), read the
        /// programs in effect on every agent cgroup back from the kernel, and look for agent
        /// processes holding dangerous capabilities; then start a private daemon with a probe
        /// agent and prove a forbidden connect is refused, an allowed one counted, a tiny budget
        /// suspends, pause refuses and the denial is queryable. Needs root.
        #[arg(long)]
        live: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        /// Write the report here instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Sign the report (needs --output) with this OpenSSH ed25519 private key, into
        /// FILE.sig: an SSH signature (namespace governor-readiness) that `governor check
        /// --verify` and `ssh-keygen -Y verify` accept.
        #[arg(long, value_name = "KEY", conflicts_with = "verify")]
        sign: Option<PathBuf>,
        /// Instead of checking, verify a signed report: REPORT.sig against --key, and, with
        /// --config, that the report was made for the configuration this host has now.
        #[arg(long, value_name = "REPORT", requires = "key")]
        verify: Option<PathBuf>,
        /// The signer's OpenSSH public key, for --verify.
        #[arg(long, value_name = "PUBKEY")]
        key: Option<PathBuf>,
    },
    /// Used by `check --live`'s probe: connect to ADDR over TCP; exit 0 connected, 2 refused
    /// with EPERM (governor's answer), 1 anything else.
    #[command(hide = true)]
    ProbeConnect { addr: std::net::SocketAddr },
    /// Used by `check --live`'s probe: ask RESOLVER for NAME's A records over UDP; exit 0 with
    /// an answer (printed), 2 refused with EPERM, 1 anything else.
    #[command(hide = true)]
    ProbeResolve { name: String, resolver: std::net::IpAddr },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  governor completions bash > /etc/bash_completion.d/governor\n  governor completions zsh > \"${fpath[1]}/_governor\""
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit log (and its rotated files); exit 1 on any break.
    #[command(
        after_help = "Examples:\n  sudo governor audit verify\n  governor audit verify /var/log/governor/audit.jsonl"
    )]
    Verify {
        /// The log; default: the running daemon's (also compared with its in-memory head).
        file: Option<PathBuf>,
        #[arg(long, env = "GOVERNOR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExplainProtocol {
    Tcp,
    Udp,
}

/// `governor explain`: prints the daemon's explanation; exit status 3 when a connect would be refused.
pub async fn explain(
    agent: &str,
    destination: std::net::SocketAddr,
    protocol: ExplainProtocol,
    json: bool,
    socket: PathBuf,
) -> anyhow::Result<bool> {
    let protocol = match protocol {
        ExplainProtocol::Tcp => "tcp",
        ExplainProtocol::Udp => "udp",
    };
    let path = format!(
        "/v1/explain?agent={}&destination={}&protocol={protocol}",
        query_escape(agent),
        query_escape(&destination.to_string())
    );
    let e: crate::explain::Explanation = crate::control::Client::new(&socket).get_json(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        let reason = e.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let endpoint = e.endpoint.as_deref().map(|ep| format!(", endpoint {ep}")).unwrap_or_default();
        println!("{} -> {}/{}: {}{reason}{endpoint}", e.agent, e.destination, e.protocol, e.verdict);
        for line in &e.because {
            println!("  - {line}");
        }
    }
    Ok(e.verdict != "denied")
}

/// Percent-encodes everything but unreserved characters, for a query string value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// An error and its causes as one line, each cause once: error types that name their cause in
/// their own message (as `std::io::Error`'s wrappers often do) would otherwise say it twice.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod error_line_tests {
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = anyhow::Error::new(io).context("cannot create pin directory /x: Operation not permitted (os error 1)");
        assert_eq!(super::error_line(&e), "cannot create pin directory /x: Operation not permitted (os error 1)");
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT)).context("cannot open /y");
        assert_eq!(super::error_line(&e), "cannot open /y: No such file or directory (os error 2)");
    }
}

/// Every `governor` command and flag the README names exists, so the README cannot promise a
/// command line that `--help` does not know.
#[cfg(test)]
mod readme_tests {
    use clap::CommandFactory as _;

    /// The words after `governor` on each README line or inline code span that runs it.
    fn invocations(readme: &str) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        for line in readme.lines() {
            let spans: Vec<&str> =
                if line.contains('`') { line.split('`').skip(1).step_by(2).collect() } else { vec![line] };
            for span in spans {
                for (i, _) in span.match_indices("governor ") {
                    let before = &span[..i];
                    // `governor` as a program: at the start, after sudo, a path or `$`.
                    if !(before.trim().is_empty()
                        || before.ends_with("sudo ")
                        || before.ends_with('/')
                        || before.ends_with('$')
                        || before.ends_with("; ")
                        || before.ends_with("&& "))
                    {
                        continue;
                    }
                    let words: Vec<String> = span[i + "governor ".len()..]
                        .split_whitespace()
                        .take_while(|w| !w.starts_with('#') && !["|", "||", "&&", ";", ">", "2>&1"].contains(w))
                        .map(str::to_owned)
                        .collect();
                    if !words.is_empty() {
                        found.push(words);
                    }
                }
            }
        }
        found
    }

    /// The first command or flag in `readme` that the CLI does not know.
    fn unknown(readme: &str) -> Result<usize, String> {
        let cli = super::Cli::command();
        let calls = invocations(readme);
        for words in &calls {
            // `pause|resume` names two commands.
            for name in words[0].split('|') {
                let Some(mut cmd) = cli.find_subcommand(name) else {
                    // Prose ("governor is running") has no flags; a command line with flags must
                    // name a real command.
                    if words.iter().any(|w| w.starts_with("--")) {
                        return Err(format!("`governor {name}` is no command: {words:?}"));
                    }
                    continue;
                };
                let mut rest = &words[1..];
                if let Some(sub) = rest.first().and_then(|w| cmd.find_subcommand(w)) {
                    cmd = sub;
                    rest = &rest[1..];
                }
                for w in rest.iter().take_while(|w| w.as_str() != "--") {
                    let Some(flag) = w.trim_start_matches('[').strip_prefix("--") else { continue };
                    let flag: String = flag.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                    if flag.is_empty() || flag == "help" || flag == "version" {
                        continue;
                    }
                    if !cmd.get_arguments().any(|a| a.get_long() == Some(flag.as_str())) {
                        return Err(format!("`governor {name} ... --{flag}`: {name} has no such flag ({words:?})"));
                    }
                }
            }
        }
        Ok(calls.len())
    }

    #[test]
    fn every_command_and_flag_the_readme_names_exists() {
        let n = unknown(include_str!("../../../README.md")).unwrap_or_else(|e| panic!("README: {e}"));
        assert!(n > 30, "the README names governor commands: {n}");
        assert!(unknown("run `sudo governor status --bogus` now").is_err());
        assert!(unknown("$governor exec --agent a --unlisted -- curl --fail x").is_ok());
        assert!(unknown("governor nosuch --flag").is_err());
    }
}
