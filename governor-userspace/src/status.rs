//! What the daemon reports: the data model of `GET /v1/status`, shared by the control server,
//! the metrics exporter and the CLI, so all three show the same numbers.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::{accounting::books::BudgetStatus, agents::Source, config::Mode, kernel::AgentCounters, kernel::Denial};

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
    /// Label of every amount.
    pub currency: String,
    /// Programs attached to the agents root (and the uplinks), with the kernel's own run
    /// statistics (counted while `sysctl kernel.bpf_stats_enabled=1`).
    pub programs: Vec<crate::kernel::ProgramStats>,
    pub events: EventStats,
    /// The host-wide budget over all agents.
    pub host_budget: Option<BudgetStatus>,
    /// What the host sends out of its uplinks, by cgroup, agents or not.
    pub host_egress: HostEgressStatus,
    pub agents: Vec<AgentStatus>,
    /// The newest deny events, oldest first (bounded).
    pub recent_denials: Vec<DenialRecord>,
    pub notifications: NotificationStats,
    /// Writes that failed since the daemon started (a full or failing disk); enforcement goes on.
    pub write_errors: WriteErrors,
    /// Threshold crossings since the daemon started, by "owner:percent".
    pub threshold_crossings: BTreeMap<String, u64>,
    /// Suspensions since the daemon started, by owner.
    pub suspensions: BTreeMap<String, u64>,
    pub dns: DnsStatus,
    /// What the kernel counted in no (agent, endpoint) pair because its maps were full; 0
    /// unless a map's bound was reached.
    #[serde(default)]
    pub uncounted: Uncounted,
}

/// Counts that have no (agent, endpoint) to go to, so they are not lost without a word.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Uncounted {
    /// connect/sendmsg/bind verdicts (allowed, denied, would_deny) with no room in CONN_STATS.
    pub verdicts: u64,
    /// Bytes and packets of pairs given no traffic slot (all 65,536 were taken).
    pub bytes: u64,
    pub packets: u64,
}

/// The DNS proxy and the addresses it admitted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsStatus {
    /// Loopback port agents' DNS is redirected to.
    pub proxy_port: u16,
    /// The resolvers agents may use (all others are refused).
    pub resolvers: Vec<String>,
    /// Queries since the daemon started, by agent and result (admitted, not-allowed, servfail, dropped).
    pub queries: BTreeMap<String, BTreeMap<String, u64>>,
    /// Addresses admitted since the daemon started (answers x addresses, refreshes included).
    pub admitted_addresses: u64,
    pub cache: DnsCacheStatus,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct DnsCacheStatus {
    /// (agent, name) pairs held, and their bound (`dns.max_names`).
    pub names: u64,
    pub max_names: u64,
    /// (agent, endpoint, address) entries in the kernel's allowlist.
    pub addresses: u64,
    /// Names and addresses evicted to stay within the bounds.
    pub evictions: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct WriteErrors {
    pub audit: u64,
    pub state: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct NotificationStats {
    /// Notices delivered to every configured hook.
    pub sent: u64,
    /// Notices at least one hook could not take after every attempt.
    pub failed: u64,
    /// Notices recorded and not yet delivered.
    pub pending: u64,
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
    /// `paused` (by an operator), `checkpoint` (waiting for `governor ack`), `suspended` (budget
    /// exhausted), `enforcing`, `observing`, or `absent` (its cgroup does not exist now).
    pub state: String,
    pub totals: AgentCounters,
    pub budget: Option<BudgetStatus>,
    /// Set while paused by an operator or waiting at a checkpoint.
    pub paused: Option<PauseStatus>,
    /// Configured rate and concurrency limits.
    pub limits: crate::policy::Limits,
    /// Connections (and UDP flows) open now, counted against `limits.max_concurrent`.
    pub live_connections: u64,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseStatus {
    /// `operator` or `checkpoint` (a pending checkpoint waits for `governor ack`).
    pub kind: String,
    pub reason: String,
    pub since: String,
    pub waited_seconds: u64,
    pub by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// What this endpoint's traffic cost at the current prices, all windows.
    pub spend: String,
    pub spend_pico: u64,
    /// The endpoint's own limits for this agent (`[[endpoint]] limits`), if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::policy::Limits>,
    /// Live connections to it now, counted when it has a concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_connections: Option<u64>,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostEgressStatus {
    /// Uplinks counted (host.interfaces, or the default routes' interfaces).
    pub interfaces: Vec<String>,
    /// host.egress_price_per_gib, if set.
    pub price_per_gib: Option<String>,
    pub total_bytes: u64,
    pub total_packets: u64,
    pub total_cost: String,
    /// Largest senders first.
    pub by_cgroup: Vec<HostEgressRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEgressRow {
    pub cgroup_id: u64,
    /// Path below the cgroup2 mount; "(no socket)" for id 0 (forwarded or socketless packets,
    /// and overflow), "(removed)" for a cgroup that no longer exists.
    pub cgroup: String,
    pub bytes: u64,
    pub packets: u64,
    pub cost: String,
    pub cost_pico: u64,
}
