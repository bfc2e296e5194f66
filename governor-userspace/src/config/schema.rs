//! The configuration's shape. Every table refuses unknown keys, so a typo is an error, not a
//! silently ignored setting. `Spanned` fields let validation point at the offending line.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Directory of agent cgroups, relative to the cgroup2 mount.
    #[serde(default = "default_agents_root")]
    pub agents_root: Spanned<String>,
    /// The control socket (HTTP+JSON).
    #[serde(default = "default_socket")]
    pub socket: Spanned<PathBuf>,
    /// Prometheus metrics listen address; port 0 picks a free port (shown in status).
    #[serde(default = "default_metrics")]
    pub metrics: Spanned<String>,
    /// What to do with a child cgroup of the agents root that no `[[agent]]` names.
    #[serde(default)]
    pub unlisted_agents: UnlistedAgents,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            agents_root: default_agents_root(),
            socket: default_socket(),
            metrics: default_metrics(),
            unlisted_agents: UnlistedAgents::default(),
        }
    }
}

fn default_agents_root() -> Spanned<String> {
    Spanned::new(0..0, "governor.agents".to_owned())
}
fn default_socket() -> Spanned<PathBuf> {
    Spanned::new(0..0, PathBuf::from("/run/governor/governor.sock"))
}
fn default_metrics() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9477".to_owned())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnlistedAgents {
    /// Each unlisted child cgroup is an agent in observe mode with no allowlist: counted, never refused.
    #[default]
    Observe,
    /// Unlisted child cgroups are not agents: neither counted nor affected.
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: Spanned<String>,
    /// IP addresses and CIDR prefixes, v4 or v6.
    pub addresses: Spanned<Vec<Spanned<String>>>,
    /// Destination ports; empty means any port.
    #[serde(default)]
    pub ports: Vec<Spanned<i64>>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    #[default]
    Any,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub name: Spanned<String>,
    /// The agent's cgroup, a direct child of the agents root; defaults to the name.
    #[serde(default)]
    pub cgroup: Option<Spanned<String>>,
    /// Allowlist by endpoint name; empty denies all egress (in enforce mode).
    #[serde(default)]
    pub endpoints: Vec<Spanned<String>>,
    #[serde(default)]
    pub mode: Mode,
}

impl AgentConfig {
    pub fn cgroup_name(&self) -> &str {
        self.cgroup
            .as_ref()
            .map_or(self.name.get_ref(), |c| c.get_ref())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse what the policy forbids.
    #[default]
    Enforce,
    /// Count what the policy would refuse, refuse nothing.
    Observe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}
