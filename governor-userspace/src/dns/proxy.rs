//! The proxy agents' DNS is redirected to: UDP and TCP on one port, bound to the loopback
//! device only. Replies leave from the exact address the query was sent to (IP_PKTINFO), which
//! is what the agent's socket is connected to; the kernel shows the agent the resolver's
//! address instead.

use std::{
    collections::BTreeMap,
    io::{IoSlice, IoSliceMut},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex},
};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, bind,
    listen, recvmsg, sendmsg, setsockopt, socket, sockopt,
};
use tokio::{io::unix::AsyncFd, sync::Semaphore};

use super::{
    admit::{self, Outcome},
    decode_proxy_addr, message, upstream,
};
use crate::governor::Governor;

/// Queries being answered at once; more are dropped (UDP; the client retries) or wait (TCP).
const IN_FLIGHT: usize = 256;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// TCP clients at once.
const TCP_CLIENTS: usize = 128;
/// One agent's share of those: a hog fills its own share, not everyone's.
const AGENT_IN_FLIGHT: usize = 32;
const AGENT_TCP_CLIENTS: usize = 16;
/// The share of whatever sends to the proxy without an agent's proxy address (a local process).
const OTHER_IN_FLIGHT: usize = 8;
const OTHER_TCP_CLIENTS: usize = 4;
/// The key of that share.
const NOT_AN_AGENT: u32 = u32::MAX;

/// Each agent's share of the proxy, by the slot its proxy address names, made on first use.
#[derive(Default)]
struct Shares {
    in_flight: Mutex<std::collections::HashMap<u32, Arc<Semaphore>>>,
    tcp: Mutex<std::collections::HashMap<u32, Arc<Semaphore>>>,
}

impl Shares {
    fn of(
        map: &Mutex<std::collections::HashMap<u32, Arc<Semaphore>>>,
        slot: u32,
        agent: usize,
        other: usize,
    ) -> Arc<Semaphore> {
        let mut m = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(slot)
            .or_insert_with(|| Arc::new(Semaphore::new(if slot == NOT_AN_AGENT { other } else { agent })))
            .clone()
    }

    fn in_flight(&self, slot: u32) -> Arc<Semaphore> {
        Self::of(&self.in_flight, slot, AGENT_IN_FLIGHT, OTHER_IN_FLIGHT)
    }

    fn tcp(&self, slot: u32) -> Arc<Semaphore> {
        Self::of(&self.tcp, slot, AGENT_TCP_CLIENTS, OTHER_TCP_CLIENTS)
    }
}

/// The slot a proxy address names, or `NOT_AN_AGENT`.
fn slot_of(local: Ipv4Addr) -> u32 {
    decode_proxy_addr(local).map_or(NOT_AN_AGENT, |(_, slot)| slot)
}

/// Counts a dropped query under the agent that sent it.
fn count_drop(g: &Governor, slot: u32) {
    let name = (slot != NOT_AN_AGENT).then(|| g.core().agents.by_slot(slot).map(|a| a.name.clone())).flatten();
    g.dns.count(name.as_deref().unwrap_or("(not an agent)"), "dropped");
}

/// What the proxy did, by agent and result, for metrics and status.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// (agent, result) -> queries. Results: admitted, not-allowed, servfail, dropped.
    pub queries: BTreeMap<(String, &'static str), u64>,
    pub admitted_addresses: u64,
}

/// The proxy's fixed facts and counters, shared with the rest of the daemon.
pub struct DnsState {
    pub port: u16,
    /// By index, as written to the kernel's RESOLVERS map.
    pub resolvers: std::sync::RwLock<Vec<IpAddr>>,
    pub stats: Mutex<DnsStats>,
}

impl DnsState {
    pub fn count(&self, agent: &str, result: &'static str) {
        let mut s = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *s.queries.entry((agent.to_owned(), result)).or_default() += 1;
    }

    fn resolver(&self, index: usize) -> Option<IpAddr> {
        self.resolvers.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(index).copied()
    }
}

/// The two listening sockets.
pub struct Listeners {
    pub port: u16,
    udp: OwnedFd,
    tcp: OwnedFd,
}

/// Where `bind_listeners(0)` looks first: ports below 1024, which no unprivileged process can
/// bind, so while the daemon is down nobody but root can take the port the kernel still steers
/// agents' DNS to and answer in the proxy's place.
const PRIVILEGED_PORTS: std::ops::RangeInclusive<u16> = 600..=1023;

/// Binds UDP and TCP on `port` of every loopback address (0: a free port, the same for both,
/// below 1024 when one is free).
pub fn bind_listeners(port: u16) -> std::io::Result<Listeners> {
    if port == 0 {
        let span = PRIVILEGED_PORTS.end() - PRIVILEGED_PORTS.start() + 1;
        let offset = (std::process::id() % u32::from(span)) as u16;
        for i in 0..span {
            let candidate = PRIVILEGED_PORTS.start() + (offset + i) % span;
            match try_bind(candidate) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(
            "no free port below 1024 for the DNS proxy; taking an ephemeral one, which others may bind while the daemon is down"
        );
    }
    let mut last = None;
    for _ in 0..20 {
        match try_bind(port) {
            Ok(l) => return Ok(l),
            // The free UDP port was taken for TCP: try another.
            Err(e) if port == 0 && e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

fn try_bind(port: u16) -> std::io::Result<Listeners> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let udp = socket(AddressFamily::Inet, SockType::Datagram, flags, None)?;
    setsockopt(&udp, sockopt::BindToDevice, &std::ffi::OsString::from("lo"))?;
    setsockopt(&udp, sockopt::Ipv4PacketInfo, &true)?;
    bind(udp.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
    let port = nix::sys::socket::getsockname::<SockaddrIn>(udp.as_raw_fd())?.port();
    let tcp = socket(AddressFamily::Inet, SockType::Stream, flags, None)?;
    setsockopt(&tcp, sockopt::BindToDevice, &std::ffi::OsString::from("lo"))?;
    setsockopt(&tcp, sockopt::ReuseAddr, &true)?;
    bind(tcp.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
    listen(&tcp, Backlog::new(128).expect("valid backlog"))?;
    Ok(Listeners { port, udp, tcp })
}

pub async fn serve(governor: Arc<Governor>, listeners: Listeners) -> anyhow::Result<()> {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let tcp = std::net::TcpListener::from(listeners.tcp);
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    // SAFETY: the AsyncFd owns the socket, so the fd stays open and unchanged while registered.
    let udp = unsafe { AsyncFd::register(listeners.udp) }
        .map_err(|e| anyhow::anyhow!("cannot poll the DNS proxy socket: {e}"))?;
    let udp = Arc::new(udp);
    let shares = Arc::new(Shares::default());
    tokio::select! {
        r = serve_udp(governor.clone(), udp, in_flight.clone(), shares.clone()) => r,
        r = serve_tcp(governor, tcp, in_flight, shares) => r,
    }
}

async fn serve_udp(
    governor: Arc<Governor>,
    sock: Arc<AsyncFd<OwnedFd>>,
    in_flight: Arc<Semaphore>,
    shares: Arc<Shares>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; upstream::MAX_MESSAGE];
    loop {
        let mut guard = sock.readable().await?;
        let received = guard.try_io(|fd| {
            let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<SockaddrIn>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)?;
            let local = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
                ControlMessageOwned::Ipv4PacketInfo(pi) => Some(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))),
                _ => None,
            });
            Ok((msg.bytes, msg.address, local))
        });
        let (n, peer, local) = match received {
            Err(_would_block) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "DNS proxy: receive failed");
                continue;
            }
            Ok(Ok(r)) => r,
        };
        let (Some(peer), Some(local)) = (peer, local) else { continue };
        // The agent's own share first, then the proxy's: a hog is dropped at its share.
        let slot = slot_of(local);
        let Ok(share) = shares.in_flight(slot).try_acquire_owned() else {
            count_drop(&governor, slot);
            continue;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            count_drop(&governor, slot);
            continue;
        };
        let query = buf[..n].to_vec();
        let (g, sock) = (governor.clone(), sock.clone());
        tokio::spawn(async move {
            let _permits = (share, permit);
            if let Some(reply) = answer(&g, local, &query, false).await {
                let pi = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from(local).to_be() },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let cmsg = [ControlMessage::Ipv4PacketInfo(&pi)];
                let sent =
                    sendmsg(sock.as_raw_fd(), &[IoSlice::new(&reply)], &cmsg, MsgFlags::MSG_DONTWAIT, Some(&peer));
                if let Err(e) = sent {
                    tracing::warn!(error = %e, peer = %peer, "DNS proxy: reply not sent");
                }
            }
        });
    }
}

async fn serve_tcp(
    governor: Arc<Governor>,
    listener: tokio::net::TcpListener,
    in_flight: Arc<Semaphore>,
    shares: Arc<Shares>,
) -> anyhow::Result<()> {
    let clients = Arc::new(Semaphore::new(TCP_CLIENTS));
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::control::back_off("DNS proxy (TCP)", &e).await;
                continue;
            }
        };
        let Ok(SocketAddr::V4(local)) = stream.local_addr() else { continue };
        let slot = slot_of(*local.ip());
        let Ok(share) = shares.tcp(slot).try_acquire_owned() else {
            count_drop(&governor, slot);
            continue;
        };
        let Ok(client) = clients.clone().try_acquire_owned() else {
            count_drop(&governor, slot);
            continue;
        };
        let (g, in_flight, agent_in_flight) = (governor.clone(), in_flight.clone(), shares.in_flight(slot));
        tokio::spawn(async move {
            let _clients = (share, client);
            loop {
                let query = match tokio::time::timeout(TCP_IDLE, upstream::read_framed(&mut stream)).await {
                    Ok(Ok(Some(q))) => q,
                    _ => return,
                };
                let Ok(_share) = agent_in_flight.acquire().await else { return };
                let Ok(_permit) = in_flight.acquire().await else { return };
                let Some(reply) = answer(&g, *local.ip(), &query, true).await else { return };
                if upstream::write_framed(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The reply for a query an agent sent to proxy address `local`: the resolver's answer once
/// its addresses are admitted, SERVFAIL if they could not be, or None to stay silent (not a
/// proxy address, or not a DNS query).
async fn answer(g: &Arc<Governor>, local: Ipv4Addr, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let (index, slot) = decode_proxy_addr(local)?;
    let agent = g.core().agents.by_slot(slot).map(|a| (a.id, a.name.clone()));
    let Some((agent_id, agent_name)) = agent else {
        g.dns.count("(unknown)", "servfail");
        return message::servfail(query);
    };
    let fail = |why: String| {
        tracing::warn!(agent = %agent_name, why, "DNS proxy: SERVFAIL");
        g.dns.count(&agent_name, "servfail");
        message::servfail(query)
    };
    let Ok(q) = message::question(query) else {
        g.dns.count(&agent_name, "dropped");
        return None;
    };
    // Only what an allowed name's lookup needs leaves the host: a name the agent may not reach,
    // or a query of another shape, is refused here in enforce mode (DNS is a channel out, and
    // the upstream would carry whatever the name spells). Observe mode relays and counts.
    let (allowed, enforce) = {
        let core = g.core();
        let policy = g.policy();
        let enforce = core.agents.get(agent_id).is_none_or(|a| a.mode == crate::config::Mode::Enforce);
        let allowed = policy.agents.iter().find(|a| a.id == agent_id).and_then(|a| a.host_rule(&q.name)).is_some();
        (allowed, enforce)
    };
    let refusal = match message::unforwardable(query) {
        Some(why) => Some(("dns-query", why)),
        None if !allowed => Some(("dns-name", format!("{} is not an allowed host", q.name))),
        None => None,
    };
    if let Some((reason, why)) = refusal {
        g.dns_denial(agent_id, reason, enforce, &q.name, &why);
        if enforce {
            return if reason == "dns-name" {
                g.dns.count(&agent_name, "refused");
                message::nxdomain(query)
            } else {
                g.dns.count(&agent_name, "refused-query");
                message::refused(query)
            };
        }
    }
    let Some(resolver) = g.dns.resolver(index) else { return fail(format!("resolver {index} is not configured")) };
    let resolver = SocketAddr::new(resolver, governor_common::DNS_PORT);
    let timeout = g.policy().dns.upstream_timeout;
    // Upstream gets a query built anew from the question, not the agent's bytes.
    let Some(forwarded) = message::canonical(query) else {
        g.dns.count(&agent_name, "dropped");
        return None;
    };
    let reply = if tcp {
        upstream::tcp(resolver, &forwarded, timeout).await
    } else {
        upstream::udp(resolver, &forwarded, timeout).await
    };
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", q.name)),
    };
    // Parsing an answer is work an upstream chooses the size of: off the async threads, where
    // it could hold up control requests.
    let (g2, q2) = (g.clone(), q.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let parsed = message::answer(&reply, &q2).map_err(Ok)?;
        let addrs = parsed.addresses(&q2.name);
        g2.admit_answer(agent_id, &q2.name, &addrs).map(|o| (o, reply)).map_err(Err)
    })
    .await;
    match outcome {
        Ok(Err(Ok(e))) => fail(format!("{}: {e}", q.name)),
        Ok(Ok((Outcome::Admitted(n), reply))) => {
            g.dns.count(&agent_name, "admitted");
            g.dns.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admitted_addresses += n as u64;
            tracing::debug!(agent = %agent_name, name = %q.name, addresses = n, "DNS answer admitted");
            Some(reply)
        }
        Ok(Ok((Outcome::NotAllowed, reply))) => {
            // Observe mode only: enforce mode refused the name before asking upstream.
            g.dns.count(&agent_name, "not-allowed");
            Some(reply)
        }
        Ok(Err(Err(e))) => fail(format!("{}: the allowlist did not take the answer: {e}", q.name)),
        Err(e) => fail(format!("{}: {e}", q.name)),
    }
}

impl Governor {
    /// Records a query the proxy refused (or, in observe mode, would have): aggregated in the
    /// audit log with the kernel's denials, under the `dns` endpoint.
    fn dns_denial(&self, agent_id: u32, reason: &str, enforce: bool, name: &str, why: &str) {
        tracing::debug!(agent_id, reason, name, why, "DNS query refused");
        self.events().record(crate::kernel::Denial {
            timestamp_ns: 0,
            cgroup_id: 0,
            agent_id,
            pid: 0,
            reason: reason.to_owned(),
            verdict: if enforce { "denied" } else { "would_deny" }.to_owned(),
            hook: "dns-proxy".to_owned(),
            protocol: "dns".to_owned(),
            destination: Some(name.chars().take(253).collect()),
        });
    }

    /// Admits an answer's addresses for an agent under the current policy (kernel, then cache).
    pub fn admit_answer(
        &self,
        agent_id: u32,
        name: &str,
        addrs: &[(IpAddr, u32)],
    ) -> Result<Outcome, crate::kernel::KernelError> {
        let mut core = self.core();
        // The policy is read under the core lock: a reload swaps both together.
        let policy = self.policy();
        let crate::governor::Core { maps, names, .. } = &mut *core;
        admit::admit(maps, names, &policy, agent_id, name, addrs, super::boot_secs())
    }

    /// Resolves the exact names in every agent's `hosts` itself (at start and every
    /// `dns.refresh`), so addresses are admitted before the agent asks.
    pub async fn resolve_hosts(self: &Arc<Self>) {
        let policy = self.policy();
        let Some(resolver) = self.dns.resolver(0) else { return };
        let resolver = SocketAddr::new(resolver, governor_common::DNS_PORT);
        for agent in &policy.agents {
            for h in &agent.hosts {
                let Some(name) = h.pattern.exact() else { continue };
                // One warning per name, whichever record types failed.
                let mut failed = Vec::new();
                for qtype in [hickory_proto::rr::RecordType::A, hickory_proto::rr::RecordType::AAAA] {
                    let query = message::query_for(name, qtype);
                    let Ok(q) = message::question(&query) else { continue };
                    let timeout = policy.dns.upstream_timeout;
                    let mut reply = upstream::udp(resolver, &query, timeout).await;
                    if let Ok(r) = &reply
                        && message::answer(r, &q).is_ok_and(|a| a.truncated())
                    {
                        reply = upstream::tcp(resolver, &query, timeout).await;
                    }
                    let addrs = match reply.map_err(|e| e.to_string()).and_then(|r| message::answer(&r, &q)) {
                        Ok(a) => a.addresses(&q.name),
                        Err(e) => {
                            failed.push(format!("{qtype}: {e}"));
                            continue;
                        }
                    };
                    let (g, id, n) = (self.clone(), agent.id, name.to_owned());
                    match tokio::task::spawn_blocking(move || g.admit_answer(id, &n, &addrs)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(agent = %agent.name, name, error = %e, "admitting a resolved host failed")
                        }
                        Err(e) => tracing::warn!(error = %e, "admitting a resolved host panicked"),
                    }
                }
                if !failed.is_empty() {
                    tracing::warn!(agent = %agent.name, name, failed = %failed.join("; "), "could not resolve an allowed host ahead of the agent (the record types named); what the agent resolves itself is admitted then");
                }
            }
        }
    }
}

/// Resolves allowed names now and every `dns.refresh`, and expires admitted addresses.
pub async fn maintain(governor: Arc<Governor>) -> anyhow::Result<()> {
    let mut last_refresh: Option<std::time::Instant> = None;
    loop {
        if last_refresh.is_none_or(|t| t.elapsed() >= governor.policy().dns.refresh) {
            last_refresh = Some(std::time::Instant::now());
            governor.resolve_hosts().await;
        }
        let g = governor.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut core = g.core();
            let policy = g.policy();
            let crate::governor::Core { maps, names, .. } = &mut *core;
            let n = admit::expire(maps, names, &policy, super::boot_secs());
            if n > 0 {
                tracing::debug!(expired = n, "admitted addresses expired");
            }
        })
        .await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
