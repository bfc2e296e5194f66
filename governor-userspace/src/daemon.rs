//! `governor run`: wires config, cgroups, kernel, servers and tasks together and owns the
//! lifecycle. Order matters: bind the listeners (fail fast), load, fill the maps, and only
//! then attach, so no program runs against a half-written policy.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    agents::AgentTable,
    cgroup::{AgentsRoot, Cgroup2Mount},
    config::LoadedConfig,
    control,
    governor::Governor,
    kernel::{Kernel, decode_event},
    metrics, policy,
};

/// How often the agents root is rescanned for new and removed agent cgroups.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(p) => LoadedConfig::from_file(p)?,
        None => LoadedConfig::default_config(),
    };
    let policy = policy::compile(&config.config)
        .with_context(|| format!("config {}", config.source_name.display()))?;
    let d = &config.config.daemon;

    let mount = Cgroup2Mount::discover()?;
    let root = AgentsRoot::open(&mount, std::path::Path::new(d.agents_root.get_ref()))?;

    let control_listener = control::bind(d.socket.get_ref())?;
    let metrics_addr: std::net::SocketAddr =
        d.metrics.get_ref().parse().expect("validated address");
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {metrics_addr} (daemon.metrics)"))?;
    let metrics_address = metrics_listener.local_addr()?;

    let mut kernel = Kernel::load(root.agent_level)?;
    let (mut maps, events) = kernel.take_maps()?;
    let mut agents = AgentTable::install(&policy, d.unlisted_agents, &root, &mut maps)?;
    agents.sync(&root, &mut maps)?;
    kernel.attach(&root.path)?;

    tracing::info!(
        version = crate::VERSION,
        config = %config.source_name.display(),
        sha256 = %config.sha256(),
        agents_root = %root.path.display(),
        agents = agents.iter().count(),
        socket = %d.socket.get_ref().display(),
        metrics = %metrics_address,
        "governor is running"
    );

    let socket_path = d.socket.get_ref().clone();
    let governor = Arc::new(Governor {
        policy,
        mount,
        root,
        metrics_address,
        maps: std::sync::Mutex::new(maps),
        agents: std::sync::Mutex::new(agents),
        events: Default::default(),
        config,
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(read_events(governor.clone(), events));
    tasks.spawn(discover_agents(governor.clone()));
    tasks.spawn(control::serve(control_listener, governor.clone()));
    tasks.spawn(metrics::serve(metrics_listener, governor.clone()));

    let result = tokio::select! {
        signal = shutdown_signal() => { tracing::info!(signal, "stopping"); Ok(()) }
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a daemon task stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a daemon task panicked: {e}")),
        },
    };
    tasks.abort_all();
    // Detach every program before saying goodbye; the links die with the object.
    drop(kernel);
    if let Err(e) = std::fs::remove_file(&socket_path) {
        tracing::warn!(path = %socket_path.display(), error = %e, "could not remove the control socket");
    }
    tracing::info!("programs detached; governor stopped");
    result
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Drains the ring buffer as events arrive. Losing events never loses counts: those live in maps.
async fn read_events(governor: Arc<Governor>, ring: RingBuf<MapData>) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the ring buffer) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the events ring buffer: {e}"))?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .context("polling the events ring buffer")?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Ok(d) => {
                    tracing::debug!(agent_id = d.agent_id, pid = d.pid, destination = %d.destination, verdict = %d.verdict, reason = %d.reason, "deny event");
                    governor.events().push(d);
                }
                Err(e) => {
                    governor.events().malformed += 1;
                    tracing::warn!(error = %e, "malformed ring buffer record rejected");
                }
            }
        }
        guard.clear_ready();
    }
}

/// Rescans the agents root so new child cgroups become agents and removed ones are forgotten.
async fn discover_agents(governor: Arc<Governor>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = {
            let mut maps = governor.maps();
            governor.agents().sync(&governor.root, &mut maps)
        };
        match result {
            Ok(changed) if !changed.is_empty() => tracing::info!(?changed, "agent cgroups changed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rescanning the agents root failed; will retry"),
        }
    }
}
