//! The `governor` binary: parse the command line and dispatch.

use clap::Parser as _;
use governor::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "governor",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::ProbeConnect { addr } => {
            return match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)) {
                Ok(_) => std::process::ExitCode::SUCCESS,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::process::ExitCode::from(2),
                Err(e) => {
                    eprintln!("governor probe-connect {addr}: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Command::ProbeResolve { name, resolver } => {
            return std::process::ExitCode::from(governor::readiness::probe::resolve_command(&name, resolver) as u8);
        }
        Command::Version => {
            println!("governor {}", governor::VERSION);
            Ok(())
        }
        Command::Status { json, host, socket } => {
            current_thread().and_then(|rt| rt.block_on(governor::cli::status(json, host, socket)))
        }
        Command::Pause { agent, all: _, reason, socket } => current_thread().and_then(|rt| {
            rt.block_on(governor::cli::control("pause", agent.as_deref(), reason.as_deref(), None, &socket))
        }),
        Command::Resume { agent, all: _, budget, socket } => current_thread().and_then(|rt| {
            let action = if budget { "resume-budget" } else { "resume" };
            rt.block_on(governor::cli::control(action, agent.as_deref(), None, None, &socket))
        }),
        Command::Kill { agent, socket } => current_thread()
            .and_then(|rt| rt.block_on(governor::cli::control("kill", Some(&agent), None, None, &socket))),
        Command::Ack { agent, note, socket } => current_thread()
            .and_then(|rt| rt.block_on(governor::cli::control("ack", Some(&agent), None, note.as_deref(), &socket))),
        Command::Events { agent, kind, since, follow, json, socket } => current_thread().and_then(|rt| {
            rt.block_on(governor::cli::events(
                agent.as_deref(),
                kind.as_deref(),
                since.as_deref(),
                follow,
                json,
                &socket,
            ))
        }),
        Command::Audit(governor::cli::AuditCommand::Verify { file, socket }) => {
            current_thread().and_then(|rt| rt.block_on(governor::cli::audit_verify(file, &socket)))
        }
        Command::Check { config, live, format, output, sign, verify, key } => match (verify, config) {
            (Some(report), config) => {
                governor::cli::check_verify(&report, key.as_deref().expect("clap requires --key"), config.as_deref())
            }
            (None, Some(config)) => {
                match governor::cli::check(&config, live, format, output.as_deref(), sign.as_deref()) {
                    Ok(true) => Ok(()),
                    Ok(false) => return std::process::ExitCode::FAILURE,
                    Err(e) => Err(e),
                }
            }
            (None, None) => {
                Err(anyhow::anyhow!("governor check needs --config FILE (or --verify REPORT --key PUBKEY)"))
            }
        },
        Command::Detach { config, dry_run } => governor::cli::detach(config.as_deref(), dry_run),
        Command::Reload { socket } => current_thread().and_then(|rt| rt.block_on(governor::cli::reload(&socket))),
        Command::Top { count, socket } => {
            current_thread().and_then(|rt| rt.block_on(governor::cli::top(count, &socket)))
        }
        Command::Exec { agent, user, allow_root, unlisted, preserve_fds, socket, command } => {
            match governor::cli::exec(&agent, user.as_deref(), allow_root, unlisted, preserve_fds, &socket, &command) {
                Ok(code) => return std::process::ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => Err(e),
            }
        }
        Command::Explain { agent, destination, protocol, json, socket } => current_thread().and_then(|rt| {
            if rt.block_on(governor::cli::explain(&agent, destination, protocol, json, socket))? {
                Ok(())
            } else {
                std::process::exit(3)
            }
        }),
        Command::Spend { agent, by, json, socket } => {
            current_thread().and_then(|rt| rt.block_on(governor::cli::spend(agent, by, json, socket)))
        }
        Command::Run { config } => {
            init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(Into::into)
                .and_then(|rt| rt.block_on(governor::daemon::run(config)))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("governor: error: {}", governor::cli::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a file or the journal would keep the escape codes as text.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
