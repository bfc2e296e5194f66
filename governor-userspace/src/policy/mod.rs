//! Compiles a validated configuration into the exact entries the kernel maps need. Pure: no
//! kernel, no I/O, so every rule is unit-tested here.

mod ids;

use std::{collections::HashMap, net::IpAddr};

use governor_common::{
    ALLOW_KEY_FIXED_BITS, AllowKeyV4, AllowKeyV6, IPPROTO_TCP, IPPROTO_UDP, MODE_ENFORCE,
    MODE_OBSERVE,
};

pub use ids::name_id;

use crate::config::{Cidr, Config, Mode, Protocol};

/// One allowlist entry: an LPM key (`prefix_len` counts the fixed fields too) and its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule<K> {
    pub prefix_len: u32,
    pub key: K,
    pub endpoint_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledEndpoint {
    pub id: u32,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledAgent {
    pub id: u32,
    pub name: String,
    /// Directory name under the agents root.
    pub cgroup: String,
    pub mode: Mode,
    pub rules_v4: Vec<Rule<AllowKeyV4>>,
    pub rules_v6: Vec<Rule<AllowKeyV6>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub endpoints: Vec<CompiledEndpoint>,
    pub agents: Vec<CompiledAgent>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{kind} names {a:?} and {b:?} map to the same id {id:#010x}; rename one of them")]
    IdCollision {
        kind: &'static str,
        a: String,
        b: String,
        id: u32,
    },
    #[error(
        "agent {agent:?}: endpoints {a:?} and {b:?} both allow {protocol} {prefix} port {}; \
         its traffic could not be charged to one of them: remove the overlap",
        if *port == 0 { "any".to_owned() } else { port.to_string() }
    )]
    Overlap {
        agent: String,
        a: String,
        b: String,
        protocol: &'static str,
        prefix: Cidr,
        /// 0 means any port.
        port: u16,
    },
}

pub fn mode_code(mode: Mode) -> u32 {
    match mode {
        Mode::Enforce => MODE_ENFORCE,
        Mode::Observe => MODE_OBSERVE,
    }
}

fn protocols(p: Protocol) -> &'static [u8] {
    match p {
        Protocol::Tcp => &[IPPROTO_TCP],
        Protocol::Udp => &[IPPROTO_UDP],
        Protocol::Any => &[IPPROTO_TCP, IPPROTO_UDP],
    }
}

pub fn protocol_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "other",
    }
}

/// Compiles `config`. The config must already be validated (addresses parse, names resolve).
pub fn compile(config: &Config) -> Result<Policy, PolicyError> {
    let mut endpoint_ids = ids::IdSpace::new("endpoint");
    let mut endpoints = Vec::with_capacity(config.endpoints.len());
    for ep in &config.endpoints {
        let id = endpoint_ids.assign(ep.name.get_ref())?;
        endpoints.push(CompiledEndpoint {
            id,
            name: ep.name.get_ref().clone(),
        });
    }
    let by_name: HashMap<&str, (usize, u32)> = config
        .endpoints
        .iter()
        .zip(&endpoints)
        .enumerate()
        .map(|(i, (e, c))| (e.name.get_ref().as_str(), (i, c.id)))
        .collect();

    let mut agent_ids = ids::IdSpace::new("agent");
    let mut agents = Vec::with_capacity(config.agents.len());
    for agent in &config.agents {
        let id = agent_ids.assign(agent.name.get_ref())?;
        let mut compiled = CompiledAgent {
            id,
            name: agent.name.get_ref().clone(),
            cgroup: agent.cgroup_name().to_owned(),
            mode: agent.mode,
            rules_v4: Vec::new(),
            rules_v6: Vec::new(),
        };
        // (protocol, port, prefix) -> endpoint name, to refuse ambiguous overlaps.
        let mut seen: HashMap<(u8, u16, Cidr), &str> = HashMap::new();
        for ep_name in &agent.endpoints {
            let (index, endpoint_id) = by_name[ep_name.get_ref().as_str()];
            let ep = &config.endpoints[index];
            let ports: Vec<u16> = if ep.ports.is_empty() {
                vec![0]
            } else {
                ep.ports
                    .iter()
                    .map(|p| u16::try_from(*p.get_ref()).expect("validated port"))
                    .collect()
            };
            for address in ep.addresses.get_ref() {
                let cidr: Cidr = address.get_ref().parse().expect("validated address");
                for &protocol in protocols(ep.protocol) {
                    for &port in &ports {
                        if let Some(other) = seen.insert((protocol, port, cidr), ep.name.get_ref())
                        {
                            if other == ep.name.get_ref() {
                                continue; // the same endpoint listing a prefix twice is harmless
                            }
                            return Err(PolicyError::Overlap {
                                agent: compiled.name.clone(),
                                a: other.to_owned(),
                                b: ep.name.get_ref().clone(),
                                protocol: protocol_name(protocol),
                                prefix: cidr,
                                port,
                            });
                        }
                        push_rule(&mut compiled, protocol, port, cidr, endpoint_id);
                    }
                }
            }
        }
        agents.push(compiled);
    }
    Ok(Policy { endpoints, agents })
}

fn push_rule(agent: &mut CompiledAgent, protocol: u8, port: u16, cidr: Cidr, endpoint_id: u32) {
    let prefix_len = ALLOW_KEY_FIXED_BITS + u32::from(cidr.prefix_len);
    match cidr.addr {
        IpAddr::V4(a) => agent.rules_v4.push(Rule {
            prefix_len,
            key: AllowKeyV4::new(agent.id, protocol, port, a.octets()),
            endpoint_id,
        }),
        IpAddr::V6(a) => agent.rules_v6.push(Rule {
            prefix_len,
            key: AllowKeyV6::new(agent.id, protocol, port, a.octets()),
            endpoint_id,
        }),
    }
}

#[cfg(test)]
mod tests;
