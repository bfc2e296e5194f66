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
    /// The host-wide budget over all agents; the stricter of it and an agent's own wins.
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub dns: DnsConfig,
}

/// Agents' DNS: which resolvers they may use, and how the addresses of allowed host names are
/// admitted. Every agent's DNS goes through the daemon's proxy on loopback.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Resolver IP addresses agents may query (port 53); default: the nameservers of
    /// /etc/resolv.conf when the daemon starts or reloads. DNS anywhere else is refused.
    #[serde(default)]
    pub resolvers: Option<Spanned<Vec<Spanned<String>>>>,
    /// The proxy's port on loopback (UDP and TCP); 0 picks a free one at start.
    #[serde(default = "default_proxy_port")]
    pub proxy_port: Spanned<i64>,
    /// Shortest time an admitted address stays admitted, whatever the answer's TTL.
    #[serde(default = "default_min_ttl")]
    pub min_ttl: Spanned<String>,
    /// How long an address stays admitted after its TTL ran out or after its last use,
    /// whichever is later (applications cache answers past their TTL).
    #[serde(default = "default_grace")]
    pub grace: Spanned<String>,
    /// Addresses kept per (agent, name); the least recently seen goes first.
    #[serde(default = "default_max_addresses")]
    pub max_addresses_per_name: Spanned<i64>,
    /// (agent, name) pairs kept in total; the least recently looked up goes first.
    #[serde(default = "default_max_names")]
    pub max_names: Spanned<i64>,
    /// How often the daemon resolves the exact names in `hosts` itself.
    #[serde(default = "default_refresh")]
    pub refresh: Spanned<String>,
    /// Time allowed for the resolver's answer before the agent gets SERVFAIL.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout: Spanned<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            resolvers: None,
            proxy_port: Spanned::new(0..0, 0),
            min_ttl: default_min_ttl(),
            grace: default_grace(),
            max_addresses_per_name: default_max_addresses(),
            max_names: default_max_names(),
            refresh: default_refresh(),
            upstream_timeout: default_upstream_timeout(),
        }
    }
}

fn default_proxy_port() -> Spanned<i64> {
    Spanned::new(0..0, 0)
}
fn default_min_ttl() -> Spanned<String> {
    Spanned::new(0..0, "60s".to_owned())
}
fn default_grace() -> Spanned<String> {
    Spanned::new(0..0, "5m".to_owned())
}
fn default_max_addresses() -> Spanned<i64> {
    Spanned::new(0..0, 32)
}
fn default_max_names() -> Spanned<i64> {
    Spanned::new(0..0, 10_000)
}
fn default_refresh() -> Spanned<String> {
    Spanned::new(0..0, "5m".to_owned())
}
fn default_upstream_timeout() -> Spanned<String> {
    Spanned::new(0..0, "2s".to_owned())
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
    /// Label of every amount (prices, budgets); accounting is the same whatever it says.
    #[serde(default = "default_currency")]
    pub currency: Spanned<String>,
    /// Where spend, windows and crossed thresholds are saved (atomically) to survive reboots.
    #[serde(default = "default_state_dir")]
    pub state_dir: Spanned<PathBuf>,
    /// The append-only, hash-chained audit log (JSON Lines).
    #[serde(default = "default_audit_log")]
    pub audit_log: Spanned<PathBuf>,
    /// Rotate the audit log when it would grow past this many bytes (the chain continues).
    #[serde(default = "default_audit_max_bytes")]
    pub audit_max_bytes: Spanned<i64>,
    /// Rotated audit files kept (`audit.jsonl.1` is the newest).
    #[serde(default = "default_audit_keep")]
    pub audit_keep: Spanned<i64>,
    /// Members may read state through the socket (root always may). The socket's group.
    #[serde(default)]
    pub read_group: Option<Spanned<String>>,
    /// Members may also control agents: pause, resume, kill, ack (root always may).
    #[serde(default)]
    pub admin_group: Option<Spanned<String>>,
    /// What a clean stop does to the programs: keep enforcing from bpffs, or detach them.
    #[serde(default)]
    pub on_daemon_exit: OnDaemonExit,
    /// Refuse to start when the readiness check (`governor check`) has a FAIL.
    #[serde(default)]
    pub require_ready: bool,
    /// Size of the kernel-to-daemon event ring buffer (a power of two, 4096 or more). Events
    /// beyond it are dropped, counted and recorded as a gap; counters never are.
    #[serde(default = "default_events_buffer")]
    pub events_buffer_bytes: Spanned<i64>,
}

fn default_events_buffer() -> Spanned<i64> {
    Spanned::new(0..0, 256 * 1024)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDaemonExit {
    /// Programs, links and maps stay pinned: allowlists, budgets and pauses keep holding.
    #[default]
    Enforce,
    /// A clean stop removes the programs (a crash never does).
    Detach,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            agents_root: default_agents_root(),
            socket: default_socket(),
            metrics: default_metrics(),
            unlisted_agents: UnlistedAgents::default(),
            currency: default_currency(),
            state_dir: default_state_dir(),
            audit_log: default_audit_log(),
            audit_max_bytes: default_audit_max_bytes(),
            audit_keep: default_audit_keep(),
            read_group: None,
            admin_group: None,
            on_daemon_exit: OnDaemonExit::default(),
            require_ready: false,
            events_buffer_bytes: default_events_buffer(),
        }
    }
}

fn default_audit_max_bytes() -> Spanned<i64> {
    Spanned::new(0..0, 64 << 20)
}
fn default_audit_keep() -> Spanned<i64> {
    Spanned::new(0..0, 10)
}

/// `checkpoints = { every_spend = "5.00", every = "1h", every_connections = 10000 }`: reaching
/// any pauses the agent until an operator runs `governor ack`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    pub every_spend: Option<Spanned<String>>,
    pub every: Option<Spanned<String>>,
    pub every_connections: Option<Spanned<i64>>,
}

fn default_currency() -> Spanned<String> {
    Spanned::new(0..0, "USD".to_owned())
}
fn default_state_dir() -> Spanned<PathBuf> {
    Spanned::new(0..0, PathBuf::from("/var/lib/governor"))
}
fn default_audit_log() -> Spanned<PathBuf> {
    Spanned::new(0..0, PathBuf::from("/var/log/governor/audit.jsonl"))
}

/// `budget = { limit = "25.00", window = "total" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub limit: Spanned<String>,
    #[serde(default = "default_window")]
    pub window: Spanned<String>,
}

fn default_window() -> Spanned<String> {
    Spanned::new(0..0, "total".to_owned())
}

/// `price = { connection = "0.0004", mib_sent = "0.50", mib_received = "2.00" }`; omitted
/// parts cost nothing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub connection: Option<Spanned<String>>,
    pub mib_sent: Option<Spanned<String>>,
    pub mib_received: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Refuse new connections and drop packets once the ceiling is reached.
    #[default]
    Suspend,
    /// Only alert: the ceiling is reported, never enforced.
    Alert,
}

fn default_thresholds() -> Spanned<Vec<Spanned<i64>>> {
    Spanned::new(0..0, [50, 80, 100].into_iter().map(|t| Spanned::new(0..0, t)).collect())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub budget: Option<Spanned<BudgetConfig>>,
    /// Percentages of the budget at which to notify, each once per window.
    #[serde(default = "default_thresholds")]
    pub thresholds: Spanned<Vec<Spanned<i64>>>,
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// Uplinks whose egress is the host's bill; default: the interfaces of the default routes.
    #[serde(default)]
    pub interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    /// What the provider charges per GiB leaving the host, e.g. "0.09".
    #[serde(default)]
    pub egress_price_per_gib: Option<Spanned<String>>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            budget: None,
            thresholds: default_thresholds(),
            on_exhausted: OnExhausted::default(),
            interfaces: None,
            egress_price_per_gib: None,
        }
    }
}

/// Where threshold crossings, suspensions and undeliverable notices are sent, besides the
/// audit log, the metrics and the log. Delivery never blocks enforcement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `http://host:port/path`: each notice is POSTed as a JSON body.
    pub url: Option<Spanned<String>>,
    /// A command run per notice with the JSON body on its standard input, e.g. ["/usr/local/bin/page"].
    pub command: Option<Spanned<Vec<String>>>,
    /// Attempts per notice and hook before it counts as undeliverable.
    #[serde(default = "default_attempts")]
    pub attempts: Spanned<i64>,
    /// Time allowed for one attempt.
    #[serde(default = "default_notify_timeout")]
    pub timeout: Spanned<String>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self { url: None, command: None, attempts: default_attempts(), timeout: default_notify_timeout() }
    }
}

fn default_attempts() -> Spanned<i64> {
    Spanned::new(0..0, 3)
}
fn default_notify_timeout() -> Spanned<String> {
    Spanned::new(0..0, "5s".to_owned())
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
    /// Each unlisted child cgroup is an agent in enforce mode with no allowlist: every
    /// connection refused (and counted), DNS only to the resolvers, admitting nothing.
    Enforce,
    /// Unlisted child cgroups are not agents: neither counted nor affected.
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: Spanned<String>,
    /// IP addresses and CIDR prefixes, v4 or v6.
    #[serde(default = "no_addresses")]
    pub addresses: Spanned<Vec<Spanned<String>>>,
    /// Host names (`api.example.com`) and wildcards (`*.example.com`: any name below it):
    /// the addresses DNS answers give the agent for them are admitted (see `[dns]`).
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Destination ports; empty means any port.
    #[serde(default)]
    pub ports: Vec<Spanned<i64>>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub price: PriceConfig,
    /// Limits on this endpoint for each agent that uses it, on top of the agent's own:
    /// `limits = { connections_per_minute = 60, max_concurrent = 4 }`.
    #[serde(default)]
    pub limits: Option<Spanned<LimitsConfig>>,
}

fn no_addresses() -> Spanned<Vec<Spanned<String>>> {
    Spanned::new(0..0, Vec::new())
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
    /// No budget when omitted (spend is still counted and priced).
    #[serde(default)]
    pub budget: Option<Spanned<BudgetConfig>>,
    #[serde(default = "default_thresholds")]
    pub thresholds: Spanned<Vec<Spanned<i64>>>,
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    #[serde(default)]
    pub checkpoints: Option<Spanned<CheckpointConfig>>,
    #[serde(default)]
    pub limits: Option<Spanned<LimitsConfig>>,
    /// Local ports the agent may bind and take connections or datagrams on (TCP and UDP);
    /// none by default: in enforce mode nothing reaches an agent that it did not connect to.
    #[serde(default)]
    pub inbound: Vec<Spanned<i64>>,
}

/// `limits = { connections_per_minute = 600, burst = 50, max_concurrent = 32 }`, enforced in the
/// kernel (observe-mode agents are counted, never refused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub connections_per_minute: Option<Spanned<i64>>,
    /// Connections allowed at once above the sustained rate; default: a tenth of a minute's worth.
    pub burst: Option<Spanned<i64>>,
    pub max_concurrent: Option<Spanned<i64>>,
}

impl AgentConfig {
    pub fn cgroup_name(&self) -> &str {
        self.cgroup.as_ref().map_or(self.name.get_ref(), |c| c.get_ref())
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
