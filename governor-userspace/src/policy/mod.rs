//! Compiles a validated configuration into the exact entries the kernel maps need. Pure: no
//! kernel, no I/O, so every rule is unit-tested here.

mod ids;

use std::{collections::HashMap, net::IpAddr, time::Duration};

use governor_common::{
    ALLOW_KEY_FIXED_BITS, AllowKeyV4, AllowKeyV6, EndpointLimits, IPPROTO_TCP, IPPROTO_UDP, MODE_ENFORCE, MODE_OBSERVE,
    Prices, Rule, StatsKey,
};

pub use ids::name_id;

use crate::{
    accounting::{
        books::CheckpointSpec,
        budget::BudgetSpec,
        money::Money,
        window::{Window, parse_duration},
    },
    config::{BudgetConfig, Cidr, Config, Mode, PriceConfig, Protocol, hostname::HostPattern},
};

/// One allowlist entry: an LPM key (`prefix_len` counts the fixed fields too) and the rule
/// (endpoint and prices) it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<K> {
    pub prefix_len: u32,
    pub key: K,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledEndpoint {
    pub id: u32,
    pub name: String,
    /// Per connection, and per byte (rounded up from the per-MiB price), in pico-units.
    pub prices: Prices,
    /// Limits on this endpoint for each agent that uses it (none: all None).
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledAgent {
    pub id: u32,
    /// The id its allowlist entries are keyed by in this policy generation.
    pub rule_id: u32,
    pub name: String,
    /// Directory name under the agents root.
    pub cgroup: String,
    pub mode: Mode,
    pub budget: BudgetSpec,
    pub checkpoints: CheckpointSpec,
    pub limits: Limits,
    pub rules_v4: Vec<Entry<AllowKeyV4>>,
    pub rules_v6: Vec<Entry<AllowKeyV6>>,
    /// Host name patterns: their addresses are admitted from DNS answers at run time.
    pub hosts: Vec<HostRule>,
    /// Ids of the endpoints in its allowlist.
    pub endpoints: Vec<u32>,
    /// Local ports it may take traffic on (`inbound`), TCP and UDP.
    pub inbound: Vec<u16>,
}

/// A host name pattern an agent may reach, and the rules an address admitted for it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub pattern: HostPattern,
    pub endpoint: String,
    pub rule: Rule,
    pub protocols: Vec<u8>,
    /// 0 means any port.
    pub ports: Vec<u16>,
}

impl CompiledAgent {
    /// The most specific of the agent's host patterns that `name` matches.
    pub fn host_rule(&self, name: &str) -> Option<&HostRule> {
        self.hosts.iter().filter(|h| h.pattern.matches(name)).max_by_key(|h| h.pattern.specificity())
    }

    /// The allowlist entries admitting `addr` for host rule `h` in this generation, stamped as
    /// used at `now_boot_s` (CLOCK_BOOTTIME seconds, never 0: 0 marks configured rules).
    pub fn admission(&self, h: &HostRule, addr: IpAddr, now_boot_s: u32) -> Admitted {
        let rule = Rule { last_use_s: now_boot_s.max(1), ..h.rule };
        let mut out = Admitted::default();
        for &protocol in &h.protocols {
            for &port in &h.ports {
                match addr {
                    IpAddr::V4(a) => out.v4.push(Entry {
                        prefix_len: ALLOW_KEY_FIXED_BITS + 32,
                        key: AllowKeyV4::new(self.rule_id, protocol, port, a.octets()),
                        rule,
                    }),
                    IpAddr::V6(a) => out.v6.push(Entry {
                        prefix_len: ALLOW_KEY_FIXED_BITS + 128,
                        key: AllowKeyV6::new(self.rule_id, protocol, port, a.octets()),
                        rule,
                    }),
                }
            }
        }
        out
    }
}

/// Allowlist entries admitted from DNS answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    pub v4: Vec<Entry<AllowKeyV4>>,
    pub v6: Vec<Entry<AllowKeyV6>>,
}

impl Admitted {
    pub fn extend(&mut self, o: Admitted) {
        self.v4.extend(o.v4);
        self.v6.extend(o.v6);
    }
}

/// `[dns]` as the proxy and the name cache use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPolicy {
    /// None: the nameservers of /etc/resolv.conf, read by the daemon.
    pub resolvers: Option<Vec<IpAddr>>,
    pub proxy_port: u16,
    pub min_ttl: Duration,
    pub grace: Duration,
    pub max_addresses_per_name: usize,
    pub max_names: usize,
    pub refresh: Duration,
    pub upstream_timeout: Duration,
}

impl DnsPolicy {
    /// An empty name cache with this policy's bounds.
    pub fn new_cache(&self) -> crate::dns::cache::NameCache {
        crate::dns::cache::NameCache::new(self.max_names, self.max_addresses_per_name, self.lifetimes())
    }

    pub fn lifetimes(&self) -> crate::dns::cache::Lifetimes {
        crate::dns::cache::Lifetimes { min_ttl: self.min_ttl, grace: self.grace }
    }

    fn from_config(c: &crate::config::DnsConfig) -> Self {
        let d = |s: &toml::Spanned<String>| parse_duration(s.get_ref()).expect("validated duration");
        Self {
            resolvers: c
                .resolvers
                .as_ref()
                .map(|r| r.get_ref().iter().map(|a| a.get_ref().parse().expect("validated address")).collect()),
            proxy_port: *c.proxy_port.get_ref() as u16,
            min_ttl: d(&c.min_ttl),
            grace: d(&c.grace),
            max_addresses_per_name: *c.max_addresses_per_name.get_ref() as usize,
            max_names: *c.max_names.get_ref() as usize,
            refresh: d(&c.refresh),
            upstream_timeout: d(&c.upstream_timeout),
        }
    }
}

/// Rate and concurrency limits as the kernel enforces them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub connections_per_minute: Option<u64>,
    pub burst: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl Limits {
    pub fn from_config(l: Option<&toml::Spanned<crate::config::LimitsConfig>>) -> Self {
        l.map_or_else(Limits::default, |l| {
            let l = l.get_ref();
            let n = |v: &Option<toml::Spanned<i64>>| v.as_ref().map(|v| *v.get_ref() as u64);
            Limits {
                connections_per_minute: n(&l.connections_per_minute),
                burst: n(&l.burst),
                max_concurrent: n(&l.max_concurrent),
            }
        })
    }

    pub fn is_none(&self) -> bool {
        self.connections_per_minute.is_none() && self.max_concurrent.is_none()
    }

    /// The burst at `cpm` connections per minute: as configured, else a tenth of a minute's.
    pub fn burst_or_default(&self, cpm: u64) -> u64 {
        self.burst.unwrap_or((cpm / 10).max(1))
    }

    /// GCRA parameters: nanoseconds between connections, and how far ahead the schedule may run.
    pub fn rate_ns(&self) -> (u64, u64) {
        match self.connections_per_minute {
            None => (0, 0),
            Some(cpm) => {
                let interval = 60_000_000_000 / cpm.max(1);
                (interval, interval * (self.burst_or_default(cpm).max(1) - 1))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub endpoints: Vec<CompiledEndpoint>,
    pub agents: Vec<CompiledAgent>,
    pub host: BudgetSpec,
    pub currency: String,
    /// Uplinks to count the host's egress on; None: the default routes' interfaces.
    pub host_interfaces: Option<Vec<String>>,
    /// Pico-units per byte leaving the host (rounded up from the per-GiB price).
    pub host_egress_byte_price: u64,
    pub dns: DnsPolicy,
}

impl Policy {
    /// What `ENDPOINT_LIMITS` must hold: each (agent, endpoint) whose endpoint has limits.
    /// Every agent's inbound ports, as `INBOUND` keys (TCP and UDP each).
    pub fn inbound(&self) -> Vec<governor_common::InboundKey> {
        let mut out = Vec::new();
        for a in &self.agents {
            for &port in &a.inbound {
                for protocol in [governor_common::IPPROTO_TCP, governor_common::IPPROTO_UDP] {
                    out.push(governor_common::InboundKey { agent_id: a.id, port, protocol, _pad: 0 });
                }
            }
        }
        out
    }

    pub fn endpoint_limits(&self) -> Vec<(StatsKey, EndpointLimits)> {
        let mut out = Vec::new();
        for ep in self.endpoints.iter().filter(|e| !e.limits.is_none()) {
            let (rate_interval_ns, rate_tolerance_ns) = ep.limits.rate_ns();
            let value = EndpointLimits {
                rate_interval_ns,
                rate_tolerance_ns,
                max_concurrent: ep.limits.max_concurrent.unwrap_or(0),
            };
            for a in self.agents.iter().filter(|a| a.endpoints.contains(&ep.id)) {
                out.push((StatsKey { agent_id: a.id, endpoint_id: ep.id }, value));
            }
        }
        out
    }
}

/// An endpoint's configured prices in pico-units; the config is validated, so amounts parse.
pub fn prices(p: &PriceConfig) -> Prices {
    let amount = |s: &Option<toml::Spanned<String>>| {
        s.as_ref().map_or(Money::ZERO, |s| Money::parse(s.get_ref()).expect("validated amount"))
    };
    Prices {
        connection: amount(&p.connection).0,
        tx_byte: amount(&p.mib_sent).per_byte_from_per_mib(),
        rx_byte: amount(&p.mib_received).per_byte_from_per_mib(),
    }
}

fn budget_spec(
    budget: Option<&toml::Spanned<BudgetConfig>>,
    thresholds: &[toml::Spanned<i64>],
    on_exhausted: crate::config::OnExhausted,
) -> BudgetSpec {
    let mut thresholds: Vec<u8> =
        thresholds.iter().map(|t| u8::try_from(*t.get_ref()).expect("validated threshold")).collect();
    thresholds.sort_unstable();
    match budget {
        None => BudgetSpec { thresholds, on_exhausted, ..BudgetSpec::none() },
        Some(b) => BudgetSpec {
            limit: Some(Money::parse(b.get_ref().limit.get_ref()).expect("validated limit")),
            window: b.get_ref().window.get_ref().parse::<Window>().expect("validated window"),
            thresholds,
            on_exhausted,
        },
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{kind} names {a:?} and {b:?} map to the same id {id:#010x}; rename one of them")]
    IdCollision { kind: &'static str, a: String, b: String, id: u32 },
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
        /// Where the second endpoint is named: (byte offset in the file, the agent's index).
        at: (u32, u32),
    },
    #[error(
        "agent {agent:?}: endpoints {a:?} and {b:?} both list host {pattern}; its addresses could \
         not be charged to one of them: remove one"
    )]
    HostOverlap { agent: String, a: String, b: String, pattern: String, at: (u32, u32) },
}

impl PolicyError {
    /// Where in the file the error is (byte offset) and under which key, when it has a place.
    pub fn place(&self) -> Option<(usize, String)> {
        match self {
            Self::Overlap { at: (offset, index), .. } | Self::HostOverlap { at: (offset, index), .. } => {
                Some((*offset as usize, format!("agent[{index}].endpoints")))
            }
            Self::IdCollision { .. } => None,
        }
    }
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

/// Compiles `config` for policy generation 0. The config must already be validated.
pub fn compile(config: &Config) -> Result<Policy, PolicyError> {
    compile_generation(config, 0)
}

/// Compiles `config` with its allowlist entries keyed for `generation` (0 or 1): a reload
/// compiles the generation the kernel is not using, so both can sit in the maps at once.
pub fn compile_generation(config: &Config, generation: u32) -> Result<Policy, PolicyError> {
    let flip = if generation % 2 == 1 { governor_common::RULE_GENERATION_BIT } else { 0 };
    let mut endpoint_ids = ids::IdSpace::new("endpoint");
    let mut endpoints = Vec::with_capacity(config.endpoints.len());
    for ep in &config.endpoints {
        let id = endpoint_ids.assign(ep.name.get_ref())?;
        endpoints.push(CompiledEndpoint {
            id,
            name: ep.name.get_ref().clone(),
            prices: prices(&ep.price),
            limits: Limits::from_config(ep.limits.as_ref()),
        });
    }
    let by_name: HashMap<&str, (usize, Rule)> = config
        .endpoints
        .iter()
        .zip(&endpoints)
        .enumerate()
        .map(|(i, (e, c))| {
            (e.name.get_ref().as_str(), (i, Rule { endpoint_id: c.id, prices: c.prices, ..Rule::default() }))
        })
        .collect();

    let mut agent_ids = ids::IdSpace::new("agent");
    let mut agents = Vec::with_capacity(config.agents.len());
    for (agent_index, agent) in config.agents.iter().enumerate() {
        let id = agent_ids.assign(agent.name.get_ref())?;
        let mut compiled = CompiledAgent {
            id,
            rule_id: id ^ flip,
            name: agent.name.get_ref().clone(),
            cgroup: agent.cgroup_name().to_owned(),
            mode: agent.mode,
            budget: budget_spec(agent.budget.as_ref(), agent.thresholds.get_ref(), agent.on_exhausted),
            checkpoints: agent.checkpoints.as_ref().map_or_else(CheckpointSpec::default, |c| {
                let c = c.get_ref();
                CheckpointSpec {
                    every_spend: c.every_spend.as_ref().map(|s| Money::parse(s.get_ref()).expect("validated amount")),
                    every_secs: c
                        .every
                        .as_ref()
                        .map(|e| parse_duration(e.get_ref()).expect("validated duration").as_secs() as i64),
                    every_connections: c.every_connections.as_ref().map(|n| *n.get_ref() as u64),
                }
            }),
            limits: Limits::from_config(agent.limits.as_ref()),
            rules_v4: Vec::new(),
            rules_v6: Vec::new(),
            hosts: Vec::new(),
            endpoints: Vec::new(),
            inbound: agent.inbound.iter().map(|p| u16::try_from(*p.get_ref()).expect("validated port")).collect(),
        };
        // (protocol, port, prefix) -> endpoint name, to refuse ambiguous overlaps.
        let mut seen: HashMap<(u8, u16, Cidr), &str> = HashMap::new();
        for ep_name in &agent.endpoints {
            let (index, rule) = by_name[ep_name.get_ref().as_str()];
            if !compiled.endpoints.contains(&rule.endpoint_id) {
                compiled.endpoints.push(rule.endpoint_id);
            }
            let ep = &config.endpoints[index];
            let ports: Vec<u16> = if ep.ports.is_empty() {
                vec![0]
            } else {
                ep.ports.iter().map(|p| u16::try_from(*p.get_ref()).expect("validated port")).collect()
            };
            for host in &ep.hosts {
                let pattern: HostPattern = host.get_ref().parse().expect("validated host");
                if let Some(other) = compiled.hosts.iter().find(|h| h.pattern == pattern) {
                    if other.endpoint == *ep.name.get_ref() {
                        continue;
                    }
                    return Err(PolicyError::HostOverlap {
                        agent: compiled.name.clone(),
                        a: other.endpoint.clone(),
                        b: ep.name.get_ref().clone(),
                        pattern: pattern.to_string(),
                        at: (ep_name.span().start as u32, agent_index as u32),
                    });
                }
                compiled.hosts.push(HostRule {
                    pattern,
                    endpoint: ep.name.get_ref().clone(),
                    rule,
                    protocols: protocols(ep.protocol).to_vec(),
                    ports: ports.clone(),
                });
            }
            for address in ep.addresses.get_ref() {
                let cidr: Cidr = address.get_ref().parse().expect("validated address");
                for &protocol in protocols(ep.protocol) {
                    for &port in &ports {
                        if let Some(other) = seen.insert((protocol, port, cidr), ep.name.get_ref()) {
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
                                at: (ep_name.span().start as u32, agent_index as u32),
                            });
                        }
                        push_rule(&mut compiled, protocol, port, cidr, rule);
                    }
                }
            }
        }
        agents.push(compiled);
    }
    let host = budget_spec(config.host.budget.as_ref(), config.host.thresholds.get_ref(), config.host.on_exhausted);
    Ok(Policy {
        endpoints,
        agents,
        host,
        currency: config.daemon.currency.get_ref().clone(),
        host_interfaces: config
            .host
            .interfaces
            .as_ref()
            .map(|i| i.get_ref().iter().map(|n| n.get_ref().clone()).collect()),
        host_egress_byte_price: config
            .host
            .egress_price_per_gib
            .as_ref()
            .map_or(0, |p| Money::parse(p.get_ref()).expect("validated price").0.div_ceil(1 << 30)),
        dns: DnsPolicy::from_config(&config.dns),
    })
}

fn push_rule(agent: &mut CompiledAgent, protocol: u8, port: u16, cidr: Cidr, rule: Rule) {
    let prefix_len = ALLOW_KEY_FIXED_BITS + u32::from(cidr.prefix_len);
    match cidr.addr {
        IpAddr::V4(a) => agent.rules_v4.push(Entry {
            prefix_len,
            key: AllowKeyV4::new(agent.rule_id, protocol, port, a.octets()),
            rule,
        }),
        IpAddr::V6(a) => agent.rules_v6.push(Entry {
            prefix_len,
            key: AllowKeyV6::new(agent.rule_id, protocol, port, a.octets()),
            rule,
        }),
    }
}

#[cfg(test)]
mod tests;
