//! Turning answers into allowlist entries, and keeping them in step with the cache and the
//! policy generations. Callers hold the core lock, so a reload never interleaves.

use std::net::IpAddr;

use governor_common::RULE_GENERATION_BIT;

use super::cache::{Held, NameCache, Released};
use crate::{
    kernel::{DynamicRule, KernelError, KernelMaps},
    policy::{Admitted, CompiledAgent, HostRule, Policy},
};

/// What an answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The name is allowed for the agent: this many addresses are admitted.
    Admitted(usize),
    /// The name is not allowed for the agent (or the agent has no host patterns): nothing admitted.
    NotAllowed,
}

/// The entries of a held (agent, endpoint, address) in `policy`'s generation; empty if the
/// policy no longer has the agent or an endpoint of that name with host patterns for it.
/// Keys a configured rule answers are skipped by the kernel maps, not here (see
/// `KernelMaps::insert_admitted`).
pub fn held_entries(policy: &Policy, held: &Held, now: u32) -> Admitted {
    let (agent_id, endpoint, addr) = held;
    let Some(agent) = policy.agents.iter().find(|a| a.id == *agent_id) else { return Admitted::default() };
    let Some(h) = agent.hosts.iter().find(|h| h.endpoint == *endpoint) else { return Admitted::default() };
    agent.admission(h, *addr, now)
}

fn release(maps: &mut KernelMaps, policy: &Policy, released: &Released) {
    for held in released {
        maps.remove_admitted(&held_entries(policy, held, 1));
    }
}

/// Admits the addresses an answer for `name` gave agent `agent_id`: kernel first, then the
/// cache. An error means the kernel did not take them (the agent must get SERVFAIL).
#[allow(clippy::too_many_arguments)]
pub fn admit(
    maps: &mut KernelMaps,
    names: &mut NameCache,
    policy: &Policy,
    agent_id: u32,
    name: &str,
    addrs: &[(IpAddr, u32)],
    now: u64,
) -> Result<Outcome, KernelError> {
    let Some(agent) = policy.agents.iter().find(|a| a.id == agent_id) else { return Ok(Outcome::NotAllowed) };
    let Some(h) = agent.host_rule(name) else { return Ok(Outcome::NotAllowed) };
    let mut all = Admitted::default();
    for (addr, _) in addrs {
        all.extend(agent.admission(h, *addr, now as u32));
    }
    maps.insert_admitted(&all)?;
    let released = names.admit(agent_id, name, &h.endpoint, addrs, now);
    release(maps, policy, &released);
    Ok(Outcome::Admitted(addrs.len()))
}

/// Drops addresses whose time is up (see `NameCache::expire`), from the cache and the kernel.
pub fn expire(maps: &mut KernelMaps, names: &mut NameCache, policy: &Policy, now: u64) -> usize {
    let released = {
        let m: &KernelMaps = maps;
        names.expire(now, |held| {
            let used = m.last_use(&held_entries(policy, held, 1));
            (used != 0).then_some(u64::from(used))
        })
    };
    release(maps, policy, &released);
    released.len()
}

/// The admitted addresses `new` still allows, keyed for its generation (a reload applies them
/// with the static rules). The cache is not changed: call `retain_allowed` once applied.
pub fn readmit(names: &NameCache, new: &Policy, now: u64) -> Admitted {
    let mut out = Admitted::default();
    for (agent_id, name, entry) in names.iter() {
        let Some(agent) = new.agents.iter().find(|a| a.id == agent_id) else { continue };
        let Some(h) = allowed_rule(agent, name, &entry.endpoint) else { continue };
        for a in &entry.addrs {
            out.extend(agent.admission(h, a.addr, now as u32));
        }
    }
    out
}

/// The host rule that lets `agent` keep a cached `name` held for `endpoint`: the name must
/// still match, for the same endpoint. Adopted entries (no name) only need the endpoint.
fn allowed_rule<'a>(agent: &'a CompiledAgent, name: &str, endpoint: &str) -> Option<&'a HostRule> {
    if name == ADOPTED {
        return agent.hosts.iter().find(|h| h.endpoint == endpoint);
    }
    agent.host_rule(name).filter(|h| h.endpoint == endpoint)
}

/// Forgets cached names the (newly applied) policy no longer allows.
pub fn retain_allowed(names: &mut NameCache, policy: &Policy) {
    names.retain(|agent_id, name, endpoint| {
        policy.agents.iter().find(|a| a.id == agent_id).and_then(|a| allowed_rule(a, name, endpoint)).is_some()
    });
}

/// The name under which addresses a previous daemon admitted are kept after a restart.
pub const ADOPTED: &str = "(adopted from pinned maps)";

/// Takes over the entries a previous daemon admitted (found in adopted maps) that `policy`
/// still allows, so a restart does not break connects to addresses agents already resolved.
/// Returns them keyed for `policy`'s generation.
pub fn adopt(found: &[DynamicRule], names: &mut NameCache, policy: &Policy, now: u64) -> Admitted {
    for r in found {
        let agent_id = r.rule_id & !RULE_GENERATION_BIT;
        let Some(agent) = policy.agents.iter().find(|a| a.id == agent_id) else { continue };
        let Some(ep) = policy.endpoints.iter().find(|e| e.id == r.endpoint_id) else { continue };
        if agent.hosts.iter().any(|h| h.endpoint == ep.name) {
            names.admit(agent_id, ADOPTED, &ep.name, &[(r.addr, 0)], now);
        }
    }
    readmit(names, policy, now)
}
