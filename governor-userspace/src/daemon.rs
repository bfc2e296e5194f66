//! `governor run`: wires config, cgroups, kernel, books, servers and tasks together and owns the
//! lifecycle. Order matters: bind the listeners (fail fast), load with pinned maps (adopting a
//! previous daemon's), seed and fill the maps, and only then attach, so no program runs against
//! a half-written policy.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use serde_json::json;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    accounting::{books::Books, state},
    agents::{AgentTable, Rules},
    audit::AuditLog,
    cgroup::{AgentsRoot, Cgroup2Mount},
    config::LoadedConfig,
    control,
    governor::{Core, Governor, unix_now},
    kernel::{Kernel, PinDir, decode_event},
    metrics,
    notify::{self, Delivery, Hooks},
};

/// How often the agents root is rescanned for new and removed agent cgroups.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the books are advanced against the kernel's spend (sooner on a budget event).
const ACCOUNTING_INTERVAL: Duration = Duration::from_millis(200);
/// How often the state is saved when nothing needs an immediate save.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How often each agent's allowed traffic is summarized in the audit log.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

pub async fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Handlers go in first: a SIGTERM during start-up (or as soon as the daemon is ready) is
    // then taken once the start is complete and stops it cleanly, never killing it half-way
    // with pins made and nothing to remove them. Each is created once; a stream made per loop
    // turn would miss a signal that arrives while another branch runs.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let config = match &config_path {
        Some(p) => LoadedConfig::from_file(p)?,
        None => LoadedConfig::default_config(),
    };
    // Refuse a policy that cannot compile before touching the kernel.
    config.compile()?;
    let readiness = crate::readiness::report::build(&config);
    // One line: the report itself is `governor check`'s to print.
    let mut failed: Vec<&str> = readiness
        .items
        .iter()
        .filter(|i| i.verdict == crate::readiness::Verdict::Fail)
        .map(|i| i.key.as_deref().unwrap_or(i.check.as_str()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    failed.retain(|key| seen.insert(*key));
    let report = format!("governor check --config {}", config.source_name.display());
    if failed.is_empty() {
        tracing::info!(
            pass = readiness.pass,
            warn = readiness.warn,
            "readiness check: ready ({report} for the report)"
        );
    } else {
        tracing::warn!(
            pass = readiness.pass,
            warn = readiness.warn,
            fail = readiness.fail,
            "readiness check: not ready; FAIL at {} ({report} for the report)",
            failed.join(", ")
        );
    }
    if config.config.daemon.require_ready && !readiness.ready {
        anyhow::bail!(
            "daemon.require_ready is set and the readiness check has {} FAIL(s); run `governor check --config {}` for the report",
            readiness.fail,
            config.source_name.display()
        );
    }
    let d = &config.config.daemon;

    let mount = Cgroup2Mount::discover()?;
    let root = AgentsRoot::open(&mount, std::path::Path::new(d.agents_root.get_ref()))?;
    let state_dir = d.state_dir.get_ref().clone();
    state::prepare_dir(&state_dir)?;
    // Before anything else is made: a second daemon on this state stops here.
    let mut instance = crate::instance::InstanceLock::state(&state_dir)?;
    let saved = state::load(&state_dir)?;
    if let Some(other) = saved.as_ref().and_then(|s| s.agents_root.as_deref())
        && other != root.path.display().to_string()
    {
        anyhow::bail!(
            "state_dir {} holds the state of the governor for agents root {other}, not {}: its agents' spend and \
             pauses are not this root's. Give this daemon its own daemon.state_dir",
            state_dir.display(),
            root.path.display()
        );
    }
    let mut audit =
        AuditLog::open(d.audit_log.get_ref(), *d.audit_max_bytes.get_ref() as u64, *d.audit_keep.get_ref() as u32)?;

    let groups = control::auth::AccessGroups::resolve(
        d.read_group.as_ref().map(|g| g.get_ref().as_str()),
        d.admin_group.as_ref().map(|g| g.get_ref().as_str()),
    )?;
    let socket_group = groups.read.as_ref().or(groups.admin.as_ref()).map(|(_, gid)| *gid);
    let mut control_socket = control::ControlSocket::bind(d.socket.get_ref(), socket_group)?;
    let control_listener = control_socket.take_listener();
    let metrics_addr: std::net::SocketAddr = d.metrics.get_ref().parse().expect("validated address");
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {metrics_addr} (daemon.metrics)"))?;
    let metrics_address = metrics_listener.local_addr()?;
    let dns_port = *config.config.dns.proxy_port.get_ref() as u16;
    let dns_listeners = crate::dns::proxy::bind_listeners(dns_port).with_context(|| {
        format!("cannot listen for agents' DNS on loopback port {dns_port} (dns.proxy_port; 0 picks a free one)")
    })?;

    let pins = PinDir::open(&root.path)?;
    // A start that fails before it is running takes back the pins it created (unpinned, its
    // links go with its descriptors); pins it adopted stay, and so do the links it switched to
    // its own programs, which enforce the same maps.
    let mut unpin_on_failure = Unpin(pins.created.then(|| pins.base.clone()));
    instance.add_pins(&pins.base)?;
    let mut kernel = Kernel::load(root.agent_level, *d.events_buffer_bytes.get_ref() as u32, pins)?;
    let adopted = kernel.adopted;
    let (mut maps, events) = kernel.take_maps()?;
    // Install the generation the adopted maps do not use, so the switch is clean (see agents.rs).
    let generation = maps.current_generation().map_or(0, |g| 1 - g);
    let policy = config.compile_generation(generation)?;
    let now = unix_now();
    let outbox = saved.as_ref().map(|s| s.outbox.clone()).unwrap_or_default();
    let mut books = Books::open(&policy.currency, policy.host.clone(), saved, adopted, now, &mut maps)?;
    let mut names = policy.dns.new_cache();
    let admitted = crate::dns::admit::adopt(&maps.dynamic_rules(), &mut names, &policy, crate::dns::boot_secs());
    let resolvers = crate::dns::resolvers(&policy.dns);
    if resolvers.is_empty() {
        tracing::warn!(
            "no DNS resolvers (dns.resolvers is unset and /etc/resolv.conf names none): agents' DNS is refused"
        );
    }
    maps.set_resolvers(&resolvers, dns_listeners.port)?;
    let rules = Rules { policy: &policy, admitted: &admitted };
    let mut agents = AgentTable::install(rules, d.unlisted_agents, &root, &mut maps, &mut books, adopted, now)?;
    agents.sync(&root, &mut maps, &mut books, now)?;
    maps.prepare_host_egress()?;
    kernel.attach(&root.path)?;
    let host_interfaces = policy.host_interfaces.clone().unwrap_or_else(crate::kernel::default_route_interfaces);
    kernel.attach_host_egress(&host_interfaces)?;

    audit.append(
        "daemon_start",
        None,
        json!({
            "version": crate::VERSION,
            "config": config.source_name.display().to_string(),
            "config_sha256": config.sha256(),
            "agents_root": root.path.display().to_string(),
            "adopted_pinned_state": adopted,
            "host_interfaces": host_interfaces,
            "dns_resolvers": resolvers,
            "dns_proxy_port": dns_listeners.port,
            "pid": std::process::id(),
        }),
    )?;
    audit.append(
        "policy_loaded",
        None,
        json!({ "config": config.source_name.display().to_string(), "sha256": config.sha256(), "agents": policy.agents.len(), "endpoints": policy.endpoints.len() }),
    )?;
    tracing::info!(
        version = crate::VERSION,
        config = %config.source_name.display(),
        sha256 = %config.sha256(),
        agents_root = %root.path.display(),
        agents = agents.iter().count(),
        adopted,
        host_interfaces = ?host_interfaces,
        dns_proxy_port = dns_listeners.port,
        resolvers = ?resolvers,
        socket = %d.socket.get_ref().display(),
        metrics = %metrics_address,
        "governor is running"
    );

    let hooks = Arc::new(Hooks::from_config(&config.config.notify));
    let (notify_tx, notify_rx) = mpsc::channel(notify::QUEUE);
    let (done_tx, done_rx) = mpsc::channel(notify::QUEUE);
    let governor = Arc::new(Governor {
        policy: std::sync::RwLock::new(Arc::new(policy)),
        config_path: config_path.clone(),
        known_endpoints: Default::default(),
        mount,
        root,
        metrics_address,
        state_dir,
        core: std::sync::Mutex::new(Core { maps, agents, books, names }),
        dns: crate::dns::proxy::DnsState {
            port: dns_listeners.port,
            resolvers: std::sync::RwLock::new(resolvers),
            stats: Default::default(),
        },
        events: Default::default(),
        audit: std::sync::Mutex::new(audit),
        tally: Default::default(),
        notify: hooks.any().then_some(notify_tx.clone()),
        host_interfaces,
        program_ids: kernel.program_ids(),
        groups,
        cgroup_paths: Default::default(),
        config: std::sync::RwLock::new(Arc::new(config)),
    });
    governor.learn_endpoints(&governor.policy());
    // Notices a previous daemon recorded but did not deliver go out first.
    {
        let mut tally = governor.tally();
        for body in outbox {
            if hooks.any() {
                let _ = notify_tx.try_send(body.clone());
                tally.outbox.push(body);
            }
        }
    }
    governor.tick(unix_now(), true)?;

    let budget_event = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(read_events(governor.clone(), events, budget_event.clone()));
    tasks.spawn(discover_agents(governor.clone()));
    tasks.spawn(account(governor.clone(), budget_event));
    tasks.spawn(control::serve(control_listener, governor.clone()));
    tasks.spawn(metrics::serve(metrics_listener, governor.clone()));
    tasks.spawn(crate::dns::proxy::serve(governor.clone(), dns_listeners));
    tasks.spawn(crate::dns::proxy::maintain(governor.clone()));
    tasks.spawn(async move {
        notify::deliver(hooks, notify_rx, done_tx).await;
        Ok(())
    });
    tasks.spawn(deliveries(governor.clone(), done_rx));
    // Only now may anyone find the socket: every program is attached and the maps are filled.
    control_socket.publish()?;
    unpin_on_failure.0 = None;
    tracing::info!(socket = %control_socket.path().display(), "control socket ready");
    // systemd's Type=notify: units ordered After=governor.service start only now.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not tell systemd the daemon is ready (NOTIFY_SOCKET)");
    }

    let result = loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "stopping"); break Ok(()) }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "stopping"); break Ok(()) }
            _ = hangup.recv() => {
                let g = governor.clone();
                let by = crate::control::auth::Caller { uid: None, gid: None, pid: None, user: Some("SIGHUP".into()) };
                match tokio::task::spawn_blocking(move || g.reload(&by)).await {
                    // A refusal is logged and audited by reload itself.
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "reload on SIGHUP failed"),
                }
            }
            Some(done) = tasks.join_next() => break match done {
                Ok(Ok(())) => Err(anyhow::anyhow!("a daemon task stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("a daemon task panicked: {e}")),
            },
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tasks.abort_all();
    // Last books and state before the programs go: nothing counted is lost.
    if let Err(e) = governor.tick(unix_now(), true) {
        tracing::error!(error = %e, "final accounting failed");
    }
    let on_exit = governor.config().config.daemon.on_daemon_exit;
    let programs = match on_exit {
        crate::config::OnDaemonExit::Detach => {
            kernel.detach();
            "detached"
        }
        crate::config::OnDaemonExit::Enforce => {
            // No proxy will answer on the port the kernel steers DNS to: stop steering, so agents'
            // DNS is refused (dns-resolver) rather than sent to a port someone else could take.
            if let Err(e) = governor.core().maps.set_resolvers(&[], governor.dns.port) {
                tracing::warn!(error = %e, "could not stop steering agents' DNS to the proxy's port");
            }
            drop(kernel);
            "left enforcing (on_daemon_exit = \"enforce\"); agents' DNS refused until a daemon is back"
        }
    };
    let _ = governor.audit("daemon_stop", None, json!({ "pid": std::process::id(), "programs": programs }));
    drop(control_socket);
    tracing::info!(programs, "governor stopped; maps stay pinned with the spend");
    result
}

/// Removes the pin directory it holds when dropped: the pins a failed start created.
struct Unpin(Option<PathBuf>);

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove the pins of a failed start");
        }
    }
}

/// Drains the ring buffer as events arrive. Losing events never loses counts: those live in
/// maps. A budget event wakes the accountant at once.
async fn read_events(
    governor: Arc<Governor>,
    ring: RingBuf<MapData>,
    budget_event: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the ring buffer) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the events ring buffer: {e}"))?;
    loop {
        let mut guard = fd.readable_mut().await.context("polling the events ring buffer")?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Ok(d) => {
                    tracing::debug!(agent_id = d.agent_id, pid = d.pid, destination = ?d.destination, verdict = %d.verdict, reason = %d.reason, "deny event");
                    if d.reason == "budget" {
                        budget_event.notify_one();
                    }
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

/// Advances the books on a timer, and at once when the kernel reports a budget event.
async fn account(governor: Arc<Governor>, budget_event: Arc<tokio::sync::Notify>) -> anyhow::Result<()> {
    let mut last_save = std::time::Instant::now();
    let mut last_summary = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ACCOUNTING_INTERVAL) => {}
            _ = budget_event.notified() => {}
        }
        let save = last_save.elapsed() >= SAVE_INTERVAL;
        if save {
            last_save = std::time::Instant::now();
        }
        let summarize = last_summary.elapsed() >= SUMMARY_INTERVAL;
        if summarize {
            last_summary = std::time::Instant::now();
        }
        let g = governor.clone();
        match tokio::task::spawn_blocking(move || {
            if summarize {
                g.summarize_traffic();
            }
            g.tick(unix_now(), save)
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "accounting tick failed; will retry"),
            Err(e) => tracing::error!(error = %e, "accounting tick panicked; will retry"),
        }
    }
}

/// Records the outcome of each delivery: counted, and a failure logged and audited.
async fn deliveries(governor: Arc<Governor>, mut done: mpsc::Receiver<Delivery>) -> anyhow::Result<()> {
    while let Some(d) = done.recv().await {
        {
            let mut tally = governor.tally();
            tally.outbox.retain(|b| b["id"] != d.id.as_str());
            if d.failures.is_empty() {
                tally.notifications.sent += 1;
            } else {
                tally.notifications.failed += 1;
            }
        }
        for (hook, error) in &d.failures {
            tracing::error!(notice = %d.id, hook = %hook, error = %error, "notification could not be delivered");
            let _ =
                governor.audit("notification_failed", None, json!({ "notice": d.id, "hook": hook, "error": error }));
        }
        governor.save_now();
    }
    Ok(())
}

/// Rescans the agents root so new child cgroups become agents and removed ones are forgotten.
async fn discover_agents(governor: Arc<Governor>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = {
            let mut core = governor.core();
            let Core { maps, agents, books, .. } = &mut *core;
            agents.sync(&governor.root, maps, books, unix_now())
        };
        match result {
            Ok(changed) if !changed.is_empty() => tracing::info!(?changed, "agent cgroups changed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rescanning the agents root failed; will retry"),
        }
    }
}
