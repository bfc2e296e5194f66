//! The daemon's table of agents: configured ones and, unless `unlisted_agents = "ignore"`,
//! child cgroups discovered under the agents root. An agent is never forgotten while the daemon
//! runs, so its counters stay visible after its cgroup is removed.

use std::collections::BTreeMap;

use governor_common::AgentInfo;
use serde::{Deserialize, Serialize};

use crate::{
    accounting::{
        books::{Books, BooksError},
        budget::BudgetSpec,
    },
    cgroup::{AgentsRoot, CgroupError},
    config::{Mode, UnlistedAgents},
    kernel::{KernelError, KernelMaps},
    policy::{Admitted, Policy, mode_code, name_id},
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
    /// Slot of its budget in the kernel's CONTROL/SPEND arrays.
    pub slot: u32,
    /// The id its allowlist entries are keyed by (see `AgentInfo::rule_id`).
    pub rule_id: u32,
    /// The cgroup's id while it exists and is registered with the kernel.
    pub cgroup_id: Option<u64>,
}

impl Agent {
    fn info(&self) -> AgentInfo {
        // The traffic slots are the map layer's to fill in (`KernelMaps::register_agent`).
        AgentInfo {
            agent_id: self.id,
            mode: mode_code(self.mode),
            slot: self.slot,
            rule_id: self.rule_id,
            ..AgentInfo::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Books(#[from] BooksError),
}

/// What a policy generation installs: the compiled policy, and the addresses DNS admitted
/// keyed for its generation.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub policy: &'a Policy,
    pub admitted: &'a Admitted,
}

pub struct AgentTable {
    agents: BTreeMap<u32, Agent>,
    unlisted: UnlistedAgents,
}

impl AgentTable {
    /// Creates each configured agent's cgroup, opens its account, installs the allowlists and
    /// only then registers the agents, so no connect ever sees an agent without its allowlist
    /// and budget. Registrations and rules a previous daemon left in adopted maps are removed.
    pub fn install(
        rules: Rules<'_>,
        unlisted: UnlistedAgents,
        root: &AgentsRoot,
        maps: &mut KernelMaps,
        books: &mut Books,
        adopted: bool,
        now: i64,
    ) -> Result<Self, AgentsError> {
        let mut table = Self { agents: BTreeMap::new(), unlisted };
        table.apply(rules, root, maps, books, adopted, now)?;
        let current: Vec<u64> = table.agents.values().filter_map(|a| a.cgroup_id).collect();
        for stale in maps.registered_cgroups().into_iter().filter(|c| !current.contains(c)) {
            maps.unregister_agent(stale)?;
        }
        Ok(table)
    }

    /// Applies `policy` (at start, or a reload compiled for the other generation): its rules,
    /// and the addresses DNS admitted re-keyed for it (`admitted`), go in beside the running ones, then each agent is switched with one atomic update of its
    /// AGENTS entry, then the previous generation's rules are removed. Every connect sees
    /// either an agent's whole old policy or its whole new one. If the kernel cannot take the
    /// new rules nothing changes. Agents the policy no longer names stop being governed as
    /// configured agents (they may be discovered again as observed ones).
    pub fn apply(
        &mut self,
        rules: Rules<'_>,
        root: &AgentsRoot,
        maps: &mut KernelMaps,
        books: &mut Books,
        adopted: bool,
        now: i64,
    ) -> Result<Vec<String>, AgentsError> {
        let Rules { policy, admitted } = rules;
        maps.insert_rules(&policy.agents, admitted)?;
        // Everything that can fail for an agent is done for every agent before any is switched
        // or any running limit is rewritten: a reload either applies whole or leaves the running
        // policy as it was (its new rules taken out again).
        let new_agents: Vec<&str> =
            policy.agents.iter().map(|a| a.name.as_str()).filter(|n| books.account(n).is_none()).collect();
        let prepared: Result<Vec<u64>, AgentsError> = if books.free_slots_for(&new_agents) {
            policy.agents.iter().map(|a| Ok(root.ensure_agent(&a.cgroup)?)).collect()
        } else {
            Err(BooksError::SlotsFull("the state file".into()).into())
        };
        let cgroup_ids = match prepared {
            Ok(ids) => ids,
            Err(e) => {
                maps.remove_rules(&policy.agents, admitted);
                return Err(e);
            }
        };
        let endpoint_limits = policy.endpoint_limits();
        let limited: std::collections::HashSet<u32> = endpoint_limits.iter().map(|(k, _)| k.agent_id).collect();
        if let Err(e) = maps.set_endpoint_limits(&endpoint_limits).and_then(|()| maps.set_inbound(&policy.inbound())) {
            maps.remove_rules(&policy.agents, admitted);
            return Err(e.into());
        }
        let mut changed = Vec::new();
        for (a, &cgroup_id) in policy.agents.iter().zip(&cgroup_ids) {
            let slot = books.open_account(&a.name, None, a.budget.clone(), adopted, now, maps)?;
            books.set_checkpoints(&a.name, a.checkpoints.clone());
            books.set_limits(&a.name, a.limits, limited.contains(&a.id), maps)?;
            let agent = Agent {
                id: a.id,
                name: a.name.clone(),
                cgroup: a.cgroup.clone(),
                mode: a.mode,
                source: Source::Config,
                slot,
                rule_id: a.rule_id,
                cgroup_id: Some(cgroup_id),
            };
            if let Some(old) = self.agents.get(&a.id)
                && let Some(old_cgroup) = old.cgroup_id
                && old_cgroup != cgroup_id
            {
                maps.unregister_agent(old_cgroup)?;
            }
            maps.register_agent(cgroup_id, agent.info())?;
            self.agents.insert(a.id, agent);
            changed.push(a.name.clone());
        }
        let gone: Vec<u32> = self
            .agents
            .values()
            .filter(|a| a.source == Source::Config && !policy.agents.iter().any(|p| p.id == a.id))
            .map(|a| a.id)
            .collect();
        for id in gone {
            if let Some(a) = self.agents.remove(&id) {
                if let Some(c) = a.cgroup_id {
                    maps.unregister_agent(c)?;
                }
                changed.push(format!("-{}", a.name));
            }
        }
        maps.remove_rules_except(&policy.agents, admitted)?;
        Ok(changed)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    pub fn get(&self, id: u32) -> Option<&Agent> {
        self.agents.get(&id)
    }

    pub fn by_slot(&self, slot: u32) -> Option<&Agent> {
        self.agents.values().find(|a| a.slot == slot)
    }

    pub fn by_name(&self, name: &str) -> Option<&Agent> {
        self.agents.values().find(|a| a.name == name)
    }

    /// Brings the kernel's agent map in line with the cgroups that exist now: registers new
    /// children (observe mode, no allowlist, no budget of their own), re-registers configured
    /// agents whose cgroup was recreated, and unregisters cgroups that are gone. Returns the
    /// names that changed.
    pub fn sync(
        &mut self,
        root: &AgentsRoot,
        maps: &mut KernelMaps,
        books: &mut Books,
        now: i64,
    ) -> Result<Vec<String>, AgentsError> {
        let children = root.children()?;
        let mut changed = Vec::new();
        let by_cgroup: BTreeMap<&str, u64> = children.iter().map(|(n, id)| (n.as_str(), *id)).collect();

        for agent in self.agents.values_mut() {
            let now_id = by_cgroup.get(agent.cgroup.as_str()).copied();
            if now_id == agent.cgroup_id {
                continue;
            }
            if let Some(old) = agent.cgroup_id {
                maps.unregister_agent(old)?;
            }
            if let Some(new) = now_id {
                maps.register_agent(new, agent.info())?;
            }
            agent.cgroup_id = now_id;
            changed.push(agent.name.clone());
        }

        if self.unlisted != UnlistedAgents::Ignore {
            // A set, not a scan per child: a thousand agents would make a million comparisons
            // every second.
            let governed: std::collections::HashSet<String> = self.agents.values().map(|a| a.cgroup.clone()).collect();
            for (name, cgroup_id) in &children {
                if governed.contains(name) {
                    continue;
                }
                let id = name_id(name);
                if let Some(other) = self.agents.get(&id) {
                    tracing::warn!(cgroup = %name, other = %other.name, "unlisted cgroup not governed: its name collides with agent {:?}; rename the cgroup", other.name);
                    continue;
                }
                // Maps are live here: a fresh slot holds nothing, a returning agent's is reseeded.
                let slot = books.open_account(name, None, BudgetSpec::none(), true, now, maps)?;
                let agent = Agent {
                    id,
                    name: name.clone(),
                    cgroup: name.clone(),
                    mode: if self.unlisted == UnlistedAgents::Enforce { Mode::Enforce } else { Mode::Observe },
                    source: Source::Discovered,
                    slot,
                    rule_id: id,
                    cgroup_id: Some(*cgroup_id),
                };
                maps.register_agent(*cgroup_id, agent.info())?;
                self.agents.insert(id, agent);
                changed.push(name.clone());
            }
        }
        Ok(changed)
    }
}
