//! The running governor's shared state, and the one function that turns kernel counters and
//! the agent table into a `Status`. Servers and tasks hold an `Arc<Governor>`.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::Mutex,
};

use governor_common::ENDPOINT_UNLISTED;

use crate::{
    agents::AgentTable,
    cgroup::{AgentsRoot, Cgroup2Mount},
    config::{LoadedConfig, Mode},
    kernel::{AgentCounters, Denial, Kernel, KernelError, KernelMaps},
    policy::Policy,
    status::{AgentStatus, DenialRecord, EndpointStatus, EventStats, Status, UNLISTED_ENDPOINT},
};

/// How many recent deny events status keeps.
const RECENT_DENIALS: usize = 100;

#[derive(Default)]
pub struct EventLog {
    pub received: u64,
    pub malformed: u64,
    pub recent: VecDeque<Denial>,
}

impl EventLog {
    pub fn push(&mut self, d: Denial) {
        self.received += 1;
        if self.recent.len() == RECENT_DENIALS {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }
}

pub struct Governor {
    pub config: LoadedConfig,
    pub policy: Policy,
    pub mount: Cgroup2Mount,
    pub root: AgentsRoot,
    pub metrics_address: SocketAddr,
    pub maps: Mutex<KernelMaps>,
    pub agents: Mutex<AgentTable>,
    pub events: Mutex<EventLog>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind, still valid to read.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Governor {
    pub fn maps(&self) -> std::sync::MutexGuard<'_, KernelMaps> {
        lock(&self.maps)
    }

    pub fn agents(&self) -> std::sync::MutexGuard<'_, AgentTable> {
        lock(&self.agents)
    }

    pub fn events(&self) -> std::sync::MutexGuard<'_, EventLog> {
        lock(&self.events)
    }

    /// Reads the kernel's counters now and assembles the full status.
    pub fn status(&self) -> Result<Status, KernelError> {
        let (counters, lost) = {
            let maps = self.maps();
            (maps.counters()?, maps.events_lost()?)
        };
        let endpoint_name = |id: u32| -> String {
            if id == ENDPOINT_UNLISTED {
                return UNLISTED_ENDPOINT.to_owned();
            }
            self.policy
                .endpoints
                .iter()
                .find(|e| e.id == id)
                .map_or_else(|| format!("(endpoint {id:#x})"), |e| e.name.clone())
        };

        let mut by_agent: BTreeMap<u32, Vec<(u32, AgentCounters)>> = BTreeMap::new();
        for (key, c) in counters {
            by_agent
                .entry(key.agent_id)
                .or_default()
                .push((key.endpoint_id, c));
        }

        let agents = self.agents();
        let agent_status = agents
            .iter()
            .map(|a| {
                let mut totals = AgentCounters::default();
                let mut endpoints: Vec<EndpointStatus> = by_agent
                    .get(&a.id)
                    .into_iter()
                    .flatten()
                    .map(|(ep, c)| {
                        totals.add(c);
                        EndpointStatus {
                            endpoint: endpoint_name(*ep),
                            counters: *c,
                        }
                    })
                    .collect();
                endpoints.sort_by(|x, y| x.endpoint.cmp(&y.endpoint));
                let state = match (a.cgroup_id, a.mode) {
                    (None, _) => "absent",
                    (Some(_), Mode::Enforce) => "enforcing",
                    (Some(_), Mode::Observe) => "observing",
                };
                AgentStatus {
                    name: a.name.clone(),
                    cgroup: self.root.agent_path(&a.cgroup).display().to_string(),
                    cgroup_id: a.cgroup_id,
                    source: a.source,
                    mode: a.mode,
                    state: state.to_owned(),
                    totals,
                    endpoints,
                }
            })
            .collect();

        let events = self.events();
        let recent_denials = events
            .recent
            .iter()
            .map(|d| DenialRecord {
                agent: agents.get(d.agent_id).map(|a| a.name.clone()),
                denial: d.clone(),
            })
            .collect();

        Ok(Status {
            version: crate::VERSION.to_owned(),
            config_source: self.config.source_name.display().to_string(),
            config_sha256: self.config.sha256(),
            cgroup_mount: self.mount.mount_point.display().to_string(),
            agents_root: self.root.path.display().to_string(),
            metrics_address: self.metrics_address.to_string(),
            programs: Kernel::program_names().map(str::to_owned).collect(),
            events: EventStats {
                received: events.received,
                lost,
                malformed: events.malformed,
            },
            agents: agent_status,
            recent_denials,
        })
    }
}
