//! The daemon's table of agents: configured ones and, unless `unlisted_agents = "ignore"`,
//! child cgroups discovered under the agents root. An agent is never forgotten while the daemon
//! runs, so its counters stay visible after its cgroup is removed.

use std::collections::BTreeMap;

use governor_common::{AgentInfo, MODE_OBSERVE};
use serde::{Deserialize, Serialize};

use crate::{
    cgroup::{AgentsRoot, CgroupError},
    config::{Mode, UnlistedAgents},
    kernel::{KernelError, KernelMaps},
    policy::{Policy, mode_code, name_id},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Named by an `[[agent]]` table.
    Config,
    /// A child cgroup of the agents root that no `[[agent]]` names.
    Discovered,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: u32,
    pub name: String,
    pub cgroup: String,
    pub mode: Mode,
    pub source: Source,
    /// The cgroup's id while it exists and is registered with the kernel.
    pub cgroup_id: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

pub struct AgentTable {
    agents: BTreeMap<u32, Agent>,
    unlisted: UnlistedAgents,
}

impl AgentTable {
    /// Creates each configured agent's cgroup and installs its allowlist, then registers it:
    /// rules first, so no connect ever sees an agent without its allowlist.
    pub fn install(
        policy: &Policy,
        unlisted: UnlistedAgents,
        root: &AgentsRoot,
        maps: &mut KernelMaps,
    ) -> Result<Self, AgentsError> {
        let mut agents = BTreeMap::new();
        for a in &policy.agents {
            let cgroup_id = root.ensure_agent(&a.cgroup)?;
            maps.install_rules(a)?;
            maps.register_agent(
                cgroup_id,
                AgentInfo {
                    agent_id: a.id,
                    mode: mode_code(a.mode),
                },
            )?;
            agents.insert(
                a.id,
                Agent {
                    id: a.id,
                    name: a.name.clone(),
                    cgroup: a.cgroup.clone(),
                    mode: a.mode,
                    source: Source::Config,
                    cgroup_id: Some(cgroup_id),
                },
            );
        }
        Ok(Self { agents, unlisted })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    pub fn get(&self, id: u32) -> Option<&Agent> {
        self.agents.get(&id)
    }

    /// Brings the kernel's agent map in line with the cgroups that exist now: registers new
    /// children (observe mode, no allowlist), re-registers configured agents whose cgroup was
    /// recreated, and unregisters cgroups that are gone. Returns the names that changed.
    pub fn sync(
        &mut self,
        root: &AgentsRoot,
        maps: &mut KernelMaps,
    ) -> Result<Vec<String>, AgentsError> {
        let children = root.children()?;
        let mut changed = Vec::new();
        let by_cgroup: BTreeMap<&str, u64> =
            children.iter().map(|(n, id)| (n.as_str(), *id)).collect();

        for agent in self.agents.values_mut() {
            let now = by_cgroup.get(agent.cgroup.as_str()).copied();
            if now == agent.cgroup_id {
                continue;
            }
            if let Some(old) = agent.cgroup_id {
                maps.unregister_agent(old)?;
            }
            if let Some(new) = now {
                maps.register_agent(
                    new,
                    AgentInfo {
                        agent_id: agent.id,
                        mode: mode_code(agent.mode),
                    },
                )?;
            }
            agent.cgroup_id = now;
            changed.push(agent.name.clone());
        }

        if self.unlisted == UnlistedAgents::Observe {
            for (name, cgroup_id) in &children {
                if self.agents.values().any(|a| &a.cgroup == name) {
                    continue;
                }
                let id = name_id(name);
                if let Some(other) = self.agents.get(&id) {
                    tracing::warn!(cgroup = %name, other = %other.name, "unlisted cgroup not governed: its name collides with agent {:?}; rename the cgroup", other.name);
                    continue;
                }
                maps.register_agent(
                    *cgroup_id,
                    AgentInfo {
                        agent_id: id,
                        mode: MODE_OBSERVE,
                    },
                )?;
                self.agents.insert(
                    id,
                    Agent {
                        id,
                        name: name.clone(),
                        cgroup: name.clone(),
                        mode: Mode::Observe,
                        source: Source::Discovered,
                        cgroup_id: Some(*cgroup_id),
                    },
                );
                changed.push(name.clone());
            }
        }
        Ok(changed)
    }
}
