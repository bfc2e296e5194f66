//! What the daemon reports: the data model of `GET /v1/status`, shared by the control server,
//! the metrics exporter and the CLI, so all three show the same numbers.

use serde::{Deserialize, Serialize};

use crate::{agents::Source, config::Mode, kernel::AgentCounters, kernel::Denial};

/// The endpoint name used for traffic that matched no allowlisted endpoint.
pub const UNLISTED_ENDPOINT: &str = "(unlisted)";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub config_source: String,
    pub config_sha256: String,
    pub cgroup_mount: String,
    pub agents_root: String,
    pub metrics_address: String,
    /// Programs attached to the agents root.
    pub programs: Vec<String>,
    pub events: EventStats,
    pub agents: Vec<AgentStatus>,
    /// The newest deny events, oldest first (bounded).
    pub recent_denials: Vec<DenialRecord>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct EventStats {
    /// Deny events read from the ring buffer.
    pub received: u64,
    /// Events the kernel dropped because the ring buffer was full (the counters still count them).
    pub lost: u64,
    /// Records rejected as malformed.
    pub malformed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub cgroup: String,
    pub cgroup_id: Option<u64>,
    pub source: Source,
    pub mode: Mode,
    /// `enforcing`, `observing`, or `absent` (its cgroup does not exist now).
    pub state: String,
    pub totals: AgentCounters,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    #[serde(flatten)]
    pub counters: AgentCounters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenialRecord {
    /// Agent name, if the agent is known.
    pub agent: Option<String>,
    #[serde(flatten)]
    pub denial: Denial,
}
