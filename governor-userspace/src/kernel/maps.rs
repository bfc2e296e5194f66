//! Typed handles on the maps: write policy and budgets in, read counters and spend out.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::IpAddr,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, lpm_trie::Key},
};
use governor_common::{
    AgentInfo, AllowKeyV4, AllowKeyV6, ConnCounters, Control, ENDPOINT_DNS, ENDPOINT_UNLISTED, EndpointLimits,
    EndpointUse, HostEgress, MAX_RESOLVERS, REASONS, RULE_GENERATION_BIT, Resolver, ResolverSlot, Rule, Spend,
    StatsKey, TRAFFIC_SLOTS, TRAFFIC_UNCOUNTED, TrafficCounters, maps as names,
};
use serde::{Deserialize, Serialize};

use super::{KernelError, events::reason_name};
use crate::policy::{Admitted, CompiledAgent, Entry};

/// Everything the kernel counted for one (agent, endpoint), summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub allowed: u64,
    /// Connection prices charged (connects, and UDP flows: one per socket and endpoint).
    pub flows: u64,
    /// Refused connects and sendmsgs, all reasons.
    pub denied: u64,
    pub would_deny: u64,
    /// `denied` by reason name (`not-allowlisted`, `budget`, ...); reasons never seen are absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub denied_by_reason: BTreeMap<String, u64>,
}

impl AgentCounters {
    pub fn add(&mut self, o: &AgentCounters) {
        self.tx_bytes += o.tx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_packets += o.rx_packets;
        self.allowed += o.allowed;
        self.flows += o.flows;
        self.denied += o.denied;
        self.would_deny += o.would_deny;
        for (r, n) in &o.denied_by_reason {
            *self.denied_by_reason.entry(r.clone()).or_default() += n;
        }
    }
}

pub struct KernelMaps {
    agents: HashMap<MapData, u64, AgentInfo>,
    allow_v4: LpmTrie<MapData, AllowKeyV4, Rule>,
    allow_v6: LpmTrie<MapData, AllowKeyV6, Rule>,
    conn_stats: PerCpuHashMap<MapData, StatsKey, ConnCounters>,
    traffic: PerCpuArray<MapData, TrafficCounters>,
    /// Which `TRAFFIC` slot each (agent, endpoint) pair has, as the map itself records it
    /// (`TRAFFIC_UNCOUNTED` for pairs that found it full), and the next slot to give out.
    traffic_slots: StdHashMap<StatsKey, u32>,
    next_traffic_slot: u32,
    control: Array<MapData, Control>,
    spend: Array<MapData, Spend>,
    events_lost: PerCpuArray<MapData, u64>,
    counts_lost: PerCpuArray<MapData, u64>,
    host_egress: PerCpuHashMap<MapData, u64, HostEgress>,
    resolvers: HashMap<MapData, [u8; 16], Resolver>,
    resolver_slots: Array<MapData, ResolverSlot>,
    endpoint_limits: HashMap<MapData, StatsKey, EndpointLimits>,
    inbound: HashMap<MapData, governor_common::InboundKey, u8>,
    endpoint_use: HashMap<MapData, StatsKey, EndpointUse>,
}

/// bpf(2) update flag: create only (the kernel's uapi value).
const BPF_NOEXIST: u64 = 1;

/// An allowlist entry admitted from a DNS answer, as found in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicRule {
    pub rule_id: u32,
    pub endpoint_id: u32,
    pub addr: IpAddr,
    pub last_use_s: u32,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError> {
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap { name })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, op: "open", source })
}

fn map_err(name: &'static str, op: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, op, source }
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        let traffic: PerCpuArray<MapData, TrafficCounters> = take(ebpf, names::TRAFFIC)?;
        let traffic_slots = given_traffic_slots(&traffic)?;
        let next_traffic_slot = u32::try_from(traffic_slots.len()).unwrap_or(u32::MAX).saturating_add(1);
        Ok(Self {
            agents: take(ebpf, names::AGENTS)?,
            allow_v4: take(ebpf, names::ALLOW_V4)?,
            allow_v6: take(ebpf, names::ALLOW_V6)?,
            conn_stats: take(ebpf, names::CONN_STATS)?,
            traffic,
            traffic_slots,
            next_traffic_slot,
            control: take(ebpf, names::CONTROL)?,
            spend: take(ebpf, names::SPEND)?,
            events_lost: take(ebpf, names::EVENTS_LOST)?,
            counts_lost: take(ebpf, names::COUNTS_LOST)?,
            host_egress: take(ebpf, names::HOST_EGRESS)?,
            resolvers: take(ebpf, names::RESOLVERS)?,
            resolver_slots: take(ebpf, names::RESOLVER_SLOTS)?,
            endpoint_limits: take(ebpf, names::ENDPOINT_LIMITS)?,
            inbound: take(ebpf, names::INBOUND)?,
            endpoint_use: take(ebpf, names::ENDPOINT_USE)?,
        })
    }

    /// Makes `limits` the per (agent, endpoint) limits, removing any others. The state entries
    /// are created beside them and never removed: sockets holding a place give it back there.
    pub fn set_endpoint_limits(&mut self, limits: &[(StatsKey, EndpointLimits)]) -> Result<(), KernelError> {
        let wanted: HashSet<StatsKey> = limits.iter().map(|(k, _)| *k).collect();
        for (k, v) in limits {
            match self.endpoint_use.insert(k, EndpointUse::default(), BPF_NOEXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => return Err(KernelError::Map { name: names::ENDPOINT_USE, op: "insert", source }),
            }
            self.endpoint_limits.insert(k, v, 0).map_err(map_err(names::ENDPOINT_LIMITS, "insert"))?;
        }
        let stale: Vec<StatsKey> =
            self.endpoint_limits.keys().filter_map(Result::ok).filter(|k| !wanted.contains(k)).collect();
        for k in stale {
            let _ = self.endpoint_limits.remove(&k);
        }
        Ok(())
    }

    /// Makes `keys` the inbound ports in force: new ones first, then the ones no longer wanted.
    pub fn set_inbound(&mut self, keys: &[governor_common::InboundKey]) -> Result<(), KernelError> {
        let wanted: HashSet<governor_common::InboundKey> = keys.iter().copied().collect();
        for k in keys {
            self.inbound.insert(k, 1, 0).map_err(map_err(names::INBOUND, "insert"))?;
        }
        let stale: Vec<governor_common::InboundKey> =
            self.inbound.keys().filter_map(Result::ok).filter(|k| !wanted.contains(k)).collect();
        for k in stale {
            let _ = self.inbound.remove(&k);
        }
        Ok(())
    }

    /// Live connections per (agent, endpoint) with an endpoint limit.
    pub fn endpoint_live(&self) -> BTreeMap<StatsKey, u64> {
        self.endpoint_use.iter().filter_map(Result::ok).map(|(k, u)| (k, u.live)).collect()
    }

    /// Live connections of one (agent, endpoint); 0 when it has no state yet.
    pub fn endpoint_live_of(&self, key: &StatsKey) -> u64 {
        self.endpoint_use.get(key, 0).map_or(0, |u| u.live)
    }

    /// Makes `resolvers` (index = position) the only DNS servers agents may use, through the
    /// proxy on `proxy_port`. Slots are written before the lookup entries that point at them.
    pub fn set_resolvers(&mut self, resolvers: &[IpAddr], proxy_port: u16) -> Result<(), KernelError> {
        let keys: Vec<[u8; 16]> = resolvers.iter().map(|a| mapped(*a)).collect();
        for i in 0..MAX_RESOLVERS {
            let slot = keys.get(i as usize).map_or(ResolverSlot::default(), |k| ResolverSlot {
                addr: *k,
                proxy_port: u32::from(proxy_port),
                _pad: 0,
            });
            self.resolver_slots.set(i, slot, 0).map_err(map_err(names::RESOLVER_SLOTS, "write"))?;
        }
        for (i, k) in keys.iter().enumerate() {
            let r = Resolver { index: i as u32, proxy_port: u32::from(proxy_port) };
            self.resolvers.insert(k, r, 0).map_err(map_err(names::RESOLVERS, "insert"))?;
        }
        let stale: Vec<[u8; 16]> = self.resolvers.keys().filter_map(Result::ok).filter(|k| !keys.contains(k)).collect();
        for k in stale {
            let _ = self.resolvers.remove(&k);
        }
        Ok(())
    }

    /// Writes entries admitted from a DNS answer (new or refreshed). An entry whose key a
    /// configured rule already answers (same agent, protocol and port) is skipped: admitting
    /// over it would overwrite configuration, and expiring it would remove it. The kernel's
    /// `last_use_s` (0 for configured rules) is what tells them apart. On failure the entries
    /// this call added are removed again, and the caller answers SERVFAIL.
    pub fn insert_admitted(&mut self, a: &Admitted) -> Result<(), KernelError> {
        let v4: Vec<_> =
            a.v4.iter().map(|e| Entry { rule: self.counted(agent_of(e.key.agent_id), e.rule), ..*e }).collect();
        let v6: Vec<_> =
            a.v6.iter().map(|e| Entry { rule: self.counted(agent_of(e.key.agent_id), e.rule), ..*e }).collect();
        let (mut done4, mut done6) = (Vec::new(), Vec::new());
        let result = admit_into(&mut self.allow_v4, names::ALLOW_V4, &v4, &mut done4)
            .and_then(|()| admit_into(&mut self.allow_v6, names::ALLOW_V6, &v6, &mut done6));
        if result.is_err() {
            self.remove_admitted(&Admitted { v4: done4, v6: done6 });
        }
        result
    }

    /// Removes admitted entries; ones already gone are fine, configured rules are never touched.
    pub fn remove_admitted(&mut self, a: &Admitted) {
        unadmit_from(&mut self.allow_v4, &a.v4);
        unadmit_from(&mut self.allow_v6, &a.v6);
    }

    /// When the kernel last let a connect through an admitted entry (0: never since admission).
    pub fn last_use(&self, e: &Admitted) -> u32 {
        let v4 = e.v4.iter().filter_map(|e| self.allow_v4.get(&Key::new(e.prefix_len, e.key), 0).ok());
        let v6 = e.v6.iter().filter_map(|e| self.allow_v6.get(&Key::new(e.prefix_len, e.key), 0).ok());
        v4.chain(v6).map(|r| r.last_use_s).max().unwrap_or(0)
    }

    /// The longest-prefix rule for a destination, as a connect would find it: exact port, then
    /// any port.
    pub fn lookup(&self, rule_id: u32, protocol: u8, port: u16, addr: IpAddr) -> Option<Rule> {
        let fixed = governor_common::ALLOW_KEY_FIXED_BITS;
        [port, 0].into_iter().find_map(|p| match addr {
            IpAddr::V4(a) => {
                self.allow_v4.get(&Key::new(fixed + 32, AllowKeyV4::new(rule_id, protocol, p, a.octets())), 0).ok()
            }
            IpAddr::V6(a) => {
                self.allow_v6.get(&Key::new(fixed + 128, AllowKeyV6::new(rule_id, protocol, p, a.octets())), 0).ok()
            }
        })
    }

    /// Every entry admitted from DNS (a previous daemon's, when adopting pinned maps).
    pub fn dynamic_rules(&self) -> Vec<DynamicRule> {
        let v4 = self
            .allow_v4
            .iter()
            .filter_map(Result::ok)
            .map(|(k, r)| (k.data().agent_id, IpAddr::from(k.data().addr), r));
        let v6 = self
            .allow_v6
            .iter()
            .filter_map(Result::ok)
            .map(|(k, r)| (k.data().agent_id, IpAddr::from(k.data().addr), r));
        v4.chain(v6)
            .filter(|(_, _, r)| r.last_use_s != 0)
            .map(|(id, addr, r)| DynamicRule {
                rule_id: u32::from_be_bytes(id),
                endpoint_id: r.endpoint_id,
                addr,
                last_use_s: r.last_use_s,
            })
            .collect()
    }

    /// Inserts every rule of `agents` and the addresses DNS admitted for them (a new policy
    /// generation, beside the running one). On failure the rules it inserted are removed again
    /// and the running policy is untouched.
    pub fn insert_rules(&mut self, agents: &[CompiledAgent], admitted: &Admitted) -> Result<(), KernelError> {
        let mut done_v4 = Vec::new();
        let mut done_v6 = Vec::new();
        let result = (|| {
            for agent in agents {
                for r in &agent.rules_v4 {
                    let rule = self.counted(agent.id, r.rule);
                    self.allow_v4
                        .insert(&Key::new(r.prefix_len, r.key), rule, 0)
                        .map_err(map_err(names::ALLOW_V4, "insert"))?;
                    done_v4.push(Key::new(r.prefix_len, r.key));
                }
                for r in &agent.rules_v6 {
                    let rule = self.counted(agent.id, r.rule);
                    self.allow_v6
                        .insert(&Key::new(r.prefix_len, r.key), rule, 0)
                        .map_err(map_err(names::ALLOW_V6, "insert"))?;
                    done_v6.push(Key::new(r.prefix_len, r.key));
                }
            }
            // After the configured rules, so an admitted address they already allow is skipped.
            self.insert_admitted(admitted)
        })();
        if result.is_err() {
            for k in done_v4 {
                let _ = self.allow_v4.remove(&k);
            }
            for k in done_v6 {
                let _ = self.allow_v6.remove(&k);
            }
        }
        result
    }

    /// Removes `agents`' rules and `admitted` again: a new generation that could not be applied.
    pub fn remove_rules(&mut self, agents: &[CompiledAgent], admitted: &Admitted) {
        for r in agents.iter().flat_map(|a| &a.rules_v4).chain(&admitted.v4) {
            let _ = self.allow_v4.remove(&Key::new(r.prefix_len, r.key));
        }
        for r in agents.iter().flat_map(|a| &a.rules_v6).chain(&admitted.v6) {
            let _ = self.allow_v6.remove(&Key::new(r.prefix_len, r.key));
        }
    }

    /// Removes every allowlist entry that is not one of `agents`' rules or `admitted`: the
    /// previous generation, once every agent has been switched to the new one.
    pub fn remove_rules_except(&mut self, agents: &[CompiledAgent], admitted: &Admitted) -> Result<(), KernelError> {
        let want_v4: HashSet<_> = agents.iter().flat_map(|a| &a.rules_v4).chain(&admitted.v4).map(entry_key).collect();
        let want_v6: HashSet<_> = agents.iter().flat_map(|a| &a.rules_v6).chain(&admitted.v6).map(entry_key).collect();
        let stale_v4: Vec<_> = self
            .allow_v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want_v4.contains(&(k.prefix_len(), bytes(&k.data()))))
            .collect();
        for k in stale_v4 {
            self.allow_v4.remove(&k).map_err(map_err(names::ALLOW_V4, "remove"))?;
        }
        let stale_v6: Vec<_> = self
            .allow_v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want_v6.contains(&(k.prefix_len(), bytes(&k.data()))))
            .collect();
        for k in stale_v6 {
            self.allow_v6.remove(&k).map_err(map_err(names::ALLOW_V6, "remove"))?;
        }
        Ok(())
    }

    /// The policy generation the registered agents use (adopted maps), if any is registered.
    /// Discovered (unlisted) agents have no rules and always look like generation 0, so the
    /// generation is 1 as soon as any agent's rule id has its generation bit flipped: reading
    /// whichever entry came first once made a reload write into the running generation.
    pub fn current_generation(&self) -> Option<u32> {
        let mut any = false;
        for (_, info) in self.agents.iter().filter_map(Result::ok) {
            if info.rule_id != info.agent_id {
                return Some(1);
            }
            any = true;
        }
        any.then_some(0)
    }

    /// Makes the cgroup `cgroup_id` an agent (with its traffic slots filled in).
    pub fn register_agent(&mut self, cgroup_id: u64, info: AgentInfo) -> Result<(), KernelError> {
        let info = AgentInfo {
            traffic_unlisted: self.traffic_slot(StatsKey { agent_id: info.agent_id, endpoint_id: ENDPOINT_UNLISTED }),
            traffic_dns: self.traffic_slot(StatsKey { agent_id: info.agent_id, endpoint_id: ENDPOINT_DNS }),
            ..info
        };
        self.agents.insert(cgroup_id, info, 0).map_err(map_err(names::AGENTS, "insert"))
    }

    /// `rule` of agent `agent_id`, with the traffic slot of its endpoint filled in.
    fn counted(&mut self, agent_id: u32, rule: Rule) -> Rule {
        Rule { traffic: self.traffic_slot(StatsKey { agent_id, endpoint_id: rule.endpoint_id }), ..rule }
    }

    /// The `TRAFFIC` slot of `key`, given out on first use: the key is written into every
    /// CPU's copy first, so the slot is found again after a restart before any packet can be
    /// counted there. Slots are never reused. `TRAFFIC_UNCOUNTED` when the map is full or the
    /// write fails (logged); the pair's packets still pass and are charged, only not counted.
    fn traffic_slot(&mut self, key: StatsKey) -> u32 {
        if let Some(&slot) = self.traffic_slots.get(&key) {
            return slot;
        }
        let slot = self.next_traffic_slot;
        if slot >= TRAFFIC_SLOTS {
            tracing::warn!(
                agent_id = key.agent_id,
                endpoint_id = key.endpoint_id,
                slots = TRAFFIC_SLOTS,
                "the traffic counters map is full: this (agent, endpoint)'s bytes and packets are not counted (they are still charged); stop the daemon and remove its pinned maps to start the counters over"
            );
            // Remembered, so the warning comes once per pair.
            self.traffic_slots.insert(key, TRAFFIC_UNCOUNTED);
            return TRAFFIC_UNCOUNTED;
        }
        let fresh = TrafficCounters { key, ..TrafficCounters::default() };
        let written = every_cpu(fresh)
            .and_then(|values| self.traffic.set(slot, values, 0).map_err(map_err(names::TRAFFIC, "give out a slot")));
        if let Err(e) = written {
            // Not remembered: the next rule written for the pair tries again.
            tracing::warn!(slot, error = %e, "cannot give out a traffic counter slot: this (agent, endpoint)'s bytes and packets are not counted (they are still charged)");
            return TRAFFIC_UNCOUNTED;
        }
        self.traffic_slots.insert(key, slot);
        self.next_traffic_slot += 1;
        slot
    }

    /// Forgets a cgroup that no longer exists. Its counters stay (they are keyed by agent id).
    pub fn unregister_agent(&mut self, cgroup_id: u64) -> Result<(), KernelError> {
        match self.agents.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(KernelError::Map { name: names::AGENTS, op: "remove", source }),
        }
    }

    /// Cgroup ids registered as agents now (adopted maps may hold a previous daemon's).
    pub fn registered_cgroups(&self) -> Vec<u64> {
        self.agents.keys().filter_map(Result::ok).collect()
    }

    pub fn control(&self, slot: u32) -> Result<Control, KernelError> {
        self.control.get(&slot, 0).map_err(map_err(names::CONTROL, "read"))
    }

    pub fn set_control(&mut self, slot: u32, c: Control) -> Result<(), KernelError> {
        self.control.set(slot, c, 0).map_err(map_err(names::CONTROL, "write"))
    }

    pub fn spend(&self, slot: u32) -> Result<Spend, KernelError> {
        self.spend.get(&slot, 0).map_err(map_err(names::SPEND, "read"))
    }

    /// Seeds a slot's spend total and suspension; only before any program can charge the slot
    /// (fresh maps after a reboot, or a slot no agent uses yet).
    pub fn seed_spend(
        &mut self,
        slot: u32,
        spent: u64,
        exhausted_generation: u32,
        connections: u64,
    ) -> Result<(), KernelError> {
        let now = self.spend(slot).unwrap_or_default();
        let spend = Spend { spent, exhausted_generation, tat_ns: 0, connections, ..now };
        self.spend.set(slot, spend, 0).map_err(map_err(names::SPEND, "seed"))
    }

    /// Every counter, summed over CPUs, by (agent id, endpoint id).
    pub fn counters(&self) -> Result<BTreeMap<StatsKey, AgentCounters>, KernelError> {
        let mut out: BTreeMap<StatsKey, AgentCounters> = BTreeMap::new();
        for (&key, &slot) in self.traffic_slots.iter().filter(|(_, s)| **s != TRAFFIC_UNCOUNTED) {
            let per_cpu = self.traffic.get(&slot, 0).map_err(map_err(names::TRAFFIC, "read"))?;
            let mut sum = AgentCounters::default();
            for v in per_cpu.iter() {
                sum.tx_bytes += v.tx_bytes;
                sum.tx_packets += v.tx_packets;
                sum.rx_bytes += v.rx_bytes;
                sum.rx_packets += v.rx_packets;
            }
            // A slot is given out before its first packet; a pair shows once it has traffic.
            if sum.tx_packets + sum.rx_packets > 0 {
                out.insert(key, sum);
            }
        }
        for entry in self.conn_stats.iter() {
            let (key, per_cpu) = entry.map_err(map_err(names::CONN_STATS, "read"))?;
            let c = out.entry(key).or_default();
            for v in per_cpu.iter() {
                c.allowed += v.allowed;
                c.flows += v.flows;
                c.would_deny += v.would_deny;
                for (reason, n) in v.denied.iter().enumerate().take(REASONS).filter(|(_, n)| **n > 0) {
                    c.denied += n;
                    let name = reason_name(reason as u8).map_or_else(|| format!("reason-{reason}"), str::to_owned);
                    *c.denied_by_reason.entry(name).or_default() += n;
                }
            }
        }
        Ok(out)
    }

    /// The host's egress by sending cgroup id, summed over CPUs (key 0: unattributed).
    pub fn host_egress(&self) -> Result<BTreeMap<u64, HostEgress>, KernelError> {
        let mut out = BTreeMap::new();
        for entry in self.host_egress.iter() {
            let (cgroup, per_cpu) = entry.map_err(map_err(names::HOST_EGRESS, "read"))?;
            let e: &mut HostEgress = out.entry(cgroup).or_default();
            for v in per_cpu.iter() {
                e.bytes += v.bytes;
                e.packets += v.packets;
            }
        }
        Ok(out)
    }

    /// Creates the unattributed bucket (key 0) the TC program falls back to when full.
    pub fn prepare_host_egress(&mut self) -> Result<(), KernelError> {
        if self.host_egress.get(&0, 0).is_ok() {
            return Ok(());
        }
        let zeros = every_cpu(HostEgress::default())?;
        self.host_egress.insert(0, zeros, 0).map_err(map_err(names::HOST_EGRESS, "insert"))
    }

    /// Events the kernel could not put in the ring buffer because it was full.
    pub fn events_lost(&self) -> Result<u64, KernelError> {
        let per_cpu = self.events_lost.get(&0, 0).map_err(map_err(names::EVENTS_LOST, "read"))?;
        Ok(per_cpu.iter().sum())
    }

    /// What the kernel could not count by (agent, endpoint): verdicts `CONN_STATS` had no room
    /// for, and the bytes and packets of pairs given no `TRAFFIC` slot (all in slot 0).
    pub fn uncounted(&self) -> Result<crate::status::Uncounted, KernelError> {
        let verdicts = self.counts_lost.get(&0, 0).map_err(map_err(names::COUNTS_LOST, "read"))?.iter().sum();
        let slot0 = self.traffic.get(&TRAFFIC_UNCOUNTED, 0).map_err(map_err(names::TRAFFIC, "read"))?;
        let (bytes, packets) =
            slot0.iter().fold((0, 0), |(b, p), v| (b + v.tx_bytes + v.rx_bytes, p + v.tx_packets + v.rx_packets));
        Ok(crate::status::Uncounted { verdicts, bytes, packets })
    }
}

/// The slots given out so far, as the map records them: 1, 2, ... up to the first whose key
/// names no agent (they are given out in order and never reused).
fn given_traffic_slots(
    traffic: &PerCpuArray<MapData, TrafficCounters>,
) -> Result<StdHashMap<StatsKey, u32>, KernelError> {
    let mut slots = StdHashMap::new();
    for slot in 1..TRAFFIC_SLOTS {
        let per_cpu = traffic.get(&slot, 0).map_err(map_err(names::TRAFFIC, "read"))?;
        let key = per_cpu.iter().next().map(|c| c.key).unwrap_or_default();
        if key.agent_id == 0 {
            break;
        }
        slots.insert(key, slot);
    }
    Ok(slots)
}

/// `v` as every possible CPU's copy of a per-CPU value.
fn every_cpu<T: aya::Pod>(v: T) -> Result<PerCpuValues<T>, KernelError> {
    let cpus = aya::util::nr_cpus().map_err(|(what, source)| KernelError::Io { what, source })?;
    PerCpuValues::try_from(vec![v; cpus]).map_err(|source| KernelError::Io { what: "per-CPU values", source })
}

/// The agent id of an allowlist key's first field (a rule id of either generation).
fn agent_of(rule_id: [u8; 4]) -> u32 {
    u32::from_be_bytes(rule_id) & !RULE_GENERATION_BIT
}

/// Inserts admitted `entries` whose key no configured rule answers; records what it inserted.
fn admit_into<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, Rule>,
    name: &'static str,
    entries: &[Entry<K>],
    done: &mut Vec<Entry<K>>,
) -> Result<(), KernelError> {
    for e in entries {
        let key = Key::new(e.prefix_len, e.key);
        if trie.get(&key, 0).is_ok_and(|r| r.last_use_s == 0) {
            continue;
        }
        trie.insert(&key, e.rule, 0).map_err(map_err(name, "insert"))?;
        done.push(*e);
    }
    Ok(())
}

/// Removes admitted `entries` that are still there as admitted ones (the longest match for a
/// full-length key is the entry itself when it exists, else a configured prefix, left alone).
fn unadmit_from<K: aya::Pod>(trie: &mut LpmTrie<MapData, K, Rule>, entries: &[Entry<K>]) {
    for e in entries {
        let key = Key::new(e.prefix_len, e.key);
        if trie.get(&key, 0).is_ok_and(|r| r.last_use_s != 0) {
            let _ = trie.remove(&key);
        }
    }
}

/// An address as a 16-byte key: IPv6, or IPv4-mapped.
pub fn mapped(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An allowlist entry's trie key as comparable bytes.
fn entry_key<K: Copy>(e: &Entry<K>) -> (u32, Vec<u8>) {
    (e.prefix_len, bytes(&e.key))
}

fn bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the key types are plain integers with no padding (asserted in governor-common).
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }.to_vec()
}
