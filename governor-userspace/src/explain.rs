//! `governor explain`: whether a destination is open to an agent right now, and why. The verdict
//! comes from the kernel's own maps (the allowlist entry a connect would find, the pause and
//! suspension state); the reasons from the policy and the DNS cache.

use std::net::{IpAddr, SocketAddr};

use governor_common::{
    CONTROL_CHECKPOINT, CONTROL_ENFORCE_CEILING, CONTROL_PAUSED, DNS_PORT, HOST_SLOT, IPPROTO_TCP, IPPROTO_UDP,
    RULE_GENERATION_BIT,
};
use serde::{Deserialize, Serialize};

use crate::{
    accounting::window::rfc3339,
    config::{Cidr, Mode},
    governor::{Governor, unix_now},
    kernel::KernelMaps,
    policy::protocol_name,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    pub agent: String,
    pub destination: String,
    pub protocol: String,
    /// `allowed`, `denied`, or `would-deny` (observe mode: counted, let through).
    pub verdict: String,
    /// The deny reason a connect would get now (`not-allowlisted`, `paused`, `budget`, `dns-resolver`).
    pub reason: Option<String>,
    /// The endpoint the connection would be charged to.
    pub endpoint: Option<String>,
    /// Why, one fact per line.
    pub because: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no agent named {name:?}; agents: {known}")]
    UnknownAgent { name: String, known: String },
    #[error("protocol {0:?} is not tcp or udp")]
    Protocol(String),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
}

/// Why `slot` is blocked in the kernel now, as the programs decide it.
fn blocked(maps: &KernelMaps, slot: u32) -> Option<(&'static str, String)> {
    for (s, whose) in [(slot, "the agent"), (HOST_SLOT, "the host")] {
        let (Ok(c), Ok(sp)) = (maps.control(s), maps.spend(s)) else { continue };
        if c.flags & CONTROL_PAUSED != 0 {
            return Some(("paused", format!("{whose} is paused (`governor resume` lifts it)")));
        }
        if c.flags & CONTROL_ENFORCE_CEILING != 0 && sp.exhausted_generation == c.generation {
            return Some((
                "budget",
                format!(
                    "{whose} reached its budget ceiling and is suspended (a new window, a raised budget or `governor resume --budget` lifts it)"
                ),
            ));
        }
        let deadline_passed = c.checkpoint_deadline_ns != 0
            && nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
                .is_ok_and(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) >= c.checkpoint_deadline_ns);
        if c.flags & CONTROL_CHECKPOINT != 0 && (sp.checkpoint_generation == c.checkpoint_generation || deadline_passed)
        {
            return Some(("checkpoint", format!("{whose} waits at a checkpoint (`governor ack` lifts it)")));
        }
    }
    None
}

impl Governor {
    pub fn explain(&self, agent: &str, dest: SocketAddr, protocol: &str) -> Result<Explanation, ExplainError> {
        let proto = match protocol {
            "tcp" => IPPROTO_TCP,
            "udp" => IPPROTO_UDP,
            other => return Err(ExplainError::Protocol(other.to_owned())),
        };
        // Fold IPv4-mapped IPv6 into IPv4, as the hooks do.
        let ip = match dest.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let core = self.core();
        let policy = self.policy();
        let Some(a) = core.agents.by_name(agent) else {
            let known: Vec<String> = core.agents.iter().map(|a| a.name.clone()).collect();
            return Err(ExplainError::UnknownAgent {
                name: agent.to_owned(),
                known: if known.is_empty() { "none".into() } else { known.join(", ") },
            });
        };
        let mut e = Explanation {
            agent: a.name.clone(),
            destination: SocketAddr::new(ip, dest.port()).to_string(),
            protocol: protocol_name(proto).to_owned(),
            verdict: "allowed".into(),
            reason: None,
            endpoint: None,
            because: Vec::new(),
        };
        let observe = a.mode == Mode::Observe;
        let deny = |e: &mut Explanation, reason: &str, line: String| {
            e.verdict = if observe { "would-deny" } else { "denied" }.into();
            e.reason = Some(reason.to_owned());
            e.because.push(line);
        };
        if dest.port() == DNS_PORT {
            let resolvers = self.dns.resolvers.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if resolvers.contains(&ip) {
                e.endpoint = Some("dns".into());
                e.because.push(format!(
                    "{ip} is a configured resolver: the query goes through governor's DNS proxy (loopback port {}), which admits the addresses of allowed names before it answers",
                    self.dns.port
                ));
            } else {
                let list: Vec<String> = resolvers.iter().map(ToString::to_string).collect();
                deny(
                    &mut e,
                    "dns-resolver",
                    format!("DNS goes only to the configured resolvers ({}; dns.resolvers)", list.join(", ")),
                );
            }
        } else {
            match core.maps.lookup(a.rule_id, proto, dest.port(), ip) {
                Some(rule) => {
                    let endpoint = self.endpoint_name(rule.endpoint_id);
                    e.endpoint = Some(endpoint.clone());
                    if rule.last_use_s == 0 {
                        let prefix = configured_prefix(self, &a.name, &endpoint, ip);
                        e.because
                            .push(format!("endpoint {endpoint:?} lists {}", prefix.unwrap_or_else(|| ip.to_string())));
                    } else {
                        let boot_now = crate::dns::boot_secs();
                        let wall = |boot: u64| rfc3339(unix_now() + boot as i64 - boot_now as i64);
                        for (agent_id, name, entry) in core.names.iter() {
                            if agent_id != a.rule_id & !RULE_GENERATION_BIT || entry.endpoint != endpoint {
                                continue;
                            }
                            if let Some(held) = entry.addrs.iter().find(|x| x.addr == ip) {
                                e.because.push(format!(
                                    "admitted for endpoint {endpoint:?} from a DNS answer for {name}, held until at least {}",
                                    wall(held.until)
                                ));
                            }
                        }
                        e.because.push(format!(
                            "last used by a connect at {} (kept for dns.grace after its last use)",
                            wall(u64::from(rule.last_use_s))
                        ));
                    }
                }
                None => {
                    let patterns: Vec<String> = policy
                        .agents
                        .iter()
                        .find(|p| p.id == a.id)
                        .map(|p| p.hosts.iter().map(|h| format!("{} ({})", h.pattern, h.endpoint)).collect())
                        .unwrap_or_default();
                    let mut line = format!(
                        "no allowlist entry of {} matches {} port {} (configured addresses and DNS-admitted ones)",
                        a.name,
                        protocol_name(proto),
                        dest.port()
                    );
                    if !patterns.is_empty() {
                        line.push_str(&format!(
                            "; its host patterns {} admit an address only once the agent resolves an allowed name to it",
                            patterns.join(", ")
                        ));
                    }
                    deny(&mut e, "not-allowlisted", line);
                }
            }
        }
        if e.reason.is_none()
            && let Some((reason, line)) = blocked(&core.maps, a.slot)
        {
            // The kernel refuses paused and suspended agents whatever their mode.
            e.verdict = "denied".into();
            e.reason = Some(reason.into());
            e.because.push(line);
        }
        if observe {
            e.because.push("the agent is in observe mode: nothing is refused, would-be denials are counted".into());
        }
        // Limits matter only to a connect that would otherwise go through.
        let refused = e.verdict == "denied";
        if !refused
            && let Some(ep) = e.endpoint.as_deref().and_then(|n| policy.endpoints.iter().find(|x| x.name == n))
            && !ep.limits.is_none()
        {
            let live = core.maps.endpoint_live_of(&governor_common::StatsKey { agent_id: a.id, endpoint_id: ep.id });
            let l = ep.limits;
            e.because.push(format!(
                "endpoint {:?} has its own limits for each agent: {} connections per minute, {} of {} concurrent in use",
                ep.name,
                l.connections_per_minute.map_or("unlimited".into(), |c| c.to_string()),
                live,
                l.max_concurrent.map_or("unlimited".into(), |c| c.to_string()),
            ));
        }
        if let Some(acc) = core.books.account(&a.name).filter(|_| !refused) {
            let l = acc.limits;
            if let Some(cpm) = l.connections_per_minute {
                e.because.push(format!(
                    "a connect also needs a token: {cpm} connections per minute, burst {}",
                    l.burst_or_default(cpm)
                ));
            }
            if let Some(max) = l.max_concurrent {
                let live = core.maps.spend(acc.slot).map_or(0, |s| s.live);
                e.because.push(format!("and a free place: {live} of {max} concurrent connections in use"));
            }
        }
        Ok(e)
    }
}

/// The longest configured prefix of `agent`'s endpoint `endpoint` that holds `ip`.
fn configured_prefix(g: &Governor, agent: &str, endpoint: &str, ip: IpAddr) -> Option<String> {
    let config = g.config();
    let c = &config.config;
    let listed = c.agents.iter().find(|x| x.name.get_ref() == agent)?.endpoints.iter().any(|e| e.get_ref() == endpoint);
    let ep = c.endpoints.iter().find(|e| e.name.get_ref() == endpoint && listed)?;
    ep.addresses
        .get_ref()
        .iter()
        .filter_map(|a| a.get_ref().parse::<Cidr>().ok())
        .filter(|cidr| {
            Cidr { addr: ip, prefix_len: cidr.prefix_len }.network() == cidr.addr && ip.is_ipv4() == cidr.addr.is_ipv4()
        })
        .max_by_key(|cidr| cidr.prefix_len)
        .map(|cidr| cidr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_round_trip_as_json() {
        let e = Explanation {
            agent: "a1".into(),
            destination: "127.0.0.1:443".into(),
            protocol: "tcp".into(),
            verdict: "denied".into(),
            reason: Some("not-allowlisted".into()),
            endpoint: None,
            because: vec!["x".into()],
        };
        let back: Explanation = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.reason.as_deref(), Some("not-allowlisted"));
    }
}
