//! Typed handles on the maps: write policy and budgets in, read counters and spend out.

use std::collections::{BTreeMap, HashSet};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use governor_common::{
    AgentInfo, AllowKeyV4, AllowKeyV6, ConnCounters, Control, HostEgress, REASONS, Rule, Spend, StatsKey,
    TrafficCounters, maps as names,
};
use serde::{Deserialize, Serialize};

use super::{KernelError, events::reason_name};
use crate::policy::CompiledAgent;

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
    traffic: PerCpuHashMap<MapData, StatsKey, TrafficCounters>,
    control: Array<MapData, Control>,
    spend: Array<MapData, Spend>,
    events_lost: PerCpuArray<MapData, u64>,
    host_egress: PerCpuHashMap<MapData, u64, HostEgress>,
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
        Ok(Self {
            agents: take(ebpf, names::AGENTS)?,
            allow_v4: take(ebpf, names::ALLOW_V4)?,
            allow_v6: take(ebpf, names::ALLOW_V6)?,
            conn_stats: take(ebpf, names::CONN_STATS)?,
            traffic: take(ebpf, names::TRAFFIC)?,
            control: take(ebpf, names::CONTROL)?,
            spend: take(ebpf, names::SPEND)?,
            events_lost: take(ebpf, names::EVENTS_LOST)?,
            host_egress: take(ebpf, names::HOST_EGRESS)?,
        })
    }

    /// Inserts every rule of `agents` (a new policy generation, beside the running one). On
    /// failure the rules it inserted are removed again and the running policy is untouched.
    pub fn insert_rules(&mut self, agents: &[CompiledAgent]) -> Result<(), KernelError> {
        let mut done_v4 = Vec::new();
        let mut done_v6 = Vec::new();
        let result = (|| {
            for agent in agents {
                for r in &agent.rules_v4 {
                    self.allow_v4
                        .insert(&Key::new(r.prefix_len, r.key), r.rule, 0)
                        .map_err(map_err(names::ALLOW_V4, "insert"))?;
                    done_v4.push(Key::new(r.prefix_len, r.key));
                }
                for r in &agent.rules_v6 {
                    self.allow_v6
                        .insert(&Key::new(r.prefix_len, r.key), r.rule, 0)
                        .map_err(map_err(names::ALLOW_V6, "insert"))?;
                    done_v6.push(Key::new(r.prefix_len, r.key));
                }
            }
            Ok(())
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

    /// Removes every allowlist entry that is not one of `agents`' rules: the previous
    /// generation, once every agent has been switched to the new one.
    pub fn remove_rules_except(&mut self, agents: &[CompiledAgent]) -> Result<(), KernelError> {
        let want_v4: HashSet<_> =
            agents.iter().flat_map(|a| &a.rules_v4).map(|r| (r.prefix_len, bytes(&r.key))).collect();
        let want_v6: HashSet<_> =
            agents.iter().flat_map(|a| &a.rules_v6).map(|r| (r.prefix_len, bytes(&r.key))).collect();
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
    pub fn current_generation(&self) -> Option<u32> {
        self.agents.iter().filter_map(Result::ok).next().map(|(_, info)| u32::from(info.rule_id != info.agent_id))
    }

    /// Makes the cgroup `cgroup_id` an agent.
    pub fn register_agent(&mut self, cgroup_id: u64, info: AgentInfo) -> Result<(), KernelError> {
        self.agents.insert(cgroup_id, info, 0).map_err(map_err(names::AGENTS, "insert"))
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
    pub fn seed_spend(&mut self, slot: u32, spent: u64, exhausted_generation: u32) -> Result<(), KernelError> {
        let live = self.spend(slot).map_or(0, |s| s.live);
        let spend = Spend { spent, exhausted_generation, _pad: 0, tat_ns: 0, live };
        self.spend.set(slot, spend, 0).map_err(map_err(names::SPEND, "seed"))
    }

    /// Every counter, summed over CPUs, by (agent id, endpoint id).
    pub fn counters(&self) -> Result<BTreeMap<StatsKey, AgentCounters>, KernelError> {
        let mut out: BTreeMap<StatsKey, AgentCounters> = BTreeMap::new();
        for entry in self.traffic.iter() {
            let (key, per_cpu) = entry.map_err(map_err(names::TRAFFIC, "read"))?;
            let c = out.entry(key).or_default();
            for v in per_cpu.iter() {
                c.tx_bytes += v.tx_bytes;
                c.tx_packets += v.tx_packets;
                c.rx_bytes += v.rx_bytes;
                c.rx_packets += v.rx_packets;
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
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| KernelError::Io { what, source })?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![HostEgress::default(); cpus])
            .map_err(|source| KernelError::Io { what: "per-CPU values", source })?;
        self.host_egress.insert(0, zeros, 0).map_err(map_err(names::HOST_EGRESS, "insert"))
    }

    /// Events the kernel could not put in the ring buffer because it was full.
    pub fn events_lost(&self) -> Result<u64, KernelError> {
        let per_cpu = self.events_lost.get(&0, 0).map_err(map_err(names::EVENTS_LOST, "read"))?;
        Ok(per_cpu.iter().sum())
    }
}

fn bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the key types are plain integers with no padding (asserted in governor-common).
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }.to_vec()
}
