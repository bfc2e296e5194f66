//! Typed handles on the maps: write policy in, read counters out.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use governor_common::{
    AgentInfo, AllowKeyV4, AllowKeyV6, ConnCounters, StatsKey, TrafficCounters, maps as names,
};

use super::KernelError;
use crate::policy::CompiledAgent;

/// Everything the kernel counted for one (agent, endpoint), summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentCounters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
}

impl AgentCounters {
    pub fn add(&mut self, o: &AgentCounters) {
        self.tx_bytes += o.tx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_packets += o.rx_packets;
        self.allowed += o.allowed;
        self.denied += o.denied;
        self.would_deny += o.would_deny;
    }
}

pub struct KernelMaps {
    agents: HashMap<MapData, u64, AgentInfo>,
    allow_v4: LpmTrie<MapData, AllowKeyV4, u32>,
    allow_v6: LpmTrie<MapData, AllowKeyV6, u32>,
    conn_stats: PerCpuHashMap<MapData, StatsKey, ConnCounters>,
    traffic: PerCpuHashMap<MapData, StatsKey, TrafficCounters>,
    events_lost: PerCpuArray<MapData, u64>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, KernelError> {
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::MissingMap { name })?;
    T::try_from(map).map_err(|source| KernelError::Map {
        name,
        op: "open",
        source,
    })
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        Ok(Self {
            agents: take(ebpf, names::AGENTS)?,
            allow_v4: take(ebpf, names::ALLOW_V4)?,
            allow_v6: take(ebpf, names::ALLOW_V6)?,
            conn_stats: take(ebpf, names::CONN_STATS)?,
            traffic: take(ebpf, names::TRAFFIC)?,
            events_lost: take(ebpf, names::EVENTS_LOST)?,
        })
    }

    /// Writes `agent`'s allowlist. Rules go in before the agent is registered, so the first
    /// connect an agent makes already sees its whole allowlist.
    pub fn install_rules(&mut self, agent: &CompiledAgent) -> Result<(), KernelError> {
        for r in &agent.rules_v4 {
            self.allow_v4
                .insert(&Key::new(r.prefix_len, r.key), r.endpoint_id, 0)
                .map_err(|source| KernelError::Map {
                    name: names::ALLOW_V4,
                    op: "insert",
                    source,
                })?;
        }
        for r in &agent.rules_v6 {
            self.allow_v6
                .insert(&Key::new(r.prefix_len, r.key), r.endpoint_id, 0)
                .map_err(|source| KernelError::Map {
                    name: names::ALLOW_V6,
                    op: "insert",
                    source,
                })?;
        }
        Ok(())
    }

    /// Makes the cgroup `cgroup_id` an agent.
    pub fn register_agent(&mut self, cgroup_id: u64, info: AgentInfo) -> Result<(), KernelError> {
        self.agents
            .insert(cgroup_id, info, 0)
            .map_err(|source| KernelError::Map {
                name: names::AGENTS,
                op: "insert",
                source,
            })
    }

    /// Forgets a cgroup that no longer exists. Its counters stay (they are keyed by agent id).
    pub fn unregister_agent(&mut self, cgroup_id: u64) -> Result<(), KernelError> {
        match self.agents.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(KernelError::Map {
                name: names::AGENTS,
                op: "remove",
                source,
            }),
        }
    }

    /// Every counter, summed over CPUs, by (agent id, endpoint id).
    pub fn counters(&self) -> Result<BTreeMap<StatsKey, AgentCounters>, KernelError> {
        let mut out: BTreeMap<StatsKey, AgentCounters> = BTreeMap::new();
        for entry in self.traffic.iter() {
            let (key, per_cpu) = entry.map_err(|source| KernelError::Map {
                name: names::TRAFFIC,
                op: "read",
                source,
            })?;
            let c = out.entry(key).or_default();
            for v in per_cpu.iter() {
                c.tx_bytes += v.tx_bytes;
                c.tx_packets += v.tx_packets;
                c.rx_bytes += v.rx_bytes;
                c.rx_packets += v.rx_packets;
            }
        }
        for entry in self.conn_stats.iter() {
            let (key, per_cpu) = entry.map_err(|source| KernelError::Map {
                name: names::CONN_STATS,
                op: "read",
                source,
            })?;
            let c = out.entry(key).or_default();
            for v in per_cpu.iter() {
                c.allowed += v.allowed;
                c.denied += v.denied;
                c.would_deny += v.would_deny;
            }
        }
        Ok(out)
    }

    /// Events the kernel could not put in the ring buffer because it was full.
    pub fn events_lost(&self) -> Result<u64, KernelError> {
        let per_cpu = self
            .events_lost
            .get(&0, 0)
            .map_err(|source| KernelError::Map {
                name: names::EVENTS_LOST,
                op: "read",
                source,
            })?;
        Ok(per_cpu.iter().sum())
    }
}
